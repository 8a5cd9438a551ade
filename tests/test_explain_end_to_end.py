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
                                            cache_dir=trained["cache"], show_progress=False)
    assert FIGURES <= set(result["paths"])
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
