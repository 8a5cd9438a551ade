"""
Explain a trained MortalityTransformer: Captum attributions, attention analysis and how faithful
each explanation is.

    python explain_clinicalLF.py                      # test split of sample_train.csv, best_model.pth
    python explain_clinicalLF.py --stay-ids 30001 30002 --max-stays 50

Every attribution is to the model's one logit per stay (positive = pushes towards death), with
Captum's target=None. Four methods, one row per (stay, real event, method) in event_attributions.csv:
  integrated_gradients        IG on the per-event input tensor that train.MortalityTransformer.event_features
                              builds, [type one-hot | standardised text vector | standardised log-hours |
                              value | value change | item embedding] (the value, its change from the item's
                              previous value and the learned item vector where the model has them), summed
                              over an event's features, and on the static features; the
                              padding mask is passed through additional_forward_args (never attributed).
                              Padded positions take baseline = input, so their attribution is exactly 0.
  layer_integrated_gradients  IG on the output of the model's input projection, summed per event.
  feature_ablation            Captum FeatureAblation with one group per event (all its features)
                              and one group per static column (all its one-hot columns). An ablated
                              event is REMOVED: it is masked out of attention, exactly as if the stay
                              had been recorded without it.
  attention_pooling           the attention-pooling weights (mean over pooling heads). Not signed
                              and not an attribution; reported so that the faithfulness table shows
                              how far attention is from a faithful explanation.
Faithfulness (faithfulness.json): deletion/insertion curves vs random order, ERASER comprehensiveness
and sufficiency, rank agreement between methods, a model-randomisation sanity check and, where the
data has a `planted_risk` column, per-stay AUPRC of recovering the planted events.

Two modes. Every method on every stay (--every-method, and whenever no more stays are explained than
--audit-stays: the default run on 100 test stays). Cohort mode (more stays than --audit-stays): every stay
gets IG (events and statics, completeness checked and refined) and attention pooling; a seeded random sample
of --audit-stays stays (the audit) gets every method and every faithfulness measure, IG's per-event
convergence (n against 2n steps) and the randomisation check, stated in faithfulness.json with intervals over
the sample. Both write cohort_attributions.csv: IG per item (the event text without its numbers) over stays.

This file holds the options, loading, the batch loop and the command; the methods are in attribution.py, the
measures in faithfulness.py, what a run keeps of its batches in explanation_sums.py and the figures in
figures.py. The options are parsed before the heavy imports, so --help answers at once.
"""
import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never contact a model hub

# -----------------------------------------------------------------------------
# defaults (docs/interfaces.md §2)
DEFAULT_CHECKPOINT = "trained_models/clinical_LF/checkpoints/best_model.pth"
DEFAULT_DATA = "sample_train.csv"
DEFAULT_SAVE_DIR = "trained_models/clinical_LF/explainability"
DEFAULT_CACHE_DIR = "clinical_LF_precomp_emb"  # train.py's default cache (shipped vectors of the default encoder)
# A batch holds at most this many padded events (stays x its longest stay): real-length stays (300-768 events) go
# a few at a time, so the per-stay progress bar moves and its estimate means something; the sample's batches (16
# stays of at most 145 events) are as before.
MAX_BATCH_EVENTS = 2_560
REPORT_MAX_STAYS = 200  # the HTML report (report.py) is on by default when no more stays than this are explained
FIGURES = ("layer_attention_weights.png", "sequence_importance.png", "sequence_importance_combined.png",
           "feature_importance.png",
           "captum_attributions.png", "captum_layer_attributions.png", "captum_ablation_attributions.png",
           "cohort_attributions.png")
DEVELOPER_FIGURES = ("head_specialization.png", "query_vector_analysis.png")  # --developer-figures only
COHORT_METHODS = ("integrated_gradients", "attention_pooling")  # what every stay gets in cohort mode
N_STEPS_EVERY_METHOD, N_STEPS_COHORT = 32, 16  # IG's starting steps where --n-steps is not given
# -----------------------------------------------------------------------------


class ExplainError(ValueError):
    """A user-facing problem (missing file, unknown stay, incompatible checkpoint)."""


# -----------------------------------------------------------------------------
# Options: the run's (ExplainRun) and the methods' and measures' (ExplainSettings); the command's defaults.

@dataclass
class ExplainRun:
    """Which stays run_explainability_analysis explains and where; the defaults are also the command's."""
    split: str = "test"             # the checkpoint's patient-level split to explain ("all": every stay)
    max_stays: int = 100            # the first N stays (by id) of the split; 0 = all
    stay_ids: list | None = None    # also explain these stays and draw a timeline for each
    batch_size: int = 16            # stays per explanation batch
    randomisation_stays: int = 5    # stays explained again by every model of the cascading randomisation; 0 = skip
    audit_stays: int = 200          # seeded random sample of the split's stays that gets every method and measure;
                                    # more stays than this: cohort mode (IG and attention on the others)
    every_method: bool = False      # every method and measure on every stay, however many
    cache_dir: str | None = None    # embedding cache; None = the checkpoint's, else DEFAULT_CACHE_DIR
    text_encoder: str | None = None  # encoder folder, only for texts missing from the cache
    device: str = "cpu"
    max_events: int | None = None   # most recent events per stay; None = the checkpoint's --max-events
    make_figures: bool = True
    developer_figures: bool = False  # also DEVELOPER_FIGURES (the pooling heads' internals, for model developers)
    report: bool | None = None      # report/ (report.py): per-stay HTML pages; None = on up to REPORT_MAX_STAYS stays
    show_progress: bool = True


