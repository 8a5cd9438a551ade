"""query.sql + extract_cohort.py on the real MIMIC-IV demo, checked against counts computed here
independently from the raw tables (pandas), plus the BigQuery translation and bad-input handling."""
import gzip
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

import extract_cohort
from extract_cohort import ExtractionError, extract_cohort as run_extraction

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENT_TABLE_COLUMNS = ["subject_id", "hadm_id", "stay_id", "event_time", "event_type", "event_text",
                    "relative_time_to_final_event", "gender", "race", "marital_status", "admission_type",
                    "admission_location", "insurance", "first_careunit", "patient_age", "mortality"]
STATIC = ["gender", "race", "marital_status", "admission_type", "admission_location", "insurance",
          "first_careunit", "patient_age", "mortality"]
EVENT_FIELDS = ["event_time", "event_type", "event_text", "relative_time_to_final_event"]
PREFIX = {"prescription": "Prescription: ", "procedure": "Procedure: ", "lab": "Lab: ",
          "microbiology": "Microbiology: ", "input": "Input: "}  # the default kinds (ingredient on request)


def read_mimic(mimic_dir, table, **kwargs):
    return pd.read_csv(Path(mimic_dir) / f"{table}.csv.gz", **kwargs)


def expected_cohort(mimic_dir, hours=48.0) -> pd.DataFrame:
    """The cohort computed independently of query.sql, with pandas, from the raw tables."""
    stays = read_mimic(mimic_dir, "icu/icustays", parse_dates=["intime", "outtime"])
    adm = read_mimic(mimic_dir, "hosp/admissions", parse_dates=["admittime", "deathtime"])
    pat = read_mimic(mimic_dir, "hosp/patients", parse_dates=["dod"])
    df = stays.merge(adm, on=["subject_id", "hadm_id"]).merge(pat, on="subject_id")
    df["age"] = df["anchor_age"] + df["admittime"].dt.year - df["anchor_year"]
    df["prediction_time"] = df["intime"] + pd.Timedelta(hours=hours)
    alive = (df["deathtime"].isna() | (df["deathtime"] > df["prediction_time"])) & \
            (df["dod"].isna() | (df["dod"] >= df["prediction_time"].dt.normalize()))
    keep = (df["age"] >= 18) & (df["outtime"] > df["prediction_time"]) & alive
    return df[keep].set_index("stay_id")


