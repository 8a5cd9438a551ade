"""Reliability of train.py (issue 6): killed runs resume to the same result, concurrent cache writers,
untrusted checkpoints, half-written files."""
import hashlib
import json
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest
import torch

import event_table
import train
from train_tables import SMALL_MODEL_ARGS, cached_vectors, make_event_table, run_train


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_model(tmp_path, tiny_bert_dir):
    data = tmp_path / "events.csv"
    make_event_table(n_patients=60, seed=0).to_csv(data, index=False)
    common = ["--data", data, "--cache-dir", tmp_path / "cache", "--text-encoder", tiny_bert_dir,
              "--epochs", "3", "--seed", "11", "--ema-decay", "0.9", "--item-values", "on", *SMALL_MODEL_ARGS]
    full = run_train([*common, "--output-dir", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-3000:]

    # 65 training stays / 16 = 5 batches per epoch; checkpoint every 4 batches. The 10th batch is the
    # last of epoch 1: killed right after it, the newest checkpoint is the mid-epoch one after batch 4.
    killed = run_train([*common, "--output-dir", tmp_path / "killed"], env_extra={"TRAIN_FAULT_KILL_AFTER_BATCHES": "10"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    latest = train.load_checkpoint(tmp_path / "killed" / "checkpoints" / "latest_checkpoint.pth")
    assert (latest["epoch"], latest["batch_in_epoch"]) == (1, 4) and not latest["finished"]
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = run_train(["--resume", "--output-dir", tmp_path / "killed"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert a[split] == b[split]
    best_a = torch.load(tmp_path / "full" / "checkpoints" / "best_model.pth", weights_only=True)
    best_b = torch.load(tmp_path / "killed" / "checkpoints" / "best_model.pth", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    for k, v in best_a["model_state"].items():
        assert torch.equal(v, best_b["model_state"][k]), k
    assert (tmp_path / "full" / "predictions.csv").read_text() == (tmp_path / "killed" / "predictions.csv").read_text()

    # Resuming against a table that changed since is refused with a clear message.
    make_event_table(n_patients=61, seed=0).to_csv(data, index=False)
    changed = run_train(["--resume", "--output-dir", tmp_path / "killed"])
    assert changed.returncode == 2 and "other data" in changed.stderr and "Traceback" not in changed.stderr


def _append_many(cache_dir, worker, n_shards, queue):
    cache = train.EmbeddingCache(cache_dir, "enc-x", 8)
    for i in range(n_shards):
        texts = [f"shared text {i}", f"text {worker}-{i}-a", f"text {worker}-{i}-b"]
        vectors = np.array([[hash_vec(t)] * 8 for t in texts], dtype=np.float32)
        cache.append(train.text_keys(texts), vectors)
        cached_vectors(cache, train.text_keys(texts[:1]))  # read while the other process writes
    queue.put(worker)


def hash_vec(text):
    return (int(hashlib.md5(text.encode()).hexdigest()[:4], 16) % 1000) / 100.0


def test_two_processes_appending_to_the_cache_at_once(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_append_many, args=(tmp_path, w, 25, queue)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no shard may look corrupted
        cache = train.EmbeddingCache(tmp_path, "enc-x", 8).load()
    texts = [f"shared text {i}" for i in range(25)] + [f"text {w}-{i}-{s}" for w in range(2) for i in range(25) for s in "ab"]
    found, vectors = cached_vectors(cache, train.text_keys(texts))
    assert found.all() and len(cache) == len(texts)
    expected = np.array([[hash_vec(t)] * 8 for t in texts], dtype=np.float16).astype(np.float32)
    np.testing.assert_array_equal(vectors, expected)
    assert not list(tmp_path.glob("enc-x/.tmp-*"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format_version": 1, "model_state": _RunsCode(marker)}, path)
    with pytest.raises(train.CheckpointError, match="weights_only=True") as e:
        train.load_checkpoint(path)
    assert str(path) in str(e.value)
    assert not marker.exists()  # nothing ran
    # The file really is dangerous: an unsafe load runs the command.
    control = tmp_path / "control"
    torch.save({"x": _RunsCode(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_not_a_checkpoint_and_older_format(tmp_path):
    (tmp_path / "notes.pth").write_text("this is text")
    with pytest.raises(train.CheckpointError, match="notes.pth"):
        train.load_checkpoint(tmp_path / "notes.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(train.CheckpointError, match="not a checkpoint of this project"):
        train.load_checkpoint(tmp_path / "other.pth")
    torch.save({"model_state": {}, "format_version": 0}, tmp_path / "old.pth")
    with pytest.raises(train.CheckpointError, match="format_version 0"):
        train.load_checkpoint(tmp_path / "old.pth")
    with pytest.raises(train.CheckpointError, match="no such checkpoint"):
        train.load_checkpoint(tmp_path / "missing.pth")


def test_killed_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "latest_checkpoint.pth"
    old = {"format_version": train.CHECKPOINT_FORMAT_VERSION, "model_state": {"w": torch.ones(3)},
           "model_config": {}, "preprocessor": {}, "text_encoder": {}, "args": {}}
    train.save_checkpoint(path, old)

    def die(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(train.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {**old, "model_state": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(train.load_checkpoint(path)["model_state"]["w"], torch.ones(3))


def test_checkpoint_from_before_the_input_event_type_is_a_clear_error(tmp_path):
    """A format-2 checkpoint (five event types, no `input`) is refused by name, not by a shape error later."""
    assert event_table.EVENT_TYPES.index("input") >= 0 and train.CHECKPOINT_FORMAT_VERSION >= 3
    config = train.ModelConfig(text_dim=8, n_static=3, n_event_types=5, d_model=16, n_layers=1, n_heads=2,
                               d_ff=16, pool_heads=2)
    old = {"format_version": 2, "model_config": train.asdict(config),
           "model_state": train.MortalityTransformer(config).state_dict(), "preprocessor": {},
           "text_encoder": {}, "args": {}}
    torch.save(old, tmp_path / "v2.pth")
    with pytest.raises(train.CheckpointError, match=r"v2\.pth: checkpoint format_version 2.*event type `input`"
                                                    r".*retrain with this version"):
        train.load_checkpoint(tmp_path / "v2.pth")
    assert train.ModelConfig(text_dim=8, n_static=3).n_event_types == len(event_table.EVENT_TYPES) == 8


def test_reliability_weights_from_another_model_version_are_a_clear_error():
    config = train.ModelConfig(text_dim=8, n_static=3, d_model=16, n_layers=1, n_heads=2, d_ff=16, pool_heads=2)
    state = train.MortalityTransformer(config).state_dict()
    state.pop("text_mean")  # as written before the text vectors were standardised inside the model
    ckpt = {"format_version": train.CHECKPOINT_FORMAT_VERSION, "model_config": train.asdict(config),
            "model_state": state, "preprocessor": {}, "text_encoder": {}, "args": {}}
    with pytest.raises(train.CheckpointError, match="text_mean.*retrain with this version"):
        train.model_from_checkpoint(ckpt)


def test_reliability_killed_while_appending_to_the_cache_leaves_a_usable_cache(tmp_path, monkeypatch):
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 8)
    cache.append(train.text_keys(["old"]), np.full((1, 8), 0.5))

    def die(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(train.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        cache.append(train.text_keys(["new"]), np.ones((1, 8)))
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the half-written temporary file is not a shard, and nothing looks corrupted
        found, vectors = cached_vectors(train.EmbeddingCache(tmp_path, "some-encoder", 8),
            train.text_keys(["old", "new"]))
    assert found.tolist() == [True, False]  # the new text is simply embedded again next time
    np.testing.assert_array_equal(vectors[0], np.full(8, 0.5, dtype=np.float32))
