"""Embedding throughput: the prototype's way vs the project's TextEncoder, same texts, same weights.

Prototype (written out here, that is this script's job): a loop over every event text, an MD5 dict of texts
already seen, and for each new text one `tokenizer([text])` padded to 512 tokens and one model call, CLS of
the last layer. Project: train.py's TextEncoder on the distinct texts (length-sorted batches, dynamic
padding, inference mode, and for a Longformer the exact full-attention path of longformer_fast.py).

Encoders: a Longformer-base-sized random model (12 x 768, window 512) and the default encoder
all-MiniLM-L6-v2. Reports unique texts per second, the ratio, and the largest absolute difference between
the two sets of float32 vectors. `--bf16` adds the project's bfloat16 run (cosine to float32 reported).

    python bench/embed.py                        # small default, a few minutes on 2 cores
    python bench/embed.py --longformer-texts 256 --minilm-texts 2000 --bf16
"""
import argparse
import hashlib
import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

import _common
import longformer_fast
from _common import print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--encoders", nargs="+", default=["longformer", "minilm"], choices=["longformer", "minilm"])
parser.add_argument("--longformer-texts", type=int, default=128, help="distinct texts for the Longformer run")
parser.add_argument("--minilm-texts", type=int, default=500, help="distinct texts for the MiniLM run")
parser.add_argument("--texts", choices=["realistic", "zipf"], default="realistic",
                    help="realistic: event texts of realistic synthetic stays (synthetic_mimic.py + extract_cohort.py) "
                         "in their order; zipf: hand-written texts drawn Zipf-like (the figures before issue 12)")
parser.add_argument("--batch-size", type=int, default=64, help="project's encoder batch size")
parser.add_argument("--prototype-max-length", type=int, default=512,
                    help="the prototype padded every text to this many tokens")
parser.add_argument("--bf16", action="store_true", help="also time the project's encoder with bfloat16 weights")
parser.add_argument("--without-fast-path", action="store_true",
                    help="also time the project's encoder with longformer_fast's full-attention path switched off "
                         "(batched LongformerModel: shows what batching alone gives)")
parser.add_argument("--repeats", type=int, default=3, help="project runs per setting (median is reported)")
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
parser.add_argument("--work-dir", default=None, help="where to build the Longformer-base folder (default: temp)")
parser.add_argument("--seed", type=int, default=0)


def prototype_embed(folder, event_texts, max_length):
    """The prototype: per event, MD5 lookup; per new text, one padded tokenizer call and one model call."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    vectors = {}
    with torch.no_grad():
        for text in event_texts:
            key = hashlib.md5(text.encode("utf-8")).hexdigest()
            if key in vectors:
                continue
            inputs = tokenizer([text], padding="max_length", truncation=True, max_length=max_length,
                               return_tensors="pt")
            vectors[key] = model(**inputs).last_hidden_state[0, 0].numpy()
    return vectors


def project_embed(encoder, event_texts):
    """The project: distinct texts (first appearance order), then one TextEncoder.encode call."""
    unique = list(dict.fromkeys(event_texts))
    return unique, encoder.encode(unique)


def make_project_encoder(folder, dtype, batch_size):
    import train
    # the same switch as `train.py --embed-dtype`
    return train.TextEncoder(folder, torch.device("cpu"), pooling="cls", batch_size=batch_size,
                             dtype=str(dtype).removeprefix("torch."))


def bench_encoder(name, folder, n_unique, args):
    if args.texts == "realistic":
        stream, unique = _common.realistic_texts_with_unique_count(n_unique, seed=args.seed)
    else:
        stream, unique = _common.texts_with_unique_count(n_unique, seed=args.seed)
    rows = []
    # warm-up both ways on other texts (oneDNN primitive caches), not timed
    warm_texts = _common.event_texts(8, seed=args.seed + 999)
    prototype_embed(folder, warm_texts[:2], args.prototype_max_length)

    start = time.perf_counter()
    reference = prototype_embed(folder, stream, args.prototype_max_length)
    prototype_s = time.perf_counter() - start
    reference = np.stack([reference[hashlib.md5(t.encode("utf-8")).hexdigest()] for t in unique])
    rows.append(dict(encoder=name, way="prototype (per text, padded to %d)" % args.prototype_max_length,
                     dtype="float32", events=len(stream), unique_texts=len(unique), seconds=prototype_s,
                     texts_per_s=len(unique) / prototype_s, speedup=1.0, max_abs_diff=0.0, min_cosine=1.0))

    results = {}
    settings = [(torch.float32, True)] + ([(torch.bfloat16, True)] if args.bf16 else [])
    if args.without_fast_path and name == "longformer":
        settings.append((torch.float32, False))
    for dtype, fast_path in settings:
        encoder = make_project_encoder(folder, dtype, args.batch_size)
        encoder.encode(warm_texts)
        times = []
        original = longformer_fast.fits_fast_path
        if not fast_path:
            longformer_fast.fits_fast_path = lambda model, mask: False
        try:
            for _ in range(args.repeats if fast_path else 1):
                start = time.perf_counter()
                texts, vectors = project_embed(encoder, stream)
                times.append(time.perf_counter() - start)
        finally:
            longformer_fast.fits_fast_path = original
        assert texts == unique
        seconds = float(np.median(times))
        vectors = np.asarray(vectors, dtype=np.float32)
        diff = float(np.abs(vectors - reference).max())
        cosine = float((np.sum(vectors * reference, 1) / (np.linalg.norm(vectors, axis=1)
                                                          * np.linalg.norm(reference, axis=1))).min())
        dtype_name = str(dtype).replace("torch.", "")
        way = "project TextEncoder" if fast_path else "project TextEncoder, fast path off"
        rows.append(dict(encoder=name, way=way, dtype=dtype_name, events=len(stream),
                         unique_texts=len(unique), seconds=seconds, texts_per_s=len(unique) / seconds,
                         speedup=prototype_s / seconds, max_abs_diff=diff, min_cosine=f"{cosine:.6f}"))
        if fast_path:
            results[dtype_name] = rows[-1]
    return rows, results


def main():
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(_common.machine_description())
    rows, headline = [], {}
    with _common.WorkDir(args.work_dir, "bench_embed_") as work:
        for name in args.encoders:
            if name == "longformer":
                folder = _common.make_longformer_base(work / "longformer_base_random", seed=args.seed)
                n_unique = args.longformer_texts
            else:
                folder = _common.default_encoder_folder()
                n_unique = args.minilm_texts
            encoder_rows, results = bench_encoder(name, folder, n_unique, args)
            rows += encoder_rows
            print_table(encoder_rows, f"{name}: unique texts per second")
            headline[name] = results
    print_table(rows, "Embedding: prototype vs project (same texts, same weights)")
    first = headline[args.encoders[0]]["float32"]
    pairs = dict(speedup=first["speedup"], max_abs_diff=max(r["float32"]["max_abs_diff"] for r in headline.values()))
    for name, results in headline.items():
        for dtype_name, row in results.items():
            pairs[f"{name}_{dtype_name}_speedup"] = row["speedup"]
            pairs[f"{name}_{dtype_name}_texts_per_s"] = row["texts_per_s"]
    print_headline(**pairs)


if __name__ == "__main__":
    main()
