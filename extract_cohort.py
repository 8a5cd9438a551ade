"""
Cohort extraction: runs query.sql on MIMIC-IV and writes the event table of docs/interfaces.md §1.

    python extract_cohort.py --mimic-dir ../shared/mimic-iv-demo --output /tmp/demo.csv
    python extract_cohort.py --engine bigquery --project my-gcp-project --output cohort.parquet

query.sql is written once in BigQuery SQL. For the embedded engine (DuckDB, the default) it is
translated with sqlglot and its parameters are bound as literals in the syntax tree; the columns it
needs are copied from the MIMIC-IV csv(.gz) files into a DuckDB database file in a temporary folder,
and the result streams straight to a temporary file beside the output (COPY ... TO), which is
fsynced and renamed when complete. No table is ever loaded into pandas, a killed run leaves no
half-written output, and DuckDB spills to the temporary folder beyond its memory limit, so full
MIMIC-IV fits a 16 GB laptop.
"""
import argparse
import gzip
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

import sqlglot
from sqlglot import exp

import atomic_io

QUERY_PATH = Path(__file__).resolve().parent / "query.sql"
OUTPUT_SUFFIXES = (".csv", ".csv.gz", ".parquet")
DEFAULT_HOSP_DATASET = "physionet-data.mimiciv_3_1_hosp"
DEFAULT_ICU_DATASET = "physionet-data.mimiciv_3_1_icu"

# The tables and columns query.sql reads, with the DuckDB types that matter (times must be
# timestamps; free-text columns such as labevents.value must stay strings whatever the sample shows).
MIMIC_TABLES = {
    "hosp/patients": {"subject_id": "BIGINT", "gender": "VARCHAR", "anchor_age": "BIGINT",
                      "anchor_year": "BIGINT", "dod": "DATE"},
    "hosp/admissions": {"subject_id": "BIGINT", "hadm_id": "BIGINT", "admittime": "TIMESTAMP",
                        "deathtime": "TIMESTAMP", "admission_type": "VARCHAR",
                        "admission_location": "VARCHAR", "insurance": "VARCHAR",
                        "marital_status": "VARCHAR", "race": "VARCHAR",
                        "hospital_expire_flag": "BIGINT"},
    "icu/icustays": {"subject_id": "BIGINT", "hadm_id": "BIGINT", "stay_id": "BIGINT",
                     "first_careunit": "VARCHAR", "intime": "TIMESTAMP", "outtime": "TIMESTAMP"},
    "hosp/prescriptions": {"hadm_id": "BIGINT", "pharmacy_id": "BIGINT", "starttime": "TIMESTAMP",
                           "drug": "VARCHAR", "dose_val_rx": "VARCHAR", "dose_unit_rx": "VARCHAR",
                           "route": "VARCHAR"},
    "hosp/labevents": {"labevent_id": "BIGINT", "subject_id": "BIGINT", "hadm_id": "BIGINT", "itemid": "BIGINT",
                       "charttime": "TIMESTAMP", "storetime": "TIMESTAMP", "value": "VARCHAR",
                       "valuenum": "DOUBLE", "valueuom": "VARCHAR", "ref_range_lower": "DOUBLE",
                       "ref_range_upper": "DOUBLE", "flag": "VARCHAR"},
    "hosp/d_labitems": {"itemid": "BIGINT", "label": "VARCHAR", "fluid": "VARCHAR"},
    "hosp/microbiologyevents": {"microevent_id": "BIGINT", "subject_id": "BIGINT", "hadm_id": "BIGINT",
                                "charttime": "TIMESTAMP", "storetime": "TIMESTAMP",
                                "spec_type_desc": "VARCHAR", "test_name": "VARCHAR",
                                "org_name": "VARCHAR", "ab_name": "VARCHAR",
                                "interpretation": "VARCHAR", "comments": "VARCHAR"},
    "icu/procedureevents": {"stay_id": "BIGINT", "starttime": "TIMESTAMP", "endtime": "TIMESTAMP",
                            "storetime": "TIMESTAMP", "itemid": "BIGINT", "orderid": "BIGINT",
                            "statusdescription": "VARCHAR"},
    "icu/inputevents": {"stay_id": "BIGINT", "starttime": "TIMESTAMP", "endtime": "TIMESTAMP",
                        "storetime": "TIMESTAMP", "itemid": "BIGINT", "amount": "DOUBLE",
                        "amountuom": "VARCHAR", "rate": "DOUBLE", "rateuom": "VARCHAR",
                        "orderid": "BIGINT", "statusdescription": "VARCHAR"},
    "icu/ingredientevents": {"stay_id": "BIGINT", "starttime": "TIMESTAMP", "endtime": "TIMESTAMP",
                             "storetime": "TIMESTAMP", "itemid": "BIGINT", "amount": "DOUBLE",
                             "amountuom": "VARCHAR", "orderid": "BIGINT", "statusdescription": "VARCHAR"},
    "icu/d_items": {"itemid": "BIGINT", "label": "VARCHAR"},
}
# The tables only some event kinds read, as MIMIC_TABLES: needed (and loaded) only when --event-kinds asks for one
# of their kinds (TABLE_KINDS), so a MIMIC-IV folder without chartevents (the demo's download lacks it) still runs.
KIND_TABLES = {
    "icu/chartevents": {"stay_id": "BIGINT", "charttime": "TIMESTAMP", "storetime": "TIMESTAMP", "itemid": "BIGINT",
                        "value": "VARCHAR", "valuenum": "DOUBLE", "valueuom": "VARCHAR"},
    "icu/outputevents": {"stay_id": "BIGINT", "charttime": "TIMESTAMP", "storetime": "TIMESTAMP", "itemid": "BIGINT",
                         "value": "DOUBLE", "valueuom": "VARCHAR"},
}
# The event types query.sql can write (docs/interfaces.md §1) and those a default run writes: `ingredient` rows
# are the components (Water, IVF ingredient, Calories) of the `input` rows of the same order and were a
# third of the demo's events (BENCHMARKS.md, "Cohort fidelity"), so they are written only on request.
# `vital` (chartevents) and `output` (outputevents) are written only on request for now: the shipped
# sample_train.csv and its precomputed embeddings were made with the default kinds (docs/design.md).
EVENT_KINDS = ("prescription", "procedure", "lab", "microbiology", "input", "ingredient", "vital", "output")
DEFAULT_EVENT_KINDS = ("prescription", "procedure", "lab", "microbiology", "input")
EVENT_KINDS_WITH_VITALS = (*DEFAULT_EVENT_KINDS, "vital", "output")  # what a --vitals synthetic cohort is read with
TABLE_KINDS = {"icu/chartevents": ("vital",), "icu/outputevents": ("output",)}
# query.sql's event blocks (CTEs united in `all_events`) and the kinds each writes: a block none of whose kinds
# is asked for is taken out of the query before it runs, so its tables are neither needed nor read (on BigQuery
# a filter on @event_kinds alone would still scan chartevents, ~300 million rows).
EVENT_BLOCKS = {"prescription_events": ("prescription",), "lab_events": ("lab",),
                "microbiology_events": ("microbiology",), "icu_events": ("procedure", "input", "ingredient"),
                "vital_events": ("vital",), "output_events": ("output",)}