@dataclass
class ExplainSettings:
    """How the methods and the faithfulness measures run; the defaults are also the command's."""
    n_steps: int | None = None          # IG / LayerIG starting steps (Gauss-Legendre); None: N_STEPS_EVERY_METHOD,
                                        # in cohort mode N_STEPS_COHORT
    internal_batch_size: int | None = None  # rows (stays x steps) per IG forward/backward chunk; None = from the
                                            # free memory (auto_rows); it also bounds ablation and curve forwards
    baseline: str = "zero"              # IG/LayerIG event baseline and static baseline: "zero" or "mean"
    perturbations_per_eval: int = 8     # FeatureAblation: ablated groups per forward
    curve_points: int = 11              # deletion/insertion curves: 0%, 10%, ..., 100% of events
    random_orders: int = 3              # random orderings averaged for the random reference
    seed: int = 0
    ig_tolerance: float = 0.05          # IG: while a stay's completeness error exceeds this share of its logit
    max_n_steps: int = 256              # change, the worst pieces of its path are halved, up to max_n_steps
    layer_ig: str = "auto"              # "on", "off" or "auto": on, except in cohort mode where the input projection
                                        # is linear (then layer IG is IG but for the static part)


def explain_options(options):
    """(ExplainRun, ExplainSettings) from keyword options named as their fields."""
    run_names = {f.name for f in dataclasses.fields(ExplainRun)}
    setting_names = {f.name for f in dataclasses.fields(ExplainSettings)}
    unknown = sorted(set(options) - run_names - setting_names)
    if unknown:
        raise TypeError(f"run_explainability_analysis() got unexpected options {unknown}")
    return (ExplainRun(**{k: v for k, v in options.items() if k in run_names}),
            ExplainSettings(**{k: v for k, v in options.items() if k in setting_names}))


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except where it has none (None: the help says what happens)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_arg_parser():
    """The command's options (nothing heavy: --help answers before torch, Captum and train are imported)."""
    run, settings = ExplainRun(), ExplainSettings()  # the defaults, written once
    p = argparse.ArgumentParser(description="Explain a trained mortality model: Captum attributions, attention "
                                "analysis and measured faithfulness.", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint written by train.py")
    p.add_argument("--data", default=DEFAULT_DATA, help="event table (.csv, .csv.gz, .parquet)")
    p.add_argument("--save-dir", default=DEFAULT_SAVE_DIR, help="where the figures, CSVs and faithfulness.json go")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=run.split,
                   help="which stays to explain (the checkpoint's patient-level split and seed)")
    p.add_argument("--max-stays", type=int, default=run.max_stays,
                   help="explain the first N stays of the split (0 = all)")
    p.add_argument("--stay-ids", type=int, nargs="*", default=run.stay_ids,
                   help="also explain these stays and draw a timeline for each")
    p.add_argument("--batch-size", type=int, default=run.batch_size,
                   help="stays per explanation batch (and at most 2,560 padded events: real-length stays go a few "
                        "at a time)")
    p.add_argument("--audit-stays", type=int, default=run.audit_stays,
                   help="a seeded random sample of this many stays of the split gets every method and measure; where "
                   "more stays are explained, the others get IG and attention pooling only (cohort mode)")
    p.add_argument("--every-method", action="store_true",
                   help="every method and measure on every stay, however many (slow: seconds per stay)")
    p.add_argument("--n-steps", type=int, default=settings.n_steps,
                   help=f"starting integration steps of (Layer) Integrated Gradients (Gauss-Legendre; refined per "
                   f"stay until complete, see --ig-tolerance; default: {N_STEPS_EVERY_METHOD}, in cohort mode "
                   f"{N_STEPS_COHORT})")
    p.add_argument("--ig-tolerance", type=float, default=settings.ig_tolerance,
                   help="while a stay's IG completeness error exceeds this share of its logit change, the pieces of "
                   "its path with the largest errors are halved (8 more steps each) up to --max-n-steps (0 = never)")
    p.add_argument("--max-n-steps", type=int, default=settings.max_n_steps,
                   help="most IG steps the re-integration may use")
    p.add_argument("--layer-ig", choices=("auto", "on", "off"), default=settings.layer_ig,
                   help="layer IG on the stays that get every method; auto: except in cohort mode where the input "
                   "projection is linear (layer IG then equals IG but for the static features' part)")
    p.add_argument("--internal-batch-size", type=int, default=settings.internal_batch_size,
                   help="rows (stays x steps) per IG forward/backward chunk, also the most rows of an ablation or "
                   "curve forward; default: from the free memory (a quarter of it) and the stays' length")
    p.add_argument("--baseline", choices=("zero", "mean"), default=settings.baseline,
                   help="IG baseline of a real event and of the static features: zeros, or the training mean")
    p.add_argument("--perturbations-per-eval", type=int, default=settings.perturbations_per_eval,
                   help="FeatureAblation: groups per forward")
    p.add_argument("--curve-points", type=int, default=settings.curve_points,
                   help="points of the deletion/insertion curves")
    p.add_argument("--random-orders", type=int, default=settings.random_orders,
                   help="random orders averaged for the random reference")
    p.add_argument("--randomisation-stays", type=int, default=run.randomisation_stays,
                   help="stays explained again by every model of the cascading randomisation check (one model per "
                   "group of layers re-initialised, from the top; 0 = skip)")
    p.add_argument("--cache-dir", default=run.cache_dir, help="embedding cache (default: the checkpoint's, else "
                   f"{DEFAULT_CACHE_DIR})")
    p.add_argument("--text-encoder", default=run.text_encoder,
                   help="encoder folder, needed only for texts missing from the cache (default: the checkpoint's)")
    p.add_argument("--max-events", type=int, default=run.max_events, help="most recent events per stay (default: "
                   "the checkpoint's --max-events)")
    p.add_argument("--device", default=run.device, help="torch device to explain on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--seed", type=int, default=settings.seed,
                   help="seeds torch, the random orders of the faithfulness reference, the randomisation check and "
                   "the figures' sample of events")
    p.add_argument("--no-figures", action="store_true", help="write the CSVs and faithfulness.json only")
    p.add_argument("--developer-figures", action="store_true",
                   help="also draw the figures for model developers: " + ", ".join(DEVELOPER_FIGURES))
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=run.report,
                   help="write report/index.html and one self-contained HTML page per explained stay (--no-report: "
                   f"not); default: on when at most {REPORT_MAX_STAYS} stays are explained")
    return p


