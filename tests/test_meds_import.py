"""extract_cohort.py --meds (meds_cohort.py) on the MIMIC-IV demo in MEDS, checked against counts made here
independently from the shards with pandas, plus the code mapping and bad-input handling."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import event_table
import meds_cohort
from extract_cohort import ExtractionError

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = Path("tasks") / "icu_mortality_first_24h.parquet"
VITALS = {220045, 220179, 220050, 225309, 220180, 220051, 225310, 220052, 220181, 225312, 220210, 224690, 223761,
          223762, 220277, 225664, 220621, 226537, 220739, 223901, 223900}
NEVER_EVENTS = ("MEDS_DEATH", "MEDS_BIRTH", "GENDER", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ICU_ADMISSION",
                "ICU_DISCHARGE", "DIAGNOSIS", "DRG", "HCPCS", "TRANSFER_TO", "ED_REGISTRATION", "ED_OUT",
                "PROCEDURE//ICD")


def read_shards(meds_dir) -> pd.DataFrame:
    rows = pd.concat([pd.read_parquet(f, columns=["subject_id", "time", "code", "numeric_value", "hadm_id",
                                                  "icustay_id"])
                      for f in sorted((Path(meds_dir) / "data").rglob("*.parquet"))], ignore_index=True)
    return rows.astype({"hadm_id": "Int64", "icustay_id": "Int64"})


def expected_kind(code: str):
    """The event kind of a code, written here from docs/interfaces.md's table (None: not imported)."""
    parts = code.split("//")
    if parts[0] == "LAB" and parts[1].isdigit():
        itemid = int(parts[1])
        return "lab" if itemid < 220000 else ("vital" if itemid in VITALS else None)
    if code.startswith("MEDICATION//"):
        return None if parts[1] == "STOP" else "prescription"
    return {"SUBJECT_FLUID_OUTPUT": "output", "INFUSION_START": "input", "INFUSION_END": "input"}.get(
        parts[0], "procedure" if code.startswith("PROCEDURE//START//") else None)


def expected_icu_cohort(rows: pd.DataFrame, hours=48.0) -> pd.DataFrame:
    """ICU stays at intime + hours: adults, still in the ICU and alive, with in-hospital death as label."""
    def first(prefix):
        return rows[rows["code"].str.startswith(prefix)]
    icu = first("ICU_ADMISSION//")[["subject_id", "time", "icustay_id", "hadm_id"]].rename(columns={"time": "intime"})
    out = first("ICU_DISCHARGE//")[["icustay_id", "time"]].rename(columns={"time": "outtime"})
    adm = first("HOSPITAL_ADMISSION//")[["hadm_id", "time"]].rename(columns={"time": "admittime"})
    dis = first("HOSPITAL_DISCHARGE//")[["hadm_id", "time", "code"]].rename(columns={"time": "dischtime"})
    birth = first("MEDS_BIRTH").set_index("subject_id")["time"].dt.year.rename("birth_year")
    death = first("MEDS_DEATH").set_index("subject_id")["time"].rename("death")
    df = icu.merge(out, on="icustay_id").merge(adm, on="hadm_id").merge(dis, on="hadm_id")
    df = df.join(birth, on="subject_id").join(death, on="subject_id")
    df["prediction_time"] = df["intime"] + pd.Timedelta(hours=hours)
    alive = df["death"].isna() | (df["death"] > df["prediction_time"])
    df = df[(df["admittime"].dt.year - df["birth_year"] >= 18) & (df["outtime"] > df["prediction_time"]) & alive]
    df["mortality"] = ((df["code"] == "HOSPITAL_DISCHARGE//DIED") | (df["death"] <= df["dischtime"])).astype(int)
    return df.set_index("icustay_id")


def windowed_counts(rows, windows) -> pd.Series:
    """Rows of mapped codes in [intime, prediction_time) of each window, by (stay, kind, code)."""
    rows = rows.assign(kind=rows["code"].map(expected_kind)).dropna(subset=["kind"])
    joined = rows.merge(windows[["subject_id", "stay_id", "intime", "prediction_time"]], on="subject_id")
    joined = joined[(joined["time"] >= joined["intime"]) & (joined["time"] < joined["prediction_time"])]
    return joined.astype({"stay_id": "int64"}).groupby(["stay_id", "kind", "code"]).size()


