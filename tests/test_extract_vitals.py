"""query.sql's `vital` (icu/chartevents) and `output` (icu/outputevents) events (issue 24), on the real demo.

The MIMIC-IV demo here has no chartevents file, but the MEDS demo (../shared/mimic-iv-demo-meds, 20 of its
subjects) holds their real chartevents rows as `LAB//{itemid}//{unit}` with time, values and icustay_id. The
tests rebuild a chartevents table of MIMIC-IV's schema from them (`rebuild_chartevents`) and run the real query
on a copy of the demo folder (symlinks to the real files) with that table added. The MEDS rows have charttime
but no storetime: the rebuilt rows have storetime = charttime. The known-at rule (a row counts from its
storetime, and not at all if stored at or after the prediction time) is tested on a planted copy whose
storetimes are delayed, some across the prediction time; outputevents is the demo's own file, with real
storetimes. Counts are checked against an independent pandas count of the stated rules, whose bounds are
written here from mimic-code (measurement/vitalsign.sql, gcs.sql), not taken from extract_cohort.py.

    python tests/test_extract_vitals.py DIR   # writes that demo folder to DIR and measures events per stay
"""
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import event_table  # noqa: E402
import extract_cohort  # noqa: E402
from extract_cohort import ExtractionError, extract_cohort as run_extraction  # noqa: E402
from test_extract import expected_cohort, install_stand_in_bigquery, read_mimic  # noqa: E402

# mimic-code's bounds (valuenum > low and < high; <= high where inclusive) and the GCS scales
BOUNDS = {220045: (0, 300, False), 220179: (0, 400, False), 220050: (0, 400, False), 225309: (0, 400, False),
          220180: (0, 300, False), 220051: (0, 300, False), 225310: (0, 300, False), 220052: (0, 300, False),
          220181: (0, 300, False), 225312: (0, 300, False), 220210: (0, 70, False), 224690: (0, 70, False),
          223761: (70, 120, False), 223762: (10, 50, False), 220277: (0, 100, True), 225664: (0, np.inf, False),
          220621: (0, np.inf, False), 226537: (0, np.inf, False), 220739: (0, 4, True), 223901: (0, 6, True),
          223900: (0, 5, True)}
NOT_VITALS = (220046, 220047, 226253, 224688)  # alarm limits, SpO2 desaturation limit, set respiratory rate
FAHRENHEIT, CELSIUS, GCS_VERBAL = 223761, 223762, 223900
WITH_VITALS = ",".join(extract_cohort.EVENT_KINDS_WITH_VITALS)
MAX_EVENTS = 768  # train.py's default --max-events (train.py is not imported here: it is slow to import)


# ----------------------------------------------------------------------------- the rebuilt chartevents

def rebuild_chartevents(meds_dir) -> pd.DataFrame:
    """chartevents (MIMIC-IV 2.2 columns) from the MEDS rows LAB//{itemid}//{unit} with itemid >= 220000:
    stay_id = icustay_id, charttime = time, storetime = time (MEDS has no storetime), value = text_value (else
    the number), valuenum = numeric_value (float32 in MEDS: written at its shortest, 96.599998 -> 96.6),
    valueuom = the code's unit (UNK: none)."""
    files = sorted((Path(meds_dir) / "data").rglob("*.parquet"))
    rows = pd.concat([pd.read_parquet(f, columns=["subject_id", "time", "code", "numeric_value", "text_value",
                                                  "hadm_id", "icustay_id"]) for f in files], ignore_index=True)
    parts = rows["code"].str.split("//")
    itemid = pd.to_numeric(parts.str[1].where(parts.str[0] == "LAB"), errors="coerce")
    rows, parts = rows[itemid >= 220_000], parts[itemid >= 220_000]
    valuenum = pd.Series([float(str(v)) if pd.notna(v) else np.nan
                          for v in rows["numeric_value"].astype("float32").to_numpy()], index=rows.index)
    unit = parts.str[2].where(parts.str.len() > 2)
    table = pd.DataFrame({
        "subject_id": rows["subject_id"], "hadm_id": rows["hadm_id"].astype("Int64"),
        "stay_id": rows["icustay_id"].astype("Int64"), "caregiver_id": pd.array([pd.NA] * len(rows), "Int64"),
        "charttime": rows["time"], "storetime": rows["time"], "itemid": parts.str[1].astype("int64"),
        "value": rows["text_value"].where(rows["text_value"].notna(),
                                          valuenum.map(lambda v: None if pd.isna(v) else f"{v:g}")),
        "valuenum": valuenum, "valueuom": unit.where(unit != "UNK"), "warning": pd.array([pd.NA] * len(rows), "Int64")})
    return table.sort_values(["stay_id", "charttime", "itemid"], kind="stable", ignore_index=True)


