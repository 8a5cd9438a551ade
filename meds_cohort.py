"""MEDS in: the event table of docs/interfaces.md section 1 from a MEDS dataset (Medical Event Data Standard).

    python extract_cohort.py --meds DIR --output FILE [--labels PATH] [--observation-hours H]

Reads data/**/*.parquet (column by column by name: shards may differ in their optional columns),
metadata/codes.parquet (code -> description) and, with --labels, a MEDS label file or folder. Each
prediction is one "stay" of the event table:

- without --labels, query.sql's task computed from the codes: one prediction per ICU admission
  (ICU_ADMISSION rows), at intime + --observation-hours, for adults still in the ICU (ICU_DISCHARGE after
  it) and alive (MEDS_DEATH after it); the label is death before hospital discharge;
- with --labels, one prediction per label row (mortality = boolean_value).

Every MEDS row of the patient in [window start, prediction time) whose code maps to an event kind
(`code_rule`) becomes one event; codes that reveal the outcome (death, discharge, diagnoses, DRG, ...)
and the admission bookkeeping never do. The mapping and the windows are in docs/interfaces.md,
"MEDS in". The small structural rows (admissions, ICU stays, birth, death, gender) are read into pandas;
the events are joined and written by DuckDB (COPY to a temporary name, then renamed), so a dataset
larger than memory streams through.
"""
import sys
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import atomic_io
from event_table import EVENT_TYPES
from extract_cohort import (VITAL_ITEMS, ExtractionError, check_output_path, cohort_counts, copy_options,
                            duckdb_statements, query_parameters, sql_string)

DATA = meds.DataSchema
LABEL = meds.LabelSchema
CODES = meds.CodeMetadataSchema
# The optional columns the import reads when a shard has them (the MIMIC-IV ETL's names); absent ones are NULL.
ROW_COLUMNS = ("hadm_id", "icustay_id", "unit", "route", "insurance", "marital_status", "race")
SEP = "//"
# The project's own code family (meds_export.py, "MEDS out"): EVENT_TABLE//{event_type}//{item}, the event text in
# text_value, read back verbatim.
EVENT_TABLE_FAMILY = "EVENT_TABLE"
UNKNOWN = "UNK"  # the MEDS ETLs' code part for a missing value (a unit, a careunit)
# Ids of predictions that no ICU stay gives one (labels outside an ICU stay, or a second label in one stay):
# above every MIMIC-IV stay_id (30,000,000-39,999,999), within int32.
SYNTHETIC_ID_START = 1_000_000_000

