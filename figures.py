"""Every figure the project draws, in one place: the training run's plots (train.py -> plots/) and the
explanation figures (explain_clinicalLF.py -> its save dir). Each function takes what it draws and a path, and
writes the PNG atomically (atomic_io.save_figure). matplotlib is imported on first use, so that scripts which
draw nothing do not pay for it.
"""
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

import atomic_io
from attribution import METHODS, SIGNED_METHODS
from explanation_sums import LARGEST_COLUMNS, hours_before_prediction


def _plt():
    """matplotlib with the non-interactive Agg backend (no display on a GPU box or in CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

# -----------------------------------------------------------------------------
# Training run figures


def plot_subgroups(subgroups, overall_auroc, plots_dir, xlim=(0.4, 1.0)):
    """Forest plot: test AUROC and its patient-bootstrap interval per subgroup; an unscored group says why, and an
    interval reaching past the axis ends in an arrow."""
    plt = _plt()
    labels, points, lows, highs, reasons = [], [], [], [], []
    for attribute, groups in subgroups.items():
        for group, g in groups.items():
            labels.append(f"{attribute}: {group} (n={g['n_stays']}, deaths={g['n_deaths']})")
            points.append(np.nan if g["auroc"] is None else g["auroc"])
            lo, hi = g.get("auroc_ci95") or [np.nan, np.nan]
            lows.append(np.nan if lo is None else lo)
            highs.append(np.nan if hi is None else hi)
            reasons.append(g.get("reason") or "not scored")
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(labels) + 1.6), layout="constrained")
    ypos = np.arange(len(labels))[::-1]
    points, lows, highs = map(np.asarray, (points, lows, highs))
    shown_low, shown_high = np.clip(lows, *xlim), np.clip(highs, *xlim)
    ax.errorbar(points, ypos, xerr=[np.nan_to_num(points - shown_low), np.nan_to_num(shown_high - points)], fmt="o",
                color="tab:blue", capsize=2)
    for yv, pv, lo, hi, reason in zip(ypos, points, lows, highs, reasons):
        if np.isnan(pv):
            ax.text(xlim[0] + 0.01, yv, f"not scored: {reason}", va="center", fontsize=7, color="0.35")
            continue
        if lo < xlim[0]:  # the interval goes on past the axis: an arrowhead, and where it ends
            ax.plot([xlim[0]], [yv], marker="<", ms=8, color="tab:blue", clip_on=False)
            ax.text(xlim[0] + 0.012, yv + 0.15, f"to {lo:.2f}", fontsize=6.5, color="tab:blue", va="bottom")
        if hi > xlim[1]:
            ax.plot([xlim[1]], [yv], marker=">", ms=8, color="tab:blue", clip_on=False)
            ax.text(xlim[1] - 0.012, yv + 0.15, f"to {hi:.2f}", fontsize=6.5, color="tab:blue", va="bottom",
                    ha="right")
    ax.axvline(0.5, color="0.8", lw=0.8)
    title = "Subgroup performance (test split)"
    if overall_auroc is not None:
        ax.axvline(overall_auroc, color="0.4", ls="--", lw=1)
        title += f"\ndashed line: all test stays, AUROC {overall_auroc:.3f}; thin line: chance (0.5)"
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set(xlabel="test AUROC (95% patient-bootstrap interval; an arrow: it goes on past the axis)", xlim=xlim)
    ax.set_title(title, fontsize=9)
    atomic_io.save_figure(fig, plots_dir / "subgroup_performance.png")


def kept_epoch(history, select_by="auroc"):
    """The 0-based index of the epoch train.py kept (best_model.pth): the first epoch whose validation score beat
    every earlier one (AUROC with --select-by auroc, else minus the loss; minus the loss also where an epoch has no
    AUROC), as train.validate_and_checkpoint decides."""
    best, kept = -np.inf, None
    for i, (auroc, loss) in enumerate(zip(history["val_auroc"], history["val_loss"])):
        score = auroc if select_by == "auroc" and auroc is not None else -loss
        if score > best:
            best, kept = score, i
    return kept


def _mark_kept(ax, epoch_number, y=None):
    ax.axvline(epoch_number, color="tab:green", ls=":", lw=1.2, label=f"kept: epoch {epoch_number}")
    if y is not None and not np.isnan(y):
        ax.plot([epoch_number], [y], marker="*", ms=12, color="tab:green", zorder=5)


def plot_curves(history, plots_dir, select_by="auroc"):
    """loss_curves.png and auroc_curve.png: epochs counted from 1, the kept epoch (best_model.pth) marked."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    kept = kept_epoch(history, select_by)
    kept_number = None if kept is None else kept + 1
    fig, (ax, ax_objective) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    # Like with like: both curves are the unweighted BCE of the model in eval mode after the epoch.
    if len(history.get("train_bce", [])) == len(epochs):
        ax.plot(epochs, history["train_bce"], marker=".", label="train (eval mode)")
    ax.plot(epochs, history["val_loss"], marker=".", label="val")
    if kept_number is not None:
        _mark_kept(ax, kept_number, history["val_loss"][kept])
        _mark_kept(ax_objective, kept_number)
    ax.set(xlabel="epoch", ylabel="BCE, unweighted", title="Loss after each epoch")
    ax.legend(fontsize=8)
    ax_objective.plot(epochs, history["train_loss"], marker=".", color="tab:gray")
    ax_objective.set(xlabel="epoch", ylabel="weighted BCE + temporal term")
    ax_objective.set_title("Training objective (mean over the epoch's batches)", fontsize=10)
    for a in (ax, ax_objective):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    atomic_io.save_figure(fig, plots_dir / "loss_curves.png")
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    aurocs = np.array([np.nan if v is None else v for v in history["val_auroc"]], dtype=float)
    ax.plot(epochs, aurocs, marker=".", label="val AUROC")
    if kept_number is not None:
        _mark_kept(ax, kept_number, aurocs[kept])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="AUROC")
    ax.set_title(f"Validation AUROC (the kept epoch: best validation {'AUROC' if select_by == 'auroc' else 'loss'})",
                 fontsize=9)
    ax.legend(fontsize=8)
    atomic_io.save_figure(fig, plots_dir / "auroc_curve.png")


