"""Baselines, calibration, patient bootstrap and subgroup metrics of a training run (issue 11): baselines.py,
evaluation.py, and the preprocessor of train.py."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

import baselines
import evaluation
import event_table
import train
from train_tables import make_event_table


@pytest.fixture(scope="module")
def table_and_split(tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "events.csv"
    make_event_table(n_patients=120, seed=3).to_csv(path, index=False)
    table = event_table.read_event_table(path)
    split = event_table.split_stays_by_patient(table, 0)
    return table, table.drop_duplicates("stay_id")["stay_id"].map(split).to_numpy()


def test_baselines_never_see_test_labels(table_and_split):
    table, stay_split = table_and_split
    results, probs = baselines.fit_baselines(table, stay_split, seed=0)
    assert set(results) == {"logistic_regression", "gradient_boosting"}
    # Flip every test stay's label: a baseline fitted (or tuned) on test rows would change its predictions.
    test_stays = table.drop_duplicates("stay_id").loc[stay_split == "test", "stay_id"]
    flipped = table.copy()
    hit = flipped["stay_id"].isin(test_stays)
    flipped.loc[hit, "mortality"] = 1 - flipped.loc[hit, "mortality"]
    results2, probs2 = baselines.fit_baselines(flipped, stay_split, seed=0)
    for name in results:
        np.testing.assert_allclose(probs[name], probs2[name])
        assert results[name]["chosen"] == results2[name]["chosen"]
        assert results2[name]["test"]["auroc"] == pytest.approx(1 - results[name]["test"]["auroc"])
    # The planted risk is learnable: the baselines beat chance on the test stays.
    assert results["logistic_regression"]["test"]["auroc"] > 0.6 and results["gradient_boosting"]["test"]["auroc"] > 0.6
    assert results["gradient_boosting"]["features"]["n_items"] > 0


def test_per_item_features_equal_a_direct_pandas_computation(table_and_split):
    """Every feature of every stay, recomputed here with plain pandas from the table's rows."""
    table, stay_split = table_and_split
    stays = table.drop_duplicates("stay_id")
    train_rows = table[table["stay_id"].isin(stays["stay_id"][stay_split == "train"])]
    features = baselines.PerItemFeatures(min_stays=3).fit(train_rows)
    x = features.transform(table).toarray()
    column = {name: i for i, name in enumerate(features.feature_names_)}
    events = table[table["event_type"].notna()].copy()
    events["item"] = events["event_text"].astype(str).str.replace(r"\d+(?:\.\d+)?", "#", regex=True)
    events["value"] = pd.to_numeric(events["event_text"].astype(str).str.extract(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w])",
                                                                                   expand=False))
    events["hours"] = events["relative_time_to_final_event"] / 60
    # the vocabulary: items in >= 3 training stays
    in_train = events[events["stay_id"].isin(train_rows["stay_id"])]
    expected_items = sorted(i for i, n in in_train.groupby("item")["stay_id"].nunique().items() if n >= 3)
    assert list(features.items_) == expected_items
    checked = 0
    for row, stay in enumerate(stays["stay_id"]):
        mine = events[events["stay_id"] == stay]
        assert x[row, column["n_events"]] == len(mine)
        for item, group in mine.groupby("item"):
            if item not in expected_items:
                continue
            key = f"item={item}/"
            assert x[row, column[key + "count"]] == len(group)
            assert x[row, column[key + "count_last_6h"]] == (group["hours"] <= 6).sum()
            assert x[row, column[key + "count_last_24h"]] == (group["hours"] <= 24).sum()
            assert x[row, column[key + "hours_since_last"]] == pytest.approx(group["hours"].min())
            values = group["value"].dropna()
            if len(values):
                assert x[row, column[key + "last"]] == pytest.approx(values.iloc[-1])  # rows are in time order
                assert x[row, column[key + "min"]] == pytest.approx(values.min())
                assert x[row, column[key + "max"]] == pytest.approx(values.max())
                assert x[row, column[key + "mean"]] == pytest.approx(values.mean())
                checked += 1
    assert checked > 50
    # An item absent from the training stays gets no column; one of the test stays' rows cannot add columns.
    assert x.shape[1] == len(features.feature_names_)


