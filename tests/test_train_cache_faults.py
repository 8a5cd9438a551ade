"""Embedding cache at full scale (issue 14): vectors of another precision kept apart, a shard set aside only
when proven corrupt (never deleted), and a merge that streams instead of holding copies of the vectors."""
import errno
import subprocess
import sys

import numpy as np
import pytest

import train
from train_tables import cached_vectors

TEXTS = ["Lab: Lactate 4.2 mmol/L", "Procedure: Intubation", "Prescription: Heparin 5000 UNIT", "Lab: Sodium 140"]


def test_precision_is_part_of_the_cache_identity(tiny_bert_dir, tmp_path):
    float32 = train.encoder_identity(tiny_bert_dir)
    assert train.encoder_identity(tiny_bert_dir, dtype="float32") == float32  # float32 folders keep their name
    assert train.encoder_identity(tiny_bert_dir, dtype="bfloat16") == float32 + "-bf16"
    assert train.resolve_embed_dtype("auto", "cpu") == "float32"
    bf16, fp32 = {}, {}
    m_bf16, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, dtype="bfloat16", stats=bf16)
    m_fp32, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, dtype="float32", stats=fp32)
    assert fp32["embedded"] == 4 and fp32["identity"] != bf16["identity"]  # bf16 vectors were not taken for float32
    assert not np.array_equal(m_bf16.numpy(), m_fp32.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([float32, float32 + "-bf16"])
    again = {}
    train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, dtype="bfloat16", stats=again)
    assert again["embedded"] == 0


def test_checkpoint_of_a_bf16_run_reads_its_own_vectors(tiny_bert_dir, tmp_path):
    """prepare_stays with a checkpoint's encoder info embeds in the checkpoint's precision, not this machine's."""
    info = {"folder": str(tiny_bert_dir), "identity": train.encoder_identity(tiny_bert_dir, dtype="bfloat16"),
            "dim": 24, "pooling": "cls", "max_length": None, "dtype": "bfloat16"}
    stats = {}
    matrix, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, identity=info["identity"], dim=24,
                                  dtype=info["dtype"], stats=stats)
    assert stats["embedded"] == 4 and (tmp_path / info["identity"]).is_dir()


def _one_shard(tiny_bert_dir, tmp_path):
    stats = {}
    train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    shard, = (tmp_path / stats["identity"]).glob("shard-*.arrow")
    return stats["identity"], shard


def test_corrupt_shard_is_moved_to_quarantine_never_deleted(tiny_bert_dir, tmp_path):
    identity, shard = _one_shard(tiny_bert_dir, tmp_path)
    corrupted = bytearray(shard.read_bytes())
    corrupted[-3] ^= 0xFF
    shard.write_bytes(bytes(corrupted))
    with pytest.warns(UserWarning, match=r"corrupted \(its checksum does not match\); moved to .*quarantine"):
        assert len(train.EmbeddingCache(tmp_path, identity, 24).load()) == 0
    kept = tmp_path / identity / "quarantine" / shard.name
    assert not shard.exists() and kept.read_bytes() == bytes(corrupted)
    stats = {}
    train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)  # its texts are embedded again
    assert stats["embedded"] == 4 and kept.exists()


def test_transient_read_error_leaves_the_shard_in_place(tiny_bert_dir, tmp_path, monkeypatch):
    identity, shard = _one_shard(tiny_bert_dir, tmp_path)

    def io_error(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(train.EmbeddingCache, "_open_shard", staticmethod(io_error))
    with pytest.warns(UserWarning, match="could not be read .*left in place"):
        assert len(train.EmbeddingCache(tmp_path, identity, 24).load()) == 0
    monkeypatch.undo()
    assert shard.exists() and not (tmp_path / identity / "quarantine").exists()
    assert len(train.EmbeddingCache(tmp_path, identity, 24).load()) == 4  # the read works again: nothing lost


def test_appending_a_shard_makes_no_copy_of_the_vectors(tmp_path):
    """The final merge of a run writes all its new vectors as one shard: Arrow must stream them from the
    caller's array to the file (before: a converted copy plus the whole file in a memory buffer)."""
    script = f"""
import numpy as np, pyarrow as pa, train
n, dim = 20_000, 384
vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float16)  # 15 MB
keys = train.text_keys([f"text {{i}}" for i in range(n)])
before = pa.default_memory_pool().max_memory()
path = train.EmbeddingCache({str(tmp_path)!r}, "enc", dim).append(keys, vectors)
print(pa.default_memory_pool().max_memory() - before, path.stat().st_size)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=train.REPO_DIR, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    arrow_peak, size = map(int, result.stdout.split())
    assert size > 20_000 * 384 * 2
    assert arrow_peak < 1_000_000, f"Arrow held {arrow_peak / 1e6:.1f} MB while writing a {size / 1e6:.1f} MB shard"


def test_a_run_larger_than_arrows_array_limit_is_saved_as_several_shards(tmp_path, monkeypatch):
    """Arrow cannot write an array of more than 2^31 - 1 values: 3 million texts x 768 is 2.3 billion, so a full
    MIMIC-IV run's merge failed. Here the limit is lowered to 3 vectors to see the split."""
    monkeypatch.setattr(train.EmbeddingCache, "MAX_SHARD_VALUES", 3 * 8)
    cache = train.EmbeddingCache(tmp_path, "enc", 8)
    texts = [f"text {i}" for i in range(7)]
    vectors = np.arange(7 * 8, dtype=np.float16).reshape(7, 8)
    with pytest.raises(ValueError, match="append_all"):
        cache.append(train.text_keys(texts), vectors)
    paths = cache.append_all(train.text_keys(texts), vectors)
    assert len(paths) == 3 and len(set(paths)) == 3
    found, got = cached_vectors(train.EmbeddingCache(tmp_path, "enc", 8), train.text_keys(texts))
    assert found.all() and np.array_equal(got, vectors.astype(np.float32))
