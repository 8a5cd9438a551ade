"""What train.py reports after training, and how: metrics with patient-bootstrap intervals, the calibration map
(fitted on the validation split), subgroups of the test split, and the end-of-run table.

    split_metrics(y, p, "test", bootstrap=1000, subject_ids=s)   # AUROC, AUPRC, Brier, ECE (+ 95% intervals)
    calibration = fit_calibration(val_logits, val_y, "platt"); apply_calibration(calibration, logits)
    model_metrics(labels, p, p_uncalibrated, stay_split, subject_ids, bootstrap, seed)   # metrics.json's splits
    subgroup_metrics(subgroup_attributes(stays), y, p, subject_ids)
    print(summary_table(metrics))

Plain numpy/pandas/scikit-learn: no torch, no model. train.py imports it when it first scores a split.
"""
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

# -----------------------------------------------------------------------------
# Metrics


MIN_DEATHS = 10  # fewer deaths than this in a split: its AUROC and calibration are anecdotes (a warning says so)


def expected_calibration_error(y, p, n_bins=10, strategy="uniform"):
    """ECE: the stay-weighted mean |mean predicted probability - observed death rate| over bins of the prediction.
    strategy "uniform": 10 bins of equal width; "equal_mass": 10 bins of (nearly) equal numbers of stays, ranked by
    prediction, so the few high-risk stays are not left in near-empty bins."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if strategy == "uniform":
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    elif strategy == "equal_mass":
        bins = np.argsort(np.argsort(p, kind="stable"), kind="stable") * n_bins // max(len(p), 1)
    else:
        raise ValueError(f"unknown ECE strategy {strategy!r}")
    error = 0.0
    for b in np.unique(bins):
        sel = bins == b
        error += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(error)


def split_metrics(y, p, name, bootstrap=0, seed=0, subject_ids=None):
    """AUROC, AUPRC, Brier, ECE; with `bootstrap` resamples, 95% intervals that resample patients
    (`subject_ids`; each stay its own patient when not given)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    out = {"n_stays": int(len(y)), "n_deaths": int(y.sum()), "auroc": None, "auprc": None,
           "brier": float(brier_score_loss(y, p)) if len(y) else None,
           "ece": expected_calibration_error(y, p) if len(y) else None,
           "ece_equal_mass": expected_calibration_error(y, p, strategy="equal_mass") if len(y) else None}
    if len(np.unique(y)) < 2:
        warnings.warn(f"the {name} split has a single class ({int(y.sum())} deaths of {len(y)} stays): AUROC and "
                      "AUPRC are undefined (null in metrics.json)")
        return out
    out["auroc"], out["auprc"] = float(roc_auc_score(y, p)), float(average_precision_score(y, p))
    if bootstrap:
        out.update(bootstrap_intervals(y, p, np.arange(len(y)) if subject_ids is None else subject_ids, bootstrap, seed))
    return out


def patient_bootstrap(subject_ids, n_resamples, seed):
    """Yield `n_resamples` index arrays, each drawing patients with replacement and taking all stays of a
    drawn patient together (a patient's stays are not independent: one admission's stays share a label)."""
    codes, uniques = pd.factorize(np.asarray(subject_ids))
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(uniques)))]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(uniques), len(uniques))
        yield np.concatenate([order[starts[d]:starts[d + 1]] for d in drawn]) if len(drawn) else drawn


def bootstrap_intervals(y, p, subject_ids, n_resamples, seed):
    """95% percentile intervals of AUROC and AUPRC over patient-level resamples (one-class resamples skipped)."""
    aurocs, auprcs = [], []
    for idx in patient_bootstrap(subject_ids, n_resamples, seed):
        yy = y[idx]
        if 0 < yy.sum() < len(yy):
            aurocs.append(roc_auc_score(yy, p[idx]))
            auprcs.append(average_precision_score(yy, p[idx]))
    if not aurocs:
        return {}
    return {"auroc_ci95": [float(np.percentile(aurocs, 2.5)), float(np.percentile(aurocs, 97.5))],
            "auprc_ci95": [float(np.percentile(auprcs, 2.5)), float(np.percentile(auprcs, 97.5))],
            "bootstrap_resamples": len(aurocs), "bootstrap_unit": "patient"}


