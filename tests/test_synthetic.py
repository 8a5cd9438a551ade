"""synthetic_mimic.py: MIMIC-IV-shaped, deterministic, with a planted truth that survives extraction;
the realistic regime's extracted cohort matches the demo's within stated tolerances, its truth is the
documented function of what the event table shows (recomputed here with pandas) and no single item's
statistic gives a pattern away; and the shipped sample_train.csv (small regime) it makes, byte for byte."""
import gzip
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import extract_cohort
import synthetic_mimic

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENT_TABLE_COLUMNS = ["subject_id", "hadm_id", "stay_id", "event_time", "event_type", "event_text",
                    "relative_time_to_final_event", "gender", "race", "marital_status", "admission_type",
                    "admission_location", "insurance", "first_careunit", "patient_age", "mortality"]


def generate_and_extract(root: Path, n_stays: int, regime: str, seed: int = 7):
    stats = synthetic_mimic.generate(root / "mimic", n_stays, seed=seed, regime=regime)
    events = root / "events.parquet"
    counts = extract_cohort.extract_cohort(events, root / "mimic", progress=False)
    return root / "mimic", stats, pd.read_parquet(events), counts


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """600 stays of the small regime and their extracted event table (through the real query)."""
    return generate_and_extract(tmp_path_factory.mktemp("small"), 600, "small")


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """300 stays of the realistic regime (about 220 in the cohort, 3x the demo's 74)."""
    return generate_and_extract(tmp_path_factory.mktemp("realistic"), 300, "realistic")


@pytest.fixture(scope="module")
def realistic_large(tmp_path_factory):
    """1,500 stays of the realistic regime (about 1,100 in the cohort): enough stays with each pattern to
    measure how well one item's statistics separate them."""
    return generate_and_extract(tmp_path_factory.mktemp("realistic_large"), 1500, "realistic", seed=11)