def plot_attention(path_npz, plots_dir, title=None):
    """attention_heatmap.png from a train.save_attention file; `title` says whose attention it is (the kept model's
    at the end of the run; during training the weights of that batch)."""
    plt = _plt()
    data = np.load(path_npz)
    pool, mask = data["pooling_attention"].astype(np.float32), data["mask"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    pooled = np.ma.masked_where(~mask.astype(bool), pool.mean(1)[:, 0, :])  # padding: left blank, not 0
    im = axes[0].imshow(pooled, aspect="auto", cmap="viridis", interpolation="nearest")
    axes[0].set(xlabel="event (time order: oldest left, the prediction time right)", ylabel="stay",
                yticks=range(len(pool)), yticklabels=[str(s) for s in data["stay_id"]])
    axes[0].set_title("Pooling attention (mean of heads); blank: no event", fontsize=9)
    fig.colorbar(im, ax=axes[0], fraction=0.04, label="weight")
    n = int(mask[0].sum()) or 1
    im = axes[1].imshow(data["layer_attention"][-1, 0].astype(np.float32).mean(0)[:n, :n], cmap="viridis",
                        interpolation="nearest")
    axes[1].set(xlabel="key event (time order)", ylabel="query event (time order)")
    axes[1].set_title(f"Last layer self-attention, mean of heads, stay {data['stay_id'][0]}", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.04, label="weight")
    if title is None:
        title = f"{Path(path_npz).stem} (during training: that batch's weights, not necessarily the kept model)"
    fig.suptitle(title, fontsize=10)
    atomic_io.save_figure(fig, plots_dir / "attention_heatmap.png")


def _outcome_axes(ax, kind):
    """Axis labels in the reader's words (the positive class is death), not scikit-learn's "Positive label: 1"."""
    if kind == "roc":
        ax.set_xlabel("false positive rate (share of survivors flagged)")
        ax.set_ylabel("true positive rate (share of deaths flagged)")
    elif kind == "pr":
        ax.set_xlabel("recall (share of deaths flagged)")
        ax.set_ylabel("precision (share of flagged stays that died)")
    else:
        ax.set_xlabel("predicted risk of death (mean in the bin)")
        ax.set_ylabel("observed death rate in the bin")


def wilson_interval(k, n, z=1.959964):
    """95% Wilson score interval of k deaths out of n stays (arrays)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def plot_test_curves(y, p, plots_dir, p_uncalibrated=None, baselines=None):
    """ROC and precision-recall of the model (and the baselines' test probabilities beside it; on PR the prevalence,
    a model without skill), and the calibration curve of the model before and after calibration with the stays
    (and deaths) in each bin."""
    plt = _plt()
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return
    prevalence = float(np.mean(y))
    subtitle = f"Test split: {len(y)} stays, {int(y.sum())} deaths"
    for name, display, kind in (("roc_curve.png", RocCurveDisplay, "roc"),
                                ("precision_recall_curve.png", PrecisionRecallDisplay, "pr")):
        fig, ax = plt.subplots(figsize=(5.2, 4.8), layout="constrained")
        display.from_predictions(y, p, ax=ax, name="model", pos_label=1)
        for baseline, pb in (baselines or {}).items():
            shown = display.from_predictions(y, pb, ax=ax, name=baseline, pos_label=1)
            shown.line_.set_linestyle("--")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="chance (AUC = 0.5)")
        else:
            ax.axhline(prevalence, color="0.6", lw=0.8, ls=":", label=f"prevalence: {prevalence:.3f} (no skill)")
            ax.set_ylim(0, 1.02)
        _outcome_axes(ax, kind)
        ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "upper right")
        ax.set_title(subtitle + "; positive class: death", fontsize=9)
        atomic_io.save_figure(fig, plots_dir / name)
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.2, 6.2), sharex=True, layout="constrained",
                                   gridspec_kw=dict(height_ratios=[3, 1.2]))
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="perfectly calibrated")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, 11)))
    if p_uncalibrated is not None:
        observed, predicted = calibration_curve(y, p_uncalibrated, n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, "s--", ms=4, color="tab:gray", label="uncalibrated")
    bins = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, max(len(edges) - 2, 0))
    n_bin = np.bincount(bins, minlength=len(edges) - 1)
    deaths_bin = np.bincount(bins, weights=y, minlength=len(edges) - 1).astype(int)
    used = n_bin > 0
    mean_p = np.bincount(bins, weights=p, minlength=len(edges) - 1)[used] / n_bin[used]
    rate = deaths_bin[used] / n_bin[used]
    counts = n_bin[used]
    low, high = wilson_interval(deaths_bin[used], counts)
    span = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    ax.errorbar(mean_p, rate, yerr=[rate - low, high - rate], fmt="o-", color="tab:blue", capsize=2, lw=1.2,
                label=f"calibrated: {len(counts)} bins of {span} stays\n(bars: 95% Wilson interval of the death rate)")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02))
    _outcome_axes(ax, "calibration")
    ax.set_title(subtitle + "; below: the stays at each predicted risk", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax_n.hist([p[y == 0], p[y == 1]], bins=np.linspace(0, 1, 21), stacked=True, color=["0.7", "tab:red"],
              label=["survived", "died"])
    ax_n.set(xlabel="predicted risk of death (calibrated)", ylabel="stays")
    ax_n.legend(fontsize=7)
    atomic_io.save_figure(fig, plots_dir / "calibration_curve.png")

# -----------------------------------------------------------------------------
# Explanation figures

# x axes are hours before the prediction time (0 = prediction time, on the right); the top events are numbered
# on the plot and named in full in a list beside it. Each takes explanation_sums.Collected (what the run kept of its batches) and a path.

METHOD_LABELS = {"integrated_gradients": "Integrated Gradients", "layer_integrated_gradients": "Layer IG (input proj.)",
                 "feature_ablation": "Feature ablation (event removed)", "attention_pooling": "Attention pooling"}
# What each method's number is, in the reader's units (axis labels).
METHOD_UNITS = {"integrated_gradients": "contribution to the log-odds of death",
                "layer_integrated_gradients": "contribution to the log-odds of death",
                "feature_ablation": "log-odds of death minus that without the event",
                "attention_pooling": "pooling weight (no sign; sums to 1 over the stay)"}
LOG_ODDS = "contribution to the log-odds of death"


def _short(text, n=48):
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "…"


def _wrap(text, width=60):
    import textwrap
    return "\n   ".join(textwrap.wrap(str(text), width)) or str(text)


def _stagger(xs, ys, span, near=0.015, step=11):
    """Vertical offsets (points) for numbered labels: a label within `near` x `span` of an earlier one on the same
    side of 0 goes one step further out, so that labels of events close in time do not cover each other."""
    offsets, placed = [], []
    for x, y in zip(xs, ys):
        side = 1 if y >= 0 else -1
        level = sum(1 for px, ps in placed if ps == side and abs(px - x) <= near * span)
        placed.append((x, side))
        offsets.append(side * (4 + step * level))
    return offsets


def _numbered(ax, xs, ys, numbers, color="black", span=None):
    """Small numbered labels on the points (no leader lines, staggered where close): the list beside the axes names
    them."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    span = span or (float(np.ptp(xs)) if len(xs) else 1.0) or 1.0
    for x, y, k, dy in zip(xs, ys, numbers, _stagger(xs, ys, span)):
        ax.annotate(str(k), (x, y), xytext=(0, dy), textcoords="offset points", ha="center",
                    va="bottom" if y >= 0 else "top", fontsize=7, fontweight="bold", color=color,
                    bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec="0.5", lw=0.4))