@pytest.fixture(scope="module")
def demo_table(mimic_demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract") / "demo.parquet"
    counts = run_extraction(out, mimic_demo_dir, progress=False)
    return pd.read_parquet(out), counts


def install_stand_in_bigquery(monkeypatch, client_class):
    """A stand-in google.cloud.bigquery module whose Client is `client_class`; query parameters are plain tuples
    (name, type, value) so that a test can read what the engine sends."""
    import types
    fake = types.ModuleType("google.cloud.bigquery")
    fake.Client = client_class
    fake.QueryJobConfig = lambda query_parameters: types.SimpleNamespace(query_parameters=query_parameters)
    fake.ScalarQueryParameter = lambda name, kind, value: (name, kind, value)
    fake.ArrayQueryParameter = lambda name, kind, values: (name, f"ARRAY<{kind}>", tuple(values))
    google, cloud = types.ModuleType("google"), types.ModuleType("google.cloud")
    google.cloud, cloud.bigquery = cloud, fake
    for name, module in (("google", google), ("google.cloud", cloud), ("google.cloud.bigquery", fake)):
        monkeypatch.setitem(sys.modules, name, module)


def test_cohort_counts_match_independent_count(demo_table, mimic_demo_dir):
    table, counts = demo_table
    expected = expected_cohort(mimic_demo_dir)
    stays = table.drop_duplicates("stay_id").set_index("stay_id")
    assert sorted(stays.index) == sorted(expected.index)
    assert counts["stays"] == len(expected) > 0
    assert counts["deaths"] == int(expected["hospital_expire_flag"].sum()) > 0
    assert counts["patients"] == expected["subject_id"].nunique()
    assert counts["events"] == table["event_type"].notna().sum()
    assert list(table.columns[:len(EVENT_TABLE_COLUMNS)]) == EVENT_TABLE_COLUMNS


def test_events_lie_in_observation_window(demo_table, mimic_demo_dir):
    table, _ = demo_table
    cohort = expected_cohort(mimic_demo_dir)
    events = table.dropna(subset=["event_type"]).drop(columns=["prediction_time"]).join(
        cohort[["intime", "outtime", "deathtime", "prediction_time"]], on="stay_id")
    stays = table.drop_duplicates("stay_id").set_index("stay_id")
    assert (pd.to_datetime(stays["prediction_time"]) == cohort.loc[stays.index, "prediction_time"]).all()
    t = pd.to_datetime(events["event_time"])
    assert (t >= events["intime"]).all()
    assert (t < events["prediction_time"]).all()
    assert (t < events["outtime"]).all()
    assert (events["deathtime"].isna() | (t < events["deathtime"])).all()
    minutes = (events["prediction_time"] - t).dt.total_seconds() / 60
    assert (events["relative_time_to_final_event"] >= 0).all()
    np.testing.assert_allclose(events["relative_time_to_final_event"], minutes, atol=0.01)


def test_lab_and_micro_times_are_storetime(demo_table, mimic_demo_dir):
    """A result counts when it was stored; a specimen drawn in the window but reported after it is left out."""
    table, _ = demo_table
    cohort = expected_cohort(mimic_demo_dir)
    labs = read_mimic(mimic_demo_dir, "hosp/labevents", parse_dates=["charttime", "storetime"],
                      usecols=["labevent_id", "hadm_id", "charttime", "storetime"])
    got = table[table["source_table"] == "labevents"].copy()
    got["labevent_id"] = got["source_id"].astype(int)
    merged = got.merge(labs, on="labevent_id")
    assert len(merged) == len(got) > 0
    assert (pd.to_datetime(merged["event_time"]) == merged["storetime"].fillna(merged["charttime"])).all()
    # specimens drawn before the prediction time whose result came after it
    late = labs.merge(cohort.reset_index()[["stay_id", "hadm_id", "intime", "prediction_time"]], on="hadm_id")
    late = late[(late["charttime"] >= late["intime"]) & (late["charttime"] < late["prediction_time"])
                & (late["storetime"] >= late["prediction_time"])]
    assert len(late) > 0, "the demo has results reported after the prediction time"
    assert not set(late["labevent_id"]) & set(got["labevent_id"])
    micro = table[table["event_type"] == "microbiology"]
    assert len(micro) > 0


def test_labels_agree_with_admissions(demo_table, mimic_demo_dir):
    table, _ = demo_table
    adm = read_mimic(mimic_demo_dir, "hosp/admissions").set_index("hadm_id")
    stays = table.drop_duplicates("stay_id")
    assert set(stays["mortality"]) <= {0, 1}
    assert (stays["mortality"].to_numpy() == adm.loc[stays["hadm_id"], "hospital_expire_flag"].to_numpy()).all()


def test_static_values_constant_within_stay(demo_table):
    table, _ = demo_table
    assert (table.groupby("stay_id")[STATIC].nunique(dropna=False) == 1).all().all()
    assert table["patient_age"].min() >= 18


def test_no_duplicate_events(demo_table):
    table, _ = demo_table
    events = table.dropna(subset=["event_type"])
    assert not events.duplicated(["stay_id", "source_table", "source_id"]).any()
    # the same statement at the same moment is kept once; ICU rows (one administration or procedure each:
    # two bags charted together are two bags) are never merged
    hosp = events[~events["source_table"].isin(["procedureevents", "inputevents", "ingredientevents"])]
    assert not hosp.duplicated(["stay_id", "event_time", "event_type", "event_text"]).any()
    # sorted by stay, then time
    assert (table[["stay_id"]].diff().fillna(0) >= 0).all().all()
    for _, stay in events.groupby("stay_id"):
        assert pd.to_datetime(stay["event_time"]).is_monotonic_increasing


def test_event_texts_are_clean(demo_table):
    table, _ = demo_table
    events = table.dropna(subset=["event_type"])
    assert set(events["event_type"]) == set(PREFIX)
    texts = events["event_text"]
    assert not texts.str.contains(r"\bNone\b|\bnan\b|\bNaN\b|\bnull\b", regex=True).any()
    assert not texts.str.contains("  ").any()
    assert (texts == texts.str.strip()).all()
    for kind, prefix in PREFIX.items():
        of_kind = texts[events["event_type"] == kind]
        assert of_kind.str.startswith(prefix).all()
        assert (of_kind.str.len() > len(prefix)).all()
    # numbers we format carry at most three significant figures: no float noise, no trailing ".0"
    formatted = pd.concat([texts[events["event_type"] == "input"].str.extract(r" (-?[\d.]+) \S+$")[0],
                           texts[events["event_type"] == "lab"].str.extract(r"\(ref ([\d.]+)-")[0]]).dropna()
    assert len(formatted) > 1000
    significant = formatted.str.replace(".", "", regex=False).str.lstrip("0-").str.rstrip("0").str.len()
    assert significant.max() <= 3, formatted[significant > 3].head()
    assert not texts.str.contains(r"\d\.0\b(?!\.)", regex=True).any()
    assert texts.str.contains(r"^Lab: .+ \(ref [-\d.]+-[-\d.]+\)", regex=True).any()


@pytest.mark.parametrize("value, digits, expected", [
    (54.32109, 3, "54.3"), (1000.0, 3, "1000"), (4.2, 3, "4.2"), (0.0, 3, "0"), (0.012345, 3, "0.0123"),
    (-2.456, 3, "-2.46"), (123456.0, 3, "123000"), (49.999998807907104, 3, "50"), (7.0, 3, "7"),
    (None, 3, None), (54.32109, 2, "54"), (1234.5, 2, "1200"), (0.0456, 2, "0.046")])
def test_number_format(value, digits, expected):
    setup, _ = extract_cohort.duckdb_statements(extract_cohort.query_parameters())
    con = duckdb.connect()
    for statement in setup:
        con.execute(statement)
    assert con.execute("SELECT fmt_num(CAST(? AS DOUBLE), ?)", [value, digits]).fetchone()[0] == expected


def test_stays_without_events_appear_once_with_empty_fields(mimic_demo_dir, tmp_path):
    out = tmp_path / "short.csv"
    counts = run_extraction(out, mimic_demo_dir, observation_hours=1, progress=False)
    table = pd.read_csv(out)
    per_stay = table.groupby("stay_id")
    empty = table[table["event_type"].isna()]
    assert counts["stays_without_events"] == len(empty) > 0
    assert (per_stay.size()[empty["stay_id"]] == 1).all()
    assert empty[EVENT_FIELDS].isna().all().all()
    assert empty[["gender", "first_careunit", "patient_age", "mortality"]].notna().all().all()
    assert counts["stays"] == len(expected_cohort(mimic_demo_dir, hours=1))


def test_output_formats_hold_the_same_table(demo_table, mimic_demo_dir, tmp_path):
    table, _ = demo_table
    for name in ("demo.csv", "demo.csv.gz"):
        run_extraction(tmp_path / name, mimic_demo_dir, progress=False)
        other = pd.read_csv(tmp_path / name, dtype={"source_id": str})
        assert len(other) == len(table)
        assert (other["event_text"].fillna("") == table["event_text"].fillna("")).all()
        assert (other["stay_id"] == table["stay_id"]).all()
    with gzip.open(tmp_path / "demo.csv.gz", "rt") as f:
        assert f.readline().startswith("subject_id,hadm_id,stay_id,event_time")


def test_lookback_and_whole_stay_options(mimic_demo_dir, tmp_path, capsys, demo_table):
    table, counts = demo_table
    cohort = expected_cohort(mimic_demo_dir)
    back = tmp_path / "lookback.parquet"
    back_counts = run_extraction(back, mimic_demo_dir, lookback_hours=24, progress=False)
    back_table = pd.read_parquet(back).join(cohort[["intime"]], on="stay_id")
    before = pd.to_datetime(back_table["event_time"]) < back_table["intime"]
    assert before.any() and back_counts["stays"] == counts["stays"]
    assert back_counts["events"] > counts["events"]
    assert (pd.to_datetime(back_table["event_time"][before]) >= back_table["intime"][before] - pd.Timedelta(hours=24)).all()

    whole = tmp_path / "whole.parquet"
    whole_counts = run_extraction(whole, mimic_demo_dir, whole_stay=True, progress=False)
    assert "LEAKS THE OUTCOME" in capsys.readouterr().err
    whole_table = pd.read_parquet(whole)
    assert whole_counts["stays"] > counts["stays"]  # no "alive and in the ICU at 48 h" condition
    stays = read_mimic(mimic_demo_dir, "icu/icustays", parse_dates=["intime", "outtime"]).set_index("stay_id")
    t = pd.to_datetime(whole_table["event_time"])
    assert (t < stays.loc[whole_table["stay_id"], "outtime"].to_numpy()).all()
    assert (t - stays.loc[whole_table["stay_id"], "intime"].to_numpy() > pd.Timedelta(hours=48)).any()


def test_bigquery_translation_names_only_mimic_tables():
    sql = extract_cohort.bigquery_sql()
    statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    assert isinstance(statements[0], exp.Create) and isinstance(statements[-1], exp.Select)
    tables = {".".join(p for p in (t.catalog, t.db, t.name) if p)
              for s in statements for t in s.find_all(exp.Table)}
    ctes = {cte.alias for s in statements for cte in s.find_all(exp.CTE)}
    expected = {f"physionet-data.mimiciv_3_1_hosp.{t}" for t in
                ("patients", "admissions", "prescriptions", "labevents", "d_labitems", "microbiologyevents")} | \
               {f"physionet-data.mimiciv_3_1_icu.{t}" for t in
                ("icustays", "procedureevents", "inputevents", "ingredientevents", "d_items")}
    functions = {s.this.this.name for s in statements if isinstance(s, exp.Create) and s.kind == "FUNCTION"}
    assert {"fmt_num", "micro_comment_result", "known_at", "amount_before"} <= functions
    assert tables - ctes - functions == expected  # sqlglot files UDF names as tables
    params = {p.name for s in statements for p in s.find_all(exp.Parameter)}
    assert params == {"observation_hours", "lookback_hours", "whole_stay", "event_kinds"}
    # dataset names are parameters too
    custom = extract_cohort.bigquery_sql("my-project.mimic_hosp", "my-project.mimic_icu")
    assert "`my-project`.mimic_hosp.labevents" in custom or "my-project.mimic_hosp.labevents" in custom
    assert "physionet-data" not in custom


def test_duckdb_translation_binds_every_parameter():
    setup, select = extract_cohort.duckdb_statements(extract_cohort.query_parameters(24, 6, False))
    tree = sqlglot.parse_one(select, read="duckdb")
    assert not list(tree.find_all(exp.Parameter)) and not list(tree.find_all(exp.Placeholder))
    assert "1440" in select.replace(" ", "") or "24.0" in select
    assert setup and setup[0].startswith("CREATE OR REPLACE TEMP MACRO fmt_num(x, digits)")


def test_cli_prints_cohort_counts(mimic_demo_dir, tmp_path, demo_table):
    _, counts = demo_table
    out = tmp_path / "cli.csv"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), "--mimic-dir", str(mimic_demo_dir),
                             "--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"stays={counts['stays']} patients={counts['patients']} deaths={counts['deaths']}" in result.stdout
    assert f"events={counts['events']}" in result.stdout
    assert out.is_file()


