"""Model quality: train.py against the generator's true probabilities and the plain baselines.

For each seed, a synthetic MIMIC-IV (synthetic_mimic.py) is extracted with the project's query
(extract_cohort.py), each stay's true probability of death (truth/stays.csv.gz) is joined as the column
`true_probability` (train.py reports its test AUROC as `auroc_of_true_probability`: the ceiling) and each
planted event is flagged in `planted_risk` (explain_clinicalLF.py scores planted-event recovery on it), and
train.py is run once per configuration with the given options. The table gives, per configuration and
seed, the model's test AUROC, its ratio to the ceiling, the baselines' test AUROC (train.py fits them on
the same split), the paired difference from the best baseline (chosen on validation) with its patient-bootstrap
interval, ECE before/after calibration (equal-width and equal-mass), the epoch that stopped the run and the
training time.

    python bench/quality.py --work-dir /tmp/quality --seeds 0 1 2                      # defaults only
    python bench/quality.py --work-dir /tmp/quality --seeds 0 \\
        --config "lr=3e-4:--lr 3e-4" --config "mean pooling:--pooling mean"            # screening

Each cohort's texts are embedded once (the embedding cache in WORK_DIR/cache is shared by all runs).
A configuration is `NAME:OPTIONS` (OPTIONS are train.py options); `defaults:` runs train.py as shipped.
"""
import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import print_table

REPO = _common.REPO_ROOT


def make_cohort(work_dir: Path, n_stays: int, seed: int) -> Path:
    """WORK_DIR/cohort-seed{S}.parquet: the extracted event table with the truth columns planted_risk and
    true_probability (synthetic_mimic.attach_truth, as sample_train.csv has them)."""
    import synthetic_mimic
    out = work_dir / f"cohort-seed{seed}-{n_stays}.parquet"
    if out.is_file():
        return out
    mimic = work_dir / f"mimic-seed{seed}-{n_stays}"
    subprocess.run([sys.executable, "synthetic_mimic.py", "--out-dir", str(mimic), "--n-stays", str(n_stays),
                    "--seed", str(seed)], cwd=REPO, check=True)
    raw = work_dir / f"extracted-seed{seed}-{n_stays}.parquet"
    subprocess.run([sys.executable, "extract_cohort.py", "--mimic-dir", str(mimic), "--output", str(raw),
                    "--no-progress", "--threads", "1"], cwd=REPO, check=True)
    synthetic_mimic.attach_truth(raw, mimic)
    raw.rename(out)
    return out


def run_config(cohort: Path, run_dir: Path, cache_dir: Path, seed: int, options: list[str]) -> dict:
    """Train once; the row of the table (read back from metrics.json)."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():  # finished runs are kept: a rerun of the script only adds what is missing
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "train.py", "--data", str(cohort), "--output-dir", str(run_dir), "--cache-dir",
               str(cache_dir), "--seed", str(seed), "--attention-every", "0", *options]
        start = time.perf_counter()
        with open(run_dir / "train.log", "w") as log:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({code}); see {run_dir / 'train.log'}")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    m = json.loads(metrics_path.read_text())
    # Does the model fit its training split? The training objective (the loss it minimises: weighted BCE +
    # temporal term, mean over the epoch's batches) of the first epoch and of the best epoch.
    import torch
    history = torch.load(run_dir / "checkpoints" / "latest_checkpoint.pth", weights_only=True)["history"]
    objective = history["train_loss"]
    test = m["test"]
    ceiling = test.get("auroc_of_true_probability")
    baselines = {name: b["test"]["auroc"] for name, b in (m.get("baselines") or {}).items() if "test" in b}
    comparisons = m.get("comparisons") or {}
    best = comparisons.get(comparisons.get("best_baseline"), {})
    row = dict(seed=seed, model=test["auroc"], ceiling=ceiling,
               ratio=(test["auroc"] / ceiling) if ceiling and test["auroc"] else None,
               **{f"{k}": v for k, v in baselines.items()},
               best_baseline=comparisons.get("best_baseline"), minus_best=best.get("auroc_difference"),
               minus_best_ci95=best.get("auroc_difference_ci95"),
               ece_before=test.get("ece_uncalibrated", test.get("ece")), ece_after=test.get("ece"),
               ece_equal_mass_after=test.get("ece_equal_mass"),
               objective_first=objective[0], objective_best=objective[min(m.get("best_epoch", 0), len(objective) - 1)],
               best_epoch=m.get("best_epoch"), epochs_run=m.get("epochs_run"),
               stopped_early=m.get("stopped_early"),
               train_s=m.get("data", {}).get("train_seconds"), baselines_s=m.get("data", {}).get("baselines_seconds"))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="cohorts, embedding cache and runs (kept: reruns reuse them)")
    parser.add_argument("--n-stays", type=int, default=8500,
                        help="ICU stays generated (about 72%% pass the cohort's criteria: 8,500 -> ~6,300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one cohort and one training seed per value")
    parser.add_argument("--config", action="append", default=None,
                        help="NAME:TRAIN_OPTIONS (repeatable); default: 'defaults:' only")
    parser.add_argument("--cohort-only", action="store_true", help="make the cohorts, then exit")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    configs = [c.split(":", 1) for c in (args.config or ["defaults:"])]
    print(_common.machine_description(), flush=True)
    rows = []
    for seed in args.seeds:
        cohort = make_cohort(work, args.n_stays, seed)
        if args.cohort_only:
            continue
        for name, options in configs:
            slug = "".join(ch if ch.isalnum() else "_" for ch in name)
            row = run_config(cohort, work / "runs" / f"{slug}-seed{seed}", work / "cache", seed, shlex.split(options))
            rows.append({"config": name, **row})
            print(json.dumps(rows[-1]), flush=True)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        print_table([{k: r.get(k) for k in keys} for r in rows], "Model quality (test split)")
        summary = []
        for name, _ in configs:
            mine = [r for r in rows if r["config"] == name]
            mean = lambda key: sum(r[key] for r in mine) / len(mine)  # noqa: E731
            # the baseline chosen on validation in each run (not the best on test)
            best_baseline = sum(r[r["best_baseline"]] for r in mine) / len(mine)
            summary.append(dict(config=name, seeds=len(mine), model=mean("model"), ceiling=mean("ceiling"),
                                ratio=mean("model") / mean("ceiling"), best_baseline=best_baseline,
                                ece_before=mean("ece_before"), ece_equal_mass_after=mean("ece_equal_mass_after"),
                                goal_met=mean("model") >= 0.95 * mean("ceiling") and mean("model") >= best_baseline
                                and mean("ece_equal_mass_after") <= 0.05))
        print_table(summary, "Means over seeds (goal: model >= 0.95 x ceiling and >= the best baseline, "
                             "equal-mass ECE <= 0.05)")


if __name__ == "__main__":
    main()
