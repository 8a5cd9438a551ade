"""meds_export.py ("MEDS out"): an event table written as a MEDS dataset reads back (meds_cohort.py, with the
labels) as the same table; the dataset passes the meds package's schema checks; bad input writes nothing."""
import json
import subprocess
import sys
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import event_table
import meds_cohort
import meds_export
from extract_cohort import ExtractionError
from train_tables import make_event_table

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_LABELS = Path("tasks") / "icu_mortality_first_24h.parquet"
COMPARED = ["subject_id", "hadm_id", "stay_id", "event_time", "event_type", "event_text",
            "relative_time_to_final_event", *event_table.STATIC_CATEGORICAL, "patient_age", "mortality"]


def consistent_table(n_patients=40, seed=3) -> pd.DataFrame:
    """make_event_table with what a real extraction has: a prediction_time column (empty stays too), minutes
    that are the times' difference, one gender and one birth year per patient; plus a repeated event, a `vital`
    and an `output` event and a text that MEDS in would rewrite were it not read verbatim (spaces, ___)."""
    t = make_event_table(n_patients=n_patients, seed=seed)
    t["event_time"] = pd.to_datetime(t["event_time"])
    pt = (t["event_time"] + pd.to_timedelta(t["relative_time_to_final_event"], unit="min")) \
        .groupby(t["stay_id"]).transform("max").dt.round("min")
    empty = pt.isna()
    pt[empty] = pd.Timestamp("2140-01-01") + pd.to_timedelta(t.loc[empty, "stay_id"] - 30_000_000, unit="D")
    t["prediction_time"] = pt
    first = t.drop_duplicates("subject_id").set_index("subject_id")
    birth = (first["prediction_time"] - pd.Timedelta(hours=48)).dt.year - first["patient_age"]
    t["gender"] = t["subject_id"].map(first["gender"])
    t["patient_age"] = ((pt - pd.Timedelta(hours=48)).dt.year - t["subject_id"].map(birth)).astype(float)
    event = t[t["event_type"].notna()].iloc[0]
    extra = pd.DataFrame([event, event, event, event])
    extra["event_type"] = [event["event_type"], "vital", "output", "lab"]
    extra["event_text"] = [event["event_text"], "Vital: Heart Rate 88 bpm", "Output: Foley 35 ml",
                           "Lab: Odd  spacing ___ 5.25 x"]
    t = pd.concat([t, extra], ignore_index=True)
    t["relative_time_to_final_event"] = ((t["prediction_time"] - t["event_time"]).dt.total_seconds() / 60).round(2)
    return t


def comparable(table: pd.DataFrame, leave_out=(), with_prediction_time=False) -> pd.DataFrame:
    columns = COMPARED + (["prediction_time"] if with_prediction_time else [])
    t = table.loc[~table["stay_id"].isin(list(leave_out)), columns].copy()
    for col in ("event_type", "event_text", *event_table.STATIC_CATEGORICAL):
        t[col] = t[col].astype(object).fillna("<missing>")
    for col in ("subject_id", "hadm_id", "stay_id"):
        t[col] = t[col].astype("int64")
    for col in ("event_time", "prediction_time") if with_prediction_time else ("event_time",):
        t[col] = pd.to_datetime(t[col]).astype("datetime64[us]")
    return t.sort_values(["stay_id", "event_time", "event_type", "event_text"], na_position="first",
                         ignore_index=True)


