"""The event table (docs/interfaces.md section 1): its columns, reading and validating it, the patient split,
and what an event's text says (its item and its number).

train.py, explain_clinicalLF.py and the baselines read tables through read_event_table, so every script
rejects the same mistakes with the same message (file, column, first stay).
"""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

# docs/interfaces.md §1 order; the model's event-type one-hot has one column per entry (`input` added in checkpoint
# format 3; `vital` and `output`, from MEDS, appended at the end so the older kinds keep their columns)
EVENT_TYPES = ("prescription", "procedure", "lab", "microbiology", "input", "ingredient", "vital", "output")
STATIC_CATEGORICAL = ("gender", "race", "marital_status", "admission_type", "admission_location",
                      "insurance", "first_careunit")
STATIC_NUMERIC = ("patient_age",)
EVENT_COLUMNS = ("event_time", "event_type", "event_text", "relative_time_to_final_event")
REQUIRED_COLUMNS = ("subject_id", "hadm_id", "stay_id", *EVENT_COLUMNS, *STATIC_CATEGORICAL, *STATIC_NUMERIC,
                    "mortality")


class EventTableError(ValueError):
    """A user mistake in the event table; the message names the file, the column and a stay."""


# Columns read besides the required ones (any other column is never read): synthetic tables' planted risk, used by
# metrics.json (true_probability) and explain_clinicalLF.py's faithfulness figures (planted_risk); each stay's
# prediction time (extract_cohort.py writes it), which predict.py's MEDS output needs.
OPTIONAL_COLUMNS = ("true_probability", "planted_risk", "prediction_time")
# Read as categories: 20 million events have a few thousand distinct values here (2-4 million event texts), each
# stored once; as Python strings these columns alone would take over 10 GB.
CATEGORY_COLUMNS = ("event_type", "event_text", "event_time", "prediction_time", *STATIC_CATEGORICAL)
# pandas' missing-value spellings, so that the Arrow reader reads a table as pandas.read_csv did
NULL_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _columns_to_read(path, names):
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise EventTableError(f"{path}: required column(s) missing: {', '.join(missing)} "
                              f"(found: {', '.join(map(str, names))})")
    return [c for c in names if c in REQUIRED_COLUMNS or c in OPTIONAL_COLUMNS]


def _read_csv_pandas(path, columns):
    """The fallback for a CSV that is not valid UTF-8: undecodable bytes replaced, with a warning."""
    text_dtypes = {c: "category" for c in CATEGORY_COLUMNS}
    try:
        return pd.read_csv(path, usecols=columns, dtype=text_dtypes, encoding="utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start}); undecodable bytes are replaced "
                      "by U+FFFD. Re-export the table as UTF-8 to keep those characters.")
        return pd.read_csv(path, usecols=columns, dtype=text_dtypes, encoding="utf-8", encoding_errors="replace")


