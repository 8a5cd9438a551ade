"""train.py end to end as a command: outputs of docs/interfaces.md section 3, DDP, degenerate data."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import evaluation
import event_table
import figures
import train
from train_tables import SMALL_MODEL_ARGS, make_event_table, run_train

# The tests that train are marked slow (small_run, shared by most, takes ~9 s); the help and bad-table checks
# stay in the quick loop (pytest -m "not slow").


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("cli")
    data = root / "events.csv"
    # 100 patients: 14 validation deaths, enough for Platt scaling (below 10 only an intercept is fitted)
    make_event_table(n_patients=100, seed=0).to_csv(data, index=False)
    out = root / "out"
    result = run_train(["--data", data, "--output-dir", out, "--cache-dir", root / "cache", "--text-encoder",
                        tiny_bert_dir, "--epochs", "3", "--seed", "5", *SMALL_MODEL_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    return data, out, root / "cache", result


def test_help_lists_every_option():
    result = run_train(["--help"])
    assert result.returncode == 0
    for option in ("--data", "--output-dir", "--epochs", "--seed", "--text-encoder", "--resume", "--max-events",
                   "--temporal-loss-weight", "--cache-dir", "--batch-size", "--lr", "--patience"):
        assert option in result.stdout


def test_resume_overlays_the_saved_options_on_the_parsers_defaults():
    """A checkpoint written before an option existed resumes with that option's default; the saved options win
    over the defaults; --device and --output-dir are this command's."""
    parser = train.build_arg_parser()
    args = parser.parse_args(["--resume", "--output-dir", "runs/x", "--device", "cpu"])
    saved = {k: v for k, v in vars(parser.parse_args(["--epochs", "7", "--calibration", "isotonic"])).items()
             if k not in ("baselines", "pos_weight", "embed_only")}  # as if saved before these options existed
    resumed = train.resumed_options(parser, args, saved)
    assert (resumed.epochs, resumed.calibration) == (7, "isotonic")
    assert (resumed.baselines, resumed.pos_weight, resumed.embed_only) == ("all", "balanced", False)
    assert (resumed.resume, resumed.output_dir, resumed.device) == (True, "runs/x", "cpu")


def test_a_run_from_before_attention_dropout_resumes_dropping_out_attention_as_it_did():
    """Before --attention-dropout, --dropout also dropped out the attention weights: such a run resumes so."""
    parser = train.build_arg_parser()
    args = parser.parse_args(["--resume"])
    saved = {k: v for k, v in vars(parser.parse_args(["--dropout", "0.3"])).items() if k != "attention_dropout"}
    assert train.resumed_options(parser, args, saved).attention_dropout == 0.3
    saved_since = vars(parser.parse_args(["--dropout", "0.3", "--attention-dropout", "0"]))
    assert train.resumed_options(parser, args, saved_since).attention_dropout == 0.0


