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
# The event types query.sql can write (docs/interfaces.md §1) and those a default run writes: `ingredient` rows
# are the components (Water, IVF ingredient, Calories) of the `input` rows of the same order and were a
# third of the demo's events (BENCHMARKS.md, "Cohort fidelity"), so they are written only on request.
EVENT_KINDS = ("prescription", "procedure", "lab", "microbiology", "input", "ingredient")
DEFAULT_EVENT_KINDS = ("prescription", "procedure", "lab", "microbiology", "input")
# query.sql names tables <dataset>.<table> with these placeholder datasets.
QUERY_DATASETS = {"hosp": "mimiciv_hosp", "icu": "mimiciv_icu"}
LEAKAGE_WARNING = ("WARNING: --whole-stay keeps events until ICU discharge or death and measures times "
                   "from that end. It LEAKS THE OUTCOME (the sequence ends where the patient died) and is "
                   "for retrospective analysis only, never for training a predictive model.")


class ExtractionError(ValueError):
    """A user-fixable problem with the MIMIC-IV directory, the options or the output path."""


# ----------------------------------------------------------------------------- the query

def query_parameters(observation_hours=48.0, lookback_hours=0.0, whole_stay=False,
                     event_kinds=DEFAULT_EVENT_KINDS) -> dict:
    """Validated values of query.sql's @parameters."""
    for name, value in (("observation hours", observation_hours), ("look-back hours", lookback_hours)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ExtractionError(f"The {name} must be a finite number of hours, got {value!r}.")
    if observation_hours <= 0:
        raise ExtractionError(f"--observation-hours must be > 0 (the prediction time is intime + H hours), "
                              f"got {observation_hours}. Use e.g. --observation-hours 48.")
    if lookback_hours < 0:
        raise ExtractionError(f"--lookback-hours must be >= 0, got {lookback_hours}.")
    return {"observation_hours": float(observation_hours), "lookback_hours": float(lookback_hours),
            "whole_stay": bool(whole_stay), "event_kinds": parse_event_kinds(event_kinds)}


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
    for statement in parse_query(query_path):
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
                 query_path=QUERY_PATH) -> str:
    """query.sql for BigQuery with the dataset names applied; parameters stay @named."""
    statements = [rename_datasets(s, hosp_dataset, icu_dataset) for s in parse_query(query_path)]
    return ";\n".join(s.sql(dialect="bigquery", pretty=True) for s in statements)


# ----------------------------------------------------------------------------- inputs and outputs

def find_mimic_tables(mimic_dir) -> dict:
    """table ("hosp/labevents") -> csv(.gz) path, after checking every table and column query.sql needs."""
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise ExtractionError(f"MIMIC-IV directory {mimic_dir} does not exist. Pass the folder that holds "
                              "hosp/ and icu/ with --mimic-dir.")
    if not (mimic_dir / "hosp").is_dir() and not (mimic_dir / "icu").is_dir():
        raise ExtractionError(f"{mimic_dir} is not a MIMIC-IV directory: it has neither hosp/ nor icu/. "
                              "Pass the folder that holds hosp/ and icu/ (e.g. mimic-iv-3.1/) with --mimic-dir.")
    paths = {}
    for table, columns in MIMIC_TABLES.items():
        candidates = [mimic_dir / f"{table}.csv.gz", mimic_dir / f"{table}.csv"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ExtractionError(f"MIMIC-IV table {table} is missing: expected {candidates[0]} (or .csv). "
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
    tables = find_mimic_tables(mimic_dir)
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
            columns = MIMIC_TABLES[table]
            # times parse as ISO timestamps, with or without fractional seconds (ICU storetime has them)
            types = ", ".join(f"'{col}': '{typ}'" for col, typ in columns.items())
            if progress:
                print(f"Loading {table} from {path}", file=sys.stderr, flush=True)
            try:
                con.execute(f"""CREATE TABLE {QUERY_DATASETS[module]}.{name} AS SELECT {', '.join(columns)}
                    FROM read_csv('{sql_string(path)}', header = true, types = {{{types}}})""")
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

    sql = bigquery_sql(hosp_dataset, icu_dataset, query_path)
    types = {"observation_hours": "FLOAT64", "lookback_hours": "FLOAT64", "whole_stay": "BOOL",
             "event_kinds": "STRING"}
    job_config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ArrayQueryParameter(name, types[name], value) if isinstance(value, list)
        else bigquery.ScalarQueryParameter(name, types[name], value) for name, value in params.items()])
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
                   progress=True, event_kinds=DEFAULT_EVENT_KINDS) -> dict:
    """Run query.sql and write the event table to `output`; returns the cohort counts."""
    params = query_parameters(observation_hours, lookback_hours, whole_stay, event_kinds)
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
    parser.add_argument("--output", type=Path, required=True, help="event table: .csv, .csv.gz or .parquet")
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
                        " (ingredient: the components of each input row, off by default)")
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
    try:
        if args.meds is not None or args.labels is not None:
            return main_meds(parser, args, started)
        counts = extract_cohort(args.output, args.mimic_dir, args.engine, args.observation_hours,
                                args.lookback_hours, args.whole_stay, args.project, args.hosp_dataset,
                                args.icu_dataset, args.memory_limit, args.threads, args.temp_dir,
                                progress=not args.no_progress, event_kinds=args.event_kinds)
    except ExtractionError as err:
        parser.exit(2, f"extract_cohort.py: error: {err}\n")
    print(f"Wrote {args.output} in {time.perf_counter() - started:.1f} s")
    print(f"Cohort: {format_counts(counts)}")
    return counts


def main_meds(parser, args, started) -> dict:
    """--meds: the event table from a MEDS dataset (meds_cohort.py); the SQL path's own options do not apply."""
    import meds_cohort

    if args.meds is None:
        raise ExtractionError("--labels needs --meds DIR (the MEDS dataset the labels are about).")
    sql_only = [f"--{name.replace('_', '-')}" for name in ("engine", "lookback_hours", "whole_stay", "event_kinds",
                                                           "project", "hosp_dataset", "icu_dataset", "temp_dir")
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


if __name__ == "__main__":
    main()
