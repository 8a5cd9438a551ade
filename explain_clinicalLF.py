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
import contextlib
import copy
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score
from tqdm import tqdm

import atomic_io
import event_table
import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never contact a model hub

# -----------------------------------------------------------------------------
# defaults (docs/interfaces.md §2)
DEFAULT_CHECKPOINT = "trained_models/clinical_LF/checkpoints/best_model.pth"
DEFAULT_DATA = "sample_train.csv"
DEFAULT_SAVE_DIR = "trained_models/clinical_LF/explainability"
DEFAULT_CACHE_DIR = "clinical_LF_precomp_emb"  # train.py's default cache (shipped vectors of the default encoder)
METHODS = ("integrated_gradients", "layer_integrated_gradients", "feature_ablation", "attention_pooling")
SIGNED_METHODS = METHODS[:3]  # attention weights are >= 0 and say nothing about direction
ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20)
FIGURES = ("layer_attention_weights.png", "sequence_importance.png", "sequence_importance_combined.png",
           "head_specialization.png", "feature_importance.png", "query_vector_analysis.png",
           "captum_attributions.png", "captum_layer_attributions.png", "captum_ablation_attributions.png")
N_TYPE_COLUMNS = len(event_table.EVENT_TYPES)  # the first columns of an event's feature vector: its type one-hot
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
        return self.model(events, mask, static)[0]


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
        return self.model(*without_absent_events(events, present), static)[0]


# -----------------------------------------------------------------------------
# The attribution methods, each on one batch (events [B,L,F], mask Bool[B,L], static [B,S]).

def integrated_gradients(model, events, mask, static, event_baseline=None, static_baseline=None,
                         n_steps=32, internal_batch_size=None):
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


def path_baselines(events, mask, static, event_baseline=None, static_baseline=None):
    """IG's starting point: every real event at `event_baseline` ([F], default zeros), every padded position at
    itself (so its attribution is exactly 0), the static features at `static_baseline` ([S], default zeros)."""
    F, S = events.shape[-1], static.shape[-1]
    event_baseline = torch.zeros(F) if event_baseline is None else event_baseline
    static_baseline = torch.zeros(S) if static_baseline is None else static_baseline
    base_events = torch.where(mask.unsqueeze(-1), event_baseline.to(events).expand_as(events), events)
    return base_events, static_baseline.to(static).expand_as(static).clone()