# MIMIC-IV's chartevents items (d_items) start at 220000; d_labitems (hospital labs) are 50000-53xxx. The
# ETL writes both as LAB//{itemid}//{unit}.
CHARTEVENTS_FIRST_ITEMID = 220_000
# The chartevents imported as `vital`: mimic-code's vital-sign and GCS items with their d_items labels
# (extract_cohort.VITAL_ITEMS, the list query.sql reads too; the 0.0.9 ETL's codes.parquet has no description for
# chartevents). The MEDS rows are imported as charted: no bounds, Fahrenheit kept, "No Response-ETT" as its score
# (the ETL's numeric_value; docs/interfaces.md, "MEDS in").
# outputevents items (SUBJECT_FLUID_OUTPUT//{itemid}//{unit}) with their d_items labels, as for VITAL_ITEMS: the
# 0.0.9 ETL's codes.parquet has none, and without a name every output would be one item ("fluid output (item #)").
# The ~40 items seen in the MIMIC-IV demo's outputevents; "#1"-style numbers are dropped from labels (the value
# channel reads the first stand-alone number), so "Chest Tube #1" and "#2" are one item.
OUTPUT_ITEMS = {
    226559: "Foley", 226560: "Void", 226561: "Condom Cath", 226567: "Straight Cath", 226627: "OR Urine",
    226631: "PACU Urine", 227488: "GU Irrigant Volume In", 227489: "GU Irrigant/Urine Volume Out",
    226588: "Chest Tube", 226589: "Chest Tube", 226590: "L Pleural", 226592: "Mediastinal", 226612: "Pericardial",
    226606: "Cerebral Ventricular", 226607: "Cerebral Ventricular", 226599: "Jackson Pratt", 226600: "Jackson Pratt",
    226601: "Jackson Pratt", 226602: "Jackson Pratt", 226619: "Pigtail", 226613: "Wound Vac", 226604: "Hemovac",
    226628: "PACU Drains", 227701: "Drainage Bag", 226625: "Tap", 226626: "OR EBL", 226632: "Cath Lab",
    227510: "TF Residual", 227511: "TF Residual Output", 226576: "Oral Gastric", 226575: "Nasogastric",
    226573: "Gastric Tube", 226570: "Blakemore", 226571: "Emesis", 226582: "Ostomy (output)", 226580: "Fecal Bag",
    226579: "Stool", 226583: "Rectal Tube", 226633: "Pre-Admission",
}
# Code families that are never events, and why (the first `//` part of the code).
LEFT_OUT_FAMILIES = {
    meds.death_code: "outcome", "HOSPITAL_DISCHARGE": "outcome", "ICU_DISCHARGE": "outcome",
    "DIAGNOSIS": "outcome (ICD codes are assigned at discharge)", "DRG": "outcome (billing, at discharge)",
    "HCPCS": "billing", meds.birth_code: "static", "GENDER": "static",
    "HOSPITAL_ADMISSION": "bookkeeping (static columns)", "ICU_ADMISSION": "bookkeeping (static columns)",
    "TRANSFER_TO": "bookkeeping", "ED_REGISTRATION": "bookkeeping", "ED_OUT": "bookkeeping",
}
# Structural rows read into pandas to build the predictions and their static columns.
STRUCTURAL_FAMILIES = ("ICU_ADMISSION", "ICU_DISCHARGE", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE",
                       meds.birth_code, meds.death_code, "GENDER")
TEXT_PREFIX = {"lab": "Lab: ", "vital": "Vital: ", "output": "Output: ", "prescription": "Prescription: ",
               "input": "Input: ", "procedure": "Procedure: ", "microbiology": "Microbiology: "}


# ----------------------------------------------------------------------------- codes -> event kinds