class VitalItem(NamedTuple):
    """A chartevents item written as `vital`: its d_items label and the plausible range of valuenum that a row
    must have (low < valuenum < high, valuenum <= high where high_inclusive; None: no bound)."""
    label: str
    low: Optional[float]
    high: Optional[float]
    high_inclusive: bool = False
    fahrenheit: bool = False  # written in degrees Celsius, as the Celsius item: (valuenum - 32) / 1.8


# mimic-code's vital signs and Glasgow Coma Scale (mimic-iv/concepts/measurement/vitalsign.sql, gcs.sql), with its
# plausibility bounds; the alarm limits (220046/220047 heart rate, 226253 SpO2 desaturation) and the ventilator's
# set rate (224688) are not vital signs. Labels are d_items' without the numbers some hold ("Glucose finger stick
# (range 70-100)"), so the value channel reads the measurement. GCS components are bounded by their scales (eye
# 1-4, motor 1-6, verbal 1-5; mimic-code takes them as charted); a verbal response "No Response-ETT"
# (GCS_VERBAL_INTUBATED) is intubated, not a score of 1, and is written in words. The one list of these items:
# query.sql gets it from here (vital_items_sql) and the MEDS import reads VITAL_ITEMS.
VITAL_RULES = {
    220045: VitalItem("Heart Rate", 0, 300),
    220179: VitalItem("Non Invasive Blood Pressure systolic", 0, 400),
    220050: VitalItem("Arterial Blood Pressure systolic", 0, 400),
    225309: VitalItem("ART BP Systolic", 0, 400),
    220180: VitalItem("Non Invasive Blood Pressure diastolic", 0, 300),
    220051: VitalItem("Arterial Blood Pressure diastolic", 0, 300),
    225310: VitalItem("ART BP Diastolic", 0, 300),
    220052: VitalItem("Arterial Blood Pressure mean", 0, 300),
    220181: VitalItem("Non Invasive Blood Pressure mean", 0, 300),
    225312: VitalItem("ART BP Mean", 0, 300),
    220210: VitalItem("Respiratory Rate", 0, 70),
    224690: VitalItem("Respiratory Rate (Total)", 0, 70),
    223761: VitalItem("Temperature Fahrenheit", 70, 120, fahrenheit=True),
    223762: VitalItem("Temperature Celsius", 10, 50),
    220277: VitalItem("O2 saturation pulseoxymetry", 0, 100, high_inclusive=True),
    225664: VitalItem("Glucose finger stick", 0, None),
    220621: VitalItem("Glucose (serum)", 0, None),
    226537: VitalItem("Glucose (whole blood)", 0, None),
    220739: VitalItem("GCS - Eye Opening", 0, 4, high_inclusive=True),
    223901: VitalItem("GCS - Motor Response", 0, 6, high_inclusive=True),
    223900: VitalItem("GCS - Verbal Response", 0, 5, high_inclusive=True),
}
VITAL_ITEMS = {itemid: item.label for itemid, item in VITAL_RULES.items()}  # itemid -> label
# --vital-bin-hours: 0 writes each charting; H > 0 one event per item per H hours (last value, min, max).
DEFAULT_VITAL_BIN_HOURS = 2.0
CELSIUS_ITEMID = 223762  # the item a Fahrenheit temperature is written as
GCS_VERBAL_INTUBATED = (223900, "No Response-ETT")  # (itemid, value): mimic-code's endotrachflag
# Rows copied from a table into DuckDB (all others are): of chartevents (~300 million rows, ~4,300 per stay) only
# the vital-sign items, the rows query.sql reads.
LOAD_FILTERS = {"icu/chartevents": f"WHERE itemid IN ({', '.join(map(str, VITAL_RULES))})"}
# query.sql names tables <dataset>.<table> with these placeholder datasets.
QUERY_DATASETS = {"hosp": "mimiciv_hosp", "icu": "mimiciv_icu"}
LEAKAGE_WARNING = ("WARNING: --whole-stay keeps events until ICU discharge or death and measures times "
                   "from that end. It LEAKS THE OUTCOME (the sequence ends where the patient died) and is "
                   "for retrospective analysis only, never for training a predictive model.")


