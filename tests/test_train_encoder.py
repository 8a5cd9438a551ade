"""train.py: text encoder (local folders only) and the MD5-keyed embedding cache."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import train
from train_tables import cached_vectors

TEXTS = ["Lab: Lactate 4.2 mmol/L (ref 0.5-2.0) abnormal", "Procedure: Arterial Line",
         "Prescription: Vancomycin 1000 mg IV", "Lab: Lactate 4.2 mmol/L (ref 0.5-2.0) abnormal",
         "Microbiology: URINE - NO GROWTH and a somewhat longer free-text comment about the specimen"]


def reference_vectors(folder, texts, pooling="cls"):
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one text at a time: no padding at all
            enc = tok([t], return_tensors="pt", truncation=True, max_length=train.encoder_max_length(folder))
            h = model(**enc).last_hidden_state
            out.append(h[0, 0] if pooling == "cls" else h[0].mean(0))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bert_encoder_matches_unbatched_reference(tiny_bert_dir, pooling):
    enc = train.TextEncoder(tiny_bert_dir, "cpu", pooling=pooling, batch_size=2)
    got = enc.encode(TEXTS)
    assert got.shape == (len(TEXTS), 24) and enc.dim == 24
    np.testing.assert_allclose(got, reference_vectors(tiny_bert_dir, TEXTS, pooling), atol=1e-5)



def test_bfloat16_encoder_is_close_to_float32(tiny_bert_dir):
    """--embed-dtype bfloat16 runs the encoder's weights in bf16: close to, not equal to, float32."""
    exact = train.TextEncoder(tiny_bert_dir, "cpu", batch_size=2).encode(TEXTS)
    enc = train.TextEncoder(tiny_bert_dir, "cpu", batch_size=2, dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    fast = enc.encode(TEXTS)
    assert fast.dtype == np.float32 and not np.array_equal(fast, exact)
    cosine = (fast * exact).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.99

def test_longformer_path_matches_longformer_model(tiny_longformer_dir):
    enc = train.TextEncoder(tiny_longformer_dir, "cpu", batch_size=3)
    assert enc.is_longformer and enc.max_length == 1024
    long_text = "Lab: Lactate 4.2 mmol/L abnormal " * 12  # longer than half the window: the fallback path
    texts = TEXTS + [long_text]
    np.testing.assert_allclose(enc.encode(texts), reference_vectors(tiny_longformer_dir, texts), atol=1e-4)


def test_very_long_text_is_truncated_not_a_crash(tiny_bert_dir):
    enc = train.TextEncoder(tiny_bert_dir, "cpu", max_length=64)
    vec = enc.encode(["x" * 100_000, "Lab: Lactate"])
    assert vec.shape == (2, 24) and np.isfinite(vec).all()


def test_identity_is_stable_and_separates_encoders(tiny_bert_dir, tiny_longformer_dir, tmp_path):
    a = train.encoder_identity(tiny_bert_dir)
    assert a == train.encoder_identity(tiny_bert_dir) and a.startswith("bert-h24-cls-len512-")
    assert a != train.encoder_identity(tiny_bert_dir, pooling="mean")
    assert a != train.encoder_identity(tiny_bert_dir, max_length=128)
    assert a != train.encoder_identity(tiny_longformer_dir)
    import shutil
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "elsewhere")
    assert train.encoder_identity(copy) == a  # content, not path


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(train.TextEncoderError, match="not a Hugging Face model folder"):
        train.resolve_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(train.TextEncoderError, match="not valid JSON"):
        train.encoder_identity(tmp_path)


def test_default_encoder_is_the_packaged_minilm(caplog):
    with caplog.at_level("INFO", logger="train"):
        folder = train.resolve_text_encoder(None)
    if (train.REPO_DIR / "hf_cache" / "clinical_longformer" / "config.json").is_file():
        assert folder.name == "clinical_longformer"
    else:
        assert (folder / "config.json").is_file() and "all-MiniLM-L6-v2" in caplog.text