def adaptive_path_integral(attribute, change, n_stays, n_steps=32, segment_steps=8, tolerance=0.05,
                           max_n_steps=256, max_rows=None):
    """(Layer)IG integrated piece by piece, with more pieces where the path is rough.

    Why: on stays of hundreds of events the integrand (gradient . (input - baseline)) is flat near the
    baseline and rough, with peaks at the scale of 1/200 of the path, where the events' text content grows
    past the positional signal; doubling the steps of one Gauss-Legendre rule over the whole path spends
    them mostly where nothing happens (measured in BENCHMARKS, "Explanations"). IG is additive over pieces of
    the straight path, and each piece's completeness delta is exactly the quadrature error of that piece, so
    the pieces that need steps are known.

    attribute(stays [R], a [R], b [R], n) -> (attribution tuple of [R, ...], delta [R]): the attributions of the
    path pieces from baseline + a (input - baseline) to baseline + b (input - baseline) of the given stays,
    each with n Gauss-Legendre steps (Captum with that piece's start as baseline and its end as input).
    The path starts as n_steps // segment_steps equal pieces; while a stay's total |delta| exceeds
    `tolerance` x |change| and it has steps left (max_n_steps in all), its pieces with at least half of its
    largest |delta| are halved. At most `max_rows` pieces go into one Captum call (Captum's internal batch
    cannot be smaller than its number of inputs). Returns (attributions summed over each stay's pieces,
    delta [B], steps [B])."""
    attribute = _in_chunks(attribute, max_rows)
    n_start = max(1, n_steps // segment_steps)
    edges = torch.linspace(0.0, 1.0, n_start + 1)
    rows = torch.arange(n_stays).repeat_interleave(n_start)
    a, b = edges[:-1].repeat(n_stays), edges[1:].repeat(n_stays)
    attrs, delta = attribute(rows, a, b, segment_steps)
    attrs, delta = list(attrs), delta.detach().float().cpu()
    change = change.detach().float().cpu()
    while True:
        total = torch.zeros(n_stays).index_add_(0, rows, delta)
        steps = torch.bincount(rows, minlength=n_stays) * segment_steps
        bad = (total.abs() > tolerance * change.abs() + 1e-4) & (steps + segment_steps <= max_n_steps)
        if not tolerance or not bad.any():
            break
        split = torch.zeros(len(rows), dtype=torch.bool)
        for stay in bad.nonzero().flatten().tolist():
            pieces = (rows == stay).nonzero().flatten()
            size = delta[pieces].abs()
            budget = int((max_n_steps - steps[stay]) // segment_steps)  # each halving adds one piece
            worst = pieces[torch.argsort(-size)][:budget]
            split[worst[delta[worst].abs() >= 0.5 * size.max()]] = True
        middle = (a[split] + b[split]) / 2
        new_rows = rows[split].repeat(2)
        new_a, new_b = torch.cat([a[split], middle]), torch.cat([middle, b[split]])
        new_attrs, new_delta = attribute(new_rows, new_a, new_b, segment_steps)
        keep = ~split
        rows, a, b = torch.cat([rows[keep], new_rows]), torch.cat([a[keep], new_a]), torch.cat([b[keep], new_b])
        delta = torch.cat([delta[keep], new_delta.detach().float().cpu()])
        attrs = [torch.cat([old[keep.to(old.device)], new]) for old, new in zip(attrs, new_attrs)]
    summed = tuple(torch.zeros(n_stays, *t.shape[1:], dtype=t.dtype, device=t.device).index_add_(
        0, rows.to(t.device), t) for t in attrs)
    return summed, total, steps


def _in_chunks(attribute, max_rows):
    """attribute(rows, a, b, n) called on at most max_rows pieces at a time, the results concatenated."""
    if not max_rows:
        return attribute

    def chunked(rows, a, b, n):
        if len(rows) <= max_rows:
            return attribute(rows, a, b, n)
        parts = [attribute(rows[i:i + max_rows], a[i:i + max_rows], b[i:i + max_rows], n)
                 for i in range(0, len(rows), max_rows)]
        attrs = tuple(torch.cat([p[0][k] for p in parts]) for k in range(len(parts[0][0])))
        return attrs, torch.cat([p[1] for p in parts])
    return chunked


def _segment(start, end, rows, a, b):
    """Points start + a (end - start) and start + b (end - start) of the stays `rows`."""
    rows = rows.to(end.device)
    shape = (-1,) + (1,) * (end.dim() - 1)
    a, b = a.to(end).view(shape), b.to(end).view(shape)
    s, e = start[rows], end[rows]
    return s + a * (e - s), s + b * (e - s)


def refined_integrated_gradients(model, events, mask, static, event_baseline=None, static_baseline=None,
                                 n_steps=32, internal_batch_size=None, tolerance=0.05, max_n_steps=256,
                                 segment_steps=8):
    """IG of every event and static column, integrated piece-wise until complete within `tolerance`
    (adaptive_path_integral). Returns event attributions [B,L], static attributions [B,S], the logit change
    f(x) - f(baseline) [B], the completeness delta [B] and the steps used per stay [B]."""
    base_events, base_static = path_baselines(events, mask, static, event_baseline, static_baseline)
    forward = LogitForward(model)
    ig = IntegratedGradients(forward)
    with torch.no_grad():
        change = forward(events, static, mask) - forward(base_events, base_static, mask)

    def attribute(rows, a, b, n):
        ev_a, ev_b = _segment(base_events, events, rows, a, b)
        st_a, st_b = _segment(base_static, static, rows, a, b)
        m = mask[rows.to(mask.device)]
        (attr_events, attr_static), delta = ig.attribute(
            (ev_b, st_b), baselines=(ev_a, st_a), target=None, additional_forward_args=(m,), n_steps=n,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
        return (attr_events.sum(-1).detach() * m, attr_static.detach()), delta

    (ev, st), delta, steps = adaptive_path_integral(attribute, change, events.shape[0], n_steps, segment_steps,
                                                    tolerance, max_n_steps, internal_batch_size)
    return ev, st, change.detach(), delta.to(change.device), steps


def find_input_projection(model):
    """The layer that maps an event's feature vector into the model (LayerIG target)."""
    for name in ("input_projection", "input_proj", "event_projection"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ExplainError(f"{type(model).__name__} has no `input_projection` module; layer integrated gradients "
                       "needs the layer that projects the event features.")


def layer_integrated_gradients(model, events, mask, static, event_baseline=None, n_steps=32,
                               internal_batch_size=None):
    """Captum LayerIntegratedGradients on the input projection's output, summed over its d_model units per
    event. It interpolates the events only: the static features stay at their real values along the path.
    So it attributes logit(events, static) - logit(baseline events, static), not IG's
    logit(events, static) - logit(baseline events, baseline static); where the classifier mixes static and
    event features the two share out different totals (tested). Padded positions: baseline = input, so 0.
    Returns event attributions [B,L], its own logit change [B] and completeness delta [B]."""
    F = events.shape[-1]
    event_baseline = torch.zeros(F) if event_baseline is None else event_baseline
    base_events = torch.where(mask.unsqueeze(-1), event_baseline.to(events).expand_as(events), events)
    forward = LogitForward(model)
    lig = LayerIntegratedGradients(forward, find_input_projection(model))
    attr, delta = lig.attribute((events, static), baselines=(base_events, static), target=None,
                                additional_forward_args=(mask,), n_steps=n_steps,
                                internal_batch_size=internal_batch_size, return_convergence_delta=True)
    with torch.no_grad():
        change = forward(events, static, mask) - forward(base_events, static, mask)
    return (attr.sum(-1) * mask).detach(), change.detach(), delta.detach()


def refined_layer_integrated_gradients(model, events, mask, static, event_baseline=None, n_steps=32,
                                       internal_batch_size=None, tolerance=0.05, max_n_steps=256, segment_steps=8):
    """LayerIG with its own completeness check, integrated piece-wise like IG (adaptive_path_integral; the
    input projection is linear, so a piece of the input path maps to the same piece of the layer's path).
    Static features stay at their values. Returns (event attributions [B,L], change [B], delta [B], steps [B])."""
    base_events, _ = path_baselines(events, mask, static, event_baseline)
    forward = LogitForward(model)
    lig = LayerIntegratedGradients(forward, find_input_projection(model))
    with torch.no_grad():
        change = forward(events, static, mask) - forward(base_events, static, mask)

    def attribute(rows, a, b, n):
        ev_a, ev_b = _segment(base_events, events, rows, a, b)
        r = rows.to(static.device)
        attr, delta = lig.attribute((ev_b, static[r]), baselines=(ev_a, static[r]), target=None,
                                    additional_forward_args=(mask[r],), n_steps=n,
                                    internal_batch_size=internal_batch_size, return_convergence_delta=True)
        return (attr.sum(-1).detach() * mask[r],), delta

    (attr,), delta, steps = adaptive_path_integral(attribute, change, events.shape[0], n_steps, segment_steps,
                                                   tolerance, max_n_steps, internal_batch_size)
    return attr, change.detach(), delta.to(change.device), steps


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
    event_ids = torch.arange(L, device=events.device).view(1, L, 1).expand(1, L, F)
    static_ids = static_group_mask(S, static_groups, first_id=L).to(static.device)
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
    attn = {k: v.detach() for k, v in attn.items()}
    scores = pooling_scores(model, attn["transformer_output"])
    if scores is not None:
        attn["pooling_scores"] = scores
    return logits, attn


@torch.no_grad()
def pooling_scores(model, transformer_output):
    """What attention pooling computes before its softmax: per pooling head h, the query's slice q_h
    against the event's key slice pool.key(x)_h, / sqrt(d_head): [B, heads, L]. None for a model without
    train.AttentionPooling's `pool.key`, `pool.query`, `pool.n_heads`."""
    pool = getattr(model, "pool", None)
    if pool is None or not all(hasattr(pool, name) for name in ("key", "query", "n_heads")):
        return None
    B, L, D = transformer_output.shape
    h = pool.n_heads
    keys = pool.key(transformer_output).view(B, L, h, D // h).transpose(1, 2)  # [B, h, L, dh]
    return (keys @ pool.query.view(1, h, D // h, 1)).squeeze(-1) / math.sqrt(D // h)


def pooling_weights(attn):
    """Per-event attention-pooling weight, mean over pooling heads: [B,L]."""
    return attn["pooling_attention"][:, :, 0, :].mean(1)


def group_static(static_attr, static_groups):
    """Per-column attributions [B,S] -> per source column [B,G] (IG is additive, so summing is exact)."""
    return torch.stack([static_attr[:, list(cols)].sum(-1) for cols in static_groups.values()], dim=-1)


def _reinitialise(module, seed):
    """Reset a module with its own initialisers; parameters no initialiser touched (e.g. a bare pooling
    query) are redrawn from N(0, 1/fan_in)."""
    torch.manual_seed(seed)
    params = [module] if isinstance(module, nn.Parameter) else list(module.parameters())
    before = [p.detach().clone() for p in params]
    if isinstance(module, nn.Module):
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
    with torch.no_grad():
        for p, old in zip(params, before):
            if torch.equal(p, old) and p.numel() > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))


def randomisation_groups(model):
    """The model's parameter groups from the output down (the cascade's order): bare parameters of the
    model itself, then its child modules in reverse order of definition, a ModuleList layer by layer from
    the last. For MortalityTransformer: classifier, pool, ln_f, layers.3 ... layers.0, input_proj."""
    groups = [(name, p) for name, p in model.named_parameters(recurse=False)]
    children = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            children += [(f"{name}.{i}", layer) for i, layer in enumerate(child)]
        elif any(True for _ in child.parameters()):
            children.append((name, child))
    return groups + children[::-1]


def cascading_randomisation(model, seed=0):
    """Cascading model-randomisation check (Adebayo et al., 2018): [(group name, copy of the model with that
    group and every group above it re-initialised)], from the top (output side) down to the input."""
    steps, clone = [], copy.deepcopy(model)
    names = [name for name, _ in randomisation_groups(model)]
    for i, name in enumerate(names):
        group = dict(randomisation_groups(clone))[name]
        _reinitialise(group, seed + i)
        steps.append((name, copy.deepcopy(clone).eval()))
    return steps


def reinitialised_copy(model, seed=0):
    """The model with every group re-initialised (the cascade's last step)."""
    return cascading_randomisation(model, seed)[-1][1]


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
    # rows with few events together, each chunk cut to its longest row: the model is padding-invariant,
    # so this only saves compute
    rows = torch.argsort(flat.sum(1).cpu(), stable=True)
    for i in range(0, B * K, max_rows):
        idx = rows[i:i + max_rows].to(flat.device)
        chunk_events, chunk_mask = without_absent_events(ev[idx], flat[idx])
        width = max(1, int(chunk_mask.sum(1).max()))
        logits, _ = model(chunk_events[:, :width], chunk_mask[:, :width], st[idx])
        out[idx.cpu()] = torch.sigmoid(logits).float().cpu()
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


def faithfulness_for_batch(model, events, mask, static, scores, n_points=11, n_random=3, rng=None, max_rows=None):
    """For each stay with >= 1 event and each ranking in `scores` (name -> [B,L] scores towards the
    predicted class), the predicted-class probability along deletion/insertion curves and at the
    ERASER fractions. Returns {name: list of per-stay dicts}. "random" orders are added here."""
    rng = rng or np.random.default_rng(0)
    B, L = mask.shape
    full = probabilities_with_masks(model, events, static, mask.unsqueeze(1))[:, 0]
    mask, scores = mask.cpu(), {name: s.cpu() for name, s in scores.items()}  # orderings are built on the CPU
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
        width = int(real.max()) + 1  # this stay's own length, not the batch's
        # Many of the 30 masks per order are the same subset of events (every curve starts or ends at the whole
        # stay or at no event; ERASER points fall on curve points; the methods often agree on their top events):
        # each distinct subset is run once, and the whole stay not at all (`full` has it).
        masks, inverse = torch.unique(torch.stack(stacked)[..., :width].reshape(-1, width), dim=0, return_inverse=True)
        whole = (masks == mask[b, :width]).all(1)
        p_distinct = torch.full((len(masks),), float(full[b]))
        if (~whole).any():
            rows = max_rows or auto_rows(model, width, events.device, with_grad=False)
            p_distinct[~whole] = probabilities_with_masks(model, events[b:b + 1, :width], static[b:b + 1],
                                                          masks[~whole].unsqueeze(0).to(events.device), max_rows=rows)[0]
        p = p_distinct[inverse]
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
                       deletion_curve=row[:n_points].numpy(), insertion_curve=row[n_points:2 * n_points].numpy(),
                       stay_position=b, predicted_death=bool(predicted_death[b]))
            if name == "random":
                random_rows.append(rec)
            else:
                results[name].append(rec)
        summary = {k: np.mean([r[k] for r in random_rows], axis=0) for k in random_rows[0]}
        # each random order as scores over the stay's real events (first = highest), for the planted floor
        summary["order_scores"] = [_order_to_scores(o, real) for o in random_orders]
        summary["stay_position"] = b
        results["random"].append(summary)
    return results


def _order_to_scores(order, real):
    """An order of event positions -> a score per real event (in position order), higher = earlier."""
    rank = torch.empty(int(real.max()) + 1, dtype=torch.float64)
    rank[order] = torch.arange(len(order), 0, -1, dtype=torch.float64)
    return rank[real].numpy()


RECORD_FIELDS = ("deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency", "deletion_curve",
                 "insertion_curve", "predicted_death")  # what summarise_faithfulness reads of a per-stay record


def stack_records(records):
    """Per-stay faithfulness records -> {field: array with one row per stay}: the same numbers in a few arrays
    instead of a dict of small arrays per stay (a run keeps them for every stay)."""
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in RECORD_FIELDS}


def concatenate_records(parts):
    """stack_records' arrays of several batches -> one set of arrays."""
    return {k: np.concatenate([part[k] for part in parts]) for k in RECORD_FIELDS}


def summarise_faithfulness(records):
    """Mean over stays of the per-stay faithfulness records of one method (a list of records, or their
    stack_records arrays)."""
    if isinstance(records, list):
        if not records:
            return {}
        records = stack_records(records)
    if not len(records["deletion_auc"]):
        return {}
    pct = [f"{round(f * 100)}%" for f in ERASER_FRACTIONS]
    return dict(deletion_auc=float(np.mean(records["deletion_auc"])),
                insertion_auc=float(np.mean(records["insertion_auc"])),
                comprehensiveness=dict(zip(pct, map(float, np.mean(records["comprehensiveness"], axis=0)))),
                sufficiency=dict(zip(pct, map(float, np.mean(records["sufficiency"], axis=0)))),
                deletion_curve=np.mean(records["deletion_curve"], axis=0).tolist(),
                insertion_curve=np.mean(records["insertion_curve"], axis=0).tolist(),
                sufficiency_by_predicted_class=sufficiency_by_class(records, pct),
                n_stays=len(records["deletion_auc"]))


def sufficiency_by_class(records, pct):
    """Sufficiency separately for stays predicted to die and to survive (records: stack_records' arrays): over
    all stays the two classes' values (keeping few events raises P(death) of one and lowers it of the other)
    average to about the same number for every method."""
    out = {}
    predicted_death = np.asarray(records["predicted_death"]).astype(bool)
    for name, wanted in (("death", True), ("survival", False)):
        chosen = records["sufficiency"][predicted_death == wanted]
        out[name] = dict(zip(pct, map(float, np.mean(chosen, axis=0)))) if len(chosen) else None
        out[f"n_{name}"] = len(chosen)
    return out


def mean_rank_correlation(a_by_stay, b_by_stay, absolute=False):
    """Mean Spearman correlation over stays with >= 3 events (skipping constant rankings); absolute=True
    compares |a| with |b| (how much each event matters, whatever its direction)."""
    rhos = []
    for a, b in zip(a_by_stay, b_by_stay):
        if absolute:
            a, b = np.abs(a), np.abs(b)
        if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(spearmanr(a, b).statistic)
    return (float(np.mean(rhos)) if rhos else None), len(rhos)


def planted_recovery(scores_by_stay, planted_by_stay, random_scores_by_stay=None):
    """Per-stay AUPRC of ranking the planted events first (stays with both planted and other events).
    The random floor is the same AUPRC scored on the random orders the faithfulness curves drew
    (`random_scores_by_stay[i]`: a list of score arrays of stay i): a random ranking's expected average
    precision is above the share of planted events when a stay has few of them (with one planted event of
    n it is H_n / n, not 1/n). Returns (mean AUPRC, random floor or None, number of stays)."""
    aps, floor = [], []
    random_scores_by_stay = random_scores_by_stay or [None] * len(scores_by_stay)
    for s, y, random_orders in zip(scores_by_stay, planted_by_stay, random_scores_by_stay):
        if 0 < y.sum() < len(y):
            aps.append(average_precision_score(y, s))
            if random_orders:
                floor.append(np.mean([average_precision_score(y, r) for r in random_orders]))
    if not aps:
        return None, None, 0
    return float(np.mean(aps)), (float(np.mean(floor)) if floor else None), len(aps)


def planted_share(planted_by_stay):
    """Mean share of planted events per stay (stays with both kinds): a lower bound, not the random floor."""
    shares = [y.mean() for y in planted_by_stay if 0 < y.sum() < len(y)]
    return float(np.mean(shares)) if shares else None


# -----------------------------------------------------------------------------
# The prototype's attention analyses, on real outputs.

HOUR_WINDOW_EDGES = (0, 1, 2, 4, 8, 12, 24, 48, np.inf)  # windows of hours before the prediction time


def hours_before_prediction(events):
    """Hours from each event (rows of the event table or of event_attributions.csv) to the prediction time."""
    return events["relative_time_to_final_event"].to_numpy(dtype=float) / 60.0

class WindowSums:
    """Number of events and sum of a weight per window of hours before the prediction time, added to part by
    part: analyze_critical_time_periods's table without keeping the events."""

    def __init__(self, bin_edges=HOUR_WINDOW_EDGES):
        self.edges = list(bin_edges)
        self.windows = pd.IntervalIndex.from_breaks(self.edges, closed="left").astype(str)  # pd.cut's labels
        self.n_events = np.zeros(len(self.windows), dtype=np.int64)
        self.sums = np.zeros(len(self.windows))
        self.total = 0.0  # of every weight added, the share's denominator

    def add(self, weights, hours_before):
        weights = np.asarray(weights, dtype=float)
        window = pd.cut(np.asarray(hours_before, dtype=float), bins=self.edges, right=False, labels=False)
        inside = ~np.isnan(window)
        codes = window[inside].astype(int)
        self.n_events += np.bincount(codes, minlength=len(self.windows))
        self.sums += np.bincount(codes, weights=weights[inside], minlength=len(self.windows))
        self.total += weights.sum()

    def table(self):
        """One row per window: n_events, mean_weight (NaN where no event), share_of_weight."""
        mean = np.full(len(self.windows), np.nan)
        np.divide(self.sums, self.n_events, out=mean, where=self.n_events > 0)
        return pd.DataFrame({"window": self.windows.to_numpy(dtype=object), "n_events": self.n_events,
                             "mean_weight": mean, "share_of_weight": self.sums / max(self.total, 1e-12)})


def analyze_critical_time_periods(weights, hours_before, mask, bin_edges=HOUR_WINDOW_EDGES):
    """How much weight (attention or |attribution|) falls in each window of hours before the prediction
    time. weights, hours_before: [B,L] arrays/tensors; mask Bool[B,L]. Returns one row per window with
    the number of events, the mean weight per event and the share of the total weight."""
    w, h, m = (np.asarray(t, dtype=float) for t in (weights, hours_before, mask))
    m = m.astype(bool)
    windows = WindowSums(bin_edges)
    windows.add(np.abs(w[m]), h[m])
    return windows.table()


def analyze_feature_importance_over_time(event_attributions, method="integrated_gradients",
                                         bin_edges=HOUR_WINDOW_EDGES):
    """Mean attribution per (event type, window of hours before prediction) from event_attributions.csv
    rows: which kinds of event matter, and when."""
    rows = event_attributions[event_attributions["method"] == method].copy()
    rows["hours_before"] = hours_before_prediction(rows)
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
    n_keys = m.sum(1).float().view(1, B, 1, 1)
    # / log n: 1 = uniform over the stay's n events, whatever n (undefined for one event: left out)
    entropy_normalised = entropy / n_keys.clamp_min(2).log()
    several = (n_keys >= 2).expand_as(entropy)
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
                       entropy_normalised=float(entropy_normalised[layer, :, head][sel & several[layer, :, head]].mean())
                       if (sel & several[layer, :, head]).any() else float("nan"),
                       max_weight=float(peak[layer, :, head][sel].mean()),
                       self_weight=float(self_w[layer, :, head][sel].mean()))
            if hours_before is not None:
                row["mean_distance_hours"] = float(mean_dist[layer, :, head][sel].mean())
            rows.append(row)
    return pd.DataFrame(rows)


# -----------------------------------------------------------------------------
# Atomic writes: temporary name in the same folder, fsync, rename.

class StreamingCsv:
    """A CSV written part by part to an open (temporary) file: the header once, then each part's rows."""

    def __init__(self, path):
        self.file, self.header = open(path, "w", newline=""), True

    def write(self, frame):
        frame.to_csv(self.file, index=False, header=self.header)
        self.header = False

    def close(self):
        self.file.close()


# -----------------------------------------------------------------------------
# One batch, every method.

@dataclass
class ExplainRun:
    """Which stays run_explainability_analysis explains and where; the defaults are also the command's."""
    split: str = "test"             # the checkpoint's patient-level split to explain ("all": every stay)
    max_stays: int = 100            # the first N stays (by id) of the split; 0 = all
    stay_ids: list | None = None    # also explain these stays and draw a timeline for each
    batch_size: int = 16            # stays per explanation batch
    randomisation_stays: int = 5    # stays explained again by every model of the cascading randomisation; 0 = skip
    cache_dir: str | None = None    # embedding cache; None = the checkpoint's, else DEFAULT_CACHE_DIR
    text_encoder: str | None = None  # encoder folder, only for texts missing from the cache
    device: str = "cpu"
    max_events: int | None = None   # most recent events per stay; None = the checkpoint's --max-events
    make_figures: bool = True
    show_progress: bool = True


@dataclass
class ExplainSettings:
    n_steps: int = 32                   # IG / LayerIG integration steps (Gauss-Legendre)
    internal_batch_size: int | None = None  # rows (stays x steps) per IG forward/backward chunk; None = from the
                                            # free memory (auto_rows); it also bounds ablation and curve forwards
    baseline: str = "zero"              # IG/LayerIG event baseline and static baseline: "zero" or "mean"
    perturbations_per_eval: int = 8     # FeatureAblation: ablated groups per forward
    curve_points: int = 11              # deletion/insertion curves: 0%, 10%, ..., 100% of events
    random_orders: int = 3              # random orderings averaged for the random reference
    seed: int = 0
    ig_tolerance: float = 0.05          # IG: stays whose completeness error exceeds this share of the logit
    max_n_steps: int = 256              # change are re-integrated with 2x steps, up to max_n_steps


def free_memory_bytes(device):
    """Memory free now on `device` (CUDA: the GPU's; CPU: the machine's available memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil
    return psutil.virtual_memory().available


def activation_bytes_per_row(model, length, with_grad):
    """A generous estimate of the activation memory one row (stay x step) of length `length` needs in the
    model's forward (with_grad: everything kept for the backward pass; without: about one layer at a time)."""
    config = getattr(model, "config", None)
    d, layers, d_ff, heads = ((config.d_model, config.n_layers, config.d_ff, config.n_heads) if config is not None
                              else (256, 4, 512, 8))
    per_layer = length * (12 * d + 3 * d_ff) + 3 * heads * length * length  # floats; attention weights L x L
    return 4 * 2 * per_layer * (layers if with_grad else 2)


def auto_rows(model, length, device, with_grad, share=0.25, cap=1024):
    """Rows per forward (with_grad: IG/LayerIG's internal batch) that fit in `share` of the free memory."""
    rows = int(share * free_memory_bytes(device) // activation_bytes_per_row(model, max(length, 1), with_grad))
    return max(1, min(cap, rows))


def explain_batch(model, events, mask, static, static_groups, settings, event_baseline=None,
                  static_baseline=None):
    """Every method on one batch. Returns event attributions {method: [B,L]}, static attributions
    {method: [B,G]}, the logits, IG's logit change and convergence delta, and the attention outputs."""
    logits, attn = attention_outputs(model, events, mask, static)
    rows = settings.internal_batch_size or auto_rows(model, events.shape[1], events.device, with_grad=True)
    ig_events, ig_static, ig_change, ig_delta, ig_steps = refined_integrated_gradients(
        model, events, mask, static, event_baseline, static_baseline, settings.n_steps, rows,
        settings.ig_tolerance, settings.max_n_steps)
    lig_events, lig_change, lig_delta, lig_steps = refined_layer_integrated_gradients(
        model, events, mask, static, event_baseline, settings.n_steps, rows, settings.ig_tolerance,
        settings.max_n_steps)
    # FeatureAblation runs perturbations_per_eval x B rows per forward: bounded by the same memory budget
    forward_rows = settings.internal_batch_size or auto_rows(model, events.shape[1], events.device, with_grad=False)
    per_eval = max(1, min(settings.perturbations_per_eval, forward_rows // max(1, events.shape[0])))
    fa_events, fa_static = feature_ablation(model, events, mask, static, static_groups, static_baseline, per_eval)
    event_attr = {"integrated_gradients": ig_events, "layer_integrated_gradients": lig_events,
                  "feature_ablation": fa_events, "attention_pooling": pooling_weights(attn) * mask}
    static_attr = {"integrated_gradients": group_static(ig_static, static_groups), "feature_ablation": fa_static}
    cpu = lambda d: {k: v.detach().float().cpu() for k, v in d.items()}  # noqa: E731
    return dict(event=cpu(event_attr), static=cpu(static_attr), logits=logits.float().cpu(),
                ig_change=ig_change.float().cpu(), ig_delta=ig_delta.float().cpu(), ig_steps=ig_steps,
                lig_change=lig_change.float().cpu(), lig_delta=lig_delta.float().cpu(), lig_steps=lig_steps,
                attention=cpu(attn))


# -----------------------------------------------------------------------------
# Loading: checkpoint, data, stays — all through train.py's own functions.

def check_checkpoint_compatible(ckpt, encoder_identity_now=None, embedding_dim=None):
    """Say exactly what differs when a checkpoint does not fit this code, this data or this encoder."""
    problems = []
    config, state = ckpt["model_config"], ckpt["preprocessor"]
    for key, ours in (("event_types", event_table.EVENT_TYPES), ("static_categorical", event_table.STATIC_CATEGORICAL),
                      ("static_numeric", event_table.STATIC_NUMERIC)):
        theirs = state.get(key)
        if theirs is not None and list(theirs) != list(ours):
            problems.append(f"{key}: checkpoint has {list(theirs)}, this train.py uses {list(ours)}")
    if config.get("n_event_types", len(event_table.EVENT_TYPES)) != len(event_table.EVENT_TYPES):
        problems.append(f"event types: the model has {config['n_event_types']}, this train.py has "
                        f"{len(event_table.EVENT_TYPES)} {event_table.EVENT_TYPES}")
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
        raise ExplainError("checkpoint does not match: " + "; ".join(problems))


EVENT_COLUMNS = ("event_index", "event_time", "event_type", "event_text", "relative_time_to_final_event")


def attribution_rows(stay_ids, event_meta, event_attr, static_attr, static_names, mask):
    """docs/interfaces.md §4 rows for one batch. event_meta[b]: the stay's real events (EVENT_COLUMNS) in sequence
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


# -----------------------------------------------------------------------------
# The whole analysis: load, explain in batches, measure faithfulness, write outputs.

def load_for_explanation(checkpoint_path, data_path, text_encoder=None):
    """Checkpoint (weights_only), model + preprocessor rebuilt from it, and the event table, with errors
    that say which file is wrong and what to do."""
    checkpoint_path, data_path = Path(checkpoint_path), Path(data_path)
    if not checkpoint_path.is_file():
        raise ExplainError(f"checkpoint not found: {checkpoint_path}. Train a model first (python train.py) or "
                           "pass --checkpoint FILE.")
    if not data_path.is_file():
        raise ExplainError(f"data file not found: {data_path}. Pass --data FILE (an event table, "
                           "docs/interfaces.md §1).")
    ckpt = train.load_checkpoint(checkpoint_path)  # CheckpointError names the file and what is wrong
    identity_now = None
    if text_encoder is not None:
        saved = train.EncoderSpec.from_checkpoint(ckpt)
        identity_now = train.EncoderSpec.of_folder(train.resolve_text_encoder(text_encoder), saved.pooling,
                                                   saved.max_length, saved.dtype).identity
    try:
        check_checkpoint_compatible(ckpt, identity_now)
    except ExplainError as e:
        raise ExplainError(f"{checkpoint_path}: {e}") from None
    try:
        model, preprocessor, ckpt = train.model_from_checkpoint(ckpt)
    except train.CheckpointError as e:  # weights of another model version
        raise ExplainError(f"{checkpoint_path}: {e}") from None
    model.eval()
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


def mean_training_baselines(model, table, split_of_stay, preprocessor, prepare, batch_size):
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


def _default_cache_dir(args):
    saved = args.get("cache_dir")
    return saved if saved and Path(saved).is_dir() else DEFAULT_CACHE_DIR


def explain_options(options):
    """(ExplainRun, ExplainSettings) from keyword options named as their fields."""
    run_names = {f.name for f in dataclasses.fields(ExplainRun)}
    setting_names = {f.name for f in dataclasses.fields(ExplainSettings)}
    unknown = sorted(set(options) - run_names - setting_names)
    if unknown:
        raise TypeError(f"run_explainability_analysis() got unexpected options {unknown}")
    return (ExplainRun(**{k: v for k, v in options.items() if k in run_names}),
            ExplainSettings(**{k: v for k, v in options.items() if k in setting_names}))


def run_explainability_analysis(checkpoint_path=DEFAULT_CHECKPOINT, test_data_path=DEFAULT_DATA,
                                save_dir=DEFAULT_SAVE_DIR, return_tables=True, **options):
    """Explain the chosen stays with every method and write docs/interfaces.md §4's outputs under save_dir.
    `options`: any field of ExplainRun or ExplainSettings by name (their defaults are the command's).
    Returns dict(paths={name: Path}, faithfulness=dict, event_attributions=DataFrame,
    static_attributions=DataFrame, predictions=DataFrame, analyses={layer_attention_patterns,
    feature_importance_over_time, critical_time_periods: {method: DataFrame}}).

    The run holds no attribution table: both are written batch by batch, and the analyses and figures come from
    running sums, a bounded sample and the stays they draw (Collected), so memory does not grow with the events
    explained beyond a few bytes each. With return_tables (default) the two CSVs are read back once at the end
    (about 50 bytes per event row); return_tables=False returns None for them (the command's way)."""
    run, settings = explain_options(options)
    if settings.baseline not in ("zero", "mean"):
        raise ExplainError(f"--baseline must be 'zero' or 'mean', not {settings.baseline!r}")
    torch.manual_seed(settings.seed)
    model, preprocessor, ckpt, table = load_for_explanation(checkpoint_path, test_data_path, run.text_encoder)
    args = ckpt.get("args", {})
    max_events = run.max_events or args.get("max_events")
    cache_dir = run.cache_dir or _default_cache_dir(args)
    split_of_stay = event_table.split_stays_by_patient(table, seed=args.get("seed", 0))
    chosen = choose_stays(table, split_of_stay, run.split, run.max_stays, run.stay_ids, test_data_path)

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
    check_checkpoint_compatible(ckpt, embedding_dim=int(embedding_matrix.shape[1]))
    model, embedding_matrix = model.to(run.device), embedding_matrix.to(run.device)
    event_baseline = static_baseline = None
    if settings.baseline == "mean":
        event_baseline, static_baseline = mean_training_baselines(
            model, table, split_of_stay, preprocessor, prepare, run.batch_size)
    del table  # from here on only the explained stays' rows
    static_groups = preprocessor.static_feature_groups
    static_names = list(static_groups)
    has_planted = "planted_risk" in rows.columns

    # length-sorted batches: little padding, so little wasted compute
    stays = sorted(stays, key=lambda s: (len(s.type_ids), s.stay_id))
    cascade = cascading_randomisation(model, seed=settings.seed + 1) if run.randomisation_stays else []
    # the randomised models are explained with IG's starting steps: rank correlations need no re-integration
    cascade_settings = dataclasses.replace(settings, ig_tolerance=0.0)
    collected = Collected(static_names, detail_stay_ids=run.stay_ids or [], seed=settings.seed)
    rng = np.random.default_rng(settings.seed)
    starts = list(range(0, len(stays), run.batch_size))
    # the sanity check takes batches spread over the length-sorted stays, not only the shortest ones
    n_check = math.ceil(run.randomisation_stays / run.batch_size) if run.randomisation_stays else 0
    n_check = min(len(starts), n_check)
    check_batches = set(np.linspace(0, len(starts) - 1, n_check).round().astype(int).tolist()) if n_check else set()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as outputs:
        # the attribution tables are written batch by batch to temporary names, published when complete
        writers = {name: StreamingCsv(outputs.enter_context(atomic_io.atomic_output(save_dir / name)))
                   for name in ("event_attributions.csv", "static_attributions.csv")}
        progress = tqdm(starts, desc="explaining", unit="batch", disable=not run.show_progress)
        for batch_number, i in enumerate(progress):
            chunk = stays[i:i + run.batch_size]
            batch = {k: v.to(run.device) for k, v in train.collate_stays(chunk).items()}
            with torch.no_grad():  # the tensor Captum attributes (train.MortalityTransformer.event_features)
                events, mask, static = train.batch_inputs(model, batch, embedding_matrix)
            out = explain_batch(model, events, mask, static, static_groups, settings, event_baseline, static_baseline)
            meta = []
            for b, stay in enumerate(chunk):
                n = len(stay.type_ids)
                if int(mask[b].sum()) != n or (n and not bool(mask[b, :n].all())):
                    raise RuntimeError(f"stay {stay.stay_id}: collate_stays did not put its {n} events first")
                meta.append(rows.iloc[stay.event_row_index.numpy()])
            event_rows, static_rows = attribution_rows(batch["stay_id"].tolist(), meta, out["event"], out["static"],
                                                       static_names, mask.cpu())
            faith = faithfulness_for_batch(model, events, mask, static,
                                           {m: out["event"][m] for m in METHODS}, settings.curve_points,
                                           settings.random_orders, rng, max_rows=settings.internal_batch_size)
            randomised = None
            if cascade and batch_number in check_batches:
                k = math.ceil(run.randomisation_stays / len(check_batches))  # the check's stays, spread over batches
                randomised = [(name, explain_batch(step_model, events[:k], mask[:k], static[:k], static_groups,
                                                   cascade_settings, event_baseline, static_baseline)["event"])
                              for name, step_model in cascade]
            in_split = [run.split == "all" or split_of_stay.get(stay.stay_id) == run.split for stay in chunk]
            collected.add(chunk, meta, mask.cpu(), out, event_rows, static_rows, faith, randomised, has_planted, in_split)
            writers["event_attributions.csv"].write(event_rows.sort_values(["stay_id", "method", "event_index"],
                                                                           kind="stable"))
            writers["static_attributions.csv"].write(static_rows.sort_values(["stay_id", "method"], kind="stable"))

        for writer in writers.values():
            writer.close()
    faithfulness = collected.faithfulness(settings, has_planted)
    faithfulness["data"] = dict(checkpoint=str(checkpoint_path), data=str(test_data_path), split=run.split,
                                n_stays=len(stays), n_events=int(sum(len(s.type_ids) for s in stays)),
                                n_stays_outside_split=collected.n_stays_outside_split,
                                note="--stay-ids stays outside the split are explained and drawn but not counted "
                                     "in the faithfulness measures")
    paths = {"event_attributions.csv": save_dir / "event_attributions.csv",
             "static_attributions.csv": save_dir / "static_attributions.csv",
             "faithfulness.json": atomic_io.write_json(faithfulness, save_dir / "faithfulness.json")}
    if run.make_figures:
        paths.update(make_all_figures(collected, save_dir, faithfulness, run.stay_ids or []))
    analyses = dict(layer_attention_patterns=collected.layer_pattern_frame(),
                    feature_importance_over_time=collected.events.feature_importance_over_time(),
                    critical_time_periods={m: collected.critical_time_periods(m) for m in METHODS})
    tables = {name: read_attribution_table(paths[f"{name}.csv"]) if return_tables else None
              for name in ("event_attributions", "static_attributions")}
    return dict(paths=paths, faithfulness=faithfulness, predictions=collected.prediction_frame(),
                analyses=analyses, **tables)


def read_attribution_table(path):
    """event_attributions.csv or static_attributions.csv as a DataFrame: strings as categories (each distinct
    text held once), event_time as timestamps, rows by stay, method and position."""
    strings = ("event_type", "event_text", "method", "feature")
    header = pd.read_csv(path, nrows=0).columns
    frame = pd.read_csv(path, dtype={c: "category" for c in strings if c in header},
                        parse_dates=["event_time"] if "event_time" in header else False)
    order = [c for c in ("stay_id", "method", "event_index") if c in frame.columns]
    return frame.sort_values(order, kind="stable", ignore_index=True)


def convergence_summary(relative_deltas, steps_used, settings):
    """Completeness of (Layer)IG over stays: quantiles of |delta| / |logit change|, how many stays missed
    the tolerance, and the steps used."""
    deltas = np.asarray(relative_deltas, dtype=float)
    have = len(deltas) > 0
    return dict(relative_delta_median=float(np.median(deltas)) if have else None,
                relative_delta_p95=float(np.quantile(deltas, 0.95)) if have else None,
                relative_delta_max=float(deltas.max()) if have else None,
                share_within_tolerance=float((deltas <= settings.ig_tolerance).mean()) if have else None,
                n_stays=int(len(deltas)), n_missed_tolerance=int((deltas > settings.ig_tolerance).sum()),
                tolerance=settings.ig_tolerance, max_n_steps=settings.max_n_steps,
                steps_used={str(k): int(v) for k, v in zip(*np.unique(steps_used, return_counts=True))},
                note="|sum of IG attributions - (logit(input) - logit(baseline))| / |logit(input) - logit(baseline)|")


def rank_agreement(scores):
    """Mean per-stay Spearman between methods, like with like: two signed methods on their signed scores;
    attention (>= 0, no direction) against the absolute value of a signed method."""
    agreement = {}
    for i, a in enumerate(METHODS):
        for b in METHODS[i + 1:]:
            unsigned = a not in SIGNED_METHODS or b not in SIGNED_METHODS
            key = f"{a} vs {b}" + (" (absolute values)" if unsigned else "")
            agreement[key] = mean_rank_correlation(scores[a], scores[b], absolute=unsigned)[0]
    return agreement


# -----------------------------------------------------------------------------
# What a run keeps of its batches: bounded by what the outputs need, not by the number of events explained
# (a whole-cohort run explains tens of millions).

FIGURE_SAMPLE_EVENTS = 200_000  # events kept, a uniform sample (seeded), for the box and scatter plots
LARGEST_EVENTS = 12             # the largest single-event attributions each captum figure names
LARGEST_COLUMNS = ["stay_id", "event_index", "event_type", "event_text", "relative_time_to_final_event",
                   "attribution"]


class EventSample:
    """A uniform random sample of at most `size` of the rows added, the same for the same seed: every row draws
    a random key and the rows with the `size` smallest keys are kept (a bottom-k reservoir sample). It holds
    every row while no more than `size` were added."""

    def __init__(self, size=FIGURE_SAMPLE_EVENTS, seed=0):
        self.size, self.rng = size, np.random.default_rng(seed)
        self.parts, self.n_held, self.n_added = [], 0, 0
        self.threshold = np.inf  # once `size` rows are held, a row with a larger key can no longer enter

    def add(self, frame):
        keys = self.rng.random(len(frame))
        enters = keys < self.threshold
        if enters.any():
            self.parts.append(frame.loc[enters].assign(sample_key=keys[enters],
                                                       sample_order=self.n_added + np.flatnonzero(enters)))
            self.n_held += int(enters.sum())
        self.n_added += len(frame)
        if self.n_held > 2 * self.size or len(self.parts) > 64:  # now and then, not at every batch
            self._keep_smallest_keys()

    def _keep_smallest_keys(self):
        held = pd.concat(self.parts, ignore_index=True).nsmallest(self.size, "sample_key")
        self.parts, self.n_held = [held], len(held)
        if len(held) == self.size:
            self.threshold = float(held["sample_key"].max())

    def frame(self):
        """The sampled rows in the order they were added; None before any."""
        if not self.parts:
            return None
        self._keep_smallest_keys()
        return self.parts[0].sort_values("sample_order").drop(columns=["sample_key", "sample_order"])


class EventSums:
    """Running sums over event_attributions rows, added a batch of whole stays at a time, from which analyses and
    figures are computed without keeping the rows (each equal, up to floating point, to the same computation on
    the whole table: tested). Per method: the number and sum of |attribution| and of |attribution| / its stay's
    mean |attribution| per window of hours (critical_time_periods, sequence_importance.png) and the rows of
    largest |attribution|; of IG: the sum and number per (event type, window) (feature_importance_over_time) and
    per distinct event text (feature_importance.png; 16 bytes per distinct text of the table)."""

    def __init__(self, n_largest=LARGEST_EVENTS):
        self.magnitude = {m: WindowSums() for m in METHODS}
        self.relative = {m: WindowSums() for m in METHODS}
        self.n_largest, self.largest = n_largest, {}
        self.type_windows = None  # IG: sum and count per (event type, window)
        self.event_texts = self.text_sums = self.text_counts = None

    def add(self, rows):
        if rows.empty:
            return
        for method, part in rows.groupby("method", sort=False):
            hours = hours_before_prediction(part)
            self.magnitude[method].add(part["attribution"].abs(), hours)
            self.relative[method].add(relative_magnitude(part), hours)
            self._keep_largest(method, part)
            if method == "integrated_gradients":
                self._add_by_type_and_window(part, hours)
                self._add_by_text(part)

    def _keep_largest(self, method, part):
        both = pd.concat([self.largest.get(method), part[LARGEST_COLUMNS]], ignore_index=True)
        order = np.argsort(-both["attribution"].abs().to_numpy(), kind="stable")[:self.n_largest]
        self.largest[method] = both.iloc[order].reset_index(drop=True)

    def _add_by_type_and_window(self, part, hours):
        cells = pd.DataFrame({"event_type": part["event_type"].astype(str).to_numpy(),
                              "window": pd.cut(hours, bins=list(HOUR_WINDOW_EDGES), right=False).astype(str),
                              "attribution": part["attribution"].to_numpy()})
        sums = cells.groupby(["event_type", "window"])["attribution"].agg(["sum", "count"])
        self.type_windows = sums if self.type_windows is None else self.type_windows.add(sums, fill_value=0)

    def _add_by_text(self, part):
        texts = part["event_text"]
        if self.event_texts is None:  # the event table's categorical column lists every text of the table
            self.event_texts = texts.astype("category").cat.categories
            self.text_sums = np.zeros(len(self.event_texts))
            self.text_counts = np.zeros(len(self.event_texts), dtype=np.int64)
        codes = pd.Categorical(texts, categories=self.event_texts).codes  # no work where the categories are these
        if (codes < 0).any():
            raise ValueError("event_text must keep the event table's categories in every batch")
        np.add.at(self.text_sums, codes, part["attribution"].to_numpy())
        np.add.at(self.text_counts, codes, 1)

    def feature_importance_over_time(self):
        """analyze_feature_importance_over_time of IG's rows: the mean per (event type, window)."""
        if self.type_windows is None:
            return pd.DataFrame()
        return (self.type_windows["sum"] / self.type_windows["count"]).unstack("window")

    def mean_by_text(self):
        """IG's mean attribution and number of events per distinct event text, by text."""
        if self.text_counts is None:
            return pd.DataFrame(columns=["mean", "count"])
        used = np.flatnonzero(self.text_counts)
        return pd.DataFrame({"mean": self.text_sums[used] / self.text_counts[used], "count": self.text_counts[used]},
                            index=pd.Index(self.event_texts[used], name="event_text")).sort_index()


class Collected:
    """What a run keeps of its batches for faithfulness.json, the analyses and the figures.

    Per stay of the split, the faithfulness measures' inputs: each method's score per event (float32, as the
    methods return them) and, where the data names planted events, the planted flags (int8) and the ranks of
    the random orders (the smallest integer type that holds them); per stay a few numbers (prediction, IG
    completeness, the faithfulness records as rows of arrays). That is 16 + 1 + 3 x 2 = 23 bytes per event and
    about 2 KB per stay. Everything else is a running sum (EventSums, static attributions, pooling weight per
    event type, attention patterns), a seeded sample of at most FIGURE_SAMPLE_EVENTS events (EventSample) for
    the box and scatter plots, or the whole detail of the stays a figure draws: the example stay and the
    --stay-ids stays."""

    def __init__(self, static_names, detail_stay_ids=(), sample_size=FIGURE_SAMPLE_EVENTS, seed=0):
        self.static_names = static_names
        # per stay of the split, in the same order: the faithfulness measures' inputs
        self.scores = {m: [] for m in METHODS}
        self.planted, self.random_order_scores = [], []  # only where the data names planted events
        self.faith = {}  # {method or "random": [stack_records arrays of one batch]}
        self.cascade = {}  # cascading randomisation: {step: {method: (original, randomised) scores per stay}}
        self.relative_delta = {"ig": [], "lig": []}  # completeness of IG and LayerIG: |delta| / |logit change|
        self.steps_used = {"ig": [], "lig": []}
        # every stay explained (also --stay-ids stays of another split)
        self.predictions = []
        self.n_stays_outside_split = 0
        self.events = EventSums()
        self.static_sums = None  # sum of attribution, of |attribution| and count per (feature, method)
        self.pool_by_type, self.count_by_type = {}, {}  # per event type: pooling weight x stay length per head
        self.layer_pattern_sums = None  # analyze_layer_attention_patterns of each batch x its stays, summed
        self.sample = EventSample(sample_size, seed)
        # the stays figures draw
        self.detail_stay_ids = {int(s) for s in detail_stay_ids}
        self.details = {}  # stay_id -> detail of a --stay-ids stay
        self.example, self._example_rank = None, None

    def add(self, chunk, meta, mask, out, event_rows, static_rows, faith, randomised, has_planted, in_split=None):
        """in_split[b]: stay b belongs to the explained split (a --stay-ids stay of another split is explained
        and drawn, but kept out of the faithfulness measures)."""
        in_split = [True] * len(chunk) if in_split is None else list(in_split)
        random_orders = {r["stay_position"]: r["order_scores"] for r in faith.get("random", [])}
        for name, records in faith.items():
            kept = [r for r in records if in_split[r["stay_position"]]]
            if kept:
                self.faith.setdefault(name, []).append(stack_records(kept))
        hours = torch.zeros(mask.shape)
        for b, (stay, m) in enumerate(zip(chunk, meta)):
            n = len(m)
            hours[b, :n] = torch.as_tensor(hours_before_prediction(m))
            logit = float(out["logits"][b])
            probability = 1 / (1 + math.exp(-logit))
            self.predictions.append(dict(stay_id=int(stay.stay_id), logit=logit, probability=probability,
                                         mortality=int(stay.label), n_events=n))
            self._keep_detail(stay, m, out, b, probability)
            if in_split[b]:
                self._add_stay_of_split(m, out, b, randomised, has_planted, random_orders.get(b))
            else:
                self.n_stays_outside_split += 1
        self._add_pooling_by_type(out["attention"], meta)
        self._add_layer_patterns(out["attention"], mask, hours)
        self._add_static(static_rows)
        self.events.add(event_rows)
        self.sample.add(self._event_rows_for_sample(chunk, meta, mask, out, hours))

    def _add_stay_of_split(self, m, out, b, randomised, has_planted, random_orders):
        n = len(m)
        for method in METHODS:
            scores = out["event"][method][b, :n]
            self.scores[method].append(scores.numpy().copy())  # a copy: a view would keep the batch's tensor
            for step, random_event in randomised or []:
                if b >= random_event[method].shape[0]:
                    continue  # not one of the check's stays
                pair = self.cascade.setdefault(step, {k: ([], []) for k in METHODS})[method]
                pair[0].append(scores.double().numpy())
                pair[1].append(random_event[method][b, :n].double().numpy())
        if has_planted:
            self.planted.append(m["planted_risk"].fillna(0).to_numpy(dtype=np.int8))
            # a random order's scores are its ranks n..1: exact in the smallest integer type that holds n
            self.random_order_scores.append(None if random_orders is None else
                                            [o.astype(np.min_scalar_type(n)) for o in random_orders])
        for key in ("ig", "lig"):
            self.steps_used[key].append(int(out[f"{key}_steps"][b]))
            change = float(out[f"{key}_change"][b])
            if abs(change) > 1e-6:
                self.relative_delta[key].append(abs(float(out[f"{key}_delta"][b])) / abs(change))

    def _keep_detail(self, stay, m, out, b, probability):
        """Everything the single-stay figures draw, for a --stay-ids stay and for the example stay (the highest
        predicted risk among stays with >= 3 events, else among all stays; the first of equals)."""
        stay_id, n = int(stay.stay_id), len(m)
        rank = (n >= 3, probability)
        is_example = self.example is None or rank > self._example_rank
        if stay_id not in self.detail_stay_ids and not is_example:
            return
        received = out["attention"]["layer_attention"][:, b].mean(1)[:, :n, :n]  # [layers, queries, keys]
        detail = dict(stay_id=stay_id, meta=m.reset_index(drop=True), label=int(stay.label), probability=probability,
                      layer_received=received.mean(1).numpy() if n else np.zeros((received.shape[0], 0)),
                      attributions={k: out["event"][k][b, :n].numpy().copy() for k in METHODS},
                      static={k: out["static"][k][b].numpy().copy() for k in out["static"]})
        if stay_id in self.detail_stay_ids:
            self.details[stay_id] = detail
        if is_example:
            self.example, self._example_rank = detail, rank

    def _add_pooling_by_type(self, attn, meta):
        for b, m in enumerate(meta):
            n = len(m)
            # weight x the event's own stay length: 1 = what a uniform head gives an event of that stay
            weighted = attn["pooling_attention"][b, :, 0, :n].double().numpy() * n  # [heads, n]
            types = m["event_type"].astype(str).to_numpy()
            for event_type in np.unique(types):
                of_type = types == event_type
                self.pool_by_type[event_type] = self.pool_by_type.get(event_type, 0) + weighted[:, of_type].sum(1)
                self.count_by_type[event_type] = self.count_by_type.get(event_type, 0) + int(of_type.sum())

    def _add_layer_patterns(self, attn, mask, hours):
        patterns = analyze_layer_attention_patterns(attn["layer_attention"], mask, hours)
        n_stays = int((mask.sum(1) > 0).sum())
        if patterns.empty or not n_stays:
            return
        weighted = patterns.set_index(["layer", "head"]) * n_stays  # each batch weighs as many stays as it has
        weighted["n_stays"] = n_stays
        both = weighted if self.layer_pattern_sums is None else pd.concat([self.layer_pattern_sums, weighted])
        self.layer_pattern_sums = both.groupby(level=["layer", "head"]).sum()

    def _add_static(self, static_rows):
        if static_rows.empty:
            return
        sums = static_rows.assign(magnitude=static_rows["attribution"].abs(), n=1).groupby(
            ["feature", "method"])[["attribution", "magnitude", "n"]].sum()
        self.static_sums = sums if self.static_sums is None else self.static_sums.add(sums, fill_value=0)

    @staticmethod
    def _event_rows_for_sample(chunk, meta, mask, out, hours):
        """One row per event of the batch: its stay, position, type, hours before the prediction, every method's
        score and, where the model has them, each pooling head's score."""
        lengths = [len(m) for m in meta]
        columns = {"stay_id": np.repeat([int(stay.stay_id) for stay in chunk], lengths),
                   "event_index": np.concatenate([m["event_index"].to_numpy() for m in meta]),
                   "event_type": np.concatenate([m["event_type"].astype(str).to_numpy(dtype=object) for m in meta]),
                   "hours_before": hours[mask].numpy()}
        columns.update({method: out["event"][method][mask].numpy() for method in METHODS})
        scores = out["attention"].get("pooling_scores")
        if scores is not None:
            per_event = scores.transpose(1, 2)[mask]  # [events, heads]
            columns.update({f"pool_score_{h}": per_event[:, h].numpy() for h in range(per_event.shape[1])})
        return pd.DataFrame(columns)

    # ---- what the analyses and figures read

    def prediction_frame(self):
        return pd.DataFrame(self.predictions)

    def layer_pattern_frame(self):
        """analyze_layer_attention_patterns over every batch, each batch weighted by its number of stays."""
        if self.layer_pattern_sums is None:
            return pd.DataFrame(columns=["layer", "head"])
        sums = self.layer_pattern_sums
        return sums.drop(columns="n_stays").div(sums["n_stays"].clip(lower=1), axis=0).reset_index()

    def window_importance(self, method):
        """window_importance of the method's event_attributions rows."""
        return self.events.relative[method].table()

    def critical_time_periods(self, method):
        """analyze_critical_time_periods of the method's |attribution| over every event."""
        return self.events.magnitude[method].table()

    def static_means(self):
        """Mean attribution and mean |attribution| (`magnitude`) per (feature, method) over the explained stays."""
        if self.static_sums is None:
            return pd.DataFrame(columns=["attribution", "magnitude"])
        return self.static_sums[["attribution", "magnitude"]].div(self.static_sums["n"], axis=0)

    def event_sample(self):
        """The sampled events (every event of a run of up to FIGURE_SAMPLE_EVENTS events), in the order they were
        explained."""
        frame = self.sample.frame()
        if frame is None:
            return pd.DataFrame(columns=["stay_id", "event_index", "event_type", "hours_before", *METHODS])
        return frame.reset_index(drop=True)

    def sample_note(self):
        """"" where the sample holds every event, else what share of them it is (for figure titles)."""
        sample = self.sample
        return "" if sample.n_added <= sample.size else f" (a random {sample.size:,} of {sample.n_added:,} events)"

    def faithfulness(self, settings, has_planted):
        def summary(name):
            return summarise_faithfulness(concatenate_records(self.faith[name])) if name in self.faith else {}

        result = {"methods": {}, "random": summary("random")}
        for method in METHODS:
            entry = summary(method)
            last = self.cascade[list(self.cascade)[-1]][method] if self.cascade else ([], [])
            rho, n = mean_rank_correlation(*last)
            entry["randomisation_spearman"] = rho  # every group re-initialised; low = depends on learned weights
            entry["randomisation_n_stays"] = n
            if has_planted:
                auprc, floor, n_planted = planted_recovery(self.scores[method], self.planted, self.random_order_scores)
                entry["planted_auprc"] = auprc
                entry["planted_n_stays"] = n_planted
                result["random"]["planted_auprc"] = floor
                result["random"]["planted_share"] = planted_share(self.planted)
            result["methods"][method] = entry
        result["randomisation_cascade"] = [
            dict(step=step, methods={m: dict(zip(("spearman", "n_stays"), mean_rank_correlation(*pairs[m])),
                                              spearman_abs=mean_rank_correlation(*pairs[m], absolute=True)[0])
                                     for m in METHODS})
            for step, pairs in self.cascade.items()]
        result["randomisation_note"] = (
            "cascading model randomisation (Adebayo et al. 2018): groups of weights re-initialised from the output "
            "down, cumulatively; Spearman of each method's per-event scores (signed, and of their absolute values) "
            "between the trained and the randomised model, mean over stays; a method that depends on the learned "
            "weights falls towards 0 as more groups are randomised")
        result["rank_agreement_spearman"] = rank_agreement(self.scores)
        for key, name in (("ig", "integrated_gradients"), ("lig", "layer_integrated_gradients")):
            result[f"{name}_convergence"] = convergence_summary(self.relative_delta[key], self.steps_used[key],
                                                                 settings)
        result["layer_integrated_gradients_convergence"]["note"] = (
            "LayerIG's own completeness: logit(events, static) - logit(baseline events, static); static "
            "features stay at their values on its path")
        result["settings"] = dict(n_steps=settings.n_steps, baseline=settings.baseline,
                                  curve_points=settings.curve_points, random_orders=settings.random_orders,
                                  eraser_fractions=list(ERASER_FRACTIONS),
                                  curves="predicted-class probability as events are removed (deletion) or added "
                                         "(insertion) in attribution order towards the predicted class; area "
                                         "over the fraction of events; deletion lower = better, insertion higher "
                                         "= better; comprehensiveness higher = better, sufficiency lower = better")
        result["eraser_note"] = (
            "comprehensiveness at 1% removes one event in stays of up to 100 events: the single event whose "
            "removal changes the prediction most is by construction what feature_ablation ranks first, so "
            "ablation wins at 1% by construction; compare methods at 5-20%. Sufficiency is given per predicted "
            "class (sufficiency_by_predicted_class) because its all-stay mean is about the same for every method")
        if not has_planted:
            result["planted_note"] = "no planted_risk column in the data: planted-event recovery not measured"
        return result


# -----------------------------------------------------------------------------
# Figures. x axes are hours before the prediction time (0 = prediction time, on the right); the top
# events are named by their text.

METHOD_LABELS = {"integrated_gradients": "Integrated Gradients", "layer_integrated_gradients": "Layer IG (input proj.)",
                 "feature_ablation": "Feature ablation (event removed)", "attention_pooling": "Attention pooling"}


def _short(text, n=48):
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "…"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label_top(ax, hours, values, texts, k=5, signed=True):
    order = np.argsort(-(np.abs(values) if signed else values))[:k]
    for rank, j in enumerate(order):
        ax.annotate(_short(texts[j], 40), (hours[j], values[j]), xytext=(4, 10 + 9 * (rank % 3)),
                    textcoords="offset points", fontsize=7, arrowprops=dict(arrowstyle="-", lw=0.5, color="0.4"))


def fig_layer_attention(collected, path):
    plt = _plt()
    stay = collected.example
    meta, received = stay["meta"], stay["layer_received"]
    hours = hours_before_prediction(meta)
    order = np.argsort(-hours)  # oldest left, prediction time right
    patterns = collected.layer_pattern_frame()
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw=dict(width_ratios=[3, 1.2]), layout="constrained")
    ax = axes[0]
    image = np.vstack([received, stay["attributions"]["attention_pooling"][None]])[:, order]
    im = ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(image.shape[0]), [f"layer {i}" for i in range(received.shape[0])] + ["pooling"])
    ticks = np.linspace(0, len(order) - 1, min(8, len(order))).astype(int)
    ax.set_xticks(ticks, [f"{hours[order][t]:.1f}" for t in ticks])
    ax.set_xlabel("event, labelled by hours before the prediction time")
    top = np.argsort(-image[-1])[:5]
    ax.set_title(f"Stay {stay['stay_id']} (P(death)={stay['probability']:.2f}, died={stay['label']}): attention each "
                 f"event receives, mean over heads and queries\nmost pooled: " +
                 "; ".join(_short(meta['event_text'].iloc[order[j]], 30) for j in top[:3]), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025)
    ax = axes[1]
    pivot = patterns.pivot(index="layer", columns="head", values="entropy_normalised")
    im = ax.imshow(pivot.to_numpy(), aspect="auto", cmap="magma_r", vmin=0, vmax=1)
    ax.set_xticks(range(pivot.shape[1]), pivot.columns)
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Mean attention entropy / log(events in the stay)\n(1 = uniform, low = focused on few events)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return atomic_io.save_figure(fig, path)


def relative_magnitude(rows):
    """|attribution| / its stay's mean |attribution| of one method's event_attributions rows (whole stays; 0 where
    a stay's attributions are all 0): every stay weighs the same, whatever the scale of its attributions."""
    magnitude = rows["attribution"].abs()
    per_stay = magnitude.groupby(rows["stay_id"]).transform("mean")
    return (magnitude / per_stay.where(per_stay > 0)).fillna(0.0).to_numpy()


def window_importance(rows, edges=HOUR_WINDOW_EDGES):
    """One method's event_attributions rows -> per window of hours before the prediction: number of events
    and mean of |attribution| / its stay's mean |attribution| (each stay weighs the same, whatever the
    scale of its attributions; 1 = the stay's average event)."""
    windows = WindowSums(edges)
    windows.add(relative_magnitude(rows), hours_before_prediction(rows))
    return windows.table()


def fig_sequence_importance(collected, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    labels = None
    for method in METHODS:
        table = collected.window_importance(method)
        table = table[table.n_events > 0]
        if table.empty:
            continue
        ax.plot(range(len(table)), table["mean_weight"], marker="o", label=METHOD_LABELS[method])
        labels = [f"{w}\n(n={n})" for w, n in zip(table["window"], table["n_events"])]
    if labels:
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.axhline(1.0, color="0.5", lw=0.5, ls="--")
    ax.invert_xaxis()  # the prediction time on the right
    ax.set_xlabel("window of hours before the prediction time [from, to)")
    ax.set_ylabel("mean over events of |attribution|\n/ its stay's mean |attribution|")
    ax.set_title("When, before the prediction, are single events most decisive? "
                 "(every stay weighs the same; 1 = its average event)")
    ax.legend(fontsize=8)
    return atomic_io.save_figure(fig, path)


def fig_sequence_importance_combined(collected, path):
    plt = _plt()
    stay = collected.example
    meta = stay["meta"]
    hours = hours_before_prediction(meta)
    texts = meta["event_text"].astype(str).to_numpy()
    fig, axes = plt.subplots(len(METHODS), 1, figsize=(12, 2.6 * len(METHODS)), sharex=True)
    for ax, method in zip(axes, METHODS):
        values = stay["attributions"][method]
        colors = np.where(values >= 0, "tab:red", "tab:blue") if method in SIGNED_METHODS else "tab:gray"
        ax.vlines(hours, 0, values, colors=colors, lw=1.2)
        ax.scatter(hours, values, c=colors, s=10)
        ax.axhline(0, color="0.5", lw=0.5)
        _label_top(ax, hours, values, texts, k=4, signed=method in SIGNED_METHODS)
        ax.set_ylabel(METHOD_LABELS[method].split(" (")[0], fontsize=8)
    axes[-1].invert_xaxis()
    axes[-1].set_xlabel("hours before the prediction time")
    fig.suptitle(f"Stay {stay['stay_id']}: every method on the same events (P(death)={stay['probability']:.2f}, "
                 f"died={stay['label']}; red = towards death; the 4 largest named)", y=1.01)
    return atomic_io.save_figure(fig, path)


def head_specialization_lift(weighted_sum_by_type, count_by_type, types):
    """[heads, types]: mean over events of a type of (pooling weight x its own stay's number of events), so
    1 = what a uniform head gives that event, whatever the stay's length."""
    return np.stack([np.asarray(weighted_sum_by_type[t], dtype=float) / count_by_type[t] for t in types], 1)


def fig_head_specialization(collected, path):
    plt = _plt()
    types = sorted(collected.pool_by_type)
    if not types:
        fig, ax = plt.subplots()
        ax.text(0.5, 0.5, "no events", ha="center")
        return atomic_io.save_figure(fig, path)
    lift = head_specialization_lift(collected.pool_by_type, collected.count_by_type, types)
    fig, ax = plt.subplots(figsize=(8, 3 + 0.3 * lift.shape[0]))
    from matplotlib.colors import TwoSlopeNorm
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(0.0, float(lift.min())), vmax=max(2.0, float(lift.max())))
    im = ax.imshow(lift, cmap="RdBu_r", norm=norm, aspect="auto")  # white = 1 = no preference
    for (h, t), v in np.ndenumerate(lift):
        ax.text(t, h, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(types)), [f"{t}\n(n={collected.count_by_type[t]})" for t in types], fontsize=8)
    ax.set_yticks(range(lift.shape[0]), [f"pool head {h}" for h in range(lift.shape[0])])
    ax.set_title("Do pooling heads specialise in kinds of events?\nmean over events of pooling weight x its stay's "
                 "number of events (1 = the uniform weight of its own stay; white = no preference)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return atomic_io.save_figure(fig, path)


def fig_feature_importance(collected, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw=dict(width_ratios=[2, 1]), layout="constrained")
    ax = axes[0]
    by_text = collected.events.mean_by_text()
    if not by_text.empty:
        by_text = by_text[by_text["count"] >= min(3, int(by_text["count"].max()))]
        top = pd.concat([by_text.nlargest(10, "mean"), by_text.nsmallest(10, "mean")]).drop_duplicates()
        top = top.sort_values("mean")
        ax.barh([f"{_short(t, 55)} (n={c})" for t, c in zip(top.index, top["count"])], top["mean"],
                color=np.where(top["mean"] >= 0, "tab:red", "tab:blue"))
        ax.tick_params(axis="y", labelsize=7)
    ax.axvline(0, color="0.4", lw=0.5)
    ax.set_xlabel("mean Integrated Gradients attribution to the logit (red = towards death)")
    ax.set_title("Which events push predictions, across explained stays?", fontsize=10)
    ax = axes[1]
    static = collected.static_means()
    if not static.empty:
        table = static["magnitude"].unstack("method")
        table.sort_values(table.columns[0]).plot.barh(ax=ax)
    ax.set_xlabel("mean |attribution| to the logit")
    ax.set_title("Static features (all one-hot columns of a\nvariable together)", fontsize=10)
    return atomic_io.save_figure(fig, path)


def fig_query_vector(collected, path):
    """The pooling scores q_h . pool.key(x)_h / sqrt(d_head) per head: what the pooling query looks for."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained")
    sample = collected.event_sample()
    heads = [c for c in sample.columns if str(c).startswith("pool_score_")]
    if sample.empty or not heads:
        axes[0].text(0.5, 0.5, "the model has no train.AttentionPooling (pool.key, pool.query)", ha="center")
        return atomic_io.save_figure(fig, path)
    note = collected.sample_note()
    types = sorted(sample.event_type.unique())
    width = 0.8 / len(heads)
    for i, column in enumerate(heads):
        box = axes[0].boxplot([sample.loc[sample.event_type == t, column] for t in types], showfliers=False,
                              positions=np.arange(len(types)) + (i - (len(heads) - 1) / 2) * width, widths=width * 0.9,
                              patch_artist=True)
        for patch in box["boxes"]:
            patch.set_facecolor(plt.cm.tab10(i))
        axes[0].plot([], [], color=plt.cm.tab10(i), lw=6, label=f"pool head {i}")
    axes[0].set_xticks(range(len(types)), types, rotation=30)
    axes[0].set_ylabel("pooling score  q_h . key_h(x) / sqrt(d_head)")
    axes[0].set_title(f"What does each pooling head's query look for? By event type{note}", fontsize=10)
    axes[0].legend(fontsize=8)
    for i, column in enumerate(heads):
        axes[1].scatter(sample["hours_before"], sample[column], s=4, alpha=0.4, color=plt.cm.tab10(i), label=f"head {i}")
    axes[1].invert_xaxis()
    axes[1].set_xlabel("hours before the prediction time")
    axes[1].set_ylabel("pooling score")
    axes[1].set_title("Pooling scores over time (the softmax of a stay's scores is its pooling weights)",
                      fontsize=10)
    axes[1].legend(fontsize=8, markerscale=3)
    return atomic_io.save_figure(fig, path)


def _by_type_and_top(ax_box, ax_top, sample, largest, method, note=""):
    """Box plots of the method's scores by event type (of the sampled events) and its largest single-event
    attributions (of every event)."""
    types = sorted(sample.event_type.astype(str).unique())
    ax_box.boxplot([sample.loc[sample.event_type == t, method] for t in types], tick_labels=types, showfliers=False)
    ax_box.tick_params(axis="x", labelrotation=30)
    ax_box.axhline(0, color="0.5", lw=0.5)
    ax_box.set_ylabel("attribution to the logit")
    ax_box.set_title(f"{METHOD_LABELS[method]}: by event type{note}", fontsize=10)
    top = largest.iloc[::-1] if largest is not None else pd.DataFrame(columns=LARGEST_COLUMNS)
    ax_top.barh([f"{_short(t, 45)} [{s}, {h:.1f}h]" for t, s, h in
                 zip(top.event_text, top.stay_id, hours_before_prediction(top))], top["attribution"],
                color=np.where(top["attribution"] >= 0, "tab:red", "tab:blue"))
    ax_top.tick_params(axis="y", labelsize=7)
    ax_top.set_title("largest single-event attributions [stay, hours before prediction]", fontsize=10)


def _method_scatter(ax, sample, method, other="integrated_gradients", note=""):
    ax.scatter(sample[other], sample[method], s=5, alpha=0.5)
    rho = spearmanr(sample[method], sample[other]).statistic if len(sample) > 2 else float("nan")
    ax.set_xlabel(METHOD_LABELS[other])
    ax.set_ylabel(METHOD_LABELS[method])
    ax.set_title(f"per event, all stays{note} (Spearman {rho:.2f})", fontsize=10)


def fig_captum(collected, path, method, faithfulness):
    plt = _plt()
    sample, note = collected.event_sample(), collected.sample_note()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw=dict(width_ratios=[1, 1.6, 1]), layout="constrained")
    _by_type_and_top(axes[0], axes[1], sample, collected.events.largest.get(method), method, note)
    if method in ("integrated_gradients", "layer_integrated_gradients"):
        key = "ig" if method == "integrated_gradients" else "lig"
        conv = faithfulness[f"{method}_convergence"]
        axes[2].hist(np.asarray(collected.relative_delta[key]), bins=30)
        axes[2].axvline(conv["tolerance"], color="tab:red", lw=0.8, ls="--")
        axes[2].set_title(convergence_title(conv), fontsize=10)
        axes[2].set_xlabel("relative completeness error per stay (dashed: tolerance)")
    elif method == "feature_ablation":
        static = collected.static_means()
        rows = (static["attribution"].xs("feature_ablation", level="method").sort_values() if not static.empty
                else pd.Series(dtype=float))
        axes[2].barh(rows.index, rows.to_numpy(), color=np.where(rows >= 0, "tab:red", "tab:blue"))
        axes[2].set_title("static column removed: mean logit change", fontsize=10)
    else:
        _method_scatter(axes[2], sample, method, note=note)
    return atomic_io.save_figure(fig, path)


def steps_used_label(steps_used):
    """{"32": 90, "64": 10} -> "32-64 steps (median 32)": the steps the stays really used."""
    if not steps_used:
        return "no stays"
    steps = np.repeat([int(k) for k in steps_used], [int(v) for v in steps_used.values()])
    low, high = int(steps.min()), int(steps.max())
    span = f"{low}" if low == high else f"{low}-{high}"
    return f"{span} steps (median {int(np.median(steps))})"


def convergence_title(conv):
    return (f"completeness: |delta| / |logit change|, {steps_used_label(conv['steps_used'])}\n"
            f"median {conv['relative_delta_median'] or 0:.3g}, max {conv['relative_delta_max'] or 0:.3g}; "
            f"{conv['n_missed_tolerance']} of {conv['n_stays']} stays above {conv['tolerance']:.0%}")


def fig_stay_timeline(stay, path, static_names=()):
    """Every event of one stay on a time axis, coloured by its IG attribution, the top events named; the
    static columns' IG attributions beside it."""
    plt = _plt()
    meta = stay["meta"]
    fig, (ax, ax_static) = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw=dict(width_ratios=[4, 1]),
                                        layout="constrained")
    title = f"Stay {stay['stay_id']}: predicted P(death) = {stay['probability']:.2f}, outcome: " + \
        ("died" if stay["label"] else "survived")
    if len(meta):
        hours = hours_before_prediction(meta)
        types = list(dict.fromkeys(sorted(meta.event_type.astype(str))))
        y = np.array([types.index(t) for t in meta.event_type.astype(str)])
        values = stay["attributions"]["integrated_gradients"]
        limit = max(float(np.abs(values).max()), 1e-9)
        sc = ax.scatter(hours, y, c=values, cmap="RdBu_r", vmin=-limit, vmax=limit, s=40, edgecolors="0.3", lw=0.3)
        middle = (hours.max() + hours.min()) / 2
        for rank, j in enumerate(np.argsort(-np.abs(values))[:6]):
            right_half = hours[j] < middle  # the axis is inverted: small hours are on the right
            dy = 10 + 9 * (rank % 3) if rank % 2 == 0 else -14 - 9 * (rank % 3)  # alternate above / below
            ax.annotate(f"{_short(meta.event_text.iloc[j], 40)} ({values[j]:+.2f})", (hours[j], y[j]),
                        xytext=(-8 if right_half else 8, dy),
                        textcoords="offset points", fontsize=7, ha="right" if right_half else "left",
                        arrowprops=dict(arrowstyle="-", lw=0.5))
        ax.set_yticks(range(len(types)), types)
        ax.set_ylim(-0.8, len(types) - 0.2)
        ax.invert_xaxis()
        fig.colorbar(sc, ax=ax, fraction=0.03, label="IG attribution to the logit (red = towards death)")
    else:
        title += " — no events: predicted from its static features alone"
    ax.set_xlabel("hours before the prediction time")
    ax.set_title(title, fontsize=10)
    static = stay["static"].get("integrated_gradients")
    if static is not None and len(static_names) == len(static):
        order = np.argsort(np.abs(static))
        ax_static.barh(np.asarray(static_names)[order], static[order],
                       color=np.where(static[order] >= 0, "tab:red", "tab:blue"))
        ax_static.axvline(0, color="0.4", lw=0.5)
    ax_static.set_title("static columns (IG)", fontsize=9)
    return atomic_io.save_figure(fig, path)


def make_all_figures(collected, save_dir, faithfulness, stay_ids):
    save_dir = Path(save_dir)
    if not collected.predictions:
        return {}
    paths = {
        "layer_attention_weights.png": fig_layer_attention(collected, save_dir / "layer_attention_weights.png"),
        "sequence_importance.png": fig_sequence_importance(collected, save_dir / "sequence_importance.png"),
        "sequence_importance_combined.png": fig_sequence_importance_combined(
            collected, save_dir / "sequence_importance_combined.png"),
        "head_specialization.png": fig_head_specialization(collected, save_dir / "head_specialization.png"),
        "feature_importance.png": fig_feature_importance(collected, save_dir / "feature_importance.png"),
        "query_vector_analysis.png": fig_query_vector(collected, save_dir / "query_vector_analysis.png"),
        "captum_attributions.png": fig_captum(collected, save_dir / "captum_attributions.png",
                                              "integrated_gradients", faithfulness),
        "captum_layer_attributions.png": fig_captum(collected, save_dir / "captum_layer_attributions.png",
                                                    "layer_integrated_gradients", faithfulness),
        "captum_ablation_attributions.png": fig_captum(collected, save_dir / "captum_ablation_attributions.png",
                                                       "feature_ablation", faithfulness),
    }
    for stay_id in stay_ids:
        name = f"timeline_stay_{stay_id}.png"
        paths[name] = fig_stay_timeline(collected.details[int(stay_id)], save_dir / name, collected.static_names)
    return paths


# -----------------------------------------------------------------------------
# CLI (docs/interfaces.md §2)

def build_arg_parser():
    run, settings = ExplainRun(), ExplainSettings()  # the defaults, written once
    p = argparse.ArgumentParser(description="Explain a trained mortality model: Captum attributions, attention "
                                "analysis and measured faithfulness.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint written by train.py")
    p.add_argument("--data", default=DEFAULT_DATA, help="event table (.csv, .csv.gz, .parquet)")
    p.add_argument("--save-dir", default=DEFAULT_SAVE_DIR, help="where the figures, CSVs and faithfulness.json go")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=run.split,
                   help="which stays to explain (the checkpoint's patient-level split and seed)")
    p.add_argument("--max-stays", type=int, default=run.max_stays,
                   help="explain the first N stays of the split (0 = all)")
    p.add_argument("--stay-ids", type=int, nargs="*", default=run.stay_ids,
                   help="also explain these stays and draw a timeline for each")
    p.add_argument("--batch-size", type=int, default=run.batch_size, help="stays per explanation batch")
    p.add_argument("--n-steps", type=int, default=settings.n_steps,
                   help="integration steps of (Layer) Integrated Gradients (Gauss-Legendre; check the reported "
                   "convergence delta)")
    p.add_argument("--ig-tolerance", type=float, default=settings.ig_tolerance,
                   help="stays whose IG completeness error exceeds this share of their logit change are "
                   "re-integrated with twice the steps (0 = never)")
    p.add_argument("--max-n-steps", type=int, default=settings.max_n_steps,
                   help="most IG steps the re-integration may use")
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
    p.add_argument("--device", default=run.device)
    p.add_argument("--seed", type=int, default=settings.seed)
    p.add_argument("--no-figures", action="store_true", help="write the CSVs and faithfulness.json only")
    return p


def main(argv=None):
    args = vars(build_arg_parser().parse_args(argv))
    paths = args.pop("checkpoint"), args.pop("data"), args.pop("save_dir")
    args["make_figures"] = not args.pop("no_figures")  # the other options are named as their ExplainRun or
    # ExplainSettings fields
    user_errors = (ExplainError, event_table.EventTableError, train.CheckpointError, train.TextEncoderError)
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
    for name, entry in list(f["methods"].items()) + [("random", f["random"])]:
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
                         f"max {conv['relative_delta_max']:.3g}; {steps_used_label(conv['steps_used'])})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