if __name__ == "__main__":  # --help and bad options answer here, before the heavy imports below (seconds)
    build_arg_parser().parse_args()

import contextlib  # noqa: E402  (after the early parse above)
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import atomic_io  # noqa: E402
import attribution  # noqa: E402
import event_table  # noqa: E402
import figures  # noqa: E402
import train  # noqa: E402
from explanation_sums import Collected  # noqa: E402
from faithfulness import faithfulness_for_batch  # noqa: E402

# -----------------------------------------------------------------------------
# Loading: checkpoint, data, stays — all through train.py's own functions.

def load_for_explanation(checkpoint_path, data_path, text_encoder=None):
    """Checkpoint (weights_only), model + preprocessor rebuilt from it, and the event table, with errors
    that say which file is wrong and what to do."""
    data_path = Path(data_path)
    if not data_path.is_file():
        raise ExplainError(f"data file not found: {data_path}. Pass --data FILE (an event table, "
                           "docs/interfaces.md §1).")
    if not Path(checkpoint_path).is_file():
        raise ExplainError(f"checkpoint not found: {checkpoint_path}. Train a model first (python train.py) or "
                           "pass --checkpoint FILE.")
    model, preprocessor, ckpt = train.load_trained_model(checkpoint_path, text_encoder)  # CheckpointError names the file
    table = event_table.read_event_table(data_path)
    return model, preprocessor, ckpt, table


def choose_stays(table, split_of_stay, split, max_stays, stay_ids, data_path):
    """The stays to explain: the first max_stays stays (by id) of the split, plus every --stay-ids stay."""
    known = set(table["stay_id"].unique().tolist())
    unknown = [s for s in (stay_ids or []) if s not in known]
    if unknown:
        raise ExplainError(f"unknown stay id(s) {unknown}: not in {data_path} (it has {len(known)} stays, "
                           f"e.g. {sorted(known)[:3]})")
    pool = sorted(known) if split == "all" else sorted(split_of_stay.index[split_of_stay == split].tolist())
    if not pool and not stay_ids:
        raise ExplainError(f"the {split} split of {data_path} has no stays")
    chosen = pool[:max_stays] if max_stays else pool
    return sorted(set(chosen) | set(stay_ids or []))


def model_device(model):
    return next(model.parameters()).device


def mean_training_baselines(model, table, split_of_stay, prepare, batch_size):
    """Training-mean event vector [F] and static vector [S] (the "mean" baseline option)."""
    rows = table[table["stay_id"].isin(split_of_stay.index[split_of_stay == "train"])].reset_index(drop=True)
    stays, embedding_matrix = prepare(rows)
    device = model_device(model)  # the matrix may come back on another device than the model's
    embedding_matrix = embedding_matrix.to(device)
    total_events, n_events, statics = 0.0, 0, []
    for i in range(0, len(stays), batch_size):
        batch = train.collate_stays(stays[i:i + batch_size])
        n_events += int(batch["mask"].sum())  # counted on the CPU: no device sync per batch
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            events, _, _ = train.batch_inputs(model, batch, embedding_matrix)  # padding rows are zeros
        total_events = total_events + events.sum((0, 1))
        statics.append(batch["static"])
    return total_events / max(n_events, 1), torch.cat(statics).mean(0)