def test_equal_mass_ece_and_the_paired_bootstrap_equal_a_direct_computation():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.2).astype(int)
    p = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.15, 300), 0.001, 0.999)
    # equal mass: 10 bins of 30 stays in order of p
    order = np.argsort(p, kind="stable")
    direct = sum(abs(p[b].mean() - y[b].mean()) * len(b) / 300 for b in np.array_split(order, 10))
    assert evaluation.expected_calibration_error(y, p, strategy="equal_mass") == pytest.approx(direct)
    # paired bootstrap: the same patient resamples for both models, differences taken per resample
    other = np.clip(p + rng.normal(0, 0.2, 300), 0.001, 0.999)
    subjects = np.repeat(np.arange(150), 2)
    truth = np.clip(p + rng.normal(0, 0.05, 300), 0.001, 0.999)
    got = evaluation.paired_comparison(y, p, other, subjects, 200, 7, p_ceiling=truth)
    diffs, ratios = [], []
    for idx in evaluation.patient_bootstrap(subjects, 200, 7):
        if 0 < y[idx].sum() < len(idx):
            diffs.append(roc_auc_score(y[idx], p[idx]) - roc_auc_score(y[idx], other[idx]))
            ratios.append(roc_auc_score(y[idx], p[idx]) / roc_auc_score(y[idx], truth[idx]))
    assert got["auroc_difference"] == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, other))
    assert got["auroc_difference_ci95"] == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])))
    assert got["auroc_ratio_to_ceiling_ci95"] == pytest.approx(list(np.percentile(ratios, [2.5, 97.5])))
    assert got["bootstrap_resamples"] == len(diffs)


def test_model_plus_baseline_weights_the_model_by_validation_only_and_sees_what_it_adds():
    """Deaths from two independent signals: a baseline that reads one and a model that reads the other (the blend
    must beat the baseline, with a weight chosen on validation), or a model that reads nothing (weight ~0)."""
    rng = np.random.default_rng(2)
    n = 3000
    seen_by_baseline, seen_by_model = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + seen_by_baseline + seen_by_model)))).astype(int)
    split = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    subjects = np.arange(n) // 2
    p_baseline = 1 / (1 + np.exp(-(seen_by_baseline + rng.normal(0, 0.3, n))))
    model_logits = 3 * seen_by_model + 1  # scale and shift do not matter: both are standardised on validation
    got = evaluation.model_plus_baseline(y, model_logits, p_baseline, split, subjects, 200, 0, "gradient_boosting")
    val, test = split == "val", split == "test"
    z = [(v - v[val].mean()) / v[val].std() for v in (model_logits, np.log(p_baseline / (1 - p_baseline)))]
    direct = [roc_auc_score(y[val], w * z[0][val] + (1 - w) * z[1][val]) for w in evaluation.BLEND_WEIGHTS]
    w = evaluation.BLEND_WEIGHTS[int(np.argmax(direct))]
    assert got["weight_on_model"] == pytest.approx(w) and 0.3 <= w <= 0.7
    blend = w * z[0] + (1 - w) * z[1]
    assert got["test_auroc"] == pytest.approx(roc_auc_score(y[test], blend[test]))
    assert got["minus_baseline"]["auroc_difference_ci95"][0] > 0.05  # the model's signal is one the baseline lacks
    # test labels play no part in the weight
    flipped = np.where(test, 1 - y, y)
    assert evaluation.model_plus_baseline(flipped, model_logits, p_baseline, split, subjects, 50, 0,
                                          "gradient_boosting")["weight_on_model"] == got["weight_on_model"]
    # a model of noise earns (almost) no weight and adds nothing
    noise = evaluation.model_plus_baseline(y, rng.normal(size=n), p_baseline, split, subjects, 200, 0, "gradient_boosting")
    assert noise["weight_on_model"] <= 0.1 and noise["minus_baseline"]["auroc_difference_ci95"][0] <= 0
    line = evaluation.summary_table({"test": {"n_stays": 1, "n_deaths": 1, "auroc": 0.5, "auprc": 0.5, "brier": 0.1,
                                              "ece": 0.1}, "model_plus_baseline": got})
    assert got["better_on_test"] == "model + gradient_boosting (AUROC difference interval above 0)"
    assert "model + gradient_boosting" in line and got["better_on_test"] in line
    assert noise["better_on_test"].startswith("neither")