# ----------------------------------------------------------------------------- reliability (issue 6)

def mimic_copy(mimic_demo_dir, dest: Path, skip=()) -> Path:
    """A MIMIC directory of symlinks to the demo, without the tables in `skip`."""
    for module in ("hosp", "icu"):
        (dest / module).mkdir(parents=True)
        for f in (Path(mimic_demo_dir) / module).iterdir():
            if f"{module}/{f.name.split('.')[0]}" not in skip:
                (dest / module / f.name).symlink_to(f.resolve())
    return dest


def assert_nothing_written(folder: Path, keep=()):
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], f"left behind: {left}"


def test_reliability_missing_table(mimic_demo_dir, tmp_path):
    mimic = mimic_copy(mimic_demo_dir, tmp_path / "mimic", skip={"hosp/labevents"})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExtractionError, match=r"hosp/labevents.*missing"):
        run_extraction(out_dir / "x.csv", mimic, progress=False)
    assert_nothing_written(out_dir)


def test_reliability_missing_column(mimic_demo_dir, tmp_path):
    mimic = mimic_copy(mimic_demo_dir, tmp_path / "mimic", skip={"icu/icustays"})
    stays = read_mimic(mimic_demo_dir, "icu/icustays").drop(columns=["outtime"])
    stays.to_csv(mimic / "icu" / "icustays.csv.gz", index=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExtractionError, match=r"icustays\.csv\.gz lacks column\(s\) outtime"):
        run_extraction(out_dir / "x.parquet", mimic, progress=False)
    assert_nothing_written(out_dir)