# -----------------------------------------------------------------------------
# The attribution tables (docs/interfaces.md §4), written batch by batch.

# the event table's columns that each row of event_attributions.csv repeats (the event it attributes)
ATTRIBUTION_EVENT_COLUMNS = ("event_index", "event_time", "event_type", "event_text", "relative_time_to_final_event")


def attribution_rows(stay_ids, event_meta, event_attr, static_attr, static_names, mask):
    """docs/interfaces.md §4 rows for one batch. event_meta[b]: the stay's real events (ATTRIBUTION_EVENT_COLUMNS)
    in sequence order, one row per real position of mask[b]. Padding never becomes a row; a stay without events
    gets static rows only."""
    event_parts, static_rows = [], []
    for b, stay_id in enumerate(stay_ids):
        positions = mask[b].nonzero().flatten()
        meta = event_meta[b]
        if len(meta) != len(positions):
            raise ValueError(f"stay {stay_id}: {len(meta)} event rows but {len(positions)} real positions")
        for method, attr in event_attr.items():
            if len(positions) == 0:
                continue
            part = meta.loc[:, list(ATTRIBUTION_EVENT_COLUMNS)].copy()
            part.insert(0, "stay_id", int(stay_id))
            part["method"] = method
            part["attribution"] = attr[b, positions].double().numpy()
            event_parts.append(part)
        for method, attr in static_attr.items():
            for g, name in enumerate(static_names):
                static_rows.append({"stay_id": int(stay_id), "feature": name, "method": method,
                                    "attribution": float(attr[b, g])})
    columns = ["stay_id", *ATTRIBUTION_EVENT_COLUMNS, "method", "attribution"]
    events = pd.concat(event_parts, ignore_index=True) if event_parts else pd.DataFrame(columns=columns)
    return events[columns], pd.DataFrame(static_rows, columns=["stay_id", "feature", "method", "attribution"])


class StreamingCsv:
    """A CSV written part by part to an open (temporary) file: the header once, then each part's rows."""

    def __init__(self, path):
        self.file, self.header = open(path, "w", newline=""), True

    def write(self, frame):
        frame.to_csv(self.file, index=False, header=self.header)
        self.header = False

    def close(self):
        self.file.close()


def read_attribution_table(path):
    """event_attributions.csv or static_attributions.csv as a DataFrame: strings as categories (each distinct
    text held once), event_time as timestamps, rows by stay, method and position."""
    strings = ("event_type", "event_text", "method", "feature")
    header = pd.read_csv(path, nrows=0).columns
    frame = pd.read_csv(path, dtype={c: "category" for c in strings if c in header},
                        parse_dates=["event_time"] if "event_time" in header else False)
    order = [c for c in ("stay_id", "method", "event_index") if c in frame.columns]
    return frame.sort_values(order, kind="stable", ignore_index=True)


# -----------------------------------------------------------------------------
# The whole analysis: load, explain in batches, measure faithfulness, write outputs.

@dataclass
class ExplainInputs:
    """The stays to explain and what explaining them needs, on the run's device (prepare_explanation)."""
    model: torch.nn.Module
    embedding_matrix: torch.Tensor
    rows: pd.DataFrame              # the explained stays' rows of the event table, with each event's event_index
    stays: list                     # train's stays, length-sorted: little padding, so little wasted compute
    static_groups: dict             # the preprocessor's static_feature_groups
    split_of_stay: pd.Series
    event_baseline: torch.Tensor | None = None   # None: zeros (--baseline zero)
    static_baseline: torch.Tensor | None = None
    audited: frozenset = frozenset()  # the audit's stay ids: a seeded sample of the split's stays (all of them if few)
    cohort: bool = False            # cohort mode: stays outside the audit get COHORT_METHODS only
    calibration: dict | None = None  # the checkpoint's map from logit to probability
    n_in_split: int = 0             # explained stays of the split (the audit's pool)

    @property
    def static_names(self):
        return list(self.static_groups)

    @property
    def has_planted(self):
        return "planted_risk" in self.rows.columns