@pytest.fixture(scope="module", params=synthetic_mimic.REGIMES)
def synthetic(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def demo_events(mimic_demo_dir, tmp_path_factory):
    events = tmp_path_factory.mktemp("demo") / "events.parquet"
    extract_cohort.extract_cohort(events, mimic_demo_dir, progress=False)
    return pd.read_parquet(events)


def header(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.readline().strip().replace('"', "").split(",")


def test_tables_have_the_demo_files_and_columns(synthetic, mimic_demo_dir):
    mimic, _, _, _ = synthetic
    regime = mimic.parent.name.rstrip("0123456789")
    con = duckdb.connect()
    for table in synthetic_mimic.COLUMNS:
        assert header(mimic / f"{table}.csv.gz") == header(Path(mimic_demo_dir) / f"{table}.csv.gz"), table
    for table, needed in extract_cohort.MIMIC_TABLES.items():
        ours, demo = mimic / f"{table}.csv.gz", Path(mimic_demo_dir) / f"{table}.csv.gz"
        if con.execute(f"SELECT count(*) FROM read_csv('{ours}')").fetchone()[0] == 0:
            assert regime == "small" and table == "icu/inputevents"  # the small regime has no infusions
            continue
        # the columns the query reads are sniffed as the same types as the demo's
        ours_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv('{ours}')").fetchall()}
        demo_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv('{demo}')").fetchall()}
        for column in needed:
            if demo_types[column] != "VARCHAR" or ours_types[column] != "VARCHAR":
                assert ours_types[column] == demo_types[column], f"{table}.{column}"


@pytest.mark.parametrize("regime", synthetic_mimic.REGIMES)
def test_generation_is_deterministic(tmp_path, regime):
    # chunk_stays=40: the realistic regime writes its rows in several chunks, and the result is the same
    synthetic_mimic.generate(tmp_path / "a", 150, seed=3, regime=regime, chunk_stays=40)
    synthetic_mimic.generate(tmp_path / "b", 150, seed=3, regime=regime, chunk_stays=40)
    synthetic_mimic.generate(tmp_path / "c", 150, seed=4, regime=regime, chunk_stays=40)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.csv.gz"))
    assert len(files) == len(synthetic_mimic.COLUMNS) + 2  # the tables + 2 truth files
    same = [gzip.open(tmp_path / "a" / f).read() == gzip.open(tmp_path / "b" / f).read() for f in files]
    assert all(same)
    assert gzip.open(tmp_path / "a" / "icu/icustays.csv.gz").read() != gzip.open(tmp_path / "c" / "icu/icustays.csv.gz").read()


def test_planted_rows_survive_extraction(synthetic):
    mimic, stats, table, counts = synthetic
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    planted = pd.read_csv(mimic / "truth" / "planted_rows.csv.gz", dtype=str)
    assert len(planted) == stats["planted_rows"] > 0
    assert set(planted["factor"]) == set(synthetic_mimic.RISK_FACTORS) == set(synthetic_mimic.PATTERNS)
    # the cohort excludes short stays, deaths before 48 h and minors, and keeps the rest
    assert 0.6 * stats["stays"] < counts["stays"] < stats["stays"]
    events = table.dropna(subset=["event_type"])
    keys = set(zip(events["source_table"], events["source_id"]))
    planted_keys = set(zip(planted["source_table"], planted["source_id"]))
    in_cohort = set(table["stay_id"])
    found = planted_keys & keys
    assert len(found) > 0.5 * len(planted_keys)
    cohort_truth = truth.loc[sorted(in_cohort)]
    factor_columns = [c for c in truth.columns if c.startswith("factor_")]
    with_factor = cohort_truth[factor_columns].sum(axis=1) > 0
    # planted rows are shown at 48 h: every cohort stay with a risk factor shows it, no other does
    extracted_planted = events[[k in planted_keys for k in zip(events["source_table"], events["source_id"])]]
    assert set(extracted_planted["stay_id"]) == set(cohort_truth.index[with_factor])
    # labels in the extracted table are the generator's
    labels = table.drop_duplicates("stay_id").set_index("stay_id")["mortality"]
    assert (labels == truth.loc[labels.index, "died"]).all()


def test_quiet_stays_are_one_empty_row(small):
    _, _, table, counts = small
    assert counts["stays_without_events"] >= 1
    empty = table[table["event_type"].isna()]
    assert table.groupby("stay_id").size()[empty["stay_id"]].eq(1).all()


def test_planted_risk_carries_the_signal(small):
    mimic, _, table, _ = small
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    stays = table.drop_duplicates("stay_id").set_index("stay_id")
    p = truth.loc[stays.index, "true_probability"]
    assert roc_auc_score(stays["mortality"], p) > 0.75
    # the planted texts alone (no age) already separate the classes
    planted_texts = ("Lab: Lactate", "Norepinephrine", "Phenylephrine", "Vasopressin", "Epinephrine",
                     "Invasive Ventilation", "BLOOD CULTURE - ")
    events = table.dropna(subset=["event_type"])
    high_lactate = events["event_text"].str.extract(r"^Lab: Lactate ([\d.]+)")[0].astype(float) > 4
    flagged = events[high_lactate | events["event_text"].str.contains("|".join(planted_texts[1:]), regex=True)]
    score = stays.index.isin(flagged["stay_id"]).astype(float)
    assert roc_auc_score(stays["mortality"], score) > 0.65


# ----------------------------------------------------------------------------- realistic regime: the truth
PRESSOR_TEXT = r"^Input: (Norepinephrine|Phenylephrine|Vasopressin|Epinephrine) .* at ([\d.]+) "
PATHOGEN_TEXT = r"^Microbiology: BLOOD CULTURE - (?:STAPH AUREUS COAG \+|ESCHERICHIA COLI|KLEBSIELLA PNEUMONIAE)"


def lab_results(events: pd.DataFrame, label: str, unit: str) -> pd.DataFrame:
    """The rows of one lab item with their value (mg/dL, mmol/L) and value in tenths, read from the text."""
    value = events["event_text"].str.extract(rf"^Lab: {label} (\d+(?:\.\d+)?) {unit} ")[0].astype(float)
    rows = events[value.notna()].assign(value=value[value.notna()])
    return rows.assign(tenths=(rows["value"] * 10).round().astype(int))


def pressor_rows(events: pd.DataFrame) -> pd.DataFrame:
    found = events["event_text"].str.extract(PRESSOR_TEXT)
    return events.assign(agent=found[0], value=found[1].astype(float)).dropna(subset=["agent"])


def patterns_from_table(table: pd.DataFrame) -> pd.DataFrame:
    """The realistic truth's five patterns, recomputed from the event table alone (pandas, as the module
    docstring defines them), and the hours from the latest evidence of each recency-weighted one to the
    prediction time. One row per stay of the table."""
    events = table.dropna(subset=["event_type"]).copy()
    events["event_time"] = pd.to_datetime(events["event_time"])
    hours = (pd.to_datetime(events["prediction_time"]) - events["event_time"]).dt.total_seconds() / 3600
    events = events.assign(hours_before=hours).sort_values(["stay_id", "event_time"], kind="stable")
    out = pd.DataFrame(index=pd.Index(sorted(table["stay_id"].unique()), name="stay_id"))

    lactate = lab_results(events, "Lactate", "mmol/L").groupby("stay_id").agg(
        n=("tenths", "size"), first=("tenths", "first"), last=("tenths", "last"), hours=("hours_before", "last"))
    on = (lactate["n"] >= 2) & (lactate["last"] > 20) & (10 * lactate["last"] >= 9 * lactate["first"])
    out["lactate"] = out.index.isin(lactate.index[on])
    out["hours_lactate"] = lactate.loc[on, "hours"].reindex(out.index)

    creatinine = lab_results(events, "Creatinine", "mg/dL")
    baseline = creatinine.groupby("stay_id")["tenths"].transform("first")
    later = creatinine.groupby("stay_id").cumcount() > 0
    rise = creatinine[later & ((creatinine["tenths"] - baseline >= 3) | (2 * creatinine["tenths"] >= 3 * baseline))]
    out["renal"] = out.index.isin(rise["stay_id"])
    out["hours_renal"] = rise.groupby("stay_id")["hours_before"].min().reindex(out.index)

    pressors = pressor_rows(events[events["event_type"] == "input"])
    per_agent = pressors.groupby(["stay_id", "agent"])["value"].agg(["first", "last"])
    rising = (per_agent["last"] >= 1.5 * per_agent["first"] - 1e-12).groupby("stay_id").any()
    agents = per_agent.groupby("stay_id").size()
    out["pressor"] = out.index.isin(agents.index[(agents >= 2) | rising])
    out["hours_pressor"] = pressors.groupby("stay_id")["hours_before"].min().reindex(out.index).where(out["pressor"])

    micro = events[events["event_type"] == "microbiology"]
    reported = micro[micro["event_text"].str.contains(PATHOGEN_TEXT)].groupby("stay_id")["event_time"].min()
    drugs = events[events["event_type"] == "prescription"]
    antibiotics = drugs[drugs["event_text"].str.slice(len("Prescription: ")).str.contains(synthetic_mimic.ANTIBIOTIC_RE)]
    antibiotics = antibiotics.join(reported.rename("reported"), on="stay_id", how="inner")
    in_time = antibiotics["event_time"] < antibiotics["reported"] + pd.Timedelta(hours=synthetic_mimic.TREATMENT_DELAY_H)
    out["bacteremia"] = out.index.isin(reported.index) & ~out.index.isin(antibiotics.loc[in_time, "stay_id"])

    shown = lambda text: out.index.isin(events.loc[events["event_text"] == text, "stay_id"])  # noqa: E731
    out["ventilated"] = shown("Procedure: Invasive Ventilation") & ~shown("Procedure: Extubation")
    return out


def test_realistic_truth_is_the_documented_function_of_the_table(realistic_large):
    """The truth's patterns, recomputed from the extracted event table alone, are the generator's; the true
    probability is the documented logistic function of them and age; the label is drawn from it."""
    mimic, _, table, _ = realistic_large
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    ours = patterns_from_table(table)
    theirs = truth.loc[ours.index]
    for name in synthetic_mimic.PATTERNS:
        assert (ours[name] == theirs[f"factor_{name}"].astype(bool)).all(), name
        assert 0.02 < ours[name].mean() < 0.35, name  # every pattern is seen, none is everywhere
    for name in synthetic_mimic.RECENCY:
        pd.testing.assert_series_equal(ours[f"hours_{name}"], theirs[f"hours_{name}"], check_names=False, atol=1e-9)
    age = table.drop_duplicates("stay_id").set_index("stay_id").loc[ours.index, "patient_age"]
    logit = synthetic_mimic.REALISTIC_INTERCEPT + synthetic_mimic.AGE_PER_YEAR * (age - 65) \
        + synthetic_mimic.SHOCK_INTERACTION * (ours["lactate"] & ours["pressor"])
    for name, coefficient in synthetic_mimic.PATTERNS.items():
        weight = 2.0 ** (-ours[f"hours_{name}"].fillna(0) / synthetic_mimic.RECENCY_HALF_LIFE_H) \
            if name in synthetic_mimic.RECENCY else 1.0
        logit = logit + coefficient * ours[name] * weight
    assert np.allclose(1 / (1 + np.exp(-logit)), theirs["true_probability"], rtol=0, atol=1e-9)
    labels = table.drop_duplicates("stay_id").set_index("stay_id").loc[ours.index, "mortality"]
    assert 0.10 < labels.mean() < 0.22
    assert 0.80 < roc_auc_score(labels, theirs["true_probability"]) < 0.95
    # the patterns, not the items' presence, carry the risk
    assert roc_auc_score(labels, ours[list(synthetic_mimic.PATTERNS)].sum(axis=1)) > 0.7


def per_stay_statistics(rows: pd.DataFrame, stays: pd.Index) -> dict:
    """Count, and max/min/last/mean of the value where there is one, of one item per stay (stays without
    the item: count 0, values below any value)."""
    group = rows.groupby("stay_id")
    stats = {"count": group.size().reindex(stays, fill_value=0)}
    if "value" in rows:
        for name in ("max", "min", "last", "mean"):
            stats[name] = getattr(group["value"], name)().reindex(stays).fillna(-1.0)
    return stats


def test_no_single_item_statistic_gives_a_pattern_away(realistic_large):
    """Issue 21: no threshold on one item's per-stay count, max, min, last or mean separates the stays with
    a pattern from the others (AUROC < 0.95 either way), and every item a pattern reads is also charted in
    stays without the pattern."""
    _, _, table, _ = realistic_large
    patterns = patterns_from_table(table)
    events = table.dropna(subset=["event_type"])
    pressors = pressor_rows(events[events["event_type"] == "input"])
    procedure = lambda label: events[events["event_text"] == f"Procedure: {label}"]  # noqa: E731
    items = {  # item: (the pattern that reads it, its rows)
        "Lactate": ("lactate", lab_results(events, "Lactate", "mmol/L")),
        "Creatinine": ("renal", lab_results(events, "Creatinine", "mg/dL")),
        "Dialysis - CRRT": ("renal", procedure("Dialysis - CRRT")),
        "any vasopressor": ("pressor", pressors),
        **{agent: ("pressor", pressors[pressors["agent"] == agent])
           for agent in ("Norepinephrine", "Phenylephrine", "Vasopressin", "Epinephrine")},
        "pathogen in a blood culture": ("bacteremia", events[events["event_text"].str.contains(PATHOGEN_TEXT)]),
        "Invasive Ventilation": ("ventilated", procedure("Invasive Ventilation")),
        "Intubation": ("ventilated", procedure("Intubation")),
    }
    failures = []
    for item, (pattern, rows) in items.items():
        has = patterns[pattern]
        background_with_item = patterns.index[~has].isin(rows["stay_id"]).sum()
        if background_with_item < 5:
            failures.append(f"{item}: in {background_with_item} stays without {pattern}")
        for name, statistic in per_stay_statistics(rows, patterns.index).items():
            auroc = roc_auc_score(has, statistic)
            if max(auroc, 1 - auroc) >= 0.95:
                failures.append(f"{item} {name} separates {pattern}: AUROC {auroc:.3f}")
    assert not failures, "; ".join(failures)


def test_texts_repeat_like_mimic(small):
    _, _, table, _ = small
    texts = table["event_text"].dropna()
    counts = texts.value_counts()
    assert texts.nunique() < 0.2 * len(texts)  # heavy repetition ...
    assert counts.iloc[0] > 20 * counts.median()  # ... with a long tail (Zipf-like)


# ----------------------------------------------------------------------------- realistic regime vs the demo
# Tolerances of issue 12: events per stay (median, 90th percentile) within 25%, share of each event kind
# within 5 points, distinct texts per event within 25%.
RELATIVE_TOLERANCE, SHARE_TOLERANCE_POINTS = 0.25, 5.0


def cohort_statistics(table: pd.DataFrame, n_stays: int, seed: int = 0) -> dict:
    """Events per stay (median, p90), % share of each event kind, and distinct texts per event. The last
    depends on the cohort's size (texts repeat across stays), so it is measured on n_stays random stays
    (the demo's cohort size), averaged over 5 draws."""
    events = table.dropna(subset=["event_type"])
    per_stay = events.groupby("stay_id").size().reindex(table["stay_id"].unique(), fill_value=0)
    stats = {"events per stay, median": per_stay.median(), "events per stay, p90": per_stay.quantile(0.9)}
    shares = events["event_type"].value_counts(normalize=True) * 100
    stats.update({f"share % {kind}": shares.get(kind, 0.0) for kind in sorted(set(events["event_type"]))})
    rng = np.random.default_rng(seed)
    stays = table["stay_id"].unique()
    ratios = []
    for _ in range(5):
        sample = events[events["stay_id"].isin(rng.choice(stays, size=min(n_stays, len(stays)), replace=False))]
        ratios.append(sample["event_text"].nunique() / len(sample))
    stats["distinct texts per event"] = float(np.mean(ratios))
    return stats


def test_realistic_cohort_matches_the_demo(realistic, demo_events):
    _, _, table, _ = realistic
    demo = cohort_statistics(demo_events, demo_events["stay_id"].nunique())
    ours = cohort_statistics(table, demo_events["stay_id"].nunique())
    assert table["stay_id"].nunique() > 150
    failures = []
    for name in sorted(set(demo) | set(ours)):
        d, o = demo.get(name, 0.0), ours.get(name, 0.0)
        ok = abs(o - d) <= SHARE_TOLERANCE_POINTS if name.startswith("share") else abs(o - d) <= RELATIVE_TOLERANCE * d
        if not ok:
            failures.append(f"{name}: demo {d:.3f}, synthetic {o:.3f}")
    assert not failures, "; ".join(failures)


def window_rows(mimic: Path, table: str, cohort: pd.DataFrame, time_column: str, by="stay_id") -> pd.DataFrame:
    """Rows of a generated table whose time_column lies in a cohort stay's 48 h window (joined by `by`)."""
    rows = pd.read_csv(mimic / f"{table}.csv.gz", dtype={"comments": str})
    for column in ("starttime", "endtime", "storetime", "charttime"):
        if column in rows:
            rows[column] = pd.to_datetime(rows[column])
    joined = rows.merge(cohort, on=by)
    start = joined["prediction_time"] - pd.Timedelta(hours=synthetic_mimic.OBSERVATION_HOURS)
    return joined[(joined[time_column] >= start) & (joined[time_column] < joined["prediction_time"])]


def test_realistic_tables_carry_what_the_query_must_handle(realistic):
    """Inside the cohort's windows: results in microbiology comments (positive, negative, cancelled),
    rows charted after the prediction time, lab and microbiology rows without hadm_id, vasopressor
    infusions in inputevents and their ingredient rows."""
    mimic, _, table, _ = realistic
    cohort = table.drop_duplicates("stay_id")[["subject_id", "stay_id", "prediction_time"]].copy()
    cohort["prediction_time"] = pd.to_datetime(cohort["prediction_time"])
    by_subject = cohort.drop(columns="stay_id")

    micro = window_rows(mimic, "hosp/microbiologyevents", by_subject, "charttime", by="subject_id")
    comments = micro.loc[micro["org_name"].isna(), "comments"].dropna().str.upper()
    for result in ("NO GROWTH", "POSITIVE", "CANCELLED"):
        assert comments.str.contains(result).any(), result
    assert micro["hadm_id"].isna().sum() >= 3
    labs = window_rows(mimic, "hosp/labevents", by_subject, "charttime", by="subject_id")
    assert 0.005 < labs["hadm_id"].isna().mean() < 0.05

    for name in ("icu/procedureevents", "icu/inputevents"):
        rows = window_rows(mimic, name, cohort.drop(columns="subject_id"), "starttime")
        delay_h = (rows["storetime"] - rows["starttime"]).dt.total_seconds() / 3600
        assert (delay_h > 1).mean() > 0.05, name  # charted hours after they started
        late = (rows["storetime"] > rows["prediction_time"]) & (rows["endtime"] <= rows["prediction_time"])
        assert late.sum() >= 5, name  # over before the prediction time but charted after it

    inputs = window_rows(mimic, "icu/inputevents", cohort.drop(columns="subject_id"), "starttime")
    pressor_items = {p[0][0] for p in synthetic_mimic.PRESSOR_INFUSIONS}
    pressors = inputs[inputs["itemid"].isin(pressor_items)]
    assert set(pressors["itemid"]) == pressor_items and pressors["rate"].notna().all()
    # vasopressors are rare among a stay's events (the planted signal does not dominate)
    per_stay_share = pressors.groupby("stay_id").size() / table.dropna(subset=["event_type"]).groupby("stay_id").size()
    assert per_stay_share.dropna().median() < 0.05
    ingredients = pd.read_csv(mimic / "icu/ingredientevents.csv.gz", usecols=["orderid"])
    assert ingredients["orderid"].isin(inputs["orderid"]).any()
    assert len(ingredients) > len(pd.read_csv(mimic / "icu/inputevents.csv.gz", usecols=["orderid"]))


def test_one_command_makes_a_realistic_cohort_with_its_truth(tmp_path):
    """`synthetic_mimic.py --out-dir D --extract FILE`: tables, truth and the event table with the truth
    columns, the rows in the query's order."""
    events = tmp_path / "events.csv.gz"
    synthetic_mimic.main(["--out-dir", str(tmp_path / "mimic"), "--n-stays", "120", "--seed", "5",
                          "--extract", str(events)])
    table = pd.read_csv(events, dtype={"source_id": str})
    assert list(table.columns[:len(EVENT_TABLE_COLUMNS)]) == EVENT_TABLE_COLUMNS
    plain = tmp_path / "plain.csv.gz"
    extract_cohort.extract_cohort(plain, tmp_path / "mimic", progress=False)
    plain = pd.read_csv(plain, dtype={"source_id": str})
    pd.testing.assert_frame_equal(table[plain.columns], plain)  # same rows, same order
    planted = pd.read_csv(tmp_path / "mimic" / "truth" / "planted_rows.csv.gz", dtype=str)
    is_planted = (table["source_table"] + "|" + table["source_id"]).isin(planted["source_table"] + "|" + planted["source_id"])
    assert (table["planted_risk"] == is_planted.astype(int)).all() and table["planted_risk"].sum() > 0
    assert set(table["event_type"].dropna()) >= {"lab", "input", "prescription", "procedure", "microbiology"}
    truth = pd.read_csv(tmp_path / "mimic" / "truth" / "stays.csv.gz").set_index("stay_id")["true_probability"]
    assert np.allclose(table["true_probability"], truth.loc[table["stay_id"]].round(4).to_numpy())


def test_sample_file_matches_contract_and_truth():
    path = REPO_ROOT / "sample_train.csv"
    assert path.stat().st_size <= 10_000_000
    table = pd.read_csv(path)
    assert list(table.columns[:len(EVENT_TABLE_COLUMNS)]) == EVENT_TABLE_COLUMNS
    assert {"planted_risk", "true_probability"} <= set(table.columns)
    stays = table.drop_duplicates("stay_id")
    assert 900 <= len(stays) <= 1100
    assert 35 <= table["event_type"].notna().sum() / len(stays) <= 60
    assert set(table["planted_risk"]) == {0, 1}
    assert (table.loc[table["event_type"].isna(), "planted_risk"] == 0).all()
    assert (table.groupby("stay_id")["true_probability"].nunique() == 1).all()
    assert roc_auc_score(stays["mortality"], stays["true_probability"]) > 0.8
    assert not table["subject_id"].isna().any() and set(table["mortality"]) == {0, 1}


def test_sample_is_remade_exactly(tmp_path):
    """`python synthetic_mimic.py --make-sample` reproduces the shipped file byte for byte."""
    out = tmp_path / "sample_train.csv"
    stats = synthetic_mimic.make_sample(out, work_dir=tmp_path)
    assert out.read_bytes() == (REPO_ROOT / "sample_train.csv").read_bytes()
    assert stats["ceiling_auroc"] > 0.8


def test_bad_stay_count(tmp_path):
    with pytest.raises(ValueError, match="n-stays"):
        synthetic_mimic.generate(tmp_path, 0)
    assert np.isclose(synthetic_mimic.sigmoid(0.0), 0.5)


# ----------------------------------------------------------------------------- --vitals: chartevents, outputevents
WITH_VITALS = (*extract_cohort.DEFAULT_EVENT_KINDS, "vital", "output")
# MIMIC-IV 2.2's chartevents columns (the demo download has no chartevents file: tests/test_extract_vitals.py)
CHARTEVENTS_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value",
                       "valuenum", "valueuom", "warning"]


@pytest.fixture(scope="module")
def realistic_vitals(tmp_path_factory):
    """1,200 stays of the realistic regime with --vitals (about 870 in the cohort), extracted with the vital and
    output kinds at the default 2-hour bins (about 20 s on 2 cores: its tests are marked slow)."""
    root = tmp_path_factory.mktemp("realistic_vitals")
    stats = synthetic_mimic.generate(root / "mimic", 1200, seed=13, vitals=True)
    events = root / "events.parquet"
    counts = extract_cohort.extract_cohort(events, root / "mimic", progress=False, event_kinds=WITH_VITALS)
    return root / "mimic", stats, pd.read_parquet(events), counts


def source_parts(rows: pd.DataFrame) -> pd.DataFrame:
    """itemid and charttime of chartevents / outputevents rows, read back from query.sql's source_id."""
    parts = rows["source_id"].str.split(":", n=1)
    return rows.assign(itemid=parts.str[0].astype("int64"), charttime=pd.to_datetime(parts.str[1]))


def vital_events(events: pd.DataFrame) -> pd.DataFrame:
    """The `vital` rows with itemid, charttime, the value shown (NaN for a word), the bin's min and max, whether it
    is an intubated verbal response, and the 2-hour bin (counted back from the prediction time)."""
    rows = source_parts(events[events["event_type"] == "vital"])
    label = rows["itemid"].map({i: r.label for i, r in extract_cohort.VITAL_RULES.items()})
    rest = pd.Series([t[len("Vital: ") + len(lab) + 1:] for t, lab in zip(rows["event_text"], label)], index=rows.index)
    rows["ett"] = rest.str.startswith(synthetic_mimic.GCS_INTUBATED)
    rows["value"] = pd.to_numeric(rest.str.split(" ").str[0].where(~rows["ett"]), errors="coerce")
    bounds = rest.str.extract(r"\(min (-?[\d.]+), max (-?[\d.]+)\)$").astype(float)
    rows["low"], rows["high"] = bounds[0], bounds[1]
    since = (pd.to_datetime(rows["prediction_time"]) - rows["charttime"]).dt.total_seconds()
    rows["bin"] = (since // (synthetic_mimic.VITAL_BIN_H * 3600)).astype(int)
    return rows


def output_events(events: pd.DataFrame) -> pd.DataFrame:
    rows = source_parts(events[events["event_type"] == "output"])
    return rows.assign(value=rows["event_text"].str.extract(r" (-?[\d.]+) ml$")[0].astype(float))


def vital_patterns_from_table(table: pd.DataFrame) -> pd.DataFrame:
    """The four physiology patterns of --vitals, recomputed from the event table alone (pandas, as the module
    docstring defines them on the default 2-hour bins). One row per stay of the table."""
    sm = synthetic_mimic
    events = table.dropna(subset=["event_type"]).copy()
    events["event_time"] = pd.to_datetime(events["event_time"])
    vitals, outputs = vital_events(events), output_events(events)
    out = pd.DataFrame(index=pd.Index(sorted(table["stay_id"].unique()), name="stay_id"))

    pressors = pressor_rows(events[events["event_type"] == "input"])
    first_pressor = pressors.groupby("stay_id")["event_time"].min()
    pressure = vitals[vitals["itemid"].isin(sm.MEAN_PRESSURE)].join(first_pressor.rename("pressor"), on="stay_id")
    low = pressure[(pressure["high"] < sm.HYPOTENSION_MMHG) & (pressure["event_time"] >= pressure["pressor"])]
    out["hypotension"] = low.groupby("stay_id")["bin"].nunique().reindex(out.index, fill_value=0) >= sm.HYPOTENSION_BINS

    spo2 = vitals[(vitals["itemid"] == sm.SPO2) & (vitals["high"] < sm.HYPOXAEMIA_PERCENT)]
    pairs = spo2.merge(spo2.assign(bin=spo2["bin"] - 1)[["stay_id", "bin"]], on=["stay_id", "bin"])
    out["hypoxaemia"] = out.index.isin(pairs["stay_id"])

    gcs = vitals[vitals["itemid"].isin([sm.GCS_EYE, sm.GCS_MOTOR, sm.GCS_VERBAL])]
    per_time = gcs.groupby(["stay_id", "charttime"]).agg(items=("itemid", "nunique"), total=("value", "sum"),
                                                          ett=("ett", "any"))
    last = per_time[per_time["items"] == 3].groupby("stay_id").tail(1)
    total = last["total"].where(~last["ett"], 15)
    out["coma"] = out.index.isin(total[total <= sm.COMA_GCS].index.get_level_values("stay_id"))

    urine = outputs[outputs["itemid"].isin(sm.URINE_ITEMS)][["stay_id", "charttime", "value"]]
    first = urine.groupby("stay_id")["charttime"].min()
    window = pd.Timedelta(hours=sm.OLIGURIA_HOURS)
    ends = urine[["stay_id", "charttime"]].drop_duplicates().rename(columns={"charttime": "end"})
    ends = ends[ends["end"] - window >= ends["stay_id"].map(first)]
    spans = ends.merge(urine, on="stay_id")
    spans = spans[(spans["charttime"] > spans["end"] - window) & (spans["charttime"] <= spans["end"])]
    volume = spans.groupby(["stay_id", "end"])["value"].sum()
    limit = sm.OLIGURIA_ML_PER_KG_H * sm.WEIGHT_KG * sm.OLIGURIA_HOURS
    out["oliguria"] = out.index.isin(volume[volume < limit].index.get_level_values("stay_id"))
    return out


@pytest.mark.slow
def test_vital_tables_have_mimic_columns_and_pass_the_query(realistic_vitals, mimic_demo_dir):
    mimic, _, table, counts = realistic_vitals
    assert header(mimic / "icu/chartevents.csv.gz") == CHARTEVENTS_COLUMNS
    assert header(mimic / "icu/outputevents.csv.gz") == header(Path(mimic_demo_dir) / "icu/outputevents.csv.gz")
    con = duckdb.connect()
    demo_types = {r[0]: r[1] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_csv('{Path(mimic_demo_dir) / 'icu/outputevents.csv.gz'}')").fetchall()}
    ours_types = {r[0]: r[1] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_csv('{mimic / 'icu/outputevents.csv.gz'}')").fetchall()}
    assert ours_types == demo_types
    chart = pd.read_csv(mimic / "icu/chartevents.csv.gz", keep_default_na=False, na_values=[""],
                        parse_dates=["charttime", "storetime"], dtype={"value": str})
    assert set(chart["itemid"]) == set(extract_cohort.VITAL_RULES)
    for itemid, rule in extract_cohort.VITAL_RULES.items():  # every value passes the query's bounds
        v = chart.loc[chart["itemid"] == itemid, "valuenum"]
        assert (v > rule.low).all(), itemid
        assert rule.high is None or ((v < rule.high) | (rule.high_inclusive & (v == rule.high))).all(), itemid
    assert (chart["storetime"] >= chart["charttime"]).all()
    # every active stay of the cohort has vital signs and outputs; some rows are stored after the prediction time
    events = table.dropna(subset=["event_type"])
    per_kind = events.groupby(["stay_id", "event_type"]).size().unstack(fill_value=0)
    assert (per_kind["vital"] > 50).mean() > 0.97 and (per_kind["output"] > 0).mean() > 0.97
    cohort = table.drop_duplicates("stay_id")[["stay_id", "prediction_time"]]
    chart = chart.merge(cohort.assign(prediction_time=pd.to_datetime(cohort["prediction_time"])), on="stay_id")
    late = (chart["charttime"] < chart["prediction_time"]) & (chart["storetime"] >= chart["prediction_time"])
    assert late.sum() > 100
    # each vital event shows a charting stored before the prediction time
    shown = source_parts(events[events["event_type"] == "vital"])[["stay_id", "itemid", "charttime"]]
    shown = shown.merge(chart, on=["stay_id", "itemid", "charttime"], how="left", validate="one_to_one")
    assert (shown["storetime"] < shown["prediction_time"]).all()
    assert counts["stays"] > 700


@pytest.mark.slow
def test_vital_rates_and_values_match_the_demo(realistic_vitals):
    """Per item: rows per hour of ICU stay within 25% of the demo's (items expected in >= 100 stays and >= 300
    rows), value quantiles (10th, 50th, 90th; such items with >= 1,000 rows) within 10% of the demo's 5th-95th range or
    one unit of the value's precision, GCS score shares within 8 points (the verbal response counting "No
    Response-ETT" as intubated), outputs' rates and volumes likewise."""
    mimic, _, _, _ = realistic_vitals
    vocab = synthetic_mimic.load_vocab().raw
    stays = pd.read_csv(mimic / "icu/icustays.csv.gz", parse_dates=["intime", "outtime"])
    hours = ((stays["outtime"] - stays["intime"]).dt.total_seconds() / 3600).clip(upper=synthetic_mimic.VITAL_SPAN_H)
    hours = hours.sum()
    chart = pd.read_csv(mimic / "icu/chartevents.csv.gz", keep_default_na=False, na_values=[""], dtype={"value": str})
    outputs = pd.read_csv(mimic / "icu/outputevents.csv.gz")
    failures = []

    def compare(name, rows, item, grid, values):
        expected_stays = item["rate"] / item["rate_in_stays"] * len(stays)
        if expected_stays >= 100 and item["rate"] * hours >= 300 and \
                abs(len(rows) / hours - item["rate"]) > 0.25 * item["rate"]:
            failures.append(f"{name}: {len(rows) / hours:.3f} rows per hour, demo {item['rate']:.3f}")
        if "quantiles" in item and expected_stays >= 100 and len(rows) >= 1000:
            demo = np.interp([0.1, 0.5, 0.9], grid, item["quantiles"])
            spread = np.diff(np.interp([0.05, 0.95], grid, item["quantiles"]))[0]
            ours = np.quantile(values, [0.1, 0.5, 0.9])
            if (np.abs(ours - demo) > max(0.1 * spread, 10.0 ** -item.get("decimals", 0)) + 1e-9).any():
                failures.append(f"{name}: quantiles {ours}, demo {demo}")

    grid = vocab["vitals"]["probabilities"]
    for key, item in vocab["vitals"]["items"].items():
        rows = chart[chart["itemid"] == int(key)]
        compare(key, rows, item, grid, rows["valuenum"])
        if "scores" in item:
            ett = rows["value"] == synthetic_mimic.GCS_INTUBATED
            demo = np.array(item["scores"]) + np.array(item["scores_intubated"])
            demo = np.r_[demo / demo.sum() * (1 - item.get("intubated_share", 0)), item.get("intubated_share", 0)]
            scores = rows.loc[~ett, "valuenum"].astype(int)
            ours = np.r_[[(scores == k).sum() for k in range(1, len(item["scores"]) + 1)], ett.sum()] / len(rows)
            if np.abs(ours - demo).max() > 0.08:
                failures.append(f"{key}: score shares {ours.round(3)}, demo {demo.round(3)}")
    grid = vocab["outputs"]["probabilities"]
    for item in vocab["outputs"]["items"]:
        if item["itemid"] in synthetic_mimic.OUTPUTS_NOT_GENERATED:
            continue
        rows = outputs[outputs["itemid"] == item["itemid"]]
        compare(item["itemid"], rows, item, grid, rows["value"])
    assert not failures, "; ".join(failures)


@pytest.mark.slow
def test_vital_truth_is_the_documented_function_of_the_table(realistic_vitals):
    """With --vitals, the truth's nine patterns, recomputed from the extracted table (default 2-hour bins), are the
    generator's; the true probability is the documented logistic function of them; the label is drawn from it; the
    planted rows are exactly the rows the table shows for each pattern's stays."""
    mimic, _, table, _ = realistic_vitals
    sm = synthetic_mimic
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    ours = patterns_from_table(table).join(vital_patterns_from_table(table))
    theirs = truth.loc[ours.index]
    for name in [*sm.PATTERNS, *sm.VITAL_PATTERNS]:
        assert (ours[name] == theirs[f"factor_{name}"].astype(bool)).all(), name
        assert 0.01 < ours[name].mean() < 0.35, name
    age = table.drop_duplicates("stay_id").set_index("stay_id").loc[ours.index, "patient_age"]
    logit = sm.REALISTIC_INTERCEPT_VITALS + sm.AGE_PER_YEAR * (age - 65) \
        + sm.SHOCK_INTERACTION * (ours["lactate"] & ours["pressor"])
    for name, coefficient in sm.PATTERNS.items():
        weight = 2.0 ** (-ours[f"hours_{name}"].fillna(0) / sm.RECENCY_HALF_LIFE_H) if name in sm.RECENCY else 1.0
        logit = logit + coefficient * ours[name] * weight
    for name, coefficient in sm.VITAL_PATTERNS.items():
        logit = logit + coefficient * ours[name]
    assert np.allclose(1 / (1 + np.exp(-logit)), theirs["true_probability"], rtol=0, atol=1e-9)
    labels = table.drop_duplicates("stay_id").set_index("stay_id").loc[ours.index, "mortality"]
    assert 0.10 < labels.mean() < 0.22
    assert 0.80 < roc_auc_score(labels, theirs["true_probability"]) < 0.95
    # planted rows: named by (stay, table, source_id); each pattern's are in its stays only, and all its stays have some
    planted = pd.read_csv(mimic / "truth" / "planted_rows.csv.gz", dtype={"source_id": str})
    events = table.dropna(subset=["event_type"])
    shown = events.merge(planted, on=["stay_id", "source_table", "source_id"])
    for name in sm.VITAL_PATTERNS:
        stays_with_rows = set(shown.loc[shown["factor"] == name, "stay_id"])
        assert stays_with_rows == set(ours.index[ours[name]]), name


@pytest.mark.slow
def test_no_single_vital_statistic_gives_a_pattern_away(realistic_vitals):
    """As for the other patterns: no threshold on one vital item's per-stay count, max, min, last or mean (of the
    values the table shows: each bin's last, min and max) separates the stays with a physiology pattern from the
    others (AUROC < 0.95 either way), and every item a pattern reads is charted in stays without it."""
    _, _, table, _ = realistic_vitals
    sm = synthetic_mimic
    patterns = vital_patterns_from_table(table)
    events = table.dropna(subset=["event_type"])
    vitals, outputs = vital_events(events), output_events(events)
    items = {"hypotension": sm.MEAN_PRESSURE, "hypoxaemia": (sm.SPO2,),
             "coma": (sm.GCS_EYE, sm.GCS_MOTOR, sm.GCS_VERBAL), "oliguria": (sm.FOLEY, sm.VOID)}
    failures = []
    for pattern, itemids in items.items():
        has = patterns[pattern]
        for itemid in itemids:
            rows = (outputs if pattern == "oliguria" else vitals)
            rows = rows[rows["itemid"] == itemid]
            if rows.empty:
                continue
            background_with_item = patterns.index[~has].isin(rows["stay_id"]).sum()
            if background_with_item < 5:
                failures.append(f"{itemid}: in {background_with_item} stays without {pattern}")
            for column in ("value", "low", "high") if pattern != "oliguria" else ("value",):
                for name, statistic in per_stay_statistics(rows.assign(value=rows[column]).dropna(subset=["value"]),
                                                           patterns.index).items():
                    auroc = roc_auc_score(has, statistic)
                    if max(auroc, 1 - auroc) >= 0.95:
                        failures.append(f"{itemid} {column} {name} separates {pattern}: AUROC {auroc:.3f}")
    assert not failures, "; ".join(failures)


def test_vitals_are_deterministic_and_opt_in(tmp_path):
    """--vitals writes the two tables (the same for the same seed, however the chunks fall) and the stay of each
    planted row; without it neither table, nor the column, is written."""
    synthetic_mimic.generate(tmp_path / "a", 120, seed=3, vitals=True, chunk_stays=40)
    synthetic_mimic.generate(tmp_path / "b", 120, seed=3, vitals=True)
    for name in ("icu/chartevents.csv.gz", "icu/outputevents.csv.gz", "truth/stays.csv.gz", "icu/d_items.csv.gz"):
        assert gzip.open(tmp_path / "a" / name).read() == gzip.open(tmp_path / "b" / name).read(), name
    planted = [pd.read_csv(tmp_path / run / "truth/planted_rows.csv.gz") for run in ("a", "b")]
    vital_rows = [p[p["source_table"].isin(["chartevents", "outputevents"])].reset_index(drop=True) for p in planted]
    pd.testing.assert_frame_equal(*vital_rows)  # (other rows' ids follow the order in which chunks are written)
    assert header(tmp_path / "a/truth/planted_rows.csv.gz") == ["source_table", "source_id", "factor", "stay_id"]
    d_items = pd.read_csv(tmp_path / "a/icu/d_items.csv.gz")
    assert set(extract_cohort.VITAL_RULES) <= set(d_items["itemid"]) and synthetic_mimic.FOLEY in set(d_items["itemid"])
    synthetic_mimic.generate(tmp_path / "c", 120, seed=3)
    assert not (tmp_path / "c/icu/chartevents.csv.gz").exists() and not (tmp_path / "c/icu/outputevents.csv.gz").exists()
    assert header(tmp_path / "c/truth/planted_rows.csv.gz") == ["source_table", "source_id", "factor"]
    with pytest.raises(ValueError, match="realistic"):
        synthetic_mimic.generate(tmp_path / "d", 10, regime="small", vitals=True)


def test_vocab_vital_items_are_the_querys():
    """synthetic_vocab.json's vital items are extract_cohort.VITAL_RULES' (derive_synthetic_vocab.py lists them
    itself: it imports no project module), and it holds rates and quantiles only."""
    import derive_synthetic_vocab
    raw = synthetic_mimic.load_vocab().raw
    assert set(map(int, raw["vitals"]["items"])) == set(extract_cohort.VITAL_RULES) \
        == set(derive_synthetic_vocab.VITAL_ITEMIDS)
    keys = {k for item in raw["vitals"]["items"].values() for k in item} | {k for i in raw["outputs"]["items"] for k in i}
    assert keys <= {"unit", "rate", "stay_share", "rate_in_stays", "quantiles", "decimals", "texts", "scores",
                    "scores_intubated", "intubated_share", "intubated_valuenum", "itemid"}


def test_one_command_makes_a_vitals_cohort(tmp_path):
    """`synthetic_mimic.py --vitals --extract FILE`: the event table has the vital and output kinds, and its
    planted_risk marks exactly the planted rows, named by stay, table and source_id (chartevents and outputevents
    rows are named by itemid:charttime, which two stays can share)."""
    events = tmp_path / "events.parquet"
    synthetic_mimic.main(["--out-dir", str(tmp_path / "mimic"), "--n-stays", "150", "--seed", "5", "--vitals",
                          "--extract", str(events)])
    table = pd.read_parquet(events)
    assert {"vital", "output"} <= set(table["event_type"].dropna())
    planted = pd.read_csv(tmp_path / "mimic" / "truth" / "planted_rows.csv.gz", dtype={"source_id": str})
    keys = planted[["stay_id", "source_table", "source_id"]].drop_duplicates().assign(expected=1)
    marked = table.merge(keys, on=["stay_id", "source_table", "source_id"], how="left")["expected"].fillna(0)
    marked = marked.where(table["event_type"].notna(), 0)
    assert (table["planted_risk"].to_numpy() == marked.to_numpy()).all()
    assert set(planted.loc[planted["source_table"].isin(["chartevents", "outputevents"]), "factor"]) <= \
        set(synthetic_mimic.VITAL_PATTERNS)
    assert table.loc[table["event_type"].isin(["vital", "output"]), "planted_risk"].sum() > 0
    truth = pd.read_csv(tmp_path / "mimic" / "truth" / "stays.csv.gz")
    assert {f"factor_{name}" for name in synthetic_mimic.VITAL_PATTERNS} <= set(truth.columns)