def _event_ticks(ax, hours_in_order, n_ticks=8):
    """Ticks on an axis of events evenly spaced in time order (not a time axis): the event's number and its hours."""
    n = len(hours_in_order)
    ticks = np.unique(np.linspace(0, n - 1, min(n_ticks, n)).astype(int)) if n else []
    ax.set_xticks(ticks, [f"#{t + 1}\n{hours_in_order[t]:.1f} h" for t in ticks], fontsize=8)
    ax.set_xlabel(f"the stay's {n} events in time order, evenly spaced (not a time axis); tick: event number and "
                  "hours before the prediction")


def fig_layer_attention(collected, path):
    plt = _plt()
    stay = collected.example
    meta, received = stay["meta"], stay["layer_received"]
    hours = hours_before_prediction(meta)
    order = np.argsort(-hours, kind="stable")  # oldest left, prediction time right
    patterns = collected.layer_pattern_frame()
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw=dict(width_ratios=[3, 1.2]), layout="constrained")
    ax = axes[0]
    image = np.vstack([received, stay["attributions"]["attention_pooling"][None]])[:, order]
    im = ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(image.shape[0]), [f"layer {i}" for i in range(received.shape[0])] + ["pooling"])
    _event_ticks(ax, hours[order])
    top = np.argsort(-image[-1])[:3]
    ax.set_title(f"Stay {stay['stay_id']} (P(death)={stay['probability']:.2f}, "
                 f"{'died' if stay['label'] else 'survived'}): attention each event receives, mean over heads and "
                 f"queries\nmost pooled: " + "; ".join(f"#{j + 1} {_short(meta['event_text'].iloc[order[j]], 32)}"
                                                       for j in top), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025, label="attention weight")
    ax = axes[1]
    pivot = patterns.pivot(index="layer", columns="head", values="entropy_normalised")
    values = pivot.to_numpy(dtype=float)
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.55 else "white")
    ax.set_xticks(range(pivot.shape[1]), pivot.columns)
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Mean attention entropy / log(events in the stay), explained stays\n(1 = spread evenly over every "
                 "event; low = focused on few events)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return atomic_io.save_figure(fig, path)


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


def relative_difference(values, other):
    """max |values - other| / max |other| (NaN where other is missing or all zero): how far layer IG is from IG on a
    stay (per event they differ only by the static part of IG's path where the input projection is linear)."""
    if other is None or len(values) != len(other) or not len(other):
        return float("nan")
    scale = float(np.abs(other).max())
    return float(np.abs(np.asarray(values) - np.asarray(other)).max() / scale) if scale > 0 else float("nan")


FOLD_LAYER_IG = 0.05  # layer IG shares IG's panel where it is within this share of IG's largest |score| on every event


def fig_sequence_importance_combined(collected, path, k=6):
    """The example stay's events under every method that ran on it (one panel each; layer IG is folded into IG's
    panel where it is within FOLD_LAYER_IG of it), on one time axis; the k largest |IG| events numbered in every
    panel and named in the list on the right."""
    plt = _plt()
    stay = collected.example
    meta = stay["meta"]
    hours = hours_before_prediction(meta)
    texts = meta["event_text"].astype(str).to_numpy()
    attributions = stay["attributions"]
    methods = [m for m in METHODS if m in attributions]  # cohort mode: those run on the audited stays
    ig = attributions.get("integrated_gradients")
    gap = (relative_difference(attributions["layer_integrated_gradients"], ig)
           if "layer_integrated_gradients" in methods else float("nan"))
    folded = gap <= FOLD_LAYER_IG
    if folded:
        methods.remove("layer_integrated_gradients")
    fig = plt.figure(figsize=(15, 1.2 + 2.3 * len(methods)), layout="constrained")
    grid = fig.add_gridspec(len(methods), 2, width_ratios=[4, 1.25])
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[i, 0], sharex=axes[0]) for i in range(1, len(methods))]
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    ax_list = fig.add_subplot(grid[:, 1])
    ax_list.axis("off")
    key = ig if ig is not None else attributions[methods[0]]
    named = np.argsort(-np.abs(key), kind="stable")[:min(k, len(key))]
    for ax, method in zip(axes, methods):
        values = attributions[method]
        colors = np.where(values >= 0, "tab:red", "tab:blue") if method in SIGNED_METHODS else "tab:gray"
        ax.vlines(hours, 0, values, colors=colors, lw=1.0)
        ax.scatter(hours, values, c=colors, s=8)
        ax.axhline(0, color="0.5", lw=0.5)
        _numbered(ax, hours[named], values[named], range(1, len(named) + 1), span=float(np.ptp(hours)))
        name = METHOD_LABELS[method] + (f" (layer IG is the same within {gap:.1%} of the largest |IG|: not drawn "
                                        "again)" if method == "integrated_gradients" and folded else "")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel(_wrap(METHOD_UNITS[method], 24).replace("\n   ", "\n"), fontsize=7)
        ax.margins(y=0.4)  # room for the numbered labels, staggered where events are close
    axes[-1].invert_xaxis()
    axes[-1].set_xlabel("hours before the prediction time (0 = prediction time)")
    listing = "\n".join(f"{i}. {_wrap(texts[j], 46)}\n   {hours[j]:.1f} h before; IG {key[j]:+.2g}"
                        for i, j in enumerate(named, 1))
    ax_list.text(0, 1, f"The {len(named)} largest |IG| events\n(numbered in every panel)\n\n" + listing, fontsize=7.5,
                 va="top", ha="left", transform=ax_list.transAxes)
    fig.suptitle(f"Stay {stay['stay_id']}: every method that ran, on the same events (P(death)={stay['probability']:.2f}, "
                 f"{'died' if stay['label'] else 'survived'}; red = towards death, blue = towards survival)", fontsize=10)
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