def test_reliability_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractionError, match=r"empty.*neither hosp/ nor icu/"):
        run_extraction(tmp_path / "x.csv", tmp_path / "empty", progress=False)
    with pytest.raises(ExtractionError, match="does not exist"):
        run_extraction(tmp_path / "x.csv", tmp_path / "nowhere", progress=False)
    assert_nothing_written(tmp_path, keep={"empty"})


@pytest.mark.parametrize("hours", [0, -6, float("nan")])
def test_reliability_bad_observation_hours(mimic_demo_dir, tmp_path, hours):
    with pytest.raises(ExtractionError, match="observation"):
        run_extraction(tmp_path / "x.csv", mimic_demo_dir, observation_hours=hours, progress=False)
    with pytest.raises(ExtractionError, match="lookback"):
        run_extraction(tmp_path / "x.csv", mimic_demo_dir, lookback_hours=-1, progress=False)
    assert_nothing_written(tmp_path)


def test_reliability_output_folder_missing_or_bad_suffix(mimic_demo_dir, tmp_path):
    with pytest.raises(ExtractionError, match=r"output folder .*no_such_dir does not exist"):
        run_extraction(tmp_path / "no_such_dir" / "x.csv", mimic_demo_dir, progress=False)
    with pytest.raises(ExtractionError, match=r"\.csv, \.csv\.gz, \.parquet"):
        run_extraction(tmp_path / "x.xlsx", mimic_demo_dir, progress=False)
    assert_nothing_written(tmp_path)


def test_reliability_failed_run_keeps_previous_output(mimic_demo_dir, tmp_path):
    """A run that fails half-way (a truncated table) leaves the previous output intact and no temporary file."""
    mimic = mimic_copy(mimic_demo_dir, tmp_path / "mimic", skip={"hosp/labevents"})
    raw = (Path(mimic_demo_dir) / "hosp" / "labevents.csv.gz").read_bytes()
    (mimic / "hosp" / "labevents.csv.gz").write_bytes(raw[: len(raw) // 2])  # cut mid-stream
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "cohort.csv"
    previous.write_text("previous run\n")
    with pytest.raises(ExtractionError, match="labevents|query failed"):
        run_extraction(previous, mimic, progress=False)
    assert previous.read_text() == "previous run\n"
    assert_nothing_written(out_dir, keep={"cohort.csv"})


def test_reliability_cli_error_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), "--mimic-dir", str(tmp_path),
                             "--output", str(tmp_path / "x.csv"), "--observation-hours", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.search(r"error: .*--observation-hours must be > 0", result.stderr)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "extract_cohort.py"), "--mimic-dir", str(tmp_path),
                             "--output", str(tmp_path / "x.csv"), "--event-kinds", "lab,xray"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert re.search(r"error: --event-kinds must list one or more of prescription,.*got 'lab,xray'", result.stderr)


