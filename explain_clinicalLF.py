"""
Explain a trained MortalityTransformer: Captum attributions, attention analysis and how faithful
each explanation is.

    python explain_clinicalLF.py                      # test split of sample_train.csv, best_model.pth
    python explain_clinicalLF.py --stay-ids 30001 30002 --max-stays 50

Every attribution is to the model's one logit per stay (positive = pushes towards death), with
Captum's target=None. Four methods, one row per (stay, real event, method) in event_attributions.csv:
  integrated_gradients        IG on the per-event input tensor [type one-hot | text vector | time]
                              and the static features; the padding mask is passed through
                              additional_forward_args (never attributed). Padded positions take
                              baseline = input, so their attribution is exactly 0.
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
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never contact a model hub

# -----------------------------------------------------------------------------
# defaults (CONTRACT §2)
DEFAULT_CHECKPOINT = "trained_models/clinical_LF/checkpoints/best_model.pth"
DEFAULT_DATA = "sample_train.csv"
DEFAULT_SAVE_DIR = "trained_models/clinical_LF/explainability"
DEFAULT_CACHE_DIR = "trained_models/clinical_LF/embedding_cache"
METHODS = ("integrated_gradients", "layer_integrated_gradients", "feature_ablation", "attention_pooling")
SIGNED_METHODS = METHODS[:3]  # attention weights are >= 0 and say nothing about direction
ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20)
FIGURES = ("layer_attention_weights.png", "sequence_importance.png", "sequence_importance_combined.png",
           "head_specialization.png", "feature_importance.png", "query_vector_analysis.png",
           "captum_attributions.png", "captum_layer_attributions.png", "captum_ablation_attributions.png")
N_TYPE_COLUMNS = 5  # the first columns of an event's feature vector are its type one-hot (len(EVENT_TYPES))
# -----------------------------------------------------------------------------


class ExplainError(ValueError):
    """A user-facing problem (missing file, unknown stay, incompatible checkpoint)."""


# -----------------------------------------------------------------------------
# Forward wrappers. Captum calls forward(*inputs, *additional_forward_args) and, with target=None,
# attributes the [B] output directly: one logit per stay.

class LogitForward(nn.Module):
    """(events, static, mask) -> logit [B]. The mask is the explicit padding mask, untouched: on the IG
    path an event scaled towards a zero baseline must still count as present."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, events, static, mask):
        return self.model(events, mask, static)


def without_absent_events(events, present):
    """Move the present events of each stay to the front, in their original order, and mask the rest:
    the model then sees exactly the stay recorded without the absent events (positions included)."""
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)
    events = torch.gather(events, 1, order.unsqueeze(-1).expand_as(events))
    return events, torch.gather(present, 1, order)


class EventRemovalForward(LogitForward):
    """Like LogitForward, but an event whose type one-hot is all zero is REMOVED: the remaining events are
    re-packed in order and the rest masked out of attention. FeatureAblation replaces an ablated event by
    the zero baseline, so ablating an event is exactly re-running the model on the stay without it.
    Used for ablation and the faithfulness curves only (IG keeps the explicit mask)."""

    def forward(self, events, static, mask):
        present = mask & (events[..., :N_TYPE_COLUMNS].abs().sum(-1) > 0)
        return self.model(*without_absent_events(events, present), static)


# -----------------------------------------------------------------------------
# The attribution methods, each on one batch (events [B,L,F], mask Bool[B,L], static [B,S]).

