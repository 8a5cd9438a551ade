"""Training throughput: the project's dataset and batching vs a prototype-style baseline, same model, same data.

Both ways train train.py's MortalityTransformer (same config, same initial weights, same optimiser step:
BCE with pos_weight, AdamW, gradient clipping) for whole epochs over the training split of an event table;
only the data path differs:

- project: train.build_stays (integer rows into one embedding matrix + type ids + standardised log-hours),
  train.LengthBucketSampler (shuffled batches of similar length), train.collate_stays (right padding to the
  batch's longest stay) and train.batch_inputs (gathers the vectors on the device);
- prototype-style baseline (written out here): a torch Dataset whose items are built by concatenating float
  arrays per stay ([type one-hot | text vector | time] for every event, a copy of every vector), random
  batches (DataLoader shuffle=True) padded to the longest stay of the batch.

Each way runs in its own process, so its peak memory (ru_maxrss) is its own. Text vectors are random
(their values do not change the speed); their width is the encoder's (--text-dim).

    python bench/train.py                                  # 500 realistic synthetic stays, 3 epochs each
    python bench/train.py --data sample_train.csv          # the small regime (~36 events per stay)
    python bench/train.py --data events.parquet --epochs 2 --text-dim 768
"""
import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import _common
from _common import print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", default=None,
                    help="event table (docs/interfaces.md section 1); default: a synthetic one (synthetic_mimic.py "
                    "+ extract_cohort.py)")
parser.add_argument("--synthetic-stays", type=int, default=500, help="stays of the synthetic table (no --data)")
parser.add_argument("--regime", choices=["realistic", "small"], default="realistic",
                    help="synthetic_mimic.py --regime of the synthetic table (no --data)")
parser.add_argument("--epochs", type=int, default=3, help="timed epochs per way (the median epoch is reported)")
parser.add_argument("--warmup-steps", type=int, default=5,
                    help="untimed training steps per way before the timed epochs (thread pools, allocator)")
parser.add_argument("--batch-size", type=int, default=32, help="train.py's default")
parser.add_argument("--max-events", type=int, default=256,
                    help="both ways keep the same events (train.py's default is 768: on realistic stays the "
                         "prototype-style baseline then needs ~10 GB, so the benchmark keeps 256)")
