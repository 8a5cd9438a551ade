"""What an explanation run keeps of its batches, and the analyses computed from it.

A run explains its stays batch by batch and holds no attribution table: `Collected` keeps, per stay, only what
the faithfulness measures need, and otherwise running sums (EventSums, WindowSums), a bounded sample of events
(EventSample) and the stays the figures draw. The analyze_* functions are the same analyses on whole arrays or
tables (tested equal to the running sums).
"""
import math

import numpy as np
import pandas as pd
import torch

import event_table
from attribution import METHODS
from evaluation import apply_calibration
from faithfulness import (ERASER_FRACTIONS, concatenate_records, convergence_summary, mean_rank_correlation,
                          per_event_change, per_event_convergence_summary, planted_recovery, planted_share,
                          rank_agreement, stack_records, summarise_faithfulness)


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
        self.items = ItemSums()  # IG per item (the text without its numbers) and stay: the cohort summary

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
                self.items.add(part)

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


COHORT_COLUMNS = ["item", "n_stays", "share_of_stays", "n_events", "mean_attribution", "mean_attribution_ci95_low",
                  "mean_attribution_ci95_high", "mean_abs_attribution", "mean_abs_attribution_ci95_low",
                  "mean_abs_attribution_ci95_high", "mean_attribution_over_all_stays"]


class ItemSums:
    """The cohort summary's running sums: per item (event_table.item_of_text: the event text without its numbers),
    the stays it appears in, its events, and over those stays the sum, sum of squares and sum of |.| of the stay's
    IG attribution of the item (the sum over the item's events in the stay: its share of that stay's logit
    change). Added IG rows of whole stays at a time; a few numbers per distinct item."""

    def __init__(self):
        self.sums = None  # DataFrame by item: n_stays, n_events, sum, sum_sq, sum_abs
        self._categories = self._item_of_category = None

    def _items(self, texts):
        """The item of each text: through the table's categories (each distinct text mapped once) where the texts
        are categorical, else text by text."""
        if isinstance(texts.dtype, pd.CategoricalDtype):
            categories = texts.cat.categories
            if self._categories is None or not (categories is self._categories or categories.equals(self._categories)):
                self._categories = categories
                self._item_of_category = event_table.item_of_text(pd.Series(categories.astype(str))).to_numpy()
            codes = texts.cat.codes.to_numpy()
            items = self._item_of_category[np.maximum(codes, 0)]
            return np.where(codes >= 0, items, "")
        return event_table.item_of_text(texts.astype(str)).to_numpy()

    def add(self, rows):
        if rows.empty:
            return
        frame = pd.DataFrame({"item": self._items(rows["event_text"]), "stay_id": rows["stay_id"].to_numpy(),
                              "attribution": rows["attribution"].to_numpy(dtype=float)})
        per_stay = frame.groupby(["item", "stay_id"], sort=False)["attribution"].agg(["sum", "count"])
        total = per_stay["sum"]
        part = pd.DataFrame({"n_stays": 1, "n_events": per_stay["count"], "sum": total, "sum_sq": total * total,
                             "sum_abs": total.abs()}).groupby(level="item").sum()
        self.sums = part if self.sums is None else self.sums.add(part, fill_value=0)

    def table(self, n_stays_total):
        """One row per item (COHORT_COLUMNS), the largest total |attribution| over the cohort first: mean_attribution
        and mean_abs_attribution are means over the stays the item appears in of its IG attribution in the stay
        (summed over its events there) and of its absolute value, each with a 95% interval over those stays
        (Student's t; empty for an item of one stay); mean_attribution_over_all_stays counts a stay without the
        item as 0 (its average push on the cohort's logits)."""
        if self.sums is None:
            return pd.DataFrame(columns=COHORT_COLUMNS)
        sums = self.sums
        n = sums["n_stays"].to_numpy(dtype=float)
        out = pd.DataFrame({"item": sums.index.to_numpy(dtype=object), "n_stays": n.astype(np.int64),
                            "share_of_stays": n / max(n_stays_total, 1),
                            "n_events": sums["n_events"].to_numpy(dtype=np.int64)})
        for name, total in (("mean_attribution", sums["sum"]), ("mean_abs_attribution", sums["sum_abs"])):
            mean = total.to_numpy(dtype=float) / n
            # sum of squares is the same for x and |x|
            variance = np.where(n > 1, (sums["sum_sq"].to_numpy(dtype=float) - n * mean * mean) / np.maximum(n - 1, 1),
                                np.nan)
            half = mean_ci95_half_width(np.maximum(variance, 0.0), n)
            out[name], out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = mean, mean - half, mean + half
        out["mean_attribution_over_all_stays"] = sums["sum"].to_numpy(dtype=float) / max(n_stays_total, 1)
        order = np.lexsort((out["item"].to_numpy(dtype=str), -sums["sum_abs"].to_numpy(dtype=float)))
        return out.iloc[order].reset_index(drop=True)[COHORT_COLUMNS]