def mean_by_item(by_text):
    """mean_by_text (IG's mean and number of events per distinct text) grouped by item (event_table.item_of_text:
    the text without its numbers, so one row for every potassium value): the signed mean over the item's events."""
    import event_table
    if by_text.empty:
        return pd.DataFrame(columns=["mean", "count", "n_texts"])
    frame = pd.DataFrame({"item": event_table.item_of_text(pd.Series(by_text.index.astype(str))).to_numpy(),
                          "sum": (by_text["mean"] * by_text["count"]).to_numpy(dtype=float),
                          "count": by_text["count"].to_numpy(dtype=np.int64)})
    grouped = frame.groupby("item").agg(sum=("sum", "sum"), count=("count", "sum"), n_texts=("count", "size"))
    return pd.DataFrame({"mean": grouped["sum"] / grouped["count"], "count": grouped["count"],
                         "n_texts": grouped["n_texts"]})


def fig_feature_importance(collected, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw=dict(width_ratios=[2, 1]), layout="constrained")
    ax = axes[0]
    by_item = mean_by_item(collected.events.mean_by_text())
    if not by_item.empty:
        by_item = by_item[by_item["count"] >= min(3, int(by_item["count"].max()))]
        top = pd.concat([by_item[by_item["mean"] > 0].nlargest(10, "mean"),
                         by_item[by_item["mean"] < 0].nsmallest(10, "mean")])
        top = top[~top.index.duplicated()].sort_values("mean")
        ax.barh([f"{_short(t, 60)} (n={c})" for t, c in zip(top.index, top["count"])], top["mean"],
                color=np.where(top["mean"] >= 0, "tab:red", "tab:blue"))
        ax.tick_params(axis="y", labelsize=7)
    ax.axvline(0, color="0.4", lw=0.5)
    ax.set_xlabel(f"mean Integrated Gradients attribution per event: {LOG_ODDS}\n(red = towards death, blue = towards "
                  "survival)")
    ax.set_title("Which items push predictions, across explained stays? An item is an event text with its numbers as # "
                 "\n(every potassium value together); the 10 most towards death and towards survival, n = events",
                 fontsize=9)
    ax = axes[1]
    static = collected.static_means()
    if not static.empty:
        from matplotlib.ticker import MaxNLocator
        from report import STATIC_LABELS
        table = static["attribution"].unstack("method")
        table = table.rename(columns=METHOD_LABELS, index=lambda f: STATIC_LABELS.get(f, f))
        # grey shades for the methods: red and blue mean towards death and survival in every figure
        table.loc[table.abs().max(axis=1).sort_values().index].plot.barh(
            ax=ax, color=["0.3", "0.65", "0.5", "0.8"][:table.shape[1]])
        ax.legend(fontsize=7, title=None, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.axvline(0, color="0.4", lw=0.5)
    ax.set_ylabel("")
    ax.set_xlabel(f"mean attribution: {LOG_ODDS}")
    ax.set_title("Static features (all one-hot columns of a variable together),\nmean over the explained stays",
                 fontsize=9)
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
    sample = sample[sample[method].notna()]  # cohort mode: the method ran on the audited stays only
    types = sorted(sample.event_type.astype(str).unique())
    ax_box.boxplot([sample.loc[sample.event_type == t, method] for t in types], tick_labels=types, showfliers=False)
    ax_box.tick_params(axis="x", labelrotation=30)
    ax_box.axhline(0, color="0.5", lw=0.5)
    ax_box.set_ylabel(f"per event: {METHOD_UNITS[method]}", fontsize=8)
    ax_box.set_title(f"{METHOD_LABELS[method]}: by event type{note}", fontsize=10)
    top = largest.iloc[::-1] if largest is not None else pd.DataFrame(columns=LARGEST_COLUMNS)
    ax_top.barh([f"{_short(t, 45)} [{s}, {h:.1f}h]" for t, s, h in
                 zip(top.event_text, top.stay_id, hours_before_prediction(top))], top["attribution"],
                color=np.where(top["attribution"] >= 0, "tab:red", "tab:blue"))
    ax_top.axvline(0, color="0.4", lw=0.5)
    ax_top.tick_params(axis="y", labelsize=7)
    ax_top.set_xlabel(f"{METHOD_UNITS[method]} (red = towards death)", fontsize=8)
    ax_top.set_title("largest single-event attributions [stay, hours before prediction]", fontsize=10)


def _method_scatter(ax, sample, method, other="integrated_gradients", note=""):
    sample = sample[sample[method].notna() & sample[other].notna()]
    ax.scatter(sample[other], sample[method], s=5, alpha=0.5)
    rho = spearmanr(sample[method], sample[other]).statistic if len(sample) > 2 else float("nan")
    ax.set_xlabel(f"{METHOD_LABELS[other]}: {METHOD_UNITS[other]}", fontsize=8)
    ax.set_ylabel(f"{METHOD_LABELS[method]}: {METHOD_UNITS[method]}", fontsize=8)
    ax.set_title(f"per event, all stays{note} (Spearman {rho:.2f})", fontsize=10)


def fig_captum(collected, path, method, faithfulness):
    plt = _plt()
    sample, note = collected.event_sample(), collected.sample_note()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw=dict(width_ratios=[1, 1.6, 1]), layout="constrained")
    _by_type_and_top(axes[0], axes[1], sample, collected.events.largest.get(method), method, note)
    if method in ("integrated_gradients", "layer_integrated_gradients"):
        key = "ig" if method == "integrated_gradients" else "lig"
        conv = faithfulness[f"{method}_convergence"]
        errors = np.asarray(collected.relative_delta[key], dtype=float)
        errors = errors[np.isfinite(errors)]
        # bins from 0 to past the tolerance: errors of 1e-7 fill the first bin rather than a bar too thin to see
        upper = max(2 * conv["tolerance"], float(errors.max()) if errors.size else 0.0)
        axes[2].hist(errors, bins=np.linspace(0, upper, 41))
        axes[2].axvline(conv["tolerance"], color="tab:red", lw=0.8, ls="--")
        axes[2].set_title(convergence_title(conv), fontsize=10)
        axes[2].set_xlabel("relative completeness error per stay (dashed: tolerance)")
        axes[2].set_ylabel("stays")
    elif method == "feature_ablation":
        static = collected.static_means()
        rows = (static["attribution"].xs("feature_ablation", level="method").sort_values() if not static.empty
                else pd.Series(dtype=float))
        from matplotlib.ticker import MaxNLocator
        from report import STATIC_LABELS
        axes[2].barh([STATIC_LABELS.get(f, f) for f in rows.index], rows.to_numpy(),
                     color=np.where(rows >= 0, "tab:red", "tab:blue"))
        axes[2].axvline(0, color="0.4", lw=0.5)
        axes[2].xaxis.set_major_locator(MaxNLocator(5))
        axes[2].set_xlabel("mean change in the log-odds of death when the column is removed", fontsize=8)
        axes[2].set_title("static column removed: mean logit change", fontsize=10)
    else:
        _method_scatter(axes[2], sample, method, note=note)
    fig.suptitle(f"{METHOD_LABELS[method]}: an event's attribution is its {METHOD_UNITS[method]} (what the model "
                 "uses, not causes)", fontsize=10)
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