def prepare_explanation(checkpoint_path, data_path, run, settings):
    """Load the checkpoint and the data, choose the stays and build their inputs (and the training-mean
    baselines with --baseline mean)."""
    model, preprocessor, ckpt, table = load_for_explanation(checkpoint_path, data_path, run.text_encoder)
    args = ckpt.get("args", {})
    max_events = run.max_events or args.get("max_events")
    cache_dir = run.cache_dir or train.cache_dir_of_checkpoint(args)
    split_of_stay = event_table.split_stays_by_patient(table, seed=args.get("seed", 0))
    chosen = choose_stays(table, split_of_stay, run.split, run.max_stays, run.stay_ids, data_path)

    def prepare(rows):
        """rows -> (stays, embedding_matrix) with the checkpoint's preprocessor and encoder (texts missing from
        the cache are embedded; without the encoder folder a clear error names it)."""
        return train.prepare_stays_of_checkpoint(rows, ckpt, cache_dir, run.device, max_events, run.text_encoder)

    # every stay of the table (--split all): the table itself, not a second copy of it
    rows = (table if len(chosen) == table["stay_id"].nunique()
            else table[table["stay_id"].isin(chosen)].reset_index(drop=True))
    is_event = rows["event_type"].notna()
    rows["event_index"] = is_event.astype(int).groupby(rows["stay_id"]).cumsum() - 1  # position in the stay
    stays, embedding_matrix = prepare(rows)
    try:
        train.check_checkpoint_compatible(ckpt, embedding_dim=int(embedding_matrix.shape[1]))
    except train.CheckpointError as e:
        raise ExplainError(f"{checkpoint_path}: {e}") from None
    model, embedding_matrix = model.to(run.device), embedding_matrix.to(run.device)
    event_baseline = static_baseline = None
    if settings.baseline == "mean":
        event_baseline, static_baseline = mean_training_baselines(model, table, split_of_stay, prepare, run.batch_size)
    in_split = [s for s in chosen if run.split == "all" or split_of_stay.get(s) == run.split]
    cohort = not run.every_method and len(in_split) > run.audit_stays
    # from here on only the explained stays' rows (the table goes when this returns)
    return ExplainInputs(model, embedding_matrix, rows, sorted(stays, key=lambda s: (len(s.type_ids), s.stay_id)),
                         preprocessor.static_feature_groups, split_of_stay, event_baseline, static_baseline,
                         audited=audit_sample(in_split, run.audit_stays, settings.seed), cohort=cohort,
                         calibration=ckpt.get("calibration"), n_in_split=len(in_split))


def audit_sample(stay_ids, size, seed):
    """The audit's stays: `size` of `stay_ids` drawn at random without replacement (the same for the same seed
    and stays), or all of them where there are no more."""
    stay_ids = sorted(int(s) for s in stay_ids)
    if len(stay_ids) <= size:
        return frozenset(stay_ids)
    return frozenset(int(s) for s in np.random.default_rng(seed).choice(stay_ids, size=max(size, 0), replace=False))


def resolved_settings(settings, cohort):
    """The settings with IG's starting steps filled in for the mode (N_STEPS_EVERY_METHOD or N_STEPS_COHORT)."""
    if settings.n_steps is not None:
        return settings
    return dataclasses.replace(settings, n_steps=N_STEPS_COHORT if cohort else N_STEPS_EVERY_METHOD)


def audit_methods(model, settings, cohort):
    """The methods the audited stays (every stay outside cohort mode) get: every method, less layer IG where it
    adds nothing (--layer-ig auto in cohort mode with a linear input projection) or is switched off."""
    layer_ig = settings.layer_ig == "on" or (settings.layer_ig == "auto" and not (
        cohort and attribution.input_projection_is_linear(model)))
    return tuple(m for m in attribution.METHODS if m != "layer_integrated_gradients" or layer_ig)


def randomisation_check_batches(n_batches, run):
    """The batches whose first stays the sanity check explains again: spread over the length-sorted stays, not
    only the shortest ones."""
    n_check = math.ceil(run.randomisation_stays / run.batch_size) if run.randomisation_stays else 0
    n_check = min(n_batches, n_check)
    return set(np.linspace(0, n_batches - 1, n_check).round().astype(int).tolist()) if n_check else set()


