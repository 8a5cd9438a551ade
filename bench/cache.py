"""Embedding cache: disk size and load time of N vectors, one .npy per text (the prototype) vs the project's
EmbeddingCache (train.py: float16 Arrow shards keyed by MD5, memory-mapped, checksummed), and the float16
rounding error of the project's cache on real vectors of the default encoder.

"Load" is what a training run does, from the list of texts to the matrix it trains from. Prototype: MD5 of
each text, np.load of its file, np.stack into a float32 [N, D] matrix. Project: train.embed_texts with every
text cached, as train.py and explain_clinicalLF.py call it on the event table's text column (a pandas "string"
Series, made before the clock starts as the prototype's list is): MD5 the texts, deduplicate, look the keys up
in the shards (each shard's checksum is trusted once verified), and copy the rows out of the memory-mapped
shards into the float16 [N, D] matrix that training gathers batches from (widening them to float32 on the
device, batch by batch). Both are measured with the files in the page cache ("warm": every file read once just
before, as by a second run) and evicted from it with posix_fadvise(DONTNEED) ("cold", a first run after a
reboot or on a network disk).

    python bench/cache.py                      # 100,000 vectors of 768 floats, ~2 minutes on 2 cores
    python bench/cache.py --n 1000000          # the issue's goal size (needs ~5 GB of free disk, ~10 minutes)
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import _common
import train  # imported here so that no timed load pays for importing it
from _common import print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=100_000, help="number of vectors (distinct texts)")
parser.add_argument("--dim", type=int, default=768, help="vector size (768: Longformer-base; 384: MiniLM)")
parser.add_argument("--shard-size", type=int, default=100_000,
                    help="texts per project shard (each embedding run that finds new texts appends one shard)")
parser.add_argument("--states", nargs="+", default=["warm", "cold"], choices=["warm", "cold"],
                    help="page-cache states to measure the loads in")
parser.add_argument("--rounding-texts", type=int, default=1000,
                    help="texts embedded with the default encoder to measure float16 rounding (0: skip)")
parser.add_argument("--work-dir", default=None, help="where to write both caches (default: a temp folder)")
parser.add_argument("--seed", type=int, default=0)

CHUNK = 50_000


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def texts(n):
    """n distinct event texts (their MD5 is all a cache sees)."""
    return [f"Lab: Glucose {i / 10:g} mg/dL (ref 70-100)" for i in range(n)]


def vectors_chunk(start, stop, dim, seed):
    """Deterministic stand-in vectors, scaled like encoder outputs, made chunk by chunk to bound memory."""
    rng = np.random.default_rng([seed, start])
    return (0.5 * rng.standard_normal((stop - start, dim))).astype(np.float32)


def md5(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def disk_bytes(folder: Path) -> tuple[int, int]:
    """(allocated bytes incl. directory entries, number of files) under folder."""
    total, files = os.stat(folder).st_blocks * 512, 0
    with os.scandir(folder) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            total += st.st_blocks * 512
            files += 1
    return total, files


def evict(folder: Path):
    """Drop the folder's files from the page cache (no root needed): the next read comes from disk."""
    with os.scandir(folder) as entries:
        for entry in entries:
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm_up(folder: Path):
    """Read every file of the folder once, so that a "warm" load finds all of it in the page cache (files
    written long before, or by an earlier run of a kept --work-dir, may have been evicted since)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            with open(entry.path, "rb") as f:
                while f.read(1 << 24):
                    pass


# ----------------------------------------------------------------------------- prototype: one .npy per text

def prototype_write(folder, all_texts, dim, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(all_texts), CHUNK):
        stop = min(start + CHUNK, len(all_texts))
        for text, vector in zip(all_texts[start:stop], vectors_chunk(start, stop, dim, seed)):
            np.save(folder / f"{md5(text)}.npy", vector)


def prototype_load(folder, all_texts):
    return np.stack([np.load(folder / f"{md5(text)}.npy") for text in all_texts])


# ----------------------------------------------------------------------------- project: train.EmbeddingCache

def project_write(cache_dir, identity, all_texts, dim, seed, shard_size):
    cache = train.EmbeddingCache(cache_dir, identity, dim)
    for shard_start in range(0, len(all_texts), shard_size):
        shard_stop = min(shard_start + shard_size, len(all_texts))
        vectors = np.concatenate([vectors_chunk(s, min(s + CHUNK, shard_stop), dim, seed)
                                  for s in range(shard_start, shard_stop, CHUNK)])
        cache.append(train.text_keys(all_texts[shard_start:shard_stop]), vectors)
    return cache.folder


def project_load(cache_dir, identity, dim, text_column):
    """(float16 matrix, row of each text), exactly as train.py gets them from the event table's text column
    (a pandas "string" Series); nothing may need embedding."""
    stats = {}
    matrix, text_rows = train.embed_texts(text_column, None, cache_dir, identity=identity, dim=dim, stats=stats)
    assert stats["embedded"] == 0, "the project's cache lost vectors"
    return matrix, text_rows


def check_rows(vector_of_text, all_texts, dim, seed, tolerance):
    """Spot-check the loaded vectors of 50 random texts against the vectors that were written."""
    for row in np.random.default_rng(1).choice(len(all_texts), size=min(50, len(all_texts)), replace=False):
        expected = vectors_chunk(row - row % CHUNK, min(row - row % CHUNK + CHUNK, len(all_texts)), dim, seed)
        got = np.asarray(vector_of_text(row), dtype=np.float32)
        assert np.abs(got - expected[row % CHUNK]).max() <= tolerance, f"row {row} differs"


def float16_rounding(n_texts, seed):
    """Rounding of real default-encoder vectors through the project's float16 cache."""
    encoder = train.TextEncoder(_common.default_encoder_folder(), "cpu", "cls")
    unique = list(dict.fromkeys(_common.event_texts(4 * n_texts, seed)))[:n_texts]
    exact = encoder.encode(unique)
    rounded = exact.astype(np.float16).astype(np.float32)
    error = np.abs(rounded - exact)
    cosine = (exact * rounded).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(rounded, axis=1))
    return dict(texts=len(unique), max_abs_value=float(np.abs(exact).max()), max_abs_error=float(error.max()),
                max_rel_error=float((error / np.maximum(np.abs(exact), 1e-3)).max()),
                min_cosine=f"{float(cosine.min()):.7f}")