def timeline_colour_limit(collected):
    """The timelines' colour scale, one for every stay of the run: the report's (report.colour_limit, the 99th
    percentile of |IG| over the run's events; beyond it colours are clipped)."""
    from report import colour_limit
    sample = collected.event_sample()
    values = sample["integrated_gradients"].dropna() if "integrated_gradients" in sample else []
    return colour_limit(values)


def _static_value(value):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "not recorded"
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)


def fig_stay_timeline(stay, path, static_names=(), limit=None, static_values=None, k=8):
    """Every event of one stay on a time axis, one lane per kind, coloured by its IG attribution on the run's one
    scale (`limit`: clipped beyond it); the k largest |IG| numbered on the plot and named in full in the list beside
    it; the static columns' IG attributions with the stay's values (`static_values`: feature -> value)."""
    plt = _plt()
    from matplotlib.colors import Normalize
    from report import STATIC_LABELS
    meta = stay["meta"]
    fig = plt.figure(figsize=(17, 6.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[3.2, 1.3], height_ratios=[1.25, 1])
    ax, ax_list, ax_static = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    ax_list.axis("off")
    title = f"Stay {stay['stay_id']}: predicted P(death) = {stay['probability']:.2f}, outcome: " + \
        ("died" if stay["label"] else "survived")
    values = stay["attributions"].get("integrated_gradients", np.zeros(len(meta)))
    if limit is None:
        limit = max(float(np.abs(values).max(initial=0.0)), 1e-9)
    if len(meta):
        hours = hours_before_prediction(meta)
        types = list(dict.fromkeys(sorted(meta.event_type.astype(str))))
        y = np.array([types.index(t) for t in meta.event_type.astype(str)])
        norm = Normalize(-limit, limit, clip=True)
        small_first = np.argsort(np.abs(values), kind="stable")  # the strong colours drawn on top
        sc = ax.scatter(hours[small_first], y[small_first], c=values[small_first], cmap="RdBu_r", norm=norm, s=42,
                        edgecolors="0.3", lw=0.3)
        named = np.argsort(-np.abs(values), kind="stable")[:min(k, len(values))]
        named = named[np.abs(values[named]) > 0]
        span = float(np.ptp(hours)) or 1.0
        for lane in np.unique(y[named]):
            in_lane = named[y[named] == lane]
            ranks = [int(np.flatnonzero(named == j)[0]) + 1 for j in in_lane]
            for j, rank, dy in zip(in_lane, ranks, _stagger(hours[in_lane], np.ones(len(in_lane)), span)):
                ax.annotate(str(rank), (hours[j], y[j]), xytext=(0, 5 + dy), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, fontweight="bold",
                            bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec="0.4", lw=0.5))
        ax.set_yticks(range(len(types)), types)
        ax.set_ylim(-0.7, len(types) - 0.3)
        ax.invert_xaxis()
        fig.colorbar(sc, ax=ax, fraction=0.03, extend="both", label="IG (log-odds of death)")
        title += (f"\ncolour: each event's IG {LOG_ODDS} (red = towards death, blue = towards survival), on one "
                  f"scale for every stay of the run, clipped at ±{limit:.2g}")
        texts = meta.event_text.astype(str).to_numpy()
        listing = "\n".join(f"{rank}. {_wrap(texts[j], 58)}\n   {hours[j]:.1f} h before; IG {values[j]:+.2g}"
                            for rank, j in enumerate(named, 1))
        ax_list.text(0, 1, f"The {len(named)} events that moved the prediction most (|IG|):\n\n{listing}",
                     fontsize=7.5, va="top", ha="left", transform=ax_list.transAxes)
    else:
        title += " — no events: predicted from its static features alone"
    ax.set_xlabel("hours before the prediction time (0 = prediction time, right)")
    ax.set_title(title, fontsize=10)
    static = stay["static"].get("integrated_gradients")
    if static is not None and len(static_names) == len(static):
        order = np.argsort(np.abs(static), kind="stable")
        known = static_values or {}
        names = [f"{STATIC_LABELS.get(n, n)}: {_static_value(known.get(n))}" if static_values is not None
                 else STATIC_LABELS.get(n, n) for n in np.asarray(static_names)[order]]
        bars = ax_static.barh(names, static[order], color=np.where(static[order] >= 0, "tab:red", "tab:blue"))
        ax_static.bar_label(bars, [f"{v:+.2f}" for v in static[order]], fontsize=6, padding=2)
        ax_static.axvline(0, color="0.4", lw=0.5)
        ax_static.tick_params(axis="y", labelsize=7)
        ax_static.margins(x=0.25)
    ax_static.set_xlabel(f"IG: {LOG_ODDS}", fontsize=8)
    ax_static.set_title("static features (the stay's value: IG)", fontsize=9)
    return atomic_io.save_figure(fig, path)


