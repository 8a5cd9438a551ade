"""The plain models train.py reports beside its own (metrics.json "baselines", the end-of-run table), built the way
the field builds its tabular baselines (MEDS-Tab, YAIB): per-item features of each stay, then gradient boosting
(LightGBM) and a logistic regression on them. Same patient split; everything (the item vocabulary, scalers,
models) is fitted on the training stays only and each model's hyper-parameters are chosen on validation.

    features = PerItemFeatures().fit(training_rows)     # scikit-learn's fit/transform
    x = features.transform(table)                        # sparse [stays, features], absent = 0 (as MEDS-Tab)
    results, probabilities = fit_baselines(table, stay_split, seed)  # probabilities: every stay's, per model

An item is the event text without its number (event_table.items_and_values, as the model's value channel reads
it). Per item seen in >= MIN_ITEM_STAYS training stays, and per event type: the count over the window and over
the last RECENT_HOURS, hours since its last event, and its last, min, max and mean value; then the number of
events, hours since the last one, and the static features. No column cap: the matrix is sparse, and the items
below the threshold are counted in metrics.json.
"""
import time
import warnings

import lightgbm
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler

from evaluation import split_metrics
from event_table import EVENT_TYPES, items_and_values, static_frame, static_transformer

RECENT_HOURS = (6.0, 24.0)  # the recent windows of each item's count: hours before the prediction time
MIN_ITEM_STAYS = 20         # an item gets features when this many training stays have it (MEDS-Tab's rule)
ITEM_STATISTICS = ("count", *(f"count_last_{h:g}h" for h in RECENT_HOURS), "hours_since_last",
                   "last", "min", "max", "mean")
FEATURES_DESCRIPTION = ("per item (event text without its number) in >= {min_stays} training stays and per event type: "
                        "count over the window and the last 6 h and 24 h, hours since the last, last/min/max/mean "
                        "value; number of events, hours since the last event; static features")
# Hyper-parameters chosen on validation AUROC (LightGBM stops adding trees when validation loss stops improving).
# Screened on a 6,305-stay realistic cohort (validation AUROC): learning rate 0.03 over 0.05 and 0.1, small trees
# (15 leaves: 0.811) over large ones (63: 0.793); BENCHMARKS.md "Baselines".
BOOSTING_GRID = [dict(learning_rate=0.03, num_leaves=leaves) for leaves in (7, 15)]
LOGISTIC_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def _events(table, stays: pd.Index) -> pd.DataFrame:
    """One row per event: the stay's row in `stays`, type, item, value and hours before the prediction time."""
    has_event = table["event_type"].notna().to_numpy()
    column = lambda name: table[name][has_event]  # one column at a time: no copy of the whole table's rows
    items, values = items_and_values(column("event_text"))
    return pd.DataFrame({"stay_row": stays.get_indexer(column("stay_id")),
                         # object, not str: a categorical's values then point at its categories (no string per row)
                         "event_type": column("event_type").astype(object).to_numpy(),
                         "item": items.to_numpy(dtype=object), "value": values.to_numpy(dtype=float),
                         "hours": column("relative_time_to_final_event").to_numpy(dtype=float) / 60.0})


