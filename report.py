"""The explanation run's report for people: one self-contained HTML page per explained stay and an index
(`explain_clinicalLF.py --report`, on by default when few stays are explained; docs/interfaces.md §4).

    report/index.html              the explained stays in a sortable table, each linking to its page
    report/stay_{stay_id}.html     one stay: header, risk over time, timeline, top events, totals, trust

Each page stands alone: inline CSS, JavaScript and SVG drawn by the templates in templates/ (Jinja2), no font,
CDN or network request, so it opens from a file:// path, prints, and can be mailed. This module assembles what
the pages show from what the run wrote (event_attributions.csv, static_attributions.csv) and kept (the
predictions and per-stay measures of explanation_sums.Collected), and re-scores each stay on the events known at
each hour of its window (risk_over_time: the same forward and calibration as predict.py).
"""
import datetime as dt
import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

import atomic_io
import event_table

REPORT_DIR = "report"
TEMPLATES = Path(__file__).resolve().parent / "templates"
TOP_EVENTS = 10             # events listed as raising / lowering the risk most
WINDOW_HOURS = 6            # totals per window of this many hours before the prediction
SCALE_QUANTILE = 0.99       # the colour scale's end: this quantile of |IG| over every event of the run
LOW_AGREEMENT = 0.5         # IG vs ablation Spearman on the stay below this: the methods disagree
DELETION_MARGIN = 0.01      # IG's deletion-curve area must be this much below the random orders' to pass
MAX_RISK_HOURS = 14 * 24    # risk over time: at most this many hourly points back from the prediction time
SIGNED = {"integrated_gradients": "IG", "layer_integrated_gradients": "Layer IG", "feature_ablation": "ablation"}
# ColorBrewer RdBu (colour-blind safe), towards survival (blue) ... towards death (red); the sign is also the
# marker's shape (up / down triangle), so the page reads in greyscale.
DIVERGING = ("#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b")
STATIC_LABELS = {"gender": "Gender", "race": "Race", "marital_status": "Marital status",
                 "admission_type": "Admission type", "admission_location": "Admitted from", "insurance": "Insurance",
                 "first_careunit": "First care unit", "patient_age": "Age (years)"}
KIND_ORDER = list(event_table.EVENT_TYPES)


# -----------------------------------------------------------------------------
# Numbers and colours as the pages write them

def colour(value, limit):
    """The diverging scale's colour of an attribution: square-root scaled (a quarter of the limit is half way to
    the darkest colour, so that the many small attributions are not all white) and clipped at +-limit."""
    t = 0.0 if not limit or not np.isfinite(value) else float(np.clip(value / limit, -1, 1))
    t = math.copysign(math.sqrt(abs(t)), t)
    pos = (t + 1) / 2 * (len(DIVERGING) - 1)
    i = min(int(pos), len(DIVERGING) - 2)
    a, b = (np.array([int(c[k:k + 2], 16) for k in (1, 3, 5)]) for c in DIVERGING[i:i + 2])
    rgb = np.round(a + (b - a) * (pos - i)).astype(int)
    return "#" + "".join(f"{v:02x}" for v in rgb)


def signed(value, digits=3):
    """+0.123 / -0.123 / "not computed" (NaN); two significant figures where fixed digits would show only 0."""
    if value is None or not np.isfinite(value):
        return "not computed"
    if value == 0:
        return "0"
    return f"{value:+.{digits}f}" if abs(value) >= 0.5 * 10 ** -digits else f"{value:+.2g}"