class ExtractionError(ValueError):
    """A user-fixable problem with the MIMIC-IV directory, the options or the output path."""


# ----------------------------------------------------------------------------- the query

def query_parameters(observation_hours=48.0, lookback_hours=0.0, whole_stay=False,
                     event_kinds=DEFAULT_EVENT_KINDS, vital_bin_hours=DEFAULT_VITAL_BIN_HOURS) -> dict:
    """Validated values of query.sql's @parameters."""
    for name, value in (("observation hours", observation_hours), ("look-back hours", lookback_hours),
                        ("vital-sign bin hours", vital_bin_hours)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ExtractionError(f"The {name} must be a finite number of hours, got {value!r}.")
    if observation_hours <= 0:
        raise ExtractionError(f"--observation-hours must be > 0 (the prediction time is intime + H hours), "
                              f"got {observation_hours}. Use e.g. --observation-hours 48.")
    if lookback_hours < 0:
        raise ExtractionError(f"--lookback-hours must be >= 0, got {lookback_hours}.")
    if vital_bin_hours < 0:
        raise ExtractionError(f"--vital-bin-hours must be >= 0 (0: each charting), got {vital_bin_hours}.")
    return {"observation_hours": float(observation_hours), "lookback_hours": float(lookback_hours),
            "whole_stay": bool(whole_stay), "event_kinds": parse_event_kinds(event_kinds),
            "vital_bin_hours": float(vital_bin_hours)}


def parse_event_kinds(event_kinds) -> list[str]:
    """--event-kinds as a list of known kinds: "lab,input" or ["lab", "input"]."""
    kinds = event_kinds.split(",") if isinstance(event_kinds, str) else list(event_kinds)
    kinds = [k.strip() for k in kinds if k.strip()]
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown or not kinds:
        raise ExtractionError(f"--event-kinds must list one or more of {','.join(EVENT_KINDS)} "
                              f"(comma-separated), got {event_kinds!r}.")
    return list(dict.fromkeys(kinds))


def parse_query(path=QUERY_PATH) -> list:
    """query.sql as sqlglot syntax trees (BigQuery dialect): [CREATE TEMP FUNCTION ..., SELECT ...]."""
    return [s for s in sqlglot.parse(Path(path).read_text(), read="bigquery") if s is not None]


def prepared_query(event_kinds, path=QUERY_PATH) -> list:
    """query.sql as it runs for these event kinds: its vital_items rows written from VITAL_RULES, and the event
    blocks that write none of the kinds taken out (with the CTEs only they used)."""
    kinds = set(parse_event_kinds(event_kinds))
    statements = parse_query(path)
    for statement in statements:
        if isinstance(statement, exp.Query):
            fill_vital_items(statement, required="vital" in kinds)
            keep_event_blocks(statement, kinds)
    return statements


def vital_items_sql() -> str:
    """The rows of query.sql's vital_items CTE (BigQuery SQL), one per item of VITAL_RULES: itemid, label and unit
    as written (unit NULL: the row's valueuom), the bounds, whether it is converted from Fahrenheit, and the value
    that says "intubated" instead of a score."""
    def number(x):
        return "CAST(NULL AS FLOAT64)" if x is None else f"CAST({float(x)!r} AS FLOAT64)"

    def string(x):
        return "CAST(NULL AS STRING)" if x is None else "'" + x.replace("\\", "\\\\").replace("'", "\\'") + "'"

    rows = []
    for itemid, item in VITAL_RULES.items():
        label = VITAL_RULES[CELSIUS_ITEMID].label if item.fahrenheit else item.label
        intubated = GCS_VERBAL_INTUBATED[1] if itemid == GCS_VERBAL_INTUBATED[0] else None
        rows.append(f"SELECT {int(itemid)} AS itemid, {string(label)} AS label, "
                    f"{string('°C' if item.fahrenheit else None)} AS unit, {number(item.low)} AS low, "
                    f"{number(item.high)} AS high, {str(bool(item.high_inclusive)).upper()} AS high_inclusive, "
                    f"{str(bool(item.fahrenheit)).upper()} AS fahrenheit, {string(intubated)} AS intubated_value")
    return "\nUNION ALL ".join(rows)


def _ctes(statement: exp.Expression) -> dict:
    with_ = statement.args.get("with_") or statement.args.get("with")
    return {cte.alias: cte for cte in with_.expressions} if with_ is not None else {}


def fill_vital_items(statement: exp.Expression, required=True) -> None:
    """Replace the body of query.sql's placeholder CTE vital_items by vital_items_sql(), in place (an older
    query.sql without it, e.g. bench/cohort_fidelity.py's --baseline-query, runs as it is without `vital`)."""
    cte = _ctes(statement).get("vital_items")
    if cte is None:
        if required:
            raise ExtractionError("query.sql has no CTE vital_items, where extract_cohort.py writes the vital-sign "
                                  "items: --event-kinds vital needs this repository's query.sql.")
        return
    cte.set("this", sqlglot.parse_one(vital_items_sql(), read="bigquery"))


def keep_event_blocks(statement: exp.Expression, kinds: set) -> None:
    """Take out of all_events (the union of the event blocks, EVENT_BLOCKS) each block that writes none of
    `kinds`, then every CTE that nothing uses any more; in place."""
    ctes = _ctes(statement)
    if "all_events" not in ctes:  # not this repository's query.sql: run as it is
        return
    union = ctes["all_events"].this
    members = list(union.flatten()) if isinstance(union, exp.Union) else [union]
    kept = []
    for member in members:
        block = member.args["from_"].this.name if isinstance(member, exp.Select) and member.args.get("from_") else None
        if block not in EVENT_BLOCKS:
            raise ExtractionError(f"query.sql: all_events unites {member.sql('bigquery')!r}, which is not an event "
                                  f"block of extract_cohort.EVENT_BLOCKS ({', '.join(EVENT_BLOCKS)}).")
        if set(EVENT_BLOCKS[block]) & kinds:
            kept.append(member)
    body = kept[0]
    for member in kept[1:]:
        body = exp.union(body, member, distinct=False)
    ctes["all_events"].set("this", body)
    while True:  # CTEs used by nothing else (the blocks taken out, and what only they used)
        ctes = _ctes(statement)
        used = {t.name for t in statement.find_all(exp.Table)}
        unused = [cte for alias, cte in ctes.items() if alias not in used]
        if not unused:
            return
        for cte in unused:
            cte.pop()


def rename_datasets(statement: exp.Expression, hosp_dataset: str, icu_dataset: str) -> exp.Expression:
    """Point mimiciv_hosp.* / mimiciv_icu.* at the given datasets ("project.dataset" or "schema")."""
    targets = {QUERY_DATASETS["hosp"]: hosp_dataset, QUERY_DATASETS["icu"]: icu_dataset}

    def rename(node):
        if isinstance(node, exp.Table) and node.db in targets:
            parts = targets[node.db].split(".")
            catalog, db = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
            return exp.table_(node.name, db=db, catalog=catalog, alias=node.alias or None, quoted=False)
        return node

    return statement.transform(rename)


def bind_parameters(statement: exp.Expression, params: dict) -> exp.Expression:
    """Replace @name parameters by literals (for engines without named query parameters in COPY)."""
    def bind(node):
        if isinstance(node, exp.Parameter):
            name = node.name
            if name not in params:
                raise ExtractionError(f"query.sql uses @{name}, which extract_cohort.py does not set.")
            value = params[name]
            if isinstance(value, bool):
                return exp.Boolean(this=value)
            if isinstance(value, list):
                return exp.Array(expressions=[exp.Literal.string(v) for v in value])
            return exp.Literal.number(repr(value))
        return node

    return statement.transform(bind)


def duckdb_fixups(node):
    """What sqlglot's BigQuery -> DuckDB translation leaves to us: DuckDB's ROUND wants an INTEGER
    number of digits where BigQuery has only INT64."""
    if isinstance(node, exp.Round) and node.args.get("decimals") is not None:
        node.set("decimals", exp.cast(node.args["decimals"], "INT"))
    return node


def duckdb_statements(params: dict, query_path=QUERY_PATH) -> tuple[list[str], str]:
    """query.sql translated to DuckDB: (macro definitions, the SELECT)."""
    setup, select = [], None
    for statement in prepared_query(params["event_kinds"], query_path):
        statement = bind_parameters(statement, params).transform(duckdb_fixups)
        if isinstance(statement, exp.Create) and statement.kind == "FUNCTION":
            # BigQuery's CREATE TEMP FUNCTION f(x T) AS (body) is DuckDB's CREATE TEMP MACRO f(x) AS body.
            udf = statement.this
            args = ", ".join(arg.name for arg in udf.expressions)
            body = statement.expression.sql(dialect="duckdb")
            setup.append(f"CREATE OR REPLACE TEMP MACRO {udf.this.name}({args}) AS {body}")
        else:
            select = statement.sql(dialect="duckdb", pretty=True)
    if select is None:
        raise ExtractionError(f"{query_path} contains no SELECT statement.")
    return setup, select


def bigquery_sql(hosp_dataset=DEFAULT_HOSP_DATASET, icu_dataset=DEFAULT_ICU_DATASET,
                 query_path=QUERY_PATH, event_kinds=DEFAULT_EVENT_KINDS) -> str:
    """query.sql for BigQuery with the dataset names applied and only the event blocks of `event_kinds` (the
    same kinds must be passed as @event_kinds); parameters stay @named."""
    statements = [rename_datasets(s, hosp_dataset, icu_dataset) for s in prepared_query(event_kinds, query_path)]
    return ";\n".join(s.sql(dialect="bigquery", pretty=True) for s in statements)


# ----------------------------------------------------------------------------- inputs and outputs

def needed_tables(event_kinds=DEFAULT_EVENT_KINDS) -> dict:
    """table -> {column: DuckDB type} of every table query.sql reads for these event kinds."""
    kinds = set(parse_event_kinds(event_kinds))
    return {**MIMIC_TABLES, **{table: columns for table, columns in KIND_TABLES.items()
                               if set(TABLE_KINDS[table]) & kinds}}


def find_mimic_tables(mimic_dir, event_kinds=DEFAULT_EVENT_KINDS) -> dict:
    """table ("hosp/labevents") -> csv(.gz) path, after checking every table and column query.sql needs for
    these event kinds."""
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise ExtractionError(f"MIMIC-IV directory {mimic_dir} does not exist. Pass the folder that holds "
                              "hosp/ and icu/ with --mimic-dir.")
    if not (mimic_dir / "hosp").is_dir() and not (mimic_dir / "icu").is_dir():
        raise ExtractionError(f"{mimic_dir} is not a MIMIC-IV directory: it has neither hosp/ nor icu/. "
                              "Pass the folder that holds hosp/ and icu/ (e.g. mimic-iv-3.1/) with --mimic-dir.")
    paths = {}
    for table, columns in needed_tables(event_kinds).items():
        candidates = [mimic_dir / f"{table}.csv.gz", mimic_dir / f"{table}.csv"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            needed_for = (f" (needed for --event-kinds {','.join(TABLE_KINDS[table])}; leave that kind out to "
                          "extract without it)") if table in TABLE_KINDS else ""
            raise ExtractionError(f"MIMIC-IV table {table} is missing: expected {candidates[0]} (or .csv){needed_for}. "
                                  "Download the full hosp/ and icu/ modules from PhysioNet.")
        header = read_header(path)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ExtractionError(f"{path} lacks column(s) {', '.join(missing)} that query.sql needs "
                                  f"(found: {', '.join(header)}). Is it a MIMIC-IV 2.2 or 3.1 file?")
        paths[table] = path
    return paths


def read_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            line = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ExtractionError(f"Cannot read {path}: {err}. Is the file complete?") from err
    if not line.strip():
        raise ExtractionError(f"{path} is empty: it has no header line.")
    return [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]


def check_output_path(output) -> Path:
    output = Path(output)
    if not output.name.endswith(OUTPUT_SUFFIXES):
        raise ExtractionError(f"Output {output} must end with one of {', '.join(OUTPUT_SUFFIXES)} "
                              "(the format is chosen by extension).")
    if not output.parent.is_dir():
        raise ExtractionError(f"The output folder {output.parent} does not exist; create it first "
                              f"(mkdir -p {output.parent}).")
    return output


def copy_options(output: Path) -> str:
    if output.name.endswith(".parquet"):
        return "FORMAT parquet, COMPRESSION zstd"
    if output.name.endswith(".csv.gz"):
        return "FORMAT csv, HEADER true, COMPRESSION gzip"
    return "FORMAT csv, HEADER true"


def cohort_counts(con, path: Path) -> dict:
    """Stays, patients, deaths and events of a written event table (read back by DuckDB, not pandas)."""
    reader = "read_parquet" if path.name.endswith(".parquet") else "read_csv"
    source = f"{reader}('{sql_string(path)}')" if reader == "read_parquet" else \
        f"read_csv('{sql_string(path)}', header=true, all_varchar=true)"
    stays, patients, events, empty = con.execute(f"""
        SELECT count(DISTINCT stay_id), count(DISTINCT subject_id),
               count(event_type), count(*) FILTER (WHERE event_type IS NULL)
        FROM {source}""").fetchone()
    deaths = con.execute(f"""
        SELECT count(*) FROM (SELECT DISTINCT stay_id, mortality FROM {source})
        WHERE CAST(mortality AS INTEGER) = 1""").fetchone()[0]
    return {"stays": stays, "patients": patients, "deaths": deaths, "events": events,
            "stays_without_events": empty}


def sql_string(value) -> str:
    return str(value).replace("'", "''")


# ----------------------------------------------------------------------------- engines

def extract_duckdb(mimic_dir, output, params: dict, memory_limit="4GB", threads=None, temp_dir=None,
                   progress=True, query_path=QUERY_PATH, raw_numbers=False) -> dict:
    """raw_numbers: write numbers as stored (54.32109, 49.999998807907104), as the prototype did; only
    for measuring how many distinct texts the rounding saves (bench/extract.py)."""
    import duckdb

    output = check_output_path(output)
    tables = find_mimic_tables(mimic_dir, params["event_kinds"])
    setup, select = duckdb_statements(params, query_path)

    tmp = atomic_io.temporary_name(output)  # keeps the suffix: DuckDB picks the format by extension
    spill_dir = Path(temp_dir) if temp_dir else output.parent / f".extract_cohort_spill.{os.getpid()}"
    spill_dir.mkdir(parents=True, exist_ok=True)
    database = spill_dir / f"mimic-{os.getpid()}.duckdb"
    config = {"memory_limit": memory_limit, "temp_directory": str(spill_dir),
              "preserve_insertion_order": True}
    if threads:
        config["threads"] = int(threads)
    # The needed columns are first copied into a DuckDB database file (not into memory): DuckDB's csv.gz
    # reader holds its buffers while a multi-table query runs, which breaks the memory limit, and native
    # tables give the optimizer real row counts for choosing join sides.
    con = duckdb.connect(str(database), config=config)
    try:
        con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
        for dataset in QUERY_DATASETS.values():
            con.execute(f"CREATE SCHEMA {dataset}")
        for table, path in tables.items():
            module, name = table.split("/")
            columns = needed_tables(params["event_kinds"])[table]
            # times parse as ISO timestamps, with or without fractional seconds (ICU storetime has them)
            types = ", ".join(f"'{col}': '{typ}'" for col, typ in columns.items())
            if progress:
                print(f"Loading {table} from {path}", file=sys.stderr, flush=True)
            try:
                con.execute(f"""CREATE TABLE {QUERY_DATASETS[module]}.{name} AS SELECT {', '.join(columns)}
                    FROM read_csv('{sql_string(path)}', header = true, types = {{{types}}})
                    {LOAD_FILTERS.get(table, '')}""")
            except duckdb.Error as err:
                raise ExtractionError(f"Cannot read MIMIC-IV table {path}: {err}. Is the file complete "
                                      "(re-download it) and a MIMIC-IV csv?") from err
        if progress:
            print("Running query.sql", file=sys.stderr, flush=True)
        for statement in setup:
            con.execute(statement)
        if raw_numbers:
            con.execute("CREATE OR REPLACE TEMP MACRO fmt_num(x, digits) AS CAST(x AS VARCHAR)")
        try:
            con.execute(f"COPY ({select}) TO '{sql_string(tmp)}' ({copy_options(output)})")
        except duckdb.Error as err:
            raise ExtractionError(f"The query failed on {mimic_dir}: {err}") from err
        counts = cohort_counts(con, tmp)
        atomic_io.publish(tmp, output)
        return counts
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
        for leftover in (database, Path(f"{database}.wal")):
            leftover.unlink(missing_ok=True)
        if not temp_dir:
            shutil.rmtree(spill_dir, ignore_errors=True)


def extract_bigquery(project, output, params: dict, hosp_dataset=DEFAULT_HOSP_DATASET,
                     icu_dataset=DEFAULT_ICU_DATASET, query_path=QUERY_PATH) -> dict:
    output = check_output_path(output)
    if not project:
        raise ExtractionError("--engine bigquery needs --project P: the Google Cloud project billed for the query.")
    try:
        from google.cloud import bigquery
    except ImportError as err:
        raise ExtractionError("--engine bigquery needs the optional package google-cloud-bigquery: "
                              "pip install google-cloud-bigquery") from err
    import duckdb
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    sql = bigquery_sql(hosp_dataset, icu_dataset, query_path, params["event_kinds"])
    types = {"observation_hours": "FLOAT64", "lookback_hours": "FLOAT64", "whole_stay": "BOOL",
             "event_kinds": "STRING", "vital_bin_hours": "FLOAT64"}
    used = {p.name for s in sqlglot.parse(sql, read="bigquery") if s is not None for p in s.find_all(exp.Parameter)}
    job_config = bigquery.QueryJobConfig(query_parameters=[  # those of the blocks kept (@vital_bin_hours: vital)
        bigquery.ArrayQueryParameter(name, types[name], value) if isinstance(value, list)
        else bigquery.ScalarQueryParameter(name, types[name], value) for name, value in params.items() if name in used])
    tmp = atomic_io.temporary_name(output)
    try:
        try:
            client = bigquery.Client(project=project)
            rows = client.query(sql, job_config=job_config).result(page_size=100_000)
        except Exception as err:  # google.auth / google.api_core errors: say what to do
            raise ExtractionError(f"BigQuery query on project {project} failed: {err}. Authenticate with "
                                  "`gcloud auth application-default login` and make sure your account has "
                                  "PhysioNet credentialed access to MIMIC-IV on BigQuery.") from err
        # stream the result pages to the temporary file (never the whole result in memory)
        writer = None
        with open(tmp, "wb") as raw, (gzip.GzipFile(fileobj=raw, mode="wb") if output.name.endswith(".gz")
                                      else raw) as sink:
            try:
                for batch in rows.to_arrow_iterable():
                    if writer is None:
                        writer = (pq.ParquetWriter(sink, batch.schema, compression="zstd")
                                  if output.name.endswith(".parquet") else pacsv.CSVWriter(sink, batch.schema))
                    writer.write_batch(batch)
            finally:
                if writer is not None:
                    writer.close()
        if writer is None:
            raise ExtractionError(f"BigQuery returned no rows for project {project}: is the dataset "
                                  f"{hosp_dataset} / {icu_dataset} MIMIC-IV?")
        con = duckdb.connect(":memory:")
        counts = cohort_counts(con, tmp)
        con.close()
        atomic_io.publish(tmp, output)
        return counts
    finally:
        tmp.unlink(missing_ok=True)


def extract_cohort(output, mimic_dir=None, engine="duckdb", observation_hours=48.0, lookback_hours=0.0,
                   whole_stay=False, project=None, hosp_dataset=DEFAULT_HOSP_DATASET,
                   icu_dataset=DEFAULT_ICU_DATASET, memory_limit="4GB", threads=None, temp_dir=None,
                   progress=True, event_kinds=DEFAULT_EVENT_KINDS, vital_bin_hours=DEFAULT_VITAL_BIN_HOURS) -> dict:
    """Run query.sql and write the event table to `output`; returns the cohort counts."""
    params = query_parameters(observation_hours, lookback_hours, whole_stay, event_kinds, vital_bin_hours)
    if whole_stay:
        print(LEAKAGE_WARNING, file=sys.stderr)
    if engine == "duckdb":
        if mimic_dir is None:
            raise ExtractionError("--engine duckdb needs --mimic-dir DIR (the folder with hosp/ and icu/).")
        return extract_duckdb(mimic_dir, output, params, memory_limit, threads, temp_dir, progress)
    if engine == "bigquery":
        return extract_bigquery(project, output, params, hosp_dataset, icu_dataset)
    raise ExtractionError(f"Unknown engine {engine!r}: use duckdb or bigquery.")


def format_counts(counts: dict) -> str:
    rate = counts["deaths"] / counts["stays"] if counts["stays"] else float("nan")
    return (f"stays={counts['stays']} patients={counts['patients']} deaths={counts['deaths']} "
            f"({rate:.1%}) events={counts['events']} stays_without_events={counts['stays_without_events']}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except where there is none or the help text already says it."""

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0], formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mimic-dir", type=Path, help="MIMIC-IV folder with hosp/ and icu/ (duckdb engine)")
    source.add_argument("--meds", type=Path,
                        help="MEDS dataset folder (data/, metadata/) instead of MIMIC-IV: see meds_cohort.py")
    parser.add_argument("--labels", type=Path,
                        help="with --meds: MEDS label file or folder; one prediction per row (default: the ICU task)")
    parser.add_argument("--output", type=Path, required=True,
                        help="event table: .csv, .csv.gz or .parquet (with --output-format meds: a folder)")
    parser.add_argument("--output-format", choices=("table", "meds"), default="table",
                        help="table: the event table; meds: the same cohort as a MEDS dataset with its labels "
                        "(meds_export.py), for MEDS tools (MEDS-Tab, meds-torch, ACES)")
    parser.add_argument("--engine", choices=("duckdb", "bigquery"), default="duckdb",
                        help="where query.sql runs: DuckDB on the csv files of --mimic-dir, or BigQuery (--project)")
    parser.add_argument("--observation-hours", type=float, default=48.0,
                        help="prediction time = ICU intime + this many hours")
    parser.add_argument("--lookback-hours", type=float, default=0.0,
                        help="also keep hospital events (labs, micro, prescriptions) this long before intime")
    parser.add_argument("--whole-stay", action="store_true",
                        help="old whole-stay design (events until ICU discharge/death): LEAKS THE OUTCOME")
    parser.add_argument("--event-kinds", default=",".join(DEFAULT_EVENT_KINDS),
                        help="comma-separated event types to write, from " + ",".join(EVENT_KINDS) +
                        " (ingredient: the components of each input row; vital: vital signs and GCS from "
                        "icu/chartevents; output: icu/outputevents; these three off by default)")
    parser.add_argument("--vital-bin-hours", type=float, default=DEFAULT_VITAL_BIN_HOURS,
                        help="with --event-kinds ...,vital: one vital-sign event per item per this many hours (its "
                        "last value, with the bin's min and max); 0: each charting an event")
    parser.add_argument("--project", help="Google Cloud project billed for the query (bigquery engine)")
    parser.add_argument("--hosp-dataset", default=DEFAULT_HOSP_DATASET, help="BigQuery dataset of hosp tables")
    parser.add_argument("--icu-dataset", default=DEFAULT_ICU_DATASET, help="BigQuery dataset of icu tables")
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit; beyond it DuckDB spills to disk")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--temp-dir", type=Path, default=None,
                        help="DuckDB spill folder (default: a temporary folder beside the output)")
    parser.add_argument("--no-progress", action="store_true", help="hide DuckDB's progress bar")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.output_format == "meds":
        return main_meds_out(parser, args, started)
    return run_extraction(parser, args, started)


def run_extraction(parser, args, started, written_as=None) -> dict:
    """The event table of the parsed options (MIMIC-IV through query.sql, or --meds) at args.output; `written_as`:
    what the "Wrote" line names instead of args.output (--output-format meds: a temporary table)."""
    try:
        if args.meds is not None or args.labels is not None:
            return main_meds(parser, args, started)
        counts = extract_cohort(args.output, args.mimic_dir, args.engine, args.observation_hours,
                                args.lookback_hours, args.whole_stay, args.project, args.hosp_dataset,
                                args.icu_dataset, args.memory_limit, args.threads, args.temp_dir,
                                progress=not args.no_progress, event_kinds=args.event_kinds,
                                vital_bin_hours=args.vital_bin_hours)
    except ExtractionError as err:
        parser.exit(2, f"extract_cohort.py: error: {err}\n")
    print(f"Wrote {written_as or args.output} in {time.perf_counter() - started:.1f} s")
    print(f"Cohort: {format_counts(counts)}")
    return counts


def main_meds(parser, args, started) -> dict:
    """--meds: the event table from a MEDS dataset (meds_cohort.py); the SQL path's own options do not apply."""
    import meds_cohort

    if args.meds is None:
        raise ExtractionError("--labels needs --meds DIR (the MEDS dataset the labels are about).")
    sql_only = [f"--{name.replace('_', '-')}" for name in ("engine", "lookback_hours", "whole_stay", "event_kinds",
                                                           "vital_bin_hours", "project", "hosp_dataset",
                                                           "icu_dataset", "temp_dir")
                if getattr(args, name) != parser.get_default(name)]
    if sql_only:
        raise ExtractionError(f"{', '.join(sql_only)} belong(s) to the query.sql path and do(es) not apply to "
                              "--meds; drop it, or use --mimic-dir.")
    try:
        counts = meds_cohort.import_meds(args.meds, args.output, args.labels, args.observation_hours,
                                         args.memory_limit, args.threads)
    except meds_cohort.ExtractionError as err:  # run as a script, this file's own class is __main__'s
        raise ExtractionError(str(err)) from None
    print(f"Wrote {args.output} in {time.perf_counter() - started:.1f} s")
    print(f"Cohort: {format_counts(counts)}")
    print("Events per kind: " + ", ".join(f"{kind}={n}" for kind, n in counts["events_per_kind"].items()))
    return counts


def main_meds_out(parser, args, started) -> dict:
    """--output-format meds: extract the event table into a temporary folder beside --output, then write it as a
    MEDS dataset there (meds_export.py: written under a temporary name, then renamed)."""
    import tempfile

    import meds_export

    meds_dir = args.output
    meds_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{meds_dir.name}-events-", dir=meds_dir.parent) as work:
        args.output = Path(work) / "events.parquet"
        counts = run_extraction(parser, args, started, written_as="the event table (for the MEDS dataset)")
        try:
            exported = meds_export.write_meds_dataset(args.output, meds_dir, args.observation_hours)
        except meds_export.ExtractionError as err:  # run as a script, this file's own class is __main__'s
            parser.exit(2, f"extract_cohort.py: error: {err}\n")
    print(f"Wrote the MEDS dataset {meds_dir} in {time.perf_counter() - started:.1f} s "
          f"(labels under {meds_dir / 'labels'})")
    return {**counts, "meds": exported}


if __name__ == "__main__":
    main()