def test_calibration_with_a_handful_of_validation_deaths_fits_only_an_intercept():
    """The demo's case: 11 validation stays, 1 death, raw probabilities 0.49-0.51. Platt scaling would stretch them
    to 0-1; the guard fits only an intercept, so the ranking and spread stay and the mean matches the death rate."""
    rng = np.random.default_rng(0)
    logits = rng.uniform(-0.04, 0.04, 11)
    y = np.zeros(11)
    y[np.argmax(logits)] = 1
    with pytest.warns(UserWarning, match="1 death"):
        cal = evaluation.fit_calibration(logits, y, "platt")
    assert cal["method"] == "intercept" and cal["requested"] == "platt"
    p = evaluation.apply_calibration(cal, logits)
    assert p.max() - p.min() < 0.02 and p.mean() == pytest.approx(1 / 11, abs=0.01)


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_calibration_is_monotone_and_fitted_on_what_it_is_given(method):
    rng = np.random.default_rng(0)
    val_logits = rng.normal(0, 2, 400)
    val_y = (rng.random(400) < 1 / (1 + np.exp(-(0.5 * val_logits - 1.5)))).astype(int)
    cal = evaluation.fit_calibration(val_logits, val_y, method)
    assert cal["method"] == method and all(isinstance(v, (str, float, list)) for v in cal.values())
    test_logits = np.sort(rng.normal(0, 3, 300))
    p = evaluation.apply_calibration(cal, test_logits)
    assert np.all(np.diff(p) >= 0) and np.all((p >= 0) & (p <= 1))  # monotone: the ranking is kept
    test_y = (rng.random(300) < 1 / (1 + np.exp(-test_logits))).astype(int)
    if method != "isotonic":  # strictly increasing: AUROC unchanged
        assert np.all(np.diff(p) > 0)
        assert roc_auc_score(test_y, p) == pytest.approx(roc_auc_score(test_y, test_logits))
    # Fitted on the validation logits: Platt and isotonic reproduce the validation death rate (temperature
    # scaling has no intercept: it only improves the likelihood over sigmoid(logit)).
    calibrated = evaluation.apply_calibration(cal, val_logits)
    if method == "temperature":
        assert log_loss(val_y, calibrated) < log_loss(val_y, 1 / (1 + np.exp(-val_logits)))
    else:
        assert calibrated.mean() == pytest.approx(val_y.mean(), abs=0.03)
    if method == "platt":  # the true map is 0.5 * logit - 1.5
        assert cal["a"] == pytest.approx(0.5, abs=0.2) and cal["b"] == pytest.approx(-1.5, abs=0.4)


def test_patient_bootstrap_draws_a_patients_stays_together():
    subjects = np.array([7, 7, 7, 3, 5, 5, 9, 1, 1, 4])
    seen_partial = False
    for idx in evaluation.patient_bootstrap(subjects, 200, seed=1):
        counts = np.bincount(idx, minlength=len(subjects))
        for s in np.unique(subjects):
            stays_of_patient = counts[subjects == s]
            assert (stays_of_patient == stays_of_patient[0]).all()  # all of them, the same number of times
        seen_partial |= (counts == 0).any()
        assert len(np.unique(subjects[idx])) <= len(np.unique(subjects))
    assert seen_partial  # it does resample (some patients are left out of some draws)
    ci = evaluation.bootstrap_intervals(np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0.]), np.linspace(0, 1, 10), subjects, 100, 0)
    assert ci["bootstrap_unit"] == "patient" and ci["auroc_ci95"][0] <= ci["auroc_ci95"][1]