def _read_raw(path: Path) -> pd.DataFrame:
    """The used columns only, typed while they are read (Arrow): strings as categories, numbers as numbers."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq
    suffixes = "".join(path.suffixes[-2:]).lower()
    dictionary = pa.dictionary(pa.int32(), pa.string())
    if path.suffix.lower() == ".parquet":
        schema = pq.read_schema(path)
        columns = _columns_to_read(path, schema.names)
        strings = [c for c in columns if c in CATEGORY_COLUMNS and pa.types.is_string(schema.field(c).type)]
        # row group by row group: Arrow's decoded form of 20 million rows would be several GB at once
        batches = pq.ParquetFile(path, read_dictionary=strings).iter_batches(batch_size=READ_BATCH_ROWS, columns=columns)
        return _frame_from_batches(batches, columns)
    elif suffixes.endswith(".csv") or suffixes.endswith(".csv.gz"):
        columns = _columns_to_read(path, list(pd.read_csv(path, nrows=0, encoding_errors="replace").columns))
        convert = pa_csv.ConvertOptions(include_columns=columns, null_values=NULL_VALUES, strings_can_be_null=True,
                                        column_types={c: dictionary for c in CATEGORY_COLUMNS})
        try:
            table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                    convert_options=convert)
        except pa.ArrowInvalid as e:
            if "UTF8" not in str(e):
                raise EventTableError(f"{path}: not a readable CSV event table ({str(e).splitlines()[0]})") from None
            return _read_csv_pandas(path, columns)
    else:
        raise EventTableError(f"{path}: unknown file type; use .csv, .csv.gz or .parquet")
    return _frame_from_batches(table.to_batches(max_chunksize=READ_BATCH_ROWS), columns)


READ_BATCH_ROWS = 1 << 20


def _frame_from_batches(batches, columns) -> pd.DataFrame:
    """One DataFrame from Arrow record batches converted one at a time; categorical columns get the union of
    the batches' categories (pd.concat would turn them into Python strings), then each column is joined and
    its pieces freed before the next: the peak is the table plus one column, not Arrow's table plus pandas'."""
    from pandas.api.types import union_categoricals
    pieces = [_own_memory(batch.to_pandas()) for batch in batches]
    if not pieces:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = {}
    for col in list(pieces[0].columns):
        parts = [piece.pop(col) for piece in pieces]
        if all(isinstance(part.dtype, pd.CategoricalDtype) for part in parts):
            frame[col] = pd.Series(union_categoricals(parts), name=col)
        else:
            frame[col] = pd.concat(parts, ignore_index=True)
        del parts
    return pd.DataFrame(frame)


def _own_memory(piece: pd.DataFrame) -> pd.DataFrame:
    """A pandas piece that no longer points into its Arrow batch (to_pandas shares numeric buffers), so the
    batch is freed and Arrow reuses its memory for the next one; ids become int32 where they fit."""
    for col in piece.columns:
        if not isinstance(piece[col].dtype, pd.CategoricalDtype):
            values = piece[col]
            piece[col] = _narrow_ints(values) if col in ("subject_id", "hadm_id", "stay_id") and \
                pd.api.types.is_integer_dtype(values) else values.copy()
    return piece


def map_distinct(values: pd.Series, fn) -> pd.Series:
    """fn applied once per distinct value of a categorical column (fn takes and returns a Series of them);
    rows share the results: a categorical column again, or datetime64 when fn gives timestamps."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    mapped = fn(pd.Series(values.cat.categories.astype(object)))
    codes = values.cat.codes.to_numpy()
    if pd.api.types.is_bool_dtype(mapped):  # a test per row (missing rows: False)
        return pd.Series(mapped.to_numpy(dtype=bool, na_value=False)[np.maximum(codes, 0)] & (codes >= 0),
                         index=values.index)
    if pd.api.types.is_datetime64_any_dtype(mapped):
        out = mapped.to_numpy()[np.maximum(codes, 0)]
        out[codes < 0] = np.datetime64("NaT")
        return pd.Series(out, index=values.index)
    new_codes, uniques = pd.factorize(mapped)  # values mapped to one are merged; missing ones get -1
    return pd.Series(pd.Categorical.from_codes(np.where(codes >= 0, new_codes[np.maximum(codes, 0)], -1),
                                               categories=uniques), index=values.index)


class _StayOrder:
    """The rows grouped by stay (a stable argsort of stay_id, once): per-stay checks without groupby, whose
    hash tables and sorts cost several copies of a column at 20 million rows."""

    def __init__(self, stay_ids):
        self.stay_ids = stay_ids
        self.order = np.argsort(stay_ids, kind="stable")
        self.sorted_ids = stay_ids[self.order]
        self.same_stay = self.sorted_ids[1:] == self.sorted_ids[:-1]  # row i+1 belongs to row i's stay
        self.starts = np.flatnonzero(np.r_[True, ~self.same_stay])

    def first_stay_with_two_values(self, values: pd.Series):
        """The smallest stay_id whose rows hold two different values (missing counts as a value), else None."""
        codes = values.cat.codes.to_numpy() if isinstance(values.dtype, pd.CategoricalDtype) else pd.factorize(values)[0]
        codes = codes[self.order]
        differs = self.same_stay & (codes[1:] != codes[:-1])
        return self.sorted_ids[1:][differs.argmax()] if differs.any() else None

    def kept_rows_in_order(self, is_event, times):
        """Rows to keep (every event row, plus the first row of a stay without events), ordered by stay_id then
        time (stable; missing times last)."""
        keep = is_event.copy()
        has_events = np.logical_or.reduceat(is_event[self.order], self.starts)
        keep[self.order[self.starts[~has_events]]] = True
        rows = np.flatnonzero(keep)
        times = times.iloc[rows]
        if times.dt.tz is not None:  # a Parquet column with a time zone: order by the instant
            times = times.dt.tz_convert(None)
        ticks = times.to_numpy().view("int64").copy()
        ticks[times.isna().to_numpy()] = np.iinfo(np.int64).max
        return rows[np.lexsort((ticks, self.stay_ids[rows]))]