parser.add_argument("--text-dim", type=int, default=384, help="text vector width (384: the default encoder)")
parser.add_argument("--d-model", type=int, default=256)
parser.add_argument("--n-layers", type=int, default=4)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--worker", choices=["project", "prototype"], help=argparse.SUPPRESS)
parser.add_argument("--table", help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- data

def load_stays(table_path, args):
    """Read, split by patient, fit the preprocessor on training rows, build the training stays (project code)."""
    import event_table
    import train
    table = event_table.read_event_table(table_path)
    split = event_table.split_stays_by_patient(table, args.seed)
    is_train = table["stay_id"].map(split).to_numpy() == "train"
    table = table.loc[is_train].reset_index(drop=True)
    preprocessor = train.EventPreprocessor().fit(table)
    is_event = table["event_type"].notna().to_numpy()
    text_rows = np.zeros(len(table), dtype=np.int64)
    codes, uniques = train.pd.factorize(table.loc[is_event, "event_text"])
    text_rows[is_event] = codes
    stays = train.build_stays(table, preprocessor, text_rows, args.max_events)
    generator = torch.Generator().manual_seed(args.seed)
    embedding_matrix = torch.randn(max(1, len(uniques)), args.text_dim, generator=generator) * 0.5
    return stays, embedding_matrix


# ----------------------------------------------------------------------------- the two data paths

class PrototypeDataset(torch.utils.data.Dataset):
    """Prototype-style items: every stay's event features concatenated from float arrays on each access."""

    def __init__(self, stays, embedding_matrix, n_types):
        self.stays, self.vectors, self.n_types = stays, embedding_matrix.numpy(), n_types

    def __len__(self):
        return len(self.stays)

    def __getitem__(self, i):
        stay = self.stays[i]
        onehot = np.eye(self.n_types, dtype=np.float32)[stay.type_ids.numpy()]
        vectors = self.vectors[stay.text_rows.numpy()]
        log_hours = stay.log_hours.numpy()[:, None]
        return np.concatenate([onehot, vectors, log_hours], axis=1), stay.static.numpy(), stay.label


def prototype_collate(items):
    """Pad to the longest stay of the (random) batch."""
    longest = max(1, max(len(events) for events, _, _ in items))
    width = items[0][0].shape[1]
    events = np.zeros((len(items), longest, width), dtype=np.float32)
    mask = np.zeros((len(items), longest), dtype=bool)
    for i, (features, _, _) in enumerate(items):
        events[i, :len(features)] = features
        mask[i, :len(features)] = True
    static = np.stack([s for _, s, _ in items])
    labels = np.array([y for _, _, y in items], dtype=np.float32)
    return torch.from_numpy(events), torch.from_numpy(mask), torch.from_numpy(static), torch.from_numpy(labels)


def batches(way, stays, embedding_matrix, args, epoch, model):
    """Yield (logits, labels, real positions, padded positions) for one epoch of one way."""
    import event_table
    import train
    if way == "project":
        sampler = train.LengthBucketSampler([len(s.type_ids) for s in stays], args.batch_size, shuffle=True,
                                            seed=args.seed)
        sampler.set_epoch(epoch)
        for idx in sampler:
            batch = train.collate_stays([stays[i] for i in idx])
            logits, _ = model(*train.batch_inputs(model, batch, embedding_matrix))
            yield logits, batch["label"], int(batch["mask"].sum()), batch["mask"].numel()
    else:
        loader = torch.utils.data.DataLoader(PrototypeDataset(stays, embedding_matrix, len(event_table.EVENT_TYPES)),
                                             batch_size=args.batch_size, shuffle=True, collate_fn=prototype_collate,
                                             generator=torch.Generator().manual_seed(args.seed + epoch))
        for events, mask, static, labels in loader:
            logits, _ = model(events, mask, static)
            yield logits, labels, int(mask.sum()), mask.numel()


def worker(args):
    """One way, in its own process: prints a JSON line."""
    import train
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    stays, embedding_matrix = load_stays(args.table, args)
    setup_s = time.perf_counter() - start
    torch.manual_seed(args.seed)
    config = train.ModelConfig(text_dim=args.text_dim, n_static=int(stays[0].static.numel()), d_model=args.d_model,
                               n_layers=args.n_layers)
    model = train.MortalityTransformer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    labels = np.array([s.label for s in stays])
    pos_weight = torch.tensor(float((labels == 0).sum() / max(1, labels.sum())))

    def step(logits, y):
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    # Untimed warm-up steps (from an epoch that is not timed): the first steps of a process pay one-off costs.
    for logits, y, _, _ in itertools.islice(batches(args.worker, stays, embedding_matrix, args, args.epochs, model),
                                            args.warmup_steps):
        step(logits, y)
    real = total = 0
    epoch_seconds = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        for logits, y, n_real, n_total in batches(args.worker, stays, embedding_matrix, args, epoch, model):
            step(logits, y)
            real, total = real + n_real, total + n_total
        epoch_seconds.append(time.perf_counter() - start)
    seconds = float(np.median(epoch_seconds))
    print(json.dumps(dict(way=args.worker, stays=len(stays), events=int(sum(len(s.type_ids) for s in stays)),
                          setup_s=setup_s, epoch_s=seconds, epochs_s=epoch_seconds, stays_per_s=len(stays) / seconds,
                          padding=1 - real / total, peak_rss_MiB=_common.peak_rss_mib())))


def main():
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(_common.machine_description())
    with _common.WorkDir(None, "bench_train_") as work:
        if args.data:
            table = Path(args.data)
        else:
            print(f"Synthetic table: {args.synthetic_stays} stays, {args.regime} regime", file=sys.stderr)
            table = _common.synthetic_cohort(work / "events.parquet", args.synthetic_stays, args.seed, args.regime)
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                       if k not in ("worker", "table", "data", "synthetic_stays", "regime")]
        results = {}
        for way in ("prototype", "project"):
            results[way] = _common.run_json_subprocess([__file__, f"--worker={way}", f"--table={table}",
                                                        *passthrough])
    base = results["prototype"]
    rows = []
    for way, r in results.items():
        rows.append(dict(way="project (bucketed batches, index gather)" if way == "project"
                         else "prototype-style (random batches, per-item concat)", stays=r["stays"],
                         events=r["events"], epoch_s=r["epoch_s"],
                         all_epochs_s=" / ".join(f"{t:.2f}" for t in r["epochs_s"]), stays_per_s=r["stays_per_s"],
                         speedup=r["stays_per_s"] / base["stays_per_s"], padding=r["padding"],
                         peak_rss_MiB=r["peak_rss_MiB"], setup_s=r["setup_s"]))
    print_table(rows, f"Training throughput (median of {args.epochs} epoch(s) after {args.warmup_steps} warm-up steps, "
                      f"batch {args.batch_size}, "
                      f"max {args.max_events} events, text dim {args.text_dim})")
    project = results["project"]
    print_headline(speedup=project["stays_per_s"] / base["stays_per_s"], padding=project["padding"],
                   baseline_padding=base["padding"], stays_per_s=project["stays_per_s"],
                   peak_rss_MiB=project["peak_rss_MiB"], baseline_peak_rss_MiB=base["peak_rss_MiB"])


if __name__ == "__main__":
    main()