@pytest.mark.parametrize("option", ["--attention-dropout", "--event-dropout", "--ema-decay"])
def test_a_probability_of_one_or_more_is_refused_with_the_options_name(option, capsys):
    parser = train.build_arg_parser()
    with pytest.raises(SystemExit) as exit_info:
        train.check_options(parser, parser.parse_args([option, "1"]))
    assert exit_info.value.code == 2 and f"{option} must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_outputs_of_contract_section_3(small_run, tiny_bert_dir):
    data, out, cache, result = small_run
    table = event_table.read_event_table(data)
    best = train.load_checkpoint(out / "checkpoints" / "best_model.pth")
    latest = torch.load(out / "checkpoints" / "latest_checkpoint.pth", weights_only=True)
    assert latest["finished"] and latest["epoch"] == 3 and "optimizer" in latest and "rng" in latest["ranks"][0]
    assert best["args"]["seed"] == 5 and best["text_encoder"]["dim"] == 24
    assert best["best_val_score"] == max(v for v in latest["history"]["val_auroc"] if v is not None)

    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["stay_id", "subject_id", "split", "probability", "probability_uncalibrated",
                                  "probability_gradient_boosting", "probability_logistic_regression", "mortality"]
    assert sorted(pred.stay_id) == sorted(table.stay_id.unique())
    split = event_table.split_stays_by_patient(table, 5)
    assert (pred.set_index("stay_id")["split"] == split.reindex(pred.stay_id)).all()
    assert pred.probability.between(0, 1).all()

    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("train", "val", "test"):
        m = metrics[name]
        assert {"auroc", "auprc", "brier", "ece", "n_stays", "n_deaths"} <= set(m)
        assert m["n_stays"] == int((pred.split == name).sum()) and m["n_deaths"] == int(pred.mortality[pred.split == name].sum())
    lo, hi = metrics["test"]["auroc_ci95"]
    assert lo <= metrics["test"]["auroc"] <= hi
    from sklearn.metrics import roc_auc_score
    test = pred[pred.split == "test"]
    assert metrics["test"]["auroc"] == pytest.approx(roc_auc_score(test.mortality, test.probability))

    for png in ("loss_curves", "auroc_curve", "roc_curve", "precision_recall_curve", "calibration_curve",
                "attention_heatmap"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = sorted((out / "attention_weights").glob("attention_epoch_*.npz"))
    assert npz and all(re.fullmatch(r"attention_epoch_[1-9]\d*_batch_\d+\.npz", p.name) for p in npz)  # epochs from 1
    # attention_heatmap.png is drawn last from the kept model (its epoch counted from 1, as in the log)
    assert [p.name for p in (out / "attention_weights").glob("attention_kept_model_*.npz")] == [
        f"attention_kept_model_epoch_{best['epoch'] + 1}.npz"]
    a = np.load(npz[0])
    assert a["layer_attention"].shape[0] == 2 and a["layer_attention"].shape[2] == 4
    assert a["pooling_attention"].shape[1:3] == (4, 1)

    # The probabilities are those of the best model, rebuilt the way explain_clinicalLF.py does.
    model, pre, ckpt = train.model_from_checkpoint(best)
    stays, matrix = train.prepare_stays_of_checkpoint(table, ckpt, cache, text_encoder=tiny_bert_dir)
    probs, _ = train.predict(model, stays, matrix, 16)
    by_stay = pred.set_index("stay_id").loc[[s.stay_id for s in stays]]
    np.testing.assert_allclose(probs, by_stay["probability_uncalibrated"], atol=1e-6)
    logits = train.predict_logits(model, stays, matrix, 16)
    np.testing.assert_allclose(evaluation.apply_calibration(ckpt["calibration"], logits), by_stay["probability"], atol=1e-6)
    assert metrics["calibration"]["method"] == "platt" and ckpt["calibration"]["a"] > 0
    # The map is the one fitted on the validation stays' logits (and only on them).
    val = pred[pred.split == "val"]
    refit = evaluation.fit_calibration(np.log(val.probability_uncalibrated / (1 - val.probability_uncalibrated)),
                                       val.mortality, "platt")
    assert refit["a"] == pytest.approx(ckpt["calibration"]["a"], rel=1e-3, abs=1e-4)
    assert refit["b"] == pytest.approx(ckpt["calibration"]["b"], rel=1e-3, abs=1e-4)
    assert metrics["test"]["auroc"] == pytest.approx(roc_auc_score(test.mortality, test.probability_uncalibrated))

    # Baselines, subgroups and the calibration figures of every run.
    assert set(metrics["baselines"]) == {"logistic_regression", "gradient_boosting"}
    for name, b in metrics["baselines"].items():
        assert {"auroc", "auprc", "brier", "ece"} <= set(b["test"]) and b["test"]["n_stays"] == metrics["test"]["n_stays"]
        # predictions.csv carries each baseline's probability: its test AUROC is the one in metrics.json
        assert b["test"]["auroc"] == pytest.approx(roc_auc_score(test.mortality, test[f"probability_{name}"]))
    for key in ("ece_uncalibrated", "brier_uncalibrated", "calibration_slope", "calibration_intercept"):
        assert key in metrics["test"]
    assert set(metrics["subgroups"]) == {"gender", "race", "insurance", "age_band", "first_careunit"}
    assert sum(g["n_stays"] for g in metrics["subgroups"]["gender"].values()) == metrics["test"]["n_stays"]
    assert (out / "plots" / "subgroup_performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradient_boosting" in result.stdout and "model (calibrated)" in result.stdout
    # Epochs are counted from 1 wherever a person reads them; best_epoch stays the 0-based index (docs section 3).
    assert metrics["best_epoch_number"] == metrics["best_epoch"] + 1 == best["epoch"] + 1
    logged = [int(e) for e in re.findall(r"INFO epoch (\d+): train loss", result.stderr)]
    assert logged == list(range(1, metrics["epochs_run"] + 1))
    assert f"the kept model (best_model.pth): epoch {metrics['best_epoch_number']} of {metrics['epochs_run']}" in \
        result.stderr
    assert figures.kept_epoch(latest["history"]) == metrics["best_epoch"]


@pytest.mark.slow
def test_a_stay_without_events_is_predicted_from_its_statics_at_a_sensible_risk(small_run, tiny_bert_dir):
    """Each test stay with its events removed: the model answers from the learned no-events vector and the static
    features, differently for different statics, at a risk between what such stays show in this table (few of
    its stays without events die) and the training death rate, within a factor 1.6 either way; an all-zero
    pooled vector gave twice the base rate on the sample."""
    data, out, cache, _ = small_run
    table = event_table.read_event_table(data)
    model, _, ckpt = train.model_from_checkpoint(train.load_checkpoint(out / "checkpoints" / "best_model.pth"))
    assert model.pool.no_events.abs().sum() > 0  # learned (it starts at zero)
    stays, matrix = train.prepare_stays_of_checkpoint(table, ckpt, cache, text_encoder=tiny_bert_dir)
    empty = torch.zeros(0, dtype=torch.long)
    blank = [train.Stay(s.stay_id, s.subject_id, empty, empty, torch.zeros(0), s.static, s.label, empty, empty,
                        torch.zeros(0), torch.zeros(0)) for s in stays]
    p = evaluation.apply_calibration(ckpt["calibration"], train.predict_logits(model, blank, matrix, 16))
    pred = pd.read_csv(out / "predictions.csv")
    train_stays = pred[pred.split == "train"]
    base_rate = train_stays.mortality.mean()
    n_events = table.groupby("stay_id")["event_type"].count()
    empty_rate = train_stays[train_stays.stay_id.map(n_events) == 0].mortality.mean()
    low, high = sorted((empty_rate, base_rate))
    assert low / 1.6 < p.mean() < high * 1.6, (p.mean(), empty_rate, base_rate)
    assert p.std() > 0  # the statics still count


@pytest.mark.slow
def test_second_run_embeds_nothing(small_run, tiny_bert_dir, tmp_path):
    data, out, cache, _ = small_run
    result = run_train(["--data", data, "--output-dir", tmp_path, "--cache-dir", cache, "--text-encoder",
                        tiny_bert_dir, "--epochs", "1", *SMALL_MODEL_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["data"]["embedded"] == 0
    assert "found in the embedding cache" in result.stderr


@pytest.mark.slow
def test_ddp_two_gloo_processes(small_run, tiny_bert_dir, tmp_path):
    data, single_out, cache, _ = small_run
    result = run_train(["--data", data, "--output-dir", tmp_path, "--cache-dir", cache, "--text-encoder",
                        tiny_bert_dir, "--epochs", "2", "--seed", "5", *SMALL_MODEL_ARGS],
                       launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    latest = torch.load(tmp_path / "checkpoints" / "latest_checkpoint.pth", weights_only=True)
    single = torch.load(single_out / "checkpoints" / "latest_checkpoint.pth", weights_only=True)
    # each rank took half of the batches: 2 epochs x ceil(batches / 2) steps per rank
    steps_single_epoch = single["global_step"] // 3
    assert latest["global_step"] == 2 * -(-steps_single_epoch // 2)
    assert len(latest["history"]["val_auroc"]) == 2
    assert len(latest["ranks"]) == 2  # every rank's RNG state, for --resume
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "metrics.json").is_file()


@pytest.mark.slow
def test_single_class_and_max_events(tmp_path, tiny_bert_dir):
    df = make_event_table(n_patients=24, seed=4).assign(mortality=0)
    df.to_csv(tmp_path / "alive.csv", index=False)
    result = run_train(["--data", tmp_path / "alive.csv", "--output-dir", tmp_path / "out", "--cache-dir",
                        tmp_path / "cache", "--text-encoder", tiny_bert_dir, "--epochs", "1", "--max-events", "3",
                        "--baselines", "none", *SMALL_MODEL_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "single class" in result.stderr and "AUROC" in result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["baselines"] == {} and "baselines_seconds" not in metrics["data"]
    assert not any(c.startswith("probability_") and c != "probability_uncalibrated"
                   for c in pd.read_csv(tmp_path / "out" / "predictions.csv").columns)
    assert metrics["calibration"]["method"] == "none"  # one class in validation: nothing to fit
    assert all(g["auroc"] is None and "single class" in g["reason"] for g in metrics["subgroups"]["gender"].values()
               if g["n_stays"] >= evaluation.MIN_SUBGROUP_STAYS)
    assert re.search(r"\d+ of \d+ stays have more than --max-events=3 events", result.stderr)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["test"]["auroc"] is None and metrics["test"]["brier"] is not None
    assert metrics["data"]["n_stays_cut_to_max_events"] > 0


def test_bad_table_is_one_clear_line_not_a_crash_dump(tmp_path, tiny_bert_dir):
    df = make_event_table(n_patients=10, seed=4)
    df.loc[df.event_type.notna().idxmax(), "event_type"] = "radiology"
    df.to_csv(tmp_path / "bad.csv", index=False)
    result = run_train(["--data", tmp_path / "bad.csv", "--output-dir", tmp_path / "out",
                        "--text-encoder", tiny_bert_dir])
    assert result.returncode != 0
    assert "radiology" in result.stderr and "bad.csv" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_out_of_memory_says_what_to_do(small_run, tiny_bert_dir, tmp_path, monkeypatch):
    data, _, cache, _ = small_run

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train.MortalityTransformer, "forward", oom)
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(data), "--output-dir", str(tmp_path), "--cache-dir", str(cache),
                    "--text-encoder", str(tiny_bert_dir), "--epochs", "1", *SMALL_MODEL_ARGS])
    assert "out of memory" in str(e.value) and "--max-events" in str(e.value) and "--resume" in str(e.value)


@pytest.mark.slow
def test_every_output_column_key_and_figure_is_in_the_interfaces_document(small_run):
    from interfaces_doc import undocumented
    _, out, _, _ = small_run
    names = set(pd.read_csv(out / "predictions.csv").columns)
    names |= {p.name for p in (out / "plots").glob("*.png")}
    metrics = json.loads((out / "metrics.json").read_text())
    names |= set(metrics)
    for section in ("train", "val", "test", "calibration", "baselines", "subgroups", "data"):
        names |= set(metrics[section])
    for baseline in metrics["baselines"].values():
        names |= set(baseline)
    for groups in metrics["subgroups"].values():
        for group in groups.values():
            names |= set(group)
    for checkpoint in ("best_model.pth", "latest_checkpoint.pth"):
        names |= set(torch.load(out / "checkpoints" / checkpoint, weights_only=True))
    assert undocumented(names) == []


@pytest.mark.slow
def test_with_ema_decay_the_moving_average_is_validated_and_kept(tmp_path, tiny_bert_dir):
    """--ema-decay: best_model.pth holds the moving average of the weights (one epoch, so it is the best), the
    resumable checkpoint the training weights beside the average, which differ from them."""
    data = tmp_path / "events.csv"
    make_event_table(n_patients=40, seed=1).to_csv(data, index=False)
    out = tmp_path / "out"
    result = run_train(["--data", data, "--output-dir", out, "--cache-dir", tmp_path / "cache", "--text-encoder",
                        tiny_bert_dir, "--epochs", "1", "--ema-decay", "0.5", *SMALL_MODEL_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    best = train.load_checkpoint(out / "checkpoints" / "best_model.pth")
    latest = train.load_checkpoint(out / "checkpoints" / "latest_checkpoint.pth")
    average = {k.removeprefix("module."): v for k, v in latest["ema_state"].items() if k.startswith("module.")}
    assert int(latest["ema_state"]["n_averaged"]) == latest["global_step"] > 1
    assert average.keys() == best["model_state"].keys()
    for k, v in best["model_state"].items():
        assert torch.equal(v, average[k]), k
    assert not all(torch.equal(v, latest["model_state"][k]) for k, v in best["model_state"].items())


@pytest.mark.slow
def test_event_dropout_changes_training_and_is_saved_with_the_run(tmp_path, tiny_bert_dir):
    """--event-dropout reaches the training step: the same seed trains other weights with it than without, and the
    checkpoint records it (so --resume continues with it)."""
    data = tmp_path / "events.csv"
    make_event_table(n_patients=40, seed=1).to_csv(data, index=False)
    weights = {}
    for p in ("0", "0.5"):
        out = tmp_path / f"out{p}"
        result = run_train(["--data", data, "--output-dir", out, "--cache-dir", tmp_path / "cache", "--text-encoder",
                            tiny_bert_dir, "--epochs", "1", "--event-dropout", p, *SMALL_MODEL_ARGS])
        assert result.returncode == 0, result.stderr[-3000:]
        latest = train.load_checkpoint(out / "checkpoints" / "latest_checkpoint.pth")
        assert latest["args"]["event_dropout"] == float(p)
        weights[p] = latest["model_state"]
    assert not all(torch.equal(v, weights["0.5"][k]) for k, v in weights["0"].items())
