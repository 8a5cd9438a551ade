"""Score every stay of an event table with a trained model, without training: new data, another hospital or a
later year (external validation), or the table the model was trained on.

    python predict.py --checkpoint trained_models/clinical_LF/checkpoints/best_model.pth \
        --data TABLE --output predictions.csv

One row per stay: the calibrated probability (the map train.py fitted on its validation split, kept in the
checkpoint) and the uncalibrated one. The table's labels give the metrics, with patient-bootstrap intervals, in
OUTPUT's name + `.metrics.json`. `--format meds --output x.parquet` writes the prediction schema that MEDS tools
(meds-evaluation) read. A checkpoint, table or text encoder that does not fit is refused with one line; nothing
is half written (docs/interfaces.md, "6. What predict.py writes").
"""
import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = REPO_DIR / "trained_models" / "clinical_LF" / "checkpoints" / "best_model.pth"

log = logging.getLogger("predict")


class PredictError(ValueError):
    """A user-facing problem: a table or option that does not fit the checkpoint."""


def build_arg_parser():
    p = argparse.ArgumentParser(description="Score every stay of an event table with a trained model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="best_model.pth of a train.py run")
    p.add_argument("--data", default=str(REPO_DIR / "sample_train.csv"), help="event table (.csv, .csv.gz, .parquet)")
    p.add_argument("--output", required=True,
                   help="predictions: .csv, .csv.gz or .parquet (--format table); .parquet (--format meds)")
    p.add_argument("--format", choices=("table", "meds"), default="table",
                   help="table: one row per stay with both probabilities; meds: meds-evaluation's prediction schema "
                        "(needs the table's prediction_time column)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="score only this split of the checkpoint's patient split (on the table it was trained on)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="calibrated probability at or above which predicted_boolean_value is true (--format meds)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default: the checkpoint's, where it exists here, else the shipped one)")
    p.add_argument("--text-encoder", default=None,
                   help="the checkpoint's encoder folder on this machine, for texts missing from the cache")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="stays per forward pass")
    p.add_argument("--max-events", type=int, default=None, help="most recent events per stay (default: the checkpoint's)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the metrics' intervals")
    p.add_argument("--seed", type=int, default=None, help="seed of the bootstrap (default: the checkpoint's)")
    return p


def output_format_suffix(path) -> str:
    suffixes = "".join(Path(path).suffixes[-2:]).lower()
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if suffixes.endswith(suffix):
            return suffix
    raise PredictError(f"--output {path}: name a .csv, .csv.gz or .parquet file")


def metrics_path(output) -> Path:
    """predictions.csv -> predictions.metrics.json (beside it)."""
    output = Path(output)
    return output.with_name(output.name[:-len(output_format_suffix(output))] + ".metrics.json")


def stays_frame(table, split_of_stay=None) -> pd.DataFrame:
    """One row per stay of the table (its order): stay_id, subject_id, prediction_time (where the table has it),
    mortality, split (where given)."""
    columns = [c for c in ("stay_id", "subject_id", "prediction_time", "mortality") if c in table.columns]
    stays = table.drop_duplicates("stay_id")[columns].reset_index(drop=True)
    if "prediction_time" in stays:
        stays["prediction_time"] = pd.to_datetime(stays["prediction_time"].astype("string"), errors="coerce")
    if split_of_stay is not None:
        stays.insert(2, "split", split_of_stay.reindex(stays["stay_id"]).to_numpy())
    return stays


def meds_predictions(stays, probability, threshold):
    """meds-evaluation's schema: subject_id int64, prediction_time timestamp[us], boolean_value bool,
    predicted_boolean_probability float32, predicted_boolean_value bool (probability >= threshold)."""
    import evaluation
    if "prediction_time" not in stays or stays["prediction_time"].isna().any():
        raise PredictError("--format meds needs each stay's prediction_time: the table has no prediction_time "
                           "column (extract_cohort.py writes one; sample_train.csv has none), or an empty one")
    return evaluation.meds_prediction_table(stays["subject_id"], stays["prediction_time"].to_numpy("datetime64[us]"),
                                            stays["mortality"], probability, threshold)


def write_predictions(frame_or_table, path):
    """A DataFrame as CSV/Parquet by extension, or an Arrow table as Parquet; temporary name, then rename."""
    import pyarrow as pa

    import atomic_io
    suffix = output_format_suffix(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frame_or_table, pa.Table):
        atomic_io.write_parquet(frame_or_table, path)
        return
    with atomic_io.atomic_output(path) as tmp:
        if suffix == ".parquet":
            frame_or_table.to_parquet(tmp, index=False)
        else:
            frame_or_table.to_csv(tmp, index=False)