def demo_with_chartevents(mimic_demo_dir, chartevents: pd.DataFrame, dest: Path) -> Path:
    """A MIMIC-IV folder of symlinks to the demo's files, plus icu/chartevents.csv.gz written from `chartevents`."""
    for module in ("hosp", "icu"):
        (dest / module).mkdir(parents=True)
        for f in (Path(mimic_demo_dir) / module).iterdir():
            (dest / module / f.name).symlink_to(f.resolve())
    if chartevents is not None:
        chartevents.to_csv(dest / "icu" / "chartevents.csv.gz", index=False, date_format="%Y-%m-%d %H:%M:%S")
    return dest


def plant(chartevents: pd.DataFrame, cohort: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A copy with (1) rows at and beyond each bound, alarm items and a row without a number, in a window; (2) the
    storetime of every row charted in the last 3 h before the prediction time moved past it (left out); (3) rows
    charted 10-6 h before it stored 2 h late (kept, at their storetime). Returns the copy and the planted keys."""
    table = chartevents.copy()
    windows = cohort.loc[cohort.index.intersection(table["stay_id"].dropna().astype(int).unique())]
    stay = windows.index[0]
    pt = table["stay_id"].map(windows["prediction_time"])
    late = (table["charttime"] < pt) & (table["charttime"] >= pt - pd.Timedelta(hours=3))
    table.loc[late, "storetime"] = pt[late] + pd.Timedelta(minutes=30)
    slow = (table["charttime"] < pt - pd.Timedelta(hours=6)) & (table["charttime"] >= pt - pd.Timedelta(hours=10))
    table.loc[slow, "storetime"] = table.loc[slow, "charttime"] + pd.Timedelta(hours=2)
    base = table[(table["stay_id"] == stay)].iloc[0]
    t0 = windows.at[stay, "intime"] + pd.Timedelta(hours=20)
    edge = [(220045, 0.0, False), (220045, 300.0, False), (220045, 299.9, True), (220277, 100.0, True),
            (220277, 100.5, False), (FAHRENHEIT, 70.0, False), (FAHRENHEIT, 119.0, True), (CELSIUS, 50.0, False),
            (CELSIUS, 10.5, True), (225664, 0.0, False), (225664, 2000.0, True), (223901, 7.0, False),
            (220739, 0.0, False), (220179, 399.0, True), (220179, 400.0, False), (220045, np.nan, False),
            (220046, 120.0, False), (224688, 14.0, False)]
    planted = []
    for k, (itemid, value, kept) in enumerate(edge):
        t = t0 + pd.Timedelta(minutes=k + 1, seconds=7)
        planted.append({**base.to_dict(), "itemid": itemid, "charttime": t, "storetime": t, "valuenum": value,
                        "value": "" if np.isnan(value) else f"{value:g}", "valueuom": None})
    table = pd.concat([table, pd.DataFrame(planted)], ignore_index=True)
    keys = {"stay": stay, "late": table.index[late.reindex(table.index, fill_value=False)],
            "slow": table.index[slow.reindex(table.index, fill_value=False)],
            "edge": [(itemid, t0 + pd.Timedelta(minutes=k + 1, seconds=7), kept) for k, (itemid, _, kept) in enumerate(edge)]}
    return table, keys


# ----------------------------------------------------------------------------- independent counts

def source_key(itemid, charttime) -> pd.Series:
    """query.sql's source_id of a chartevents or outputevents row: itemid:charttime."""
    return itemid.astype("int64").astype(str) + ":" + pd.to_datetime(charttime).dt.strftime("%Y-%m-%d %H:%M:%S")


def expected_vitals(chartevents: pd.DataFrame, cohort: pd.DataFrame) -> pd.DataFrame:
    """The chartevents rows query.sql must write as `vital`, by the stated rules, in pandas: cohort stays, the
    vital-sign items, known (storetime, else charttime) in [intime, prediction time), valuenum inside its bounds
    or a GCS verbal "No Response-ETT"; with `known`, the value as shown (°F -> °C) and source_id."""
    rows = chartevents[chartevents["itemid"].isin(BOUNDS)].copy()
    rows["stay_id"] = rows["stay_id"].astype("int64")
    rows = rows.join(cohort[["intime", "prediction_time"]], on="stay_id", how="inner")
    rows["known"] = pd.to_datetime(rows["storetime"]).fillna(pd.to_datetime(rows["charttime"]))
    rows = rows[(rows["known"] >= rows["intime"]) & (rows["known"] < rows["prediction_time"])]
    low = rows["itemid"].map(lambda i: BOUNDS[i][0])
    high = rows["itemid"].map(lambda i: BOUNDS[i][1])
    inclusive = rows["itemid"].map(lambda i: BOUNDS[i][2]).astype(bool)
    v = rows["valuenum"]
    ok = (v > low) & ((v < high) | (inclusive & (v == high)))
    ett = (rows["itemid"] == GCS_VERBAL) & (rows["value"] == "No Response-ETT")
    rows = rows[ok | ett].copy()
    rows["ett"] = ett[rows.index]
    rows["shown"] = np.where(rows["itemid"] == FAHRENHEIT, (rows["valuenum"] - 32) / 1.8, rows["valuenum"])
    rows.loc[rows["ett"], "shown"] = np.nan
    rows["source_id"] = source_key(rows["itemid"], rows["charttime"])
    return rows


def expected_outputs(mimic_demo_dir, cohort: pd.DataFrame) -> pd.DataFrame:
    rows = read_mimic(mimic_demo_dir, "icu/outputevents", parse_dates=["charttime", "storetime"])
    rows = rows.join(cohort[["intime", "prediction_time"]], on="stay_id", how="inner").dropna(subset=["value"])
    rows["known"] = rows["storetime"].fillna(rows["charttime"])
    rows = rows[(rows["known"] >= rows["intime"]) & (rows["known"] < rows["prediction_time"])].copy()
    rows["source_id"] = source_key(rows["itemid"], rows["charttime"])
    return rows


def by_item(table: pd.DataFrame, source_table: str) -> pd.Series:
    """Events per (stay, itemid) of one source table of an extracted event table."""
    rows = table[table["source_table"] == source_table]
    return rows.groupby([rows["stay_id"].astype("int64"),
                         rows["source_id"].str.split(":").str[0].astype("int64").rename("itemid")]).size()


def shown_number(texts: pd.Series) -> pd.Series:
    """The number the model's value channel reads in each text (event_table.items_and_values)."""
    return event_table.items_and_values(texts)[1]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cohort(mimic_demo_dir):
    return expected_cohort(mimic_demo_dir)


@pytest.fixture(scope="module")
def chartevents(meds_demo_dir):
    return rebuild_chartevents(meds_demo_dir)


@pytest.fixture(scope="module")
def planted(chartevents, cohort):
    return plant(chartevents, cohort)


@pytest.fixture(scope="module")
def folders(mimic_demo_dir, chartevents, planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("vitals")
    return {"rebuilt": demo_with_chartevents(mimic_demo_dir, chartevents, root / "rebuilt"),
            "planted": demo_with_chartevents(mimic_demo_dir, planted[0], root / "planted")}


def extracted(folder, out, **options) -> pd.DataFrame:
    run_extraction(out, folder, progress=False, threads=1, **options)
    return pd.read_parquet(out)


@pytest.fixture(scope="module")
def each_charting(folders, tmp_path_factory):
    """vital and output events, each charting an event: on the rebuilt table and on the planted one."""
    out = tmp_path_factory.mktemp("vitals_out")
    return {name: extracted(folders[name], out / f"{name}.parquet", event_kinds="vital,output", vital_bin_hours=0)
            for name in ("rebuilt", "planted")}


# ----------------------------------------------------------------------------- each charting

@pytest.mark.parametrize("name", ["rebuilt", "planted"])
def test_vital_counts_per_stay_and_item_equal_the_independent_count(each_charting, chartevents, planted, cohort,
                                                                    name):
    table = each_charting[name]
    expected = expected_vitals(chartevents if name == "rebuilt" else planted[0], cohort)
    got = by_item(table, "chartevents")
    want = expected.groupby(["stay_id", "itemid"]).size()
    assert len(want) > 150 and want.index.get_level_values("itemid").nunique() >= 18
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    assert (table.loc[table["source_table"] == "chartevents", "event_type"] == "vital").all()
    # every stay with vital rows in its window has vital events; the ones without chartevents have none
    assert set(table.loc[table["event_type"] == "vital", "stay_id"]) == set(expected["stay_id"])
    # each row at its known time, with its value (°F as °C)
    rows = table[table["source_table"] == "chartevents"].merge(
        expected[["stay_id", "source_id", "known", "shown", "ett"]], on=["stay_id", "source_id"], validate="1:1")
    assert (pd.to_datetime(rows["event_time"]) == rows["known"]).all()
    shown = shown_number(rows["event_text"])
    assert shown.isna().eq(rows["ett"]).all()
    np.testing.assert_allclose(shown[~rows["ett"]], rows.loc[~rows["ett"], "shown"], rtol=5e-3)


def test_output_counts_per_stay_and_item_equal_the_independent_count(each_charting, mimic_demo_dir, cohort):
    for table in each_charting.values():  # outputevents is the demo's own in both folders
        expected = expected_outputs(mimic_demo_dir, cohort)
        got = by_item(table, "outputevents")
        pd.testing.assert_series_equal(got.sort_index(), expected.groupby(["stay_id", "itemid"]).size().sort_index(),
                                       check_names=False)
        rows = table[table["source_table"] == "outputevents"]
        assert (rows["event_type"] == "output").all()
        # vital and output events for every stay that has them: here every cohort stay has outputs
        assert set(rows["stay_id"]) == set(expected["stay_id"]) == set(cohort.index)
        merged = rows.merge(expected[["stay_id", "source_id", "known", "value", "valueuom"]],
                            on=["stay_id", "source_id"], validate="1:1")
        assert (pd.to_datetime(merged["event_time"]) == merged["known"]).all()
        volume = merged["event_text"].str.extract(r"^Output: \D+ (\d+(?:\.\d+)?) ml$")[0].astype(float)
        np.testing.assert_allclose(volume, merged["value"], rtol=5e-3)


def test_outputs_stored_after_the_prediction_time_are_left_out(each_charting, mimic_demo_dir, cohort):
    """Real storetimes: outputs measured before the prediction time but stored after it are not written; those
    measured after it (charted ahead) but stored before it are, at their storetime."""
    rows = read_mimic(mimic_demo_dir, "icu/outputevents", parse_dates=["charttime", "storetime"])
    rows = rows.join(cohort[["intime", "prediction_time"]], on="stay_id", how="inner")
    rows["source_id"] = source_key(rows["itemid"], rows["charttime"])
    late = rows[(rows["charttime"] >= rows["intime"]) & (rows["charttime"] < rows["prediction_time"])
                & (rows["storetime"] >= rows["prediction_time"])]
    ahead = rows[(rows["charttime"] >= rows["prediction_time"]) & (rows["storetime"] < rows["prediction_time"])]
    assert len(late) > 10 and len(ahead) > 0, "the demo has outputs stored after the prediction time"
    got = each_charting["rebuilt"]
    got = got[got["source_table"] == "outputevents"]
    keys = set(zip(got["stay_id"], got["source_id"]))
    assert not keys & set(zip(late["stay_id"], late["source_id"]))
    assert set(zip(ahead["stay_id"], ahead["source_id"])) <= keys


def test_nothing_stored_after_the_prediction_time(each_charting, planted):
    table, keys = planted
    for events in each_charting.values():
        rows = events.dropna(subset=["event_type"])
        assert (pd.to_datetime(rows["event_time"]) < pd.to_datetime(rows["prediction_time"])).all()
        assert (rows["relative_time_to_final_event"] > 0).all()
    got = each_charting["planted"]
    got = set(zip(got["stay_id"], got["source_id"]))
    late = table.loc[keys["late"]]
    late = late[late["itemid"].isin(BOUNDS)]
    assert len(late) > 100, "rows stored across the prediction time were planted"
    assert not got & set(zip(late["stay_id"].astype("int64"), source_key(late["itemid"], late["charttime"])))
    slow = table.loc[keys["slow"]]
    slow = slow[slow["itemid"].isin(BOUNDS)]
    written = each_charting["planted"].set_index(["stay_id", "source_id"])["event_time"]
    slow_keys = list(zip(slow["stay_id"].astype("int64"), source_key(slow["itemid"], slow["charttime"])))
    assert len(slow_keys) > 50 and all(k in written.index for k in slow_keys)  # (no bound drops one on the demo)
    times = pd.to_datetime(written.loc[slow_keys]).to_numpy()
    stored = slow["storetime"].to_numpy()
    assert (times == stored).all()  # at the storetime, 2 h after the charting


def test_bounds_and_unit_conversion(each_charting, planted):
    table, keys = planted
    got = each_charting["planted"]
    got = got[got["stay_id"] == keys["stay"]].set_index("source_id")["event_text"]
    for itemid, charttime, kept in keys["edge"]:
        key = f"{itemid}:{charttime:%Y-%m-%d %H:%M:%S}"
        assert (key in got.index) == kept, (itemid, charttime, kept)
    assert got[f"{FAHRENHEIT}:{keys['edge'][6][1]:%Y-%m-%d %H:%M:%S}"] == "Vital: Temperature Celsius 48.3 °C"
    assert got[f"225664:{keys['edge'][10][1]:%Y-%m-%d %H:%M:%S}"] == "Vital: Glucose finger stick 2000"
    texts = each_charting["rebuilt"].loc[lambda t: t["event_type"] == "vital", "event_text"]
    assert not texts.str.contains("Fahrenheit|°F").any()
    celsius = shown_number(texts[texts.str.startswith("Vital: Temperature Celsius ")])
    assert len(celsius) > 100 and celsius.between(30, 45).all() and texts.str.endswith(" °C").sum() == len(celsius)
    # GCS verbal "No Response-ETT" is intubated: written in words, no number for the value channel
    ett = texts[texts.str.startswith("Vital: GCS - Verbal Response ")]
    assert (ett == "Vital: GCS - Verbal Response No Response-ETT").sum() > 20
    assert ett.str.match(r"Vital: GCS - Verbal Response (No Response-ETT|[1-5])$").all()
    assert shown_number(ett[ett.str.endswith("ETT")]).isna().all()


def test_texts_match_the_meds_import(each_charting, meds_demo_dir, tmp_path):
    """The same rows through meds_cohort.py (MEDS) and query.sql (rebuilt, storetime = charttime) give the same
    events, texts and times, but for the documented differences: query.sql writes °F as °C (MEDS: Temperature
    Fahrenheit) and an intubated GCS verbal response in words (MEDS: the ETL's score 1), and drops values outside
    the bounds (none on the demo). Outputs: the same text for the same row (MEDS at charttime, query.sql at
    storetime)."""
    import meds_cohort

    meds_cohort.import_meds(meds_demo_dir, tmp_path / "meds.parquet", log=None)
    meds = pd.read_parquet(tmp_path / "meds.parquet").dropna(subset=["event_type"])
    sql = each_charting["rebuilt"]
    stays = sorted(set(meds["stay_id"]) & set(sql["stay_id"]))
    assert len(stays) == meds["stay_id"].nunique() >= 10
    meds = meds[meds["stay_id"].isin(stays)].assign(
        itemid=lambda d: pd.to_numeric(d["code"].str.split("//").str[1], errors="coerce"),
        event_time=lambda d: pd.to_datetime(d["event_time"]))
    sql = sql[sql["stay_id"].isin(stays)].assign(
        itemid=lambda d: d["source_id"].str.split(":").str[0].astype("int64"),
        event_time=lambda d: pd.to_datetime(d["event_time"]))
    key = ["stay_id", "itemid", "event_time"]
    mv, sv = (t[t["event_type"] == "vital"].sort_values(key, ignore_index=True) for t in (meds, sql))
    # MEDS rows join a prediction by subject and time, query.sql's by stay_id: a row of the patient's other ICU
    # stay, charted inside this stay's window, is there twice in MEDS (once on the demo)
    twice = mv.duplicated(key + ["event_text"])
    assert twice.sum() <= 3
    mv = mv[~twice].reset_index(drop=True)
    pd.testing.assert_frame_equal(mv[key], sv[key], check_dtype=False)  # the same chartings, at the same times
    same = ~mv["itemid"].isin([FAHRENHEIT, GCS_VERBAL])
    assert same.sum() > 3000 and (mv.loc[same, "event_text"] == sv.loc[same, "event_text"]).all()
    fahrenheit = mv["itemid"] == FAHRENHEIT
    assert fahrenheit.sum() > 100 and mv.loc[fahrenheit, "event_text"].str.match(r"Vital: Temperature Fahrenheit [\d.]+ °F$").all()
    # (MEDS's 3 significant figures round 100.4 °F to 100: within 0.5 °F)
    np.testing.assert_allclose(shown_number(sv.loc[fahrenheit, "event_text"]),
                               (shown_number(mv.loc[fahrenheit, "event_text"]) - 32) / 1.8, atol=0.5 / 1.8 + 0.05)
    verbal = mv["itemid"] == GCS_VERBAL
    ett = sv["event_text"] == "Vital: GCS - Verbal Response No Response-ETT"
    assert ett.sum() > 20 and (mv.loc[ett, "event_text"] == "Vital: GCS - Verbal Response 1").all()
    assert (mv.loc[verbal & ~ett, "event_text"] == sv.loc[verbal & ~ett, "event_text"]).all()
    # outputs: the same text for the same row
    mo = meds[meds["event_type"] == "output"]
    mo = mo.assign(source_id=source_key(mo["itemid"], mo["event_time"]))
    so = sql[sql["event_type"] == "output"]
    both = so.merge(mo, on=["stay_id", "source_id"], suffixes=("_sql", "_meds"), validate="1:1")
    assert len(both) > 0.8 * min(len(so), len(mo)) and len(both) > 300
    assert (both["event_text_sql"] == both["event_text_meds"]).all(), \
        both.loc[both["event_text_sql"] != both["event_text_meds"], ["event_text_sql", "event_text_meds"]].head()


def test_output_labels_drop_their_numbers_as_the_meds_import_names_them(each_charting, mimic_demo_dir):
    import meds_cohort

    texts = each_charting["rebuilt"].loc[lambda t: t["event_type"] == "output"]
    itemid = texts["source_id"].str.split(":").str[0].astype("int64")
    names = texts["event_text"].str.extract(r"^Output: (.+?) \d+(?:\.\d+)? ml$")[0]
    assert names.notna().all()
    assert not names.str.contains(r"\d").any()  # Chest Tube #1 and #2 are one item; the value channel reads mL
    assert (names == itemid.map(meds_cohort.OUTPUT_ITEMS)).all()


# ----------------------------------------------------------------------------- one event per item per bin

@pytest.fixture(scope="module")
def binned(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("vitals_binned")
    return extracted(folders["planted"], out / "binned.parquet", event_kinds="vital")


def test_binned_vitals_equal_the_independent_summary(binned, planted, cohort):
    """The default --vital-bin-hours: one event per item per bin of charttime counted back from the prediction
    time, the bin's last value with its min and max, at the time its last row was stored; rows stored after the
    prediction time (planted) take no part."""
    hours = extract_cohort.DEFAULT_VITAL_BIN_HOURS
    assert hours > 0
    rows = expected_vitals(planted[0], cohort)
    rows["bin"] = np.floor((rows["prediction_time"] - pd.to_datetime(rows["charttime"])).dt.total_seconds()
                           / (3600 * hours))
    rows = rows.sort_values(["charttime", "known", "shown"])
    groups = rows.groupby(["stay_id", "itemid", "bin"])
    want = pd.DataFrame({"last": groups["shown"].last(), "min": groups["shown"].min(), "max": groups["shown"].max(),
                         "known": groups["known"].max(), "charttime": groups["charttime"].last(),
                         "ett": groups["ett"].last()}).reset_index()
    want["source_id"] = source_key(want["itemid"], want["charttime"])
    got = binned[binned["event_type"] == "vital"]
    assert set(got["event_type"].dropna()) == {"vital"} and len(got) < 0.7 * len(rows)
    merged = got.merge(want, on=["stay_id", "source_id"], how="outer", validate="1:1", indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both"].head()
    assert (pd.to_datetime(merged["event_time"]) == merged["known"]).all()
    parsed = merged["event_text"].str.extract(r" (-?[\d.]+)(?: \S+)? \(min (-?[\d.]+), max (-?[\d.]+)\)$").astype(float)
    numeric = merged["min"].notna()
    assert parsed[0].notna().eq(numeric & ~merged["ett"]).all()
    for column, value in ((1, "min"), (2, "max")):
        np.testing.assert_allclose(parsed.loc[numeric, column], merged.loc[numeric, value], rtol=5e-3)
    last = ~merged["ett"]
    np.testing.assert_allclose(shown_number(merged.loc[last, "event_text"]), merged.loc[last, "last"], rtol=5e-3)
    items = merged["event_text"].str.replace(r"\d+(?:\.\d+)?", "#", regex=True)
    assert (items[numeric & ~merged["ett"]].str.endswith("(min #, max #)")).all()


@pytest.mark.slow
def test_event_kinds_select_vital_and_output_and_change_nothing_else(folders, mimic_demo_dir, tmp_path, cohort):
    """--event-kinds: the default writes no vital or output event (and needs no chartevents); asking for them
    adds them and leaves every other event as it was. With the default --vital-bin-hours the demo stays with
    chartevents fit whole in train.py's default --max-events (docs/design.md has the measurement)."""
    default = extracted(folders["rebuilt"], tmp_path / "default.parquet")
    assert set(default["event_type"].dropna()) == set(extract_cohort.DEFAULT_EVENT_KINDS)
    every = extracted(folders["rebuilt"], tmp_path / "every.parquet", event_kinds=WITH_VITALS)
    assert set(every["event_type"].dropna()) == set(WITH_VITALS.split(","))
    others = every[~every["event_type"].isin(["vital", "output"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, default.reset_index(drop=True))
    per_stay = every.groupby("stay_id")["event_type"].count()
    with_vitals = every.loc[every["event_type"] == "vital", "stay_id"].unique()
    assert len(with_vitals) >= 10
    assert (per_stay[with_vitals] <= MAX_EVENTS).mean() >= 0.95, per_stay[with_vitals].describe()
    only = extracted(folders["rebuilt"], tmp_path / "vital.parquet", event_kinds="vital")
    assert set(only["event_type"].dropna()) == {"vital"} and sorted(only["stay_id"].unique()) == sorted(cohort.index)
    outputs = extracted(mimic_demo_dir, tmp_path / "output.parquet", event_kinds="output")  # the demo as is
    assert set(outputs["event_type"].dropna()) == {"output"}


def test_chartevents_is_needed_only_for_vital(mimic_demo_dir, tmp_path):
    demo = demo_with_chartevents(mimic_demo_dir, None, tmp_path / "demo")
    with pytest.raises(ExtractionError, match=r"icu/chartevents is missing.*--event-kinds vital"):
        run_extraction(tmp_path / "x.parquet", demo, event_kinds="lab,vital", progress=False)
    assert not (tmp_path / "x.parquet").exists()
    assert "icu/chartevents" not in extract_cohort.needed_tables()
    assert "icu/chartevents" in extract_cohort.needed_tables("vital")
    assert "icu/outputevents" in extract_cohort.needed_tables("output")
    for bad in ({"vital_bin_hours": -1}, {"vital_bin_hours": float("nan")}):
        with pytest.raises(ExtractionError, match="bin hours|--vital-bin-hours"):
            extract_cohort.query_parameters(**bad)
    with pytest.raises(ExtractionError, match="--event-kinds"):
        extract_cohort.parse_event_kinds("vitals")


# ----------------------------------------------------------------------------- BigQuery

def ctes(statement) -> dict:
    return {cte.alias: cte.this for cte in statement.find(exp.With).expressions}


def test_bigquery_text_of_the_new_blocks_compiles_and_matches_duckdb():
    """The BigQuery text of the vital and output blocks parses in sqlglot's BigQuery dialect, names the two new
    tables, and, with the parameters bound and translated, is the SQL the DuckDB engine runs, CTE by CTE."""
    kinds = WITH_VITALS.split(",")
    sql = extract_cohort.bigquery_sql("mimiciv_hosp", "mimiciv_icu", event_kinds=kinds)
    statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    select = statements[-1]
    tables = {f"{t.db}.{t.name}" for t in select.find_all(exp.Table) if t.db}
    assert {"mimiciv_icu.chartevents", "mimiciv_icu.outputevents", "mimiciv_icu.d_items"} <= tables
    assert {p.name for p in select.find_all(exp.Parameter)} == {"observation_hours", "lookback_hours", "whole_stay",
                                                                "event_kinds", "vital_bin_hours"}
    params = extract_cohort.query_parameters(event_kinds=kinds)
    _, duck = extract_cohort.duckdb_statements(params)
    duck = ctes(sqlglot.parse_one(duck, read="duckdb"))
    from_bigquery = ctes(extract_cohort.bind_parameters(select, params).transform(extract_cohort.duckdb_fixups))
    new = ("vital_items", "vital_rows", "vital_events", "output_events")
    assert set(new) <= set(duck)
    for name in duck:
        assert from_bigquery[name].sql("duckdb") == duck[name].sql("duckdb"), name
    assert "WHERE FALSE" not in sql  # the placeholder rows are replaced by VITAL_RULES'
    assert sql.count("UNION ALL") >= len(extract_cohort.VITAL_RULES)
    # without the kinds, neither the blocks nor their tables nor @vital_bin_hours are in the query
    default = [s for s in sqlglot.parse(extract_cohort.bigquery_sql(), read="bigquery") if s is not None][-1]
    assert not {"chartevents", "outputevents", "vital_rows"} & {t.name for t in default.find_all(exp.Table)}
    assert "vital_bin_hours" not in {p.name for p in default.find_all(exp.Parameter)}


def test_bigquery_engine_sends_the_vital_parameters(each_charting, tmp_path, monkeypatch):
    """The BigQuery engine with a stand-in client (as tests/test_extract.py): @vital_bin_hours goes as a FLOAT64
    query parameter with the vital kinds, and only then."""
    import pyarrow as pa

    table = each_charting["rebuilt"]
    sent = []

    class Client:
        def __init__(self, project):
            pass

        def query(self, sql, job_config):
            sent.append((sql, job_config.query_parameters))
            return types.SimpleNamespace(result=lambda page_size: types.SimpleNamespace(
                to_arrow_iterable=lambda: iter(pa.Table.from_pandas(table, preserve_index=False).to_batches())))

    install_stand_in_bigquery(monkeypatch, Client)
    run_extraction(tmp_path / "bq.parquet", engine="bigquery", project="p", hosp_dataset="p.h", icu_dataset="p.i",
                   event_kinds="lab,vital,output", vital_bin_hours=1)
    run_extraction(tmp_path / "bq.parquet", engine="bigquery", project="p", hosp_dataset="p.h", icu_dataset="p.i",
                   event_kinds="lab,output")
    (with_vital, params), (without, params_without) = sent
    assert ("vital_bin_hours", "FLOAT64", 1.0) in params
    assert ("event_kinds", "ARRAY<STRING>", ("lab", "vital", "output")) in params
    assert "p.i.chartevents" in with_vital and "p.i.outputevents" in with_vital
    assert "p.i.chartevents" not in without and "p.i.outputevents" in without
    assert not [p for p in params_without if p[0] == "vital_bin_hours"]


# ----------------------------------------------------------------------------- measuring (python tests/...py DIR)

def measure(folder: Path, bins=(0, 1, 2, 4)) -> pd.DataFrame:
    """Events per stay with `vital` as each charting (bin 0) or one event per item per bin, and the share of stays
    whose events fit whole in --max-events: the stays with chartevents, and every cohort stay given in turn each
    of those stays' vital events (the demo's stays as if all had chartevents)."""
    runs = {"default + output": extracted(folder, folder / "default_output.parquet",
                                          event_kinds=",".join((*extract_cohort.DEFAULT_EVENT_KINDS, "output")))}
    runs.update({f"vital, {h} h bins" if h else "vital, each charting": extracted(
        folder, folder / f"vital_{h}h.parquet", event_kinds=WITH_VITALS, vital_bin_hours=h) for h in bins})
    with_vitals = runs["vital, each charting"].loc[lambda t: t["event_type"] == "vital", "stay_id"].unique()
    rows = []
    for name, table in runs.items():
        per_stay = table.groupby("stay_id")["event_type"].count()
        vital = table[table["event_type"] == "vital"].groupby("stay_id").size().reindex(with_vitals, fill_value=0)
        others = per_stay.drop(with_vitals)
        given = np.r_[per_stay[with_vitals].to_numpy(), (others.to_numpy()[:, None] + vital.to_numpy()).ravel()] \
            if vital.any() else per_stay.to_numpy()  # without vitals: every stay as it is
        rows.append({"run": name, "vital/stay": vital.median(), "events/stay": per_stay[with_vitals].median(),
                     "max": per_stay[with_vitals].max(), "fit 768": (per_stay[with_vitals] <= 768).mean(),
                     "all given vitals: fit 768": (given <= 768).mean(), "fit 1024": (given <= 1024).mean()})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    demo = Path(os.environ.get("MIMIC_IV_DEMO_DIR", here.parent / "shared" / "mimic-iv-demo"))
    meds = Path(os.environ.get("MIMIC_IV_DEMO_MEDS_DIR", here.parent / "shared" / "mimic-iv-demo-meds"))
    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        sys.exit("usage: python tests/test_extract_vitals.py NEW_DIR  (writes the demo with the rebuilt chartevents "
                 "there and measures events per stay)")
    folder = demo_with_chartevents(demo, rebuild_chartevents(meds), Path(sys.argv[1]))
    print(f"{folder}: the demo with the rebuilt icu/chartevents.csv.gz")
    print(measure(folder).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
