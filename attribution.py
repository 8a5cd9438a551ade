"""The attribution methods of explain_clinicalLF.py, each on one batch of stays (events [B,L,F], mask Bool[B,L],
static [B,S]), and `explain_batch`, which runs all of them on one batch.

Every attribution is to the model's one logit per stay (positive = pushes towards death), with Captum's
target=None: integrated_gradients, layer_integrated_gradients, feature_ablation and, not an attribution,
attention_pooling (METHODS). Also here: the cascading model randomisation of the sanity check and the memory
budget that sizes a batch's forwards (auto_rows).
"""
import copy
import math

import torch
import torch.nn as nn
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients

import event_table

METHODS = ("integrated_gradients", "layer_integrated_gradients", "feature_ablation", "attention_pooling")
SIGNED_METHODS = METHODS[:3]  # attention weights are >= 0 and say nothing about direction
N_TYPE_COLUMNS = len(event_table.EVENT_TYPES)  # the first columns of an event's feature vector: its type one-hot


class AttributionError(ValueError):
    """A model or static-feature layout the methods cannot explain (the message says what is missing)."""


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

def path_baselines(events, mask, static, event_baseline=None, static_baseline=None):
    """IG's starting point: every real event at `event_baseline` ([F], default zeros), every padded position at
    itself (so its attribution is exactly 0), the static features at `static_baseline` ([S], default zeros)."""
    F, S = events.shape[-1], static.shape[-1]
    event_baseline = torch.zeros(F) if event_baseline is None else event_baseline
    static_baseline = torch.zeros(S) if static_baseline is None else static_baseline
    base_events = torch.where(mask.unsqueeze(-1), event_baseline.to(events).expand_as(events), events)
    return base_events, static_baseline.to(static).expand_as(static).clone()


def integrated_gradients(model, events, mask, static, event_baseline=None, static_baseline=None,
                         n_steps=32, internal_batch_size=None):
    """IG to the logit. Baselines (documented choice): every real event starts from `event_baseline`
    (a [F] vector: zeros or the training-mean event), every padded position from itself (so its
    attribution is exactly 0), static features from `static_baseline` ([S], zeros or training mean).
    Returns event attributions [B,L] (summed over features), per-column static attributions [B,S],
    the logit change f(x) - f(baseline) [B] and Captum's convergence delta [B]
    (sum of attributions minus that change)."""
    base_events, base_static = path_baselines(events, mask, static, event_baseline, static_baseline)
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


