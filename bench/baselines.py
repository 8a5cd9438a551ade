"""The fair baselines' cost: time and peak memory of baselines.fit_baselines (per-item features, then LightGBM and
a logistic regression, each tuned on validation), as train.py runs it after training, on one event table.

It runs the project's own code on train.py's patient split (event_table.split_stays_by_patient with --seed), in
this process only, so the peak resident memory printed is the table's plus the baselines'. The figure to compare
with is a training run on the same table (BENCHMARKS.md "Scale", "Model quality"): the baselines should be a
small share of it.

    python bench/baselines.py                                     # 5,000 realistic synthetic stays
    python bench/baselines.py --data WORK/events.parquet          # any event table, e.g. the 50,000-stay one of
                                                                  # python bench/extract.py --synthetic-stays 68000
                                                                  #   --raw-texts off --work-dir WORK
    python bench/baselines.py --data events.parquet --threads 1   # LightGBM and BLAS on one thread
"""
import argparse
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", type=Path, default=None,
                    help="event table (docs/interfaces.md section 1); default: a synthetic realistic one")
parser.add_argument("--synthetic-stays", type=int, default=5000, help="stays of the synthetic table (no --data)")
parser.add_argument("--seed", type=int, default=0, help="the patient split's seed, as train.py --seed")
parser.add_argument("--threads", type=int, default=None, help="OpenMP/BLAS threads (default: all cores)")
parser.add_argument("--work-dir", default=None, help="where the synthetic table goes (default: a temporary folder)")


def main(args):
    import _common  # here, not at the top: numpy (which _common imports) reads --threads when it loads
    from _common import WorkDir, machine_description, peak_rss_mib, print_headline, print_table
    with WorkDir(args.work_dir, "bench_baselines_") as work:
        path = args.data or _common.synthetic_cohort(work / "events.parquet", args.synthetic_stays, args.seed)
        import baselines
        import event_table
        print(machine_description(), flush=True)
        start = time.perf_counter()
        table = event_table.read_event_table(path)
        read_seconds, read_peak = time.perf_counter() - start, peak_rss_mib()
        split = event_table.split_stays_by_patient(table, args.seed)
        stay_split = table.drop_duplicates("stay_id")["stay_id"].map(split).to_numpy()
        start = time.perf_counter()
        results, _ = baselines.fit_baselines(table, stay_split, args.seed)
        total_seconds = time.perf_counter() - start
    if not results:
        sys.exit(f"{path}: the training split has a single class; no baseline was fitted")
    boosting, logistic = results["gradient_boosting"], results["logistic_regression"]
    features = boosting["features"]
    n_events = int(table["event_type"].notna().sum())
    print_table([{"table": str(path), "stays": len(stay_split), "events": n_events,
                  "train / val / test stays": "{} / {} / {}".format(*((stay_split == s).sum() for s in ("train", "val", "test"))),
                  "features (items)": f"{features['n_features']:,} ({features['n_items']:,})",
                  "read s": read_seconds, "features s": features["seconds"],
                  "LightGBM s": boosting["seconds"] - features["seconds"],
                  "logistic s": logistic["seconds"] - features["seconds"], "fit_baselines s": total_seconds,
                  "peak MiB (after the read)": f"{peak_rss_mib():,.0f} ({read_peak:,.0f})",
                  "LightGBM test AUROC": boosting["test"]["auroc"], "chosen": str(boosting["chosen"]),
                  "logistic test AUROC": logistic["test"]["auroc"]}],
                title="fit_baselines on one event table")
    print_headline(stays=len(stay_split), events=n_events, fit_baselines_seconds=total_seconds,
                   features_seconds=float(features["seconds"]), peak_MiB=peak_rss_mib(),
                   lightgbm_test_auroc=boosting["test"]["auroc"])


if __name__ == "__main__":
    arguments = parser.parse_args()
    if arguments.threads:  # before numpy, scikit-learn and LightGBM load their thread pools
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(arguments.threads)
    main(arguments)