def test_reliability_bigquery_engine_needs_project_and_package(tmp_path, monkeypatch):
    with pytest.raises(ExtractionError, match="--project"):
        run_extraction(tmp_path / "x.parquet", engine="bigquery", project=None)
    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)  # as if not installed
    with pytest.raises(ExtractionError, match="pip install google-cloud-bigquery"):
        run_extraction(tmp_path / "x.parquet", engine="bigquery", project="my-project")
    with pytest.raises(ExtractionError, match="--mimic-dir"):
        run_extraction(tmp_path / "x.parquet", engine="duckdb")
    assert_nothing_written(tmp_path)


def test_bigquery_engine_streams_result_with_query_parameters(demo_table, tmp_path, monkeypatch):
    """The BigQuery path with a stand-in client (no network here): the SQL it sends is the translated
    query.sql with @parameters passed as typed query parameters, and the pages it receives are streamed
    to the output like the DuckDB engine's."""
    import types

    import pyarrow as pa

    table, counts = demo_table
    sent = {}

    class Job:
        def result(self, page_size):
            sent["page_size"] = page_size
            return types.SimpleNamespace(to_arrow_iterable=lambda: iter(
                pa.Table.from_pandas(table, preserve_index=False).to_batches(max_chunksize=5000)))

    class Client:
        def __init__(self, project):
            sent["project"] = project

        def query(self, sql, job_config):
            sent["sql"], sent["params"] = sql, job_config.query_parameters
            return Job()

    install_stand_in_bigquery(monkeypatch, Client)

    out = tmp_path / "bq.csv.gz"
    got = run_extraction(out, engine="bigquery", project="my-project", observation_hours=24,
                         hosp_dataset="p.h", icu_dataset="p.i")
    assert sent["project"] == "my-project"
    assert sorted(sent["params"]) == [("event_kinds", "ARRAY<STRING>", extract_cohort.DEFAULT_EVENT_KINDS),
                                      ("lookback_hours", "FLOAT64", 0.0), ("observation_hours", "FLOAT64", 24.0),
                                      ("whole_stay", "BOOL", False)]
    assert "p.h.labevents" in sent["sql"] and "@observation_hours" in sent["sql"]
    sqlglot.parse(sent["sql"], read="bigquery")
    assert got == counts
    assert len(pd.read_csv(out)) == len(table)
    assert_nothing_written(tmp_path, keep={"bq.csv.gz"})


# ----------------------------------------------------------------------------- cohort fidelity (issue 12)
# Each test recomputes from the raw demo tables, in pandas, which rows the extraction must keep.

def cohort_windows(mimic_demo_dir, hours=48.0) -> pd.DataFrame:
    return expected_cohort(mimic_demo_dir, hours).reset_index()[
        ["stay_id", "subject_id", "hadm_id", "intime", "prediction_time"]]


def hosp_rows_in_windows(mimic_demo_dir, table, id_column) -> pd.DataFrame:
    """Rows of a hosp result table whose result time (storetime, else charttime) lies in a cohort window,
    matched by hadm_id, or by subject_id alone where hadm_id is null; with the stay they belong to."""
    rows = read_mimic(mimic_demo_dir, table)
    for column in ("charttime", "storetime"):
        rows[column] = pd.to_datetime(rows[column], format="ISO8601")
    rows["result_time"] = rows["storetime"].fillna(rows["charttime"])
    windows = cohort_windows(mimic_demo_dir)
    by_hadm = rows.dropna(subset=["hadm_id"]).merge(windows.drop(columns="subject_id"), on="hadm_id")
    by_subject = rows[rows["hadm_id"].isna()].drop(columns="hadm_id").merge(windows, on="subject_id")
    both = pd.concat([by_hadm.assign(null_hadm=False), by_subject.assign(null_hadm=True)], ignore_index=True)
    inside = (both["result_time"] >= both["intime"]) & (both["result_time"] < both["prediction_time"])
    return both[inside].set_index(id_column)


def assert_written_or_merged(got, expected_ids, expected):
    """Every expected row is written, or merged into a written row of the same stay and time (the same
    statement at the same moment is kept once: e.g. two "no growth" blood cultures stored together)."""
    missing = sorted(set(expected_ids) - set(got.index))
    assert len(missing) <= 0.05 * len(expected_ids), missing[:10]
    written = set(zip(got["stay_id"], pd.to_datetime(got["event_time"])))
    assert all((expected.at[i, "stay_id"], expected.at[i, "result_time"]) in written for i in missing)


def output_rows(table, source_table) -> pd.DataFrame:
    rows = table[table["source_table"] == source_table].copy()
    rows.index = rows["source_id"].astype(int) if source_table in ("labevents", "microbiologyevents") \
        else rows["source_id"]
    return rows


MICRO_POSITIVE = re.compile(r"^\s*(?:POSITIVE|REACTIVE)\b|(?:^|:)\s*(?:GRAM (?:POSITIVE|NEGATIVE) (?:ROD|COCC|BACILL)"
                            r"|BUDDING YEAST)", re.IGNORECASE)