def adaptive_path_integral(attribute, change, n_stays, n_steps=32, segment_steps=8, tolerance=0.05,
                           max_n_steps=256, max_rows=None, return_pieces=False):
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
    delta [B], steps [B]) and, with return_pieces, the pieces (stay [P], a [P], b [P]) as a fourth element."""
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
    summed = _sum_pieces(attrs, rows, n_stays)
    return (summed, total, steps, (rows, a, b)) if return_pieces else (summed, total, steps)


def _sum_pieces(attrs, rows, n_stays):
    """Attributions of path pieces (tuple of [P, ...]) summed per stay (rows [P]): tuple of [n_stays, ...]."""
    return tuple(torch.zeros(n_stays, *t.shape[1:], dtype=t.dtype, device=t.device).index_add_(
        0, rows.to(t.device), t) for t in attrs)


def doubled_path_integral(attribute, pieces, n_stays, segment_steps=8, max_rows=None):
    """The same path integral with every piece of `pieces` (adaptive_path_integral's, return_pieces=True) cut in
    two halves of segment_steps steps each: twice the steps of every stay, on the same layout. Comparing it with
    the attributions on `pieces` shows, event by event, how far they are from converged (the completeness delta
    sums over events, so its errors can cancel). Returns the attributions summed per stay (a tuple, as
    adaptive_path_integral's)."""
    rows, a, b = pieces
    middle = (a + b) / 2
    attrs, _ = _in_chunks(attribute, max_rows)(rows.repeat(2), torch.cat([a, middle]), torch.cat([middle, b]),
                                               segment_steps)
    return _sum_pieces(attrs, rows.repeat(2), n_stays)


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
                                 segment_steps=8, with_doubled=False):
    """IG of every event and static column, integrated piece-wise until complete within `tolerance`
    (adaptive_path_integral). Returns event attributions [B,L], static attributions [B,S], the logit change
    f(x) - f(baseline) [B], the completeness delta [B] and the steps used per stay [B]; with_doubled (True, or
    Bool[B]: for these stays) also, sixth, the event attributions with twice each stay's steps (every piece
    halved: doubled_path_integral) [B,L], 0 for the stays not asked for."""
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

    (ev, st), delta, steps, pieces = adaptive_path_integral(attribute, change, events.shape[0], n_steps,
                                                            segment_steps, tolerance, max_n_steps,
                                                            internal_batch_size, return_pieces=True)
    if with_doubled is None or with_doubled is False:
        return ev, st, change.detach(), delta.to(change.device), steps
    wanted = torch.ones(events.shape[0], dtype=torch.bool) if with_doubled is True else with_doubled.cpu()
    keep = wanted[pieces[0]]
    doubled = torch.zeros_like(ev)
    if keep.any():
        doubled, _ = doubled_path_integral(attribute, tuple(t[keep] for t in pieces), events.shape[0], segment_steps,
                                           internal_batch_size)
    return ev, st, change.detach(), delta.to(change.device), steps, doubled


def find_input_projection(model):
    """The layer that maps an event's feature vector into the model (LayerIG target): `model.input_proj`, as
    train.MortalityTransformer names it (a model explained here follows its interface)."""
    layer = getattr(model, "input_proj", None)
    if not isinstance(layer, nn.Module):
        raise AttributionError(f"{type(model).__name__} has no `input_proj` module; layer integrated gradients "
                               "needs the layer that projects the event features.")
    return layer


def input_projection_is_linear(model):
    """Whether the input projection is one nn.Linear: then LayerIG on its output is IG on the events with the static
    features held at their values (a straight path maps to a straight path, and the gradient passes through the
    matrix), so per event it differs from IG only through the static part of IG's path."""
    return type(getattr(model, "input_proj", None)) is nn.Linear


def layer_integrated_gradients(model, events, mask, static, event_baseline=None, n_steps=32,
                               internal_batch_size=None):
    """Captum LayerIntegratedGradients on the input projection's output, summed over its d_model units per
    event. It interpolates the events only: the static features stay at their real values along the path.
    So it attributes logit(events, static) - logit(baseline events, static), not IG's
    logit(events, static) - logit(baseline events, baseline static); where the classifier mixes static and
    event features the two share out different totals (tested). Padded positions: baseline = input, so 0.
    Returns event attributions [B,L], its own logit change [B] and completeness delta [B]."""
    base_events, _ = path_baselines(events, mask, static, event_baseline)
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
        raise AttributionError(f"static columns {missing} belong to no group of static_feature_groups")
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
def attention_outputs(model, events, mask, static, layers=True):
    """(logits, attention outputs) of one forward. layers=False skips each layer's [L, L] attention weights (the
    model's faster path): the pooling weights, the transformer output (read from `ln_f`, where the model has one)
    and the pooling scores remain."""
    if layers:
        logits, attn = model(events, mask, static, return_attention=True)
    else:
        captured = {}
        final_norm = getattr(model, "ln_f", None)
        hook = (final_norm.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
                if isinstance(final_norm, nn.Module) else None)
        try:
            logits, attn = model(events, mask, static)
        finally:
            if hook is not None:
                hook.remove()
        if "out" in captured:
            attn = dict(attn, transformer_output=captured["out"])
    attn = {k: v.detach() for k, v in attn.items()}
    scores = pooling_scores(model, attn["transformer_output"]) if "transformer_output" in attn else None
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
    the last. For MortalityTransformer: classifier, pool, ln_f, layers.{n_layers - 1} ... layers.0 (layers.1,
    layers.0 with the default 2 layers), input_proj and, where the model has one, item_embedding."""
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
# Memory budget: how many rows (stays x steps) one forward may take.

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


# -----------------------------------------------------------------------------
# One batch, every method.

def explain_batch(model, events, mask, static, static_groups, settings, event_baseline=None,
                  static_baseline=None, methods=METHODS, convergence=False, layer_attention=True):
    """The methods on one batch: `methods` (of METHODS; integrated_gradients and attention_pooling always run:
    every stay of a cohort gets them). Returns event attributions {method: [B,L]}, static attributions
    {method: [B,G]}, the logits, IG's logit change, convergence delta and steps (LayerIG's too where it ran),
    the attention outputs and, with `convergence` (True, or Bool[B]: for these stays), `ig_doubled`: IG's event
    attributions with twice each stay's steps [B,L] (refined_integrated_gradients' with_doubled) and
    `ig_doubled_stays` Bool[B]. layer_attention=False leaves out each layer's attention weights (attention_outputs'
    faster path)."""
    logits, attn = attention_outputs(model, events, mask, static, layers=layer_attention)
    rows = settings.internal_batch_size or auto_rows(model, events.shape[1], events.device, with_grad=True)
    ig_events, ig_static, ig_change, ig_delta, ig_steps, *doubled = refined_integrated_gradients(
        model, events, mask, static, event_baseline, static_baseline, settings.n_steps, rows,
        settings.ig_tolerance, settings.max_n_steps, with_doubled=convergence)
    event_attr = {"integrated_gradients": ig_events}
    static_attr = {"integrated_gradients": group_static(ig_static, static_groups)}
    cpu = lambda d: {k: v.detach().float().cpu() for k, v in d.items()}  # noqa: E731
    result = dict(ig_change=ig_change.float().cpu(), ig_delta=ig_delta.float().cpu(), ig_steps=ig_steps)
    if "layer_integrated_gradients" in methods:
        lig_events, lig_change, lig_delta, lig_steps = refined_layer_integrated_gradients(
            model, events, mask, static, event_baseline, settings.n_steps, rows, settings.ig_tolerance,
            settings.max_n_steps)
        event_attr["layer_integrated_gradients"] = lig_events
        result.update(lig_change=lig_change.float().cpu(), lig_delta=lig_delta.float().cpu(), lig_steps=lig_steps)
    if "feature_ablation" in methods:
        # FeatureAblation runs perturbations_per_eval x B rows per forward: bounded by the same memory budget
        forward_rows = settings.internal_batch_size or auto_rows(model, events.shape[1], events.device,
                                                                 with_grad=False)
        per_eval = max(1, min(settings.perturbations_per_eval, forward_rows // max(1, events.shape[0])))
        fa_events, fa_static = feature_ablation(model, events, mask, static, static_groups, static_baseline,
                                                per_eval)
        event_attr["feature_ablation"], static_attr["feature_ablation"] = fa_events, fa_static
    event_attr["attention_pooling"] = pooling_weights(attn) * mask
    if doubled:
        result["ig_doubled"] = doubled[0].detach().float().cpu()
        result["ig_doubled_stays"] = (torch.ones(events.shape[0], dtype=torch.bool) if convergence is True
                                      else convergence.cpu())
    return dict(event=cpu(event_attr), static=cpu(static_attr), logits=logits.float().cpu(), **result,
                attention=cpu(attn))