def integrated_gradients(model, events, mask, static, event_baseline=None, static_baseline=None,
                         n_steps=50, internal_batch_size=None):
    """IG to the logit. Baselines (documented choice): every real event starts from `event_baseline`
    (a [F] vector: zeros or the training-mean event), every padded position from itself (so its
    attribution is exactly 0), static features from `static_baseline` ([S], zeros or training mean).
    Returns event attributions [B,L] (summed over features), per-column static attributions [B,S],
    the logit change f(x) - f(baseline) [B] and Captum's convergence delta [B]
    (sum of attributions minus that change)."""
    F, S = events.shape[-1], static.shape[-1]
    event_baseline = torch.zeros(F) if event_baseline is None else event_baseline
    static_baseline = torch.zeros(S) if static_baseline is None else static_baseline
    base_events = torch.where(mask.unsqueeze(-1), event_baseline.to(events).expand_as(events), events)
    base_static = static_baseline.to(static).expand_as(static).clone()
    forward = LogitForward(model)
    ig = IntegratedGradients(forward)
    (attr_events, attr_static), delta = ig.attribute(
        (events, static), baselines=(base_events, base_static), target=None,
        additional_forward_args=(mask,), n_steps=n_steps, internal_batch_size=internal_batch_size,
        return_convergence_delta=True)
    with torch.no_grad():
        change = forward(events, static, mask) - forward(base_events, base_static, mask)
    event_attr = attr_events.sum(-1) * mask  # padded positions are exactly 0 already; * mask documents it
    return event_attr.detach(), attr_static.detach(), change.detach(), delta.detach()


