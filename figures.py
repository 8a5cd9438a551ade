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


def plot_subgroups(subgroups, overall_auroc, plots_dir):
    """Forest plot: test AUROC and its patient-bootstrap interval per subgroup (unscored groups are listed)."""
    plt = _plt()
    labels, points, lows, highs = [], [], [], []
    for attribute, groups in subgroups.items():
        for group, g in groups.items():
            labels.append(f"{attribute}: {group} (n={g['n_stays']}, deaths={g['n_deaths']})")
            points.append(np.nan if g["auroc"] is None else g["auroc"])
            lo, hi = g.get("auroc_ci95", [np.nan, np.nan])
            lows.append(lo)
            highs.append(hi)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1.2))
    ypos = np.arange(len(labels))[::-1]
    points, lows, highs = map(np.asarray, (points, lows, highs))
    ax.errorbar(points, ypos, xerr=[points - lows, highs - points], fmt="o", color="tab:blue", capsize=2)
    for yv, pv in zip(ypos, points):
        if np.isnan(pv):
            ax.text(0.5, yv, "not scored", va="center", fontsize=7, color="gray")
    if overall_auroc is not None:
        ax.axvline(overall_auroc, color="gray", ls="--", lw=1, label=f"all test stays ({overall_auroc:.3f})")
        ax.legend(loc="lower left", fontsize=7)
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.set(xlabel="test AUROC (95% patient-bootstrap interval)", title="Subgroup performance", xlim=(0.4, 1.0))
    atomic_io.save_figure(fig, plots_dir / "subgroup_performance.png")


def plot_curves(history, plots_dir):
    plt = _plt()
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax, ax_objective) = plt.subplots(1, 2, figsize=(9, 3.5))
    # Like with like: both curves are the unweighted BCE of the model in eval mode after the epoch.
    if len(history.get("train_bce", [])) == len(epochs):
        ax.plot(epochs, history["train_bce"], label="train (eval mode)")
    ax.plot(epochs, history["val_loss"], label="val")
    ax.set(xlabel="epoch", ylabel="BCE, unweighted", title="Loss after each epoch")
    ax.legend()
    ax_objective.plot(epochs, history["train_loss"], color="tab:gray")
    ax_objective.set(xlabel="epoch", ylabel="weighted BCE + temporal term",
                     title="Training objective (mean over the epoch's batches)")
    atomic_io.save_figure(fig, plots_dir / "loss_curves.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [np.nan if v is None else v for v in history["val_auroc"]], label="val AUROC")
    ax.set(xlabel="epoch", ylabel="AUROC", title="Validation AUROC")
    ax.legend()
    atomic_io.save_figure(fig, plots_dir / "auroc_curve.png")


def plot_attention(path_npz, plots_dir):
    plt = _plt()
    data = np.load(path_npz)
    pool, mask = data["pooling_attention"].astype(np.float32), data["mask"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].imshow(pool.mean(1)[:, 0, :] * mask, aspect="auto", cmap="viridis")
    axes[0].set(xlabel="event (time order)", ylabel="stay", title="Pooling attention (mean of heads)",
                yticks=range(len(pool)), yticklabels=[str(s) for s in data["stay_id"]])
    n = int(mask[0].sum()) or 1
    im = axes[1].imshow(data["layer_attention"][-1, 0].astype(np.float32).mean(0)[:n, :n], cmap="viridis")
    axes[1].set(xlabel="key event", ylabel="query event", title="Last layer self-attention, first stay")
    fig.colorbar(im, ax=axes[1])
    fig.suptitle(Path(path_npz).stem)
    atomic_io.save_figure(fig, plots_dir / "attention_heatmap.png")


def plot_test_curves(y, p, plots_dir, p_uncalibrated=None, baselines=None):
    """ROC and precision-recall of the model (and the baselines' test probabilities beside it), and the
    calibration curve of the model before and after calibration."""
    plt = _plt()
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay
    if len(np.unique(y)) < 2:
        return
    for name, display in (("roc_curve.png", RocCurveDisplay), ("precision_recall_curve.png", PrecisionRecallDisplay)):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        display.from_predictions(y, p, ax=ax, name="model")
        for baseline, pb in (baselines or {}).items():
            shown = display.from_predictions(y, pb, ax=ax, name=baseline)
            shown.line_.set_linestyle("--")
        ax.set_title("Test split")
        atomic_io.save_figure(fig, plots_dir / name)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    if p_uncalibrated is not None:
        shown = CalibrationDisplay.from_predictions(y, p_uncalibrated, n_bins=10, strategy="quantile", ax=ax,
                                                    name="uncalibrated")
        shown.line_.set_linestyle("--")
    CalibrationDisplay.from_predictions(y, p, n_bins=10, strategy="quantile", ax=ax, name="calibrated")
    ax.set_title("Test split")
    atomic_io.save_figure(fig, plots_dir / "calibration_curve.png")

# -----------------------------------------------------------------------------
# Explanation figures

# x axes are hours before the prediction time (0 = prediction time, on the right); the top events are named
# by their text. Each takes explanation_sums.Collected (what the run kept of its batches) and a path.

METHOD_LABELS = {"integrated_gradients": "Integrated Gradients", "layer_integrated_gradients": "Layer IG (input proj.)",
                 "feature_ablation": "Feature ablation (event removed)", "attention_pooling": "Attention pooling"}


def _short(text, n=48):
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "…"


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