def main():
    args = parser.parse_args()
    print(_common.machine_description())
    all_texts = texts(args.n)
    text_column = pd.Series(all_texts, dtype="string")  # how train.py holds them (read_event_table's column)
    identity = f"bench-h{args.dim}"
    rows, load_seconds = [], {}
    with _common.WorkDir(args.work_dir, "bench_cache_") as work:
        proto_dir, cache_dir = work / "prototype_npy", work / "project_cache"
        marker = work / "written.json"
        setting = dict(n=args.n, dim=args.dim, seed=args.seed, shard_size=args.shard_size)
        written = json.loads(marker.read_text()) if marker.exists() else {}
        if written.get("setting") == setting:  # a kept --work-dir with both caches complete: reuse them
            proto_write_s, project_write_s = written["prototype_write_s"], written["project_write_s"]
            shard_dir = cache_dir / identity
            log("reusing the caches written before in", work)
        else:
            shutil.rmtree(proto_dir, ignore_errors=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
            log(f"writing {args.n:,} .npy files")
            start = time.perf_counter()
            prototype_write(proto_dir, all_texts, args.dim, args.seed)
            proto_write_s = time.perf_counter() - start
            log(f"  {proto_write_s:.1f} s; writing the project's cache")
            start = time.perf_counter()
            shard_dir = project_write(cache_dir, identity, all_texts, args.dim, args.seed, args.shard_size)
            project_write_s = time.perf_counter() - start
            log(f"  {project_write_s:.1f} s")
            marker.write_text(json.dumps(dict(setting=setting, prototype_write_s=proto_write_s,
                                              project_write_s=project_write_s)))
        proto_disk, proto_files = disk_bytes(proto_dir)
        project_disk, project_files = disk_bytes(shard_dir)

        for state in args.states:
            for way in ("prototype", "project"):
                folder = proto_dir if way == "prototype" else shard_dir
                evict(folder) if state == "cold" else warm_up(folder)
                log(f"loading ({state} page cache) the {way}'s way")
                start = time.perf_counter()
                if way == "prototype":
                    matrix = prototype_load(proto_dir, all_texts)
                    seconds = time.perf_counter() - start
                    assert matrix.shape == (args.n, args.dim) and matrix.dtype == np.float32
                    check_rows(lambda i: matrix[i], all_texts, args.dim, args.seed, 0.0)
                else:
                    matrix, text_rows = project_load(cache_dir, identity, args.dim, text_column)
                    seconds = time.perf_counter() - start
                    assert matrix.shape == (args.n, args.dim) and matrix.dtype == torch.float16
                    check_rows(lambda i: matrix[text_rows[i]].numpy(), all_texts, args.dim, args.seed, 2e-3)
                matrix = text_rows = None  # free it before the next load
                load_seconds[(state, way)] = seconds
                log(f"  {seconds:.2f} s")
        for way, disk, files, write_s in (("prototype: one .npy (float32) per text", proto_disk, proto_files,
                                           proto_write_s),
                                          ("project: EmbeddingCache (float16 Arrow shards)", project_disk, project_files,
                                           project_write_s)):
            key = "prototype" if way.startswith("prototype") else "project"
            row = dict(way=way, vectors=args.n, dim=args.dim, files=files, disk_MiB=disk / 2**20,
                       write_s=write_s)
            for state in args.states:
                row[f"load_{state}_s"] = load_seconds[(state, key)]
                row[f"{state}_speedup"] = load_seconds[(state, "prototype")] / load_seconds[(state, key)]
            row["disk_ratio"] = disk / proto_disk
            rows.append(row)
    print_table(rows, f"Embedding cache: {args.n:,} vectors of {args.dim}")
    rounding = None
    if args.rounding_texts:
        rounding = float16_rounding(args.rounding_texts, args.seed)
        print_table([rounding], "float16 rounding of the default encoder's vectors (project cache vs float32)")
    # headline: the smaller of the measured speedups (warm or cold page cache)
    pairs = dict(speedup=min(rows[1][f"{state}_speedup"] for state in args.states), disk_ratio=rows[1]["disk_ratio"])
    for other in args.states:
        pairs[f"{other}_speedup"] = rows[1][f"{other}_speedup"]
    if rounding:
        pairs["float16_max_abs_error"] = rounding["max_abs_error"]
    print_headline(**pairs)


if __name__ == "__main__":
    main()
