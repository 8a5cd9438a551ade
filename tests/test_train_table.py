"""train.py: event table validation (docs/interfaces.md section 1), patient split, preprocessor."""
import numpy as np
import pandas as pd
import pytest
import torch

import event_table
import train
from train_tables import make_event_table


@pytest.fixture()
def table_df():
    return make_event_table(n_patients=30, seed=1)


def write(df, tmp_path, name="events.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_reads_csv_gz_and_parquet_sorted_with_empty_stays(table_df, tmp_path):
    shuffled = table_df.sample(frac=1.0, random_state=0)
    a = event_table.read_event_table(write(shuffled, tmp_path, "t.csv.gz"))
    b = event_table.read_event_table(write(table_df, tmp_path, "t.csv"))
    table_df.to_parquet(tmp_path / "t.parquet")
    c = event_table.read_event_table(tmp_path / "t.parquet")
    for t in (a, b, c):
        assert t["stay_id"].is_monotonic_increasing
        for _, g in t.groupby("stay_id"):
            assert g["event_time"].dropna().is_monotonic_increasing
        assert len(t) == len(table_df)
        assert pd.api.types.is_datetime64_any_dtype(t["event_time"])
    empty = table_df.loc[table_df.event_type.isna(), "stay_id"]
    assert len(empty) > 0 and a.loc[a.stay_id.isin(empty), "event_type"].isna().all()
    pd.testing.assert_frame_equal(a[["stay_id", "event_text"]], b[["stay_id", "event_text"]])


def first_event_row(df):
    return df.index[df.event_type.notna()][0]


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["insurance"]), "insurance"),
    (lambda df: df.assign(mortality=df.mortality.where(df.index != 3, 2)), "mortality"),
    (lambda df: df.assign(mortality=df.mortality.astype(float).where(df.index != 3, np.nan)), "mortality"),
    (lambda df: df.assign(gender=df.gender.where(df.index != first_event_row(df), "X")), "gender"),
    (lambda df: df.assign(event_time=df.event_time.where(df.index != first_event_row(df), "not a time")), "event_time"),
    (lambda df: df.assign(relative_time_to_final_event=df.relative_time_to_final_event.where(
        df.index != first_event_row(df), -5.0)), "relative_time_to_final_event"),
    (lambda df: df.assign(relative_time_to_final_event=df.relative_time_to_final_event.where(
        df.index != first_event_row(df), np.nan)), "relative_time_to_final_event"),
    (lambda df: df.assign(event_type=df.event_type.where(df.index != first_event_row(df), "radiology")), "radiology"),
    (lambda df: df.assign(event_text=df.event_text.where(df.index != first_event_row(df), "   ")), "event_text"),
    (lambda df: df.assign(subject_id=df.subject_id.where(df.index != first_event_row(df), 1)), "more than one subject_id"),
])
def test_bad_input_gives_clear_error(table_df, tmp_path, mutate, message):
    path = write(mutate(table_df.copy()), tmp_path)
    with pytest.raises(event_table.EventTableError) as e:
        event_table.read_event_table(path)
    text = str(e.value)
    assert message in text and str(path) in text
    if message != "insurance":
        assert "stay_id" in text  # names a stay


def test_empty_file_and_header_only(tmp_path, table_df):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(event_table.EventTableError, match="empty"):
        event_table.read_event_table(tmp_path / "empty.csv")
    table_df.head(0).to_csv(tmp_path / "header.csv", index=False)
    with pytest.raises(event_table.EventTableError, match="no rows"):
        event_table.read_event_table(tmp_path / "header.csv")


def test_non_utf8_bytes_are_replaced_with_a_warning(table_df, tmp_path):
    path = write(table_df, tmp_path)
    data = path.read_bytes().replace(b"Heparin", b"Hep\xe9rin", 1)
    path.write_bytes(data)
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        t = event_table.read_event_table(path)
    assert t["event_text"].str.contains("Hep\ufffdrin").any()


def test_split_is_by_patient_deterministic_and_70_15_15(table_df, tmp_path):
    t = event_table.read_event_table(write(make_event_table(n_patients=200, seed=3), tmp_path))
    s1, s2 = event_table.split_stays_by_patient(t, 7), event_table.split_stays_by_patient(t, 7)
    pd.testing.assert_series_equal(s1, s2)
    assert not s1.equals(event_table.split_stays_by_patient(t, 8))
    stays = t.drop_duplicates("stay_id").set_index("stay_id")
    patient_split = stays.assign(split=s1).groupby("subject_id")["split"].nunique()
    assert (patient_split == 1).all()  # no patient in two splits
    per_patient = stays.assign(split=s1).drop_duplicates("subject_id")["split"].value_counts()
    assert per_patient["train"] == 140 and per_patient["val"] == 30 and per_patient["test"] == 30


def test_split_needs_enough_patients(table_df, tmp_path):
    t = event_table.read_event_table(write(table_df[table_df.subject_id.isin(table_df.subject_id.unique()[:2])], tmp_path))
    with pytest.raises(event_table.EventTableError, match="at least 3"):
        event_table.split_stays_by_patient(t, 0)


def test_preprocessor_fitted_on_train_only_and_roundtrips(table_df, tmp_path):
    df = table_df.copy()
    val_stay = df.stay_id.unique()[-1]
    df.loc[df.stay_id == val_stay, "race"] = "ONLY_IN_VAL"
    df.loc[df.stay_id == val_stay, "patient_age"] = np.nan
    t = event_table.read_event_table(write(df, tmp_path))
    train_rows = t[t.stay_id != val_stay]
    pre = train.EventPreprocessor().fit(train_rows)
    assert not any("ONLY_IN_VAL" in n for n in pre.static_feature_names)
    assert "marital_status=missing" in pre.static_feature_names  # missing values imputed as a category
    static = pre.transform_static(t)
    assert static.shape == (t.stay_id.nunique(), len(pre.static_feature_names)) and static.dtype == np.float32
    row = static[list(t.stay_id.unique()).index(val_stay)]
    race = pre.static_feature_groups["race"]
    assert row[race].sum() == 0  # unknown category ignored
    assert np.isfinite(row).all()  # missing age imputed (median of train)
    assert sorted(i for g in pre.static_feature_groups.values() for i in g) == list(range(static.shape[1]))
    state = pre.state_dict()
    loaded = torch.load(_save(state, tmp_path), weights_only=True)
    again = train.EventPreprocessor.from_state_dict(loaded)
    np.testing.assert_array_equal(again.transform_static(t), static)
    ev = t[t.event_type.notna()]
    for a, b in zip(pre.transform_events(ev), again.transform_events(ev)):
        np.testing.assert_array_equal(a, b)
    ids, log_hours = pre.transform_events(ev)
    assert ids.dtype == np.int64 and log_hours.dtype == np.float32
    hours = pre.hours_from_log_hours(torch.from_numpy(log_hours)).numpy()
    np.testing.assert_allclose(hours, ev.relative_time_to_final_event.to_numpy() / 60, rtol=1e-4, atol=1e-4)
    assert again.static_feature_groups == pre.static_feature_groups


def _save(obj, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(obj, path)
    return path


def test_transform_events_rejects_unknown_types(table_df):
    pre = train.EventPreprocessor()
    rows = pd.DataFrame({"event_type": ["lab", "imaging"], "relative_time_to_final_event": [1.0, 2.0]})
    with pytest.raises(event_table.EventTableError, match="imaging"):
        pre.transform_events(rows)
