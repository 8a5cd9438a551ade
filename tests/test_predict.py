"""predict.py: scoring a table with a trained model, as a command (docs/interfaces.md, "predict.py")."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import event_table
from train_tables import SMALL_MODEL_ARGS, make_event_table, run_train

REPO = Path(__file__).resolve().parents[1]


def run_predict(args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    """A small trained model and its table, which carries extract_cohort.py's prediction_time column."""
    root = tmp_path_factory.mktemp("predict")
    table = make_event_table(n_patients=100, seed=3)
    table["prediction_time"] = (pd.Timestamp("2150-01-03") + pd.to_timedelta(table["stay_id"] % 1000, unit="h")
                                ).dt.strftime("%Y-%m-%d %H:%M:%S")
    data = root / "events.csv"
    table.to_csv(data, index=False)
    out = root / "run"
    result = run_train(["--data", data, "--output-dir", out, "--cache-dir", root / "cache", "--text-encoder",
                        tiny_bert_dir, "--epochs", "2", "--seed", "7", *SMALL_MODEL_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "out": out, "cache": root / "cache", "checkpoint": out / "checkpoints" / "best_model.pth"}


@pytest.mark.slow
def test_on_the_training_table_its_test_split_gives_the_numbers_of_metrics_json(trained, tmp_path):
    output = tmp_path / "test_predictions.csv"
    result = run_predict(["--checkpoint", trained["checkpoint"], "--data", trained["data"], "--output", output,
                          "--split", "test", "--cache-dir", trained["cache"], "--bootstrap", "50"])
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp_path / "test_predictions.metrics.json").read_text())["metrics"]
    theirs = json.loads((trained["out"] / "metrics.json").read_text())["test"]
    for key in ("n_stays", "n_deaths", "auroc", "auprc", "brier", "ece", "ece_equal_mass", "calibration_slope"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-6), key
    assert ours["auroc_ci95"] == pytest.approx(theirs["auroc_ci95"], abs=1e-6)
    predicted = pd.read_csv(output)
    written = pd.read_csv(trained["out"] / "predictions.csv")
    written = written[written.split == "test"].set_index("stay_id").loc[predicted.stay_id]
    assert list(predicted.columns) == ["stay_id", "subject_id", "split", "prediction_time", "probability",
                                       "probability_uncalibrated", "mortality"]
    np.testing.assert_allclose(predicted.probability, written.probability, atol=1e-6)
    np.testing.assert_allclose(predicted.probability_uncalibrated, written.probability_uncalibrated, atol=1e-6)
    assert (predicted.mortality.to_numpy() == written.mortality.to_numpy()).all()


@pytest.mark.slow
def test_meds_format_is_read_and_scored_by_meds_evaluation(trained, tmp_path):
    output = tmp_path / "predictions.parquet"
    result = run_predict(["--checkpoint", trained["checkpoint"], "--data", trained["data"], "--output", output,
                          "--format", "meds", "--cache-dir", trained["cache"], "--bootstrap", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    schema = pq.read_schema(output)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("subject_id", "int64"), ("prediction_time", "timestamp[us]"), ("boolean_value", "bool"),
        ("predicted_boolean_probability", "float"), ("predicted_boolean_value", "bool")]
    frame = pq.read_table(output).to_pandas()
    table = event_table.read_event_table(trained["data"])
    assert len(frame) == table.stay_id.nunique()
    assert (frame.predicted_boolean_value == (frame.predicted_boolean_probability >= 0.5)).all()
    ours = json.loads((tmp_path / "predictions.metrics.json").read_text())["metrics"]

    cli = shutil.which("meds-evaluation-cli", path=str(Path(sys.executable).parent))
    assert cli, "meds-evaluation is pinned in requirements-dev.txt"
    scored = subprocess.run([cli, f"predictions_path={output}", f"output_file={tmp_path / 'meds_eval.json'}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    theirs = json.loads((tmp_path / "meds_eval.json").read_text())["samples_equally_weighted"]
    assert theirs["roc_auc_score"] == pytest.approx(ours["auroc"], abs=1e-6)
    assert theirs["brier_score"] == pytest.approx(ours["brier"], abs=1e-6)


@pytest.mark.slow
def test_what_does_not_fit_is_one_clear_line_and_nothing_is_written(trained, tmp_path, tiny_longformer_dir):
    output = tmp_path / "out.parquet"
    common = ["--checkpoint", trained["checkpoint"], "--cache-dir", trained["cache"]]
    other_encoder = run_predict([*common, "--data", trained["data"], "--output", output,
                                 "--text-encoder", tiny_longformer_dir])
    assert other_encoder.returncode == 2 and "Traceback" not in other_encoder.stderr
    assert "text encoder: checkpoint was trained with encoder identity" in other_encoder.stderr

    no_time = tmp_path / "no_prediction_time.csv"
    pd.read_csv(trained["data"]).drop(columns="prediction_time").to_csv(no_time, index=False)
    meds = run_predict([*common, "--data", no_time, "--output", output, "--format", "meds"])
    assert meds.returncode == 2 and "needs each stay's prediction_time" in meds.stderr

    no_label = tmp_path / "no_label.csv"
    pd.read_csv(trained["data"]).drop(columns="mortality").to_csv(no_label, index=False)
    missing = run_predict([*common, "--data", no_label, "--output", output])
    assert missing.returncode == 2 and "mortality" in missing.stderr and "no_label.csv" in missing.stderr

    assert run_predict([*common, "--data", trained["data"], "--output", tmp_path / "x.txt"]).returncode == 2
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".tmp-*")) == []


@pytest.mark.slow
def test_train_writes_its_test_predictions_in_the_meds_schema_too(trained, tmp_path):
    """A table with prediction_time (extract_cohort.py's, MEDS or SQL): train.py also writes its test split in
    meds-evaluation's schema, the same stays and probabilities as predictions.csv, and meds-evaluation's AUROC is
    metrics.json's."""
    meds = pq.read_table(trained["out"] / "test_predictions_meds.parquet").to_pandas()
    written = pd.read_csv(trained["out"] / "predictions.csv")
    test = written[written.split == "test"]
    assert len(meds) == len(test)
    np.testing.assert_array_equal(meds.subject_id, test.subject_id)
    np.testing.assert_allclose(meds.predicted_boolean_probability, test.probability, atol=1e-6)
    np.testing.assert_array_equal(meds.boolean_value, test.mortality.astype(bool))
    times = pd.read_csv(trained["data"]).drop_duplicates("stay_id").set_index("stay_id")["prediction_time"]
    np.testing.assert_array_equal(meds.prediction_time, pd.to_datetime(times.loc[test.stay_id]).to_numpy())
    cli = shutil.which("meds-evaluation-cli", path=str(Path(sys.executable).parent))
    scored = subprocess.run([cli, f"predictions_path={trained['out'] / 'test_predictions_meds.parquet'}",
                             f"output_file={tmp_path / 'meds_eval.json'}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    theirs = json.loads((tmp_path / "meds_eval.json").read_text())["samples_equally_weighted"]
    ours = json.loads((trained["out"] / "metrics.json").read_text())["test"]
    assert theirs["roc_auc_score"] == pytest.approx(ours["auroc"], abs=1e-6)
