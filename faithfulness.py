"""How faithful an explanation is: the predictions with subsets of each stay's events (deletion and insertion
curves against random orders, ERASER comprehensiveness and sufficiency), their summaries over stays, rank
agreement between methods, recovery of planted events and (Layer)IG's completeness.
"""
import math

import numpy as np
import torch
from scipy.stats import spearmanr
from scipy.stats import t as student_t
from sklearn.metrics import average_precision_score

from attribution import METHODS, SIGNED_METHODS, auto_rows, without_absent_events

ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20)


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
    comprehensiveness_ci = mean_ci95(records["comprehensiveness"])
    sufficiency_ci = mean_ci95(records["sufficiency"])
    return dict(deletion_auc=float(np.mean(records["deletion_auc"])),
                insertion_auc=float(np.mean(records["insertion_auc"])),
                comprehensiveness=dict(zip(pct, map(float, np.mean(records["comprehensiveness"], axis=0)))),
                sufficiency=dict(zip(pct, map(float, np.mean(records["sufficiency"], axis=0)))),
                deletion_curve=np.mean(records["deletion_curve"], axis=0).tolist(),
                insertion_curve=np.mean(records["insertion_curve"], axis=0).tolist(),
                sufficiency_by_predicted_class=sufficiency_by_class(records, pct),
                n_stays=len(records["deletion_auc"]),
                deletion_auc_ci95=mean_ci95(records["deletion_auc"]),
                insertion_auc_ci95=mean_ci95(records["insertion_auc"]),
                comprehensiveness_ci95=dict(zip(pct, comprehensiveness_ci)),
                sufficiency_ci95=dict(zip(pct, sufficiency_ci)))


def mean_ci95(values):
    """95% interval of the mean over stays (Student's t, one row per stay): [low, high] for a [N] array, a list of
    them for each column of a [N, K] array; None where fewer than two stays."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 2:
        return [mean_ci95(values[:, k]) for k in range(values.shape[1])]
    n = len(values)
    if n < 2:
        return None
    half = float(student_t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    mean = float(np.mean(values))
    return [mean - half, mean + half]


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
        if a is None or b is None:  # a method not run on this stay
            continue
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
# Completeness of (Layer)IG and agreement between methods.

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


def per_event_change(scores, doubled):
    """How far one stay's IG scores are from converged, event by event: the largest |change| of an event's score
    from its steps to twice as many, relative to the stay's largest |score| (0 for a stay whose scores are all
    0)."""
    scores, doubled = np.asarray(scores, dtype=float), np.asarray(doubled, dtype=float)
    if not len(scores):
        return 0.0
    largest = float(np.abs(scores).max())
    return float(np.abs(doubled - scores).max() / largest) if largest > 0 else 0.0


def per_event_convergence_summary(changes, tolerance):
    """per_event_change over the audited stays: quantiles, the share within `tolerance`, and the note that says
    how it was measured."""
    changes = np.asarray(changes, dtype=float)
    have = len(changes) > 0
    return dict(largest_change_median=float(np.median(changes)) if have else None,
                largest_change_p95=float(np.quantile(changes, 0.95)) if have else None,
                largest_change_max=float(changes.max()) if have else None,
                share_within_tolerance=float((changes <= tolerance).mean()) if have else None,
                tolerance=tolerance, n_stays=int(len(changes)),
                note="per audited stay with events: max over its events of |IG with twice the steps (every piece of "
                     "its path halved) - IG as reported| / max over its events of |IG as reported|; the completeness "
                     "check sums over events, so its errors can cancel, this one cannot")


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