def hours_label(hours):
    """Hours before the prediction as a clinician reads them: "35 min", "6 h 05 min"."""
    minutes = int(round(hours * 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def percent(p):
    return "n/a" if p is None or not np.isfinite(p) else (f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%")


def clock(value):
    return "" if value is None or pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def nice_ceiling(x):
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above x."""
    if x <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(x))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= x - 1e-12)


# -----------------------------------------------------------------------------
# What the pages show, from the run's outputs

def read_event_attributions(path, stay_ids=None):
    """event_attributions.csv, one row per (stay, event): the event's columns and one column per method (NaN where
    a method was not computed for that stay)."""
    parts = []
    for chunk in pd.read_csv(path, chunksize=500_000, parse_dates=["event_time"]):
        if stay_ids is not None:
            chunk = chunk[chunk["stay_id"].isin(stay_ids)]
        parts.append(chunk)
    rows = pd.concat(parts, ignore_index=True) if parts else pd.read_csv(path)
    keys = ["stay_id", "event_index"]
    events = rows.drop(columns=["method", "attribution"]).drop_duplicates(keys).set_index(keys)
    wide = rows.pivot_table(index=keys, columns="method", values="attribution", aggfunc="first", dropna=False)
    events = events.join(wide)
    for method in list(SIGNED) + ["attention_pooling"]:
        if method not in events:
            events[method] = np.nan
    return events.reset_index().sort_values(keys, kind="stable", ignore_index=True)


def read_static_attributions(path):
    """static_attributions.csv as {stay_id: DataFrame by feature, one column per method}."""
    rows = pd.read_csv(path)
    wide = rows.pivot_table(index=["stay_id", "feature"], columns="method", values="attribution", aggfunc="first")
    return {int(s): part.droplevel(0) for s, part in wide.groupby(level=0)}


def colour_limit(values):
    """The scale's end, shared by every page of the run: the SCALE_QUANTILE quantile of |IG| (so one extreme event
    does not wash out the others; beyond it colours are clipped and the legend says so)."""
    magnitude = np.abs(np.asarray(values, dtype=float))
    magnitude = magnitude[np.isfinite(magnitude)]
    if not len(magnitude):
        return 1.0
    limit = float(np.quantile(magnitude, SCALE_QUANTILE))
    return limit if limit > 0 else float(magnitude.max()) or 1.0


def truncated_table(rows):
    """Each stay of `rows` (event-table rows, time-ordered per stay) once per hour k = 0, 1, ... back from its
    prediction time, with only the events known k hours before it (event_time <= prediction - k h) and their
    times re-counted from that moment: the table predict.py would score had the prediction been made then.
    Returns (table with fresh stay ids 0, 1, ... in order, index: [(stay_id, k)] of each fresh id)."""
    event_columns = ["event_time", "event_type", "event_text", "relative_time_to_final_event"]
    stay_ids = rows["stay_id"].to_numpy()
    is_event = rows["event_type"].notna().to_numpy()
    minutes_all = rows["relative_time_to_final_event"].to_numpy(dtype=float)
    order = np.argsort(stay_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, stay_ids[order][1:] != stay_ids[order][:-1]])
    take, fresh, shift, empty, index = [], [], [], [], []
    for s, e in zip(starts, np.r_[starts[1:], len(order)]):
        positions = order[s:e]
        events = positions[is_event[positions]]
        minutes = minutes_all[events]
        last = min(int(math.ceil(minutes.max() / 60)), MAX_RISK_HOURS) if len(events) else 0
        for k in range(last + 1):
            known = events[minutes >= 60 * k]
            chosen = known if len(known) else positions[:1]  # nothing known yet: static features alone
            take.append(chosen)
            fresh.append(np.full(len(chosen), len(index)))
            shift.append(np.full(len(chosen), 60.0 * k))
            empty.append(np.full(len(chosen), not len(known)))
            index.append((int(stay_ids[positions[0]]), k))
    table = rows.iloc[np.concatenate(take)].reset_index(drop=True)
    table["stay_id"] = np.concatenate(fresh)
    table["relative_time_to_final_event"] = table["relative_time_to_final_event"].to_numpy(dtype=float) - \
        np.concatenate(shift)
    empty = np.concatenate(empty)
    if empty.any():
        table.loc[empty, event_columns] = None
    return table, index


def risk_over_time(rows, model, ckpt, cache_dir, max_events=None, device="cpu", text_encoder=None):
    """{stay_id: DataFrame(hours_before, n_events, risk)}: the calibrated risk of death on the events known at each
    hour of the stay's window (k hours before the prediction time, k = 0 is the prediction itself), scored
    exactly as predict.py scores a table (train.prepare_stays_of_checkpoint, train.predict_logits, the
    checkpoint's calibration by evaluation.apply_calibration), in batches."""
    import attribution
    import evaluation
    import train
    table, index = truncated_table(rows)
    stays, matrix = train.prepare_stays_of_checkpoint(table, ckpt, cache_dir, device, max_events, text_encoder)
    device = next(model.parameters()).device
    longest = max((len(s.type_ids) for s in stays), default=1)
    batch_size = max(1, min(64, attribution.auto_rows(model, longest, device, with_grad=False)))
    logits = train.predict_logits(model, stays, matrix.to(device), batch_size)
    risk = evaluation.apply_calibration(ckpt.get("calibration"), logits)
    frame = pd.DataFrame(index, columns=["stay_id", "hours_before"]).assign(
        n_events=[len(s.type_ids) for s in stays], risk=risk)
    return {int(s): part.drop(columns="stay_id").reset_index(drop=True) for s, part in frame.groupby("stay_id")}


def base_rate(checkpoint_path, predictions):
    """(rate, sentence): the training split's death rate from the checkpoint's run (its metrics.json, beside
    checkpoints/), else the explained stays' own."""
    metrics = Path(checkpoint_path).resolve().parent.parent / "metrics.json"
    try:
        split = json.loads(metrics.read_text())["train"]
        rate = split["n_deaths"] / split["n_stays"]
        return rate, f"{split['n_deaths']:,} of the {split['n_stays']:,} training stays died in hospital"
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        labels = predictions["mortality"].astype(float)
        rate = float(labels.mean()) if len(labels) else float("nan")
        return rate, (f"{int(labels.sum()):,} of the {len(labels):,} explained stays died in hospital; the training "
                      "run's metrics.json was not found")


def model_summary(checkpoint_path, ckpt):
    path = Path(checkpoint_path)
    encoder = ckpt.get("text_encoder", {})
    saved = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M") if path.exists() else "?"
    calibration = (ckpt.get("calibration") or {}).get("method", "none")
    return dict(checkpoint=str(checkpoint_path), encoder=Path(str(encoder.get("folder", "?"))).name,
                encoder_pooling=encoder.get("pooling", ""), trained=saved, epoch=ckpt.get("epoch"),
                calibration=calibration, max_events=ckpt.get("args", {}).get("max_events"))


# -----------------------------------------------------------------------------
# One stay's page: geometry of the SVG figures, lists and tables

PLOT = dict(width=1000, left=150, right=24)  # the timeline's and the risk chart's shared x axis (SVG units)
ROW_STEP, MAX_ROWS, MARK_GAP = 11, 12, 10.5


def x_axis(span_hours):
    """x of hours before the prediction (left: the window's start, right: the prediction) and the ticks."""
    span = max(WINDOW_HOURS, WINDOW_HOURS * math.ceil(span_hours / WINDOW_HOURS))
    plot = PLOT["width"] - PLOT["left"] - PLOT["right"]
    step = WINDOW_HOURS if span <= 72 else WINDOW_HOURS * math.ceil(span / 72)

    def x(hours):
        return PLOT["left"] + (span - np.asarray(hours, dtype=float)) / span * plot

    ticks = [dict(x=round(float(x(h)), 1), label="0 h: prediction" if h == 0 else f"{h} h",
                  anchor="end" if h == 0 else "middle") for h in range(0, span + 1, step)]
    return x, span, ticks


def mark_path(x, y, value):
    """An up triangle (towards death) or a down triangle (towards survival) centred at (x, y)."""
    if value >= 0:
        return f"M{x:.1f} {y - 5:.1f}l5.5 9.5h-11z"
    return f"M{x:.1f} {y + 5:.1f}l5.5-9.5h-11z"


def timeline(events, limit, x, ticks, top_indices):
    """Lanes (one per event kind present, in the model's order) and one mark per event, rows packed so that
    marks of one lane overlap only where more than MAX_ROWS events fall at about the same time."""
    lanes, marks, y0 = [], [], 12
    hours = events["hours_before"].to_numpy()
    xs = x(hours)
    for kind in [k for k in KIND_ORDER if k in set(events["event_type"])]:
        members = np.flatnonzero(events["event_type"].to_numpy() == kind)
        # time order, and at one time the largest |IG| first (top row)
        order = members[np.lexsort((-np.abs(events["integrated_gradients"].to_numpy()[members]), xs[members]))]
        row_end, row_of = [], {}
        for i in order:
            free = [r for r, end in enumerate(row_end) if xs[i] - end >= MARK_GAP]
            if free:
                r = free[0]
            elif len(row_end) < MAX_ROWS:
                r = len(row_end)
                row_end.append(-1e9)
            else:
                r = int(np.argmin(row_end))
            row_end[r] = xs[i]
            row_of[i] = r
        height = 12 + ROW_STEP * max(1, len(row_end))
        lanes.append(dict(kind=kind, label=kind.capitalize(), n=len(members), y=y0, height=height,
                          mid=y0 + height / 2))
        for i in members:
            value = float(events["integrated_gradients"].iat[i])
            y = y0 + 6 + ROW_STEP * row_of[i] + ROW_STEP / 2
            marks.append(dict(i=int(events["event_index"].iat[i]), d=mark_path(xs[i], y, value if np.isfinite(value)
                                                                                 else 0.0),
                              fill=colour(value, limit), top=int(events["event_index"].iat[i]) in top_indices,
                              label=f"{kind}, {hours_label(hours[i])} before: {events['event_text'].iat[i]}",
                              size=abs(value) if np.isfinite(value) else 0.0))
        y0 += height + 4
    marks.sort(key=lambda m: (m["top"], m["size"]))  # the largest drawn last: on top
    return dict(width=PLOT["width"], height=y0 + 40, lanes=lanes, marks=marks, ticks=ticks, axis_y=y0 + 2,
                left=PLOT["left"], right=PLOT["width"] - PLOT["right"])


def risk_chart(risk, base, x, ticks, current):
    """The risk-over-time line: one point per hour, base rate dashed, the y axis from 0 to a round ceiling."""
    highest = 1.1 * max([*risk["risk"].tolist(), base if np.isfinite(base) else 0, 0.01])
    step = nice_ceiling(highest / 5)
    top = min(1.0, step * math.ceil(highest / step - 1e-9))
    height, pad_top, pad_bottom = 210, 12, 44
    plot_h = height - pad_top - pad_bottom

    def y(p):
        return pad_top + (1 - p / top) * plot_h

    xs = x(risk["hours_before"].to_numpy())
    points = [dict(x=round(float(px), 2), y=round(float(y(p)), 2), hours=int(h), risk=repr(float(p)), n=int(n), percent=percent(p),
                   label=f"{'at the prediction' if h == 0 else f'{int(h)} h before'}: {percent(p)} "
                         f"({int(n)} events known)")
              for px, p, h, n in zip(xs, risk["risk"], risk["hours_before"], risk["n_events"])]
    yticks = [dict(y=round(y(v), 1), label=f"{100 * v:.4g}%") for v in np.arange(0, top + step / 2, step)]
    return dict(width=PLOT["width"], height=height, points=points, yticks=yticks, ticks=ticks,
                line=" ".join(f"{p['x']},{p['y']}" for p in sorted(points, key=lambda p: p["x"])),
                base_y=round(y(base), 1) if np.isfinite(base) and base <= top else None, base=percent(base),
                left=PLOT["left"], right=PLOT["width"] - PLOT["right"], bottom=height - pad_bottom,
                current=percent(current))


def top_events(events, n=TOP_EVENTS):
    """The n events with the largest positive IG attribution (raised the risk) and the n with the most negative
    (lowered it), each as a row of the page's lists."""
    ig = events["integrated_gradients"]

    def rows(chosen):
        return [dict(rank=r + 1, i=int(e.event_index), hours=hours_label(e.hours_before), time=clock(e.event_time),
                     kind=e.event_type, text=e.event_text, ig=signed(e.integrated_gradients),
                     ig_value=float(e.integrated_gradients),
                     fa=signed(e.feature_ablation)) for r, e in enumerate(chosen.itertuples())]

    up = events[ig > 0].sort_values("integrated_gradients", ascending=False, kind="stable").head(n)
    down = events[ig < 0].sort_values("integrated_gradients", ascending=True, kind="stable").head(n)
    return rows(up), rows(down)


def totals(events, span):
    """IG summed per event kind and per WINDOW_HOURS window before the prediction (windows earliest first, as on
    the timeline), with the number of events of each cell."""
    windows = list(range(span, 0, -WINDOW_HOURS))  # window (w - WINDOW_HOURS, w] hours before, earliest first
    which = np.minimum(events["hours_before"].to_numpy() // WINDOW_HOURS, span // WINDOW_HOURS - 1).astype(int)
    labels = [f"{w}–{w - WINDOW_HOURS} h" for w in windows]
    kinds = [k for k in KIND_ORDER if k in set(events["event_type"])]
    table = []
    for kind in kinds + [None]:
        chosen = events["event_type"].to_numpy() == kind if kind else np.ones(len(events), bool)
        cells = []
        for w in windows:
            in_cell = chosen & (which == w // WINDOW_HOURS - 1)
            total = float(events["integrated_gradients"].to_numpy()[in_cell].sum())
            cells.append(dict(n=int(in_cell.sum()), value=signed(total, 2) if in_cell.any() else "",
                              sign=np.sign(total) if in_cell.any() else 0))
        total = float(events["integrated_gradients"].to_numpy()[chosen].sum())
        table.append(dict(kind=kind.capitalize() if kind else "All events", cells=cells, n=int(chosen.sum()),
                          total=signed(total, 2), sign=np.sign(total)))
    return dict(windows=labels, rows=table)


def static_panel(static, stay_row):
    """The static features' contributions (IG, ablation), largest |IG| first, with the stay's value."""
    if static is None or static.empty:
        return []
    ig = static.get("integrated_gradients", pd.Series(np.nan, index=static.index))
    fa = static.get("feature_ablation", pd.Series(np.nan, index=static.index))
    scale = float(np.nanmax(np.abs(ig.to_numpy()))) if ig.notna().any() else 0.0
    rows = []
    for feature in ig.abs().sort_values(ascending=False).index:
        value = stay_row.get(feature)
        shown = ("not recorded" if value is None or pd.isna(value)
                 else f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value))
        v = float(ig[feature])
        rows.append(dict(feature=STATIC_LABELS.get(feature, feature), value=shown, ig=signed(v), fa=signed(fa[feature]),
                         sign=np.sign(v) if np.isfinite(v) else 0,
                         width=round(36 * abs(v) / scale, 1) if scale > 0 and np.isfinite(v) else 0))
    return rows


def spearman(a, b):
    """Spearman's rho of two score vectors; None with fewer than 3 events, a constant one or a missing score."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def curve_chart(ig_curve, random_curve):
    """The stay's deletion curves (IG's order, random orders) as SVG polylines on a 260 x 120 box."""
    if not isinstance(ig_curve, np.ndarray) or not isinstance(random_curve, np.ndarray):
        return None

    def line(curve):
        n = len(curve)
        return " ".join(f"{40 + 210 * j / max(n - 1, 1):.1f},{10 + 90 * (1 - p):.1f}" for j, p in enumerate(curve))

    return dict(ig=line(ig_curve), random=line(random_curve))


def trust(events, measures, tolerance):
    """This stay's checks of the explanation: IG's completeness, IG vs ablation ranks, the deletion curve against
    random orders; a check that could not be made says why. Returns (checks, flag, curves)."""
    checks = []
    m = measures if measures is not None else {}
    gap = m.get("ig_relative_delta", np.nan)
    if gap is not None and np.isfinite(gap):
        ok = gap <= tolerance
        checks.append(dict(name="IG adds up", ok=ok, value=f"{100 * gap:.2f}% gap",
                           text=f"The IG attributions of the events and static features add up to the change in the "
                                f"model's score from the all-zero baseline within {100 * gap:.2f}% "
                                f"(tolerance {100 * tolerance:.0f}%)."
                                + ("" if ok else " They do not add up: the per-event numbers are approximate.")))
    else:
        checks.append(dict(name="IG adds up", ok=None, value="not computed for this stay",
                           text="The model's score hardly differs from the baseline's, so the completeness gap is "
                                "not meaningful (or it was not computed for this stay)."))
    if not len(events):
        rho = None
        why = "no events"
    elif events["feature_ablation"].isna().any():
        rho, why = None, "not computed for this stay"
    else:
        rho = spearman(events["integrated_gradients"], events["feature_ablation"])
        why = "too few events, or constant scores" if rho is None else ""
    if rho is None:
        checks.append(dict(name="IG vs removal", ok=None, value=why,
                           text="Agreement of IG's ranking of the events with the removal test's (leaving each event "
                                "out and scoring the stay again): " + why + "."))
    else:
        ok = rho >= LOW_AGREEMENT
        checks.append(dict(name="IG vs removal", ok=ok, value=f"Spearman {rho:.2f}",
                           text=f"IG's ranking of the events and the removal test's (leaving each event out and "
                                f"scoring the stay again) agree with rank correlation {rho:.2f} (below "
                                f"{LOW_AGREEMENT} counts as disagreement)."))
    ig_auc, random_auc = m.get("deletion_auc:integrated_gradients", np.nan), m.get("deletion_auc:random", np.nan)
    curves = None
    if ig_auc is not None and random_auc is not None and np.isfinite(ig_auc) and np.isfinite(random_auc):
        ok = ig_auc < random_auc - DELETION_MARGIN
        checks.append(dict(name="Deletion vs random", ok=ok, value=f"{ig_auc:.2f} vs {random_auc:.2f}",
                           text=f"Removing the events in IG's order (most important first) moves the model's "
                                f"prediction away faster than removing them in random order: area under the "
                                f"deletion curve {ig_auc:.2f} against {random_auc:.2f} (lower is better)."
                                if ok else
                                f"Removing the events in IG's order does not change the prediction faster than "
                                f"random orders: area {ig_auc:.2f} against {random_auc:.2f} (lower is better; IG's "
                                f"should be at least {DELETION_MARGIN} lower)."))
        curves = curve_chart(m.get("deletion_curve:integrated_gradients"), m.get("deletion_curve:random"))
    else:
        checks.append(dict(name="Deletion vs random", ok=None, value="not computed for this stay",
                           text="The deletion curve (removing events in IG's order against random orders) was not "
                                "computed for this stay."))
    made = [c["ok"] for c in checks if c["ok"] is not None]
    flag = ("not assessed" if not made else "low confidence" if not all(made) else "no disagreement found")
    return checks, flag, curves


def event_data(events):
    """The tooltips' data, one entry per event by event_index (the page's JSON)."""
    _, values = event_table.items_and_values(events["event_text"]) if len(events) else (None, [])
    data = {}
    for e, value in zip(events.itertuples(), values):
        data[int(e.event_index)] = dict(
            text=e.event_text, kind=e.event_type, before=hours_label(e.hours_before), time=clock(e.event_time),
            value=None if pd.isna(value) else f"{value:g}",
            ig=signed(e.integrated_gradients), lig=signed(e.layer_integrated_gradients),
            fa=signed(e.feature_ablation),
            att="not computed" if pd.isna(e.attention_pooling) else f"{e.attention_pooling:.3f}")
    return data


def stay_context(info, events, static, risk, measures, limit, base, tolerance, model, run_info):
    """Everything the stay template draws. info: the stay's first event-table row (static values, ids, label);
    events: its event_attributions rows, one per event with a column per method; static: its static attributions
    by feature; risk: risk_over_time's frame; measures: its row of Collected.stay_measure_frame (or None)."""
    events = events.assign(hours_before=events["relative_time_to_final_event"].to_numpy(dtype=float) / 60.0)
    span_hours = max(float(events["hours_before"].max()) if len(events) else 0.0,
                     float(risk["hours_before"].max()) if risk is not None and len(risk) else 0.0)
    x, span, ticks = x_axis(span_hours)
    up, down = top_events(events)
    checks, flag, curves = trust(events, measures, tolerance)
    current = float(info["risk"])
    prediction_time = info.get("prediction_time")
    if (prediction_time is None or pd.isna(prediction_time)) and len(events):
        first = events.iloc[0]
        prediction_time = pd.Timestamp(first["event_time"]) + pd.Timedelta(minutes=float(
            first["relative_time_to_final_event"]))
    n_in_table = int(info.get("n_events_in_table", len(events)))
    known_by = clock(prediction_time)
    return dict(
        title=f"Stay {info['stay_id']}", stay=dict(
            stay_id=int(info["stay_id"]), subject_id=int(info["subject_id"]), hadm_id=info.get("hadm_id"),
            care_unit=None if pd.isna(info.get("first_careunit")) else info.get("first_careunit"),
            prediction_time=known_by or "not in the table", known_by=known_by or "the prediction time",
            risk=percent(current),
            risk_value=repr(current), outcome=outcome(info.get("mortality")), n_events=len(events),
            n_events_in_table=n_in_table),
        model=model, run=run_info, base=dict(value=percent(base[0]), text=base[1]), flag=flag, checks=checks,
        curves=curves, limit=f"{limit:.3g}", quarter=f"{limit / 4:.2g}", gradient=DIVERGING,
        risk=risk_chart(risk, base[0], x, ticks, current) if risk is not None and len(risk) > 1 else None,
        timeline=timeline(events, limit, x, ticks, {e["i"] for e in up + down}) if len(events) else None,
        up=up, down=down, totals=totals(events, span) if len(events) else None,
        static=static_panel(static, info), events=event_data(events), window_hours=WINDOW_HOURS,
        top_n=TOP_EVENTS)


def outcome(label):
    if label is None or pd.isna(label):
        return "unknown"
    return "died in hospital" if int(label) == 1 else "survived to discharge"


# -----------------------------------------------------------------------------
# Writing the pages

@functools.cache
def environment():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["sign_class"] = lambda s: "up" if s > 0 else "down" if s < 0 else ""
    return env


def render(template, context):
    return environment().get_template(template).render(**context)


def index_row(context):
    stay = context["stay"]
    top = max(context["up"][:1] + context["down"][:1], key=lambda e: abs(e["ig_value"]), default=None)
    return dict(stay_id=stay["stay_id"], subject_id=stay["subject_id"], care_unit=stay["care_unit"] or "",
                risk=stay["risk"], risk_value=stay["risk_value"], outcome=stay["outcome"], n_events=stay["n_events"],
                top=top, flag=context["flag"], href=f"stay_{stay['stay_id']}.html")


def write_report(save_dir, checkpoint_path, data_path, data, collected, run, settings):
    """Write report/index.html and report/stay_{stay_id}.html under save_dir for every explained stay, from the
    run's attribution tables and what `collected` kept; `data`: explain_clinicalLF's ExplainInputs (rows, model),
    `run`, `settings`: its ExplainRun and ExplainSettings. Returns {"report/index.html": path}."""
    import train
    save_dir = Path(save_dir)
    out = save_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ckpt = train.load_checkpoint(checkpoint_path)
    predictions = collected.prediction_frame().drop_duplicates("stay_id").set_index("stay_id")
    import evaluation
    predictions["risk"] = evaluation.apply_calibration(ckpt.get("calibration"), predictions["logit"].to_numpy())
    events = read_event_attributions(save_dir / "event_attributions.csv")
    static = read_static_attributions(save_dir / "static_attributions.csv")
    measures = collected.stay_measure_frame()
    measures = measures[~measures.index.duplicated()]
    rows = data.rows
    cache_dir = run.cache_dir or train.cache_dir_of_checkpoint(ckpt.get("args", {}))
    risks = risk_over_time(rows, data.model, ckpt, cache_dir, run.max_events, run.device, run.text_encoder)
    limit = colour_limit(events["integrated_gradients"])
    base = base_rate(checkpoint_path, predictions.reset_index())
    model = model_summary(checkpoint_path, ckpt)
    run_info = dict(data=str(data_path), split=run.split, n_stays=len(predictions),
                    written=dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    firsts = rows.drop_duplicates("stay_id").set_index("stay_id")
    n_in_table = rows.groupby("stay_id", observed=True)["event_type"].count()
    by_stay = dict(tuple(events.groupby("stay_id", sort=False)))
    empty = events.iloc[:0]
    index = []
    for stay_id in sorted(predictions.index):
        info = {**firsts.loc[stay_id].to_dict(), "stay_id": stay_id, "risk": predictions.at[stay_id, "risk"],
                "mortality": predictions.at[stay_id, "mortality"], "n_events_in_table": n_in_table.get(stay_id, 0)}
        context = stay_context(info, by_stay.get(stay_id, empty), static.get(stay_id), risks.get(stay_id),
                               measures.loc[stay_id].to_dict() if stay_id in measures.index else None, limit, base,
                               settings.ig_tolerance, model, run_info)
        atomic_io.write_bytes(out / f"stay_{stay_id}.html", render("report_stay.html", context).encode())
        index.append(index_row(context))
    index_context = dict(title="Explained stays", stays=index, model=model, run=run_info,
                         base=dict(value=percent(base[0]), text=base[1]), limit=f"{limit:.3g}")
    path = atomic_io.write_bytes(out / "index.html", render("report_index.html", index_context).encode())
    return {f"{REPORT_DIR}/index.html": path}
