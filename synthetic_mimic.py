"""
Synthetic MIMIC-IV: tables with the demo's file names, columns and types, for any number of ICU stays,
with planted, clinically plausible mortality risk whose truth is written beside them.

    python synthetic_mimic.py --out-dir /tmp/synth --n-stays 6000 --extract /tmp/synth/events.parquet
    python synthetic_mimic.py --out-dir /tmp/synth --n-stays 20000 --regime small   # the light regime
    python synthetic_mimic.py --make-sample                                        # remakes sample_train.csv

Two regimes:
- realistic (default): the extracted cohort looks like the demo's (tests/test_synthetic.py checks events per
  stay, the share of each event kind and distinct texts per event against the demo): ~340 events per stay
  in the 48 h window, drawn from synthetic_vocab.json (aggregates of the demo: lab panels with value
  quantiles, drug orders, infusions in inputevents with their ingredient rows, procedures, microbiology
  rows with results in `comments`), with charting delays (storetime hours after the start, some after the
  prediction time), lab and microbiology rows without hadm_id, and vasopressors as infusions. Rows are
  written in chunks of stays, so memory stays bounded.
- small: ~46 events per stay from small embedded dictionaries (real MIMIC-IV item ids and labels), no
  inputevents rows, vasopressors as prescriptions; sample_train.csv is made in this regime.

In both, a latent severity makes some of five planted risk factors more likely, all placed inside the
default 48-hour observation window [intime, intime + 48 h) and known at its end:
    lactate    Lab: Lactate > 4 mmol/L, abnormal
    pressor    small: Prescription: Norepinephrine / Vasopressin IV DRIP;
               realistic: a titrated Norepinephrine / Phenylephrine / Vasopressin / Epinephrine infusion
    ventilated Procedure: Intubation, Invasive Ventilation
    bacteremia Microbiology: BLOOD CULTURE positive (S. aureus, E. coli, K. pneumoniae) with susceptibilities
    renal      Lab: Creatinine > 3 mg/dL, abnormal, and often Procedure: Dialysis - CRRT
The true probability of in-hospital death is logistic in these factors and age, and the label is
drawn from it, so the AUROC of the true probability against the labels is the ceiling any model can
reach. truth/stays.csv.gz holds each stay's true probability and factors; truth/planted_rows.csv.gz
names every source row that carries planted risk by (source_table, source_id) exactly as query.sql
reports them, so extracted events can be joined to the truth. Nothing of MIMIC is read at run time.

Everything is vectorised with numpy and written with pyarrow.
"""
import argparse
import gzip
import json
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

import atomic_io

REPO_ROOT = Path(__file__).resolve().parent
SAMPLE_PATH = REPO_ROOT / "sample_train.csv"
# The shipped sample: remade exactly by `python synthetic_mimic.py --make-sample`.
SAMPLE_STAYS, SAMPLE_SEED = 1400, 2024
SAMPLE_DROP_COLUMNS = ("prediction_time", "source_table", "source_id")  # keeps the file under 10 MB
VOCAB_PATH = REPO_ROOT / "synthetic_vocab.json"  # the realistic regime's dictionaries (derive_synthetic_vocab.py)
REGIMES = ("realistic", "small")
SMALL_EVENTS_PER_STAY = 62.0

# ----------------------------------------------------------------------------- the truth model
# log-odds of in-hospital death = INTERCEPT + sum(coef * factor) + AGE_PER_YEAR * (age - 65)
INTERCEPT = -4.0
AGE_PER_YEAR = 0.035
# factor: (prevalence log-odds at severity 0, severity slope, log-odds ratio for death)
RISK_FACTORS = {
    "lactate": (-1.6, 1.0, 2.0),
    "pressor": (-1.8, 1.0, 1.8),
    "ventilated": (-1.2, 0.9, 1.5),
    "bacteremia": (-2.4, 0.8, 1.8),
    "renal": (-2.0, 0.8, 1.4),
}
OBSERVATION_HOURS = 48.0

