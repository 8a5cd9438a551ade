"""synthetic_mimic.py: MIMIC-IV-shaped, deterministic, with a planted truth that survives extraction;
and the shipped sample_train.csv it makes."""
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
CONTRACT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "event_time", "event_type", "event_text",
                    "relative_time_to_final_event", "gender", "race", "marital_status", "admission_type",
                    "admission_location", "insurance", "first_careunit", "patient_age", "mortality"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """600 synthetic stays and their extracted event table (through the real query)."""
    root = tmp_path_factory.mktemp("synthetic")
    stats = synthetic_mimic.generate(root / "mimic", 600, seed=7)
    events = root / "events.parquet"
    counts = extract_cohort.extract_cohort(events, root / "mimic", progress=False)
    return root / "mimic", stats, pd.read_parquet(events), counts


def header(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.readline().strip().replace('"', "").split(",")


def test_tables_have_the_demo_files_and_columns(synthetic, mimic_demo_dir):
    mimic, _, _, _ = synthetic
    con = duckdb.connect()
    for table, needed in extract_cohort.MIMIC_TABLES.items():
        ours, demo = mimic / f"{table}.csv.gz", Path(mimic_demo_dir) / f"{table}.csv.gz"
        assert header(ours) == header(demo), table
        # the columns the query reads are sniffed as the same types as the demo's
        ours_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv('{ours}')").fetchall()}
        demo_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv('{demo}')").fetchall()}
        for column in needed:
            if demo_types[column] != "VARCHAR" or ours_types[column] != "VARCHAR":
                assert ours_types[column] == demo_types[column], f"{table}.{column}"


def test_generation_is_deterministic(tmp_path):
    synthetic_mimic.generate(tmp_path / "a", 150, seed=3)
    synthetic_mimic.generate(tmp_path / "b", 150, seed=3)
    synthetic_mimic.generate(tmp_path / "c", 150, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.csv.gz"))
    assert len(files) == 12  # 10 tables + 2 truth files
    same = [gzip.open(tmp_path / "a" / f).read() == gzip.open(tmp_path / "b" / f).read() for f in files]
    assert all(same)
    assert gzip.open(tmp_path / "a" / "icu/icustays.csv.gz").read() != gzip.open(tmp_path / "c" / "icu/icustays.csv.gz").read()


def test_planted_rows_survive_extraction(synthetic):
    mimic, stats, table, counts = synthetic
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    planted = pd.read_csv(mimic / "truth" / "planted_rows.csv.gz", dtype=str)
    assert len(planted) == stats["planted_rows"] > 0
    assert set(planted["factor"]) == set(synthetic_mimic.RISK_FACTORS)
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
    # planted rows lie in the 48 h window: every cohort stay with a risk factor shows it, no other does
    extracted_planted = events[[k in planted_keys for k in zip(events["source_table"], events["source_id"])]]
    assert set(extracted_planted["stay_id"]) == set(cohort_truth.index[with_factor])
    # labels in the extracted table are the generator's
    labels = table.drop_duplicates("stay_id").set_index("stay_id")["mortality"]
    assert (labels == truth.loc[labels.index, "died"]).all()


def test_quiet_stays_are_one_empty_row(synthetic):
    _, _, table, counts = synthetic
    assert counts["stays_without_events"] >= 1
    empty = table[table["event_type"].isna()]
    assert table.groupby("stay_id").size()[empty["stay_id"]].eq(1).all()


def test_planted_risk_carries_the_signal(synthetic):
    mimic, _, table, _ = synthetic
    truth = pd.read_csv(mimic / "truth" / "stays.csv.gz").set_index("stay_id")
    stays = table.drop_duplicates("stay_id").set_index("stay_id")
    p = truth.loc[stays.index, "true_probability"]
    assert roc_auc_score(stays["mortality"], p) > 0.75
    # the planted texts alone (no age) already separate the classes
    planted_texts = ("Lab: Lactate", "Norepinephrine", "Vasopressin", "Invasive Ventilation", "BLOOD CULTURE - ")
    events = table.dropna(subset=["event_type"])
    high_lactate = events["event_text"].str.extract(r"^Lab: Lactate ([\d.]+)")[0].astype(float) > 4
    flagged = events[high_lactate | events["event_text"].str.contains("|".join(planted_texts[1:]), regex=True)]
    score = stays.index.isin(flagged["stay_id"]).astype(float)
    assert roc_auc_score(stays["mortality"], score) > 0.65


def test_texts_repeat_like_mimic(synthetic):
    _, _, table, _ = synthetic
    texts = table["event_text"].dropna()
    counts = texts.value_counts()
    assert texts.nunique() < 0.2 * len(texts)  # heavy repetition ...
    assert counts.iloc[0] > 20 * counts.median()  # ... with a long tail (Zipf-like)


def test_sample_file_matches_contract_and_truth():
    path = REPO_ROOT / "sample_train.csv"
    assert path.stat().st_size <= 10_000_000
    table = pd.read_csv(path)
    assert list(table.columns[:len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
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
