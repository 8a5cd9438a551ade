"""The event table of a full-size run (issue 14): 20 million events must fit, so read_event_table reads only the
columns it uses, typed as it reads them (strings as categories, int32 ids), and the embedding step hashes each
distinct text once."""
import numpy as np
import pandas as pd

import event_table
import train
from train_tables import make_event_table


def _wide_table(tmp_path, n_patients=400):
    df = make_event_table(n_patients=n_patients, seed=2, max_events=60)
    is_event = df.event_text.notna()
    df.loc[is_event, "event_text"] = df.loc[is_event, "event_text"] + " #" + (np.arange(is_event.sum()) % 997).astype(str)
    df["note"] = "an extra column a reader must not load " * 3
    path = tmp_path / "events.csv"
    df.to_csv(path, index=False)
    return df, path


def test_table_is_read_typed_and_column_wise(tmp_path):
    df, path = _wide_table(tmp_path)
    t = event_table.read_event_table(path)
    assert "note" not in t.columns
    for col in ("event_type", "event_text", *event_table.STATIC_CATEGORICAL):
        assert isinstance(t[col].dtype, pd.CategoricalDtype), col
    assert t.stay_id.dtype == np.int32 and t.subject_id.dtype == np.int32 and t.hadm_id.dtype == np.int32
    assert pd.api.types.is_datetime64_any_dtype(t.event_time)
    # the values are those of the file
    events = df[df.event_text.notna()].sort_values(["stay_id", "event_time"], kind="mergesort")
    got = t[t.event_text.notna()]
    assert got.event_text.astype(str).tolist() == events.event_text.tolist()
    assert got.stay_id.tolist() == events.stay_id.tolist()


def test_memory_per_event_is_that_of_typed_columns(tmp_path):
    """About 50 bytes per event (ids, times, codes) plus each distinct text once; strings per row took ~10x."""
    df, path = _wide_table(tmp_path)
    t = event_table.read_event_table(path)
    per_event = t.memory_usage(deep=True).sum() / len(t)
    assert per_event < 100, f"{per_event:.0f} bytes per event"


def test_categorical_texts_are_hashed_once_each_with_the_same_result(tmp_path):
    df, path = _wide_table(tmp_path, n_patients=60)
    t = event_table.read_event_table(path)
    texts = t.loc[t.event_type.notna(), "event_text"]
    keys, first, codes = train.distinct_texts(texts)
    plain = train.distinct_texts(texts.astype("string"))
    np.testing.assert_array_equal(keys, plain[0])
    np.testing.assert_array_equal(first, plain[1])
    np.testing.assert_array_equal(codes, plain[2])