def test_cache_miss_then_hit_and_texts_mapped(tiny_bert_dir, tmp_path):
    stats = {}
    matrix, rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    assert stats["embedded"] == 4 and stats["from_cache"] == 0 and matrix.shape == (4, 24)
    assert rows.tolist() == [0, 1, 2, 0, 3]
    ref = reference_vectors(tiny_bert_dir, TEXTS)
    np.testing.assert_allclose(matrix[rows].numpy(), ref, atol=2e-3)  # float16 storage
    stats2 = {}
    matrix2, rows2 = train.embed_texts(TEXTS + ["Procedure: Invasive Ventilation"], tiny_bert_dir, tmp_path, stats=stats2)
    assert stats2["embedded"] == 1 and stats2["from_cache"] == 4
    assert torch.equal(matrix2[:4], matrix)  # cached vectors are exactly what was used before
    stats3 = {}
    train.embed_texts(TEXTS, None, tmp_path, identity=stats["identity"], dim=24, stats=stats3)
    assert stats3["embedded"] == 0  # all cached: no encoder folder needed
    with pytest.raises(train.TextEncoderError, match=stats["identity"]):
        train.embed_texts(["never seen"], None, tmp_path, identity=stats["identity"], dim=24)


def test_two_encoders_never_share_vectors(tiny_bert_dir, tiny_longformer_dir, tmp_path):
    s1, s2 = {}, {}
    m1, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=s1)
    m2, _ = train.embed_texts(TEXTS, tiny_longformer_dir, tmp_path, stats=s2)
    assert s2["embedded"] == 4 and s1["identity"] != s2["identity"]
    assert m1.shape[1] == 24 and m2.shape[1] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([s1["identity"], s2["identity"]])


def test_truncated_or_corrupted_shard_is_detected_and_rebuilt(tiny_bert_dir, tmp_path):
    stats = {}
    m1, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    shard, = (tmp_path / stats["identity"]).glob("shard-*.arrow")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])  # truncated
    again = {}
    with pytest.warns(UserWarning, match="truncated or corrupted"):
        m2, _ = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=again)
    assert again["embedded"] == 4 and not shard.exists()
    torch.testing.assert_close(m1, m2)
    shard, = (tmp_path / stats["identity"]).glob("shard-*.arrow")
    flipped = bytearray(shard.read_bytes())
    flipped[-3] ^= 0xFF  # same size, one corrupted byte
    shard.write_bytes(bytes(flipped))
    with pytest.warns(UserWarning, match="checksum"):
        assert cached_vectors(train.EmbeddingCache(tmp_path, stats["identity"], 24).load(), train.text_keys(TEXTS[:1]))[0].sum() == 0



def test_verified_shard_is_not_checksummed_again_until_it_changes(tiny_bert_dir, tmp_path, monkeypatch):
    stats = {}
    train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    checked = []
    real_verify = train.EmbeddingCache._verify
    monkeypatch.setattr(train.EmbeddingCache, "_verify", lambda self, p: checked.append(p.name) or real_verify(self, p))
    cache = lambda: train.EmbeddingCache(tmp_path, stats["identity"], 24).load()
    assert len(cache()) == 4 and checked == []  # its writer hashed it: trusted from verified-shards.json
    (tmp_path / stats["identity"] / "verified-shards.json").unlink()
    assert len(cache()) == 4 and len(checked) == 1  # memo lost: full MD5 once
    assert len(cache()) == 4 and len(checked) == 1  # unchanged: trusted again
    shard, = (tmp_path / stats["identity"]).glob("shard-*.arrow")
    flipped = bytearray(shard.read_bytes())
    flipped[-3] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # a rewrite changes mtime
    with pytest.warns(UserWarning, match="checksum"):
        assert len(cache()) == 0
    assert len(checked) == 2

def test_hidden_size_mismatch_is_a_clear_error(tmp_path):
    train.EmbeddingCache(tmp_path, "some-encoder", 24).append(train.text_keys(["a"]), np.ones((1, 24)))
    with pytest.raises(train.TextEncoderError, match="size 24 .* hidden size 32"):
        cached_vectors(train.EmbeddingCache(tmp_path, "some-encoder", 32), train.text_keys(["a"]))


