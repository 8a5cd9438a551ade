"""explain_clinicalLF.py through a tiny checkpoint trained by train.py, and its user-facing errors."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import attribution
import explain_clinicalLF as ex
import explanation_sums
import figures
import event_table
import train
from train_tables import RISKY, make_event_table

FIGURES = set(ex.FIGURES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("explain_e2e")
    table = make_event_table(n_patients=40, seed=3, max_events=14)
    table["planted_risk"] = table["event_text"].isin(RISKY).astype(int)  # extra column, as in sample_train.csv
    data = root / "events.csv"
    table.to_csv(data, index=False)
    out = root / "run"
    train.main(["--data", str(data), "--output-dir", str(out), "--epochs", "2", "--text-encoder", str(tiny_bert_dir),
                "--cache-dir", str(root / "cache"), "--d-model", "32", "--n-layers", "2", "--n-heads", "4",
                "--d-ff", "64", "--pool-heads", "2", "--bootstrap", "0", "--max-events", "10", "--device", "cpu"])
    return dict(root=root, data=data, checkpoint=out / "checkpoints" / "best_model.pth", cache=root / "cache",
                table=event_table.read_event_table(data))


@pytest.fixture(scope="module")
def explained(trained):
    table = trained["table"]
    counts = table.groupby("stay_id")["event_type"].count()
    empty_stay, long_stay = int(counts.index[counts == 0][0]), int(counts.idxmax())
    kept, draw = {}, figures.make_all_figures

    def draw_and_keep(collected, *args):  # what the run kept of its batches, for the tests below
        kept["collected"] = collected
        return draw(collected, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "make_all_figures", draw_and_keep)
        result = ex.run_explainability_analysis(
            checkpoint_path=trained["checkpoint"], test_data_path=trained["data"], save_dir=trained["root"] / "explain",
            split="test", max_stays=8, stay_ids=[empty_stay, long_stay], batch_size=4, n_steps=24,
            randomisation_stays=4, cache_dir=trained["cache"], show_progress=False)
    return dict(result=result, collected=kept["collected"], empty_stay=empty_stay, long_stay=long_stay, **trained)


def test_writes_every_output_of_contract_section_4(explained):
    paths = explained["result"]["paths"]
    names = {p.name for p in map(lambda p: p, paths.values())}
    assert FIGURES <= names
    assert not set(ex.DEVELOPER_FIGURES) & names  # --developer-figures only
    # train.py --epochs 2 (fewer batches than --attention-every) still draws the kept model's attention at its end
    assert (explained["root"] / "run" / "plots" / "attention_heatmap.png").is_file()
    assert {"event_attributions.csv", "static_attributions.csv", "faithfulness.json",
            f"timeline_stay_{explained['empty_stay']}.png", f"timeline_stay_{explained['long_stay']}.png"} <= names
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    analyses = explained["result"]["analyses"]
    assert len(analyses["layer_attention_patterns"]) == 2 * 4  # layers x heads of the tiny model
    for method, table in analyses["critical_time_periods"].items():
        assert table["share_of_weight"].sum() == pytest.approx(1.0), method
    assert not list((explained["root"] / "explain").glob(".*tmp"))  # atomic writes leave no temporary file


def test_event_rows_are_the_stays_real_events_per_method(explained):
    rows = pd.read_csv(explained["root"] / "explain" / "event_attributions.csv")
    assert list(rows.columns) == ["stay_id", "event_index", "event_time", "event_type", "event_text",
                                  "relative_time_to_final_event", "method", "attribution"]
    assert set(rows.method) == set(attribution.METHODS)
    table = explained["table"]
    events = table[table.event_type.notna()].copy()
    events["event_index"] = events.groupby("stay_id").cumcount()
    n_events = events.groupby("stay_id").size()
    for (stay, method), part in rows.groupby(["stay_id", "method"]):
        kept = min(int(n_events[stay]), 10)  # --max-events 10 keeps the most recent 10
        assert len(part) == kept, (stay, method)
        assert part.event_index.tolist() == list(range(n_events[stay] - kept, n_events[stay]))
        truth = events[events.stay_id == stay].set_index("event_index").loc[part.event_index]
        assert part.event_text.tolist() == truth.event_text.tolist()
        assert np.allclose(part.relative_time_to_final_event, truth.relative_time_to_final_event)
    assert explained["empty_stay"] not in set(rows.stay_id)
    static = pd.read_csv(explained["root"] / "explain" / "static_attributions.csv")
    empty = static[static.stay_id == explained["empty_stay"]]
    assert set(empty.feature) == set(event_table.STATIC_CATEGORICAL + event_table.STATIC_NUMERIC)
    assert set(empty.method) == {"integrated_gradients", "feature_ablation"}


def test_analyses_and_figures_from_running_sums_equal_those_of_the_whole_tables(explained):
    """The run keeps no attribution table: what the analyses and figures show comes from running sums, a sample
    and the stays they draw. Here the sample holds every event, and each equals the same computation on
    event_attributions.csv and static_attributions.csv read back whole."""
    save_dir = explained["root"] / "explain"
    rows = pd.read_csv(save_dir / "event_attributions.csv")
    static = pd.read_csv(save_dir / "static_attributions.csv")
    collected, analyses = explained["collected"], explained["result"]["analyses"]
    window = pd.cut(rows["relative_time_to_final_event"] / 60, bins=list(explanation_sums.HOUR_WINDOW_EDGES), right=False)
    for method, part in rows.groupby("method"):
        magnitude, windows = part["attribution"].abs(), window[part.index]
        # critical_time_periods: |attribution| per window of hours before the prediction
        expected = magnitude.groupby(windows, observed=False).agg(["count", "mean", "sum"])
        got = analyses["critical_time_periods"][method]
        assert got["window"].tolist() == expected.index.astype(str).tolist()
        np.testing.assert_array_equal(got["n_events"], expected["count"])
        np.testing.assert_allclose(got["mean_weight"], expected["mean"], rtol=1e-9)
        np.testing.assert_allclose(got["share_of_weight"], expected["sum"] / magnitude.sum(), rtol=1e-9)
        # sequence_importance.png: |attribution| / its stay's mean |attribution| (0 where that mean is 0)
        per_stay = magnitude.groupby(part["stay_id"]).transform("mean")
        relative = (magnitude / per_stay.where(per_stay > 0)).fillna(0.0)
        expected = relative.groupby(windows, observed=False).agg(["count", "mean"])
        got = collected.window_importance(method)
        np.testing.assert_array_equal(got["n_events"], expected["count"])
        np.testing.assert_allclose(got["mean_weight"], expected["mean"], rtol=1e-9)
        # captum figures: the largest single-event attributions
        top = part.loc[magnitude.sort_values(ascending=False).index[:explanation_sums.LARGEST_EVENTS]]
        largest = collected.events.largest[method]
        assert sorted(zip(largest.stay_id, largest.event_index)) == sorted(zip(top.stay_id, top.event_index))
        np.testing.assert_array_equal(np.sort(largest["attribution"]), np.sort(top["attribution"]))
    # analyses: mean IG attribution per (event type, window)
    pd.testing.assert_frame_equal(analyses["feature_importance_over_time"], explanation_sums.analyze_feature_importance_over_time(rows),
                                  check_index_type=False, check_column_type=False, rtol=1e-9)
    # feature_importance.png: mean IG attribution per event text; mean (and |.|) per static column and method
    ig = rows[rows["method"] == "integrated_gradients"]
    pd.testing.assert_frame_equal(collected.events.mean_by_text(),
                                  ig.groupby("event_text")["attribution"].agg(["mean", "count"]),
                                  check_index_type=False, rtol=1e-9)
    expected = static.assign(magnitude=static["attribution"].abs()).groupby(["feature", "method"])[
        ["attribution", "magnitude"]].mean()
    pd.testing.assert_frame_equal(collected.static_means(), expected, check_index_type=False, rtol=1e-9)
    # box and scatter plots: the sample is every event, with every method's score
    sample = collected.event_sample()
    assert collected.sample_note() == ""
    wide = rows.pivot_table(index=["stay_id", "event_index"], columns="method", values="attribution")
    got = sample.set_index(["stay_id", "event_index"])[list(attribution.METHODS)].sort_index()
    np.testing.assert_array_equal(got.to_numpy(dtype=float), wide[list(attribution.METHODS)].to_numpy())
    # query_vector_analysis.png: the softmax of a stay's pooling scores, mean over heads, is its attention weight
    heads = [c for c in sample.columns if str(c).startswith("pool_score_")]
    weights = sample.groupby("stay_id")[heads].transform(lambda s: np.exp(s - s.max()) / np.exp(s - s.max()).sum())
    np.testing.assert_allclose(weights.mean(axis=1), sample["attention_pooling"], atol=1e-6)
    # head_specialization.png: events per type
    assert collected.count_by_type == ig["event_type"].value_counts().to_dict()
    # the single-stay figures: the example stay and each --stay-ids stay, whole
    assert set(collected.details) == {explained["empty_stay"], explained["long_stay"]}
    long_stay = rows[(rows.stay_id == explained["long_stay"]) & (rows.method == "integrated_gradients")]
    np.testing.assert_array_equal(collected.details[explained["long_stay"]]["attributions"]["integrated_gradients"],
                                  long_stay["attribution"].to_numpy(dtype=np.float32))
    predictions = explained["result"]["predictions"]
    with_events = predictions[predictions.n_events >= 3]
    assert collected.example["stay_id"] == with_events.loc[with_events.probability.idxmax(), "stay_id"]


def test_ablation_of_an_event_equals_rerunning_the_trained_model_without_it(explained):
    rows = explained["result"]["event_attributions"]
    stay_id = explained["long_stay"]
    model, _, ckpt = train.model_from_checkpoint(train.load_checkpoint(explained["checkpoint"]))
    table = explained["table"]
    stay_rows = table[table.stay_id == stay_id].reset_index(drop=True)
    (stay,), matrix = train.prepare_stays_of_checkpoint(stay_rows, ckpt, explained["cache"])
    fa = rows[(rows.stay_id == stay_id) & (rows.method == "feature_ablation")].attribution.to_numpy()
    with torch.no_grad():
        full = model(*train.batch_inputs(model, train.collate_stays([stay]), matrix))[0][0]
        for j in (0, len(stay.type_ids) // 2, len(stay.type_ids) - 1):
            keep = [i for i in range(len(stay.type_ids)) if i != j]
            without = train.Stay(stay.stay_id, stay.subject_id, stay.text_rows[keep], stay.type_ids[keep],
                                 stay.log_hours[keep], stay.static, stay.label, stay.event_row_index[keep],
                                 stay.item_ids[keep], stay.values[keep])
            rerun = model(*train.batch_inputs(model, train.collate_stays([without]), matrix))[0][0]
            assert fa[j] == pytest.approx(float(full - rerun), abs=1e-5)


def test_faithfulness_json_reports_every_method_and_ig_converges(explained):
    f = json.loads((explained["root"] / "explain" / "faithfulness.json").read_text())
    assert set(f["methods"]) == set(attribution.METHODS)
    for method, entry in f["methods"].items():
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
        assert set(entry["comprehensiveness"]) == {"1%", "5%", "10%", "20%"}
        assert entry["planted_auprc"] is not None and 0 < entry["planted_auprc"] <= 1
        assert entry["randomisation_n_stays"] >= 1
    assert 0 < f["random"]["planted_auprc"] < 1
    assert f["integrated_gradients_convergence"]["relative_delta_max"] < 0.05
    seed = train.load_checkpoint(explained["checkpoint"])["args"]["seed"]
    split = event_table.split_stays_by_patient(explained["table"], seed=seed)
    expected = set(sorted(split.index[split == "test"])[:8]) | {explained["empty_stay"], explained["long_stay"]}
    assert f["data"]["n_stays"] == len(expected)
    assert set(explained["result"]["static_attributions"].stay_id) == expected


def test_mean_baseline_run(trained, tmp_path):
    result = ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path, max_stays=3,
                                            n_steps=8, baseline="mean", randomisation_stays=0,
                                            cache_dir=trained["cache"], make_figures=False, show_progress=False,
                                            return_tables=False)
    assert result["event_attributions"] is None and result["static_attributions"] is None  # not read back
    assert result["faithfulness"]["settings"]["baseline"] == "mean"
    assert result["faithfulness"]["integrated_gradients_convergence"]["relative_delta_max"] < 0.05
    assert (tmp_path / "event_attributions.csv").is_file()


def test_a_batch_of_stays_without_events_is_explained_and_drawn(trained, tmp_path):
    """Length-sorted batches put the stays without events first; a batch of only such stays has static rows
    only, and the figures and analyses come out all the same (the figures failed on it before the running sums)."""
    counts = trained["table"].groupby("stay_id")["event_type"].count()
    empty = [int(s) for s in counts.index[counts == 0]]
    result = ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path, max_stays=2,
                                            stay_ids=empty, batch_size=1, n_steps=8, randomisation_stays=0,
                                            cache_dir=trained["cache"], show_progress=False, developer_figures=True)
    assert FIGURES | set(ex.DEVELOPER_FIGURES) <= set(result["paths"])
    assert set(empty) <= set(result["static_attributions"].stay_id)
    assert result["analyses"]["critical_time_periods"]["integrated_gradients"]["n_events"].sum() == \
        result["predictions"]["n_events"].sum()


def test_unknown_stay_missing_file_and_not_a_checkpoint_are_clear_errors(trained, tmp_path):
    with pytest.raises(ex.ExplainError, match="unknown stay id.*123"):
        ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path, stay_ids=[123],
                                       cache_dir=trained["cache"], show_progress=False)
    with pytest.raises(ex.ExplainError, match="data file not found: .*nope.csv"):
        ex.run_explainability_analysis(trained["checkpoint"], tmp_path / "nope.csv", tmp_path)
    with pytest.raises(ex.ExplainError, match="checkpoint not found"):
        ex.run_explainability_analysis(tmp_path / "none.pth", trained["data"], tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(train.CheckpointError, match="junk.pth"):
        ex.run_explainability_analysis(junk, trained["data"], tmp_path)
    assert ex.main(["--checkpoint", str(junk), "--data", str(trained["data"]), "--save-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.csv"))  # nothing half-written


def test_checkpoint_from_another_encoder_or_feature_set_says_what_differs(trained, tmp_path, tiny_longformer_dir):
    with pytest.raises(train.CheckpointError, match="text encoder: checkpoint was trained with encoder identity"):
        ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path,
                                       text_encoder=tiny_longformer_dir, cache_dir=trained["cache"])
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["preprocessor"]["static_categorical"] = ckpt["preprocessor"]["static_categorical"][:-1]
    other = tmp_path / "other_features.pth"
    torch.save(ckpt, other)
    with pytest.raises(train.CheckpointError, match="static_categorical: checkpoint has .* this train.py uses"):
        ex.run_explainability_analysis(other, trained["data"], tmp_path, cache_dir=trained["cache"])
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["model_state"].pop(next(iter(ckpt["model_state"])))  # weights of another model version
    older = tmp_path / "older_model.pth"
    torch.save(ckpt, older)
    with pytest.raises(train.CheckpointError, match="older_model.pth: its weights do not fit .*Missing key"):
        ex.run_explainability_analysis(older, trained["data"], tmp_path, cache_dir=trained["cache"])


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if unpickled


def test_a_checkpoint_crafted_to_run_code_is_refused_and_nothing_runs(trained, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pth"
    torch.save({"format_version": 1, "model_state": _RunsCodeWhenUnpickled(marker)}, crafted)
    with pytest.raises(train.CheckpointError, match="crafted.pth"):
        ex.run_explainability_analysis(crafted, trained["data"], tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_help_lists_every_option_with_its_default():
    text = ex.build_arg_parser().format_help()
    for option in ("--checkpoint", "--data", "--save-dir", "--split", "--max-stays", "--stay-ids", "--n-steps",
                   "--internal-batch-size", "--baseline", "--batch-size"):
        assert option in text
    assert ex.DEFAULT_CHECKPOINT in text and "(default: test)" in text


def test_stay_ids_of_another_split_are_explained_but_kept_out_of_the_faithfulness_measures(trained, tmp_path):
    table = trained["table"]
    split = event_table.split_stays_by_patient(table, seed=train.load_checkpoint(trained["checkpoint"])["args"]["seed"])
    counts = table.groupby("stay_id")["event_type"].count()
    with_events = counts.index[counts >= 3]
    test_stays = [s for s in sorted(split.index[split == "test"]) if s in with_events][:2]
    other = int(next(s for s in with_events if split[s] == "train"))
    result = ex.run_explainability_analysis(
        trained["checkpoint"], trained["data"], tmp_path, max_stays=0, stay_ids=[other], n_steps=8,
        randomisation_stays=0, cache_dir=trained["cache"], make_figures=False, show_progress=False)
    f = result["faithfulness"]
    n_test_with_events = sum(1 for s in split.index[split == "test"] if counts.get(s, 0) > 0)
    assert len(test_stays) == 2 and other in set(result["event_attributions"].stay_id)
    assert f["data"]["n_stays_outside_split"] == 1
    for method in attribution.METHODS:
        assert f["methods"][method]["n_stays"] == n_test_with_events, method
    n_test = int((split == "test").sum())
    assert f["integrated_gradients_convergence"]["n_stays"] <= n_test  # the other split's stay is not counted


def test_every_output_file_column_and_faithfulness_key_is_in_the_interfaces_document(explained):
    from interfaces_doc import undocumented
    save_dir = explained["root"] / "explain"
    names = {p.name for p in explained["result"]["paths"].values() if not p.name.startswith("timeline_stay_")}
    names |= set(pd.read_csv(save_dir / "event_attributions.csv").columns)
    names |= set(pd.read_csv(save_dir / "static_attributions.csv").columns)
    faithfulness = json.loads((save_dir / "faithfulness.json").read_text())
    names |= set(faithfulness)
    for section in ("methods", "settings", "data", "integrated_gradients_convergence",
                    "layer_integrated_gradients_convergence"):
        names |= set(faithfulness[section])
    for method in faithfulness["methods"].values():
        names |= set(method)
    names |= set(faithfulness["random"])
    for step in faithfulness["randomisation_cascade"]:
        names |= set(step) - {"methods"}
        for scores in step["methods"].values():
            names |= set(scores)
    assert undocumented(names) == []


# -----------------------------------------------------------------------------
# Cohort mode (issue 25): IG and attention on every stay, every method and measure on a seeded audit sample.

@pytest.fixture(scope="module")
def cohort(trained):
    """Every stay of the table in cohort mode, 6 of them audited. The lactate value varies by stay, so that texts
    of different numbers share one item in the cohort summary (the new texts are embedded with the tiny encoder)."""
    table = trained["table"].copy()
    table["event_text"] = table["event_text"].astype(object)
    lactate = table["event_text"].astype(str).str.startswith("Lab: Lactate")
    values = (5 + table.loc[lactate, "stay_id"] % 4).astype(str) + ".1"
    table.loc[lactate, "event_text"] = "Lab: Lactate " + values + " mmol/L (ref 0.5-2.0) abnormal"
    data = trained["root"] / "events_varied.csv"
    table.to_csv(data, index=False)
    kept, draw, bars = {}, figures.make_all_figures, []

    def draw_and_keep(collected, *args):
        kept["collected"] = collected
        return draw(collected, *args)

    class Bar(ex.tqdm):  # the progress bar, as the run builds it
        def __init__(self, *args, **kwargs):
            bars.append(kwargs)
            super().__init__(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "make_all_figures", draw_and_keep)
        patch.setattr(ex, "tqdm", Bar)
        result = ex.run_explainability_analysis(
            trained["checkpoint"], data, trained["root"] / "cohort", split="all", max_stays=0, audit_stays=6,
            batch_size=4, n_steps=8, randomisation_stays=2, cache_dir=trained["cache"], show_progress=False,
            report=False)
    return dict(result=result, collected=kept["collected"], bars=bars, data=data,
                table=event_table.read_event_table(data), save_dir=trained["root"] / "cohort")


def test_cohort_mode_gives_every_stay_ig_with_completeness_and_audits_a_seeded_sample(cohort, trained):
    result, table = cohort["result"], cohort["table"]
    f = result["faithfulness"]
    all_stays = sorted(int(s) for s in table["stay_id"].unique())
    audit = f["audit"]
    assert audit["mode"] == "cohort" and audit["n_stays_audited"] == 6 and audit["n_stays_of_split"] == len(all_stays)
    # the audit is a seeded random sample of the split's stays (the same for the same seed), not the first ones
    expected = sorted(int(s) for s in np.random.default_rng(0).choice(all_stays, size=6, replace=False))
    assert audit["stay_ids"] == expected == sorted(ex.audit_sample(all_stays, 6, seed=0))
    assert audit["stay_ids"] != sorted(ex.audit_sample(all_stays, 6, seed=1))
    assert audit["methods_on_every_stay"] == ["integrated_gradients", "attention_pooling"]
    assert audit["methods_on_audited_stays"] == ["integrated_gradients", "feature_ablation", "attention_pooling"]
    # every stay with events has IG and attention rows; ablation only the audited ones; layer IG none (linear
    # input projection: it would be IG but for the static part)
    rows = pd.read_csv(cohort["save_dir"] / "event_attributions.csv")
    with_events = set(table.loc[table["event_type"].notna(), "stay_id"].astype(int))
    for method in ("integrated_gradients", "attention_pooling"):
        assert set(rows.loc[rows.method == method, "stay_id"]) == with_events
    assert set(rows.loc[rows.method == "feature_ablation", "stay_id"]) == with_events & set(expected)
    assert "layer_integrated_gradients" not in set(rows.method)
    static = pd.read_csv(cohort["save_dir"] / "static_attributions.csv")
    assert set(static.loc[static.method == "integrated_gradients", "stay_id"]) == set(all_stays)
    assert set(static.loc[static.method == "feature_ablation", "stay_id"]) == set(expected)
    # IG's completeness is checked (and refined) on every stay; its steps are counted for every stay
    conv = f["integrated_gradients_convergence"]
    assert sum(conv["steps_used"].values()) == len(all_stays)
    assert conv["share_within_tolerance"] == 1.0 and conv["relative_delta_max"] <= 0.05
    # the faithfulness measures and the per-event convergence are over the audited stays with events
    audited_with_events = len(with_events & set(expected))
    for method in ("integrated_gradients", "feature_ablation", "attention_pooling"):
        entry = f["methods"][method]
        assert entry["n_stays"] == audited_with_events, method
        low, high = entry["deletion_auc_ci95"]
        assert low <= entry["deletion_auc"] <= high
    # the randomisation check ran on the audited stays (the first stays of spread audit batches; the correlations
    # need stays of >= 3 events)
    assert [step["step"] for step in f["randomisation_cascade"]][:2] == ["classifier", "pool"]
    assert "not_run" in f["methods"]["layer_integrated_gradients"]
    assert f["integrated_gradients_per_event_convergence"]["n_stays"] == audited_with_events
    assert f["settings"]["n_steps"] == 8
    timing = result["timing"]
    assert timing["every_method_stays"] == 6 and timing["ig_and_attention_stays"] == len(all_stays) - 6
    # figures: the cohort figure, no layer-IG figure, the example stay is an audited one
    assert "cohort_attributions.png" in result["paths"] and "captum_layer_attributions.png" not in result["paths"]
    assert cohort["collected"].example["stay_id"] in expected
    # progress: one bar over the stays, not the batches
    (bar,) = cohort["bars"]
    assert bar["total"] == len(all_stays) and bar["unit"] == "stay"


def test_probabilities_are_the_calibrated_ones_and_the_uncalibrated_are_named_so(cohort, trained):
    import evaluation
    predictions = cohort["result"]["predictions"]
    calibration = train.load_checkpoint(trained["checkpoint"])["calibration"]
    np.testing.assert_allclose(predictions["probability"],
                               evaluation.apply_calibration(calibration, predictions["logit"]), rtol=1e-12)
    np.testing.assert_allclose(predictions["probability_uncalibrated"], 1 / (1 + np.exp(-predictions["logit"])),
                               rtol=1e-12)
    assert cohort["collected"].example["probability"] == pytest.approx(
        float(predictions.set_index("stay_id").loc[cohort["collected"].example["stay_id"], "probability"]))


def test_cohort_summary_is_the_groupby_of_event_attributions_per_item_and_stay(cohort):
    from scipy.stats import t as student_t
    rows = pd.read_csv(cohort["save_dir"] / "event_attributions.csv")
    ig = rows[rows.method == "integrated_gradients"].assign(item=lambda r: event_table.item_of_text(r.event_text))
    per_stay = ig.groupby(["item", "stay_id"])["attribution"].agg(["sum", "count"]).reset_index()
    by_item = per_stay.groupby("item")
    n_stays = cohort["result"]["predictions"]["stay_id"].nunique()
    expected = pd.DataFrame({"n_stays": by_item.size(), "n_events": by_item["count"].sum(),
                             "mean_attribution": by_item["sum"].mean(),
                             "sd": by_item["sum"].std(ddof=1),
                             "mean_abs_attribution": by_item["sum"].apply(lambda s: s.abs().mean()),
                             "sd_abs": by_item["sum"].apply(lambda s: s.abs().std(ddof=1)),
                             "total_abs": by_item["sum"].apply(lambda s: s.abs().sum())})
    got = pd.read_csv(cohort["save_dir"] / "cohort_attributions.csv")
    assert list(got.columns) == explanation_sums.COHORT_COLUMNS
    # the largest total |attribution| first, then by item
    order = expected.reset_index().sort_values(["total_abs", "item"], ascending=[False, True])["item"].tolist()
    assert got["item"].tolist() == order
    got = got.set_index("item").loc[expected.index]
    assert (got["n_stays"] == expected["n_stays"]).all() and (got["n_events"] == expected["n_events"]).all()
    np.testing.assert_allclose(got["share_of_stays"], expected["n_stays"] / n_stays)
    np.testing.assert_allclose(got["mean_attribution"], expected["mean_attribution"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["mean_abs_attribution"], expected["mean_abs_attribution"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["mean_attribution_over_all_stays"],
                               expected["mean_attribution"] * expected["n_stays"] / n_stays, rtol=1e-6, atol=1e-9)
    half = student_t.ppf(0.975, expected["n_stays"] - 1) * expected["sd"] / np.sqrt(expected["n_stays"])
    np.testing.assert_allclose(got["mean_attribution_ci95_low"], expected["mean_attribution"] - half, rtol=1e-5,
                               atol=1e-7)
    half_abs = student_t.ppf(0.975, expected["n_stays"] - 1) * expected["sd_abs"] / np.sqrt(expected["n_stays"])
    np.testing.assert_allclose(got["mean_abs_attribution_ci95_high"], expected["mean_abs_attribution"] + half_abs,
                               rtol=1e-5, atol=1e-7)
    # the varied lactate texts are one item, in the stays that have one of them
    lactate = "Lab: Lactate # mmol/L (ref #-#) abnormal"
    assert got.loc[lactate, "n_stays"] == ig.loc[ig.event_text.str.startswith("Lab: Lactate"), "stay_id"].nunique()
    assert ig.loc[ig.item == lactate, "event_text"].nunique() > 1
    # texts as plain strings (not the table's categories) give the same sums
    plain = explanation_sums.ItemSums()
    for _, part in ig.drop(columns="item").groupby("stay_id"):
        plain.add(part)
    pd.testing.assert_frame_equal(plain.table(n_stays).set_index("item").loc[expected.index],
                                  got.rename_axis("item"), check_dtype=False, rtol=1e-9)


def test_per_event_convergence_equals_a_direct_computation_on_one_stay(trained, tmp_path):
    """One audited stay, IG without refinement (--ig-tolerance 0): its reported IG is Captum's 8-step
    Gauss-Legendre rule over the whole path, and the per-event convergence compares it with the same rule on the
    path's two halves (16 steps), relative to the stay's largest |IG|."""
    from captum.attr import IntegratedGradients
    table = trained["table"]
    seed = train.load_checkpoint(trained["checkpoint"])["args"]["seed"]
    split = event_table.split_stays_by_patient(table, seed=seed)
    test_stays = sorted(int(s) for s in split.index[split == "test"])
    counts = table.groupby("stay_id")["event_type"].count()
    explain_seed = next(s for s in range(50) if counts[next(iter(ex.audit_sample(test_stays, 1, s)))] >= 3)
    result = ex.run_explainability_analysis(
        trained["checkpoint"], trained["data"], tmp_path, max_stays=0, audit_stays=1, n_steps=8, ig_tolerance=0.0,
        randomisation_stays=0, seed=explain_seed, cache_dir=trained["cache"], make_figures=False, report=False,
        show_progress=False)
    f = result["faithfulness"]
    (stay_id,) = f["audit"]["stay_ids"]
    assert f["audit"]["mode"] == "cohort" and f["integrated_gradients_per_event_convergence"]["n_stays"] == 1
    model, _, ckpt = train.model_from_checkpoint(train.load_checkpoint(trained["checkpoint"]))
    (stay,), matrix = train.prepare_stays_of_checkpoint(table[table.stay_id == stay_id].reset_index(drop=True), ckpt,
                                                         trained["cache"], max_events=10)
    with torch.no_grad():
        events, mask, static = train.batch_inputs(model, train.collate_stays([stay]), matrix)
    ig = IntegratedGradients(attribution.LogitForward(model))

    def piece(a, b):  # IG of the piece of the straight path from zeros between a and b, 8 Gauss-Legendre steps
        attr_events, _ = ig.attribute((b * events, b * static), baselines=(a * events, a * static),
                                      additional_forward_args=(mask,), n_steps=8, method="gausslegendre")
        return attr_events.sum(-1)[0].double()

    reported, doubled = piece(0.0, 1.0), piece(0.0, 0.5) + piece(0.5, 1.0)
    rows = result["event_attributions"]
    ours = rows[(rows.stay_id == stay_id) & (rows.method == "integrated_gradients")]["attribution"].to_numpy()
    np.testing.assert_allclose(ours, reported.numpy(), rtol=1e-4, atol=1e-6)
    direct = float((doubled - reported).abs().max() / reported.abs().max())
    assert direct > 0
    assert f["integrated_gradients_per_event_convergence"]["largest_change_max"] == pytest.approx(direct, rel=1e-3,
                                                                                                   abs=1e-6)


def test_every_method_flag_gives_the_every_method_run_on_any_number_of_stays(trained, tmp_path):
    """--every-method with more stays than --audit-stays writes what the every-method run (few stays) writes: the
    same attribution tables, figures' inputs and faithfulness measures (only the audit's description and the
    per-event convergence, measured on the audit sample, differ)."""
    options = dict(max_stays=5, n_steps=8, randomisation_stays=2, batch_size=2, cache_dir=trained["cache"],
                   make_figures=False, report=False, show_progress=False)
    few = ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path / "few", **options)
    forced = ex.run_explainability_analysis(trained["checkpoint"], trained["data"], tmp_path / "forced",
                                            audit_stays=2, every_method=True, **options)
    assert few["faithfulness"]["audit"]["mode"] == forced["faithfulness"]["audit"]["mode"] == "every_method"
    for name in ("event_attributions.csv", "static_attributions.csv", "cohort_attributions.csv"):
        assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "forced" / name).read_bytes(), name
    assert set(few["event_attributions"]["method"]) == set(attribution.METHODS)
    drop = ("audit", "integrated_gradients_per_event_convergence")
    assert {k: v for k, v in few["faithfulness"].items() if k not in drop} == \
        {k: v for k, v in forced["faithfulness"].items() if k not in drop}
    assert forced["faithfulness"]["integrated_gradients_per_event_convergence"]["n_stays"] <= 2


def test_feature_importance_groups_texts_by_item_keeping_the_sign():
    """feature_importance.png: one row per item (every potassium value together), the events' signed mean."""
    by_text = pd.DataFrame({"mean": [0.2, -0.4, 1.0], "count": [1, 3, 2]},
                           index=pd.Index(["Lab: Potassium 3.5 mEq/L", "Lab: Potassium 5.9 mEq/L", "Procedure: Intubation"],
                                          name="event_text"))
    items = figures.mean_by_item(by_text)
    assert items.loc["Lab: Potassium # mEq/L", "count"] == 4 and items.loc["Lab: Potassium # mEq/L", "n_texts"] == 2
    assert items.loc["Lab: Potassium # mEq/L", "mean"] == pytest.approx((0.2 - 3 * 0.4) / 4)
    assert items.loc["Procedure: Intubation", "mean"] == pytest.approx(1.0)


def test_layer_ig_shares_igs_panel_only_where_it_is_the_same():
    ig = np.array([1.0, -0.5, 0.2])
    assert figures.relative_difference(ig * 1.01, ig) <= figures.FOLD_LAYER_IG
    assert figures.relative_difference(ig[::-1], ig) > figures.FOLD_LAYER_IG
    assert np.isnan(figures.relative_difference(ig, None))