def calibration_slope_intercept(y, p):
    """Cox's calibration slope and intercept: logistic regression of the outcome on logit(p) (ideal 1 and 0)."""
    y = np.asarray(y, dtype=float)
    if len(np.unique(y)) < 2:
        return None, None
    logit = np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])



def _interval(values):
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None


def calibration_intervals(y, p, subject_ids, n_resamples, seed):
    """95% intervals of the calibration slope and intercept over patient resamples (one-class resamples skipped)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    slopes, intercepts = [], []
    for idx in patient_bootstrap(subject_ids, n_resamples, seed):
        if 0 < y[idx].sum() < len(idx):
            slope, intercept = calibration_slope_intercept(y[idx], p[idx])
            slopes.append(slope)
            intercepts.append(intercept)
    return {"calibration_slope_ci95": _interval(slopes), "calibration_intercept_ci95": _interval(intercepts)}


def paired_comparison(y, p_model, p_other, subject_ids, n_resamples, seed, p_ceiling=None) -> dict:
    """The model minus another model on the same stays: AUROC and AUPRC differences, each with a 95% interval
    from the same patient resamples for both (paired: the split's own noise is shared, so the interval is that
    of the difference), and with the true probability `p_ceiling`, the model's AUROC as a share of the ceiling's."""
    y, p_model, p_other = np.asarray(y, dtype=float), np.asarray(p_model, dtype=float), np.asarray(p_other, dtype=float)

    def measures(idx):
        yy, auroc = y[idx], roc_auc_score(y[idx], p_model[idx])
        out = {"auroc_difference": auroc - roc_auc_score(yy, p_other[idx]),
               "auprc_difference": average_precision_score(yy, p_model[idx]) - average_precision_score(yy, p_other[idx])}
        if p_ceiling is not None:
            out["auroc_ratio_to_ceiling"] = auroc / roc_auc_score(yy, np.asarray(p_ceiling, dtype=float)[idx])
        return out

    point = {k: float(v) for k, v in measures(np.arange(len(y))).items()}
    draws = [measures(idx) for idx in patient_bootstrap(subject_ids, n_resamples, seed) if 0 < y[idx].sum() < len(idx)]
    point.update({f"{k}_ci95": _interval([d[k] for d in draws]) for k in list(point)})
    point["bootstrap_resamples"] = len(draws)
    return point


def better_of_two(comparison, name_model="model", name_other="baseline") -> str:
    """Which model the AUROC difference's interval favours, in words (an interval that holds 0: neither)."""
    low, high = comparison["auroc_difference_ci95"] or (None, None)
    if low is None:
        return "undetermined (no resample had both classes)"
    if low > 0:
        return f"{name_model} (AUROC difference interval above 0)"
    if high < 0:
        return f"{name_other} (AUROC difference interval below 0)"
    return "neither: the AUROC difference's interval includes 0"

# -----------------------------------------------------------------------------
# Calibration: a monotone map from the model's logit to a probability, fitted on the validation split


def _nll(logits, y):
    """Mean binary cross-entropy of sigmoid(logits) against y."""
    q = np.clip(1 / (1 + np.exp(-logits)), 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))


