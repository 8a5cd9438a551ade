"""MEDS out: an event table (docs/interfaces.md section 1) written as a MEDS 0.4 dataset with its labels.

    python meds_export.py --data TABLE --output DIR [--observation-hours H] [--seed S]

The layout, the codes and what maps to what are in docs/interfaces.md, "MEDS out". In short:

- data/{train,tuning,held_out}/{n}.parquet: one MEDS row per event, code `EVENT_TABLE//{event_type}//{item}` (the
  item: the event text with its numbers as `#`, event_table.item_of_text), numeric_value its first stand-alone
  number (the value channel's), text_value the whole event text; and the MIMIC-IV ETL's structural rows:
  `GENDER//{gender}` (static), `MEDS_BIRTH`, `HOSPITAL_ADMISSION//{admission_type}//{admission_location}`
  (insurance, marital_status, race columns), `ICU_ADMISSION//{first_careunit}` (hadm_id, icustay_id = stay_id);
- labels/{task}/{split}/{n}.parquet: the MEDS label schema, one row per stay at its prediction time,
  boolean_value = mortality;
- metadata/codes.parquet, dataset.json, subject_splits.parquet (the project's patient split, seed as train.py's).

`extract_cohort.py --meds DIR --labels DIR/labels/{task}` reads it back as the same table (meds_cohort.py reads
the EVENT_TABLE family verbatim). The event table holds no discharge or death time, so the task cannot be
recomputed without the labels. The dataset is written under a temporary name and renamed when complete.
"""
import argparse
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import atomic_io
from event_table import (REQUIRED_COLUMNS, STATIC_CATEGORICAL, EventTableError, items_and_values,
                         map_distinct, read_event_table, split_stays_by_patient)
from extract_cohort import ExtractionError
from meds_cohort import EVENT_TABLE_FAMILY, SEP, SYNTHETIC_ID_START, UNKNOWN

ETL_NAME = "mimic-icu-mortality-classification meds_export.py"
ETL_VERSION = "1"  # the export's own format (code family, layout); bumped when either changes
TASK_NAME = "in_hospital_mortality"
LABELS_SUBDIRECTORY = "labels"
# event_table.split_stays_by_patient's names -> MEDS's
SPLIT_NAMES = {"train": meds.train_split, "val": meds.tuning_split, "test": meds.held_out_split}
ADMISSION_COLUMNS = ("insurance", "marital_status", "race")  # columns of the HOSPITAL_ADMISSION row, as the ETL
DATA_SCHEMA = pa.schema([
    pa.field(meds.DataSchema.subject_id_name, pa.int64(), nullable=False),
    pa.field(meds.DataSchema.time_name, pa.timestamp("us")),
    pa.field(meds.DataSchema.code_name, pa.string(), nullable=False),
    pa.field(meds.DataSchema.numeric_value_name, pa.float32()),
    pa.field(meds.DataSchema.text_value_name, meds.DataSchema.text_value_dtype),
    pa.field("hadm_id", pa.int64()), pa.field("icustay_id", pa.int64()),
    *(pa.field(c, pa.string()) for c in ADMISSION_COLUMNS),
])
LABEL_SCHEMA = pa.schema([
    pa.field(meds.LabelSchema.subject_id_name, pa.int64(), nullable=False),
    pa.field(meds.LabelSchema.prediction_time_name, pa.timestamp("us"), nullable=False),
    pa.field(meds.LabelSchema.boolean_value_name, pa.bool_(), nullable=False),
])
# Why a stay of the table will not read back exactly (the keys of `not_exact`, counts of stays).
NOT_EXACT = {
    "stays_without_time": "stays without events in a table without prediction_time: their prediction time is "
                          "unknown, they are left out",
    "events_at_prediction_time": "stays with events at the prediction time itself (MEDS in keeps events strictly "
                                 "before it)",
    "overlapping_windows": "stays whose window [admission, prediction time) holds another stay's admission or "
                           "events of the same patient",
    "patient_age": "stays whose patient_age is not (admission year - the patient's one birth year)",
    "gender": "stays whose gender differs from the patient's first stay's (MEDS has one per patient)",
    "admission_columns": "stays whose admission columns differ from the first stay's of the same hadm_id",
    "static_code_parts": f"stays with a static value that a code cannot carry (containing {SEP!r}, or {UNKNOWN!r})",
    "stay_id_range": f"stays with stay_id >= {SYNTHETIC_ID_START:,} (MEDS in keeps those ids for label rows "
                     "outside an ICU stay and refuses them as icustay_id)",
}