def fig_cohort_attributions(cohort, path, n_stays, top=15):
    """What drives predicted risk across the cohort (cohort_attributions.csv): the items (event texts without their
    numbers) that push the cohort's logits most towards death and towards survival, ranked by their IG attribution
    averaged over every explained stay (0 where absent). Per item its mean attribution in the stays it appears in
    with the 95% interval over those stays, and the share of stays it appears in. Items of fewer than 1% of the
    stays (at least 5) are left out, and so are those whose average push is below 2% of the largest: noise."""
    plt = _plt()
    rows = pd.DataFrame(columns=cohort.columns)
    if not cohort.empty:
        common = cohort[cohort["n_stays"] >= min(max(5, int(np.ceil(0.01 * n_stays))), int(cohort["n_stays"].max()))]
        key = "mean_attribution_over_all_stays"
        common = common[common[key].abs() >= 0.02 * common[key].abs().max()]
        down, up = common[common[key] < 0].nsmallest(top, key), common[common[key] > 0].nlargest(top, key)
        # drawn by the bar's own value: towards survival at the bottom, towards death at the top
        rows = pd.concat([down, up]).sort_values("mean_attribution", kind="stable")
    fig, (ax, ax_share) = plt.subplots(1, 2, figsize=(15, 2.2 + 0.3 * max(len(rows), 4)), sharey=True,
                                       gridspec_kw=dict(width_ratios=[3, 1]), layout="constrained")
    y = np.arange(len(rows))
    if len(rows):
        mean = rows["mean_attribution"].to_numpy(dtype=float)
        low, high = (rows[f"mean_attribution_ci95_{end}"].to_numpy(dtype=float) for end in ("low", "high"))
        error = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
        colors = np.where(rows["mean_attribution_over_all_stays"] >= 0, "tab:red", "tab:blue")
        ax.barh(y, mean, xerr=error, color=colors, alpha=0.8, error_kw=dict(lw=0.8, capsize=2))
        ax.set_yticks(y, [_short(t, 60) for t in rows["item"]], fontsize=7)
        share = rows["share_of_stays"].to_numpy(dtype=float)
        ax_share.barh(y, 100 * share, color="0.6")
        for yi, (s, n) in enumerate(zip(share, rows["n_stays"])):
            ax_share.text(100 * s, yi, f" {n:,}", va="center", fontsize=7)
        ax_share.set_xlim(0, 115)
    else:
        ax.text(0.5, 0.5, "no events explained", ha="center", transform=ax.transAxes)
    ax.axvline(0, color="0.4", lw=0.5)
    ax.set_xlabel("mean IG attribution to the log-odds of death in the stays with the item (95% interval over stays)")
    fig.suptitle(f"What drives predicted risk across the {n_stays:,} explained stays (what the model uses, not "
                 "causes)", fontsize=11)
    ax.set_title(f"up to {top} items pushing predictions most towards death (red) and towards survival (blue), chosen "
                 "by their attribution averaged over every stay (0 where absent);\nan item's attribution in a stay sums "
                 "its events there (a number in the text is #)", fontsize=8)
    ax_share.set_xlabel("% of stays with the item (number of stays)")
    ax_share.set_title("how common", fontsize=9)
    return atomic_io.save_figure(fig, path)