def fit_calibration(val_logits, val_y, method="platt") -> dict:
    """The map as plain numbers (it is stored in the checkpoint, which loads with weights_only=True).

    platt: sigmoid(a * logit + b); temperature: sigmoid(logit / T); isotonic: a non-decreasing step function
    of the logit (interpolated between its knots); none: sigmoid(logit); intercept: sigmoid(logit + b). A Platt
    slope <= 0 (a model no better than chance on validation) would reverse or flatten the ranking: temperature
    is used instead. With fewer than MIN_DEATHS validation deaths a fitted slope or step function is an
    extrapolation from a handful of stays (a slope of hundreds can stretch 0.49-0.51 to 0-1): only the
    intercept is fitted (the predictions' mean matches the validation death rate), with a warning."""
    z, y = np.asarray(val_logits, dtype=float), np.asarray(val_y, dtype=float)
    if method == "none" or len(np.unique(y)) < 2:
        if method != "none":
            warnings.warn("the validation split has a single class: no calibration map is fitted")
        return {"method": "none"}
    if y.sum() < MIN_DEATHS:
        warnings.warn(f"the validation split has {int(y.sum())} death(s) (< {MIN_DEATHS}): --calibration {method} "
                      "would extrapolate from them; only an intercept is fitted (sigmoid(logit + b))")
        return {"method": "intercept", "b": float(minimize_scalar(lambda b: _nll(z + b, y), bounds=(-20, 20),
                                                                   method="bounded").x), "requested": method}
    if method == "platt":
        fit = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
        a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        if a > 0:
            return {"method": "platt", "a": a, "b": b}
        warnings.warn(f"Platt scaling fitted a slope {a:.3g} <= 0 on validation; using temperature scaling")
        method = "temperature"
    if method == "temperature":
        log_t = minimize_scalar(lambda log_t: _nll(z / np.exp(log_t), y), bounds=(-5, 5), method="bounded").x
        return {"method": "temperature", "temperature": float(np.exp(log_t))}
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z, y)
        return {"method": "isotonic", "knots_logit": [float(v) for v in iso.X_thresholds_],
                "knots_probability": [float(v) for v in iso.y_thresholds_]}
    raise ValueError(f"unknown calibration method {method!r}")


def apply_calibration(calibration, logits) -> np.ndarray:
    """Calibrated probabilities for logits (numpy), with the map of fit_calibration."""
    z = np.asarray(logits, dtype=float)
    method = (calibration or {"method": "none"})["method"]
    if method == "platt":
        z = calibration["a"] * z + calibration["b"]
    elif method == "temperature":
        z = z / calibration["temperature"]
    elif method == "intercept":
        z = z + calibration["b"]
    elif method == "isotonic":
        return np.interp(z, calibration["knots_logit"], calibration["knots_probability"])
    return 1 / (1 + np.exp(-z))

# -----------------------------------------------------------------------------
# The model's metrics of a run (metrics.json)