def explain_chunk(data, chunk, run, settings, rng, cascade=None, methods=attribution.METHODS, audit=True):
    """One batch of stays: `methods`, both attribution tables' rows and, with `audit`, the faithfulness measures
    and IG's per-event convergence on the batch's audited stays; with `cascade` = (randomised models, their
    settings, number of stays) also the first stays' attributions by every randomised model. Returns (meta, mask,
    out, event_rows, static_rows, faith, randomised, in_split): what Collected.add takes."""
    batch = {k: v.to(run.device) for k, v in train.collate_stays(chunk).items()}
    with torch.no_grad():  # the tensor Captum attributes (train.MortalityTransformer.event_features)
        events, mask, static = train.batch_inputs(data.model, batch, data.embedding_matrix)
    baselines = data.event_baseline, data.static_baseline
    convergence = torch.tensor([audit and stay.stay_id in data.audited for stay in chunk])
    # each layer's attention weights (layer_attention_weights.png, the single-stay figures): audited batches and
    # --stay-ids stays; cohort batches take the model's faster path without them
    layer_attention = audit or any(stay.stay_id in set(run.stay_ids or []) for stay in chunk)
    out = attribution.explain_batch(data.model, events, mask, static, data.static_groups, settings, *baselines,
                                    methods=methods, convergence=convergence if bool(convergence.any()) else False,
                                    layer_attention=layer_attention)
    meta = []
    for b, stay in enumerate(chunk):
        n = len(stay.type_ids)
        if int(mask[b].sum()) != n or (n and not bool(mask[b, :n].all())):
            raise RuntimeError(f"stay {stay.stay_id}: collate_stays did not put its {n} events first")
        meta.append(data.rows.iloc[stay.event_row_index.numpy()])
    event_rows, static_rows = attribution_rows(batch["stay_id"].tolist(), meta, out["event"], out["static"],
                                               data.static_names, mask.cpu())
    faith = {}
    if audit:
        faith = faithfulness_for_batch(data.model, events, mask, static,
                                       {m: out["event"][m] for m in attribution.METHODS if m in out["event"]},
                                       settings.curve_points, settings.random_orders, rng,
                                       max_rows=settings.internal_batch_size)
    randomised = None
    if cascade:
        models, cascade_settings, k = cascade
        randomised = [(name, attribution.explain_batch(step_model, events[:k], mask[:k], static[:k], data.static_groups,
                                                       cascade_settings, *baselines, methods=methods)["event"])
                      for name, step_model in models]
    in_split = [run.split == "all" or data.split_of_stay.get(stay.stay_id) == run.split for stay in chunk]
    return meta, mask.cpu(), out, event_rows, static_rows, faith, randomised, in_split


def report_wanted(run, n_stays):
    """--report, or by default (None) up to REPORT_MAX_STAYS stays explained."""
    return bool(run.report) or (run.report is None and n_stays <= REPORT_MAX_STAYS)


def explain_in_batches(data, run, settings, save_dir):
    """Explain the stays batch by batch, writing both attribution tables to save_dir as they come (published when
    complete); returns what the run kept of its batches (Collected)."""
    models = (attribution.cascading_randomisation(data.model, seed=settings.seed + 1)
              if run.randomisation_stays else [])
    # the randomised models are explained with IG's starting steps: rank correlations need no re-integration
    cascade_settings = dataclasses.replace(settings, ig_tolerance=0.0)
    collected = Collected(data.static_names, detail_stay_ids=run.stay_ids or [], seed=settings.seed,
                          calibration=data.calibration, keep_stay_measures=report_wanted(run, len(data.stays)))
    rng = np.random.default_rng(settings.seed)
    batches = plan_batches(data, run, settings.seed)
    n_audit_batches = sum(audit for _, audit, _ in batches)
    check_batches = randomisation_check_batches(n_audit_batches, run)
    methods = audit_methods(data.model, settings, data.cohort)
    # wall and CPU seconds and stays of the batches with every method and of those with IG and attention only
    timing = {f"{kind}_{what}": 0 for kind in ("every_method", "ig_and_attention")
              for what in ("seconds", "cpu_seconds", "stays")}
    with contextlib.ExitStack() as outputs:
        # the attribution tables are written batch by batch to temporary names, published when complete
        writers = {name: StreamingCsv(outputs.enter_context(atomic_io.atomic_output(save_dir / name)))
                   for name in ("event_attributions.csv", "static_attributions.csv")}
        progress = outputs.enter_context(tqdm(total=len(data.stays), desc="explaining", unit="stay",
                                              disable=not run.show_progress, smoothing=0.05))
        for chunk, audit, audit_number in batches:
            start, cpu_start = time.perf_counter(), time.process_time()
            cascade = None
            if models and audit and audit_number in check_batches:
                k = math.ceil(run.randomisation_stays / len(check_batches))  # the check's stays, spread over batches
                cascade = models, cascade_settings, k
            meta, mask, out, event_rows, static_rows, faith, randomised, in_split = explain_chunk(
                data, chunk, run, settings, rng, cascade, methods if audit else COHORT_METHODS, audit)
            collected.add(chunk, meta, mask, out, event_rows, static_rows, faith, randomised, data.has_planted,
                          in_split, [audit and stay.stay_id in data.audited for stay in chunk] if data.cohort else None)
            writers["event_attributions.csv"].write(event_rows.sort_values(["stay_id", "method", "event_index"],
                                                                           kind="stable"))
            writers["static_attributions.csv"].write(static_rows.sort_values(["stay_id", "method"], kind="stable"))
            kind = "every_method" if audit else "ig_and_attention"
            timing[f"{kind}_seconds"] += time.perf_counter() - start
            timing[f"{kind}_cpu_seconds"] += time.process_time() - cpu_start
            timing[f"{kind}_stays"] += len(chunk)
            progress.update(len(chunk))

        for writer in writers.values():
            writer.close()
    collected.timing = timing
    return collected


