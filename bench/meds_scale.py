"""MEDS at scale: a synthetic MIMIC-IV cohort written as a MEDS dataset, imported back, and scored by a trained
model, with time and peak memory per stage (each stage the project's own command in its own process).

    synthesize  python synthetic_mimic.py --out-dir D --n-stays N                       (realistic regime)
    export      python extract_cohort.py --mimic-dir D --output M --output-format meds  (query.sql, then MEDS out)
    import      python extract_cohort.py --meds M --labels M/labels/... --output T      (MEDS in, one row per label)
    predict     python predict.py --checkpoint C --data T --output P --format meds      (every stay, calibrated)
    evaluate    meds-evaluation-cli predictions_path=P                                  (the field's evaluator)

    python bench/meds_scale.py --n-stays 300 --checkpoint trained_models/clinical_LF/checkpoints/best_model.pth
    python bench/meds_scale.py --n-stays 68000 --checkpoint RUN/checkpoints/best_model.pth --cache-dir RUN_CACHE \
        --work-dir WORK                      # ~50,000 cohort stays: the size of full MIMIC-IV at 48 h

The checkpoint should come from a run on the same generator (its items and texts); texts missing from
--cache-dir are embedded during predict (counted in its time). The last line gives the figures.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import _common
from _common import print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n-stays", type=int, default=300, help="synthetic_mimic.py --n-stays (the cohort keeps ~74%)")
parser.add_argument("--checkpoint", required=True, help="best_model.pth of a train.py run on this generator")
parser.add_argument("--cache-dir", default=None, help="embedding cache for predict.py (default: the checkpoint's)")
parser.add_argument("--work-dir", default=None, help="keep everything here (default: a temp folder, removed)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--batch-size", type=int, default=64, help="predict.py --batch-size")


def main():
    import pyarrow.parquet as pq
    args = parser.parse_args()
    print(_common.machine_description())
    rows = []
    with _common.WorkDir(args.work_dir, "bench_meds_") as work:
        mimic, meds_dir, table, predictions = work / "mimic", work / "meds", work / "events.parquet", work / "pred.parquet"

        def stage(name, command, **extra):
            result = _common.run_measured(command, work / f"{name}.log")
            rows.append(dict(stage=name, seconds=result["seconds"], peak_rss_MiB=result["peak_rss_MiB"], **extra))
            print(f"  {name}: {result['seconds']:.1f} s, peak {result['peak_rss_MiB']:.0f} MiB", file=sys.stderr,
                  flush=True)

        stage("synthesize", ["synthetic_mimic.py", "--out-dir", str(mimic), "--n-stays", str(args.n_stays),
                             "--seed", str(args.seed)])
        stage("export (query.sql + MEDS out)", ["extract_cohort.py", "--mimic-dir", str(mimic), "--output",
                                                str(meds_dir), "--output-format", "meds", "--no-progress"])
        shutil.rmtree(mimic)  # only the MEDS dataset goes on
        meds_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (meds_dir / "data").rglob("*.parquet"))
        rows[-1]["meds_rows"] = meds_rows
        labels = next((meds_dir / "labels").iterdir())
        stage("import (MEDS in, --labels)", ["extract_cohort.py", "--meds", str(meds_dir), "--labels", str(labels),
                                             "--output", str(table)])
        events = pq.read_table(table, columns=["stay_id", "event_type"]).to_pandas()
        n_stays, n_events = events["stay_id"].nunique(), int(events["event_type"].notna().sum())
        rows[-1].update(stays=n_stays, events=n_events)
        cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
        stage("predict (--format meds)", ["predict.py", "--checkpoint", args.checkpoint, "--data", str(table),
                                          "--output", str(predictions), "--format", "meds", "--device", "cpu",
                                          "--batch-size", str(args.batch_size), "--bootstrap", "200", *cache],
              stays=n_stays)
        cli = shutil.which("meds-evaluation-cli", path=str(Path(sys.executable).parent))
        stage("evaluate (meds-evaluation)", [cli, f"predictions_path={predictions}",
                                             f"output_file={work / 'meds_eval.json'}"])
        scored = json.loads((work / "meds_eval.json").read_text())["samples_equally_weighted"]
        ours = json.loads((work / "pred.metrics.json").read_text())["metrics"]
        rows[-1].update(auroc=scored["roc_auc_score"])
    print_table(rows, f"MEDS: {args.n_stays} generated stays, exported, imported and scored")
    print_headline(stays=n_stays, events=n_events, meds_rows=meds_rows,
                   **{r["stage"].split()[0] + "_s": r["seconds"] for r in rows},
                   peak_rss_MiB=max(r["peak_rss_MiB"] for r in rows),
                   auroc_meds_evaluation=scored["roc_auc_score"], auroc_predict=ours["auroc"])


if __name__ == "__main__":
    main()