# ----------------------------------------------------------------------------- embedded dictionaries
# A numeric lab item: its reference range, the background values' normal distribution (clipped to [low, high],
# rounded to `decimals`) and `weight`, its relative frequency (Zipf-like draw).
LabItem = namedtuple("LabItem", "itemid label fluid category unit ref_lower ref_upper mean sd decimals weight low high")
# A lab item whose results are words.
TextLabItem = namedtuple("TextLabItem", "itemid label fluid category values weight")
LAB_ITEMS = [LabItem(*row) for row in [
    (50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1, 4.1, 0.5, 1, 10, 2.5, 6.5),
    (50983, "Sodium", "Blood", "Chemistry", "mEq/L", 135, 147, 139, 4, 0, 10, 120, 160),
    (50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2, 1.0, 0.4, 1, 10, 0.3, 2.5),
    (50902, "Chloride", "Blood", "Chemistry", "mEq/L", 96, 108, 103, 5, 0, 9, 85, 120),
    (51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 6, 20, 20, 10, 0, 9, 3, 80),
    (51221, "Hematocrit", "Blood", "Hematology", "%", 40, 51, 31, 5, 1, 9, 18, 50),
    (50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L", 22, 32, 24, 3, 0, 9, 12, 36),
    (50868, "Anion Gap", "Blood", "Chemistry", "mEq/L", 10, 18, 14, 3, 0, 9, 6, 26),
    (51265, "Platelet Count", "Blood", "Hematology", "K/uL", 150, 400, 210, 80, 0, 8, 20, 600),
    (51222, "Hemoglobin", "Blood", "Hematology", "g/dL", 13.7, 17.5, 10.2, 1.8, 1, 8, 6, 16),
    (51301, "White Blood Cells", "Blood", "Hematology", "K/uL", 4, 10, 10, 4, 1, 8, 1, 30),
    (50931, "Glucose", "Blood", "Chemistry", "mg/dL", 70, 100, 130, 35, 0, 8, 50, 350),
    (50960, "Magnesium", "Blood", "Chemistry", "mg/dL", 1.6, 2.6, 2.0, 0.3, 1, 7, 1.1, 3.2),
    (50893, "Calcium, Total", "Blood", "Chemistry", "mg/dL", 8.4, 10.3, 8.6, 0.6, 1, 6, 6.5, 11),
    (50970, "Phosphate", "Blood", "Chemistry", "mg/dL", 2.7, 4.5, 3.5, 1.0, 1, 6, 1.0, 7.5),
    (51275, "PTT", "Blood", "Hematology", "sec", 25, 36.5, 33, 8, 1, 4, 22, 90),
    (51237, "INR(PT)", "Blood", "Hematology", None, 0.9, 1.1, 1.3, 0.3, 1, 4, 0.9, 3.5),
    (51274, "PT", "Blood", "Hematology", "sec", 9.4, 12.5, 14, 3, 1, 4, 10, 35),
    (50820, "pH", "Blood", "Blood Gas", "units", 7.35, 7.45, 7.38, 0.06, 2, 3, 7.1, 7.6),
    (50818, "pCO2", "Blood", "Blood Gas", "mm Hg", 35, 45, 41, 8, 0, 3, 22, 80),
    (50821, "pO2", "Blood", "Blood Gas", "mm Hg", 85, 105, 110, 40, 0, 3, 40, 400),
    (50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0, 1.4, 0.4, 1, 3, 0.5, 2.4),
    (50885, "Bilirubin, Total", "Blood", "Chemistry", "mg/dL", 0, 1.5, 0.8, 0.5, 1, 2, 0.1, 4),
    (50861, "Alanine Aminotransferase (ALT)", "Blood", "Chemistry", "IU/L", 0, 40, 30, 20, 0, 2, 5, 200),
    (50878, "Asparate Aminotransferase (AST)", "Blood", "Chemistry", "IU/L", 0, 40, 35, 25, 0, 2, 8, 250),
    (51491, "pH", "Urine", "Hematology", "units", 5, 8, 6, 0.7, 1, 1, 5, 8),
    (51498, "Specific Gravity", "Urine", "Hematology", None, 1.001, 1.035, 1.015, 0.007, 3, 1, 1.002, 1.04),
]]
LAB_TEXT_ITEM = TextLabItem(51463, "Bacteria", "Urine", "Hematology", ("NONE", "FEW", "MOD", "MANY"), 1)
LACTATE, CREATININE = 50813, 50912

# (drug, dose values, unit, route, weight); a dose value with a dash is a range, as in MIMIC
PRESCRIPTIONS = [
    ("Insulin", ("0", "2", "4", "6", "8", "10"), "UNIT", "SC", 12),
    ("Sodium Chloride 0.9%  Flush", ("3", "10"), "mL", "IV", 9),
    ("0.9% Sodium Chloride", ("250", "500", "1000"), "mL", "IV", 7),
    ("Magnesium Sulfate", ("1", "2", "4"), "gm", "IV", 6),
    ("Furosemide", ("20", "40", "80"), "mg", "IV", 6),
    ("5% Dextrose", ("50", "100", "250"), "mL", "IV", 5),
    ("Potassium Chloride", ("20", "40"), "mEq", "PO", 5),
    ("Calcium Gluconate", ("1", "2"), "g", "IV", 4),
    ("Vancomycin", ("750", "1000", "1250", "1500"), "mg", "IV", 4),
    ("Acetaminophen", ("325", "650", "1000"), "mg", "PO/NG", 4),
    ("Heparin", ("5000",), "UNIT", "SC", 3),
    ("Metoprolol Tartrate", ("12.5", "25", "50"), "mg", "PO/NG", 3),
    ("Lactated Ringers", ("500", "1000"), "mL", "IV", 3),
    ("HYDROmorphone (Dilaudid)", ("0.25", "0.5", "1"), "mg", "IV", 3),
    ("Docusate Sodium", ("100",), "mg", "PO/NG", 3),
    ("Ondansetron", ("4",), "mg", "IV", 2),
    ("Senna", ("8.6", "17.2"), "mg", "PO/NG", 2),
    ("Pantoprazole", ("40",), "mg", "IV", 2),
    ("CefePIME", ("1", "2"), "g", "IV", 2),
    ("Piperacillin-Tazobactam", ("2.25", "4.5"), "g", "IV", 2),
    ("Propofol", ("100", "1000"), "mg", "IV DRIP", 2),
    ("Fentanyl Citrate", ("25", "50", "100"), "mcg", "IV", 2),
    ("Lorazepam", ("0.5", "1"), "mg", "IV", 1),
    ("Aspirin", ("81", "325"), "mg", "PO/NG", 1),
    ("Atorvastatin", ("10", "40", "80"), "mg", "PO/NG", 1),
    ("Heparin Flush (1000 units/mL)", ("2000-8000",), "UNIT", "DWELL", 1),
    ("Bag", ("1",), "BAG", None, 1),
]
PRESSORS = [("Norepinephrine", ("4", "8", "16"), "mg", "IV DRIP"), ("Vasopressin", ("20", "40"), "UNIT", "IV DRIP")]

# d_items rows: (itemid, label, abbreviation, linksto, category, unitname, param_type)
PROCEDURE_ITEMS = [  # background procedures, with weights
    ((224275, "20 Gauge", "20 Gauge", "procedureevents", "Access Lines - Peripheral", "None", "Processes"), 10),
    ((225459, "Chest X-Ray", "Chest X-Ray", "procedureevents", "5-Imaging", "None", "Processes"), 10),
    ((224277, "18 Gauge", "18 Gauge", "procedureevents", "Access Lines - Peripheral", "None", "Processes"), 6),
    ((225752, "Arterial Line", "Arterial Line", "procedureevents", "Access Lines - Invasive", "None", "Processes"), 5),
    ((225402, "EKG", "EKG", "procedureevents", "4-Procedures", "None", "Processes"), 4),
    ((221214, "CT scan", "CT scan", "procedureevents", "5-Imaging", "None", "Processes"), 3),
    ((224263, "Multi Lumen", "Multi Lumen", "procedureevents", "Access Lines - Invasive", "None", "Processes"), 3),
    ((228129, "Family updated by RN", "Family updated by RN", "procedureevents", "7-Communication", "None", "Processes"), 3),
    ((225401, "Blood Cultured", "Blood Cultured", "procedureevents", "6-Cultures", "None", "Processes"), 2),
    ((224264, "PICC Line", "PICC Line", "procedureevents", "Access Lines - Invasive", "None", "Processes"), 2),
    ((229351, "Foley Catheter", "Foley Catheter", "procedureevents", "GI/GU", "None", "Processes"), 2),
    ((225454, "Urine Culture", "Urine Culture", "procedureevents", "6-Cultures", "None", "Processes"), 2),
    ((225432, "Transthoracic Echo", "Transthoracic Echo", "procedureevents", "5-Imaging", "None", "Processes"), 1),
    ((221217, "Ultrasound", "Ultrasound", "procedureevents", "5-Imaging", "None", "Processes"), 1),
]
INTUBATION, VENTILATION, CRRT = 224385, 225792, 225802
PLANTED_PROCEDURE_ITEMS = [
    (INTUBATION, "Intubation", "Intubation", "procedureevents", "1-Intubation/Extubation", "None", "Processes"),
    (VENTILATION, "Invasive Ventilation", "Invasive Ventilation", "procedureevents", "2-Ventilation", "None", "Processes"),
    (CRRT, "Dialysis - CRRT", "Dialysis - CRRT", "procedureevents", "Dialysis", "None", "Processes"),
]
# (d_items row, amountuom, weight, fixed amounts, continuous rate mL/h or 0)
INGREDIENT_ITEMS = [
    ((220490, "Water", "H2O", "ingredientevents", "Ingredients", "mL", "Ingredient"), "ml", 10, (50, 100, 250), 60),
    ((227074, "IVF ingredient", "IVF ingredient", "ingredientevents", "Ingredients", "mL", "Ingredient"), "ml", 8, (100, 250, 500, 1000), 75),
    ((226060, "Calories", "Calories", "ingredientevents", "Ingredients", "Kcal", "Ingredient"), "Kcal", 4, (17, 50), 20),
    ((227075, "Oral/Gastric Ingredient", "Oral/Gastric Ingredient", "ingredientevents", "Ingredients", "mL", "Ingredient"), "ml", 3, (30, 60, 120), 0),
    ((220454, "Protein", "Protein", "ingredientevents", "Ingredients", "grams", "Ingredient"), "grams", 1, (5, 11), 3),
    ((226221, "Enteral Nutrition Ingredient", "Enteral Nutrition Ingredient", "ingredientevents", "Ingredients", "mL", "Ingredient"), "ml", 1, (), 40),
    ((226509, "Blood Ingredient", "Blood Ingredient", "ingredientevents", "Ingredients", "mL", "Ingredient"), "ml", 1, (250, 300, 350), 0),
]
# microbiology background specimens; organism: (org_itemid, org_name) or None for a negative culture
MicroSpecimen = namedtuple("MicroSpecimen", "spec_itemid spec_type_desc test_itemid test_name organism weight")
MICRO_BACKGROUND = [
    MicroSpecimen(70012, "BLOOD CULTURE", 90201, "Blood Culture, Routine", None, 6),
    MicroSpecimen(70079, "URINE", 90039, "URINE CULTURE", None, 3),
    MicroSpecimen(70091, "MRSA SCREEN", 90083, "MRSA SCREEN", None, 2),
    MicroSpecimen(70079, "URINE", 90039, "URINE CULTURE", (80002, "ESCHERICHIA COLI"), 1),
    MicroSpecimen(70062, "SPUTUM", 90042, "GRAM STAIN", None, 1),
]
BACTEREMIA_ORGANISMS = [(80023, "STAPH AUREUS COAG +"), (80002, "ESCHERICHIA COLI"), (80004, "KLEBSIELLA PNEUMONIAE")]
ANTIBIOTICS = [(90016, "OXACILLIN"), (90015, "VANCOMYCIN"), (90004, "CEFTRIAXONE"), (90025, "GENTAMICIN"),
               (90012, "MEROPENEM"), (90026, "TRIMETHOPRIM/SULFA")]

STATIC_CHOICES = {
    "gender": (("M", "F"), (0.56, 0.44)),
    "race": (("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER",
              "UNKNOWN", "WHITE - OTHER EUROPEAN"), (0.62, 0.11, 0.04, 0.04, 0.06, 0.09, 0.04)),
    "marital_status": (("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None), (0.42, 0.3, 0.12, 0.08, 0.08)),
    "admission_type": (("EW EMER.", "URGENT", "OBSERVATION ADMIT", "SURGICAL SAME DAY ADMISSION",
                        "ELECTIVE", "DIRECT EMER."), (0.45, 0.18, 0.12, 0.12, 0.08, 0.05)),
    "admission_location": (("EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL",
                            "CLINIC REFERRAL", "PROCEDURE SITE"), (0.55, 0.2, 0.15, 0.05, 0.05)),
    "insurance": (("Medicare", "Other", "Medicaid"), (0.45, 0.4, 0.15)),
    "first_careunit": (("Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
                        "Cardiac Vascular Intensive Care Unit (CVICU)", "Coronary Care Unit (CCU)",
                        "Trauma SICU (TSICU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)",
                        "Medical/Surgical Intensive Care Unit (MICU/SICU)"),
                       (0.25, 0.15, 0.17, 0.12, 0.11, 0.05, 0.15)),
}

# The demo's columns, in order, per table.
COLUMNS = {
    "hosp/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
                       "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
                       "edouttime,hospital_expire_flag",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "hosp/prescriptions": "subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,starttime,stoptime,"
                          "drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,"
                          "dose_unit_rx,form_val_disp,form_unit_disp,doses_per_24_hrs,route",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,"
                      "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "hosp/microbiologyevents": "microevent_id,subject_id,hadm_id,micro_specimen_id,order_provider_id,chartdate,"
                               "charttime,spec_itemid,spec_type_desc,test_seq,storedate,storetime,test_itemid,"
                               "test_name,org_itemid,org_name,isolate_num,quantity,ab_itemid,ab_name,dilution_text,"
                               "dilution_comparison,dilution_value,interpretation,comments",
    "icu/procedureevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,"
                           "valueuom,location,locationcategory,orderid,linkorderid,ordercategoryname,"
                           "ordercategorydescription,patientweight,isopenbag,continueinnextdept,statusdescription,"
                           "ORIGINALAMOUNT,ORIGINALRATE",
    "icu/ingredientevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,"
                            "amountuom,rate,rateuom,orderid,linkorderid,statusdescription,originalamount,originalrate",
    "icu/inputevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,amountuom,"
                       "rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,"
                       "ordercomponenttypedescription,ordercategorydescription,patientweight,totalamount,"
                       "totalamountuom,isopenbag,continueinnextdept,statusdescription,originalamount,originalrate",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,highnormalvalue",
}

HOUR = 3600
EPOCH_2100 = 4102444800  # 2100-01-01 in Unix seconds: MIMIC's shifted dates lie in 2100-2210


def zipf_weights(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def pick(rng, n, choices, p=None) -> np.ndarray:
    """n indices into choices (a weighted categorical draw)."""
    return rng.choice(len(choices), size=n, p=p)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class TableWriter:
    """Collects column dicts per table and appends them, at each flush(), to out_dir/<table>.csv.gz in the
    demo's column order (one gzip stream per table, header once); close() finishes every file."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.parts = {name: [] for name in COLUMNS}
        self.sinks = {}

    def add(self, table, n, **columns):
        if n:
            self.parts[table].append((n, columns))

    def flush(self):
        for table, parts in self.parts.items():
            if not parts:
                continue
            names = COLUMNS[table].split(",")
            chunks = [pa.table({name: to_arrow(columns.get(name), n) for name in names}) for n, columns in parts]
            data = pa.concat_tables(chunks, promote_options="permissive")
            first = table not in self.sinks
            if first:
                path = self.out_dir / f"{table}.csv.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.sinks[table] = gzip.GzipFile(path, "wb", compresslevel=1, mtime=0)
            pacsv.write_csv(data, self.sinks[table], pacsv.WriteOptions(quoting_style="needed", include_header=first))
            parts.clear()

    def close(self):
        self.flush()
        for table in self.parts:
            if table not in self.sinks:  # a table with no rows: the header alone
                names = COLUMNS[table].split(",")
                path = self.out_dir / f"{table}.csv.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_csv_gz(pa.table({name: pa.nulls(0, pa.string()) for name in names}), path)
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()


def write_csv_gz(table: pa.Table, path: Path) -> None:
    """csv.gz at zlib level 1 (fast; gzip level 9 would dominate the run time), with a fixed mtime so the
    bytes depend on the seed only."""
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as sink:
        pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="needed"))


def to_arrow(value, n) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    if isinstance(value, pa.Array):
        return value
    if np.isscalar(value):
        return pa.array(np.full(n, value)) if not isinstance(value, str) else pa.array([value] * n)
    value = np.asarray(value)
    if value.dtype.kind == "M":
        return pa.array(value.astype("datetime64[s]"))
    return pa.array(value)


def strings(vocab, index, mask=None) -> pa.Array:
    """vocab[index] as an arrow string array (dictionary-decoded: fast for millions of rows); None -> null."""
    vocab = list(vocab)
    arr = pa.DictionaryArray.from_arrays(pa.array(np.asarray(index, dtype=np.int32), mask=mask),
                                         pa.array(vocab, pa.string()))
    return arr.dictionary_decode()


def stamp(seconds) -> np.ndarray:
    return np.asarray(seconds, dtype="int64").astype("datetime64[s]")


def events_per_stay(rng, counts, start_h, end_h):
    """Stay index and uniform time offsets (hours from intime) of counts[i] events in [start_h, end_h)."""
    idx = np.repeat(np.arange(len(counts)), counts)
    offset = start_h[idx] + rng.random(len(idx)) * np.maximum(end_h[idx] - start_h[idx], 0)
    return idx, offset


def generate(out_dir, n_stays: int, seed: int = 0, events_per_stay_mean: float | None = None,
             regime: str = "realistic", chunk_stays: int = 2000) -> dict:
    """Write synthetic MIMIC-IV tables (hosp/, icu/) and the truth (truth/) under out_dir.

    regime "realistic" (default) draws from synthetic_vocab.json and writes events chunk by chunk
    (chunk_stays stays at a time, so memory stays bounded); "small" is the light regime of
    sample_train.csv (~46 events per stay, embedded dictionaries)."""
    if n_stays < 1:
        raise ValueError(f"--n-stays must be >= 1, got {n_stays}")
    if regime not in REGIMES:
        raise ValueError(f"--regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    w = TableWriter(out_dir)
    s = draw_stays(rng, n_stays, w)
    planted = []  # (source_table, source_id array, factor)
    next_ids = IdCounter()
    if regime == "small":
        small_events(w, rng, s, next_ids, planted, events_per_stay_mean or SMALL_EVENTS_PER_STAY)
        small_dictionaries(w)
    else:
        vocab = load_vocab()
        scale = (events_per_stay_mean or REALISTIC_EVENTS_PER_STAY) / REALISTIC_EVENTS_PER_STAY
        for start in range(0, s.n_stays, chunk_stays):
            chunk = np.arange(start, min(start + chunk_stays, s.n_stays))
            realistic_events(w, rng, s, chunk, next_ids, vocab, scale)
            w.flush()
        realistic_planted(w, rng, s, next_ids, planted, vocab)
        realistic_dictionaries(w, vocab)
    w.close()
    return write_truth(out_dir, s, planted)


def draw_stays(rng, n_stays: int, w) -> SimpleNamespace:
    """Patients, admissions and ICU stays with their latent severity, planted factors and label."""

    # --- patients, admissions, ICU stays (one admission per stay; ~1/6 of patients have several)
    n_patients = max(1, int(round(n_stays / 1.2)))
    patient_of_stay = np.concatenate([np.arange(min(n_patients, n_stays)),
                                      rng.integers(0, n_patients, max(0, n_stays - n_patients))])
    rng.shuffle(patient_of_stay)
    subject_id = 10_000_000 + np.arange(n_patients) * 7 + rng.integers(0, 7, n_patients)
    anchor_year = rng.integers(2110, 2200, n_patients)
    anchor_age = np.clip(rng.normal(64, 16, n_patients), 18, 91).astype(int)
    minors = rng.random(n_patients) < 0.02  # a few under-18s, to be excluded by the cohort
    anchor_age[minors] = rng.integers(15, 18, minors.sum())
    gender = pick(rng, n_patients, *STATIC_CHOICES["gender"])

    # admissions within three years of the anchor year; age as mimic-code computes it
    admittime = (EPOCH_2100 + ((anchor_year[patient_of_stay] - 2100) + rng.random(n_stays) * 3)
                 * 365.2425 * 86400).astype(np.int64)
    admittime -= admittime % 60
    admit_year = stamp(admittime).astype("datetime64[Y]").astype(int) + 1970
    age = anchor_age[patient_of_stay] + (admit_year - anchor_year[patient_of_stay])

    # --- planted risk and the label, drawn from the true probability
    severity = rng.normal(0, 1, n_stays)
    factors = {name: rng.random(n_stays) < sigmoid(a + b * severity) for name, (a, b, _) in RISK_FACTORS.items()}
    # ~1% of stays have nothing charted in the window: the cohort must keep them as one empty row
    quiet = rng.random(n_stays) < 0.01
    for present in factors.values():
        present &= ~quiet
    logit = INTERCEPT + AGE_PER_YEAR * (age - 65) + sum(RISK_FACTORS[f][2] * factors[f] for f in factors)
    true_probability = sigmoid(logit)
    died = rng.random(n_stays) < true_probability
    # Nobody is admitted after dying: drop the admissions that follow a patient's first death. Whether
    # a stay is kept depends on other stays' outcomes only, so every kept label stays Bernoulli(p).
    first_death = np.full(n_patients, np.iinfo(np.int64).max)
    np.minimum.at(first_death, patient_of_stay[died], admittime[died])
    keep = admittime <= first_death[patient_of_stay]
    patient_of_stay, admittime, age, severity, true_probability, died, quiet = (
        a[keep] for a in (patient_of_stay, admittime, age, severity, true_probability, died, quiet))
    factors = {name: present[keep] for name, present in factors.items()}
    n_stays = int(keep.sum())

    stay_subject = subject_id[patient_of_stay]
    intime = admittime + (rng.random(n_stays) * 30 * HOUR).astype(np.int64)
    los_h = np.exp(rng.normal(np.log(80), 0.7, n_stays)).clip(4, 40 * 24)  # ~75% stay past 48 h
    stay_id = 30_000_000 + np.arange(n_stays) * 13 + rng.integers(0, 13, n_stays)
    hadm_id = 20_000_000 + np.arange(n_stays) * 11 + rng.integers(0, 11, n_stays)
    outtime = intime + (los_h * HOUR).astype(np.int64)
    # deaths: most in the ICU at outtime, some later on the ward; survivors leave hospital days later
    in_icu_death = rng.random(n_stays) < 0.7
    deathtime = np.where(in_icu_death, outtime, outtime + (rng.random(n_stays) * 6 * 24 * HOUR).astype(np.int64))
    dischtime = np.where(died, deathtime, outtime + (rng.random(n_stays) * 8 * 24 * HOUR).astype(np.int64) + HOUR)
    dod_by_patient = np.full(n_patients, np.iinfo(np.int64).min)
    np.maximum.at(dod_by_patient, patient_of_stay[died], deathtime[died])

    w.add("hosp/patients", n_patients, subject_id=subject_id, gender=strings(STATIC_CHOICES["gender"][0], gender),
          anchor_age=anchor_age, anchor_year=anchor_year,
          anchor_year_group=strings(("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"),
                                    rng.integers(0, 4, n_patients)),
          dod=pa.array(stamp(dod_by_patient).astype("datetime64[D]"), mask=dod_by_patient == np.iinfo(np.int64).min))
    static = {k: pick(rng, n_stays, v[0], v[1]) for k, v in STATIC_CHOICES.items() if k != "gender"}
    edreg = admittime - (rng.random(n_stays) * 6 * HOUR).astype(np.int64)
    w.add("hosp/admissions", n_stays, subject_id=stay_subject, hadm_id=hadm_id, admittime=stamp(admittime),
          dischtime=stamp(dischtime), deathtime=pa.array(stamp(deathtime), mask=~died),
          admission_type=strings(STATIC_CHOICES["admission_type"][0], static["admission_type"]),
          admit_provider_id=strings(("P03YMR", "P41R5N", "P2D4KL"), rng.integers(0, 3, n_stays)),
          admission_location=strings(STATIC_CHOICES["admission_location"][0], static["admission_location"]),
          discharge_location=strings(("DIED", "HOME", "SKILLED NURSING FACILITY", "HOME HEALTH CARE"),
                                     np.where(died, 0, rng.integers(1, 4, n_stays))),
          insurance=strings(STATIC_CHOICES["insurance"][0], static["insurance"]),
          language=strings(("ENGLISH", "?"), (rng.random(n_stays) < 0.1).astype(int)),
          marital_status=strings(STATIC_CHOICES["marital_status"][0], static["marital_status"],
                                 mask=static["marital_status"] == len(STATIC_CHOICES["marital_status"][0]) - 1),
          race=strings(STATIC_CHOICES["race"][0], static["race"]),
          edregtime=stamp(edreg), edouttime=stamp(admittime), hospital_expire_flag=died.astype(np.int64))
    careunit = strings(STATIC_CHOICES["first_careunit"][0], static["first_careunit"])
    w.add("icu/icustays", n_stays, subject_id=stay_subject, hadm_id=hadm_id, stay_id=stay_id,
          first_careunit=careunit, last_careunit=careunit, intime=stamp(intime), outtime=stamp(outtime),
          los=(outtime - intime) / 86400.0)

    return SimpleNamespace(n_stays=n_stays, n_patients=n_patients, stay_subject=stay_subject, hadm_id=hadm_id,
                           stay_id=stay_id, intime=intime, los_h=los_h, age=age, quiet=quiet, factors=factors,
                           true_probability=true_probability, died=died)


class IdCounter:
    """Consecutive row ids per kind (lab, micro, pharmacy, order), continued across chunks."""

    def __init__(self):
        self.next = {"lab": 1, "micro": 1, "pharmacy": 1, "order": 1, "specimen": 1}

    def __call__(self, kind, n):
        start = self.next[kind]
        self.next[kind] += n
        return np.arange(start, start + n, dtype=np.int64)


def small_events(w, rng, s, next_ids, planted, events_per_stay_mean):
    """The small regime's events (sample_train.csv): its random draws are those of the first version,
    so --make-sample remakes the shipped file exactly."""
    n_stays, los_h, quiet, factors = s.n_stays, s.los_h, s.quiet, s.factors
    stay_subject, hadm_id, stay_id, intime = s.stay_subject, s.hadm_id, s.stay_id, s.intime

    # Background events: uniform over [-12 h, min(los, 60 h)) for hospital tables (the look-back sees
    # the part before intime) and over [0, min(los, 60 h)) for ICU tables; about 2/3 fall in the window.
    n_total = rng.poisson(rng.gamma(4.0, events_per_stay_mean / 4.0, n_stays))
    n_total[quiet] = 0
    share = rng.dirichlet((50, 22, 15, 9, 4), n_stays)  # lab, ingredient, prescription, procedure, micro
    counts = rng.multinomial(n_total, share).T
    end_h = np.minimum(los_h, 60.0)
    hosp_start, icu_start = np.full(n_stays, -12.0), np.zeros(n_stays)

    # --- labs (background)
    idx, off = events_per_stay(rng, counts[0], hosp_start, end_h - 2)
    lab_table = list(LAB_ITEMS) + [None]
    item = pick(rng, len(idx), lab_table, zipf_weights([r.weight for r in LAB_ITEMS] + [LAB_TEXT_ITEM.weight]))
    numeric = item < len(LAB_ITEMS)
    it = np.where(numeric, item, 0)
    mean, sd, low, high, decimals = (np.array([getattr(r, name) for r in LAB_ITEMS], dtype=float)[it]
                                     for name in ("mean", "sd", "low", "high", "decimals"))
    value = np.clip(rng.normal(mean, sd), low, high)
    value = np.round(value * 10 ** decimals) / 10 ** decimals
    add_labs(w, rng, next_ids, stay_subject, hadm_id, idx, off, intime, item, value, numeric)

    # --- labs (planted): lactate > 4 and creatinine > 3, 1-3 results each, all stored inside the window
    for factor, itemid, low, high in (("lactate", LACTATE, 4.1, 9.5), ("renal", CREATININE, 3.0, 7.5)):
        stays = np.flatnonzero(factors[factor])
        k = rng.integers(1, 4, len(stays))
        idx = np.repeat(stays, k)
        off = rng.random(len(idx)) * (OBSERVATION_HOURS - 4)
        item = np.full(len(idx), [r.itemid for r in LAB_ITEMS].index(itemid))
        value = np.round(rng.uniform(low, high, len(idx)), 1)
        lab_ids = add_labs(w, rng, next_ids, stay_subject, hadm_id, idx, off, intime, item, value,
                           np.ones(len(idx), bool), store_always=True)
        planted.append(("labevents", lab_ids.astype(str), factor))

    # --- prescriptions
    idx, off = events_per_stay(rng, counts[2], hosp_start, end_h)
    drug = pick(rng, len(idx), PRESCRIPTIONS, zipf_weights([p[4] for p in PRESCRIPTIONS]))
    add_prescriptions(w, rng, next_ids, stay_subject, hadm_id, idx, off, intime, PRESCRIPTIONS, drug)
    stays = np.flatnonzero(factors["pressor"])
    idx = np.repeat(stays, rng.integers(1, 3, len(stays)))
    off = rng.random(len(idx)) * (OBSERVATION_HOURS - 1)
    pressors = [(d, v, u, r, 1) for d, v, u, r in PRESSORS]
    ph_ids = add_prescriptions(w, rng, next_ids, stay_subject, hadm_id, idx, off, intime, pressors,
                               pick(rng, len(idx), pressors, (0.75, 0.25)))
    planted.append(("prescriptions", ph_ids, "pressor"))

    # --- procedures
    idx, off = events_per_stay(rng, counts[3], icu_start, end_h)
    item = pick(rng, len(idx), PROCEDURE_ITEMS, zipf_weights([p[1] for p in PROCEDURE_ITEMS]))
    itemids = np.array([p[0][0] for p in PROCEDURE_ITEMS])[item]
    add_procedures(w, rng, next_ids, stay_subject, hadm_id, stay_id, idx, off, intime, itemids)
    for factor, itemid, prob in (("ventilated", INTUBATION, 0.8), ("ventilated", VENTILATION, 1.0),
                                 ("renal", CRRT, 0.5)):
        stays = np.flatnonzero(factors[factor] & (rng.random(n_stays) < prob))
        off = rng.random(len(stays)) * (OBSERVATION_HOURS - 1)
        order_ids = add_procedures(w, rng, next_ids, stay_subject, hadm_id, stay_id, stays, off, intime,
                                   np.full(len(stays), itemid))
        planted.append(("procedureevents", np.char.add(order_ids.astype(str), f":{itemid}"), factor))

    # --- ingredients: several ingredients of one order share its orderid and times
    idx, off = events_per_stay(rng, counts[1], icu_start, end_h)
    add_ingredients(w, rng, next_ids, stay_subject, hadm_id, stay_id, idx, off, intime)

    # --- microbiology: background specimens, then positive blood cultures with susceptibilities
    idx, off = events_per_stay(rng, counts[4], hosp_start, end_h)
    spec = pick(rng, len(idx), MICRO_BACKGROUND, zipf_weights([m.weight for m in MICRO_BACKGROUND]))
    add_micro(w, rng, next_ids, stay_subject, hadm_id, idx, off, intime, spec)
    stays = np.flatnonzero(factors["bacteremia"])
    off = rng.random(len(stays)) * 18  # drawn early enough to be reported (+24-28 h) inside the window
    micro_ids = add_micro(w, rng, next_ids, stay_subject, hadm_id, stays, off, intime, None,
                          organism=pick(rng, len(stays), BACTEREMIA_ORGANISMS))
    planted.append(("microbiologyevents", micro_ids.astype(str), "bacteremia"))



def small_dictionaries(w):
    w.add("hosp/d_labitems", len(LAB_ITEMS) + 1,
          itemid=np.array([r.itemid for r in LAB_ITEMS] + [LAB_TEXT_ITEM.itemid]),
          label=pa.array([r.label for r in LAB_ITEMS] + [LAB_TEXT_ITEM.label]),
          fluid=pa.array([r.fluid for r in LAB_ITEMS] + [LAB_TEXT_ITEM.fluid]),
          category=pa.array([r.category for r in LAB_ITEMS] + [LAB_TEXT_ITEM.category]))
    d_items = [p[0] for p in PROCEDURE_ITEMS] + PLANTED_PROCEDURE_ITEMS + [i[0] for i in INGREDIENT_ITEMS]
    w.add("icu/d_items", len(d_items), **{name: pa.array([row[k] for row in d_items])
                                          for k, name in enumerate(COLUMNS["icu/d_items"].split(",")[:7])})


def write_truth(out_dir: Path, s, planted) -> dict:
    """truth/stays.csv.gz (true probability, factors, label) and truth/planted_rows.csv.gz."""
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    stays_truth = pa.table({"subject_id": s.stay_subject, "hadm_id": s.hadm_id, "stay_id": s.stay_id,
                            "patient_age": s.age.astype(float), "true_probability": s.true_probability,
                            "died": s.died.astype(np.int64),
                            **{f"factor_{name}": present.astype(np.int64) for name, present in s.factors.items()}})
    write_csv_gz(stays_truth, truth_dir / "stays.csv.gz")
    planted_table = pa.table({
        "source_table": pa.array(np.concatenate([np.full(len(i), t, dtype=object) for t, i, _ in planted]), pa.string()),
        "source_id": pa.array(np.concatenate([np.asarray(i, dtype=object) for _, i, _ in planted]), pa.string()),
        "factor": pa.array(np.concatenate([np.full(len(i), f, dtype=object) for _, i, f in planted]), pa.string()),
    })
    write_csv_gz(planted_table, truth_dir / "planted_rows.csv.gz")
    return {"stays": s.n_stays, "patients": s.n_patients, "deaths": int(s.died.sum()),
            "planted_rows": planted_table.num_rows}


def add_labs(w, rng, next_ids, subject, hadm, idx, off, intime, item, value, numeric, store_always=False):
    n = len(idx)
    ids = next_ids("lab", n)
    chart = intime[idx] + (off * HOUR).astype(np.int64)
    chart -= chart % 60
    store = chart + rng.integers(20, 180, n) * 60
    store_missing = np.zeros(n, bool) if store_always else rng.random(n) < 0.03
    it = np.where(numeric, item, 0)
    lo = np.array([r.ref_lower for r in LAB_ITEMS], float)[it]
    hi = np.array([r.ref_upper for r in LAB_ITEMS], float)[it]
    text_value = rng.integers(0, len(LAB_TEXT_ITEM.values), n)
    value_str = pa.array(np.where(numeric, value, np.nan)).cast(pa.string())
    value_str = pa.array(np.where(numeric, value_str.to_numpy(zero_copy_only=False),
                                  np.asarray(LAB_TEXT_ITEM.values, dtype=object)[text_value]))
    abnormal = numeric & ((value < lo) | (value > hi)) | (~numeric & (text_value >= 2))
    units = [r.unit for r in LAB_ITEMS]
    unit_index = np.where(numeric, it, len(units))
    w.add("hosp/labevents", n, labevent_id=ids, subject_id=subject[idx], hadm_id=hadm[idx],
          specimen_id=ids * 3 + 1_000_000, itemid=np.array([r.itemid for r in LAB_ITEMS] + [LAB_TEXT_ITEM.itemid])[item],
          charttime=stamp(chart), storetime=pa.array(stamp(store), mask=store_missing),
          value=value_str, valuenum=pa.array(value, mask=~numeric),
          valueuom=strings(units + [None], unit_index, mask=(unit_index == len(units)) |
                           np.isin(unit_index, [k for k, u in enumerate(units) if u is None])),
          ref_range_lower=pa.array(lo, mask=~numeric), ref_range_upper=pa.array(hi, mask=~numeric),
          flag=strings(("abnormal",), np.zeros(n, int), mask=~abnormal),
          priority=strings(("ROUTINE", "STAT"), (rng.random(n) < 0.3).astype(int)))
    return ids


def add_prescriptions(w, rng, next_ids, subject, hadm, idx, off, intime, vocab, drug):
    n = len(idx)
    ids = next_ids("pharmacy", n)
    start = intime[idx] + (off * HOUR).astype(np.int64)
    start -= start % 3600  # orders start on the hour, as MIMIC's mostly do
    dose_choice = rng.random(n)
    doses = np.array([vocab[d][1][int(u * len(vocab[d][1]))] for d, u in zip(drug, dose_choice)], dtype=object)
    route_vocab = [p[3] for p in vocab]
    w.add("hosp/prescriptions", n, subject_id=subject[idx], hadm_id=hadm[idx], pharmacy_id=ids,
          starttime=stamp(start), stoptime=stamp(start + rng.integers(6, 96, n) * HOUR),
          drug_type=strings(("MAIN",), np.zeros(n, int)), drug=strings([p[0] for p in vocab], drug),
          dose_val_rx=pa.array(doses, pa.string()), dose_unit_rx=strings([p[2] for p in vocab], drug),
          doses_per_24_hrs=rng.integers(1, 5, n),
          route=strings([r or "" for r in route_vocab], drug, mask=np.array([r is None for r in route_vocab])[drug]))
    # query.sql's source_id of a prescription: "pharmacy_id:drug"
    return np.char.add(np.char.add(ids.astype(str), ":"), np.array([p[0] for p in vocab])[drug])


def add_procedures(w, rng, next_ids, subject, hadm, stay, idx, off, intime, itemids):
    n = len(idx)
    order_ids = next_ids("order", n)
    start = intime[idx] + (off * HOUR).astype(np.int64)
    start -= start % 60
    end = start + rng.integers(1, 72 * 60, n) * 60
    w.add("icu/procedureevents", n, subject_id=subject[idx], hadm_id=hadm[idx], stay_id=stay[idx],
          caregiver_id=rng.integers(1000, 99999, n), starttime=stamp(start), endtime=stamp(end),
          storetime=stamp(end + 60 * rng.integers(0, 30, n)), itemid=itemids,
          value=((end - start) / 60).astype(float), valueuom=strings(("min",), np.zeros(n, int)),
          orderid=order_ids, linkorderid=order_ids,
          ordercategoryname=strings(("Procedures",), np.zeros(n, int)),
          ordercategorydescription=strings(("ContinuousProcess", "Task"), rng.integers(0, 2, n)),
          patientweight=np.round(rng.normal(80, 15, n), 1), isopenbag=np.zeros(n, np.int64),
          continueinnextdept=np.zeros(n, np.int64),
          statusdescription=strings(("FinishedRunning", "Rewritten"), (rng.random(n) < 0.01).astype(int)
                                    * (itemids != INTUBATION) * (itemids != VENTILATION) * (itemids != CRRT)),
          ORIGINALAMOUNT=((end - start) / 60).astype(float), ORIGINALRATE=np.ones(n, np.int64))
    return order_ids


def add_ingredients(w, rng, next_ids, subject, hadm, stay, idx, off, intime):
    n = len(idx)
    order_ids = next_ids("order", n)
    item = pick(rng, n, INGREDIENT_ITEMS, zipf_weights([i[2] for i in INGREDIENT_ITEMS]))
    start = intime[idx] + (off * HOUR).astype(np.int64)
    start -= start % 60
    rate = np.array([i[4] for i in INGREDIENT_ITEMS], float)[item]
    n_fixed = np.array([len(i[3]) for i in INGREDIENT_ITEMS])[item]
    continuous = (rate > 0) & ((n_fixed == 0) | (rng.random(n) < 0.45))
    duration_min = np.where(continuous, rng.integers(10, 8 * 60, n), rng.integers(1, 60, n))
    fixed = np.array([i[3][int(u * len(i[3]))] if i[3] else 0 for i, u in
                      zip(np.array(INGREDIENT_ITEMS, dtype=object)[item], rng.random(n))], float)
    # continuous infusions carry MIMIC's float noise (49.999998807907104, 54.32109...)
    amount = np.where(continuous, rate * duration_min / 60 * (1 + rng.normal(0, 1e-7, n)), fixed)
    end = start + duration_min * 60
    w.add("icu/ingredientevents", n, subject_id=subject[idx], hadm_id=hadm[idx], stay_id=stay[idx],
          caregiver_id=rng.integers(1000, 99999, n), starttime=stamp(start), endtime=stamp(end),
          storetime=stamp(end + 60), itemid=np.array([i[0][0] for i in INGREDIENT_ITEMS])[item], amount=amount,
          amountuom=strings([i[1] for i in INGREDIENT_ITEMS], item),
          rate=pa.array(rate, mask=~continuous), rateuom=strings(("mL/hour",), np.zeros(n, int), mask=~continuous),
          orderid=order_ids, linkorderid=order_ids,
          statusdescription=strings(("FinishedRunning", "Stopped", "Rewritten"),
                                    pick(rng, n, (0, 1, 2), (0.9, 0.08, 0.02))),
          originalamount=np.zeros(n, np.int64), originalrate=pa.array(rate, mask=~continuous))


def add_micro(w, rng, next_ids, subject, hadm, idx, off, intime, spec, organism=None):
    """Background specimens (spec = index into MICRO_BACKGROUND) or positive blood cultures (organism)."""
    n = len(idx)
    if organism is None:
        spec_rows = [MICRO_BACKGROUND[i] for i in spec]
        has_org = np.array([s.organism is not None for s in spec_rows], dtype=bool)
        org = [s.organism or (0, None) for s in spec_rows]
    else:
        has_org = np.ones(n, bool)
        org = [BACTEREMIA_ORGANISMS[o] for o in organism]
        spec_rows = [MICRO_BACKGROUND[0]] * n
    # each positive specimen: one organism row plus 2-3 susceptibility rows
    n_ab = np.where(has_org, rng.integers(2, 4, n), 0)
    rows_per = 1 + n_ab
    r = np.repeat(np.arange(n), rows_per)
    k = np.arange(len(r)) - np.repeat(np.cumsum(rows_per) - rows_per, rows_per)  # 0 = organism row
    ids = next_ids("micro", len(r))
    chart = intime[idx] + (off * HOUR).astype(np.int64)
    chart -= chart % 60
    store = chart + rng.integers(24 * 60, 28 * 60, n) * 60 if organism is not None else \
        chart + rng.integers(12 * 60, 72 * 60, n) * 60
    no_hadm = (rng.random(n) < 0.05) if organism is None else np.zeros(n, bool)  # outpatient specimens
    ab = rng.integers(0, len(ANTIBIOTICS), len(r))
    is_ab = k > 0
    interp = np.where(rng.random(len(r)) < 0.25, 1, 0)
    w.add("hosp/microbiologyevents", len(r), microevent_id=ids, subject_id=subject[idx][r],
          hadm_id=pa.array(hadm[idx][r], mask=no_hadm[r]), micro_specimen_id=1_000_000 + idx[r] * 100 + r % 100,
          chartdate=stamp(chart[r] - chart[r] % 86400), charttime=stamp(chart[r]),
          spec_itemid=np.array([s.spec_itemid for s in spec_rows], np.int64)[r],
          spec_type_desc=pa.array([s.spec_type_desc for s in spec_rows], pa.string()).take(pa.array(r)),
          test_seq=np.ones(len(r), np.int64), storedate=stamp(store[r] - store[r] % 86400), storetime=stamp(store[r]),
          test_itemid=np.array([s.test_itemid for s in spec_rows], np.int64)[r],
          test_name=pa.array([s.test_name for s in spec_rows], pa.string()).take(pa.array(r)),
          org_itemid=pa.array(np.array([o[0] for o in org], np.int64)[r], mask=~has_org[r]),
          org_name=pa.array([o[1] for o in org], pa.string()).take(pa.array(r)),
          isolate_num=pa.array(np.ones(len(r), np.int64), mask=~has_org[r]),
          ab_itemid=pa.array(np.array([a[0] for a in ANTIBIOTICS])[ab], mask=~is_ab),
          ab_name=strings([a[1] for a in ANTIBIOTICS], ab, mask=~is_ab),
          dilution_text=strings(("<=0.5", "1", "2", ">=16"), rng.integers(0, 4, len(r)), mask=~is_ab),
          interpretation=strings(("S", "R"), interp, mask=~is_ab),
          comments=strings(("No growth.",), np.zeros(len(r), int), mask=has_org[r]))
    return ids


# ----------------------------------------------------------------------------- the realistic regime
# Dictionaries, frequencies and value quantiles come from synthetic_vocab.json (aggregates of the MIMIC-IV
# demo, see derive_synthetic_vocab.py). Rows are drawn over [-6 h, min(los, 54 h)) from intime (ICU tables
# from intime on), so the 48 h window sees about 4/5 of the hospital rows and 8/9 of the ICU rows.
# Rows per hour of each kind, tuned so that the extracted cohort matches the demo's (tests/test_synthetic.py):
REALISTIC_RATES = {"lab": 4.3, "prescription": 1.1, "input_orders": 1.05, "procedure": 0.18, "microbiology": 0.13}
INGREDIENTS_PER_INPUT_ROW = 1.4
# rows the rates above make per stay, all tables (ingredients included); --events-per-stay scales them
REALISTIC_EVENTS_PER_STAY = 600.0
STAY_INTENSITY_SHAPE = 7.0  # gamma shape of a stay's overall activity (sets the spread of events per stay)
KIND_INTENSITY_SHAPE = 10.0  # and of each kind's activity within a stay
LAB_NULL_HADM_SHARE, MICRO_NULL_HADM_SHARE = 0.015, 0.08  # results filed without an admission (ED, outpatient)
BACKGROUND_CAPS = {LACTATE: 3.9, CREATININE: 2.9}  # high values are planted risk only
# (d_items row, rate unit, rate range, segment count range): vasopressor infusions, the planted `pressor` factor
PRESSOR_INFUSIONS = [
    ((221906, "Norepinephrine", "Norepinephrine", "inputevents", "Medications", "mg", "Solution"),
     "mcg/kg/min", (0.02, 0.5), 0.55),
    ((221749, "Phenylephrine", "Phenylephrine", "inputevents", "Medications", "mg", "Solution"),
     "mcg/kg/min", (0.2, 3.0), 0.25),
    ((222315, "Vasopressin", "Vasopressin", "inputevents", "Medications", "units", "Solution"),
     "units/min", (0.02, 0.04), 0.12),
    ((221289, "Epinephrine", "Epinephrine", "inputevents", "Medications", "mg", "Solution"),
     "mcg/kg/min", (0.02, 0.2), 0.08),
]


def load_vocab(path=None) -> dict:
    """synthetic_vocab.json as arrays ready for vectorised draws."""
    raw = json.loads(Path(path or VOCAB_PATH).read_text())
    v = SimpleNamespace(raw=raw)
    labs = raw["labs"]
    v.lab_ids = np.array([int(k) for k in labs["items"]])
    items = list(labs["items"].values())
    v.lab_items = items
    index = {itemid: k for k, itemid in enumerate(v.lab_ids)}
    v.lab_numeric = np.array(["quantiles" in i for i in items])
    v.lab_quantiles = np.array([i.get("quantiles") or [0.0] * 21 for i in items], float)
    v.lab_decimals = np.array([i.get("decimals", 0) for i in items])
    v.lab_ref = np.array([[np.nan if r is None else r for r in i["ref"]] for i in items], float)
    v.lab_units = [i["unit"] for i in items]
    for itemid, cap in BACKGROUND_CAPS.items():
        v.lab_quantiles[index[itemid]] = np.minimum(v.lab_quantiles[index[itemid]], cap)
    # text results: per item, its values with cumulative weights in (k, k + 1] for a single searchsorted
    keys, values = [], []
    for k, item in enumerate(items):
        if "text_values" in item:
            w = np.cumsum(item["text_weights"], dtype=float)
            keys.extend(k + w / w[-1])
            values.extend(item["text_values"])
    v.lab_text_keys, v.lab_text_values = np.array(keys), values
    panels = [[index[i] for i in items_] for items_, _ in labs["panels"]]
    v.panel_p = zipf_weights([c for _, c in labs["panels"]])
    v.panel_size = np.array([len(p) for p in panels])
    v.panel_start = np.cumsum(v.panel_size) - v.panel_size
    v.panel_items = np.concatenate(panels)
    v.lab_index = index

    rx = raw["prescriptions"]
    v.rx_columns = {name: [row[k] for row in rx["orders"]] for k, name in enumerate(rx["columns"][:-1])}
    v.rx_p = zipf_weights([row[-1] for row in rx["orders"]])

    v.inputs = raw["inputs"]["items"]
    v.input_p = zipf_weights([i["weight"] for i in v.inputs])
    v.input_store_delay = np.array(raw["inputs"]["store_delay_minutes"])
    v.ingredients = raw["ingredients"]["items"]
    v.ingredient_p = zipf_weights([i["weight"] for i in v.ingredients])
    v.procedures = raw["procedures"]["items"]
    v.procedure_p = zipf_weights([i["weight"] for i in v.procedures])
    v.procedure_store_after_end = np.array(raw["procedures"]["store_after_end_minutes"])
    micro = raw["microbiology"]
    v.micro_columns = {name: [row[k] for row in micro["rows"]] for k, name in enumerate(micro["columns"][:-1])}
    v.micro_p = zipf_weights([row[-1] for row in micro["rows"]])
    v.micro_store_delay = np.array(micro["store_delay_hours"])
    return v


def from_quantiles(rng, quantiles, n=None, discrete=False):
    """Draws from a distribution given by its 21 quantiles (rows of a matrix, or one vector), linearly
    interpolated; discrete=True draws the quantile values themselves (doses come in round numbers)."""
    quantiles = np.atleast_2d(quantiles)
    n = len(quantiles) if n is None else n
    position = rng.random(n) * (quantiles.shape[1] - 1)
    low = np.minimum(position.astype(int), quantiles.shape[1] - 2)
    frac = np.round(position - low) if discrete else position - low
    rows = np.arange(n) if len(quantiles) == n else np.zeros(n, int)
    return quantiles[rows, low] * (1 - frac) + quantiles[rows, low + 1] * frac


def per_item(items, key, missing=None) -> np.ndarray:
    """items[k][key] for every item k, as an array to index by item (quantile lists become matrix rows)."""
    values = [item[key] if item[key] not in (None, []) else missing for item in items]
    if isinstance(values[0], list):
        return np.array(values, dtype=float)
    return np.array(values, dtype=object) if any(isinstance(v, str) or v is None for v in values) else np.array(values)


def vocab_strings(values, index) -> pa.Array:
    """values[index], with "" and None as null."""
    values = list(values)
    missing = np.array([v in ("", None) for v in values])
    return strings([v or "" for v in values], index, mask=missing[index])


def counts_per_stay(rng, rate_per_hour, hours, activity):
    """Poisson counts per stay: rate x hours x the stay's activity x this kind's activity in the stay."""
    kind_activity = rng.gamma(KIND_INTENSITY_SHAPE, 1 / KIND_INTENSITY_SHAPE, len(hours))
    return rng.poisson(rate_per_hour * np.maximum(hours, 0) * activity * kind_activity)


def realistic_events(w, rng, s, chunk, next_ids, vocab, scale):
    """Background rows of the stays in `chunk` (indices into s), every table."""
    los_h = s.los_h[chunk]
    activity = scale * rng.gamma(STAY_INTENSITY_SHAPE, 1 / STAY_INTENSITY_SHAPE, len(chunk)) * ~s.quiet[chunk]
    hosp_start, icu_start = np.full(len(chunk), -6.0), np.zeros(len(chunk))
    end_h = np.minimum(los_h, OBSERVATION_HOURS + 6)
    ctx = SimpleNamespace(w=w, rng=rng, s=s, next_ids=next_ids, vocab=vocab)

    n = counts_per_stay(rng, REALISTIC_RATES["lab"] / (vocab.panel_size @ vocab.panel_p), end_h - hosp_start, activity)
    idx, off = events_per_stay(rng, n, hosp_start, end_h)
    panel = rng.choice(len(vocab.panel_p), size=len(idx), p=vocab.panel_p)
    add_lab_panels(ctx, chunk[idx], off, panel)

    n = counts_per_stay(rng, REALISTIC_RATES["prescription"], end_h - hosp_start, activity)
    idx, off = events_per_stay(rng, n, hosp_start, end_h)
    add_realistic_prescriptions(ctx, chunk[idx], off)

    n = counts_per_stay(rng, REALISTIC_RATES["input_orders"], end_h - icu_start, activity)
    idx, off = events_per_stay(rng, n, icu_start, end_h)
    item = rng.choice(len(vocab.input_p), size=len(idx), p=vocab.input_p)
    mean_rows = np.array([i["rows_per_order"] for i in vocab.inputs])[item]
    segments = np.minimum(rng.geometric(1 / np.maximum(mean_rows, 1)), 40)
    rows = add_input_orders(ctx, chunk[idx], off, vocab.inputs, item, segments)
    add_ingredients_of(ctx, rows, rng.poisson(INGREDIENTS_PER_INPUT_ROW, len(rows["stay"])))

    n = counts_per_stay(rng, REALISTIC_RATES["procedure"], end_h - icu_start, activity)
    idx, off = events_per_stay(rng, n, icu_start, end_h)
    add_realistic_procedures(ctx, chunk[idx], off)

    n = counts_per_stay(rng, REALISTIC_RATES["microbiology"], end_h - hosp_start, activity)
    idx, off = events_per_stay(rng, n, hosp_start, end_h)
    add_realistic_micro(ctx, chunk[idx], off)


def minute_times(intime, off_h):
    t = intime + (off_h * HOUR).astype(np.int64)
    return t - t % 60


def add_lab_panels(ctx, stay, off, panel, planted_item=None, planted_value=None):
    """One specimen per entry (stay, offset, panel): its items share charttime, storetime and hadm_id.
    With planted_item/planted_value: single-item specimens with those values, always stored."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    if planted_item is None:
        size = v.panel_size[panel]
        spec = np.repeat(np.arange(len(panel)), size)
        item = v.panel_items[np.repeat(v.panel_start[panel], size) + np.arange(len(spec))
                             - np.repeat(np.cumsum(size) - size, size)]
    else:
        spec, item = np.arange(len(panel)), np.full(len(panel), v.lab_index[planted_item])
    n = len(spec)
    ids = ctx.next_ids("lab", n)
    chart = minute_times(s.intime[stay], off)
    delay = np.where(rng.random(len(stay)) < 0.9, rng.gamma(2.0, 30.0, len(stay)), rng.uniform(60, 600, len(stay)))
    store = chart + (delay * 60).astype(np.int64)
    store -= store % 60
    null_hadm = (rng.random(len(stay)) < LAB_NULL_HADM_SHARE) if planted_item is None else np.zeros(len(stay), bool)
    numeric = v.lab_numeric[item]
    if planted_value is None:
        value = from_quantiles(rng, v.lab_quantiles[item])
    else:
        value = np.asarray(planted_value, float)
    decimals = v.lab_decimals[item]
    value = np.round(value * 10.0 ** decimals) / 10.0 ** decimals
    text = np.empty(n, dtype=object)
    for d in np.unique(decimals[numeric]):
        at = numeric & (decimals == d)
        text[at] = np.char.mod(f"%.{d}f", value[at])
    if (~numeric).any():
        pick_at = np.searchsorted(v.lab_text_keys, item[~numeric] + rng.random((~numeric).sum()) * (1 - 1e-9))
        text[~numeric] = np.asarray(v.lab_text_values, dtype=object)[pick_at]
    lo, hi = v.lab_ref[item, 0], v.lab_ref[item, 1]
    has_ref = numeric & ~np.isnan(lo) & ~np.isnan(hi)
    abnormal = has_ref & ((value < lo) | (value > hi))
    unit_missing = np.array([u is None for u in v.lab_units])
    stay_rows = stay[spec]
    ctx.w.add("hosp/labevents", n, labevent_id=ids, subject_id=s.stay_subject[stay_rows],
              hadm_id=pa.array(s.hadm_id[stay_rows], mask=null_hadm[spec]),
              specimen_id=ctx.next_ids("specimen", len(stay))[spec],
              itemid=v.lab_ids[item], charttime=stamp(chart[spec]), storetime=stamp(store[spec]),
              value=pa.array(text, pa.string()), valuenum=pa.array(value, mask=~numeric),
              valueuom=strings([u or "" for u in v.lab_units], item, mask=unit_missing[item]),
              ref_range_lower=pa.array(lo, mask=~has_ref), ref_range_upper=pa.array(hi, mask=~has_ref),
              flag=strings(("abnormal",), np.zeros(n, int), mask=~abnormal),
              priority=strings(("ROUTINE", "STAT"), (rng.random(len(stay)) < 0.3).astype(int)[spec]))
    return ids


def add_realistic_prescriptions(ctx, stay, off):
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    n = len(stay)
    order = rng.choice(len(v.rx_p), size=n, p=v.rx_p)
    ids = ctx.next_ids("pharmacy", n)
    start = minute_times(s.intime[stay], off)
    start = np.where(rng.random(n) < 0.6, start - start % HOUR, start)  # most orders start on the hour
    cols = v.rx_columns
    ctx.w.add("hosp/prescriptions", n, subject_id=s.stay_subject[stay], hadm_id=s.hadm_id[stay], pharmacy_id=ids,
              starttime=stamp(start), stoptime=stamp(start + rng.integers(6, 96, n) * HOUR),
              drug_type=vocab_strings(cols["drug_type"], order), drug=vocab_strings(cols["drug"], order),
              dose_val_rx=vocab_strings(cols["dose_val_rx"], order),
              dose_unit_rx=vocab_strings(cols["dose_unit_rx"], order), route=vocab_strings(cols["route"], order),
              doses_per_24_hrs=rng.integers(1, 5, n))


def add_input_orders(ctx, stay, off, items, item, segments, rate=None, store_delay_min=None):
    """Infusion orders: each order is `segments` consecutive rows (rate changes) sharing a linkorderid.
    items: dicts with amountuom, rateuom, rate_share, ordercategory*, amount/rate/minutes quantiles.
    Returns the rows' stay, times and order ids (ingredients hang on them)."""
    rng, s = ctx.rng, ctx.s
    order = np.repeat(np.arange(len(stay)), segments)
    n = len(order)
    first = np.cumsum(segments) - segments
    k = np.arange(n) - np.repeat(first, segments)
    it = item[order]
    minutes = np.maximum(1, np.round(from_quantiles(rng, per_item(items, "minutes")[it])))
    # each segment starts where the previous one of its order ended
    cum = np.cumsum(minutes) - minutes
    start_min = cum - np.repeat(cum[first], segments)
    start = minute_times(s.intime[stay[order]], off[order]) + (start_min * 60).astype(np.int64)
    end = start + (minutes * 60).astype(np.int64)
    if store_delay_min is None:
        store_delay_min = np.maximum(0, np.round(from_quantiles(rng, ctx.vocab.input_store_delay, n)))
    store = start + (store_delay_min * 60).astype(np.int64)
    rateuom = per_item(items, "rateuom")
    has_rate = (rateuom != None)[it] & (rng.random(n) < per_item(items, "rate_share")[it])  # noqa: E711
    if rate is None:
        rate = from_quantiles(rng, per_item(items, "rate", [0.0] * 21)[it], discrete=True)
        amount = from_quantiles(rng, per_item(items, "amount")[it], discrete=True)
        amount = np.where(has_rate & (per_item(items, "amountuom") == "ml")[it], rate * minutes / 60, amount)
    else:
        rate = rate[order] * (1 + rng.uniform(-0.5, 0.5, n))  # titrated up and down
        weight = 80.0
        per_kg = np.array([u.endswith("/kg/min") for u in rateuom])[it]
        amount = np.where(per_kg, rate * weight * minutes / 1000, rate * minutes)
        rate = np.round(rate, 4)
    orderid = ctx.next_ids("order", n)
    last = k == segments[order] - 1
    status = np.where(last, np.where(rng.random(n) < 0.9, 0, 1), 2)
    col = lambda name: list(per_item(items, name))  # noqa: E731
    ctx.w.add("icu/inputevents", n, subject_id=s.stay_subject[stay[order]], hadm_id=s.hadm_id[stay[order]],
              stay_id=s.stay_id[stay[order]], caregiver_id=rng.integers(1000, 99999, n),
              starttime=stamp(start), endtime=stamp(end), storetime=stamp(store), itemid=np.array(col("itemid"))[it],
              amount=amount, amountuom=vocab_strings(col("amountuom"), it),
              rate=pa.array(rate, mask=~has_rate), rateuom=strings([u or "" for u in rateuom], it, mask=~has_rate),
              orderid=orderid, linkorderid=orderid[np.repeat(first, segments)],
              ordercategoryname=vocab_strings(col("ordercategoryname"), it),
              secondaryordercategoryname=vocab_strings(col("secondaryordercategoryname"), it),
              ordercomponenttypedescription=strings(("Main order parameter",), np.zeros(n, int)),
              ordercategorydescription=vocab_strings(col("ordercategorydescription"), it),
              patientweight=np.full(n, 80.0), totalamount=np.round(amount * segments[order], 1),
              totalamountuom=vocab_strings(col("amountuom"), it), isopenbag=np.zeros(n, np.int64),
              continueinnextdept=np.zeros(n, np.int64),
              statusdescription=strings(("FinishedRunning", "Stopped", "ChangeDose/Rate"), status),
              originalamount=amount, originalrate=pa.array(rate, mask=~has_rate))
    return {"stay": stay[order], "start": start, "end": end, "store": store, "orderid": orderid,
            "itemid": np.array(col("itemid"))[it]}


def add_ingredients_of(ctx, rows, per_row):
    """Ingredient rows (water, calories, ...) of infusion rows: same order, times and stay."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    parent = np.repeat(np.arange(len(per_row)), per_row)
    n = len(parent)
    item = rng.choice(len(v.ingredient_p), size=n, p=v.ingredient_p)
    amount = from_quantiles(rng, per_item(v.ingredients, "amount")[item])
    hours = np.maximum((rows["end"][parent] - rows["start"][parent]) / HOUR, 1 / 60)
    has_rate = rng.random(n) < np.array([i["rate_share"] for i in v.ingredients])[item]
    stay = rows["stay"][parent]
    ctx.w.add("icu/ingredientevents", n, subject_id=s.stay_subject[stay], hadm_id=s.hadm_id[stay],
              stay_id=s.stay_id[stay], caregiver_id=rng.integers(1000, 99999, n),
              starttime=stamp(rows["start"][parent]), endtime=stamp(rows["end"][parent]),
              storetime=stamp(rows["store"][parent]), itemid=np.array([i["itemid"] for i in v.ingredients])[item],
              amount=amount, amountuom=vocab_strings([i["amountuom"] for i in v.ingredients], item),
              rate=pa.array(amount / hours, mask=~has_rate),
              rateuom=strings(("mL/hour",), np.zeros(n, int), mask=~has_rate),
              orderid=rows["orderid"][parent], linkorderid=rows["orderid"][parent],
              statusdescription=strings(("FinishedRunning", "Stopped", "ChangeDose/Rate"),
                                        pick(rng, n, (0, 1, 2), (0.75, 0.1, 0.15))),
              originalamount=np.zeros(n, np.int64), originalrate=pa.array(amount / hours, mask=~has_rate))


def add_realistic_procedures(ctx, stay, off, itemids=None, end=None, store=None):
    """Procedures from the vocabulary (itemids None) or given ones with their end and store times.
    storetime is when the row was last charted, often at the end, hours after the start."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    n = len(stay)
    start = minute_times(s.intime[stay], off)
    if itemids is None:
        item = rng.choice(len(v.procedure_p), size=n, p=v.procedure_p)
        itemids = np.array([p["itemid"] for p in v.procedures])[item]
        minutes = np.round(from_quantiles(rng, per_item(v.procedures, "minutes")[item]))
        end = start + (minutes * 60).astype(np.int64)
        after_end = np.round(from_quantiles(rng, v.procedure_store_after_end, n))
        store = np.maximum(start, end + (after_end * 60).astype(np.int64))
        category = [p["ordercategoryname"] for p in v.procedures], item
        kind = [p["ordercategorydescription"] for p in v.procedures], item
    else:
        category = ("Ventilation",), np.zeros(n, int)
        kind = ("ContinuousProcess",), np.zeros(n, int)
    order_ids = ctx.next_ids("order", n)
    ctx.w.add("icu/procedureevents", n, subject_id=s.stay_subject[stay], hadm_id=s.hadm_id[stay],
              stay_id=s.stay_id[stay], caregiver_id=rng.integers(1000, 99999, n), starttime=stamp(start),
              endtime=stamp(end), storetime=stamp(store), itemid=itemids,
              value=((end - start) / 60).astype(float), valueuom=strings(("min",), np.zeros(n, int)),
              orderid=order_ids, linkorderid=order_ids, ordercategoryname=vocab_strings(*category),
              ordercategorydescription=vocab_strings(*kind), patientweight=np.full(n, 80.0),
              isopenbag=np.zeros(n, np.int64), continueinnextdept=np.zeros(n, np.int64),
              statusdescription=strings(("FinishedRunning",), np.zeros(n, int)),
              ORIGINALAMOUNT=((end - start) / 60).astype(float), ORIGINALRATE=np.ones(n, np.int64))
    return order_ids


def add_realistic_micro(ctx, stay, off):
    """Microbiology rows drawn from the demo's result rows: specimens, organisms, susceptibilities and
    results kept in `comments` (NO GROWTH., POSITIVE BY EIA., TEST CANCELLED, ...)."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    n = len(stay)
    row = rng.choice(len(v.micro_p), size=n, p=v.micro_p)
    ids = ctx.next_ids("micro", n)
    chart = minute_times(s.intime[stay], off)
    store = chart + (from_quantiles(rng, v.micro_store_delay, n) * HOUR).astype(np.int64)
    store -= store % 60
    null_hadm = rng.random(n) < MICRO_NULL_HADM_SHARE
    cols = v.micro_columns
    as_int = lambda name: pa.array(np.array([int(x) if x else 0 for x in cols[name]])[row],  # noqa: E731
                                   mask=np.array([not x for x in cols[name]])[row])
    ctx.w.add("hosp/microbiologyevents", n, microevent_id=ids, subject_id=s.stay_subject[stay],
              hadm_id=pa.array(s.hadm_id[stay], mask=null_hadm), micro_specimen_id=ids + 5_000_000,
              chartdate=stamp(chart - chart % 86400), charttime=stamp(chart), spec_itemid=as_int("spec_itemid"),
              spec_type_desc=vocab_strings(cols["spec_type_desc"], row), test_seq=np.ones(n, np.int64),
              storedate=stamp(store - store % 86400), storetime=stamp(store), test_itemid=as_int("test_itemid"),
              test_name=vocab_strings(cols["test_name"], row), org_itemid=as_int("org_itemid"),
              org_name=vocab_strings(cols["org_name"], row),
              isolate_num=pa.array(np.ones(n, np.int64), mask=np.array([not x for x in cols["org_name"]])[row]),
              ab_itemid=as_int("ab_itemid"), ab_name=vocab_strings(cols["ab_name"], row),
              dilution_text=vocab_strings(cols["dilution_text"], row),
              interpretation=vocab_strings(cols["interpretation"], row),
              comments=vocab_strings(cols["comments"], row))


def realistic_planted(w, rng, s, next_ids, planted, vocab):
    """The planted risk factors, as the realistic regime charts them; every row is inside the window and
    known at the prediction time (charted before it, or still running at it)."""
    ctx = SimpleNamespace(w=w, rng=rng, s=s, next_ids=next_ids, vocab=vocab)
    for factor, itemid, low, high in (("lactate", LACTATE, 4.1, 9.5), ("renal", CREATININE, 3.0, 7.5)):
        stays = np.flatnonzero(s.factors[factor])
        idx = np.repeat(stays, rng.integers(1, 4, len(stays)))
        off = rng.random(len(idx)) * (OBSERVATION_HOURS - 6)
        lab_ids = add_lab_panels(ctx, idx, off, np.zeros(len(idx), int), planted_item=itemid,
                                 planted_value=rng.uniform(low, high, len(idx)))
        planted.append(("labevents", lab_ids.astype(str), factor))

    # vasopressors: one titrated infusion of 2-8 rows, all started (and charted) within the window
    stays = np.flatnonzero(s.factors["pressor"])
    drug = pick(rng, len(stays), PRESSOR_INFUSIONS, zipf_weights([p[3] for p in PRESSOR_INFUSIONS]))
    items = [{"itemid": p[0][0], "amountuom": p[0][5], "rateuom": p[1], "rate_share": 1.0,
              "ordercategoryname": "01-Drips", "secondaryordercategoryname": "02-Fluids (Crystalloids)",
              "ordercategorydescription": "Continuous Med", "minutes": list(np.linspace(30, 120, 21))}
             for p in PRESSOR_INFUSIONS]
    segments = rng.integers(2, 9, len(stays))
    rate = np.array([rng.uniform(*PRESSOR_INFUSIONS[d][2]) for d in drug])
    rows = add_input_orders(ctx, stays, rng.random(len(stays)) * 30, items, drug, segments, rate=rate,
                            store_delay_min=rng.integers(0, 30, segments.sum()))
    planted.append(("inputevents", np.char.add(np.char.add(rows["orderid"].astype(str), ":"),
                                                rows["itemid"].astype(str)), "pressor"))

    # ventilation and CRRT run past the prediction time; intubation is a task charted minutes later
    for factor, itemid, prob in (("ventilated", INTUBATION, 0.8), ("ventilated", VENTILATION, 1.0),
                                 ("renal", CRRT, 0.5)):
        stays = np.flatnonzero(s.factors[factor] & (rng.random(s.n_stays) < prob))
        off = rng.random(len(stays)) * (OBSERVATION_HOURS - 4)
        start = minute_times(s.intime[stays], off)
        if itemid == INTUBATION:
            end = start + 60 * rng.integers(1, 10, len(stays))
        else:
            end = s.intime[stays] + ((OBSERVATION_HOURS + rng.uniform(1, 72, len(stays))) * HOUR).astype(np.int64)
            end -= end % 60
        store = end + 60 * rng.integers(0, 30, len(stays))
        order_ids = add_realistic_procedures(ctx, stays, off, np.full(len(stays), itemid), end, store)
        planted.append(("procedureevents", np.char.add(order_ids.astype(str), f":{itemid}"), factor))

    stays = np.flatnonzero(s.factors["bacteremia"])
    off = rng.random(len(stays)) * 18  # drawn early enough to be reported (+24-28 h) inside the window
    micro_ids = add_micro(w, rng, next_ids, s.stay_subject, s.hadm_id, stays, off, s.intime, None,
                          organism=pick(rng, len(stays), BACTEREMIA_ORGANISMS))
    planted.append(("microbiologyevents", micro_ids.astype(str), "bacteremia"))


def realistic_dictionaries(w, vocab):
    items = vocab.lab_items
    w.add("hosp/d_labitems", len(items), itemid=vocab.lab_ids, label=pa.array([i["label"] for i in items]),
          fluid=pa.array([i["fluid"] for i in items], pa.string()),
          category=pa.array([i["category"] for i in items], pa.string()))
    d_items = [tuple(r) for r in vocab.raw["d_items"]]
    known = {r[0] for r in d_items}
    d_items += [r for r in PLANTED_PROCEDURE_ITEMS + [p[0] for p in PRESSOR_INFUSIONS] if r[0] not in known]
    w.add("icu/d_items", len(d_items), **{name: pa.array([row[k] for row in d_items])
                                          for k, name in enumerate(COLUMNS["icu/d_items"].split(",")[:7])})


def make_sample(output=SAMPLE_PATH, n_stays=SAMPLE_STAYS, seed=SAMPLE_SEED, work_dir=None) -> dict:
    """Synthetic MIMIC -> extract_cohort.py (the real query) -> + planted_risk, true_probability -> sample CSV."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    import extract_cohort

    output = Path(output)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        generate(tmp / "mimic", n_stays, seed, regime="small")
        extracted = tmp / "events.csv"
        extract_cohort.extract_cohort(extracted, tmp / "mimic", progress=False)
        table = pd.read_csv(extracted, dtype={"source_id": str, "source_table": str}, keep_default_na=True)
        truth = pd.read_csv(tmp / "mimic" / "truth" / "stays.csv.gz", usecols=["stay_id", "true_probability"])
        planted = pd.read_csv(tmp / "mimic" / "truth" / "planted_rows.csv.gz", dtype=str)
    key = table["source_table"].fillna("") + "|" + table["source_id"].fillna("")
    planted_keys = set(planted["source_table"] + "|" + planted["source_id"])
    table["planted_risk"] = np.where(table["event_type"].notna(), key.isin(planted_keys).astype(int), 0)
    table = table.merge(truth, on="stay_id", how="left", validate="many_to_one")
    if table["true_probability"].isna().any():
        raise RuntimeError("an extracted stay has no truth row: generator and query disagree")
    table["true_probability"] = table["true_probability"].round(4)
    table = table.drop(columns=list(SAMPLE_DROP_COLUMNS))
    with atomic_io.atomic_output(output) as tmp_out:
        table.to_csv(tmp_out, index=False)
    stays = table.drop_duplicates("stay_id")
    return {"stays": len(stays), "patients": stays["subject_id"].nunique(), "deaths": int(stays["mortality"].sum()),
            "events": int(table["event_type"].notna().sum()),
            "events_per_stay": table["event_type"].notna().sum() / len(stays),
            "planted_event_rows": int(table["planted_risk"].sum()),
            "ceiling_auroc": roc_auc_score(stays["mortality"], stays["true_probability"]),
            "megabytes": output.stat().st_size / 1e6}


def attach_truth(events_path, mimic_dir) -> None:
    """Adds the truth to an extracted event table in place, as sample_train.csv has it: `planted_risk` (1 on
    the rows of truth/planted_rows.csv.gz) and the stay's `true_probability`. DuckDB, so 50,000 realistic
    stays (~18 million rows) stay within a few hundred MB; rows keep the query's order."""
    import duckdb

    import extract_cohort
    events_path, truth = Path(events_path), Path(mimic_dir) / "truth"
    reader = (f"read_parquet('{events_path}')" if events_path.name.endswith(".parquet") else
              f"read_csv('{events_path}', types={{'source_table': 'VARCHAR', 'source_id': 'VARCHAR'}})")
    con = duckdb.connect()
    with atomic_io.atomic_output(events_path) as tmp:
        con.execute(f"""
            COPY (
              SELECT e.*,
                     CASE WHEN e.event_type IS NOT NULL AND p.source_id IS NOT NULL THEN 1 ELSE 0 END AS planted_risk,
                     ROUND(t.true_probability, 4) AS true_probability
              FROM {reader} AS e
              LEFT JOIN (SELECT DISTINCT source_table, source_id
                         FROM read_csv('{truth / "planted_rows.csv.gz"}', all_varchar = true)) AS p
                ON p.source_table = e.source_table AND p.source_id = e.source_id
              LEFT JOIN read_csv('{truth / "stays.csv.gz"}') AS t ON t.stay_id = e.stay_id
              ORDER BY e.stay_id, e.event_time NULLS FIRST, e.event_type, e.event_text, e.source_table, e.source_id
            ) TO '{tmp}' ({extract_cohort.copy_options(events_path)})""")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="where hosp/, icu/ and truth/ are written")
    parser.add_argument("--n-stays", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regime", choices=REGIMES, default="realistic",
                        help="realistic: the demo's volume and mix (~340 events per stay in the 48 h window, "
                             "infusions in inputevents, results in comments, charting delays); small: the light "
                             "regime of sample_train.csv (~46 events per stay)")
    parser.add_argument("--events-per-stay", type=float, default=None,
                        help=f"mean background events generated per stay (default: {REALISTIC_EVENTS_PER_STAY:g} "
                             f"realistic, {SMALL_EVENTS_PER_STAY:g} small; about 3/4 fall in the 48 h window)")
    parser.add_argument("--extract", type=Path, metavar="FILE",
                        help="then run extract_cohort.py (query.sql, its defaults) on --out-dir and write the "
                             "event table to FILE (.csv, .csv.gz or .parquet), with the truth columns "
                             "planted_risk and true_probability as in sample_train.csv")
    parser.add_argument("--make-sample", action="store_true",
                        help=f"remake {SAMPLE_PATH.name} ({SAMPLE_STAYS} stays, seed {SAMPLE_SEED}) exactly")
    args = parser.parse_args(argv)
    if args.make_sample:
        stats = make_sample()
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
        return stats
    if args.out_dir is None:
        parser.error("give --out-dir DIR (or --make-sample)")
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        for sub in ("hosp", "icu", "truth"):
            shutil.rmtree(args.out_dir / sub, ignore_errors=True)
    stats = generate(args.out_dir, args.n_stays, args.seed, args.events_per_stay, regime=args.regime)
    print(f"Wrote synthetic MIMIC-IV to {args.out_dir}: " + " ".join(f"{k}={v}" for k, v in stats.items()))
    if args.extract:
        import extract_cohort
        counts = extract_cohort.extract_cohort(args.extract, args.out_dir, progress=False)
        attach_truth(args.extract, args.out_dir)
        print(f"Wrote the event table {args.extract}: {extract_cohort.format_counts(counts)}")
    return stats


if __name__ == "__main__":
    main()