class PerItemFeatures:
    """Per-stay features of an event table (see the module docstring), fitted on the training stays' rows.
    transform() returns a sparse [stays, features] matrix in the order of table.stay_id.drop_duplicates();
    feature_names_ names its columns."""

    def __init__(self, min_stays=MIN_ITEM_STAYS, recent_hours=RECENT_HOURS):
        self.min_stays, self.recent_hours = min_stays, recent_hours

    def fit(self, table):
        events = _events(table, pd.Index(table["stay_id"].drop_duplicates()))
        stays_with = events.drop_duplicates(["stay_row", "item"])["item"].value_counts()
        self.items_ = np.sort(stays_with.index[stays_with >= self.min_stays].to_numpy(dtype=object))
        self.n_rare_items_ = int((stays_with < self.min_stays).sum())
        self.statics_ = static_transformer(min_frequency=5, sparse_output=True).fit(static_frame(table))
        keys = [f"type={t}" for t in EVENT_TYPES] + [f"item={i}" for i in self.items_]
        self.feature_names_ = np.array(["n_events", "hours_since_last_event"]
                                       + [f"{k}/{s}" for k in keys for s in ITEM_STATISTICS]
                                       + [f"static/{n}" for n in self.statics_.get_feature_names_out()], dtype=object)
        return self

    def _statistics(self, events, key, n_keys, n_stays):
        """Sparse [stays, n_keys x ITEM_STATISTICS]: the statistics of each stay's events of each key (key < 0: none)."""
        keep = key >= 0
        frame = events.loc[keep, ["hours", "value"]]
        frame["group"] = events.loc[keep, "stay_row"].to_numpy(np.int64) * n_keys + key[keep]
        for h in self.recent_hours:
            frame[f"count_last_{h:g}h"] = (frame["hours"] <= h).astype(np.float64)
        by = frame.groupby("group", sort=True)
        stats = pd.DataFrame({"count": by.size(), **{f"count_last_{h:g}h": by[f"count_last_{h:g}h"].sum()
                                                     for h in self.recent_hours},
                              "hours_since_last": by["hours"].min(), "last": by["value"].last(),
                              "min": by["value"].min(), "max": by["value"].max(), "mean": by["value"].mean()})
        values = stats[list(ITEM_STATISTICS)].to_numpy(dtype=np.float64)
        groups = stats.index.to_numpy()
        rows = np.repeat(groups // n_keys, len(ITEM_STATISTICS)).reshape(values.shape)
        cols = (groups % n_keys)[:, None] * len(ITEM_STATISTICS) + np.arange(len(ITEM_STATISTICS))
        known = ~np.isnan(values)  # an item without numbers has no value statistics: left absent
        return sparse.csr_matrix((values[known], (rows[known], cols[known])),
                                 shape=(n_stays, n_keys * len(ITEM_STATISTICS)))

    def transform(self, table):
        stays = pd.Index(table["stay_id"].drop_duplicates())
        events, n = _events(table, stays), len(stays)
        n_events = np.bincount(events["stay_row"], minlength=n).astype(np.float64)
        since_last = events.groupby("stay_row")["hours"].min().reindex(range(n)).fillna(0.0).to_numpy()
        types = pd.Index(EVENT_TYPES).get_indexer(events["event_type"])
        items = pd.Index(self.items_).get_indexer(events["item"])
        return sparse.hstack([sparse.csr_matrix(np.c_[n_events, since_last]),
                              self._statistics(events, types, len(EVENT_TYPES), n),
                              self._statistics(events, items, len(self.items_), n),
                              sparse.csr_matrix(self.statics_.transform(static_frame(table)))], format="csr")


def _signed_log(x):
    """sign(x) log(1 + |x|), elementwise, keeping a sparse matrix sparse: counts and lab values on one scale."""
    return x.sign().multiply(abs(x).log1p()).tocsr()


def gradient_boosting(seed, learning_rate, num_leaves, n_threads=None):
    return lightgbm.LGBMClassifier(n_estimators=2000, learning_rate=learning_rate, num_leaves=num_leaves,
                                   min_child_samples=20, subsample=0.8, subsample_freq=1, colsample_bytree=0.5,
                                   reg_lambda=1.0, random_state=seed, deterministic=True, force_col_wise=True,
                                   n_jobs=n_threads, verbose=-1)


def logistic_regression(C):
    return make_pipeline(FunctionTransformer(_signed_log, accept_sparse=True), MaxAbsScaler(),
                         LogisticRegression(C=C, max_iter=5000))


def _validation_score(y, p):
    """Validation AUROC; minus the log loss where validation has one class (AUROC undefined)."""
    return roc_auc_score(y, p) if len(np.unique(y)) == 2 else -log_loss(y, p, labels=[0, 1])


def _fit_boosting(x, y, is_train, is_val, seed):
    """The grid's best LightGBM on validation AUROC; each stops adding trees after 100 without a better
    validation loss. Returns (validation score, chosen settings, model)."""
    best = None
    for settings in BOOSTING_GRID:
        model = gradient_boosting(seed, **settings)
        model.fit(x[is_train], y[is_train], eval_X=(x[is_val],), eval_y=(y[is_val],),
                  callbacks=[lightgbm.early_stopping(100, verbose=False)])
        score = _validation_score(y[is_val], model.predict_proba(x[is_val])[:, 1])
        if best is None or score > best[0]:
            best = (score, {**settings, "n_estimators": int(model.best_iteration_ or model.n_estimators)}, model)
    return best


def _fit_logistic(x, y, is_train, is_val):
    best = None
    for C in LOGISTIC_C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on a large C; the grid still scores it
            model = logistic_regression(C).fit(x[is_train], y[is_train])
        score = _validation_score(y[is_val], model.predict_proba(x[is_val])[:, 1])
        if best is None or score > best[0]:
            best = (score, {"C": C}, model)
    return best


def fit_baselines(table, stay_split, seed=0):
    """`stay_split`: "train"/"val"/"test" per stay, in the order of table.stay_id.drop_duplicates().
    Fit the plain models on the training stays, choose their hyper-parameters on validation, score test.

    Returns ({name: {"features", "chosen", "val", "test", "seconds"}}, {name: every stay's probability, aligned
    with stay_split}) for "gradient_boosting" (LightGBM) and "logistic_regression", both on PerItemFeatures;
    ({}, {}) when the training split has a single class."""
    stays = table.drop_duplicates("stay_id")
    y = stays["mortality"].to_numpy(dtype=int)
    split = np.asarray(stay_split)  # aligned with the stays, as train.py holds it
    is_train, is_val, is_test = split == "train", split == "val", split == "test"
    if len(np.unique(y[is_train])) < 2:
        warnings.warn("the training split has a single class: no baseline is fitted")
        return {}, {}
    start = time.perf_counter()
    features = PerItemFeatures().fit(table[table["stay_id"].isin(stays["stay_id"].to_numpy()[is_train])])
    x = features.transform(table)
    described = {"description": FEATURES_DESCRIPTION.format(min_stays=features.min_stays),
                 "n_features": int(x.shape[1]), "n_items": len(features.items_),
                 "n_items_below_min_stays": features.n_rare_items_}
    feature_seconds = time.perf_counter() - start
    described["seconds"] = round(feature_seconds, 2)
    results, probabilities = {}, {}
    for name, fit in (("gradient_boosting", lambda: _fit_boosting(x, y, is_train, is_val, seed)),
                      ("logistic_regression", lambda: _fit_logistic(x, y, is_train, is_val))):
        start = time.perf_counter()
        _, chosen, model = fit()
        p = model.predict_proba(x)[:, 1]
        p_val, p_test = p[is_val], p[is_test]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[name] = {"model": "LightGBM" if name == "gradient_boosting" else "scikit-learn LogisticRegression",
                             "features": described, "chosen": chosen,
                             "val": split_metrics(y[is_val], p_val, "val"),
                             "test": split_metrics(y[is_test], p_test, "test"),
                             "seconds": round(time.perf_counter() - start + feature_seconds, 2)}
        probabilities[name] = p
    return results, probabilities