@pytest.fixture(scope="module")
def shards(meds_demo_dir):
    return read_shards(meds_demo_dir)


@pytest.fixture(scope="module")
def icu_table(meds_demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("meds") / "icu.parquet"
    counts = meds_cohort.import_meds(meds_demo_dir, out, log=None)
    return pd.read_parquet(out), counts, out


@pytest.fixture(scope="module")
def label_table(meds_demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("meds") / "labels.csv"
    counts = meds_cohort.import_meds(meds_demo_dir, out, labels=meds_demo_dir / LABELS, log=None)
    return pd.read_csv(out, parse_dates=["event_time", "prediction_time"]), counts, out


def test_icu_task_matches_independent_count(icu_table, shards):
    table, counts, _ = icu_table
    cohort = expected_icu_cohort(shards)
    stays = table.drop_duplicates("stay_id").set_index("stay_id")
    assert sorted(stays.index) == sorted(cohort.index) and len(stays) == counts["stays"] == 14
    assert (stays["mortality"] == cohort["mortality"].reindex(stays.index)).all() and counts["deaths"] == 1
    assert (stays["prediction_time"] == cohort["prediction_time"].reindex(stays.index)).all()
    expected = windowed_counts(shards, cohort.reset_index().rename(columns={"icustay_id": "stay_id"}))
    got = table.dropna(subset=["event_type"]).groupby(["stay_id", "event_type", "code"]).size()
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    per_subject = table.dropna(subset=["event_type"]).groupby("subject_id").size()
    assert per_subject.sum() == counts["events"] == expected.sum()
    assert counts["events_per_kind"] == table["event_type"].value_counts().to_dict()
    assert set(counts["events_per_kind"]) == {"vital", "input", "lab", "prescription", "output", "procedure"}


def test_static_columns_come_from_the_codes(icu_table, shards):
    stays = icu_table[0].drop_duplicates("stay_id").set_index("stay_id")
    icu = shards[shards["code"].str.startswith("ICU_ADMISSION//")].set_index("icustay_id")
    assert (stays["first_careunit"] == icu["code"].str.removeprefix("ICU_ADMISSION//").reindex(stays.index)).all()
    gender = shards[shards["code"].str.startswith("GENDER//")].set_index("subject_id")["code"].str[-1]
    assert (stays["gender"] == stays["subject_id"].map(gender)).all()
    adm = shards[shards["code"].str.startswith("HOSPITAL_ADMISSION//")].set_index("hadm_id")["code"].str.split("//")
    assert (stays["admission_type"] == stays["hadm_id"].map(adm.str[1])).all()
    assert stays["patient_age"].between(18, 100).all() and stays["insurance"].notna().all()


def test_labels_give_one_prediction_per_label_row(label_table, shards, meds_demo_dir):
    table, counts, _ = label_table
    labels = pd.read_parquet(meds_demo_dir / LABELS)
    labels = labels[labels["subject_id"].isin(shards["subject_id"])]
    stays = table.drop_duplicates("stay_id")
    assert len(stays) == len(labels) == counts["stays"] == 14
    assert counts["label_rows_without_data"] == len(pd.read_parquet(meds_demo_dir / LABELS)) - len(labels)
    got = stays.set_index(["subject_id", "prediction_time"])["mortality"].sort_index()
    want = labels.set_index(["subject_id", "prediction_time"])["boolean_value"].astype(int).sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False, check_dtype=False)
    # each label row of the demo lies in an ICU stay, 24 h after its admission: stay_id is that icustay_id
    windows = expected_icu_cohort(shards, hours=24.0).reset_index()
    windows = windows.merge(labels, on=["subject_id", "prediction_time"]).rename(columns={"icustay_id": "stay_id"})
    assert sorted(windows["stay_id"]) == sorted(stays["stay_id"])
    got = table.dropna(subset=["event_type"]).groupby(["stay_id", "event_type", "code"]).size()
    pd.testing.assert_series_equal(got.sort_index(), windowed_counts(shards, windows).sort_index(), check_names=False)


def test_nothing_at_or_after_the_prediction_time(icu_table, label_table):
    for table in (icu_table[0], label_table[0]):
        events = table.dropna(subset=["event_type"])
        assert (events["event_time"] < events["prediction_time"]).all()
        assert (events["relative_time_to_final_event"] > 0).all()


def test_no_outcome_or_bookkeeping_code_leaks(icu_table, label_table):
    for table in (icu_table[0], label_table[0]):
        codes = table["code"].dropna()
        assert not codes.str.startswith(NEVER_EVENTS).any()
        assert not codes.str.startswith(("MEDICATION//STOP//", "PROCEDURE//END//")).any()
        assert not table["event_text"].dropna().str.contains("___").any()


def test_table_reads_back_and_values_parse(icu_table, label_table, meds_demo_dir, shards):
    for _, _, path in (icu_table, label_table):
        table = event_table.read_event_table(path)
        assert set(table["event_type"].dropna()) <= set(event_table.EVENT_TYPES)
    table = icu_table[0].dropna(subset=["event_type"])
    items, values = event_table.items_and_values(table["event_text"])
    # the value channel reads the MEDS numeric_value (3 significant figures; inputs 2) wherever the item's name
    # holds no number of its own (docs/interfaces.md, "MEDS in": e.g. "Lymphocytes/100 leukocytes")
    numeric = table.merge(shards.dropna(subset=["numeric_value"]).drop_duplicates(["subject_id", "time", "code"]),
                          left_on=["subject_id", "event_time", "code"], right_on=["subject_id", "time", "code"])
    numeric = numeric[numeric["event_type"].isin(["lab", "vital", "output"])]
    names = numeric["event_text"].str.replace(r"\s\(item \d+\)$", "", regex=True)  # "(item N)" follows the unit
    name_has_number = names.str.replace(r"\s\S+\s\S+$", "", regex=True).str.contains(event_table.NUMBER)
    checked = numeric[~name_has_number]
    _, parsed = event_table.items_and_values(checked["event_text"])
    assert len(checked) > 0.95 * len(numeric)
    assert np.allclose(parsed.to_numpy(), checked["numeric_value"].to_numpy(), rtol=5e-3)
    assert items[table["event_type"].eq("vital").to_numpy()].nunique() >= 15


@pytest.mark.parametrize("code, description, kind, text_start", [
    ("LAB//50912//mg/dL", "Creatinine", "lab", "Lab: Creatinine"),
    ("LAB//RESULT//50912//mg/dL", "Creatinine", "lab", "Lab: Creatinine"),
    ("LAB//SPECIMEN_COLLECTED//50912", None, None, None),
    ("LAB//220045//bpm", None, "vital", "Vital: Heart Rate"),
    ("LAB//224829//UNK", None, None, None),
    ("SUBJECT_FLUID_OUTPUT//226559//ml", None, "output", "Output: Foley"),
    ("SUBJECT_FLUID_OUTPUT//999999//ml", None, "output", "Output: fluid output"),
    ("MEDICATION//START//Heparin", None, "prescription", "Prescription: Heparin"),
    ("MEDICATION//Heparin//Administered", None, "prescription", "Medication: Heparin Administered"),
    ("MEDICATION//STOP//Heparin", None, None, None),
    ("INFUSION_START//222168", "propofol Injection", "input", "Input: propofol Injection"),
    ("PROCEDURE//START//225792", "Invasive ventilation", "procedure", "Procedure: Invasive ventilation"),
    ("PROCEDURE//ICD//9//9671", "Ventilation", None, None),
    ("MEDS_DEATH", None, None, None), ("HOSPITAL_DISCHARGE//DIED", None, None, None),
    ("DIAGNOSIS//ICD//10//I214", "NSTEMI", None, None), ("DRG//APR//720//SEPTICEMIA", None, None, None),
    ("Blood Pressure", None, None, None),
])
def test_code_rules(code, description, kind, text_start):
    rule = meds_cohort.code_rule(code, description)
    assert rule["kind"] == kind
    if kind is None:
        assert rule["left_out"].startswith(code.split("//")[0])
    else:
        assert rule["name"].startswith(text_start)


def test_new_kinds_are_appended_to_event_types():
    """The model's event-type one-hot keeps the old kinds' columns: vital and output come last."""
    assert event_table.EVENT_TYPES[:6] == ("prescription", "procedure", "lab", "microbiology", "input", "ingredient")
    assert event_table.EVENT_TYPES[6:] == ("vital", "output")


# ----------------------------------------------------------------------------- bad input

def assert_nothing_written(folder, keep=()):
    assert sorted(p.name for p in Path(folder).iterdir() if p.name not in keep) == []


def write_shard(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path)


def test_not_a_meds_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExtractionError, match="does not exist"):
        meds_cohort.import_meds(tmp_path / "nowhere", out / "x.parquet")
    with pytest.raises(ExtractionError, match=r"is not a MEDS dataset: no data/\*\*/\*\.parquet"):
        meds_cohort.import_meds(tmp_path, out / "x.parquet")
    write_shard(tmp_path / "data" / "train" / "0.parquet", {"subject_id": [1], "time": [None], "kode": ["X"]})
    with pytest.raises(ExtractionError, match=r"0\.parquet is not a MEDS data shard: it lacks column\(s\) code"):
        meds_cohort.import_meds(tmp_path, out / "x.parquet")
    assert_nothing_written(out)