def plan_batches(data, run, seed):
    """[(stays, audit, number among the audit batches)] in the order they run. Every method on every stay: the
    length-sorted stays in batches of run.batch_size, each an audit batch, as before cohort mode. Cohort mode:
    the audited stays in their own batches and the others in theirs (each length-sorted), the batches in a
    seeded random order, so that the progress bar's time estimate holds from the start; a batch also ends where
    the next stay is much longer than its first (similar_length_batches), as a sample of a few hundred stays spans
    every length and a batch runs at its longest stay's length."""
    size = max(1, run.batch_size)
    if not data.cohort:
        return [(chunk, True, n) for n, chunk in enumerate(similar_length_batches(data.stays, size, ratio=None))]
    audited = [stay for stay in data.stays if stay.stay_id in data.audited]
    others = [stay for stay in data.stays if stay.stay_id not in data.audited]
    batches = [(chunk, True, n) for n, chunk in enumerate(similar_length_batches(audited, size))]
    batches += [(chunk, False, None) for chunk in similar_length_batches(others, size)]
    return [batches[i] for i in np.random.default_rng(seed).permutation(len(batches))]


def similar_length_batches(stays, size, ratio=1.25, slack=16, max_events=MAX_BATCH_EVENTS):
    """Length-sorted stays in batches of at most `size` stays and `max_events` padded events (stays x the longest
    one), a batch ending (unless `ratio` is None) before a stay longer than `ratio` x its first stay's events +
    `slack`: every method runs a batch at its longest stay's length (feature ablation once per position), so a batch
    of a short and a long stay costs the long one's price twice."""
    batches, current = [], []
    for stay in stays:
        n = len(stay.type_ids)
        if current and (len(current) >= size or (len(current) + 1) * n > max_events
                        or (ratio is not None and n > ratio * len(current[0].type_ids) + slack)):
            batches.append(current)
            current = []
        current.append(stay)
    return batches + [current] if current else batches


def run_explainability_analysis(checkpoint_path=DEFAULT_CHECKPOINT, test_data_path=DEFAULT_DATA,
                                save_dir=DEFAULT_SAVE_DIR, return_tables=True, **options):
    """Explain the chosen stays (every method on every stay, or cohort mode: see the module's docstring) and write
    docs/interfaces.md §4's outputs under save_dir.
    `options`: any field of ExplainRun or ExplainSettings by name (their defaults are the command's).
    Returns dict(paths={name: Path}, faithfulness=dict, event_attributions=DataFrame,
    static_attributions=DataFrame, predictions=DataFrame (probability: calibrated with the checkpoint's map;
    probability_uncalibrated), analyses={layer_attention_patterns, feature_importance_over_time,
    critical_time_periods: {method: DataFrame}}, timing={prepare_seconds, every_method_seconds, ..., total_seconds}).

    The run holds no attribution table: both are written batch by batch, and the analyses and figures come from
    running sums, a bounded sample and the stays they draw (Collected), so memory does not grow with the events
    explained beyond a few bytes each. With return_tables (default) the two CSVs are read back once at the end
    (about 50 bytes per event row); return_tables=False returns None for them (the command's way)."""
    run, settings = explain_options(options)
    if settings.baseline not in ("zero", "mean"):
        raise ExplainError(f"--baseline must be 'zero' or 'mean', not {settings.baseline!r}")
    if run.audit_stays < 1:
        raise ExplainError(f"--audit-stays must be 1 or more, not {run.audit_stays}: the faithfulness measures, the "
                           "randomisation check and IG's per-event convergence run on the audited stays")
    if settings.layer_ig not in ("auto", "on", "off"):
        raise ExplainError(f"--layer-ig must be 'auto', 'on' or 'off', not {settings.layer_ig!r}")
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    data = prepare_explanation(checkpoint_path, test_data_path, run, settings)
    settings = resolved_settings(settings, data.cohort)
    prepare_seconds = time.perf_counter() - start
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    collected = explain_in_batches(data, run, settings, save_dir)
    measures = collected.faithfulness(settings, data.has_planted)
    measures["audit"] = audit_summary(data, run, settings)
    measures["data"] = dict(checkpoint=str(checkpoint_path), data=str(test_data_path), split=run.split,
                            n_stays=len(data.stays), n_events=int(sum(len(s.type_ids) for s in data.stays)),
                            n_stays_outside_split=collected.n_stays_outside_split,
                            note="--stay-ids stays outside the split are explained and drawn but not counted "
                                 "in the faithfulness measures")
    paths = {"event_attributions.csv": save_dir / "event_attributions.csv",
             "static_attributions.csv": save_dir / "static_attributions.csv",
             "faithfulness.json": atomic_io.write_json(measures, save_dir / "faithfulness.json")}
    with atomic_io.atomic_output(save_dir / "cohort_attributions.csv") as tmp:
        collected.cohort_frame().to_csv(tmp, index=False)
    paths["cohort_attributions.csv"] = save_dir / "cohort_attributions.csv"
    if run.make_figures:
        paths.update(figures.make_all_figures(collected, save_dir, measures, run.stay_ids or [],
                                              run.developer_figures, data.rows))
    if report_wanted(run, len(data.stays)):
        import report  # the per-stay HTML pages (docs/interfaces.md §4)
        paths.update(report.write_report(save_dir, checkpoint_path, test_data_path, data, collected, run, settings))
    analyses = dict(layer_attention_patterns=collected.layer_pattern_frame(),
                    feature_importance_over_time=collected.events.feature_importance_over_time(),
                    critical_time_periods={m: collected.critical_time_periods(m) for m in attribution.METHODS})
    tables = {name: read_attribution_table(paths[f"{name}.csv"]) if return_tables else None
              for name in ("event_attributions", "static_attributions")}
    timing = dict(prepare_seconds=prepare_seconds, **collected.timing,
                  total_seconds=time.perf_counter() - start)
    return dict(paths=paths, faithfulness=measures, predictions=collected.prediction_frame(),
                analyses=analyses, timing=timing, **tables)