def predict_table(checkpoint, data, split="all", cache_dir=None, text_encoder=None, device="cpu", batch_size=64,
                  max_events=None, progress=True):
    """(stays, ckpt, summary): one row per stay of `data` (an event table path) with probability (calibrated with
    the checkpoint's map) and probability_uncalibrated; the checkpoint; what the data looked like to the model.
    For notebooks as for the command."""
    import torch

    import event_table
    import evaluation
    import train
    model, preprocessor, ckpt = train.load_trained_model(checkpoint, text_encoder)
    table = event_table.read_event_table(data)
    split_of_stay = event_table.split_stays_by_patient(table, seed=ckpt["args"]["seed"])
    if split != "all":
        table = table[table["stay_id"].map(split_of_stay) == split].reset_index(drop=True)
        if table.empty:
            raise PredictError(f"{data}: no stays in the {split} split of the checkpoint's patient split")
    stays_in, embedding_matrix = train.prepare_stays_of_checkpoint(
        table, ckpt, cache_dir or train.cache_dir_of_checkpoint(ckpt["args"]), device, max_events, text_encoder)
    train.check_checkpoint_compatible(ckpt, embedding_dim=int(embedding_matrix.shape[1]))
    model, embedding_matrix = model.to(device), embedding_matrix.to(device)
    logits = train.predict_logits(model, stays_in, embedding_matrix, batch_size, progress=progress)
    if "calibration" not in ckpt:
        warnings.warn(f"{checkpoint} has no calibration (not a finished run's best_model.pth): 'probability' is the "
                      "uncalibrated one")
    stays = stays_frame(table, split_of_stay)
    if not np.array_equal(stays["stay_id"].to_numpy(), [s.stay_id for s in stays_in]):
        raise AssertionError("stays out of order")  # build_stays keeps the table's stay order
    stays["probability"] = evaluation.apply_calibration(ckpt.get("calibration"), logits)
    stays["probability_uncalibrated"] = 1 / (1 + np.exp(-logits))
    stays = stays[[c for c in stays.columns if c != "mortality"] + ["mortality"]]  # as train.py's predictions.csv
    # Items the model never saw in training share one embedding: a large share means another vocabulary
    # (another hospital's lab names, another extraction), worth knowing before trusting the numbers.
    item_ids = torch.cat([s.item_ids for s in stays_in])
    summary = {"n_stays": len(stays), "n_events": int(len(item_ids)),
               "share_of_events_with_an_item_unseen_in_training":
                   float((item_ids == 0).float().mean()) if len(item_ids) and preprocessor.items else None}
    return stays, ckpt, summary


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    import torch

    import atomic_io
    import evaluation
    output_format_suffix(args.output)  # a bad --output fails before any work
    if args.format == "meds" and output_format_suffix(args.output) != ".parquet":
        raise PredictError(f"--format meds writes Parquet: name a .parquet --output, not {args.output}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    stays, ckpt, summary = predict_table(args.checkpoint, args.data, args.split, args.cache_dir, args.text_encoder, device,
                                args.batch_size, args.max_events)
    seconds = round(time.perf_counter() - start, 1)
    if args.format == "meds":
        write_predictions(meds_predictions(stays, stays["probability"], args.threshold), args.output)
    else:
        write_predictions(stays, args.output)
    log.info("scored %d stays in %.1f s: %s", len(stays), seconds, args.output)
    seed = ckpt["args"]["seed"] if args.seed is None else args.seed
    metrics = evaluation.stays_metrics(stays["mortality"].to_numpy(float), stays["probability"].to_numpy(),
                                       stays["probability_uncalibrated"].to_numpy(), stays["subject_id"].to_numpy(),
                                       args.split if args.split != "all" else "data", args.bootstrap, seed)
    report = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
              "calibration": ckpt.get("calibration", {"method": "none"}), "metrics": metrics,
              "data_summary": {**summary, "seconds": seconds}}
    atomic_io.write_json(report, metrics_path(args.output))
    ci = metrics.get("auroc_ci95")
    print(f"{len(stays)} stays, {metrics['n_deaths']} deaths: AUROC "
          + ("n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.3f}")
          + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
          + (f", AUPRC {metrics['auprc']:.3f}" if metrics["auprc"] is not None else "")
          + f", Brier {metrics['brier']:.3f}, ECE {metrics['ece']:.3f} -> {metrics_path(args.output)}", flush=True)


def cli(argv=None):
    """main() as a command: a user's mistake ends with one clear line, not a traceback."""
    import event_table
    import train
    try:
        main(argv)
    except (PredictError, event_table.EventTableError, train.CheckpointError, train.TextEncoderError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
