"""Memory of a whole-cohort explanation: the peak resident memory of `python explain_clinicalLF.py --split all
--max-stays 0` on synthetic cohorts of growing size, and how it grows per event and per stay.

    python bench/explain_memory.py                                   # 300, 1000, 3000 stays generated
    python bench/explain_memory.py --compare-with 479087a            # also that commit's explain_clinicalLF.py

For each size N (stays generated; the cohort keeps those still in the ICU and alive at the prediction time):
    cohort   python synthetic_mimic.py --out-dir D --n-stays N --events-per-stay E --extract D/events.parquet
    embed    python train.py --data D/events.parquet --embed-only --cache-dir C --text-encoder all-MiniLM-L6-v2
             (one cache for every size, so a text is embedded once)
and once, on the smallest cohort, a tiny model (the explanation's memory is the events', not the model's):
    train    python train.py --epochs 1 --d-model 8 --n-layers 1 --n-heads 2 --d-ff 16 --item-dim 8 ...
Then for each size, in its own process (its peak is its VmHWM; its CPU time is measured too):
    explain  python explain_clinicalLF.py --split all --max-stays 0 --n-steps 8 --max-n-steps 8
             --randomisation-stays 0 --curve-points 3 --internal-batch-size 64 --max-events 256 --batch-size 32
             (figures included)
--compare-with REV runs REV's explain_clinicalLF.py (`git show REV:explain_clinicalLF.py`, with this tree's
train.py) the same way on the same cohorts.

Why --events-per-stay 160 (about 100 events per stay in the 48 h window; the realistic regime has ~370):
feature ablation runs one forward per event of a stay over the whole stay, so a stay costs ~L^2 and a
realistic cohort of 2,000 stays would take hours of CPU. The realistic regime's texts, kinds and mix are kept.
Every part of the explanation's memory that grows with the cohort grows per event (or per stay), so the
slope per event measured here, applied to 360 events per stay, spreads each stay's own bytes over 100 events
instead of 360: an overestimate. The compute's transient memory (activations of one forward and backward) is
made the same at every size: --internal-batch-size 64 fixes the rows per forward (by default they come from
the free memory, which varies) and --max-events 256 the longest stay (it would grow with the cohort; 1-2% of
these stays have more events and lose their oldest). Explain runs use one thread (OMP_NUM_THREADS=1; memory
does not depend on it) and glibc's fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072): by default the
threshold rises with the tensors freed, so freed activation buffers stay in the heap and the peak varies by
a few hundred MiB between identical runs; fixed, every buffer over 128 KiB goes back to the system when freed,
and the peak follows what the run holds. --batch-size 32: the earlier code's figures fail on a batch made only
of stays without events (3,000 generated stays have 23 of them; fixed with the running sums).

The last line holds peak_MiB_<N>, bytes_per_event and the extrapolation to 50,000 stays x 360 events, for this
tree (and with --compare-with, the same with the prefix before_).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

import _common
from _common import print_headline, print_table

TARGET_STAYS, TARGET_EVENTS_PER_STAY = 50_000, 360  # a whole MIMIC-IV cohort at 48 h (docs/design.md)
TINY_MODEL = ["--epochs", "1", "--d-model", "8", "--n-layers", "1", "--n-heads", "2", "--d-ff", "16", "--pool-heads", "4",
              "--item-dim", "8", "--baselines", "none", "--bootstrap", "0", "--device", "cpu"]
CHEAP_EXPLAIN = ["--split", "all", "--max-stays", "0", "--n-steps", "8", "--max-n-steps", "8", "--randomisation-stays",
                 "0", "--curve-points", "3", "--internal-batch-size", "64", "--max-events", "256", "--batch-size", "32",
                 "--device", "cpu"]

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000], help="stays generated per cohort")
parser.add_argument("--events-per-stay", type=float, default=160, help="synthetic_mimic.py --events-per-stay")
parser.add_argument("--compare-with", metavar="REV", help="also measure this git revision's explain_clinicalLF.py")
parser.add_argument("--work-dir", default=None, help="keep cohorts, cache and outputs here (default: a temp folder)")
parser.add_argument("--seed", type=int, default=0)


def make_cohort(n_stays, folder, cache, encoder, args):
    """Synthetic tables, the event table (with the planted_risk truth column) and its texts in the cache."""
    import pandas as pd
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "events.parquet"
    if not table.is_file():
        _common.run_measured(["synthetic_mimic.py", "--out-dir", str(folder / "mimic"), "--n-stays", str(n_stays),
                              "--events-per-stay", str(args.events_per_stay), "--seed", str(args.seed),
                              "--extract", str(table)], folder / "synthesize.log")
    _common.run_measured(["train.py", "--data", str(table), "--embed-only", "--cache-dir", str(cache),
                          "--text-encoder", encoder], folder / "embed.log")
    events = pd.read_parquet(table, columns=["stay_id", "event_text"])
    return dict(table=table, rows=len(events), distinct_texts=int(events["event_text"].nunique()))


def explain(script, version, n_stays, cohort, checkpoint, cache, folder):
    save_dir = folder / f"explain_{version}"
    result = _common.run_measured([str(script), "--checkpoint", str(checkpoint), "--data", str(cohort["table"]),
                                   "--save-dir", str(save_dir), "--cache-dir", str(cache), *CHEAP_EXPLAIN],
                                  folder / f"explain_{version}.log")
    data = json.loads((save_dir / "faithfulness.json").read_text())["data"]
    row = dict(version=version, generated=n_stays, stays=data["n_stays"], events=data["n_events"],
               distinct_texts=cohort["distinct_texts"], peak_rss_MiB=result["peak_rss_MiB"],
               seconds=result["seconds"], cpu_seconds=result["cpu_seconds"])
    print(f"  {version}, {n_stays} generated: {row['stays']} stays, {row['events']:,} events, "
          f"peak {row['peak_rss_MiB']:.0f} MiB, {row['cpu_seconds']:.0f} CPU s", file=sys.stderr, flush=True)
    return row


def growth(rows):
    """Least-squares slope of the peak over events and over stays, and the peak extrapolated to a whole cohort
    from the slope per event (see the module docstring for why that overestimates)."""
    events = np.array([r["events"] for r in rows], dtype=float)
    stays = np.array([r["stays"] for r in rows], dtype=float)
    peak = np.array([r["peak_rss_MiB"] for r in rows]) * 2**20
    per_event, intercept = np.polyfit(events, peak, 1)
    per_stay, _ = np.polyfit(stays, peak, 1)
    target = TARGET_STAYS * TARGET_EVENTS_PER_STAY
    return dict(version=rows[0]["version"], bytes_per_event=per_event, bytes_per_stay=per_stay,
                intercept_MiB=intercept / 2**20, extrapolated_GiB=(intercept + per_event * target) / 2**30)


def main():
    args = parser.parse_args()
    print(_common.machine_description(), flush=True)
    encoder = str(_common.default_encoder_folder())
    with _common.WorkDir(args.work_dir, "bench_explain_memory_") as work:
        cache = work / "cache"
        scripts = {"this tree": _common.REPO_ROOT / "explain_clinicalLF.py"}
        if args.compare_with:
            old = work / f"explain_clinicalLF_{args.compare_with}.py"
            old.write_text(subprocess.run(["git", "show", f"{args.compare_with}:explain_clinicalLF.py"], check=True,
                                          capture_output=True, text=True, cwd=_common.REPO_ROOT).stdout)
            scripts = {f"before ({args.compare_with})": old, **scripts}
        sizes = sorted(args.sizes)
        cohorts = {n: make_cohort(n, work / f"n{n}", cache, encoder, args) for n in sizes}
        model = work / "model"
        checkpoint = model / "checkpoints" / "best_model.pth"
        if not checkpoint.is_file():
            _common.run_measured(["train.py", "--data", str(cohorts[sizes[0]]["table"]), "--output-dir", str(model),
                                  "--cache-dir", str(cache), "--text-encoder", encoder, "--seed", str(args.seed),
                                  *TINY_MODEL], work / "train.log")
        os.environ.update(OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")  # for the explain runs (see above)
        rows = [explain(script, version, n, cohorts[n], checkpoint, cache, work / f"n{n}")
                for version, script in scripts.items() for n in sizes]
    print_table(rows, "Peak resident memory of explain_clinicalLF.py --split all --max-stays 0")
    slopes = [growth([r for r in rows if r["version"] == version]) for version in scripts]
    print_table(slopes, f"Growth, and the peak extrapolated to {TARGET_STAYS:,} stays x {TARGET_EVENTS_PER_STAY} events")
    headline = {}
    for version, slope in zip(scripts, slopes):
        prefix = "before_" if version.startswith("before") else ""
        headline.update({f"{prefix}peak_MiB_{r['generated']}": r["peak_rss_MiB"] for r in rows if r["version"] == version})
        headline.update({f"{prefix}bytes_per_event": slope["bytes_per_event"],
                         f"{prefix}extrapolated_GiB": slope["extrapolated_GiB"]})
    headline["load_average_end"] = round(os.getloadavg()[0], 1)
    print_headline(**headline)


if __name__ == "__main__":
    main()