MICRO_CANCELLED = re.compile(r"cancelled|not performed", re.IGNORECASE)
MICRO_NEGATIVE_WORDS = re.compile(r"(?<!gram-)negative\b|no growth|no organisms|not detected", re.IGNORECASE)


def test_microbiology_results_say_what_the_comment_says(demo_table, mimic_demo_dir):
    table, _ = demo_table
    expected = hosp_rows_in_windows(mimic_demo_dir, "hosp/microbiologyevents", "microevent_id")
    got = output_rows(table, "microbiologyevents")
    comments, org = expected["comments"].fillna(""), expected["org_name"].fillna("")
    cancelled = (org.str.upper() == "CANCELLED") | (org.eq("") & comments.str.contains(MICRO_CANCELLED))
    assert cancelled.sum() > 0, "the demo has cancelled tests inside the windows"
    # every result in a window is written, with its stay; cancelled tests (no result) are not
    assert set(got.index) <= set(expected.index[~cancelled])
    assert_written_or_merged(got, expected.index[~cancelled], expected)
    assert (got["stay_id"] == expected.loc[got.index, "stay_id"]).all()
    text = got["event_text"].reindex(expected.index)  # NaN: merged into an identical row
    # a positive stated only in the comment (EIA, Gram stain finding, viral, C. difficile) never reads negative
    positive = expected.index[~cancelled & org.eq("") & comments.str.contains(MICRO_POSITIVE)]
    assert len(positive) >= 3, "the demo has positive results in comments inside the windows"
    assert not text[positive].str.contains(MICRO_NEGATIVE_WORDS).fillna(False).any(), text[positive].tolist()
    assert text[positive].str.contains(r", (?:positive|gram-(?:positive|negative) \w+.* seen|yeast seen)$").all()
    # nor does an organism or a POSITIVE organism row
    with_org = expected.index[~cancelled & org.ne("")]
    assert not text[with_org].str.contains(r"no growth|no organisms|not detected|, negative$").fillna(False).any()
    # a true negative says so
    no_growth = expected.index[org.eq("") & comments.str.match(r"NO GROWTH")]
    assert len(no_growth) > 0 and text[no_growth].dropna().str.endswith(", no growth").all()
    # deidentified ___ carries nothing; susceptibilities are spelled out
    assert not text.str.contains("___").fillna(False).any()
    resistant = expected.index[expected["ab_name"].notna() & expected["interpretation"].eq("R")]
    assert len(resistant) > 0 and text[resistant].dropna().str.endswith(" resistant").all()
    assert text.str.len().max() <= 160


@pytest.mark.parametrize("comment, result", [
    ("POSITIVE BY EIA.  A positive IgG result generally indicates past exposure and/or immunity.  ", "positive"),
    (">25 PMNs and <10 epithelial cells/100X field.  4+   (>10 per 1000X FIELD):   GRAM NEGATIVE ROD(S).  ",
     "gram-negative rods seen"),
    ("1+    (<1 per 1000X FIELD):   POLYMORPHONUCLEAR LEUKOCYTES.  2+   (1-5 per 1000X FIELD):   GRAM POSITIVE COCCI."
     "                                     IN PAIRS AND CLUSTERS.  ", "gram-positive cocci in clusters seen"),
    ("GRAM STAIN NEGATIVE FOR BACTERIAL VAGINOSIS.  1+    (<1 per 1000X FIELD):   BUDDING YEAST.  ", "yeast seen"),
    ("NO ENTERIC GRAM NEGATIVE RODS FOUND.  NO SALMONELLA OR SHIGELLA FOUND.  ", "negative"),
    ("Positive for toxigenic C. difficile by the Illumigene DNA amplification assay.  ", "positive"),
    ("NEGATIVE FOR CMV IgM ANTIBODY BY EIA.  A positive IgG result generally indicates past exposure.  ", "negative"),
    ("CMV DNA not detected.  Performed by ___ CMV Test.  ", "negative"),
    ("HIV-1 RNA detected, 1,230 copies/mL.  ", "positive"),
    ("NO GROWTH.  ", "no growth"),
    ("NO POLYMORPHONUCLEAR LEUKOCYTES SEEN.  NO MICROORGANISMS SEEN.  ", "no organisms seen"),
    ("TEST CANCELLED, PATIENT CREDITED.  ", "cancelled"),
    ("Test cancelled by laboratory.  PATIENT CREDITED.  This is a low yield procedure.  ", "cancelled"),
    ("EQUIVOCAL BY EIA.  Equivocal results indicate probable low levels of antibody.  ", "equivocal"),
    ("___", None), (None, None),
    ("<10,000 organisms/ml.  ", "<10,000 CFU/mL"), ("< 10,000 CFU/mL.  ", "<10,000 CFU/mL"),
    ("Test performed on a new platform.  ", "test performed on a new platform"),  # unknown: the lab's first sentence
])
def test_microbiology_comment_classification(comment, result):
    setup, _ = extract_cohort.duckdb_statements(extract_cohort.query_parameters())
    con = duckdb.connect()
    for statement in setup:
        con.execute(statement)
    assert con.execute("SELECT micro_comment_result(CAST(? AS VARCHAR))", [comment]).fetchone()[0] == result