def test_label_file_with_other_columns(meds_demo_dir, tmp_path):
    shard = next((meds_demo_dir / "data").rglob("*.parquet"))
    with pytest.raises(ExtractionError, match=rf"{re.escape(str(shard))} is not a MEDS label file.*lacks "
                                              r"prediction_time, boolean_value.*outside the label schema"):
        meds_cohort.import_meds(meds_demo_dir, tmp_path / "x.parquet", labels=shard)
    write_shard(tmp_path / "labels" / "0.parquet", {"subject_id": [10016742], "prediction_time": [None],
                                                     "float_value": [1.0]})
    with pytest.raises(ExtractionError, match="lacks boolean_value"):
        meds_cohort.import_meds(meds_demo_dir, tmp_path / "x.parquet", labels=tmp_path / "labels")
    assert_nothing_written(tmp_path, keep={"labels"})


def test_cli_error_is_one_line_exit_2_and_nothing_written(meds_demo_dir, tmp_path):
    previous = tmp_path / "cohort.csv"
    previous.write_text("previous run\n")
    shard = next((meds_demo_dir / "data").rglob("*.parquet"))
    for args in (["--meds", str(tmp_path)], ["--meds", str(meds_demo_dir), "--labels", str(shard)],
                 ["--labels", str(meds_demo_dir / LABELS)],
                 ["--meds", str(meds_demo_dir), "--lookback-hours", "6"]):
        result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), *args,
                                 "--output", str(previous)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "extract_cohort.py: error:" in result.stderr
    assert previous.read_text() == "previous run\n"
    assert_nothing_written(tmp_path, keep={"cohort.csv"})


def test_meds_and_mimic_dir_are_exclusive(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), "--meds", str(tmp_path),
                             "--mimic-dir", str(tmp_path), "--output", str(tmp_path / "x.csv")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_cli_writes_the_table_and_prints_counts(meds_demo_dir, tmp_path):
    out = tmp_path / "demo.csv.gz"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), "--meds", str(meds_demo_dir),
                             "--output", str(out), "--observation-hours", "24"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Cohort: stays=\d+ patients=\d+ deaths=\d+", result.stdout)
    assert "Events per kind: vital=" in result.stdout
    assert re.search(r"Left out [\d,]+ MEDS rows \(LAB: chartevents, not a vital sign\)", result.stderr)
    assert event_table.read_event_table(out)["stay_id"].nunique() == len(expected_icu_cohort(
        read_shards(meds_demo_dir), hours=24.0))
