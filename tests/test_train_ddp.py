"""DDP under torchrun's environment (issue 14): 2 gloo processes started as torchrun starts them
(tests/ddp_ranks.py), with patches that make the faults of a full-size run happen at test scale."""
import hashlib
import time

import pytest
import torch

import train
from ddp_ranks import run_ranks
from train_tables import SMALL_MODEL_ARGS, make_event_table

pytestmark = pytest.mark.slow

EMBED_SECONDS, DDP_TIMEOUT = 10.0, 5.0
SCRIPTED_VAL_AUROC = {0: [0.6, 0.7, 0.8], 1: [0.9, 0.5, 0.4]}  # with --patience 1, rank 1 alone would stop after epoch 1


def _full_size_faults(train, rank, result_dir):
    """Rank 0 embeds for longer than --ddp-timeout (millions of texts at MIMIC-IV scale); each rank sees its own
    validation AUROC (as GPUs' non-bit-identical sums can give); each rank records its random state when its
    first training batch is made (the dropout masks of that batch are drawn from it)."""
    encode = train.TextEncoder.encode

    def slow_encode(self, texts, progress=None):
        time.sleep(EMBED_SECONDS)
        return encode(self, texts, progress)

    train.TextEncoder.encode = slow_encode
    import evaluation
    metrics, calls = evaluation.split_metrics, []

    def scripted(y, p, name, *args, **kwargs):
        out = metrics(y, p, name, *args, **kwargs)
        if name == "val":
            calls.append(name)
            out["auroc"] = SCRIPTED_VAL_AUROC[rank][min(len(calls), 3) - 1]
        return out

    evaluation.split_metrics = scripted
    collate = train.collate_stays

    def recording_collate(stays):
        path = result_dir / f"rng{rank}.txt"
        if not path.exists():
            path.write_text(hashlib.md5(torch.get_rng_state().numpy().tobytes()).hexdigest())
        return collate(stays)

    train.collate_stays = recording_collate


@pytest.fixture(scope="module")
def ddp_cold_run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("ddp")
    data = root / "events.csv"
    make_event_table(n_patients=60, seed=0).to_csv(data, index=False)
    argv = ["--data", data, "--output-dir", root / "out", "--cache-dir", root / "cache", "--text-encoder", tiny_bert_dir,
            "--epochs", "3", "--patience", "1", "--ddp-timeout", DDP_TIMEOUT, *SMALL_MODEL_ARGS, "--attention-every", "0"]
    outcomes = run_ranks(argv, root / "ranks", patch=_full_size_faults, deadline_s=150)
    return root, outcomes


def test_cold_cache_embedding_longer_than_the_ddp_timeout_trains_to_the_end(ddp_cold_run):
    root, outcomes = ddp_cold_run
    for rank, outcome in outcomes.items():
        assert outcome["ok"], (rank, outcome)
    assert outcomes[1]["seconds"] > EMBED_SECONDS > DDP_TIMEOUT  # rank 1 did wait for rank 0's embedding
    assert "embedding 10 new unique text(s)" in outcomes[0]["stderr"]
    assert (root / "out" / "metrics.json").is_file() and (root / "out" / "predictions.csv").is_file()


def test_early_stopping_is_decided_once_for_all_ranks(ddp_cold_run):
    root, outcomes = ddp_cold_run
    assert all(o["ok"] for o in outcomes.values()), outcomes
    latest = torch.load(root / "out" / "checkpoints" / "latest_checkpoint.pth", weights_only=True)
    assert latest["history"]["val_auroc"] == SCRIPTED_VAL_AUROC[0]  # rank 0's figures, all 3 epochs
    assert latest["finished"] and latest["epoch"] == 3


def test_each_rank_draws_its_own_dropout_masks(ddp_cold_run):
    root, outcomes = ddp_cold_run
    states = [(root / "ranks" / f"rng{rank}.txt").read_text() for rank in (0, 1)]
    assert states[0] != states[1]
    latest = torch.load(root / "out" / "checkpoints" / "latest_checkpoint.pth", weights_only=True)
    assert len(latest["ranks"]) == 2  # and each rank's state is kept for --resume


def test_resume_with_another_number_of_processes_is_refused(ddp_cold_run, tiny_bert_dir):
    root, _ = ddp_cold_run
    with pytest.raises(train.CheckpointError, match=r"trained by 2 process\(es\) but is resumed by 1.*nproc_per_node=2"):
        train.main(["--resume", "--output-dir", str(root / "out")])


def test_a_killed_rank_ends_the_others_with_a_clear_message(tmp_path, tiny_bert_dir):
    data = tmp_path / "events.csv"
    make_event_table(n_patients=60, seed=0).to_csv(data, index=False)
    argv = ["--data", data, "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--text-encoder",
            tiny_bert_dir, "--epochs", "2", "--ddp-timeout", "20", *SMALL_MODEL_ARGS, "--attention-every", "0"]
    outcomes = run_ranks(argv, tmp_path / "ranks", env={1: {"TRAIN_FAULT_KILL_AFTER_BATCHES": "2"}}, deadline_s=120)
    assert outcomes[1]["exitcode"] == -9  # SIGKILL, as by the kernel's OOM killer
    assert not outcomes[0]["hung"] and outcomes[0].get("exit_code") == 3, outcomes[0]
    line = outcomes[0]["stderr"].strip().splitlines()[-1]
    assert line.startswith("train.py: error: rank 0: a collective operation") and "--resume" in line
    assert "Traceback" not in outcomes[0]["stderr"]