def test_keys_sharing_their_first_eight_bytes_stay_apart(tmp_path):
    """The cache's hash table uses the first 8 bytes of the MD5; the other 8 are checked on every lookup."""
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 4)
    a, b, c = [[7, 1]], [[7, 2]], [[7, 3]]
    cache.append(np.array(a, dtype=np.uint64), np.full((1, 4), 1.0))
    cache.append(np.array(b, dtype=np.uint64), np.full((1, 4), 2.0))
    found, vectors = cached_vectors(train.EmbeddingCache(tmp_path, "some-encoder", 4), np.array(b + a + c, dtype=np.uint64))
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(vectors[:, 0], [2.0, 1.0, 0.0])
    assert len(train.EmbeddingCache(tmp_path, "some-encoder", 4)) == 2
    train.EmbeddingCache(tmp_path, "some-encoder", 4).append(np.array(a + c, dtype=np.uint64), np.full((2, 4), 3.0))
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 4)
    assert len(cache) == 3  # a again (first copy wins) and c, whose prefix is taken
    np.testing.assert_array_equal(cached_vectors(cache, np.array(a + b + c, dtype=np.uint64))[1][:, 0], [1.0, 2.0, 3.0])


def test_text_keys_are_the_md5_digests_of_the_utf8_texts():
    import hashlib
    keys = train.text_keys(["Lab: Lactate 4.2", "Microbiology: naïve"])
    assert keys.shape == (2, 2) and keys.dtype == np.uint64
    assert keys[1].tobytes() == hashlib.md5("Microbiology: naïve".encode()).digest()
    many = [f"Lab: Glucose {i} mg/dL naïve" for i in range(12_000)]  # enough to be hashed by DuckDB
    expected = b"".join(hashlib.md5(t.encode()).digest() for t in many)
    assert train.text_keys(many).tobytes() == expected
    assert train.text_keys(pd.Series(many, dtype="string")).tobytes() == expected
    with_surrogate = many[:-1] + ["bad \udc80 byte"]  # Arrow refuses it: hashed in Python instead
    assert train.text_keys(with_surrogate)[-1].tobytes() == hashlib.md5("bad \udc80 byte".encode(
        "utf-8", errors="surrogatepass")).digest()


def test_matrix_is_float16_and_model_inputs_are_the_cached_values(tiny_bert_dir, tmp_path):
    matrix, rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path)
    assert matrix.dtype == torch.float16  # half the memory of float32; widened per batch
    found, cached = cached_vectors(train.EmbeddingCache(tmp_path, train.encoder_identity(tiny_bert_dir), 24),
                                   train.text_keys(TEXTS))
    assert found.all()
    np.testing.assert_array_equal(matrix[rows].float().numpy(), cached)


def test_killed_while_embedding_keeps_the_finished_shards(tiny_bert_dir, tmp_path, monkeypatch):
    """New vectors are saved every EMBED_SHARD_TEXTS texts, so a killed embedding run resumes where it stopped."""
    monkeypatch.setattr(train, "EMBED_SHARD_TEXTS", 2)
    real_encode, calls = train.TextEncoder.encode, []

    def encode_then_die(self, texts, progress=None):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while embedding")
        return real_encode(self, texts, progress)

    monkeypatch.setattr(train.TextEncoder, "encode", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.embed_texts(TEXTS, tiny_bert_dir, tmp_path)
    monkeypatch.setattr(train.TextEncoder, "encode", real_encode)
    stats = {}
    matrix, rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    assert stats["from_cache"] == 2 and stats["embedded"] == 2  # the first shard survived the kill
    np.testing.assert_allclose(matrix[rows].float().numpy(), reference_vectors(tiny_bert_dir, TEXTS), atol=2e-3)


def test_old_npy_shards_are_ignored_with_a_warning(tmp_path):
    folder = tmp_path / "some-encoder"
    folder.mkdir()
    np.save(folder / "shard-1-2-abc.npy", np.zeros(3))
    with pytest.warns(UserWarning, match="older train.py cache format"):
        assert len(train.EmbeddingCache(tmp_path, "some-encoder", 4).load()) == 0


def test_distinct_texts_by_md5_with_an_exact_fallback_when_prefixes_collide(monkeypatch):
    texts = pd.Series(["b", "a", "b", "c", "a"], dtype="string")
    keys, first, codes = train.distinct_texts(texts)
    assert first.tolist() == [0, 1, 3] and codes.tolist() == [0, 1, 0, 2, 1]
    np.testing.assert_array_equal(keys, train.text_keys(["b", "a", "c"]))
    fake = np.array([[5, 1], [5, 2], [5, 1], [6, 3], [5, 2]], dtype=np.uint64)  # "a" and "b" share a prefix
    monkeypatch.setattr(train, "text_keys", lambda t: fake)
    keys, first, codes = train.distinct_texts(texts)
    assert first.tolist() == [0, 1, 3] and codes.tolist() == [0, 1, 0, 2, 1]
    assert keys.tolist() == [[5, 1], [5, 2], [6, 3]]
    assert len(train.distinct_texts(pd.Series([], dtype="string"))[2]) == 0


def test_reading_consecutive_and_scattered_rows(tmp_path):
    keys = train.text_keys([f"text {i}" for i in range(5)])
    train.EmbeddingCache(tmp_path, "some-encoder", 3).append(keys, np.arange(15).reshape(5, 3))
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 3)
    for wanted in ([4, 0, 2], [1, 2, 3], [3]):  # rows 0, 2, 4 are gathered; 1-3 copied as one run
        found, vectors = cached_vectors(cache, keys[wanted])
        assert found.all()
        np.testing.assert_array_equal(vectors, np.arange(15).reshape(5, 3)[wanted])