def test_subgroup_metrics_equal_sklearn_on_the_group_rows_and_one_class_is_null():
    rng = np.random.default_rng(0)
    n = 300
    stays = pd.DataFrame({"gender": rng.choice(["F", "M"], n), "race": rng.choice(
        ["WHITE - RUSSIAN", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN - CHINESE", "UNKNOWN", "OTHER"], n),
        "insurance": rng.choice(["Medicare", "Medicaid", "Other"], n), "patient_age": rng.uniform(18, 95, n),
        "first_careunit": rng.choice(["MICU", "SICU", "CCU"], n)})
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, n), 0.01, 0.99)
    y[stays["first_careunit"].to_numpy() == "CCU"] = 0  # a group with one class
    subjects = np.arange(n) // 2
    attributes = evaluation.subgroup_attributes(stays)
    assert set(attributes["race"]) == {"WHITE", "BLACK", "HISPANIC/LATINO", "ASIAN", "UNKNOWN", "OTHER"}
    assert set(attributes["age_band"]) <= {"18-44", "45-64", "65-79", "80+"}
    out = evaluation.subgroup_metrics(attributes, y, p, subjects, bootstrap=50, seed=0)
    female = attributes["gender"].to_numpy() == "F"
    g = out["gender"]["F"]
    assert g["n_stays"] == female.sum() and g["n_deaths"] == y[female].sum()
    assert g["auroc"] == pytest.approx(roc_auc_score(y[female], p[female]))
    assert g["auprc"] == pytest.approx(average_precision_score(y[female], p[female]))
    assert g["ece"] == pytest.approx(evaluation.expected_calibration_error(y[female], p[female]))
    assert g["auroc_ci95"][0] <= g["auroc"] <= g["auroc_ci95"][1]
    ccu = out["first_careunit"]["CCU"]
    assert ccu["auroc"] is None and ccu["auprc"] is None and "single class" in ccu["reason"]


def test_items_and_values_parse_the_number_of_each_event(table_and_split):
    tmp_events = table_and_split[0]
    texts = pd.Series(["Lab: Lactate 6.2 mmol/L (ref 0.5-2) abnormal", "Lab: Lactate 1.2 mmol/L (ref 0.5-2)",
                       "Lab: pCO2 41 mm Hg (ref 35-45)", "Procedure: Invasive Ventilation",
                       "Lab: Lactate 1.9 mmol/L (ref 0.5-2)"])
    items, values = event_table.items_and_values(texts)
    assert items.tolist()[:4] == ["Lab: Lactate # mmol/L (ref #-#) abnormal", "Lab: Lactate # mmol/L (ref #-#)",
                                  "Lab: pCO# # mm Hg (ref #-#)", "Procedure: Invasive Ventilation"]
    assert values.tolist()[:3] == [6.2, 1.2, 41.0] and np.isnan(values[3])
    # A categorical column (read_event_table's) is parsed through its categories, with the same result.
    categorical = pd.Series(pd.Categorical(texts, categories=[*reversed(texts.unique()), "Input: unused 5 mL"]))
    for ours, theirs in zip(event_table.items_and_values(categorical), (items, values)):
        pd.testing.assert_series_equal(ours, theirs)
    table = pd.DataFrame({"event_type": ["lab"] * 5, "event_text": texts})
    pre = train.EventPreprocessor().fit_items(table, min_count=2)
    assert pre.items == ["Lab: Lactate # mmol/L (ref #-#)"]  # the only item seen twice
    ids, z, has_value = pre.transform_items(table)
    assert ids.tolist() == [0, 1, 0, 0, 1]  # 0: not a frequent training item
    assert z[1] == pytest.approx(-z[4]) and z[1] < 0 and z[0] == 0  # standardised per item; none for others
    assert has_value.tolist() == [False, True, False, False, True]
    # The vocabulary and the statistics travel in the checkpoint's preprocessor state.
    full = train.EventPreprocessor().fit(tmp_events)
    full.items, full.item_value_mean, full.item_value_std = pre.items, pre.item_value_mean, pre.item_value_std
    again = train.EventPreprocessor.from_state_dict(full.state_dict())
    np.testing.assert_array_equal(again.transform_items(table)[0], ids)
    np.testing.assert_allclose(again.transform_items(table)[1], z)


def test_value_changes_follow_each_items_previous_value_within_a_stay():
    stays = np.array([1, 1, 1, 1, 1, 2, 2])
    items = np.array([3, 3, 4, 3, 0, 3, 3])      # item 0: not a frequent item
    values = np.array([1.0, 2.5, 0.7, 1.5, 0.0, 9.0, 8.0], dtype=np.float32)
    has = np.array([True, True, True, True, False, True, True])
    has[2] = False                               # an event of item 4 without a number
    changes = train.changes_from_previous_value(stays, items, values, has)
    # stay 1, item 3: 1.0 -> 2.5 -> 1.5; stay 2 starts afresh (its first value has no change)
    np.testing.assert_allclose(changes, [0.0, 1.5, 0.0, -1.0, 0.0, 0.0, -1.0])
    # --trajectory-from first: the change from the item's first number in the stay (its baseline)
    from_first = train.changes_from_previous_value(stays, items, values, has, reference="first")
    np.testing.assert_allclose(from_first, [0.0, 1.5, 0.0, 0.5, 0.0, 0.0, -1.0])