def _take(column: pd.Series, rows) -> pd.Series:
    return pd.Series(column.array.take(rows), name=column.name)


def _narrow_ints(values: pd.Series) -> pd.Series:
    """int32 when every value fits (MIMIC-IV's ids do), else int64."""
    info = np.iinfo(np.int32)
    return values.astype("int32") if len(values) and info.min <= values.min() and values.max() <= info.max else values


def read_event_table(path) -> pd.DataFrame:
    """Read and validate an event table; rows sorted by (stay_id, event_time), stable.

    A stay without events is kept as one row with empty event fields."""
    path = Path(path)
    df = _read_nonempty(path)
    _check_ids_and_label(path, df)
    by_stay = _StayOrder(df["stay_id"].to_numpy())
    _check_static_columns(path, df, by_stay)
    is_event = _check_event_fields(path, df)
    return _kept_rows_sorted(df, by_stay, is_event)


def _read_nonempty(path: Path) -> pd.DataFrame:
    """The file's used columns, after checking that it exists, has every required column and has rows."""
    if not path.is_file():
        raise EventTableError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise EventTableError(f"{path}: the file is empty; expected one row per event (docs/interfaces.md section 1)")
    try:
        df = _read_raw(path)
    except pd.errors.EmptyDataError:
        raise EventTableError(f"{path}: the file is empty; expected one row per event (docs/interfaces.md section 1)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise EventTableError(f"{path}: required column(s) missing: {', '.join(missing)} "
                              f"(found: {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise EventTableError(f"{path}: the table has columns but no rows")
    return df


def _fail(path, df, column, mask, what):
    """Reject `column`: `what` holds on the rows of `mask` (the message names their count and the first)."""
    first = df.loc[mask].iloc[0]
    raise EventTableError(f"{path}: column '{column}' {what} ({int(mask.sum())} row(s); first at "
                          f"stay_id={first['stay_id']}, value={first[column]!r})")


def _check_ids_and_label(path, df):
    """The ids as integers (int32 where they fit) and mortality as int64 0/1, in place."""
    for col in ("subject_id", "hadm_id", "stay_id"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            first = df.loc[bad].iloc[0]
            raise EventTableError(f"{path}: column '{col}' must be an integer id; {int(bad.sum())} row(s) are "
                                  f"empty or not integers (first value {first[col]!r})")
        df[col] = _narrow_ints(values.astype("int64"))
    mortality = pd.to_numeric(df["mortality"], errors="coerce")
    bad = ~mortality.isin([0, 1])
    if bad.any():
        _fail(path, df, "mortality", bad, "must be 0 or 1 (in-hospital death after the prediction time)")
    df["mortality"] = mortality.astype("int64")


def _check_static_columns(path, df, by_stay):
    """One patient, one label and one value of each static column per stay; patient_age as float64, in place."""
    stay = by_stay.first_stay_with_two_values(df["subject_id"])
    if stay is not None:
        raise EventTableError(f"{path}: stay_id={stay} belongs to more than one subject_id "
                              f"({sorted(df.loc[df.stay_id == stay, 'subject_id'].unique())}); a stay is one patient's")
    for col in (*STATIC_CATEGORICAL, *STATIC_NUMERIC, "mortality", "hadm_id"):
        stay = by_stay.first_stay_with_two_values(df[col])
        if stay is not None:
            vals = df.loc[df.stay_id == stay, col].drop_duplicates().tolist()[:5]
            raise EventTableError(f"{path}: column '{col}' differs between the rows of stay_id={stay} ({vals}); "
                                  "static columns and the label must be the same on every row of a stay")
    age = pd.to_numeric(df["patient_age"], errors="coerce")
    if (age.isna() & df["patient_age"].notna()).any():
        _fail(path, df, "patient_age", age.isna() & df["patient_age"].notna(), "must be a number")
    df["patient_age"] = age.astype("float64")


def _check_event_fields(path, df) -> np.ndarray:
    """Event fields: all empty (a stay without events) or all valid. Writes them back parsed (times as
    timestamps, kinds lower-case, minutes as float64; empty on rows without events) and returns which rows
    are events."""
    text = df["event_text"] if isinstance(df["event_text"].dtype, pd.CategoricalDtype) else df["event_text"].astype("category")
    etype = map_distinct(df["event_type"], lambda v: v.astype("string").str.strip().str.lower())
    rel = pd.to_numeric(df["relative_time_to_final_event"], errors="coerce")
    if (rel.isna() & df["relative_time_to_final_event"].notna()).any():
        _fail(path, df, "relative_time_to_final_event", rel.isna() & df["relative_time_to_final_event"].notna(),
              "must be a number of minutes")
    raw_time = df["event_time"]
    if pd.api.types.is_datetime64_any_dtype(raw_time):  # Parquet
        parsed_time = raw_time
    else:  # each distinct timestamp text is parsed once
        raw_time = map_distinct(raw_time, lambda v: v.astype("string").str.strip().replace("", pd.NA))
        parsed_time = map_distinct(raw_time, lambda v: pd.to_datetime(v, errors="coerce", format="mixed"))
    # An event row has any event field; a stay without events has all of them empty.
    ev = ((etype.notna() & (etype != "")) | text.notna() | rel.notna() | raw_time.notna()).fillna(False).astype(bool)
    if (ev & raw_time.notna() & parsed_time.isna()).any():
        _fail(path, df, "event_time", ev & raw_time.notna() & parsed_time.isna(), "cannot be parsed as a timestamp")
    if (ev & parsed_time.isna()).any():
        _fail(path, df, "event_time", ev & parsed_time.isna(), "is empty on an event row")
    if (ev & rel.isna()).any():
        _fail(path, df, "relative_time_to_final_event", ev & rel.isna(), "is empty on an event row")
    if (ev & (rel < 0)).any():
        _fail(path, df, "relative_time_to_final_event", ev & (rel < 0),
              "is negative: events after the prediction time would leak the outcome")
    unknown = ev & ~etype.isin(EVENT_TYPES).fillna(False)
    if unknown.any():
        kinds = sorted(set(etype[unknown].fillna("<empty>").tolist()))
        _fail(path, df, "event_type", unknown, f"has unknown kind(s) {kinds}; expected one of {list(EVENT_TYPES)}")
    blank = ev & (text.isna() | map_distinct(text, lambda v: v.astype("string").str.strip() == "").astype(bool))
    if blank.any():
        _fail(path, df, "event_text", blank, "is empty or whitespace-only on an event row")

    df["event_time"] = parsed_time
    df["event_type"] = etype.where(ev, pd.NA)
    df["event_text"] = text.where(ev, pd.NA)
    df["relative_time_to_final_event"] = rel.where(ev, np.nan).astype("float64")
    return ev.to_numpy()


def _kept_rows_sorted(df, by_stay, is_event) -> pd.DataFrame:
    """A stay that has events drops its empty placeholder rows; an empty stay keeps one row. Then rows by
    (stay_id, event_time), stable, empty times last: one column at a time, so that the peak holds one copy
    of one column rather than of the table (20 million rows)."""
    order = by_stay.kept_rows_in_order(is_event, df["event_time"])
    df = pd.DataFrame({col: _take(df.pop(col), order) for col in list(df.columns)})
    for col in df.columns:  # the same table whatever the file's row order: only used categories, sorted
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            used = df[col].cat.remove_unused_categories()
            df[col] = used.cat.reorder_categories(np.sort(used.cat.categories.to_numpy(dtype=object)))
    return df


def split_stays_by_patient(table: pd.DataFrame, seed: int) -> pd.Series:
    """70/15/15 split of patients (stratified by any death when possible); index stay_id -> split name."""
    from sklearn.model_selection import train_test_split
    patients = table.groupby("subject_id")["mortality"].max().sort_index()
    if len(patients) < 3:
        raise EventTableError(f"the table has {len(patients)} patient(s); the train/val/test split needs at least 3 "
                              "(at least ~20 for meaningful validation)")

    def split(ids, labels, frac):
        stratify = labels if labels.value_counts().min() >= 2 and len(ids) * frac >= 2 else None
        try:
            return train_test_split(ids, labels, test_size=frac, random_state=seed, stratify=stratify)
        except ValueError:  # too few patients of one class for stratification
            return train_test_split(ids, labels, test_size=frac, random_state=seed)

    train_ids, rest_ids, _, rest_y = split(patients.index.to_numpy(), patients, 0.30)
    val_ids, test_ids, _, _ = split(rest_ids, rest_y, 0.50)
    name = {**{s: "train" for s in train_ids}, **{s: "val" for s in val_ids}, **{s: "test" for s in test_ids}}
    stays = table.drop_duplicates("stay_id")[["stay_id", "subject_id"]]
    return pd.Series(stays["subject_id"].map(name).to_numpy(), index=pd.Index(stays["stay_id"].to_numpy(),
                                                                                  name="stay_id"), name="split")



def static_frame(table) -> pd.DataFrame:
    """One row per stay (order of first appearance): the static categories as objects (missing -> "missing")
    and the numeric columns as float64 (unparsable -> NaN). The one input of every static-feature pipeline."""
    stays = table.drop_duplicates("stay_id")
    frame = pd.DataFrame({c: stays[c].astype(object).where(stays[c].notna(), "missing").to_numpy()
                          for c in STATIC_CATEGORICAL})
    for c in STATIC_NUMERIC:
        frame[c] = pd.to_numeric(stays[c], errors="coerce").to_numpy(dtype="float64")
    return frame


def static_transformer(categories="auto", min_frequency=None, sparse_output=False):
    """The one static-feature pipeline (unfitted) for a static_frame: one-hot categories (unseen ones ignored;
    `min_frequency`: rarer ones share one column; `categories`: fixed ones, as a checkpoint stores them) and the
    median-imputed, standardised numbers. The model's preprocessor uses the defaults (dense); the baselines
    pass min_frequency=5 and sparse_output=True. scikit-learn is imported here, on first use."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value="missing", missing_values=None)),
        ("onehot", OneHotEncoder(categories=categories, handle_unknown="ignore", min_frequency=min_frequency,
                                 sparse_output=sparse_output)),
    ])
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return ColumnTransformer([("categorical", categorical, list(STATIC_CATEGORICAL)),
                              ("numeric", numeric, list(STATIC_NUMERIC))])


NUMBER = r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])"  # a stand-alone number ("41" in "pCO2 41 mm Hg", not the 2 of pCO2)


def items_and_values(texts: pd.Series):
    """(item, value) of each event text: the text without its numbers, and its first stand-alone number
    (NaN when none). Computed once per distinct text."""
    if isinstance(texts.dtype, pd.CategoricalDtype) and not texts.isna().any():
        # read_event_table's column: its categories are the distinct texts already (no string per row made)
        codes, uniques = texts.cat.codes.to_numpy(), pd.Series(texts.cat.categories.astype(str), dtype=object)
    else:
        codes, uniques = pd.factorize(texts.astype(str).to_numpy())
        uniques = pd.Series(uniques, dtype=object)
    items = item_of_text(uniques)
    values = pd.to_numeric(uniques.str.extract(f"({NUMBER})", expand=False), errors="coerce")
    return (pd.Series(items.to_numpy()[codes], index=texts.index),
            pd.Series(values.to_numpy()[codes], index=texts.index))


def item_of_text(texts: pd.Series) -> pd.Series:
    """The event text without its numbers ("Lab: Lactate # mmol/L (ref #-#) abnormal"): the item."""
    return texts.str.replace(r"\d+(?:\.\d+)?", "#", regex=True)