DEVELOPER_FIGURES = ("head_specialization.png", "query_vector_analysis.png")  # with developer_figures only


def make_all_figures(collected, save_dir, faithfulness, stay_ids, developer_figures=False, event_rows=None):
    """Every explanation figure (docs/interfaces.md section 4); `developer_figures`: also DEVELOPER_FIGURES (the
    pooling heads' internals); `event_rows`: the event table, whose first row per stay gives the timelines' static
    values."""
    save_dir = Path(save_dir)
    if not collected.predictions:
        return {}
    paths = {
        "layer_attention_weights.png": fig_layer_attention(collected, save_dir / "layer_attention_weights.png"),
        "sequence_importance.png": fig_sequence_importance(collected, save_dir / "sequence_importance.png"),
        "sequence_importance_combined.png": fig_sequence_importance_combined(
            collected, save_dir / "sequence_importance_combined.png"),
        "feature_importance.png": fig_feature_importance(collected, save_dir / "feature_importance.png"),
        "captum_attributions.png": fig_captum(collected, save_dir / "captum_attributions.png",
                                              "integrated_gradients", faithfulness),
    }
    if developer_figures:
        paths["head_specialization.png"] = fig_head_specialization(collected, save_dir / "head_specialization.png")
        paths["query_vector_analysis.png"] = fig_query_vector(collected, save_dir / "query_vector_analysis.png")
    if "layer_integrated_gradients" in getattr(collected, "methods_run", METHODS):  # cohort mode may skip it
        paths["captum_layer_attributions.png"] = fig_captum(collected, save_dir / "captum_layer_attributions.png",
                                                            "layer_integrated_gradients", faithfulness)
    paths["captum_ablation_attributions.png"] = fig_captum(collected, save_dir / "captum_ablation_attributions.png",
                                                           "feature_ablation", faithfulness)
    paths["cohort_attributions.png"] = fig_cohort_attributions(collected.cohort_frame(),
                                                               save_dir / "cohort_attributions.png",
                                                               len(collected.predictions))
    limit = timeline_colour_limit(collected) if stay_ids else None
    firsts = None
    if stay_ids and event_rows is not None:
        wanted = event_rows[event_rows["stay_id"].isin([int(s) for s in stay_ids])]
        firsts = wanted.drop_duplicates("stay_id").set_index("stay_id")
    for stay_id in stay_ids:
        name = f"timeline_stay_{stay_id}.png"
        values = None
        if firsts is not None:
            row = firsts.loc[int(stay_id)] if int(stay_id) in firsts.index else pd.Series(dtype=object)
            values = {n: row.get(n) for n in collected.static_names}
        paths[name] = fig_stay_timeline(collected.details[int(stay_id)], save_dir / name, collected.static_names,
                                        limit, values)
    return paths