def audit_summary(data, run, settings):
    """faithfulness.json's `audit`: the mode, which methods ran on which stays, and the audited stays."""
    methods = audit_methods(data.model, settings, data.cohort)
    every_stay = COHORT_METHODS if data.cohort else methods
    if data.cohort:
        note = (f"cohort mode: every stay got {' and '.join(COHORT_METHODS)} (IG's completeness checked and refined "
                f"on every stay); a seeded random sample of {len(data.audited)} of the split's {data.n_in_split} "
                "stays (the audit) got every method in methods_on_audited_stays, the deletion/insertion curves, "
                "ERASER measures, rank agreement, planted-event recovery, the randomisation check and IG's per-event "
                "convergence: those measures and their 95% intervals (*_ci95, Student's t over stays) are over the "
                "audited stays")
    else:
        note = ("every method and measure on every stay (the *_ci95 intervals are over the stays); IG's per-event "
                "convergence on the audited stays (every stay of the split where there are no more than "
                "--audit-stays)")
    return dict(mode="cohort" if data.cohort else "every_method", audit_stays=run.audit_stays,
                n_stays_audited=len(data.audited), n_stays_of_split=data.n_in_split, seed=settings.seed,
                methods_on_every_stay=list(every_stay), methods_on_audited_stays=list(methods),
                stay_ids=sorted(data.audited), note=note)


# -----------------------------------------------------------------------------
# The command (docs/interfaces.md §2)

def main(argv=None):
    args = vars(build_arg_parser().parse_args(argv))
    paths = args.pop("checkpoint"), args.pop("data"), args.pop("save_dir")
    args["make_figures"] = not args.pop("no_figures")  # the other options are named as their ExplainRun or
    # ExplainSettings fields
    user_errors = (ExplainError, attribution.AttributionError, event_table.EventTableError, train.CheckpointError,
                   train.TextEncoderError)
    try:
        result = run_explainability_analysis(*paths, return_tables=False, **args)
    except user_errors as e:  # a message for the user (it names the file, stay or setting); bugs keep their traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    f = result["faithfulness"]
    print(format_summary(f))
    for name, path in result["paths"].items():
        print(f"wrote {path}")
    return 0


def format_summary(f):
    lines = [f"{'method':<28}{'deletion':>9}{'insertion':>10}{'comp@20%':>9}{'suff@20%':>9}{'planted':>9}"]
    audit = f.get("audit", {})
    if audit.get("mode") == "cohort":
        lines.insert(0, f"cohort mode: IG and attention on every stay; every method and measure on a seeded sample of "
                        f"{audit['n_stays_audited']} of {audit['n_stays_of_split']} stays (--every-method: all)")
    for name, entry in list(f["methods"].items()) + [("random", f["random"])]:
        if "not_run" in entry:
            lines.append(f"{name:<28}not run ({entry['not_run'].split(':')[0]})")
            continue
        planted = entry.get("planted_auprc")
        lines.append(f"{name:<28}{entry.get('deletion_auc', float('nan')):>9.3f}"
                     f"{entry.get('insertion_auc', float('nan')):>10.3f}"
                     f"{entry.get('comprehensiveness', {}).get('20%', float('nan')):>9.3f}"
                     f"{entry.get('sufficiency', {}).get('20%', float('nan')):>9.3f}"
                     f"{planted if planted is not None else float('nan'):>9.3f}")
    for name in ("integrated_gradients", "layer_integrated_gradients"):
        conv = f.get(f"{name}_convergence")
        if conv and conv.get("n_stays"):
            lines.append(f"{name} completeness: {conv['n_stays'] - conv['n_missed_tolerance']} of {conv['n_stays']} "
                         f"stays within {conv['tolerance']:.0%} (median error {conv['relative_delta_median']:.3g}, "
                         f"max {conv['relative_delta_max']:.3g}; {figures.steps_used_label(conv['steps_used'])})")
    conv = f.get("integrated_gradients_per_event_convergence")
    if conv and conv.get("n_stays"):
        lines.append(f"integrated_gradients per event, n against 2n steps on {conv['n_stays']} audited stays: largest "
                     f"change / largest |attribution| median {conv['largest_change_median']:.3g}, max "
                     f"{conv['largest_change_max']:.3g}; {conv['share_within_tolerance']:.0%} within "
                     f"{conv['tolerance']:.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