def read_back(out_dir: Path, counts: dict, tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "read_back.parquet"
    meds_cohort.import_meds(out_dir, path, labels=counts["labels"], log=None)
    return event_table.read_event_table(path)


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("meds_out") / "sample"
    counts = meds_export.write_meds_dataset(REPO_ROOT / "sample_train.csv", out, log=None)
    return out, counts


# ----------------------------------------------------------------------------- round trips

def test_synthetic_table_round_trips_exactly(tmp_path):
    table = consistent_table()
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    counts = meds_export.write_meds_dataset(path, tmp_path / "meds", log=None)
    assert counts["not_exact"] == {}
    assert counts["stays"] == table["stay_id"].nunique() and counts["events"] == table["event_type"].notna().sum()
    back = read_back(tmp_path / "meds", counts, tmp_path)
    original = event_table.read_event_table(path)
    pd.testing.assert_frame_equal(comparable(back, with_prediction_time=True),
                                  comparable(original, with_prediction_time=True))
    assert back["event_text"].eq("Lab: Odd  spacing ___ 5.25 x").sum() == 1  # verbatim, not re-spaced
    assert {"vital", "output", "ingredient"} <= set(back["event_type"].dropna())


def test_sample_train_round_trips_but_for_the_stays_it_reports(sample_export, tmp_path):
    out, counts = sample_export
    original = event_table.read_event_table(REPO_ROOT / "sample_train.csv")
    empty = set(original.loc[original["event_type"].isna(), "stay_id"])
    # sample_train.csv has no prediction_time: its 9 stays without events have none to predict at; and two
    # stays of one synthetic patient overlap in time (MEDS in gives a label row the latest ICU admission)
    assert counts["not_exact_stay_ids"] == {"stays_without_time": sorted(empty),
                                            "overlapping_windows": [30009730, 30012818]}
    back = read_back(out, counts, tmp_path)
    assert set(back["stay_id"]) & empty == set()
    leave_out = empty | {30009730, 30012818} | set(back["stay_id"][back["stay_id"] >= meds_cohort.SYNTHETIC_ID_START])
    got, want = comparable(back, leave_out), comparable(original, leave_out)
    assert len(want) > 35_000
    pd.testing.assert_frame_equal(got, want)


def test_meds_demo_imports_exports_and_imports_to_the_same_table(meds_demo_dir, tmp_path):
    first = tmp_path / "first.parquet"
    meds_cohort.import_meds(meds_demo_dir, first, labels=meds_demo_dir / DEMO_LABELS, log=None)
    counts = meds_export.write_meds_dataset(first, tmp_path / "meds", observation_hours=24, log=None)
    assert counts["not_exact"] == {} and counts["stays"] == 14
    back = read_back(tmp_path / "meds", counts, tmp_path)
    original = event_table.read_event_table(first)
    pd.testing.assert_frame_equal(comparable(back, with_prediction_time=True),
                                  comparable(original, with_prediction_time=True))
    assert {"vital", "output", "input", "lab", "prescription", "procedure"} <= set(back["event_type"].dropna())


def test_without_labels_the_task_is_not_recomputed(sample_export, tmp_path):
    """The table has no discharge or death times: MEDS in without --labels finds no ICU stay to predict."""
    with pytest.raises(ExtractionError, match="no ICU admission qualifies"):
        meds_cohort.import_meds(sample_export[0], tmp_path / "x.parquet", log=None)


def test_reasons_a_stay_will_not_read_back(tmp_path):
    table = consistent_table(n_patients=30, seed=5)
    stays = table.drop_duplicates("stay_id")
    two = stays[stays["subject_id"].duplicated(keep=False)].iloc[:2].sort_values("prediction_time")
    table.loc[table["stay_id"] == two["stay_id"].iloc[1], "gender"] = "X"  # the patient's later stay
    with_events = stays["stay_id"].isin(table.loc[table["event_type"].notna(), "stay_id"])
    lone = stays[~stays["subject_id"].duplicated(keep=False) & with_events]["stay_id"].to_numpy()
    table.loc[table["stay_id"] == lone[0], "first_careunit"] = "A//B"
    table.loc[table["stay_id"] == lone[1], "patient_age"] += 0.5
    at = table.index[(table["stay_id"] == lone[2]) & table["event_type"].notna()][-1]
    table.loc[at, "event_time"] = table.loc[at, "prediction_time"]
    table.loc[at, "relative_time_to_final_event"] = 0.0
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    counts = meds_export.write_meds_dataset(path, tmp_path / "meds", log=None)
    assert counts["not_exact_stay_ids"] == {"gender": [int(two["stay_id"].iloc[1])],
                                            "static_code_parts": [int(lone[0])], "patient_age": [int(lone[1])],
                                            "events_at_prediction_time": [int(lone[2])]}
    back = read_back(tmp_path / "meds", counts, tmp_path)
    flagged = {i for ids in counts["not_exact_stay_ids"].values() for i in ids}
    original = event_table.read_event_table(path)
    pd.testing.assert_frame_equal(comparable(back, flagged), comparable(original, flagged))
    for stay in flagged:  # and each flagged stay does differ
        assert not comparable(back[back["stay_id"] == stay]).equals(comparable(original[original["stay_id"] == stay]))


# ----------------------------------------------------------------------------- the dataset

def shard_frames(out):
    return {p: pq.read_table(p) for p in sorted((out / meds.data_subdirectory).rglob("*.parquet"))}


def test_the_dataset_passes_the_meds_schema_checks(sample_export):
    out, counts = sample_export
    shards = shard_frames(out)
    assert sorted(str(p) for p in shards) == sorted(counts["shards"])
    seen = set()
    for path, table in shards.items():
        meds.DataSchema.validate(table)
        assert table.schema.field("time").type == meds.DataSchema.time_dtype
        assert table.schema.field("numeric_value").type == meds.DataSchema.numeric_value_dtype
        rows = table.to_pandas()
        subjects = rows["subject_id"]
        assert subjects.is_monotonic_increasing and not (set(subjects) & seen)  # one shard, rows together
        seen |= set(subjects)
        ticks = rows["time"].to_numpy().view(np.int64).copy()
        ticks[rows["time"].isna().to_numpy()] = np.iinfo(np.int64).min  # static rows first, then in time order
        assert (pd.DataFrame({"s": subjects, "t": ticks}).groupby("s")["t"].diff().dropna() >= 0).all()
    codes = pq.read_table(out / meds.code_metadata_filepath)
    meds.CodeMetadataSchema.validate(codes)
    every_code = set().union(*(set(t.column("code").to_pylist()) for t in shards.values()))
    assert set(codes.column("code").to_pylist()) == every_code and codes.num_rows == counts["codes"]
    splits = pq.read_table(out / meds.subject_splits_filepath)
    meds.SubjectSplitSchema.validate(splits)
    assert set(splits.column("subject_id").to_pylist()) == seen
    assert set(splits.column("split").to_pylist()) == {meds.train_split, meds.tuning_split, meds.held_out_split}
    metadata = json.loads((out / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert metadata["meds_version"] == meds.__version__ and metadata["etl_name"] == meds_export.ETL_NAME
    labels = [pq.read_table(p) for p in sorted(Path(counts["labels"]).rglob("*.parquet"))]
    for label in labels:
        meds.LabelSchema.validate(label)
    labels = pd.concat([t.to_pandas() for t in labels])
    assert len(labels) == counts["stays"] == labels[["subject_id", "prediction_time"]].drop_duplicates().shape[0]


def test_shards_and_labels_follow_the_patient_split_of_train_py(sample_export):
    out, _ = sample_export
    table = event_table.read_event_table(REPO_ROOT / "sample_train.csv")
    by_stay = event_table.split_stays_by_patient(table, 42).map(meds_export.SPLIT_NAMES)
    subject_of = table.drop_duplicates("stay_id").set_index("stay_id")["subject_id"]
    per_subject = by_stay.groupby(subject_of.reindex(by_stay.index).to_numpy()).agg(set)
    assert (per_subject.map(len) == 1).all()  # a patient's stays are in one split
    splits = pq.read_table(out / meds.subject_splits_filepath).to_pandas().set_index("subject_id")["split"]
    assert (splits == per_subject.map(lambda s: next(iter(s))).reindex(splits.index)).all()
    for folder in (meds.data_subdirectory, f"{meds_export.LABELS_SUBDIRECTORY}/{meds_export.TASK_NAME}"):
        for path in (out / folder).rglob("*.parquet"):
            subjects = pq.read_table(path, columns=["subject_id"]).column("subject_id").to_pylist()
            assert set(splits.reindex(subjects)) == {path.parent.name}


def test_codes_are_items_and_their_numbers_are_values(sample_export):
    out, _ = sample_export
    rows = pd.concat([t.to_pandas() for t in shard_frames(out).values()])
    events = rows[rows["code"].str.startswith(meds_cohort.EVENT_TABLE_FAMILY + "//")]
    kinds = events["code"].str.split("//").str[1]
    items, values = event_table.items_and_values(events["text_value"])
    assert (events["code"] == meds_cohort.EVENT_TABLE_FAMILY + "//" + kinds + "//" + items).all()
    assert set(kinds) == {"lab", "prescription", "procedure", "microbiology"}
    np.testing.assert_allclose(events["numeric_value"].to_numpy(dtype=float), values.to_numpy(dtype=float),
                               rtol=1e-6)
    assert events["numeric_value"].notna().mean() > 0.5
    assert events["code"].nunique() < events["text_value"].nunique() / 5  # codes are items, not texts
    static = rows.loc[~rows["code"].str.startswith(meds_cohort.EVENT_TABLE_FAMILY + "//"), "code"]
    assert set(static.str.split("//").str[0]) == {"GENDER", meds.birth_code, "HOSPITAL_ADMISSION", "ICU_ADMISSION"}
    assert rows.loc[rows["code"].str.startswith("GENDER//"), "time"].isna().all()  # static rows


# ----------------------------------------------------------------------------- bad input, atomic output

def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_missing_column_is_one_error_and_no_output(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.read_csv(REPO_ROOT / "sample_train.csv", nrows=50).drop(columns="mortality").to_csv(bad, index=False)
    with pytest.raises(meds_export.ExportError, match=r"bad\.csv: required column\(s\) missing: mortality"):
        meds_export.write_meds_dataset(bad, tmp_path / "out", log=None)
    with pytest.raises(meds_export.ExportError, match="lacks required column"):
        meds_export.write_meds_dataset(pd.read_csv(bad), tmp_path / "out", log=None)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "meds_export.py"), "--data", str(bad),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("meds_export.py: error: ") and "mortality" in result.stderr
    assert leftovers(tmp_path) == ["bad.csv"]


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(meds_export.ExportError, match="exists and is not a MEDS dataset written by meds_export"):
        meds_export.write_meds_dataset(REPO_ROOT / "sample_train.csv", mine, log=None)
    assert leftovers(mine) == ["notes.txt"]
    with pytest.raises(meds_export.ExportError, match="does not exist"):
        meds_export.write_meds_dataset(REPO_ROOT / "sample_train.csv", tmp_path / "no" / "out", log=None)


def test_a_failed_export_leaves_nothing_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    table = consistent_table(n_patients=8)
    out = tmp_path / "meds"
    first = meds_export.write_meds_dataset(table, out, log=None)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def fail_on_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return write(*args)

    write = meds_export._write_parquet
    monkeypatch.setattr(meds_export, "_write_parquet", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        meds_export.write_meds_dataset(table, out, log=None)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        meds_export.write_meds_dataset(table, tmp_path / "new", log=None)
    assert leftovers(tmp_path) == ["meds"]
    monkeypatch.undo()
    second = meds_export.write_meds_dataset(table, out, seed=7, log=None)  # an earlier export is replaced
    assert second["meds_rows"] == first["meds_rows"] and leftovers(tmp_path) == ["meds"]


def test_cli_writes_the_dataset(tmp_path):
    out = tmp_path / "meds"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "meds_export.py"), "--data",
                             str(REPO_ROOT / "sample_train.csv"), "--output", str(out), "--subjects-per-shard", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout and f"--labels {out}/labels/{meds_export.TASK_NAME}" in result.stdout
    assert "Will not read back exactly: 9 stays without events" in result.stderr
    assert len(list((out / meds.data_subdirectory / meds.train_split).glob("*.parquet"))) == 3


@pytest.mark.parametrize("code, kind", [
    ("EVENT_TABLE//lab//Lab: Lactate # mmol/L (ref #-#) abnormal", "lab"),
    ("EVENT_TABLE//ingredient//Ingredient: Sodium Chloride #% # mL", "ingredient"),
    ("EVENT_TABLE//item//Lab: Lactate # mmol/L", None),
    ("EVENT_TABLE", None),
])
def test_meds_in_reads_the_event_table_family_verbatim(code, kind):
    rule = meds_cohort.code_rule(code)
    assert rule["kind"] == kind and rule["verbatim"] == (kind is not None)
    if kind is None:
        assert rule["left_out"].startswith("EVENT_TABLE: unknown event type")


def test_extract_cohort_output_format_meds_reads_back_as_the_extracted_table(mimic_demo_dir, tmp_path, capsys):
    """`extract_cohort.py --mimic-dir DEMO --output-format meds`: the MIMIC-IV demo's cohort as a MEDS dataset,
    which MEDS in (with its labels) reads back as the event table the same extraction writes."""
    import extract_cohort
    direct = tmp_path / "direct.parquet"
    extract_cohort.main(["--mimic-dir", str(mimic_demo_dir), "--output", str(direct), "--no-progress"])
    capsys.readouterr()
    counts = extract_cohort.main(["--mimic-dir", str(mimic_demo_dir), "--output", str(tmp_path / "meds"),
                                  "--output-format", "meds", "--no-progress"])
    printed = capsys.readouterr().out
    assert f"Wrote the MEDS dataset {tmp_path / 'meds'}" in printed and "-events-" not in printed  # no temporary path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.parquet", "meds"]  # no temporary table left
    exported = counts["meds"]
    original = event_table.read_event_table(direct)
    assert exported["not_exact"] == {}  # every one of the demo's 74 stays reads back exactly
    back = read_back(tmp_path / "meds", exported, tmp_path)
    pd.testing.assert_frame_equal(comparable(back, with_prediction_time=True),
                                  comparable(original, with_prediction_time=True))
    assert back["stay_id"].nunique() == original["stay_id"].nunique() == 74