def test_item_summaries_sit_on_each_items_latest_event_and_equal_a_direct_computation():
    stays = np.array([1, 1, 1, 1, 1, 2, 2, 2])
    items = np.array([3, 3, 4, 3, 0, 3, 3, 4])   # item 0: not a frequent item
    values = np.array([1.0, 2.5, 0.7, 1.5, 0.0, 9.0, 8.0, 0.0], dtype=np.float32)
    has = np.array([True, True, False, True, False, True, True, False])
    got = train.item_summaries(stays, items, values, has)
    expected = np.zeros((8, train.ITEM_SUMMARY_WIDTH), dtype=np.float32)
    expected[3] = [1, np.log1p(3), 1.0, 2.5, (1.0 + 2.5 + 1.5) / 3]  # stay 1, item 3's latest
    expected[2] = [1, np.log1p(1), 0, 0, 0]                          # an item whose events carry no number
    expected[6] = [1, np.log1p(2), 8.0, 9.0, 8.5]
    expected[7] = [1, np.log1p(1), 0, 0, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_model_reading_item_summaries_runs_on_a_batch_cut_to_its_first_stays(tmp_path):
    """save_attention cuts a batch to its first stays' longest length: the [B, L, width] summaries are cut with the
    [B, L] inputs (a shorter first stay once broke this)."""
    import torch
    config = train.ModelConfig(text_dim=4, n_static=2, d_model=8, n_heads=2, pool_heads=2, n_items=3, item_dim=2,
                               value_channel=True, item_summary=True)
    model = train.MortalityTransformer(config)

    def stay(n):
        items = torch.arange(n) % 3 + 1
        return train.Stay(n, n, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.zeros(n),
                          torch.zeros(2), 0.0, torch.arange(n), items, torch.ones(n), torch.zeros(n),
                          torch.from_numpy(train.item_summaries(np.zeros(n), items.numpy(), np.ones(n, np.float32),
                                                                np.ones(n, bool))))
    batch = train.collate_stays([stay(2), stay(5)])
    assert batch["item_summary"].shape == (2, 5, train.ITEM_SUMMARY_WIDTH)
    path = train.save_attention(model, batch, torch.zeros(1, 4, dtype=torch.float16), 1, tmp_path / "a.npz")
    assert np.load(path)["pooling_attention"].shape[-1] == 2


def test_text_input_item_gives_events_of_one_item_one_text_vector(tmp_path, tiny_bert_dir):
    """--text-input item: the vector read is that of the text without its numbers, so 'Lactate 2.1' and
    'Lactate 4.0' share one (their numbers come through the value channel); 'event' embeds each text."""
    table = make_event_table(n_patients=4, seed=0, empty_every=1000)
    table.loc[:1, "event_text"] = ["Lab: Lactate 2.1 mmol/L", "Lab: Lactate 4.0 mmol/L"]
    table.loc[:1, "event_type"] = "lab"
    path = tmp_path / "events.csv"
    table.to_csv(path, index=False)
    table = event_table.read_event_table(path)
    pre = train.EventPreprocessor().fit(table)
    encoder = train.EncoderSpec.of_folder(tiny_bert_dir)
    rows = {}
    for mode in ("event", "item"):
        stays, matrix = train.prepare_stays(table, pre, encoder, tmp_path / "cache", text_input=mode)
        first = [s for s in stays if s.stay_id == table.stay_id.iloc[0]][0]
        lactate = first.event_row_index.tolist().index(0), first.event_row_index.tolist().index(1)
        rows[mode] = [int(first.text_rows[i]) for i in lactate], len(matrix)
    assert rows["event"][0][0] != rows["event"][0][1] and rows["item"][0][0] == rows["item"][0][1]
    assert rows["item"][1] < rows["event"][1]  # fewer distinct texts to embed