def stays_metrics(labels, probs, probs_uncalibrated, subject_ids, name, bootstrap=0, seed=0) -> dict:
    """One split's entry of metrics.json (also predict.py's): split_metrics of the calibrated probabilities, the
    Brier score, ECE, calibration slope and intercept before and after calibration, a too_few_deaths flag, and with
    `bootstrap` patient resamples the 95% intervals of AUROC/AUPRC and of the calibration slope and intercept."""
    labels, probs, probs_uncalibrated = np.asarray(labels), np.asarray(probs), np.asarray(probs_uncalibrated)
    metrics = split_metrics(labels, probs, name, bootstrap=bootstrap, seed=seed, subject_ids=subject_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = split_metrics(labels, probs_uncalibrated, name)
        metrics.update(brier_uncalibrated=raw["brier"], ece_uncalibrated=raw["ece"])
        for suffix, p in (("", probs), ("_uncalibrated", probs_uncalibrated)):
            slope, intercept = calibration_slope_intercept(labels, p)
            metrics.update({f"calibration_slope{suffix}": slope, f"calibration_intercept{suffix}": intercept})
    if metrics["n_deaths"] < MIN_DEATHS:
        metrics["too_few_deaths"] = True
        warnings.warn(f"the {name} split has {metrics['n_deaths']} death(s) among {metrics['n_stays']} "
                      f"stays (< {MIN_DEATHS}): its AUROC, AUPRC and calibration are anecdotes, not estimates")
    if bootstrap and len(np.unique(labels)) == 2:
        metrics.update(calibration_intervals(labels, probs, subject_ids, min(bootstrap, 200), seed))
    return metrics


def model_metrics(labels, probs, probs_uncalibrated, stay_split, subject_ids, bootstrap, seed) -> dict:
    """metrics.json's "train", "val" and "test": stays_metrics of each split, with `bootstrap` patient resamples
    for the test split's intervals."""
    return {name: stays_metrics(labels[stay_split == name], probs[stay_split == name],
                                probs_uncalibrated[stay_split == name], subject_ids[stay_split == name], name,
                                bootstrap if name == "test" else 0, seed)
            for name in ("train", "val", "test")}


def true_probability(table):
    """Synthetic tables only: each stay's true probability of death (order of table.stay_id.drop_duplicates()),
    or None without the `true_probability` column."""
    if "true_probability" not in table.columns:
        return None
    return table.drop_duplicates("stay_id")["true_probability"].to_numpy(dtype=float)


def compare_with_baselines(y, p_model, baseline_results, baseline_probs, subject_ids, n_resamples, seed,
                           p_ceiling=None) -> dict:
    """metrics.json "comparisons": paired_comparison of the model with each baseline on the test stays, the best
    baseline (chosen on validation AUROC, never on test) and, in words, which of the model and it is better."""
    if len(np.unique(y)) < 2 or not baseline_probs:
        return {}
    out = {name: paired_comparison(y, p_model, p, subject_ids, n_resamples, seed, p_ceiling)
           for name, p in baseline_probs.items()}
    best = max(baseline_results, key=lambda name: baseline_results[name]["val"]["auroc"] or -np.inf)
    out["best_baseline"] = best
    out["better_on_test"] = better_of_two(out[best], "model", best)
    return out


BLEND_WEIGHTS = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # the model's share, 0 (the baseline alone) first


def model_plus_baseline(y, model_logits, p_baseline, stay_split, subject_ids, n_resamples, seed, name) -> dict:
    """Does the model know something the baseline does not? Their logits, each standardised on validation, are
    averaged with the model's weight w chosen on validation AUROC (ties go to the smaller w: the model must earn
    its share); the blend is compared with the baseline alone on the test stays, paired over patients. w = 0, or
    a difference whose interval holds 0, means the model adds nothing measurable to the baseline on these data.
    Arrays cover every stay, aligned with stay_split; {} where validation or test has a single class."""
    y, split = np.asarray(y, dtype=float), np.asarray(stay_split)
    val, test = split == "val", split == "test"
    if len(np.unique(y[val])) < 2 or len(np.unique(y[test])) < 2:
        return {}
    p_baseline = np.clip(np.asarray(p_baseline, dtype=float), 1e-7, 1 - 1e-7)
    standardised = [(z - z[val].mean()) / max(z[val].std(), 1e-12)
                    for z in (np.asarray(model_logits, dtype=float), np.log(p_baseline / (1 - p_baseline)))]
    val_auroc = [roc_auc_score(y[val], w * standardised[0][val] + (1 - w) * standardised[1][val])
                 for w in BLEND_WEIGHTS]
    w = float(BLEND_WEIGHTS[int(np.argmax(val_auroc))])
    blend = w * standardised[0] + (1 - w) * standardised[1]
    minus_baseline = paired_comparison(y[test], blend[test], p_baseline[test], np.asarray(subject_ids)[test],
                                       n_resamples, seed)
    return {"baseline": name, "weight_on_model": w, "chosen_on": "val", "val_auroc": float(max(val_auroc)),
            "test_auroc": float(roc_auc_score(y[test], blend[test])),
            "test_auprc": float(average_precision_score(y[test], blend[test])),
            "minus_baseline": minus_baseline,
            "better_on_test": ("neither: validation gives the model no weight, so nothing it adds to the baseline "
                               "shows there" if w == 0 else better_of_two(minus_baseline, f"model + {name}", name))}


def auroc_of_true_probability(truth, labels, selected):
    """Synthetic tables only (`truth`: true_probability(table)): the AUROC of the planted risk on the `selected`
    stays, the best any model can reach; None without a truth or with a single class."""
    if truth is None or len(np.unique(labels[selected])) < 2:
        return None
    return float(roc_auc_score(labels[selected], truth[selected]))


def meds_prediction_table(subject_ids, prediction_times, labels, probability, threshold=0.5):
    """Predictions in meds-evaluation's schema (MEDS-DEV's evaluator): subject_id int64, prediction_time
    timestamp[us], boolean_value bool, predicted_boolean_probability float32, predicted_boolean_value bool
    (probability >= threshold); an Arrow table, for atomic_io.write_parquet."""
    import pyarrow as pa
    probability = np.asarray(probability, dtype=np.float32)
    schema = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                        ("boolean_value", pa.bool_()), ("predicted_boolean_probability", pa.float32()),
                        ("predicted_boolean_value", pa.bool_())])
    return pa.table({"subject_id": np.asarray(subject_ids, dtype=np.int64),
                     "prediction_time": np.asarray(prediction_times, dtype="datetime64[us]"),
                     "boolean_value": np.asarray(labels).astype(bool), "predicted_boolean_probability": probability,
                     "predicted_boolean_value": probability >= threshold}, schema=schema)

