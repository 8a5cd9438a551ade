"""The plain models train.py reports beside its own (metrics.json "baselines", the end-of-run table), on the same
patient split and fitted on the training stays only: logistic regression on TF-IDF of the event texts, and
gradient boosting on event counts, each with the statics.

    results, test_probabilities = fit_baselines(table, stay_split, seed)
"""
import time
import warnings

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from evaluation import split_metrics
from event_table import STATIC_CATEGORICAL, STATIC_NUMERIC, item_of_text, map_distinct, static_frame, static_transformer

LAST_HOURS = 6.0  # the "last hours" bag of the logistic regression: events this close to the prediction time


def _stay_documents(table):
    """Per stay (order of table.stay_id.unique()): all event texts, and those of the last LAST_HOURS hours,
    each event one token (texts joined by a separator the tokenizer splits on)."""
    events = table.loc[table["event_type"].notna(), ["stay_id", "event_text", "relative_time_to_final_event"]]
    stay_ids = table["stay_id"].drop_duplicates()
    whole = events.groupby("stay_id")["event_text"].agg("\x1f".join)
    recent = events[events["relative_time_to_final_event"] <= LAST_HOURS * 60].groupby("stay_id")["event_text"].agg("\x1f".join)
    return (whole.reindex(stay_ids).fillna("").to_numpy(), recent.reindex(stay_ids).fillna("").to_numpy())


def _split_events(doc):
    return [t for t in doc.split("\x1f") if t]


def _count_matrix(stay_rows, n_stays, labels: pd.Series):
    """Sparse [stays, distinct labels] matrix of how many of a stay's events carry each label (a categorical
    Series aligned with `stay_rows`); the column names are the categories."""
    codes = labels.cat.codes.to_numpy()
    keep = codes >= 0
    matrix = sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (stay_rows[keep], codes[keep])),
                               shape=(n_stays, len(labels.cat.categories)))
    matrix.sum_duplicates()
    return matrix, np.asarray(labels.cat.categories.astype(str), dtype=object)


def baseline_features(table):
    """Per-stay inputs of the baselines: a frame with the statics and the two bags of event texts, and a sparse
    matrix of event counts (per event type, per item in the whole window and in the last LAST_HOURS hours)
    with its column names, for the trees. Counted with one sparse matrix per kind instead of pandas crosstabs
    (those loop in Python per stay: minutes at MIMIC-IV scale), and items are found once per distinct text."""
    whole, recent = _stay_documents(table)
    frame = static_frame(table)
    frame["events_all"], frame["events_recent"] = whole, recent
    events = table.loc[table["event_type"].notna()]
    stay_ids = table["stay_id"].drop_duplicates()
    stay_rows = pd.Index(stay_ids).get_indexer(events["stay_id"])
    is_recent = (events["relative_time_to_final_event"] <= LAST_HOURS * 60).to_numpy()
    items = map_distinct(events["event_text"], lambda texts: item_of_text(texts.astype(str)))
    parts = [_count_matrix(stay_rows, len(stay_ids), events["event_type"].astype("category")),
             _count_matrix(stay_rows, len(stay_ids), items),
             _count_matrix(stay_rows[is_recent], len(stay_ids), items[is_recent])]
    names = np.concatenate([prefix + names for prefix, (_, names) in zip(("type=", "item=", "recent_item="), parts)])
    return frame, sparse.hstack([m for m, _ in parts], format="csc"), names


def fit_baselines(table, stay_split, seed=0, max_items=300):
    """Fit the plain models on the training stays, choose their hyper-parameter on validation, score test.

    logistic_tfidf: logistic regression on TF-IDF of the stay's event texts (each distinct text a term) over
    the whole window and over the last LAST_HOURS hours, plus one-hot statics and age; C chosen on val AUROC.
    gradient_boosting: HistGradientBoostingClassifier on event counts (per type, per frequent item in the
    whole window and in the last hours) plus statics; the learning rate chosen on val AUROC.
    Returns {name: {"val": metrics, "test": metrics, "chosen": ..., "seconds": ...}} and the test
    probabilities {name: array} (for the figures)."""
    stays = table.drop_duplicates("stay_id")
    y = stays["mortality"].to_numpy(dtype=int)
    frame, counts, count_names = baseline_features(table)
    is_train, is_val, is_test = (stay_split == "train"), (stay_split == "val"), (stay_split == "test")
    results, test_probs = {}, {}

    def score(model_of, grid, name, x_train, x_val, x_test, start):
        """`start`: perf_counter() before this model's features were built (its seconds include them)."""
        best = (-np.inf, None, None)
        for value in grid:
            model = model_of(value).fit(x_train, y[is_train])
            val_p = model.predict_proba(x_val)[:, 1]
            auroc = roc_auc_score(y[is_val], val_p) if len(np.unique(y[is_val])) == 2 else -log_loss(y[is_val], val_p, labels=[0, 1])
            if auroc > best[0]:
                best = (auroc, value, model)
        _, value, model = best
        p_val, p_test = model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[name] = {"chosen": value, "val": split_metrics(y[is_val], p_val, "val"),
                             "test": split_metrics(y[is_test], p_test, "test"),
                             "seconds": round(time.perf_counter() - start, 2)}
        test_probs[name] = p_test

    if len(np.unique(y[is_train])) < 2:
        warnings.warn("the training split has a single class: no baseline is fitted")
        return {}, {}

    # The TF-IDF vocabulary and weights are fitted on the training stays once; only C varies over the grid.
    columns = ColumnTransformer([
        ("all", TfidfVectorizer(analyzer=_split_events, min_df=2, sublinear_tf=True, max_features=20000), "events_all"),
        ("recent", TfidfVectorizer(analyzer=_split_events, min_df=2, sublinear_tf=True, max_features=20000), "events_recent"),
        ("static", static_transformer(min_frequency=5, sparse_output=True),
         list(STATIC_CATEGORICAL) + list(STATIC_NUMERIC))])
    start = time.perf_counter()
    x_train = columns.fit_transform(frame[is_train])
    x_val, x_test = columns.transform(frame[is_val]), columns.transform(frame[is_test])
    score(lambda C: LogisticRegression(C=C, max_iter=2000, class_weight=None), (0.03, 0.1, 0.3, 1.0, 3.0),
          "logistic_tfidf", x_train, x_val, x_test, start)

    # The trees see the most frequent count columns of the training stays plus the statics (ordinal codes).
    start = time.perf_counter()
    stays_with = np.asarray((counts[np.flatnonzero(is_train)] > 0).sum(axis=0)).ravel()
    frequent = np.argsort(-stays_with, kind="stable")[:max_items]
    tree_x = pd.DataFrame(counts[:, frequent].toarray(), columns=count_names[frequent])
    is_type = np.array([name.startswith("type=") for name in count_names])
    tree_x["n_events"] = np.asarray(counts[:, is_type].sum(axis=1)).ravel()
    for c in STATIC_CATEGORICAL:
        tree_x[c] = pd.Categorical(frame[c].to_numpy())
    for c in STATIC_NUMERIC:
        tree_x[c] = frame[c].to_numpy()
    tree_x.columns = [str(c) for c in tree_x.columns]

    def boosting(lr):
        return HistGradientBoostingClassifier(learning_rate=lr, max_iter=300, early_stopping=True,
                                              validation_fraction=0.15, categorical_features="from_dtype",
                                              random_state=seed)

    score(boosting, (0.03, 0.1), "gradient_boosting", tree_x[is_train], tree_x[is_val], tree_x[is_test], start)
    return results, test_probs
