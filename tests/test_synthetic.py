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