# -----------------------------------------------------------------------------
# Subgroups of the test split

AGE_BANDS = ((18, 45, "18-44"), (45, 65, "45-64"), (65, 80, "65-79"), (80, np.inf, "80+"))
MIN_SUBGROUP_STAYS = 20


def race_group(race: pd.Series) -> pd.Series:
    """MIMIC-IV's race strings in broad groups: WHITE, BLACK, HISPANIC/LATINO, ASIAN, OTHER, UNKNOWN."""
    r = race.astype("string").str.upper().str.strip().fillna("")
    out = pd.Series("OTHER", index=race.index, dtype=object)
    out[r.str.startswith("WHITE") | (r == "PORTUGUESE")] = "WHITE"
    out[r.str.startswith("BLACK")] = "BLACK"
    out[r.str.startswith("HISPANIC") | r.str.contains("LATINO") | (r == "SOUTH AMERICAN")] = "HISPANIC/LATINO"
    out[r.str.startswith("ASIAN")] = "ASIAN"
    out[r.isin(["", "UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER"])] = "UNKNOWN"
    return out


def age_band(age: pd.Series) -> pd.Series:
    age = pd.to_numeric(age, errors="coerce")
    out = pd.Series("unknown", index=age.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(age >= lo) & (age < hi)] = name
    out[age < AGE_BANDS[0][0]] = f"<{AGE_BANDS[0][0]}"
    return out


def subgroup_attributes(stays: pd.DataFrame) -> pd.DataFrame:
    """One row per stay: the attributes whose subgroups are scored."""
    return pd.DataFrame({"gender": stays["gender"].astype(object).fillna("unknown").to_numpy(),
                         "race": race_group(stays["race"]).to_numpy(),
                         "insurance": stays["insurance"].astype(object).fillna("unknown").to_numpy(),
                         "age_band": age_band(stays["patient_age"]).to_numpy(),
                         "first_careunit": stays["first_careunit"].astype(object).fillna("unknown").to_numpy()})