def mean_ci95_half_width(variance, n):
    """Half width of the 95% interval of a mean of n values with this sample variance (Student's t; NaN for n < 2)."""
    from scipy.stats import t as student_t
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, student_t.ppf(0.975, np.maximum(n - 1, 1)) * np.sqrt(variance / n), np.nan)


class Collected:
    """What a run keeps of its batches for faithfulness.json, the analyses and the figures.

    Per stay of the split, the faithfulness measures' inputs: each method's score per event (float32, as the
    methods return them) and, where the data names planted events, the planted flags (int8) and the ranks of
    the random orders (the smallest integer type that holds them); per stay a few numbers (prediction, IG
    completeness, the faithfulness records as rows of arrays). That is 16 + 1 + 3 x 2 = 23 bytes per event and
    about 2 KB per stay. Everything else is a running sum (EventSums, static attributions, pooling weight per
    event type, attention patterns), a seeded sample of at most FIGURE_SAMPLE_EVENTS events (EventSample) for
    the box and scatter plots, or the whole detail of the stays a figure draws: the example stay and the
    --stay-ids stays. In cohort mode the faithfulness measures' inputs are kept for the audited stays only (the
    sample that gets every method and measure); IG's completeness and the running sums cover every stay.
    `calibration`: the checkpoint's map from logit to probability (evaluation.apply_calibration); the
    probabilities shown and returned are calibrated, the uncalibrated ones named so."""

    def __init__(self, static_names, detail_stay_ids=(), sample_size=FIGURE_SAMPLE_EVENTS, seed=0, calibration=None,
                 keep_stay_measures=False):
        self.static_names = static_names
        self.calibration = calibration
        # per stay of the split, in the same order: the faithfulness measures' inputs
        self.scores = {m: [] for m in METHODS}
        self.planted, self.random_order_scores = [], []  # only where the data names planted events
        self.faith = {}  # {method or "random": [stack_records arrays of one batch]}
        self.cascade = {}  # cascading randomisation: {step: {method: (original, randomised) scores per stay}}
        self.relative_delta = {"ig": [], "lig": []}  # completeness of IG and LayerIG: |delta| / |logit change|
        self.steps_used = {"ig": [], "lig": []}
        self.per_event_changes = []  # IG per event at twice the steps, audited stays with events (per_event_change)
        self.methods_run = set()  # the methods run on any batch (cohort mode skips layer IG where it equals IG)
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
        # per batch: each stay's IG completeness and deletion curves, kept only for the HTML report (~60 numbers a
        # stay; the report is written for a few hundred stays, and nothing else may grow with the stays explained)
        self.keep_stay_measures, self.stay_measures = keep_stay_measures, []

    def add(self, chunk, meta, mask, out, event_rows, static_rows, faith, randomised, has_planted, in_split=None,
            audited=None):
        """in_split[b]: stay b belongs to the explained split (a --stay-ids stay of another split is explained
        and drawn, but kept out of the faithfulness measures). audited[b]: stay b is one of the audit's (every
        method and measure; default: every stay of the split, as in every-method mode); only those count in the
        faithfulness measures."""
        in_split = [True] * len(chunk) if in_split is None else list(in_split)
        audited = list(in_split) if audited is None else [bool(a) and s for a, s in zip(audited, in_split)]
        self.methods_run.update(out["event"])
        if self.keep_stay_measures:
            self._keep_stay_measures(chunk, out, faith)
        random_orders = {r["stay_position"]: r["order_scores"] for r in faith.get("random", [])}
        for name, records in faith.items():
            kept = [r for r in records if audited[r["stay_position"]]]
            if kept:
                self.faith.setdefault(name, []).append(stack_records(kept))
        hours = torch.zeros(mask.shape)
        for b, (stay, m) in enumerate(zip(chunk, meta)):
            n = len(m)
            hours[b, :n] = torch.as_tensor(hours_before_prediction(m))
            logit = float(out["logits"][b])
            probability_uncalibrated = 1 / (1 + math.exp(-logit))
            probability = float(apply_calibration(self.calibration, logit))
            self.predictions.append(dict(stay_id=int(stay.stay_id), logit=logit, probability=probability,
                                         probability_uncalibrated=probability_uncalibrated,
                                         mortality=int(stay.label), n_events=n))
            self._keep_detail(stay, m, out, b, probability, probability_uncalibrated)
            if in_split[b]:
                self._add_completeness(out, b)
                if audited[b]:
                    self._add_stay_of_split(m, out, b, randomised, has_planted, random_orders.get(b))
            else:
                self.n_stays_outside_split += 1
        self._add_pooling_by_type(out["attention"], meta)
        self._add_layer_patterns(out["attention"], mask, hours)
        self._add_static(static_rows)
        self.events.add(event_rows)
        self.sample.add(self._event_rows_for_sample(chunk, meta, mask, out, hours))

    def _add_stay_of_split(self, m, out, b, randomised, has_planted, random_orders):
        """An audited stay: its scores of each method run, planted flags, random orders, randomisation pairs and
        IG's per-event convergence."""
        n = len(m)
        for method in METHODS:
            if method not in out["event"]:
                continue  # not run (layer IG where it equals IG but for the static part)
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
        if "ig_doubled" in out and bool(out["ig_doubled_stays"][b]) and n:
            self.per_event_changes.append(per_event_change(out["event"]["integrated_gradients"][b, :n].numpy(),
                                                           out["ig_doubled"][b, :n].numpy()))

    def _add_completeness(self, out, b):
        """IG's completeness (every stay of the split) and LayerIG's (where it ran)."""
        for key in ("ig", "lig"):
            if f"{key}_steps" not in out:
                continue
            self.steps_used[key].append(int(out[f"{key}_steps"][b]))
            change = float(out[f"{key}_change"][b])
            if abs(change) > 1e-6:
                self.relative_delta[key].append(abs(float(out[f"{key}_delta"][b])) / abs(change))

    def _keep_detail(self, stay, m, out, b, probability, probability_uncalibrated=None):
        """Everything the single-stay figures draw, for a --stay-ids stay and for the example stay (the highest
        predicted risk among stays with >= 3 events, else among all stays; the first of equals; in cohort mode
        among the audited stays, which have every method run)."""
        stay_id, n = int(stay.stay_id), len(m)
        logit = float(out["logits"][b])
        rank = ("feature_ablation" in out["event"], n >= 3, probability, logit)
        is_example = self.example is None or rank > self._example_rank
        if stay_id not in self.detail_stay_ids and not is_example:
            return
        attn = out["attention"]
        received = (attn["layer_attention"][:, b].mean(1)[:, :n, :n] if "layer_attention" in attn  # [layers, q, k]
                    else torch.zeros(0, n, n))  # a cohort batch: the model's path without the layers' weights
        detail = dict(stay_id=stay_id, meta=m.reset_index(drop=True), label=int(stay.label), probability=probability,
                      probability_uncalibrated=probability_uncalibrated,
                      layer_received=received.mean(1).numpy() if n else np.zeros((received.shape[0], 0)),
                      attributions={k: out["event"][k][b, :n].numpy().copy() for k in METHODS if k in out["event"]},
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
        if "layer_attention" not in attn:
            return  # a cohort batch: layer attention patterns come from the audited stays
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
        n_events = int(mask.sum())  # a method not run on these stays: NaN
        columns.update({method: out["event"][method][mask].numpy() if method in out["event"]
                        else np.full(n_events, np.nan, dtype=np.float32) for method in METHODS})
        scores = out["attention"].get("pooling_scores")
        if scores is not None:
            per_event = scores.transpose(1, 2)[mask]  # [events, heads]
            columns.update({f"pool_score_{h}": per_event[:, h].numpy() for h in range(per_event.shape[1])})
        return pd.DataFrame(columns)

    def _keep_stay_measures(self, chunk, out, faith):
        """Per stay of the batch (also those outside the split): IG's logit change and completeness delta and, per
        ranking of `faith` (each method; "random": the mean of the random orders), its deletion curve and area, NaN
        where the stay has no record (no events, or not measured). About 60 numbers per stay."""
        part = pd.DataFrame({"stay_id": [int(s.stay_id) for s in chunk], "ig_change": out["ig_change"].double().numpy(),
                             "ig_delta": out["ig_delta"].double().numpy()})
        for name, records in faith.items():
            auc, curve = np.full(len(chunk), np.nan), [np.nan] * len(chunk)
            for r in records:
                auc[r["stay_position"]], curve[r["stay_position"]] = r["deletion_auc"], np.asarray(r["deletion_curve"])
            part[f"deletion_auc:{name}"], part[f"deletion_curve:{name}"] = auc, pd.Series(curve, dtype=object)
        self.stay_measures.append(part)

    # ---- what the analyses and figures read

    def prediction_frame(self):
        return pd.DataFrame(self.predictions)

    def cohort_frame(self):
        """cohort_attributions.csv: IG per item over every explained stay (ItemSums.table)."""
        return self.events.items.table(len(self.predictions))

    def stay_measure_frame(self):
        """One row per explained stay, by stay_id: ig_change, ig_delta, ig_relative_delta (|delta| / |change|, NaN
        where the change is below 1e-6) and per ranking `deletion_auc:{name}` and `deletion_curve:{name}` (an array
        of the predicted class's probability; NaN where not measured for that stay)."""
        if not self.stay_measures:
            return pd.DataFrame(columns=["ig_change", "ig_delta", "ig_relative_delta"]).rename_axis("stay_id")
        frame = pd.concat(self.stay_measures, ignore_index=True).set_index("stay_id")
        change = frame["ig_change"].abs()
        frame["ig_relative_delta"] = (frame["ig_delta"].abs() / change).where(change > 1e-6)
        return frame

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
            if not self.scores[method] and self.scores["integrated_gradients"]:
                result["methods"][method] = dict(not_run="--layer-ig off" if settings.layer_ig == "off" else (
                    "cohort mode with a linear input projection: layer IG equals IG but for the static features' "
                    "part of IG's path; --layer-ig on runs it on the audited stays"))
                continue
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
        result["integrated_gradients_per_event_convergence"] = per_event_convergence_summary(
            self.per_event_changes, settings.ig_tolerance)
        result["settings"] = dict(n_steps=settings.n_steps, baseline=settings.baseline,
                                  curve_points=settings.curve_points, random_orders=settings.random_orders,
                                  eraser_fractions=list(ERASER_FRACTIONS),
                                  curves="predicted-class probability (uncalibrated: the sigmoid of the logit, "
                                         "class at 0.5) as events are removed (deletion) or added "
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