class ExportError(ExtractionError):
    """A user mistake (the table, the output folder); the message names it. One line, exit code 2."""


def write_meds_dataset(table, out_dir, observation_hours=48.0, seed=42, task_name=TASK_NAME, dataset_name=None,
                       subjects_per_shard=10_000, log=sys.stderr) -> dict:
    """Write `table` (an event table's path, read with event_table.read_event_table, or the frame it returns) as
    a MEDS dataset in `out_dir`. `observation_hours`: the extraction's, for the ICU admission time (prediction
    time - H, or the stay's first event where that is earlier); `seed`: the patient split's (train.py --seed).
    Returns the counts, the paths, `not_exact` (per reason of NOT_EXACT, the number of stays that will not
    read back exactly) and `not_exact_stay_ids` (their stay_ids)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if not observation_hours >= 0:
        raise ExportError(f"observation_hours must be >= 0 (got {observation_hours})")
    if isinstance(table, (str, os.PathLike)):
        dataset_name = dataset_name or Path(table).name.split(".")[0]
        try:
            table = read_event_table(table)
        except EventTableError as err:
            raise ExportError(str(err)) from None
    else:
        _check_frame(table)
    stays, events, not_exact = _stays_and_events(table, observation_hours)
    splits = _subject_splits(table, stays, seed, log)
    structural, static_problems = _structural_rows(stays)
    not_exact.update(static_problems)
    not_exact.update(_window_problems(stays, events))
    event_rows, structural, codes = _data_rows(events, structural)
    codes = _code_metadata(codes)
    labels = pd.DataFrame({"subject_id": stays["subject_id"].astype("int64"),
                           "prediction_time": stays["prediction_time"],
                           "boolean_value": stays["mortality"].astype(bool)})
    metadata = {"dataset_name": dataset_name or "event table", "etl_name": ETL_NAME, "etl_version": ETL_VERSION,
                "meds_version": meds.__version__,
                "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
                "raw_source_id_columns": ["hadm_id", "icustay_id"], "other_extension_columns": list(ADMISSION_COLUMNS)}
    meds.DatasetMetadataSchema.validate(metadata)
    shards = _write_dataset(out_dir, event_rows, structural, labels, splits, codes, metadata, task_name,
                            subjects_per_shard)
    counts = {"subjects": int(splits.size), "stays": len(stays), "events": len(events),
              "meds_rows": int(sum(n for _, n in shards)), "codes": len(codes), "label_rows": len(labels),
              "splits": splits.value_counts().to_dict(), "shards": [str(p) for p, _ in shards],
              "labels": str(out_dir / LABELS_SUBDIRECTORY / task_name),
              "not_exact": {k: len(v) for k, v in not_exact.items() if len(v)},
              "not_exact_stay_ids": {k: sorted(int(i) for i in v) for k, v in not_exact.items() if len(v)},
              "seconds": round(time.perf_counter() - started, 2)}
    if log is not None:
        for reason, n in counts["not_exact"].items():
            print(f"Will not read back exactly: {n:,} {NOT_EXACT[reason]}", file=log)
    return counts


# ----------------------------------------------------------------------------- the table

def _check_frame(table: pd.DataFrame):
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ExportError(f"the event table lacks required column(s) {', '.join(missing)} "
                          f"(found: {', '.join(map(str, table.columns))})")
    if not pd.api.types.is_datetime64_any_dtype(table["event_time"]):
        raise ExportError("pass the table as event_table.read_event_table returns it (event_time as timestamps), "
                          "or its path")


def _naive(times: pd.Series) -> pd.Series:
    """Timestamps without a time zone (MEDS's timestamp[us]); aware ones as UTC."""
    times = pd.to_datetime(times)
    return times.dt.tz_convert(None) if times.dt.tz is not None else times


def _stays_and_events(table, observation_hours):
    """One row per stay (its static columns, prediction_time, window_start) and the event rows, both of the
    stays that have a prediction time; and the first reasons of `not_exact` (reason -> stay_ids)."""
    is_event = table["event_type"].notna().to_numpy()
    first = ~table["stay_id"].duplicated().to_numpy()
    keep = ["subject_id", "hadm_id", "stay_id", *STATIC_CATEGORICAL, "patient_age", "mortality"]
    stays = table.loc[first, keep].reset_index(drop=True)
    for col in STATIC_CATEGORICAL:
        stays[col] = stays[col].astype(object).where(stays[col].notna(), None)
    events = pd.DataFrame({"subject_id": table["subject_id"].to_numpy()[is_event],
                           "stay_id": table["stay_id"].to_numpy()[is_event],
                           "time": _naive(table["event_time"][is_event]).to_numpy(),
                           "event_type": table["event_type"].astype("category").array[is_event],
                           "event_text": table["event_text"].astype("category").array[is_event]})
    minutes = table["relative_time_to_final_event"].to_numpy()[is_event]
    # The prediction time: the table's column where it has one (extract_cohort.py writes it), else each event's
    # time + its minutes to the prediction time (0.01 min = 0.6 s in the table), the latest, to the second.
    derived = (events["time"] + pd.to_timedelta(minutes, unit="min")).groupby(events["stay_id"]).max().dt.round("s")
    pt = stays["stay_id"].map(derived)
    if "prediction_time" in table.columns:
        given = map_distinct(table["prediction_time"], lambda v: pd.to_datetime(v, errors="coerce", format="mixed")) \
            if not pd.api.types.is_datetime64_any_dtype(table["prediction_time"]) else table["prediction_time"]
        given = _naive(given)[first].reset_index(drop=True)
        pt = given.where(given.notna(), pt)
    stays["prediction_time"] = pd.to_datetime(pt).astype("datetime64[us]")
    without_time = stays["prediction_time"].isna()
    dropped = stays.loc[without_time, "stay_id"]
    stays = stays[~without_time].reset_index(drop=True)
    last = events.groupby("stay_id")["time"].max()
    late = stays["stay_id"].map(last) > stays["prediction_time"]
    if late.any():
        row = stays[late].iloc[0]
        raise ExportError(f"{int(late.sum())} stay(s) have events after their prediction_time (first: stay_id="
                          f"{row['stay_id']}, prediction_time {row['prediction_time']}, last event "
                          f"{last[row['stay_id']]}): the table's prediction_time does not match its events")
    events["time"] = events["time"].astype("datetime64[us]")
    events = events.merge(stays[["stay_id", "prediction_time"]], on="stay_id")
    start = stays["prediction_time"] - pd.Timedelta(minutes=round(observation_hours * 60))
    first_event = stays["stay_id"].map(events.groupby("stay_id")["time"].min())
    stays["window_start"] = start.where(first_event.isna() | (start <= first_event), first_event)
    at_pt = events["time"] >= events.pop("prediction_time")
    return stays, events, {"stays_without_time": set(dropped),
                           "events_at_prediction_time": set(events.loc[at_pt, "stay_id"]),
                           "stay_id_range": set(stays.loc[stays["stay_id"] >= SYNTHETIC_ID_START, "stay_id"])}


def _subject_splits(table, stays, seed, log) -> pd.Series:
    """subject_id -> train/tuning/held_out of the exported stays' patients: event_table.split_stays_by_patient
    on every stay of the table (train.py's split for the same seed); a table of fewer than 3 patients, which it
    cannot split, goes to train."""
    by_stay = table.drop_duplicates("stay_id")[["stay_id", "subject_id", "mortality"]]
    try:
        split = split_stays_by_patient(by_stay, seed)
    except EventTableError as err:
        if log is not None:
            print(f"All patients in {meds.train_split}: {err}", file=log)
        split = pd.Series("train", index=by_stay["stay_id"].to_numpy())
    subject = by_stay.set_index("stay_id")["subject_id"]
    out = pd.Series(split.map(SPLIT_NAMES).to_numpy(), index=subject.reindex(split.index).to_numpy())
    out = out[~out.index.duplicated()]
    return out[out.index.isin(stays["subject_id"])].sort_index()


# ----------------------------------------------------------------------------- the MEDS rows

def _code_part(value):
    return UNKNOWN if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _unsafe(value) -> bool:
    return isinstance(value, str) and (SEP in value or value in (UNKNOWN, ""))


def _structural_rows(stays):
    """The ETL's structural rows (GENDER, MEDS_BIRTH, HOSPITAL_ADMISSION, ICU_ADMISSION) and, per reason, the
    stays whose static columns they cannot carry exactly."""
    order = stays.sort_values(["prediction_time", "stay_id"], kind="stable")
    # hospital admissions: the first stay's columns; admitted at the earliest window start of its stays
    adm = order.drop_duplicates("hadm_id").set_index("hadm_id")
    admitted = order.groupby("hadm_id")["window_start"].min()
    cols = ["admission_type", "admission_location", *ADMISSION_COLUMNS]
    written = adm[cols].reindex(stays["hadm_id"]).reset_index(drop=True)
    admission_differs = ~(written.fillna("\0") == stays[cols].fillna("\0")).all(axis=1)
    # one gender and one birth year per patient; the birth year that most stays' ages give
    gender = order.drop_duplicates("subject_id").set_index("subject_id")["gender"]
    admit_year = stays["hadm_id"].map(admitted).dt.year
    age = stays["patient_age"]
    implied = (admit_year - age).where(age.notna() & (age == age.round()))
    votes = pd.DataFrame({"subject_id": stays["subject_id"], "year": implied}).dropna()
    votes = votes.groupby(["subject_id", "year"]).size().reset_index(name="n")
    birth = votes.sort_values(["subject_id", "n", "year"], ascending=[True, False, True]) \
        .drop_duplicates("subject_id").set_index("subject_id")["year"]
    age_back = admit_year - stays["subject_id"].map(birth)
    age_differs = ~((age_back == age) | (age_back.isna() & age.isna()))
    gender_differs = stays["subject_id"].map(gender).fillna("\0") != stays["gender"].fillna("\0")
    unsafe = stays[["gender", "admission_type", "admission_location", "first_careunit"]].map(_unsafe).any(axis=1)

    frames = [
        pd.DataFrame({"subject_id": gender.index[gender.notna()], "time": pd.NaT,
                      "code": "GENDER" + SEP + gender[gender.notna()].astype(str)}),
        pd.DataFrame({"subject_id": birth.index[birth.notna()], "time": pd.to_datetime(
            {"year": birth[birth.notna()].astype(int), "month": 1, "day": 1}).to_numpy(), "code": meds.birth_code}),
        pd.DataFrame({"subject_id": adm["subject_id"].to_numpy(), "time": admitted.reindex(adm.index).to_numpy(),
                      "code": ["HOSPITAL_ADMISSION" + SEP + _code_part(t) + SEP + _code_part(loc) for t, loc in
                               zip(adm["admission_type"], adm["admission_location"])],
                      "hadm_id": adm.index.to_numpy(), **{c: adm[c].to_numpy() for c in ADMISSION_COLUMNS}}),
        pd.DataFrame({"subject_id": stays["subject_id"].to_numpy(), "time": stays["window_start"].to_numpy(),
                      "code": ["ICU_ADMISSION" + SEP + _code_part(c) for c in stays["first_careunit"]],
                      "hadm_id": stays["hadm_id"].to_numpy(), "icustay_id": stays["stay_id"].to_numpy()}),
    ]
    rows = pd.concat(frames, ignore_index=True)
    rows["time"] = pd.to_datetime(rows["time"]).astype("datetime64[us]")
    ids = stays["stay_id"]
    return rows, {"admission_columns": set(ids[admission_differs]), "patient_age": set(ids[age_differs]),
                  "gender": set(ids[gender_differs]), "static_code_parts": set(ids[unsafe])}


def _event_rows(events) -> pd.DataFrame:
    """The events once per patient: an event in the windows of several of a patient's stays (a look-back) is one
    MEDS row, which MEDS in gives to each window that holds it (n identical events in one stay: n rows)."""
    multi = events["subject_id"].map(events.groupby("subject_id")["stay_id"].nunique()) > 1
    if not multi.any():
        return events
    keys = ["subject_id", "time", "event_type", "event_text"]
    shared = events[multi].groupby([*keys, "stay_id"], observed=True).size().groupby(keys, observed=True).max()
    shared = shared.reset_index(name="n")
    repeated = shared.loc[shared.index.repeat(shared["n"]), keys]
    return pd.concat([events.loc[~multi, keys], repeated], ignore_index=True)


def _window_problems(stays, events) -> dict:
    """Stays of a patient with several stays whose read-back differs: MEDS in gives a label row the stay with the
    latest ICU admission at or before its time (the table has no ICU discharge), and a window every event of
    the patient in [admission, prediction time)."""
    multi = stays["subject_id"].duplicated(keep=False)
    if not multi.any():
        return {"overlapping_windows": set()}
    windows = stays.loc[multi, ["subject_id", "stay_id", "window_start", "prediction_time"]]
    pairs = windows.merge(windows[["subject_id", "stay_id", "window_start"]], on="subject_id", suffixes=("", "_other"))
    pairs = pairs[pairs["stay_id"] != pairs["stay_id_other"]]
    # a label row at the prediction time of one goes to the other, which then loses its own: both differ
    overlap = pairs[(pairs["window_start_other"] >= pairs["window_start"]) &
                    (pairs["window_start_other"] <= pairs["prediction_time"])]
    bad = set(overlap["stay_id"]) | set(overlap["stay_id_other"])
    rows = _event_rows(events[events["subject_id"].isin(windows["subject_id"])])
    held = rows[["subject_id", "time"]].merge(windows, on="subject_id")
    held = held[(held["time"] >= held["window_start"]) & (held["time"] < held["prediction_time"])]
    own = events.merge(windows[["stay_id", "prediction_time"]], on="stay_id")
    own = own[own["time"] < own["prediction_time"]]
    counts = pd.concat([held.groupby("stay_id").size().rename("held"), own.groupby("stay_id").size().rename("own")],
                       axis=1).fillna(0)
    bad |= set(counts.index[counts["held"] != counts["own"]])
    return {"overlapping_windows": bad}


def _data_rows(events, structural):
    """The event rows (each event once per patient) and the structural rows, with one categorical dtype for
    `code` and one for `text_value` whose categories are sorted, so that their category codes sort the rows."""
    rows = _event_rows(events)
    text = rows["event_text"].astype("category")
    if not text.cat.categories.is_monotonic_increasing:
        text = text.cat.reorder_categories(np.sort(text.cat.categories.to_numpy(dtype=object)))
    kind = rows["event_type"].astype("category")
    texts = pd.Series(text.cat.categories.astype(object))
    items, values = items_and_values(texts)
    # one code per (kind, item), built once per distinct (kind, text)
    pair = kind.cat.codes.to_numpy().astype(np.int64) * len(texts) + text.cat.codes.to_numpy()
    pair_codes, pairs = pd.factorize(pair)
    pair_kind = kind.cat.categories.to_numpy(dtype=object)[pairs // len(texts)]
    pair_item = items.to_numpy(dtype=object)[pairs % len(texts)]
    pair_code = np.array([EVENT_TABLE_FAMILY + SEP + k + SEP + i for k, i in zip(pair_kind, pair_item)], dtype=object)
    codes = pd.Index(np.unique(np.concatenate([pair_code, structural["code"].to_numpy(dtype=object)])))
    code_dtype = pd.CategoricalDtype(codes)
    event_rows = pd.DataFrame({
        "subject_id": rows["subject_id"].to_numpy(dtype=np.int64), "time": rows["time"].to_numpy(),
        "code": pd.Categorical.from_codes(codes.get_indexer(pair_code)[pair_codes], dtype=code_dtype),
        "numeric_value": values.to_numpy(dtype=np.float32)[text.cat.codes.to_numpy()], "text_value": text,
    })
    structural = structural.assign(code=structural["code"].astype(code_dtype),
                                   text_value=pd.Categorical([None] * len(structural), dtype=text.dtype))
    return event_rows, structural, codes


def _sorted_shard(pieces) -> pd.DataFrame:
    """One shard's rows, sorted by subject, time (static rows first), code, text."""
    rows = pd.concat(pieces, ignore_index=True)
    ticks = rows["time"].to_numpy().view(np.int64).copy()
    ticks[rows["time"].isna().to_numpy()] = np.iinfo(np.int64).min
    order = np.lexsort((rows["text_value"].cat.codes.to_numpy(), rows["code"].cat.codes.to_numpy(), ticks,
                        rows["subject_id"].to_numpy()))
    return rows.iloc[order]


def _code_metadata(codes: pd.Index) -> pd.DataFrame:
    """metadata/codes.parquet: every code of data/, its description (an event code's item; a structural code
    in words) and no parent codes (the table names no ontology)."""
    codes = pd.Series(codes.to_numpy(dtype=object))
    parts = codes.str.split(SEP)
    family = parts.str[0]
    words = {"GENDER": "gender: ", "HOSPITAL_ADMISSION": "hospital admission (admission_type, admission_location): ",
             "ICU_ADMISSION": "ICU admission (first_careunit): "}
    description = np.where(family == EVENT_TABLE_FAMILY, parts.str[2:].str.join(SEP),
                           family.map(words).fillna("") + parts.str[1:].str.join(", "))
    description = np.where(codes == meds.birth_code, "birth (1 January of the admission year - patient_age)",
                           description)
    return pd.DataFrame({"code": codes, "description": description, "parent_codes": None})


# ----------------------------------------------------------------------------- writing

def _check_out_dir(out_dir: Path):
    if not out_dir.parent.is_dir():
        raise ExportError(f"The output folder's parent {out_dir.parent} does not exist; create it first "
                          f"(mkdir -p {out_dir.parent}).")
    if out_dir.exists() and not (_is_earlier_export(out_dir) or (out_dir.is_dir() and not any(out_dir.iterdir()))):
        raise ExportError(f"{out_dir} exists and is not a MEDS dataset written by meds_export.py; choose another "
                          "--output or remove it (an earlier export is replaced)")


def _is_earlier_export(out_dir: Path) -> bool:
    import json
    try:
        return json.loads((out_dir / meds.dataset_metadata_filepath).read_text()).get("etl_name") == ETL_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _write_dataset(out_dir, event_rows, structural, labels, splits, codes, metadata, task_name,
                   subjects_per_shard) -> list:
    """Everything under a temporary folder beside out_dir, validated with the meds schemas, then renamed to
    out_dir (an earlier export there is replaced only once the new one is complete). Returns (shard, rows)."""
    tmp = atomic_io.temporary_name(out_dir)
    old = out_dir.parent / f".old-{os.getpid()}-{out_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shards = []
    try:
        # the shards: per split, the patients by subject_id, subjects_per_shard to a shard (MEDS: each patient in
        # one shard, its rows together and in time order)
        names, shard_of = [], []
        for split in (meds.train_split, meds.tuning_split, meds.held_out_split):
            ids = np.sort(splits.index[splits.to_numpy() == split].to_numpy())
            for n, start in enumerate(range(0, len(ids), subjects_per_shard)):
                shard_of.append(pd.Series(len(names), index=ids[start:start + subjects_per_shard]))
                names.append(Path(split) / f"{n}.parquet")
        shard_of = pd.concat(shard_of)
        parts = [_by_shard(frame, shard_of, len(names)) for frame in (structural, event_rows, labels)]
        for i, name in enumerate(names):
            structural_part, event_part, label_part = (frame.iloc[order[bounds[i]:bounds[i + 1]]]
                                                       for frame, (order, bounds) in
                                                       zip((structural, event_rows, labels), parts))
            rows = _sorted_shard([structural_part, event_part])
            _write_parquet(_arrow_rows(rows), tmp / meds.data_subdirectory / name, meds.DataSchema)
            shards.append((out_dir / meds.data_subdirectory / name, len(rows)))
            label_part = label_part.sort_values(["subject_id", "prediction_time"], kind="stable")
            _write_parquet(pa.Table.from_pandas(label_part, schema=LABEL_SCHEMA, preserve_index=False)
                           .replace_schema_metadata(None), tmp / LABELS_SUBDIRECTORY / task_name / name,
                           meds.LabelSchema)
        split_table = pa.table({"subject_id": pa.array(splits.index.to_numpy(dtype=np.int64)),
                                "split": pa.array(splits.to_numpy(dtype=object), pa.string())})
        _write_parquet(split_table, tmp / meds.subject_splits_filepath, meds.SubjectSplitSchema)
        code_table = pa.Table.from_pandas(codes, schema=pa.schema([
            pa.field("code", pa.string(), nullable=False), pa.field("description", pa.string()),
            pa.field("parent_codes", pa.list_(pa.string()))]), preserve_index=False).replace_schema_metadata(None)
        _write_parquet(code_table, tmp / meds.code_metadata_filepath, meds.CodeMetadataSchema)
        atomic_io.write_json(metadata, tmp / meds.dataset_metadata_filepath)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return shards


def _by_shard(frame, shard_of, n_shards):
    """(order, bounds): frame.iloc[order[bounds[i]:bounds[i + 1]]] are the rows of shard i, in frame's order."""
    shard = shard_of.reindex(frame["subject_id"].to_numpy()).to_numpy()
    order = np.argsort(shard, kind="stable")
    return order, np.searchsorted(shard[order], np.arange(n_shards + 1))


def _arrow_rows(frame: pd.DataFrame) -> pa.Table:
    columns = {}
    for field in DATA_SCHEMA:
        values = frame[field.name] if field.name in frame.columns else pd.Series(None, index=frame.index)
        if field.name in ("hadm_id", "icustay_id"):
            values = values.astype("Int64")
        array = pa.array(values, from_pandas=True)
        if isinstance(array, pa.DictionaryArray):  # a categorical column: its strings
            array = array.dictionary_decode()
        columns[field.name] = array.cast(field.type)
    return pa.table(columns, schema=DATA_SCHEMA)


def _write_parquet(table: pa.Table, path: Path, schema):
    schema.validate(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="event table: .csv, .csv.gz or .parquet")
    parser.add_argument("--output", type=Path, required=True,
                        help="MEDS dataset folder to write (an earlier export there is replaced)")
    parser.add_argument("--observation-hours", type=float, default=48.0,
                        help="the extraction's: ICU admission = prediction time - this many hours (or the first "
                             "event, where earlier)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the patient split (train.py --seed)")
    parser.add_argument("--task-name", default=TASK_NAME, help="the labels' folder: OUTPUT/labels/TASK_NAME")
    parser.add_argument("--dataset-name", default=None,
                        help="dataset_name of metadata/dataset.json (default: the table's file name)")
    parser.add_argument("--subjects-per-shard", type=int, default=10_000, help="patients per data/ shard")
    args = parser.parse_args(argv)
    try:
        counts = write_meds_dataset(args.data, args.output, args.observation_hours, args.seed, args.task_name,
                                    args.dataset_name, args.subjects_per_shard)
    except ExtractionError as err:
        parser.exit(2, f"meds_export.py: error: {err}\n")
    print(f"Wrote {args.output} in {counts['seconds']:.1f} s: {counts['subjects']:,} patients, {counts['stays']:,} "
          f"stays, {counts['events']:,} events, {counts['meds_rows']:,} MEDS rows, {counts['codes']:,} codes")
    print(f"Read it back with: python extract_cohort.py --meds {args.output} --labels {counts['labels']} "
          "--output TABLE")
    return counts


if __name__ == "__main__":
    main()