def test_a_table_cached_in_one_shard_is_mapped_not_copied(tiny_bert_dir, tmp_path, monkeypatch):
    first, rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path)
    shard, = (tmp_path / train.encoder_identity(tiny_bert_dir)).glob("shard-*.arrow")
    on_disk = shard.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(train.EmbeddingCache, "read", lambda *a, **k: pytest.fail("copied rows out of the shard"))
        stats = {}
        mapped, mapped_rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    assert stats["from_cache"] == 4 and stats["embedded"] == 0
    torch.testing.assert_close(mapped[mapped_rows], first[rows], rtol=0, atol=0)
    mapped.zero_()  # copy-on-write: the caller's tensor changes, the shard never does
    assert shard.read_bytes() == on_disk
    again, again_rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path)
    torch.testing.assert_close(again[again_rows], first[rows], rtol=0, atol=0)


def test_shard_view_only_when_one_shard_holds_the_keys_and_they_fill_half_of_it(tmp_path):
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 4)
    cache.append(train.text_keys(["a", "b", "c", "d"]), np.arange(16).reshape(4, 4))
    cache.append(train.text_keys(["e"]), np.full((1, 4), 9.0))
    cache = train.EmbeddingCache(tmp_path, "some-encoder", 4)
    vectors, rows = cache.shard_view(train.text_keys(["c", "a"]))
    assert vectors.shape == (4, 4) and rows.tolist() == [2, 0]
    assert vectors[2, 0].item() == 8.0
    assert cache.shard_view(train.text_keys(["a"])) is None        # a quarter of its shard: copied instead
    assert cache.shard_view(train.text_keys(["a", "b", "e"])) is None  # two shards
    assert cache.shard_view(train.text_keys(["a", "b", "zz"])) is None  # not all cached
    assert cache.shard_view(train.text_keys(["e"]))[1].tolist() == [0]


def test_one_run_leaves_one_shard_however_often_it_saved(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "EMBED_SHARD_TEXTS", 1)  # saved after every text while embedding
    saved = []
    real_append = train.EmbeddingCache.append
    monkeypatch.setattr(train.EmbeddingCache, "append", lambda self, k, v: saved.append(len(k)) or real_append(self, k, v))
    matrix, rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path)
    assert saved == [1, 1, 1, 1, 4]  # four saves while embedding, then merged into one shard
    shard, = (tmp_path / train.encoder_identity(tiny_bert_dir)).glob("shard-*.arrow")
    stats = {}
    mapped, mapped_rows = train.embed_texts(TEXTS, tiny_bert_dir, tmp_path, stats=stats)
    assert stats["embedded"] == 0
    torch.testing.assert_close(mapped[mapped_rows], matrix[rows], rtol=0, atol=0)