def icu_rows_in_windows(mimic_demo_dir, table) -> pd.DataFrame:
    """ICU rows (procedures, infusions) of cohort stays that started in the window, not Rewritten, with
    known = charted before the prediction time, running = still running at it."""
    rows = read_mimic(mimic_demo_dir, table)
    for column in ("starttime", "endtime", "storetime"):  # storetime has fractional seconds in some rows
        rows[column] = pd.to_datetime(rows[column], format="ISO8601")
    rows = rows.merge(cohort_windows(mimic_demo_dir).drop(columns=["subject_id", "hadm_id"]), on="stay_id")
    rows = rows[(rows["starttime"] >= rows["intime"]) & (rows["starttime"] < rows["prediction_time"])
                & rows["statusdescription"].ne("Rewritten")].copy()
    rows["known"] = rows["storetime"] < rows["prediction_time"]
    rows["running"] = rows["endtime"] > rows["prediction_time"]
    rows.index = rows["orderid"].astype(str) + ":" + rows["itemid"].astype(str)
    return rows


@pytest.mark.parametrize("source_table, table", [("procedureevents", "icu/procedureevents"),
                                                 ("inputevents", "icu/inputevents")])
def test_icu_rows_known_before_the_prediction_time(demo_table, mimic_demo_dir, source_table, table):
    """A row that ended before the prediction time but was charted after it is left out; one charted
    before it counts from its charting time, one still running from its start."""
    events, _ = demo_table
    expected = icu_rows_in_windows(mimic_demo_dir, table)
    got = output_rows(events, source_table)
    late = expected[~expected["known"] & ~expected["running"]]
    assert len(late) > 0, f"the demo has {source_table} rows charted after the prediction time"
    assert not set(late.index) & set(got.index)
    kept = expected[expected["known"] | expected["running"]]
    # every kept row is written (ICU rows are never merged: two bags charted together are two bags)
    assert set(got.index) == set(kept.index) and len(got) == len(kept)
    rule = kept["starttime"].where(~kept["known"], kept[["starttime", "storetime"]].max(axis=1))
    t = pd.to_datetime(got["event_time"])
    assert (t == rule[got.index]).all()
    assert (t < kept.loc[got.index, "prediction_time"]).all()


def test_lab_and_micro_rows_without_hadm_id_are_kept(demo_table, mimic_demo_dir):
    table, _ = demo_table
    for source_table, raw, id_column in (("labevents", "hosp/labevents", "labevent_id"),
                                         ("microbiologyevents", "hosp/microbiologyevents", "microevent_id")):
        expected = hosp_rows_in_windows(mimic_demo_dir, raw, id_column)
        null_hadm = expected[expected["null_hadm"]]
        if source_table == "microbiologyevents":  # cancelled tests are no results
            null_hadm = null_hadm[~null_hadm["comments"].fillna("").str.contains(MICRO_CANCELLED)
                                  & null_hadm["org_name"].ne("CANCELLED")]
        got = output_rows(table, source_table)
        assert len(null_hadm) > 10, f"the demo has {source_table} rows without hadm_id inside windows"
        assert_written_or_merged(got, null_hadm.index, null_hadm)
        written = null_hadm.index.intersection(got.index)
        assert (got.loc[written, "stay_id"] == null_hadm.loc[written, "stay_id"]).all()
        if source_table == "labevents":  # every lab row in a window is written (labs are never dropped)
            assert set(got.index) <= set(expected.index)
            assert_written_or_merged(got, expected.index, expected)


VASOPRESSORS = ("Norepinephrine", "Phenylephrine", "Vasopressin", "Epinephrine", "Dopamine")  # d_items labels


def test_infusions_are_input_events_with_amount_pro_rated(demo_table, mimic_demo_dir):
    table, _ = demo_table
    expected = icu_rows_in_windows(mimic_demo_dir, "icu/inputevents").merge(
        read_mimic(mimic_demo_dir, "icu/d_items", usecols=["itemid", "label"]), on="itemid", how="left")
    expected.index = expected["orderid"].astype(str) + ":" + expected["itemid"].astype(str)
    expected = expected[expected["known"] | expected["running"]]
    got = output_rows(table, "inputevents")
    assert (got["event_type"] == "input").all()
    pressors = expected[expected["label"].isin(VASOPRESSORS)]
    assert len(pressors) > 50, "the demo has vasopressor infusions inside the windows"
    pressor_texts = got.loc[pressors.index, "event_text"]
    assert pressor_texts.str.match(rf"Input: ({'|'.join(VASOPRESSORS)}) [\d.]+ \w+ at [\d.]+ \S+$").all(), \
        pressor_texts.head()
    # the amount shown is the share given before the prediction time (2 significant figures)
    e = expected.loc[got.index]
    share = ((e["prediction_time"] - e["starttime"]) / (e["endtime"] - e["starttime"])).clip(upper=1)
    amount = e["amount"] * share.where(e["running"], 1.0)
    shown = got["event_text"].str.extract(r"^Input: .+? (-?[\d.]+) \S+(?: at |$)")[0].astype(float)
    assert e["running"].sum() > 0
    np.testing.assert_allclose(shown, amount, rtol=0.05, atol=1e-9)
    rate_shown = got["event_text"].str.extract(r" at (-?[\d.]+) ")[0].astype(float)
    has_rate = e["rate"].notna()
    assert has_rate.sum() > 0 and rate_shown.notna().eq(has_rate).all()
    np.testing.assert_allclose(rate_shown[has_rate], e["rate"][has_rate], rtol=0.05)