def code_rule(code: str, description=None) -> dict:
    """How one MEDS code becomes events: {kind, name, digits, value_word, unit, unit_from_row, with_route,
    suffix} for a code that is imported, or {kind: None, left_out: why} for one that is not. The event text
    is "<Kind prefix><name> [value_word] <value> <unit> [route] [suffix]" (see events_sql)."""
    parts = code.split(SEP)
    family = parts[0]
    desc = description.strip() if isinstance(description, str) and description.strip() else None
    rule = {"kind": None, "left_out": None, "name": None, "digits": 3, "value_word": None,
            "unit": None, "unit_from_row": False, "with_route": False, "suffix": None, "verbatim": False}

    def event(kind, name, **kw):
        return {**rule, "kind": kind, "name": TEXT_PREFIX[kind] + name, **kw}

    def left_out(why):
        return {**rule, "left_out": f"{family}: {why}"}

    if family in LEFT_OUT_FAMILIES:
        return left_out(LEFT_OUT_FAMILIES[family])
    if family == EVENT_TABLE_FAMILY:  # meds_export.py's rows: the text_value is the event text
        if len(parts) < 3 or parts[1] not in EVENT_TYPES:
            return left_out(f"unknown event type {parts[1] if len(parts) > 1 else ''!r}")
        return {**rule, "kind": parts[1], "name": desc or SEP.join(parts[2:]), "verbatim": True}
    rest = parts[1:]
    if family == "LAB":
        if rest[:1] == ["SPECIMEN_COLLECTED"]:  # newer ETLs: the draw (no value); the result is LAB//RESULT//...
            return left_out("specimen collected (no result)")
        if rest[:1] == ["RESULT"]:
            rest = rest[1:]
        itemid = rest[0] if rest else ""
        unit = _unit(rest[-1]) if len(rest) >= 2 else None
        if itemid.isdigit() and int(itemid) >= CHARTEVENTS_FIRST_ITEMID:
            if int(itemid) not in VITAL_ITEMS:
                return left_out("chartevents, not a vital sign")
            return event("vital", desc or VITAL_ITEMS[int(itemid)], unit=unit)
        name, suffix = (desc, None) if desc else _readable("lab", rest[:1])
        return event("lab", name, unit=unit, suffix=suffix)
    if family == "SUBJECT_FLUID_OUTPUT":
        itemid = rest[0] if rest else ""
        named = OUTPUT_ITEMS.get(int(itemid)) if itemid.isdigit() else None
        name, suffix = (desc or named, None) if desc or named else _readable("fluid output", rest[:1])
        return event("output", name, unit=_unit(rest[-1]) if len(rest) >= 2 else None, suffix=suffix)
    if family == "MEDICATION":
        if rest[:1] == ["START"]:  # hosp/pharmacy: the order, at its starttime (query.sql's prescriptions)
            return event("prescription", desc or SEP.join(rest[1:]), with_route=True)
        if rest[:1] == ["STOP"]:
            return left_out("order stop (the orders are imported at their start)")
        # hosp/emar: an administration, MEDICATION//{drug}//{event_txt} ("Administered", "Not Given", ...); the
        # kind of the drug's orders, its own text prefix
        return {**rule, "kind": "prescription",
                "name": "Medication: " + (desc or " ".join(p for p in rest if p != UNKNOWN))}
    if family in ("INFUSION_START", "INFUSION_END"):
        name, suffix = (desc, None) if desc else _readable("infusion", rest[:1])
        start = family == "INFUSION_START"  # the start carries the rate, the end the amount given
        return event("input", name, digits=2, value_word="at" if start else None, unit_from_row=True, suffix=suffix)
    if family == "PROCEDURE":
        if rest[:1] == ["START"]:
            name, suffix = (desc, None) if desc else _readable("procedure", rest[1:2])
            return event("procedure", name, suffix=suffix)
        if rest[:1] == ["END"]:
            return left_out("procedure end (procedures are imported at their start)")
        return left_out("ICD procedure (assigned at discharge)")
    if family == "MICROBIOLOGY":  # no MIMIC-IV ETL writes it today; other MEDS datasets may
        name, suffix = (desc, None) if desc else _readable("microbiology", rest)
        return event("microbiology", name, suffix=suffix)
    return left_out("not mapped to an event kind")


def _unit(part):
    return None if part in ("", UNKNOWN) else part


def _readable(what, ids):
    """(name, suffix) for a code without description: the itemid goes after the value (the value channel
    reads the first stand-alone number of the text), e.g. "Output: fluid output 35 ml (item 999999)"."""
    ids = [i for i in ids if i and i != UNKNOWN]
    return what, (f"(item {' '.join(ids)})" if ids else None)


# ----------------------------------------------------------------------------- reading MEDS

def find_shards(meds_dir) -> tuple[list, set]:
    """The data shards and the union of their column names, after checking MEDS's required columns."""
    meds_dir = Path(meds_dir)
    if not meds_dir.is_dir():
        raise ExtractionError(f"MEDS folder {meds_dir} does not exist. Pass the folder that holds data/ and "
                              "metadata/ with --meds.")
    shards = sorted((meds_dir / meds.data_subdirectory).rglob("*.parquet"))
    if not shards:
        raise ExtractionError(f"{meds_dir} is not a MEDS dataset: no {meds.data_subdirectory}/**/*.parquet "
                              "shards. Pass the folder that holds data/ and metadata/ with --meds.")
    columns = set()
    for shard in shards:
        names = _schema(shard).names
        missing = [c for c in DATA.required_columns() if c not in names]
        if missing:
            raise ExtractionError(f"{shard} is not a MEDS data shard: it lacks column(s) {', '.join(missing)} "
                                  f"(found: {', '.join(names)})")
        columns.update(names)
    return shards, columns


def _schema(path):
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise ExtractionError(f"Cannot read {path}: {err}. Is it a complete Parquet file?") from err


