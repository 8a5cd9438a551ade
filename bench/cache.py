"""Embedding cache: disk size and load time of N vectors, one .npy per text (the prototype) vs the project's
EmbeddingCache (train.py: float16 Arrow shards keyed by MD5, memory-mapped, checksummed), and the float16
rounding error of the project's cache on real vectors of the default encoder.

"Load" is what a training run does, from the list of texts to the matrix it trains from. Prototype: MD5 of
each text, np.load of its file, np.stack into a float32 [N, D] matrix. Project: train.embed_texts with every
text cached, as train.py and explain_clinicalLF.py call it on the event table's text column (a pandas "string"
Series, made before the clock starts as the prototype's list is): MD5 the texts, deduplicate, look the keys up
in the shards (each shard's checksum is trusted once verified), then either hand out the shard's memory map
as the matrix (every text in one shard, as after one embedding run) or copy the rows out of the shards into a
float16 [N, D] matrix (texts spread over the shards of several runs). A memory map is read lazily, by the
first batches that gather from it, so the project's time also includes reading one value of every 4 KiB page
of the matrix: both ways end with every vector in memory.

The project's cache is measured in two layouts: as one embedding run leaves it (one shard) and as --runs
runs that each embedded a part of the texts leave it (that many shards, the copy path). Both are measured
with the files in the page cache ("warm": every file read once just before, as by a second run) and evicted
from it with posix_fadvise(DONTNEED) ("cold", a first run after a reboot or on a network disk).

    python bench/cache.py                      # 100,000 vectors of 768 floats, ~3 minutes on 2 cores
    python bench/cache.py --n 1000000          # the issue's goal size (needs ~7 GB of free disk, ~15 minutes)

--merge measures instead the memory of an embedding run's final merge (issue 14): the run holds its new
vectors as one float16 [N, D] matrix (the matrix it then trains from) and EmbeddingCache.append writes them as
one shard. In a fresh process: the matrix is made, the peak-memory counter reset, the shard written; the
figure is the peak above the resident memory before the write, in copies of the matrix. --merge-way
in-memory writes the shard the way train.py did before issue 14 (Arrow file built in memory, then written).

    python bench/cache.py --merge --n 3000000  # 3M x 768 float16 = 4.3 GiB matrix; needs ~5 GB RAM + disk
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
parser.add_argument("--runs", type=int, default=10,
                    help="the second project layout: the texts embedded by this many runs (one shard each)")
parser.add_argument("--states", nargs="+", default=["warm", "cold"], choices=["warm", "cold"],
                    help="page-cache states to measure the loads in")
parser.add_argument("--rounding-texts", type=int, default=1000,
                    help="texts embedded with the default encoder to measure float16 rounding (0: skip)")
parser.add_argument("--work-dir", default=None, help="where to write both caches (default: a temp folder)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--merge", action="store_true", help="measure the final merge's peak memory instead (see above)")
parser.add_argument("--merge-way", choices=["stream", "in-memory"], default="stream",
                    help="--merge: train.py's streamed append, or the in-memory shard of train.py before issue 14")
parser.add_argument("--stage-merge", action="store_true", help=argparse.SUPPRESS)

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

def project_write(cache_dir, identity, all_texts, dim, seed, runs):
    """The cache as `runs` embedding runs, each embedding an equal part of the texts, leave it: one shard each."""
    cache = train.EmbeddingCache(cache_dir, identity, dim)
    shard_size = -(-len(all_texts) // runs)
    for shard_start in range(0, len(all_texts), shard_size):
        shard_stop = min(shard_start + shard_size, len(all_texts))
        vectors = np.concatenate([vectors_chunk(s, min(s + CHUNK, len(all_texts)), dim, seed)  # as check_rows
                                  [max(shard_start - s, 0):shard_stop - s]
                                  for s in range(shard_start - shard_start % CHUNK, shard_stop, CHUNK)])
        cache.append(train.text_keys(all_texts[shard_start:shard_stop]), vectors)
    return cache.folder


def project_load(cache_dir, identity, dim, text_column):
    """(float16 matrix, row of each text), exactly as train.py gets them from the event table's text column
    (a pandas "string" Series); nothing may need embedding."""
    stats = {}
    matrix, text_rows = train.embed_texts(text_column, None, cache_dir, identity=identity, dim=dim, stats=stats)
    assert stats["embedded"] == 0, "the project's cache lost vectors"
    touch_every_page(matrix)
    return matrix, text_rows


def touch_every_page(matrix):
    """Read one value of every 4 KiB page of the matrix, so that a memory-mapped one is really read (from the
    page cache or the disk) within the timed load, as the prototype's np.load reads every file."""
    flat = matrix.view(-1)
    return float(flat[::4096 // flat.element_size()].float().sum())


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


# ----------------------------------------------------------------------------- the final merge's memory

def rss_mib(field="VmRSS"):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def append_in_memory(cache, keys, vectors):
    """EmbeddingCache.append as train.py had it before issue 14: Arrow array from numpy, the whole IPC file in
    a memory buffer, then its bytes written. Kept here only to measure the difference."""
    import pyarrow as pa
    import atomic_io
    batch = pa.record_batch({
        "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(keys.tobytes())]),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1)),
                                                 cache.dim)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue()
    cache.folder.mkdir(parents=True, exist_ok=True)
    final = cache.folder / f"shard-{time.time_ns()}-{os.getpid()}-{hashlib.md5(data).hexdigest()}.arrow"
    atomic_io.write_bytes(final, data)
    return final


def merge_stage(args):
    """In a fresh process: the run's matrix of N new vectors, then one shard written from it."""
    keys = np.random.default_rng(args.seed).integers(0, 2**63, size=(args.n, 2), dtype=np.int64).view(np.uint64)
    matrix = torch.empty(args.n, args.dim, dtype=torch.float16)
    for start in range(0, args.n, CHUNK):
        stop = min(start + CHUNK, args.n)
        matrix[start:stop] = torch.from_numpy(vectors_chunk(start, stop, args.dim, args.seed))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident memory
    before = rss_mib()
    cache = train.EmbeddingCache(Path(args.work_dir), f"bench-h{args.dim}", args.dim)
    start = time.perf_counter()
    if args.merge_way == "stream":  # as embed_texts merges: one shard per 2^31 - 1 values (Arrow's array limit)
        paths = cache.append_all(keys, matrix.numpy())
    else:
        paths = [append_in_memory(cache, keys, matrix.numpy())]
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    matrix_mib = matrix.numel() * 2 / 2**20
    size = sum(path.stat().st_size for path in paths)
    for path in paths:
        path.unlink()
    print(json.dumps(dict(way=args.merge_way, vectors=args.n, dim=args.dim, shards=len(paths), matrix_MiB=matrix_mib, rss_before_MiB=before,
                          peak_MiB=peak, extra_MiB=peak - before, extra_in_matrix_copies=(peak - before) / matrix_mib,
                          peak_in_matrix_copies=peak / matrix_mib, shard_MiB=size / 2**20, write_s=seconds)))


def merge_main(args):
    with _common.WorkDir(args.work_dir, "bench_merge_") as work:
        argv = [str(Path(__file__).resolve()), "--stage-merge", "--n", str(args.n), "--dim", str(args.dim),
                "--merge-way", args.merge_way, "--work-dir", str(work), "--seed", str(args.seed)]
        row = _common.run_json_subprocess(argv)
    print_table([row], f"Final merge of an embedding run: {args.n:,} new vectors of {args.dim} (float16)")
    print_headline(way=row["way"], vectors=args.n, extra_in_matrix_copies=row["extra_in_matrix_copies"],
                   peak_MiB=row["peak_MiB"], matrix_MiB=row["matrix_MiB"], write_s=row["write_s"])


def main():
    args = parser.parse_args()
    if args.stage_merge:
        return merge_stage(args)
    print(_common.machine_description())
    if args.merge:
        return merge_main(args)
    all_texts = texts(args.n)
    text_column = pd.Series(all_texts, dtype="string")  # how train.py holds them (read_event_table's column)
    identity = f"bench-h{args.dim}"
    layouts = {"prototype": "prototype: one .npy (float32) per text",
               "project": "project: EmbeddingCache, one run (1 float16 Arrow shard, memory-mapped)",
               "project_runs": f"project: EmbeddingCache, {args.runs} runs ({args.runs} shards, rows copied)"}
    runs = {"project": 1, "project_runs": args.runs}
    rows, load_seconds = [], {}
    with _common.WorkDir(args.work_dir, "bench_cache_") as work:
        folders = {"prototype": work / "prototype_npy"}
        folders.update({way: work / f"project_{runs[way]}_runs" / identity for way in runs})
        marker = work / "written.json"
        setting = dict(n=args.n, dim=args.dim, seed=args.seed, runs=args.runs)
        written = json.loads(marker.read_text()) if marker.exists() else {}
        if written.get("setting") == setting:  # a kept --work-dir with every cache complete: reuse them
            write_seconds = written["write_s"]
            log("reusing the caches written before in", work)
        else:
            write_seconds = {}
            for way, folder in folders.items():
                shutil.rmtree(folder, ignore_errors=True)
                log(f"writing {args.n:,} vectors: {layouts[way]}")
                start = time.perf_counter()
                if way == "prototype":
                    prototype_write(folder, all_texts, args.dim, args.seed)
                else:
                    project_write(folder.parent, identity, all_texts, args.dim, args.seed, runs[way])
                write_seconds[way] = time.perf_counter() - start
                log(f"  {write_seconds[way]:.1f} s")
            marker.write_text(json.dumps(dict(setting=setting, write_s=write_seconds)))

        for state in args.states:
            for way, folder in folders.items():
                evict(folder) if state == "cold" else warm_up(folder)
                log(f"loading ({state} page cache): {layouts[way]}")
                start = time.perf_counter()
                if way == "prototype":
                    matrix = prototype_load(folder, all_texts)
                    seconds = time.perf_counter() - start
                    assert matrix.shape == (args.n, args.dim) and matrix.dtype == np.float32
                    check_rows(lambda i: matrix[i], all_texts, args.dim, args.seed, 0.0)
                else:
                    matrix, text_rows = project_load(folder.parent, identity, args.dim, text_column)
                    seconds = time.perf_counter() - start
                    assert matrix.shape == (args.n, args.dim) and matrix.dtype == torch.float16
                    check_rows(lambda i: matrix[text_rows[i]].numpy(), all_texts, args.dim, args.seed, 2e-3)
                matrix = text_rows = None  # free it before the next load
                load_seconds[(state, way)] = seconds
                log(f"  {seconds:.2f} s")
        disk_use = {way: disk_bytes(folder) for way, folder in folders.items()}  # (bytes, files)
        for way in folders:
            disk, files = disk_use[way]
            row = dict(way=layouts[way], vectors=args.n, dim=args.dim, files=files, disk_MiB=disk / 2**20,
                       write_s=write_seconds[way])
            for state in args.states:
                row[f"load_{state}_s"] = load_seconds[(state, way)]
                row[f"{state}_speedup"] = load_seconds[(state, "prototype")] / load_seconds[(state, way)]
            row["disk_ratio"] = disk / disk_use["prototype"][0]
            rows.append(row)
    print_table(rows, f"Embedding cache: {args.n:,} vectors of {args.dim}")
    rounding = None
    if args.rounding_texts:
        rounding = float16_rounding(args.rounding_texts, args.seed)
        print_table([rounding], "float16 rounding of the default encoder's vectors (project cache vs float32)")
    # headline: the smaller of the measured speedups (warm or cold page cache), for each project layout
    one_run, several_runs = rows[1], rows[2]
    pairs = dict(speedup=min(one_run[f"{state}_speedup"] for state in args.states), disk_ratio=one_run["disk_ratio"])
    for state in args.states:
        pairs[f"{state}_speedup"] = one_run[f"{state}_speedup"]
    pairs[f"speedup_{args.runs}_runs"] = min(several_runs[f"{state}_speedup"] for state in args.states)
    if rounding:
        pairs["float16_max_abs_error"] = rounding["max_abs_error"]
    print_headline(**pairs)


if __name__ == "__main__":
    main()