@pytest.mark.slow
def test_event_kinds_option(mimic_demo_dir, tmp_path, demo_table):
    """--event-kinds picks the kinds written; the cohort (stays, labels) is the same whatever the kinds,
    at 48 h and 24 h. ingredient rows repeat their input rows' orders and are off by default."""
    table, counts = demo_table
    assert set(table["event_type"].dropna()) == set(extract_cohort.DEFAULT_EVENT_KINDS)
    assert "ingredient" not in extract_cohort.DEFAULT_EVENT_KINDS
    out = tmp_path / "all.parquet"
    # every kind the demo's files give (it has no chartevents; vital and output: tests/test_extract_vitals.py)
    kinds = [k for k in extract_cohort.EVENT_KINDS if k not in ("vital", "output")]
    every = run_extraction(out, mimic_demo_dir, event_kinds=",".join(kinds), progress=False)
    all_kinds = pd.read_parquet(out)
    assert set(all_kinds["event_type"].dropna()) == set(kinds)
    ingredients = all_kinds[all_kinds["event_type"] == "ingredient"]
    inputs = read_mimic(mimic_demo_dir, "icu/inputevents", usecols=["orderid"])
    assert ingredients["source_id"].str.split(":").str[0].astype(int).isin(inputs["orderid"]).all()
    assert every["events"] == counts["events"] + len(ingredients)
    for hours in (48, 24):
        out = tmp_path / f"labs{hours}.parquet"
        some = run_extraction(out, mimic_demo_dir, observation_hours=hours, event_kinds="lab,input", progress=False)
        stays = pd.read_parquet(out).drop_duplicates("stay_id").set_index("stay_id")
        cohort = expected_cohort(mimic_demo_dir, hours)
        assert sorted(stays.index) == sorted(cohort.index) and some["stays"] == len(cohort)
        assert (stays["mortality"] == cohort.loc[stays.index, "hospital_expire_flag"]).all()
        assert set(pd.read_parquet(out)["event_type"].dropna()) == {"lab", "input"}
    for bad in ("lab,xray", "", "ingredients"):
        with pytest.raises(ExtractionError, match="--event-kinds"):
            run_extraction(tmp_path / "x.csv", mimic_demo_dir, event_kinds=bad, progress=False)


def test_default_max_events_keeps_nine_in_ten_demo_stays_whole(demo_table):
    import train

    table, _ = demo_table
    per_stay = table.groupby("stay_id")["event_type"].count()
    max_events = train.build_arg_parser().get_default("max_events")
    assert (per_stay <= max_events).mean() >= 0.90, per_stay.describe()
    assert (per_stay > 256).mean() > 0.5  # the old default cut most stays: the bound is not trivial


def test_microbiology_org_name_positive_and_cancelled(demo_table, mimic_demo_dir, tmp_path):
    """org_name POSITIVE (e.g. C. difficile PCR) and CANCELLED, which the demo has only outside the windows:
    written into a copy of the demo on rows inside them."""
    table, _ = demo_table
    micro = read_mimic(mimic_demo_dir, "hosp/microbiologyevents")
    got = output_rows(table, "microbiologyevents")
    no_growth = micro["microevent_id"].isin(got.index) & micro["org_name"].isna() \
        & micro["comments"].fillna("").str.startswith("NO GROWTH")
    positive, cancelled, eia = micro.index[no_growth][:3]
    micro.loc[positive, ["org_name", "test_name"]] = ["POSITIVE", "C. difficile PCR"]
    micro.loc[cancelled, "org_name"] = "CANCELLED"
    micro.loc[eia, "comments"] = "POSITIVE BY EIA.  A positive IgG result generally indicates past exposure.  "
    mimic = mimic_copy(mimic_demo_dir, tmp_path / "mimic", skip={"hosp/microbiologyevents"})
    micro.to_csv(mimic / "hosp" / "microbiologyevents.csv.gz", index=False)
    run_extraction(tmp_path / "edited.parquet", mimic, progress=False)
    edited = output_rows(pd.read_parquet(tmp_path / "edited.parquet"), "microbiologyevents")
    ids = micro["microevent_id"]
    assert edited.at[ids[positive], "event_text"].endswith(" - C. difficile PCR, positive")
    assert ids[cancelled] not in edited.index
    assert edited.at[ids[eia], "event_text"].endswith(", positive")
    assert set(got.index) - {ids[cancelled]} <= set(edited.index)  # nothing else lost