def subgroup_metrics(attributes, y, p, subject_ids, bootstrap=200, seed=0) -> dict:
    """{attribute: {group: {n_stays, n_deaths, auroc, auprc, ece, auroc_ci95, auprc_ci95}}} on the given
    (test) stays; a group with fewer than MIN_SUBGROUP_STAYS stays or a single class gets null metrics and
    a `reason`. Intervals resample the group's patients."""
    y, p, subject_ids = np.asarray(y, dtype=float), np.asarray(p, dtype=float), np.asarray(subject_ids)
    out = {}
    for attribute in attributes.columns:
        values = attributes[attribute].to_numpy()
        groups = {}
        for group in sorted(pd.unique(values), key=str):
            sel = values == group
            yy, pp = y[sel], p[sel]
            g = {"n_stays": int(sel.sum()), "n_deaths": int(yy.sum()), "auroc": None, "auprc": None, "ece": None}
            if sel.sum() < MIN_SUBGROUP_STAYS:
                g["reason"] = f"fewer than {MIN_SUBGROUP_STAYS} stays"
            elif len(np.unique(yy)) < 2:
                g["reason"] = "a single class (no deaths)" if yy.sum() == 0 else "a single class (only deaths)"
            else:
                g.update(auroc=float(roc_auc_score(yy, pp)), auprc=float(average_precision_score(yy, pp)),
                         ece=expected_calibration_error(yy, pp))
                if bootstrap:
                    g.update(bootstrap_intervals(yy, pp, subject_ids[sel], bootstrap, seed))
            groups[str(group)] = g
        out[attribute] = groups
    return out

# -----------------------------------------------------------------------------
# The end-of-run table


def summary_table(metrics) -> str:
    """The end-of-run table: the model beside the baselines (and the true probability where the table has it),
    then the paired differences with the baselines and which model is better on this split."""
    def cell(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    def interval(ci, signed=False):
        return "-" if not ci else (f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]")
    t = metrics["test"]
    rows = [("model (calibrated)", t)] + [(name, b["test"]) for name, b in metrics.get("baselines", {}).items()]
    lines = [f"Test split: {t['n_stays']} stays, {t['n_deaths']} deaths",
             f"{'':24s} {'AUROC':>7s} {'95% CI (patients)':>19s} {'AUPRC':>7s} {'Brier':>7s} {'ECE':>7s} {'ECE=mass':>8s}"]
    for name, m in rows:
        lines.append(f"{name:24s} {cell(m['auroc']):>7s} {interval(m.get('auroc_ci95')):>19s} {cell(m['auprc']):>7s} "
                     f"{cell(m['brier']):>7s} {cell(m['ece']):>7s} {cell(m.get('ece_equal_mass')):>8s}")
    lines.append(f"{'model (uncalibrated)':24s} {'':>7s} {'':>19s} {'':>7s} {cell(t.get('brier_uncalibrated')):>7s} "
                 f"{cell(t.get('ece_uncalibrated')):>7s}")
    if t.get("auroc_of_true_probability") is not None:
        lines.append(f"{'true probability':24s} {cell(t['auroc_of_true_probability']):>7s}")
    comparisons = metrics.get("comparisons") or {}
    for name in metrics.get("baselines", {}):
        if name in comparisons:
            c = comparisons[name]
            lines.append(f"model - {name}: AUROC {c['auroc_difference']:+.3f} {interval(c['auroc_difference_ci95'], True)}, "
                         f"AUPRC {c['auprc_difference']:+.3f} {interval(c['auprc_difference_ci95'], True)} (paired, patients)")
    if comparisons:
        best = comparisons[comparisons["best_baseline"]]
        if best.get("auroc_ratio_to_ceiling") is not None:
            lines.append(f"model / true probability AUROC: {best['auroc_ratio_to_ceiling']:.3f} "
                         f"{interval(best['auroc_ratio_to_ceiling_ci95'])}")
        lines.append(f"Better on this test split than the best baseline ({comparisons['best_baseline']}, chosen on "
                     f"validation): {comparisons['better_on_test']}")
    blend = metrics.get("model_plus_baseline")
    if blend:
        c, name = blend["minus_baseline"], blend["baseline"]
        lines.append(f"model + {name} (logits averaged, {blend['weight_on_model']:.2f} on the model, chosen on "
                     f"validation): AUROC {blend['test_auroc']:.3f}, minus {name} {c['auroc_difference']:+.3f} "
                     f"{interval(c['auroc_difference_ci95'], True)}; better: {blend['better_on_test']}")
    if t.get("too_few_deaths"):
        lines.append(f"WARNING: {t['n_deaths']} test deaths (< {MIN_DEATHS}): these figures are anecdotes, not estimates")
    return "\n".join(lines)