def find_input_projection(model):
    """The layer that maps an event's feature vector into the model (LayerIG target)."""
    for name in ("input_projection", "input_proj", "event_projection"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ExplainError(f"{type(model).__name__} has no `input_projection` module; layer integrated gradients "
                       "needs the layer that projects the event features.")


def layer_integrated_gradients(model, events, mask, static, event_baseline=None, n_steps=50,
                               internal_batch_size=None):
    """LayerIG on the input projection's output, summed over its d_model units per event. The layer
    baseline is the projection of the same input baseline as IG (padded positions: their own input, so
    0 attribution); static features stay at their values (they are not on the interpolated path)."""
    F = events.shape[-1]
    event_baseline = torch.zeros(F) if event_baseline is None else event_baseline
    base_events = torch.where(mask.unsqueeze(-1), event_baseline.to(events).expand_as(events), events)
    lig = LayerIntegratedGradients(LogitForward(model), find_input_projection(model))
    attr = lig.attribute((events, static), baselines=(base_events, static), target=None,
                         additional_forward_args=(mask,), n_steps=n_steps,
                         internal_batch_size=internal_batch_size)
    return (attr.sum(-1) * mask).detach()


def static_group_mask(n_static, static_groups, first_id):
    """Feature-mask ids for the static tensor: all output columns of one source column share an id."""
    ids = torch.full((1, n_static), -1, dtype=torch.long)
    for g, columns in enumerate(static_groups.values()):
        ids[0, list(columns)] = first_id + g
    if (ids < 0).any():
        missing = (ids[0] < 0).nonzero().flatten().tolist()
        raise ExplainError(f"static columns {missing} belong to no group of static_feature_groups")
    return ids


def feature_ablation(model, events, mask, static, static_groups, static_baseline=None,
                     perturbations_per_eval=8):
    """Remove each event (all of its features, masked out of attention) and each static source column
    (all its one-hot columns, replaced by `static_baseline`), one at a time; attribution = logit(full) -
    logit(without it). Returns event attributions [B,L] and static attributions [B, n_groups]."""
    B, L, F = events.shape
    S = static.shape[-1]
    event_ids = torch.arange(L).view(1, L, 1).expand(1, L, F)
    static_ids = static_group_mask(S, static_groups, first_id=L)
    static_baseline = torch.zeros(S) if static_baseline is None else static_baseline
    ablation = FeatureAblation(EventRemovalForward(model))
    with torch.no_grad():
        attr_events, attr_static = ablation.attribute(
            (events, static), baselines=(0.0, static_baseline.to(static).view(1, S)), target=None,
            additional_forward_args=(mask,), feature_mask=(event_ids, static_ids),
            perturbations_per_eval=perturbations_per_eval)
    event_attr = attr_events[..., 0] * mask  # every feature of an event carries the same value
    group_first_column = [columns[0] for columns in static_groups.values()]
    return event_attr, attr_static[:, group_first_column]


@torch.no_grad()
def attention_outputs(model, events, mask, static):
    logits, attn = model(events, mask, static, return_attention=True)
    return logits, attn


def pooling_weights(attn):
    """Per-event attention-pooling weight, mean over pooling heads: [B,L]."""
    return attn["pooling_attention"][:, :, 0, :].mean(1)


def group_static(static_attr, static_groups):
    """Per-column attributions [B,S] -> per source column [B,G] (IG is additive, so summing is exact)."""
    return torch.stack([static_attr[:, list(cols)].sum(-1) for cols in static_groups.values()], dim=-1)


def reinitialised_copy(model, seed=0):
    """Model-randomisation sanity check (Adebayo et al., 2018): same architecture, fresh random weights.
    Modules are reset with their own initialiser; parameters no initialiser touched (e.g. a bare pooling
    query) are redrawn from N(0, 1/fan_in)."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in clone.named_parameters()}
    for module in clone.modules():
        if module is not clone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if torch.equal(p, before[name]) and p.numel() > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
    return clone.eval()


# -----------------------------------------------------------------------------
# Faithfulness: predictions with subsets of each stay's events, via the explicit mask.

@torch.no_grad()
def probabilities_with_masks(model, events, static, masks, max_rows=256):
    """masks Bool[B,K,L] (subsets of real events) -> P(death) [B,K] from the same forward as training."""
    B, K, L = masks.shape
    out = torch.empty(B * K)
    ev = events.unsqueeze(1).expand(B, K, *events.shape[1:]).reshape(B * K, *events.shape[1:])
    st = static.unsqueeze(1).expand(B, K, static.shape[-1]).reshape(B * K, -1)
    flat = masks.reshape(B * K, L)
    for i in range(0, B * K, max_rows):
        chunk_events, chunk_mask = without_absent_events(ev[i:i + max_rows], flat[i:i + max_rows])
        out[i:i + max_rows] = torch.sigmoid(model(chunk_events, chunk_mask, st[i:i + max_rows]))
    return out.view(B, K)


def curve_masks(order, n_events, L, n_points):
    """Deletion (remove top-k first) and insertion (add top-k first) masks at n_points fractions."""
    fractions = np.linspace(0.0, 1.0, n_points)
    deletion = torch.zeros(n_points, L, dtype=torch.bool)
    insertion = torch.zeros(n_points, L, dtype=torch.bool)
    for j, f in enumerate(fractions):
        k = int(round(f * n_events))
        keep = torch.zeros(L, dtype=torch.bool)
        keep[order[k:]] = True
        deletion[j] = keep
        add = torch.zeros(L, dtype=torch.bool)
        add[order[:k]] = True
        insertion[j] = add
    return deletion, insertion


def eraser_masks(order, n_events, L, fractions=ERASER_FRACTIONS):
    """Comprehensiveness (stay without its top-k%) and sufficiency (only its top-k%) masks."""
    without = torch.zeros(len(fractions), L, dtype=torch.bool)
    only = torch.zeros(len(fractions), L, dtype=torch.bool)
    for j, f in enumerate(fractions):
        k = max(1, math.ceil(f * n_events))
        without[j, order[k:]] = True
        only[j, order[:k]] = True
    return without, only


def faithfulness_for_batch(model, events, mask, static, scores, n_points=11, n_random=3, rng=None):
    """For each stay with >= 1 event and each ranking in `scores` (name -> [B,L] scores towards the
    predicted class), the predicted-class probability along deletion/insertion curves and at the
    ERASER fractions. Returns {name: list of per-stay dicts}. "random" orders are added here."""
    rng = rng or np.random.default_rng(0)
    B, L = mask.shape
    full = probabilities_with_masks(model, events, static, mask.unsqueeze(1))[:, 0]
    predicted_death = full >= 0.5
    results = {name: [] for name in list(scores) + ["random"]}
    for b in range(B):
        real = mask[b].nonzero().flatten()
        n = len(real)
        if n == 0:
            continue
        orders = {}
        for name, s in scores.items():
            toward_class = s[b, real] if (predicted_death[b] or name == "attention_pooling") else -s[b, real]
            orders[name] = real[torch.argsort(-toward_class, stable=True)]
        random_orders = [real[torch.as_tensor(rng.permutation(n))] for _ in range(n_random)]
        all_orders = list(orders.items()) + [("random", o) for o in random_orders]
        stacked = []
        for _, order in all_orders:
            d, i = curve_masks(order, n, L, n_points)
            w, o = eraser_masks(order, n, L)
            stacked.append(torch.cat([d, i, w, o]))
        masks = torch.stack(stacked).view(1, -1, L)
        p = probabilities_with_masks(model, events[b:b + 1], static[b:b + 1], masks)[0]
        p_class = p if predicted_death[b] else 1 - p
        p_full = full[b] if predicted_death[b] else 1 - full[b]
        per_order = p_class.view(len(all_orders), -1)
        nf = len(ERASER_FRACTIONS)
        random_rows = []
        for (name, _), row in zip(all_orders, per_order):
            x = np.linspace(0, 1, n_points)
            rec = dict(deletion_auc=float(np.trapezoid(row[:n_points].numpy(), x)),
                       insertion_auc=float(np.trapezoid(row[n_points:2 * n_points].numpy(), x)),
                       comprehensiveness=(p_full - row[2 * n_points:2 * n_points + nf]).numpy(),
                       sufficiency=(p_full - row[2 * n_points + nf:]).numpy(),
                       deletion_curve=row[:n_points].numpy(), insertion_curve=row[n_points:2 * n_points].numpy())
            if name == "random":
                random_rows.append(rec)
            else:
                results[name].append(rec)
        results["random"].append({k: np.mean([r[k] for r in random_rows], axis=0) for k in random_rows[0]})
    return results


def summarise_faithfulness(records):
    """Mean over stays of the per-stay faithfulness records of one method."""
    if not records:
        return {}
    pct = [f"{round(f * 100)}%" for f in ERASER_FRACTIONS]
    comp = np.mean([r["comprehensiveness"] for r in records], axis=0)
    suff = np.mean([r["sufficiency"] for r in records], axis=0)
    return dict(deletion_auc=float(np.mean([r["deletion_auc"] for r in records])),
                insertion_auc=float(np.mean([r["insertion_auc"] for r in records])),
                comprehensiveness=dict(zip(pct, map(float, comp))),
                sufficiency=dict(zip(pct, map(float, suff))),
                deletion_curve=np.mean([r["deletion_curve"] for r in records], axis=0).tolist(),
                insertion_curve=np.mean([r["insertion_curve"] for r in records], axis=0).tolist(),
                n_stays=len(records))


def mean_rank_correlation(a_by_stay, b_by_stay):
    """Mean Spearman correlation over stays with >= 3 events (skipping constant rankings)."""
    rhos = []
    for a, b in zip(a_by_stay, b_by_stay):
        if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(spearmanr(a, b).statistic)
    return (float(np.mean(rhos)) if rhos else None), len(rhos)


def planted_recovery(scores_by_stay, planted_by_stay):
    """Per-stay AUPRC of ranking the planted events first (stays with both planted and other events),
    and the random floor = mean fraction of planted events (the expected AUPRC of a random ranking)."""
    aps, floor = [], []
    for s, y in zip(scores_by_stay, planted_by_stay):
        if 0 < y.sum() < len(y):
            aps.append(average_precision_score(y, s))
            floor.append(y.mean())
    if not aps:
        return None, None, 0
    return float(np.mean(aps)), float(np.mean(floor)), len(aps)


# -----------------------------------------------------------------------------
# The prototype's attention analyses, on real outputs.

def analyze_critical_time_periods(weights, hours_before, mask, bin_edges=(0, 1, 2, 4, 8, 12, 24, 48, np.inf)):
    """How much weight (attention or |attribution|) falls in each window of hours before the prediction
    time. weights, hours_before: [B,L] arrays/tensors; mask Bool[B,L]. Returns one row per window with
    the number of events, the mean weight per event and the share of the total weight."""
    w, h, m = (np.asarray(t, dtype=float) for t in (weights, hours_before, mask))
    m = m.astype(bool)
    w, h = np.abs(w[m]), h[m]
    bins = pd.cut(h, bins=list(bin_edges), right=False)
    frame = pd.DataFrame({"window": bins, "weight": w})
    out = frame.groupby("window", observed=False)["weight"].agg(n_events="count", mean_weight="mean", total="sum")
    out["share_of_weight"] = out["total"] / max(w.sum(), 1e-12)
    out = out.drop(columns="total").reset_index()
    out["window"] = out["window"].astype(str)
    return out


def analyze_feature_importance_over_time(event_attributions, method="integrated_gradients",
                                         bin_edges=(0, 1, 2, 4, 8, 12, 24, 48, np.inf)):
    """Mean attribution per (event type, window of hours before prediction) from event_attributions.csv
    rows: which kinds of event matter, and when."""
    rows = event_attributions[event_attributions["method"] == method].copy()
    rows["hours_before"] = rows["relative_time_to_final_event"].astype(float) / 60.0
    rows["window"] = pd.cut(rows["hours_before"], bins=list(bin_edges), right=False).astype(str)
    return rows.pivot_table(index="event_type", columns="window", values="attribution", aggfunc="mean",
                            observed=False)


def analyze_layer_attention_patterns(layer_attention, mask, hours_before=None):
    """Per layer and head: mean entropy of the attention rows (low = focused), the mean weight on the
    most attended key, the weight a query puts on itself and, with hours_before, the attention-weighted
    mean time distance in hours. layer_attention Float[n_layers,B,H,L,L], mask Bool[B,L]."""
    A = torch.as_tensor(layer_attention, dtype=torch.float32)
    m = torch.as_tensor(mask, dtype=torch.bool)
    n_layers, B, H, L, _ = A.shape
    rows = []
    query_ok = m.view(1, B, 1, L).expand(n_layers, B, H, L)  # only real queries count
    entropy = -(A.clamp_min(1e-12).log() * A).sum(-1)
    peak = A.max(-1).values
    self_w = torch.diagonal(A, dim1=-2, dim2=-1)
    if hours_before is not None:
        h = torch.as_tensor(np.asarray(hours_before, dtype=np.float32))
        dist = (h.view(B, 1, L) - h.view(B, L, 1)).abs()  # [B, Lq, Lk]
        mean_dist = (A * dist.view(1, B, 1, L, L)).sum(-1)
    for layer in range(n_layers):
        for head in range(H):
            sel = query_ok[layer, :, head]
            if sel.sum() == 0:
                continue
            row = dict(layer=layer, head=head,
                       entropy=float(entropy[layer, :, head][sel].mean()),
                       max_weight=float(peak[layer, :, head][sel].mean()),
                       self_weight=float(self_w[layer, :, head][sel].mean()))
            if hours_before is not None:
                row["mean_distance_hours"] = float(mean_dist[layer, :, head][sel].mean())
            rows.append(row)
    return pd.DataFrame(rows)


# -----------------------------------------------------------------------------
# Atomic writes: temporary name in the same folder, fsync, rename.

def _atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_csv(frame, path):
    return _atomic_write(path, lambda f: f.write(frame.to_csv(index=False).encode()))


def write_json(obj, path):
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=_json_default).encode()))


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


# -----------------------------------------------------------------------------
# One batch, every method.

@dataclass
class ExplainSettings:
    n_steps: int = 50                   # IG / LayerIG integration steps (Gauss-Legendre)
    internal_batch_size: int | None = 512  # rows (stays x steps) per IG forward/backward chunk
    baseline: str = "zero"              # IG/LayerIG event baseline and static baseline: "zero" or "mean"
    perturbations_per_eval: int = 8     # FeatureAblation: ablated groups per forward
    curve_points: int = 11              # deletion/insertion curves: 0%, 10%, ..., 100% of events
    random_orders: int = 3              # random orderings averaged for the random reference
    seed: int = 0


def explain_batch(model, events, mask, static, static_groups, settings, event_baseline=None,
                  static_baseline=None):
    """Every method on one batch. Returns event attributions {method: [B,L]}, static attributions
    {method: [B,G]}, the logits, IG's logit change and convergence delta, and the attention outputs."""
    logits, attn = attention_outputs(model, events, mask, static)
    ig_events, ig_static, ig_change, ig_delta = integrated_gradients(
        model, events, mask, static, event_baseline, static_baseline, settings.n_steps, settings.internal_batch_size)
    lig_events = layer_integrated_gradients(model, events, mask, static, event_baseline, settings.n_steps,
                                            settings.internal_batch_size)
    fa_events, fa_static = feature_ablation(model, events, mask, static, static_groups, static_baseline,
                                            settings.perturbations_per_eval)
    event_attr = {"integrated_gradients": ig_events, "layer_integrated_gradients": lig_events,
                  "feature_ablation": fa_events, "attention_pooling": pooling_weights(attn) * mask}
    static_attr = {"integrated_gradients": group_static(ig_static, static_groups), "feature_ablation": fa_static}
    return dict(event=event_attr, static=static_attr, logits=logits, ig_change=ig_change, ig_delta=ig_delta,
                attention=attn)


def event_features_for_batch(model, batch, embedding_matrix):
    """The tensor Captum attributes: [type one-hot | text vector | scaled time] per event, padding = 0."""
    vectors = embedding_matrix[batch["text_rows"]]
    with torch.no_grad():
        events = model.event_features(vectors, batch["type_ids"], batch["times"])
    return events * batch["mask"].unsqueeze(-1)  # padding rows must be exactly zero


# -----------------------------------------------------------------------------
# Loading: checkpoint, data, stays — all through train.py's own functions.

def _train_module():
    try:
        import train
    except ImportError as e:  # pragma: no cover - the repo ships train.py
        raise ExplainError(f"cannot import train.py ({e}); run from the repository root") from e
    return train


def check_checkpoint_compatible(ckpt, train, encoder_identity_now=None, embedding_dim=None):
    """Say exactly what differs when a checkpoint does not fit this code, this data or this encoder."""
    problems = []
    config = ckpt["model_config"]
    groups = list(ckpt["preprocessor"].get("static_feature_groups", {}) or {})
    expected = list(train.STATIC_CATEGORICAL) + list(train.STATIC_NUMERIC)
    if groups and sorted(groups) != sorted(expected):
        problems.append(f"static features: checkpoint has {sorted(groups)}, this train.py uses {sorted(expected)}")
    if config.get("n_event_types", len(train.EVENT_TYPES)) != len(train.EVENT_TYPES):
        problems.append(f"event types: checkpoint has {config['n_event_types']}, this train.py has "
                        f"{len(train.EVENT_TYPES)} {train.EVENT_TYPES}")
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
        raise ExplainError("checkpoint does not match: " + "; ".join(problems))


EVENT_COLUMNS = ("event_index", "event_time", "event_type", "event_text", "relative_time_to_final_event")


def attribution_rows(stay_ids, event_meta, event_attr, static_attr, static_names, mask):
    """CONTRACT §4 rows for one batch. event_meta[b]: the stay's real events (EVENT_COLUMNS) in sequence
    order, one row per real position of mask[b]. Padding never becomes a row; a stay without events gets
    static rows only."""
    event_parts, static_rows = [], []
    for b, stay_id in enumerate(stay_ids):
        positions = mask[b].nonzero().flatten()
        meta = event_meta[b]
        if len(meta) != len(positions):
            raise ValueError(f"stay {stay_id}: {len(meta)} event rows but {len(positions)} real positions")
        for method, attr in event_attr.items():
            if len(positions) == 0:
                continue
            part = meta.loc[:, list(EVENT_COLUMNS)].copy()
            part.insert(0, "stay_id", int(stay_id))
            part["method"] = method
            part["attribution"] = attr[b, positions].double().numpy()
            event_parts.append(part)
        for method, attr in static_attr.items():
            for g, name in enumerate(static_names):
                static_rows.append({"stay_id": int(stay_id), "feature": name, "method": method,
                                    "attribution": float(attr[b, g])})
    columns = ["stay_id", *EVENT_COLUMNS, "method", "attribution"]
    events = pd.concat(event_parts, ignore_index=True) if event_parts else pd.DataFrame(columns=columns)
    return events[columns], pd.DataFrame(static_rows, columns=["stay_id", "feature", "method", "attribution"])