def read_descriptions(meds_dir) -> dict:
    """code -> description from metadata/codes.parquet (optional: codes without one are made readable)."""
    path = Path(meds_dir) / meds.code_metadata_filepath
    if not path.is_file():
        return {}
    names = _schema(path).names
    if CODES.code_name not in names:
        raise ExtractionError(f"{path} is not MEDS code metadata: it lacks column {CODES.code_name} "
                              f"(found: {', '.join(names)})")
    if CODES.description_name not in names:
        return {}
    table = pq.read_table(path, columns=[CODES.code_name, CODES.description_name]).to_pandas()
    return dict(zip(table[CODES.code_name], table[CODES.description_name]))


def read_labels(path) -> pd.DataFrame:
    """A MEDS label file, or a folder of them: subject_id, prediction_time, boolean_value."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise ExtractionError(f"Label path {path} holds no parquet file: pass a MEDS label file "
                              "(subject_id, prediction_time, boolean_value) or a folder of them with --labels.")
    allowed = LABEL.required_columns() + LABEL.optional_columns()
    needed = [LABEL.subject_id_name, LABEL.prediction_time_name, LABEL.boolean_value_name]
    frames = []
    for file in files:
        names = _schema(file).names
        missing = [c for c in needed if c not in names]
        extra = [c for c in names if c not in allowed]
        if missing or extra:
            raise ExtractionError(
                f"{file} is not a MEDS label file with a boolean label: "
                + "; ".join(filter(None, [missing and f"it lacks {', '.join(missing)}",
                                          extra and f"it has column(s) {', '.join(extra)} outside the label schema"]))
                + f" (expected {', '.join(needed)}, optionally {', '.join(c for c in allowed if c not in needed)})")
        frame = pq.read_table(file, columns=needed).to_pandas()
        if frame[needed].isna().any().any():
            raise ExtractionError(f"{file}: {int(frame[needed].isna().any(axis=1).sum())} label row(s) have an "
                                  f"empty {' or '.join(needed)}; every row needs a subject, a time and a boolean label")
        frames.append(frame)
    labels = pd.concat(frames, ignore_index=True)
    labels[LABEL.prediction_time_name] = pd.to_datetime(labels[LABEL.prediction_time_name])
    return labels.sort_values([LABEL.subject_id_name, LABEL.prediction_time_name], kind="stable",
                              ignore_index=True)


def meds_view_sql(shards, columns) -> str:
    """One view over every shard, read by column name; optional columns a shard lacks are NULL."""
    optional = {DATA.numeric_value_name: "DOUBLE", DATA.text_value_name: "VARCHAR", "hadm_id": "BIGINT",
                "icustay_id": "BIGINT", **{c: "VARCHAR" for c in ROW_COLUMNS if c not in ("hadm_id", "icustay_id")}}
    select = [f"CAST({DATA.subject_id_name} AS BIGINT) AS subject_id",
              f"CAST({DATA.time_name} AS TIMESTAMP) AS time", f"CAST({DATA.code_name} AS VARCHAR) AS code"]
    select += [f"CAST({c} AS {t}) AS {c}" if c in columns else f"CAST(NULL AS {t}) AS {c}"
               for c, t in optional.items()]
    files = ", ".join(f"'{sql_string(s)}'" for s in shards)
    return f"SELECT {', '.join(select)} FROM read_parquet([{files}], union_by_name = true)"


# ----------------------------------------------------------------------------- predictions (the "stays")

def structure(con) -> dict:
    """Hospital admissions, ICU stays and per-subject birth, death and gender, from the structural rows."""
    families = ", ".join(f"'{f}'" for f in STRUCTURAL_FAMILIES)
    rows = con.execute(f"""SELECT subject_id, time, code, hadm_id, icustay_id, insurance, marital_status, race
        FROM meds WHERE split_part(code, '{SEP}', 1) IN ({families})""").df()
    parts = rows["code"].str.split(SEP)
    rows["family"], rows["detail"] = parts.str[0], parts.str[1:]

    def of(family):
        return rows[rows["family"] == family]

    adm = of("HOSPITAL_ADMISSION").dropna(subset=["hadm_id"])
    admissions = pd.DataFrame({
        "hadm_id": adm["hadm_id"], "subject_id": adm["subject_id"], "admittime": adm["time"],
        "admission_type": adm["detail"].str[0].map(_static_value),
        "admission_location": adm["detail"].str[1].map(_static_value),
        "insurance": adm["insurance"], "marital_status": adm["marital_status"], "race": adm["race"],
    }).sort_values("admittime").drop_duplicates("hadm_id")
    dis = of("HOSPITAL_DISCHARGE").dropna(subset=["hadm_id"]).sort_values("time").drop_duplicates("hadm_id")
    admissions = admissions.merge(pd.DataFrame({"hadm_id": dis["hadm_id"], "dischtime": dis["time"],
                                                "died_at_discharge": dis["detail"].str[0].eq("DIED")}),
                                  on="hadm_id", how="left")
    icu = of("ICU_ADMISSION").dropna(subset=["icustay_id"]).sort_values("time").drop_duplicates("icustay_id")
    out = of("ICU_DISCHARGE").dropna(subset=["icustay_id"]).sort_values("time").drop_duplicates("icustay_id",
                                                                                                  keep="last")
    stays = pd.DataFrame({"icustay_id": icu["icustay_id"], "subject_id": icu["subject_id"],
                          "hadm_id": icu["hadm_id"], "intime": icu["time"],
                          "first_careunit": icu["detail"].str[0].map(_static_value)})
    stays = stays.merge(out[["icustay_id", "time"]].rename(columns={"time": "outtime"}), on="icustay_id", how="left")
    gender = of("GENDER").drop_duplicates("subject_id").set_index("subject_id")["detail"].str[0].map(_static_value)
    subjects = pd.DataFrame({
        "birth_year": of(meds.birth_code).groupby("subject_id")["time"].min().dt.year,
        "death": of(meds.death_code).groupby("subject_id")["time"].min(),
        "gender": gender,
    })
    return {"admissions": admissions, "stays": stays, "subjects": subjects}


def _static_value(part):
    return None if not isinstance(part, str) or part in ("", UNKNOWN) else part


def computed_predictions(parts: dict, observation_hours: float) -> pd.DataFrame:
    """query.sql's cohort from the codes: each ICU admission, predicted at intime + H; adults (age at the
    hospital admission, from the birth year as mimic-code computes it), still in the ICU (ICU_DISCHARGE after
    the prediction time) and alive (MEDS_DEATH after it; a date-only death at 00:00 on the prediction day
    counts as alive, as query.sql's dod >= DATE(prediction_time)). Label: HOSPITAL_DISCHARGE//DIED, or a
    MEDS_DEATH at or before the hospital discharge."""
    stays = parts["stays"].dropna(subset=["hadm_id"]).merge(parts["admissions"].drop(columns="subject_id"),
                                                            on="hadm_id")
    stays = stays.join(parts["subjects"], on="subject_id")
    stays["prediction_time"] = stays["intime"] + pd.Timedelta(minutes=round(observation_hours * 60))
    stays["patient_age"] = (stays["admittime"].dt.year - stays["birth_year"]).astype("float64")
    death, pt = stays["death"], stays["prediction_time"]
    date_only_death_today = (death == death.dt.normalize()) & (death.dt.normalize() >= pt.dt.normalize())
    alive = death.isna() | (death > pt) | date_only_death_today
    keep = (stays["patient_age"] >= 18) & (stays["outtime"] > pt) & alive
    stays = stays[keep].copy()
    died = stays["died_at_discharge"].fillna(False).astype(bool) | \
        (stays["death"].notna() & (stays["dischtime"].isna() | (stays["death"] <= stays["dischtime"])))
    stays["mortality"] = died.astype("int64")
    stays["stay_id"] = stays["icustay_id"]
    stays["window_start"] = stays["intime"]
    return stays.sort_values("stay_id", ignore_index=True)


def label_predictions(parts: dict, labels: pd.DataFrame, observation_hours: float) -> pd.DataFrame:
    """One prediction per label row. stay_id: the ICU stay whose [ICU_ADMISSION, ICU_DISCHARGE] holds the
    prediction time (the first label row of that stay), else a synthetic id (SYNTHETIC_ID_START + the row's
    position, labels sorted by subject and time). hadm_id: that ICU stay's, else the hospital admission that
    holds the prediction time, else the synthetic id. Window: from the ICU admission, else the
    --observation-hours before the prediction time."""
    pred = labels.rename(columns={LABEL.prediction_time_name: "prediction_time"}).copy()
    pred["row"] = np.arange(len(pred))
    pred["mortality"] = pred[LABEL.boolean_value_name].astype("int64")
    stays = parts["stays"]
    inside = pred[["row", "subject_id", "prediction_time"]].merge(stays, on="subject_id")
    inside = inside[(inside["intime"] <= inside["prediction_time"]) &
                    (inside["outtime"].isna() | (inside["prediction_time"] <= inside["outtime"]))]
    inside = inside.sort_values("intime").drop_duplicates("row", keep="last").set_index("row")
    pred = pred.join(inside[["icustay_id", "hadm_id", "intime", "first_careunit"]], on="row")
    adm = parts["admissions"]
    held = pred[["row", "subject_id", "prediction_time"]].merge(adm, on="subject_id")
    held = held[(held["admittime"] <= held["prediction_time"]) &
                (held["dischtime"].isna() | (held["prediction_time"] <= held["dischtime"]))]
    held = held.sort_values("admittime").drop_duplicates("row", keep="last").set_index("row")["hadm_id"]
    pred["hadm_id"] = pred["hadm_id"].fillna(pred["row"].map(held))
    first_of_stay = pred["icustay_id"].notna() & ~pred["icustay_id"].duplicated()
    synthetic = SYNTHETIC_ID_START + pred["row"]
    pred["stay_id"] = pred["icustay_id"].where(first_of_stay, synthetic).astype("int64")
    if (pred["icustay_id"] >= SYNTHETIC_ID_START).any():
        raise ExtractionError(f"icustay_id values reach {SYNTHETIC_ID_START:,}, where the ids of label rows "
                              "outside an ICU stay begin; they would collide")
    pred["hadm_id"] = pred["hadm_id"].fillna(synthetic).astype("int64")
    pred["window_start"] = pred["intime"].fillna(pred["prediction_time"] - pd.Timedelta(hours=observation_hours))
    pred = pred.merge(adm.drop(columns="subject_id"), on="hadm_id", how="left").join(parts["subjects"],
                                                                                   on="subject_id")
    year = pred["admittime"].fillna(pred["prediction_time"]).dt.year
    pred["patient_age"] = (year - pred["birth_year"]).astype("float64")
    return pred


# ----------------------------------------------------------------------------- the event table

STATIC_OUT = ("gender", "race", "marital_status", "admission_type", "admission_location", "insurance",
              "first_careunit")


def events_sql() -> str:
    """The event table: each prediction with its events (a prediction without any: one row, empty fields)."""
    value = ("COALESCE(fmt_num(m.numeric_value, r.digits), "
             "NULLIF(TRIM(REGEXP_REPLACE(m.text_value, '_{3}', '', 'g')), ''))")  # ___: de-identified
    text = f"""TRIM(REGEXP_REPLACE(CONCAT_WS(' ', r.name,
                   CASE WHEN {value} IS NOT NULL THEN CONCAT_WS(' ', r.value_word, {value}) END,
                   COALESCE(r.unit, CASE WHEN r.unit_from_row THEN NULLIF(TRIM(m.unit), '') END),
                   CASE WHEN r.with_route THEN NULLIF(TRIM(m.route), '') END,
                   r.suffix), '\\s+', ' ', 'g'))"""
    text = f"CASE WHEN r.verbatim AND m.text_value IS NOT NULL THEN m.text_value ELSE {text} END"
    static = ", ".join(f"p.{c}" for c in STATIC_OUT)
    return f"""
        SELECT p.subject_id, p.hadm_id, p.stay_id, e.event_time, e.event_type, e.event_text,
               ROUND(EPOCH(p.prediction_time - e.event_time) / 60.0, 2) AS relative_time_to_final_event,
               {static}, p.patient_age, p.mortality, p.prediction_time, e.code
        FROM predictions AS p
        LEFT JOIN (
            SELECT m.subject_id, m.time AS event_time, r.kind AS event_type, {text} AS event_text, m.code
            FROM meds AS m JOIN code_rules AS r ON r.code = m.code
            WHERE r.kind IS NOT NULL AND m.time IS NOT NULL
        ) AS e ON e.subject_id = p.subject_id
              AND e.event_time >= p.window_start AND e.event_time < p.prediction_time
        ORDER BY p.stay_id, e.event_time, e.event_type, e.event_text, e.code"""


def import_meds(meds_dir, output, labels=None, observation_hours=48.0, memory_limit="4GB", threads=None,
                log=sys.stderr) -> dict:
    """Write the event table of a MEDS dataset to `output`; returns the counts (cohort_counts, plus
    events_per_kind, left_out rows per code family, and label rows left out)."""
    import duckdb

    query_parameters(observation_hours)  # the same check of the hours as the SQL path
    output = check_output_path(output)
    shards, columns = find_shards(meds_dir)
    descriptions = read_descriptions(meds_dir)
    label_rows = read_labels(labels) if labels is not None else None
    config = {"memory_limit": memory_limit, "preserve_insertion_order": True}
    if threads:
        config["threads"] = int(threads)
    con = duckdb.connect(":memory:", config=config)
    tmp = atomic_io.temporary_name(output)
    try:
        con.execute(next(s for s in duckdb_statements(query_parameters())[0] if " fmt_num(" in s))
        con.execute(f"CREATE VIEW meds AS {meds_view_sql(shards, columns)}")
        try:
            code_counts = con.execute("SELECT code, count(*) AS n FROM meds GROUP BY code").df()
        except duckdb.Error as err:
            raise ExtractionError(f"Cannot read the MEDS shards of {meds_dir}: {str(err).splitlines()[0]}") from err
        rules = pd.DataFrame([{"code": c, **code_rule(c, descriptions.get(c))} for c in code_counts["code"].dropna()])
        con.register("code_rules", rules)
        parts = structure(con)
        dropped_labels = 0
        if label_rows is None:
            predictions = computed_predictions(parts, observation_hours)
            if predictions.empty:
                raise ExtractionError(f"{meds_dir}: no ICU admission qualifies (ICU_ADMISSION rows with icustay_id, "
                                      f"adult, still in the ICU and alive {observation_hours:g} h after intime)")
        else:
            present = label_rows[LABEL.subject_id_name].isin(subjects_with_rows(con))
            dropped_labels = int((~present).sum())
            if not present.any():
                raise ExtractionError(f"none of the {len(label_rows)} label rows of {labels} is about a subject "
                                      f"of {meds_dir}/{meds.data_subdirectory}")
            predictions = label_predictions(parts, label_rows[present].reset_index(drop=True), observation_hours)
        keep = ["subject_id", "hadm_id", "stay_id", "window_start", "prediction_time", *STATIC_OUT,
                "patient_age", "mortality"]
        predictions = predictions[keep].astype({c: "object" for c in STATIC_OUT})
        predictions[list(STATIC_OUT)] = predictions[list(STATIC_OUT)].where(predictions[list(STATIC_OUT)].notna(), None)
        con.register("predictions", predictions)
        con.execute(f"COPY ({events_sql()}) TO '{sql_string(tmp)}' ({copy_options(output)})")
        counts = cohort_counts(con, tmp)
        reader = "read_parquet" if output.name.endswith(".parquet") else "read_csv"
        per_kind = con.execute(f"SELECT event_type, count(*) FROM {reader}('{sql_string(tmp)}') "
                               "WHERE event_type IS NOT NULL GROUP BY 1 ORDER BY 2 DESC").fetchall()
        atomic_io.publish(tmp, output)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    left_out = rules[rules["kind"].isna()].merge(code_counts, on="code").groupby("left_out")["n"].sum()
    counts.update(events_per_kind=dict(per_kind), left_out=left_out.sort_values(ascending=False).to_dict(),
                  label_rows_without_data=dropped_labels)
    if log is not None:
        for why, n in counts["left_out"].items():
            print(f"Left out {n:,} MEDS rows ({why})", file=log)
        if dropped_labels:
            print(f"Left out {dropped_labels:,} label rows whose subject has no rows in {meds.data_subdirectory}/",
                  file=log)
    return counts


def subjects_with_rows(con) -> np.ndarray:
    return con.execute("SELECT DISTINCT subject_id FROM meds").df()["subject_id"].to_numpy()
