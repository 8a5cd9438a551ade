"""
Synthetic MIMIC-IV: tables with the demo's file names, columns and types, for any number of ICU stays,
with planted, clinically plausible mortality risk whose truth is written beside them.

    python synthetic_mimic.py --out-dir /tmp/synth --n-stays 6000 --extract /tmp/synth/events.parquet
    python synthetic_mimic.py --out-dir /tmp/synth --n-stays 20000 --regime small   # the light regime
    python synthetic_mimic.py --out-dir /tmp/synth --n-stays 6000 --vitals --extract /tmp/synth/events.parquet
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

The truth: in-hospital death is drawn from a true probability that is logistic in age and in what the
table shows, so the AUROC of the true probability against the labels is the ceiling any model can reach.
truth/stays.csv.gz holds each stay's true probability, label and risk factors (factor_<name>, 0/1);
truth/planted_rows.csv.gz names every source row that carries planted risk by (source_table, source_id)
exactly as query.sql reports them (the `planted_risk` column of the event table). Nothing of MIMIC is read
at run time.

small: a latent severity makes some of five planted factors more likely, each placed inside the default
48-hour window [intime, intime + 48 h) and known at its end, and only in stays with the factor:
    lactate    Lab: Lactate > 4 mmol/L;  renal  Lab: Creatinine > 3 mg/dL (and often Dialysis - CRRT)
    pressor    Prescription: Norepinephrine / Vasopressin IV DRIP
    ventilated Procedure: Intubation, Invasive Ventilation
    bacteremia Microbiology: BLOOD CULTURE positive (S. aureus, E. coli, K. pneumoniae) with susceptibilities
    log-odds = INTERCEPT (-4) + 0.035 (age - 65) + sum over present factors of RISK_FACTORS' log-odds ratio.

realistic: no item gives the answer away. Every stay, sick or not, gets a clinical course of the items that
carry risk, drawn from a latent severity z ~ N(0, 1) (draw_courses): lactate (normal; raised once and not
rechecked; raised and clearing; raised and not clearing; rising late), creatinine (stable normal; stable
high in chronic kidney disease and dialysis; rising in acute kidney injury; falling in recovery), CRRT
(end-stage kidney disease, severe injury), vasopressor infusions of 4 agents (a brief low dose weaned off;
shock, stable or weaned; shock escalating, half with a second agent), blood cultures with a pathogen
(treated: antibiotics from the draw or within 4 h of the report; untreated: none until >= 6 h after it)
and antibiotic orders (empiric, prophylactic), invasive ventilation (intubated before or in the ICU, short
with an Extubation task, or prolonged). Values overlap: non-pattern stays have high lactate, high
creatinine, vasopressors, positive cultures and ventilation too; lactate, creatinine and antibiotics are
left out of the background draws, so every such row belongs to a course. z never enters the truth: it only
makes the patterns co-occur. The truth reads the course rows that query.sql keeps at the default 48 h
prediction time, timed as it times them (results at storetime, prescriptions at starttime, ICU rows by
known_at), computed before any row is written, so it is exactly a function of the extracted table
(tests/test_synthetic.py recomputes it from the table with pandas). Five patterns (PATTERNS):
    lactate     lactate not clearing: >= 2 results, the last > 2.0 mmol/L and >= 90% of the first
                (persistent hyperlactatemia; < 10% clearance predicts death in shock and sepsis)
    renal       acute kidney injury (KDIGO): a later creatinine >= the first + 0.3 mg/dL or >= 1.5x the first
                (values in tenths, as charted); a stably high (chronic) value is not one
    pressor     escalating vasopressor support: a second agent shown, or an agent's last rate >= 1.5x its
                first (refractory shock); a stable, weaned or brief low dose is not one
    bacteremia  a pathogen in a blood culture with no antibiotic started before its first report + 6 h
                (each hour of delay in effective antibiotics raises mortality in septic shock)
    ventilated  Invasive Ventilation shown and no Extubation shown: still ventilated at 48 h
with recency weights w = 2 ** (-h / 24) for lactate, renal and pressor, h the hours from the latest
evidence (the last lactate; the latest creatinine meeting the criterion; the latest vasopressor row) to the
prediction time (truth columns hours_<name>), so a sign from the last hours weighs about twice one 24 h old:
    log-odds = -3.35 + 0.035 (age - 65) + 2.2 w_lactate [lactate] + 1.5 w_renal [renal]
               + 2.2 w_pressor [pressor] + 2.4 [bacteremia] + 1.2 [ventilated] + 0.6 [lactate and pressor]
(the last term: septic shock, Sepsis-3: vasopressors and lactate > 2 despite resuscitation). At 8,500
generated stays: ~15-16% of cohort stays die, ceiling AUROC ~0.86-0.87. The planted rows of a stay with a
pattern are the shown rows that make it: its lactates; its first creatinine and those meeting the
criterion; its vasopressor rows; its positive culture's rows; its Intubation and Invasive Ventilation.
The truth holds for the default window (--observation-hours 48, no look-back).

--vitals (realistic regime only; OFF by default, and off every file is byte for byte what it was before the option
existed, so today's realistic figures stay reproducible) also writes icu/chartevents (MIMIC-IV's columns: the
vital-sign and GCS items of extract_cohort.VITAL_RULES) and icu/outputevents (the demo's columns: urine, drains,
gastric, stool), their d_items rows, and four physiology patterns in the truth; --extract then extracts the `vital`
and `output` kinds too. Rates and values: synthetic_vocab.json's `vitals` (the MEDS demo's chartevents of 20
subjects: per item rows per hour of ICU stay, value quantiles, GCS score shares) and `outputs` (the demo's
outputevents), tested in tests/test_synthetic.py (rates within 25%, quantiles within 10% of the 5th-95th range).
Items are charted in groups (heart rate, respiratory rate and SpO2 together; a blood pressure's systolic,
diastolic and mean; GCS eye, motor and verbal) at regular intervals and stored together a median 17 minutes
later (the demo's outputevents delays, up to hours, none negative for chartevents: MEDS has no storetime), some
after the prediction time. Values come from organ-system states
(circulation, respiration, neurology, renal, metabolic) drawn from the same latent severity z as the courses, so
they co-occur with the other patterns without being a function of them: a stay level, a slow random course, and
what the stay's courses imply (a hypotension before its first vasopressor and, in refractory shock, under it;
hypoxaemia for 5 h before most intubations in the ICU; brief deep desaturations in any stay; sedation while
ventilated: GCS verbal "No Response-ETT" and the eye and motor scores of intubated patients; oliguria in acute and
end-stage kidney disease and in shock), read through each item's demo quantiles. Urine: a catheter (Foley, charted
about hourly) in most stays, voids in the others. Each stay weighs WEIGHT_KG = 80 kg (the patientweight the regime
writes in inputevents; the event table shows no weight, so the truth uses one weight for every stay). The truth
reads the rows query.sql keeps at 48 h (storetime in [intime, prediction time); every value inside the items'
bounds) and, for chartevents, the 2-hour bins it writes with its default --vital-bin-hours 2 (each bin's last
charting with its min and max, known at the bin's latest storetime), so it is a function of the default extracted
table (tests/test_synthetic.py recomputes it with pandas). Four more patterns (VITAL_PATTERNS):
    hypotension  mean pressure (ABP, NIBP or ART BP mean) below 65 mmHg throughout three 2-hour bins (each bin's
                 highest value < 65) known at or after the first vasopressor row shown: hypotension despite
                 vasopressors (refractory shock; SOFA cardiovascular 3-4)
    hypoxaemia   SpO2 below 88% throughout two consecutive 2-hour bins (each bin's highest < 88)
    coma         the last complete GCS shown (eye, motor and verbal charted together, each its bin's last) <= 8; an
                 intubated verbal response ("No Response-ETT") makes the total 15, as mimic-code's gcs.sql does
                 (sedation, not coma)
    oliguria     urine (mimic-code's urine items) charted in (t - 24 h, t] below 0.3 mL/kg/h x 80 kg x 24 h
                 = 576 mL, for a urine charting t at least 24 h after the stay's first urine charting shown (KDIGO
                 stage 3 by urine output; SAPS II's < 500 mL/day). The criterion of < 0.5 mL/kg/h over 6 h (KDIGO
                 stage 1) holds in the first 48 h of 51 of the demo's 74 stays of >= 48 h at 80 kg (deaths 18%
                 vs 13%): too common and too weak a sign to plant; < 0.3 over 24 h holds in 16 (44% vs 9%)
    log-odds += 1.0 [hypotension] + 0.9 [hypoxaemia] + 1.5 [coma] + 1.1 [oliguria], intercept -4.1 instead of
    -3.35 (REALISTIC_INTERCEPT_VITALS), so that ~15% of cohort stays still die
(orders of magnitude of the scores' weights: SAPS II gives 11 of its points, ~1.1 log-odds at a typical score,
to urine < 0.5 L/day and 13-26 to GCS < 9; APACHE II 0.146 log-odds per point, 7-12 points for GCS 8-3). At 2,000
generated stays: ceiling AUROC ~0.90, ~15% deaths (see docs/design.md for the measured figures). The planted rows
of a stay with a pattern are the rows the table shows for it: the mean-pressure bins' shown chartings, the SpO2
bins' shown chartings, the three GCS components of the last assessment, and the urine rows of the low 24-hour
spans. With --vitals, truth/planted_rows.csv.gz also names each row's stay_id: query.sql's source_id of a
chartevents or outputevents row, itemid:charttime, can be another stay's too (attach_truth joins on it).
Departures from the demo: SpO2 is below 88% in ~3.5% of readings (the demo's 20 subjects: 0.4%, a handful of
readings), the price of desaturations common enough that no single SpO2 statistic gives hypoxaemia away; GCS verbal
"No Response-ETT" is ~33% of verbal responses (demo 37%); outputevents' GU irrigant volumes (227488/227489) are not
generated.

Everything is vectorised with numpy and written with pyarrow.
"""
import argparse
import gzip
import json
import re
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

# ----------------------------------------------------------------------------- the small regime's truth model
# (the realistic regime's: PATTERNS and what follows it, below; both use AGE_PER_YEAR)
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

    def __init__(self, out_dir: Path, columns=None):
        self.out_dir = Path(out_dir)
        self.columns = COLUMNS if columns is None else columns
        self.parts = {name: [] for name in self.columns}
        self.sinks = {}

    def add(self, table, n, **columns):
        if n:
            self.parts[table].append((n, columns))

    def flush(self):
        for table, parts in self.parts.items():
            if not parts:
                continue
            names = self.columns[table].split(",")
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
                names = self.columns[table].split(",")
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
             regime: str = "realistic", chunk_stays: int = 2000, vitals: bool = False) -> dict:
    """Write synthetic MIMIC-IV tables (hosp/, icu/) and the truth (truth/) under out_dir.

    regime "realistic" (default) draws from synthetic_vocab.json and writes events chunk by chunk
    (chunk_stays stays at a time, so memory stays bounded); "small" is the light regime of
    sample_train.csv (~46 events per stay, embedded dictionaries). vitals (realistic only, off by default):
    also icu/chartevents and icu/outputevents, with the physiology patterns in the truth (see the docstring);
    without it every file is what it was before --vitals existed."""
    if n_stays < 1:
        raise ValueError(f"--n-stays must be >= 1, got {n_stays}")
    if regime not in REGIMES:
        raise ValueError(f"--regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    if vitals and regime != "realistic":
        raise ValueError("--vitals needs --regime realistic")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    w = TableWriter(out_dir, {**COLUMNS, **VITAL_COLUMNS} if vitals else COLUMNS)
    vocab = load_vocab() if regime == "realistic" else None  # draws nothing: the random streams are unchanged
    s = draw_stays(rng, n_stays, w, regime, SimpleNamespace(seed=seed, vocab=vocab) if vitals else None)
    planted = []  # (source_table, source_id array, factor[, stay_id array])
    next_ids = IdCounter()
    if regime == "small":
        small_events(w, rng, s, next_ids, planted, events_per_stay_mean or SMALL_EVENTS_PER_STAY)
        small_dictionaries(w)
    else:
        scale = (events_per_stay_mean or REALISTIC_EVENTS_PER_STAY) / REALISTIC_EVENTS_PER_STAY
        for start in range(0, s.n_stays, chunk_stays):
            chunk = np.arange(start, min(start + chunk_stays, s.n_stays))
            realistic_events(w, rng, s, chunk, next_ids, vocab, scale)
            w.flush()
        write_courses(w, rng, s, next_ids, planted, vocab)
        if vitals:
            write_vitals(w, s, planted)
        realistic_dictionaries(w, vocab, vitals)
    w.close()
    return write_truth(out_dir, s, planted, with_stay_ids=vitals)


def draw_stays(rng, n_stays: int, w, regime: str = "small", vitals=None) -> SimpleNamespace:
    """Patients, admissions and ICU stays with their truth and label (small: planted factors drawn from a
    latent severity; realistic: clinical courses, see draw_courses; vitals: SimpleNamespace(seed, vocab) for
    --vitals), written to w."""
    p = draw_people(rng, n_stays)
    if regime == "small":
        truth = small_truth(rng, p)
        keep_alive(p, truth)
        p.intime, p.los_h = draw_timing(rng, p.admittime)
    else:
        p.intime, p.los_h = draw_timing(rng, p.admittime)
        truth = realistic_truth(rng, p, vitals)
        keep_alive(p, truth)
    return write_stays(w, rng, p, truth)


def draw_people(rng, n_stays: int) -> SimpleNamespace:
    """Patients and the admission time and age of each stay (one admission per stay; ~1/6 of patients
    have several)."""
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
    return SimpleNamespace(n_patients=n_patients, patient_of_stay=patient_of_stay, subject_id=subject_id,
                           anchor_year=anchor_year, anchor_age=anchor_age, gender=gender, admittime=admittime,
                           age=age)


def draw_timing(rng, admittime):
    """ICU admission (within 30 h of the hospital admission) and length of stay in hours (~75% past 48 h)."""
    intime = admittime + (rng.random(len(admittime)) * 30 * HOUR).astype(np.int64)
    los_h = np.exp(rng.normal(np.log(80), 0.7, len(admittime))).clip(4, 40 * 24)
    return intime, los_h


def small_truth(rng, p) -> SimpleNamespace:
    """The small regime's truth: planted factors drawn from a latent severity, logistic in them and age."""
    n_stays = len(p.age)
    severity = rng.normal(0, 1, n_stays)
    factors = {name: rng.random(n_stays) < sigmoid(a + b * severity) for name, (a, b, _) in RISK_FACTORS.items()}
    # ~1% of stays have nothing charted in the window: the cohort must keep them as one empty row
    quiet = rng.random(n_stays) < 0.01
    for present in factors.values():
        present &= ~quiet
    logit = INTERCEPT + AGE_PER_YEAR * (p.age - 65) + sum(RISK_FACTORS[f][2] * factors[f] for f in factors)
    true_probability = sigmoid(logit)
    died = rng.random(n_stays) < true_probability
    return SimpleNamespace(quiet=quiet, factors=factors, true_probability=true_probability, died=died,
                           columns={}, course=None)


def keep_alive(p, truth) -> None:
    """Nobody is admitted after dying: drops (in place) the admissions that follow a patient's first death.
    Whether a stay is kept depends on other stays' outcomes only, so every kept label stays Bernoulli(p)."""
    died = truth.died
    first_death = np.full(p.n_patients, np.iinfo(np.int64).max)
    np.minimum.at(first_death, p.patient_of_stay[died], p.admittime[died])
    keep = p.admittime <= first_death[p.patient_of_stay]
    for name in ("patient_of_stay", "admittime", "age", "intime", "los_h"):
        if hasattr(p, name):
            setattr(p, name, getattr(p, name)[keep])
    for name in ("quiet", "true_probability", "died"):
        setattr(truth, name, getattr(truth, name)[keep])
    truth.factors = {name: present[keep] for name, present in truth.factors.items()}
    truth.columns = {name: values[keep] for name, values in truth.columns.items()}
    if truth.course is not None:
        truth.course = keep_course_rows(truth.course, keep)
    if getattr(truth, "vitals", None) is not None:
        truth.vitals.keep = keep  # the vital signs are redrawn per chunk of the original stays, then filtered


def write_stays(w, rng, p, truth) -> SimpleNamespace:
    """Ids, discharge and death times of the kept stays; hosp/patients, hosp/admissions, icu/icustays."""
    n_stays, n_patients, patient_of_stay = len(p.age), p.n_patients, p.patient_of_stay
    subject_id, anchor_year, anchor_age, gender = p.subject_id, p.anchor_year, p.anchor_age, p.gender
    admittime, age, intime, los_h, died = p.admittime, p.age, p.intime, p.los_h, truth.died
    stay_subject = subject_id[patient_of_stay]
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
                           stay_id=stay_id, intime=intime, los_h=los_h, age=age, quiet=truth.quiet,
                           factors=truth.factors, columns=truth.columns, course=truth.course,
                           true_probability=truth.true_probability, died=died,
                           vitals=getattr(truth, "vitals", None))


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


def write_truth(out_dir: Path, s, planted, with_stay_ids=False) -> dict:
    """truth/stays.csv.gz (true probability, factors, label) and truth/planted_rows.csv.gz (with_stay_ids, as
    --vitals writes it: also each row's stay_id, since chartevents and outputevents rows are named by
    itemid:charttime, which other stays can share)."""
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    stays_truth = pa.table({"subject_id": s.stay_subject, "hadm_id": s.hadm_id, "stay_id": s.stay_id,
                            "patient_age": s.age.astype(float), "true_probability": s.true_probability,
                            "died": s.died.astype(np.int64),
                            **{f"factor_{name}": present.astype(np.int64) for name, present in s.factors.items()},
                            **s.columns})
    write_csv_gz(stays_truth, truth_dir / "stays.csv.gz")
    planted_table = pa.table({
        "source_table": pa.array(np.concatenate([np.full(len(i), t, dtype=object) for t, i, *_ in planted]), pa.string()),
        "source_id": pa.array(np.concatenate([np.asarray(i, dtype=object) for _, i, *_ in planted]), pa.string()),
        "factor": pa.array(np.concatenate([np.full(len(i), f, dtype=object) for _, i, f, *_ in planted]), pa.string()),
    })
    if with_stay_ids:
        planted_table = planted_table.append_column(
            "stay_id", pa.array(np.concatenate([np.asarray(r[3], dtype=np.int64) for r in planted]), pa.int64()))
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


def add_micro(w, rng, next_ids, subject, hadm, idx, off, intime, spec, organism=None, store=None):
    """Background specimens (spec = index into MICRO_BACKGROUND) or positive blood cultures (organism); with
    `store` (seconds, the realistic courses) also returns the specimen of each row."""
    n, store_given = len(idx), store
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
    if store is None:
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
    return ids if store_given is None else (ids, r)


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
# (d_items row, rate unit, rate range, weight): the vasopressor infusions of the courses (pressor_course)
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
    v.course_lab_items = np.array([index[LACTATE], index[CREATININE]])  # drawn by the courses only
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
    # antibiotics come from the courses only (the truth reads their timing); the courses order these rows
    drugs = np.array(v.rx_columns["drug"], dtype=object)
    weights = np.array([row[-1] for row in rx["orders"]], float)
    antibiotic = np.array([re.search(ANTIBIOTIC_RE, d or "") is not None for d in drugs])
    v.rx_p = zipf_weights(np.where(antibiotic, 0, weights))
    iv = np.array([r == "IV" for r in v.rx_columns["route"]])
    most_ordered = lambda drug: int(np.argmax(np.where((drugs == drug) & iv, weights, -1)))  # noqa: E731
    v.empiric_orders = np.array([most_ordered(d) for d, _ in EMPIRIC_ANTIBIOTICS])
    v.prophylaxis_order = most_ordered(PROPHYLAXIS_ANTIBIOTIC)

    v.inputs = raw["inputs"]["items"]
    antibiotic_inputs = {row[0] for row in raw["d_items"] if row[4] == "Antibiotics"}
    v.input_p = zipf_weights([0 if i["itemid"] in antibiotic_inputs else i["weight"] for i in v.inputs])
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


def add_lab_panels(ctx, stay, off, panel, planted_item=None, planted_value=None, times=None):
    """One specimen per entry (stay, offset, panel): its items share charttime, storetime and hadm_id; the
    course items (lactate, creatinine) are left out of the panels. With planted_item/planted_value:
    single-item specimens with those values, at times=(charttime, storetime) in seconds."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    if planted_item is None:
        size = v.panel_size[panel]
        spec = np.repeat(np.arange(len(panel)), size)
        item = v.panel_items[np.repeat(v.panel_start[panel], size) + np.arange(len(spec))
                             - np.repeat(np.cumsum(size) - size, size)]
        background = ~np.isin(item, v.course_lab_items)
        spec, item = spec[background], item[background]
    else:
        spec, item = np.arange(len(panel)), np.full(len(panel), v.lab_index[planted_item])
    n = len(spec)
    ids = ctx.next_ids("lab", n)
    if times is None:
        chart = minute_times(s.intime[stay], off)
        delay = np.where(rng.random(len(stay)) < 0.9, rng.gamma(2.0, 30.0, len(stay)), rng.uniform(60, 600, len(stay)))
        store = chart + (delay * 60).astype(np.int64)
        store -= store % 60
    else:
        chart, store = times
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


def add_realistic_prescriptions(ctx, stay, off, order=None):
    """Orders drawn from the vocabulary, or the given ones (vocabulary rows) starting at exactly `off`."""
    rng, v, s = ctx.rng, ctx.vocab, ctx.s
    n = len(stay)
    ids = ctx.next_ids("pharmacy", n)
    start = minute_times(s.intime[stay], off)
    if order is None:
        order = rng.choice(len(v.rx_p), size=n, p=v.rx_p)
        start = np.where(rng.random(n) < 0.6, start - start % HOUR, start)  # most orders start on the hour
    cols = v.rx_columns
    ctx.w.add("hosp/prescriptions", n, subject_id=s.stay_subject[stay], hadm_id=s.hadm_id[stay], pharmacy_id=ids,
              starttime=stamp(start), stoptime=stamp(start + rng.integers(6, 96, n) * HOUR),
              drug_type=vocab_strings(cols["drug_type"], order), drug=vocab_strings(cols["drug"], order),
              dose_val_rx=vocab_strings(cols["dose_val_rx"], order),
              dose_unit_rx=vocab_strings(cols["dose_unit_rx"], order), route=vocab_strings(cols["route"], order),
              doses_per_24_hrs=rng.integers(1, 5, n))


def add_input_orders(ctx, stay, off, items, item, segments):
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
    store_delay_min = np.maximum(0, np.round(from_quantiles(rng, ctx.vocab.input_store_delay, n)))
    store = start + (store_delay_min * 60).astype(np.int64)
    rateuom = per_item(items, "rateuom")
    has_rate = (rateuom != None)[it] & (rng.random(n) < per_item(items, "rate_share")[it])  # noqa: E711
    rate = from_quantiles(rng, per_item(items, "rate", [0.0] * 21)[it], discrete=True)
    amount = from_quantiles(rng, per_item(items, "amount")[it], discrete=True)
    amount = np.where(has_rate & (per_item(items, "amountuom") == "ml")[it], rate * minutes / 60, amount)
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


# ----------------------------------------------------------------------------- the realistic regime's truth
# Every stay gets a clinical course of the items that carry risk (lactate, creatinine, vasopressor infusions,
# blood cultures and antibiotics, ventilation, CRRT), drawn from a latent severity for sick and well stays
# alike; these items come from the courses only (the background draws none of them), so every such row in
# the table belongs to a course. The truth is computed from the course rows that the query keeps at the
# 48 h prediction time, timed as it times them (known_at), before any row is written; see the docstring.
PATTERNS = {  # pattern: log-odds ratio of in-hospital death (x its recency weight, for those in RECENCY)
    "lactate": 2.2,      # lactate that does not clear
    "renal": 1.5,        # acute kidney injury: creatinine rising (KDIGO)
    "pressor": 2.2,      # escalating vasopressor support
    "bacteremia": 2.4,   # a pathogen in a blood culture without timely antibiotics
    "ventilated": 1.2,   # still on invasive ventilation at the prediction time
}
RECENCY = ("lactate", "renal", "pressor")  # weighted by 2 ** (-hours since the latest evidence / half-life)
RECENCY_HALF_LIFE_H = 24.0
SHOCK_INTERACTION = 0.6  # lactate x pressor: septic shock (Sepsis-3: vasopressors and lactate > 2)
REALISTIC_INTERCEPT = -3.35
TREATMENT_DELAY_H = 6.0  # a positive blood culture counts as treated if an antibiotic started before result + 6 h
EXTUBATION = 227194
EXTUBATION_ITEM = (EXTUBATION, "Extubation", "Extubation", "procedureevents", "1-Intubation/Extubation", "None",
                   "Processes")
# systemic antibacterials: left out of the background prescriptions and inputs; the courses order them
ANTIBIOTIC_RE = (r"(?i)vancomycin|cef|ceph|piperacillin|penem|floxacin|metronidazole|azithromycin|clarithromycin|"
                 r"erythromycin|ampicillin|amoxicillin|sulfameth|bactrim|clindamycin|doxycycline|tobramycin|"
                 r"gentamicin|tigecycline|linezolid|daptomycin|nafcillin|oxacillin|aztreonam|rifaximin|zosyn|unasyn")
EMPIRIC_ANTIBIOTICS = [("Vancomycin", 0.35), ("CefePIME", 0.2), ("Piperacillin-Tazobactam", 0.15),
                       ("Meropenem", 0.1), ("CeftriaXONE", 0.1), ("MetRONIDAZOLE (FLagyl)", 0.05),
                       ("Ciprofloxacin IV", 0.03), ("Levofloxacin", 0.02)]
PROPHYLAXIS_ANTIBIOTIC = "CefazoLIN"
# vasopressor starting rates: (median, log sd), in PRESSOR_INFUSIONS order (vasopressin is added at a fixed rate)
PRESSOR_START = [(0.06, 0.6), (0.5, 0.5), (0.035, 0.1), (0.03, 0.5)]


def course_times(rng, counts, start_h, end_h, gap_h, skew=1.0):
    """Stay index and sorted times (hours from intime) of counts[i] results per stay, spread over
    [start_h, end_h) (denser early where skew > 1) and at least gap_h apart (later ones may spill past end_h)."""
    stay = np.repeat(np.arange(len(counts)), counts)
    skew = np.broadcast_to(skew, len(counts))[stay]
    t = start_h + rng.random(len(stay)) ** skew * (end_h - start_h)
    t = t[np.lexsort((t, stay))]
    rank = np.arange(len(stay)) - np.repeat(np.cumsum(counts) - counts, counts)
    shift = stay * 1e5  # keeps the running maximum inside each stay
    return stay, np.maximum.accumulate(t - gap_h * rank + shift) - shift + gap_h * rank


def group_rank(group):
    """0, 1, 2, ... within runs of equal values of a sorted group array."""
    group = np.asarray(group)
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1] if len(group) else np.zeros(0, int)
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def round_tenths(x):
    return np.round(x * 10) / 10


def two_figures(x):
    """x at two significant figures, as the same double that the query's text parses back to."""
    digits = 1 - np.floor(np.log10(x))
    return np.round(x * 10.0 ** digits) / 10.0 ** digits


def lactate_course(rng, z, active):
    """Lactate results: normal; raised once and not rechecked (after a seizure, surgery, beta-agonists);
    raised at admission and clearing (falling with a half-life of 4-40 h, often still raised at the last
    check); raised and not clearing (flat or rising); or normal then rising (a new deterioration)."""
    n = len(z)
    high = active & (rng.random(n) < sigmoid(-1.0 + 1.0 * z))
    stuck = high & (rng.random(n) < sigmoid(-0.6 + 0.8 * z))
    late = active & ~high & (rng.random(n) < sigmoid(-3.2 + 0.9 * z))
    once = active & ~high & ~late & (rng.random(n) < 0.15)
    base = np.where(once, rng.uniform(2.1, 6.0, n), np.exp(rng.normal(np.log(1.2), 0.25, n)))
    start = np.exp(rng.normal(np.log(np.where(stuck, 3.0, 5.0)), 0.45, n)).clip(2.1, 15)
    half_life, growth = np.exp(rng.normal(np.log(16.0), 0.6, n)), rng.uniform(-0.004, 0.012, n)
    onset, slope = rng.uniform(10, 40, n), rng.uniform(0.08, 0.3, n)
    counts = np.where(once, 1, rng.poisson(np.where(high, 3.0, np.where(late, 2.5, 1.6))) + 2 * high + late) * active
    stay, t = course_times(rng, counts, 0.0, 47.5, gap_h=1.0, skew=np.where(high, 1.3, 1.0))
    value = np.select([high[stay] & ~stuck[stay], stuck[stay], late[stay]],
                      [base[stay] + (start - base)[stay] * 0.5 ** (t / half_life[stay]),
                       start[stay] * np.exp(growth[stay] * t),
                       base[stay] + slope[stay] * np.maximum(t - onset[stay], 0)], base[stay])
    value = round_tenths(np.clip(value * np.exp(rng.normal(0, 0.07, len(t))), 0.3, 25))
    return SimpleNamespace(stay=stay, hours=t, value=value, delay_min=rng.integers(10, 51, len(t)))


def creatinine_course(rng, z, age, active):
    """Creatinine results: stable normal; stable high (chronic kidney disease, end-stage on dialysis); rising
    (acute kidney injury, onset before or during the stay); or falling (an injury recovering). CRRT: for
    half of the end-stage stays and some severe injuries, lowering the values after it starts."""
    n = len(z)
    esrd = active & (rng.random(n) < 0.035)
    ckd = active & ~esrd & (rng.random(n) < sigmoid(-2.3 + 0.03 * (age - 65)))
    aki = active & ~esrd & (rng.random(n) < sigmoid(-1.6 + 0.9 * z))
    recovering = active & ~esrd & ~aki & (rng.random(n) < 0.08)
    base = np.where(esrd, rng.uniform(4.5, 9, n),
                    np.where(ckd, rng.uniform(1.6, 4.0, n), np.exp(rng.normal(np.log(0.85), 0.25, n))))
    peak, onset, rise_h = rng.uniform(1.5, 3.5, n), rng.uniform(-24, 36, n), rng.uniform(24, 60, n)
    crrt = np.where(esrd & (rng.random(n) < 0.6), rng.uniform(0, 30, n),
                    np.where(aki & (peak > 2.4) & (rng.random(n) < 0.4), onset + rng.uniform(12, 36, n), np.nan))
    crrt = np.where(crrt > 46, np.nan, np.maximum(crrt, 0.25))
    counts = (1 + rng.poisson(4.5, n)) * active
    stay, t = course_times(rng, counts, 0.0, 47.5, gap_h=2.0)
    mult = np.select([aki[stay], recovering[stay]],
                     [1 + (peak - 1)[stay] * np.clip((t - onset[stay]) / rise_h[stay], 0, 1),
                      1 + (peak - 1)[stay] * 0.5 ** (t / 20)], 1.0)
    since = t - crrt[stay]
    dialysed = np.where(since > 0, 0.55 + 0.45 * 0.5 ** (np.where(since > 0, since, 0) / 8), 1.0)
    value = round_tenths(np.clip(base[stay] * mult * dialysed * np.exp(rng.normal(0, 0.025, len(t))), 0.2, 20))
    delay = np.clip(rng.gamma(2.0, 30.0, len(t)), 5, 110).astype(int)
    labs = SimpleNamespace(stay=stay, hours=t, value=value, delay_min=delay)
    on = np.flatnonzero(~np.isnan(crrt))
    end = np.where(aki[on], OBSERVATION_HOURS + rng.uniform(1, 72, len(on)), crrt[on] + rng.uniform(4, 30, len(on)))
    return labs, SimpleNamespace(stay=on, start=crrt[on], end=end)


def pressor_course(rng, z, active):
    """Vasopressor infusions, one order of consecutive rate segments (30-240 min) per agent: shock, the
    sicker escalating (rate x1.05-1.45 per segment, half with a second agent added) and the others stable or
    slowly weaned, often still running at the prediction time; or a brief low dose weaned off (x0.5-0.85).
    Vasopressin runs at a fixed 0.03-0.04 units/min."""
    n = len(z)
    shock = active & (rng.random(n) < sigmoid(-1.1 + 1.0 * z))
    escalate = shock & (rng.random(n) < sigmoid(-0.5 + 0.8 * z))
    brief = active & ~shock & (rng.random(n) < 0.10)
    main, added = np.flatnonzero(shock | brief), np.flatnonzero(escalate & (rng.random(n) < 0.5))
    agent_shock = rng.choice(4, len(main), p=(0.8, 0.08, 0.07, 0.05))  # PRESSOR_INFUSIONS order
    agent_brief = rng.choice(4, len(main), p=(0.25, 0.5, 0.1, 0.15))
    main_agent = np.full(n, -1)
    main_agent[main] = np.where(shock[main], agent_shock, agent_brief)
    t0 = np.full(n, np.nan)
    t0[main] = np.where(shock[main], rng.uniform(0, 30, len(main)), rng.uniform(0, 20, len(main)))
    ongoing = shock & (escalate | (rng.random(n) < 0.5))
    stay = np.r_[main, added]
    agent = np.r_[main_agent[main], np.where(main_agent[added] == 2, 0, 2)]  # vasopressin added (norepi to it)
    start_h = np.r_[t0[main], t0[added] + rng.uniform(1, 6, len(added))]
    segments = np.r_[np.where(shock[main], np.minimum(2 + rng.poisson(np.where(escalate[main], 4, 6)), 14),
                              np.minimum(1 + rng.poisson(1.5, len(main)), 5)), 1 + rng.integers(0, 4, len(added))]
    median, sd = (np.array(PRESSOR_START)[agent, k] for k in (0, 1))
    low, high = (np.array([p[2][k] for p in PRESSOR_INFUSIONS])[agent] for k in (0, 1))
    # escalation starts low; a stable or weaned shock may have started (and stay) high
    median = median * np.r_[np.where(escalate[main], 0.7, np.where(shock[main], 1.6, 1.0)), np.ones(len(added))]
    r0 = np.where(agent == 2, rng.choice([0.03, 0.04], len(agent)), np.exp(rng.normal(np.log(median), sd)))
    # rate steps: 0 escalating, 1 stable or slowly weaned, 2 weaned off, 3 fixed (vasopressin)
    kind = np.where(agent == 2, 3, np.r_[np.where(escalate[main], 0, np.where(shock[main], 1, 2)),
                                         np.ones(len(added), int)])
    inf = np.repeat(np.arange(len(stay)), segments)
    k = group_rank(inf)
    log_step = np.select([kind[inf] == 0, kind[inf] == 1, kind[inf] == 2],
                         [np.log(rng.uniform(1.05, 1.45, len(inf))), rng.normal(-0.05, 0.12, len(inf)),
                          np.log(rng.uniform(0.5, 0.85, len(inf)))], 0.0) * (k > 0)
    cum = np.cumsum(log_step)
    cum -= np.repeat(cum[np.cumsum(segments) - segments] - log_step[np.cumsum(segments) - segments], segments)
    rate = two_figures(np.clip(r0[inf] * np.exp(cum), low[inf], high[inf]))
    # segments of 30-240 min; an ongoing infusion's segments stretched to run 1-24 h past the prediction time
    minutes = rng.integers(30, 241, len(inf)).astype(float)
    total = np.bincount(inf, weights=minutes, minlength=len(stay))
    needed = (OBSERVATION_HOURS + rng.uniform(1, 24, len(stay)) - start_h) * 60
    minutes = np.round(minutes * np.where(ongoing[stay], np.maximum(1, needed / total), 1)[inf]).astype(np.int64)
    offset_min = np.cumsum(minutes) - minutes
    offset_min -= np.repeat(offset_min[np.cumsum(segments) - segments], segments)
    return SimpleNamespace(stay=stay[inf], agent=agent[inf], infusion=inf, start_h=start_h[inf], offset_min=offset_min,
                           minutes=minutes, rate=rate, delay_min=rng.integers(0, 30, len(inf)))


def infection_course(rng, z, active):
    """Blood cultures and antibiotics. Suspected infection: empiric antibiotics (1-3 drugs, re-ordered every
    12-24 h). A pathogen in blood: cultures drawn in the first day, reported 20-30 h later; treated ones (1-3
    positive sets) had antibiotics from the draw or within 4 h of the report, untreated ones (30%, one set)
    none until 6-30 h after it, or none. Prophylaxis: cefazolin for a third of the others."""
    n = len(z)
    bact = active & (rng.random(n) < sigmoid(-1.9 + 0.8 * z))
    infected = active & (bact | (rng.random(n) < sigmoid(-0.2 + 0.6 * z)))
    untreated = bact & (rng.random(n) < 0.3)
    sets = np.where(untreated, 1, 1 + rng.binomial(2, 0.5, n)) * bact
    cstay = np.repeat(np.arange(n), sets)
    drawn0 = rng.uniform(0, 22, n)
    drawn = drawn0[cstay] + group_rank(cstay) * rng.uniform(4, 12, len(cstay))
    report_min = rng.integers(20 * 60, 30 * 60, len(cstay))
    result0 = np.full(n, np.nan)
    result0[bact] = drawn0[bact] + report_min[(np.cumsum(sets) - sets)[bact]] / 60
    cultures = SimpleNamespace(stay=cstay, hours=drawn, delay_min=report_min,
                               organism=rng.integers(0, len(BACTEREMIA_ORGANISMS), n)[cstay])
    prompt = np.where(rng.random(n) < 0.6, drawn0 + rng.uniform(0, 3, n), result0 + rng.uniform(0, 4, n))
    empiric = rng.uniform(-4, 30, n)
    first = np.select([untreated, bact, infected],
                      [np.where(rng.random(n) < 0.6, result0 + TREATMENT_DELAY_H + rng.uniform(0, 24, n), np.nan),
                       np.maximum(np.minimum(empiric, prompt), 0.1), empiric], np.nan)
    drugs = np.where(np.isnan(first), 0, 1 + rng.binomial(2, 0.4, n))
    dstay = np.repeat(np.arange(n), drugs)
    drug = rng.choice(len(EMPIRIC_ANTIBIOTICS), len(dstay), p=[w for _, w in EMPIRIC_ANTIBIOTICS])
    orders = 1 + rng.poisson(0.7, len(dstay))
    ostay, odrug = np.repeat(dstay, orders), np.repeat(drug, orders)
    ohours = np.repeat(first[dstay] + rng.uniform(0, 1, len(dstay)), orders) + \
        group_rank(np.repeat(np.arange(len(dstay)), orders)) * rng.uniform(12, 24, len(ostay))
    prophylaxis = active & ~infected & (rng.random(n) < 0.35)
    pstay = np.repeat(np.flatnonzero(prophylaxis), 1 + (rng.random(prophylaxis.sum()) < 0.5))
    phours = rng.uniform(0, 24, n)[pstay] + group_rank(pstay) * 8
    antibiotics = SimpleNamespace(stay=np.r_[ostay, pstay], drug=np.r_[odrug, np.full(len(pstay), -1)],
                                  hours=np.r_[ohours, phours])
    return cultures, antibiotics


def ventilation_course(rng, z, active):
    """Invasive ventilation: arriving intubated (from the OR or ED) or intubated in the ICU (an Intubation
    task); short (extubated 2-20 h later: an Extubation task) or prolonged (running past the prediction time)."""
    n = len(z)
    vent = active & (rng.random(n) < sigmoid(-0.7 + 0.9 * z))
    prolonged = vent & (rng.random(n) < sigmoid(-0.4 + 1.0 * z))
    in_icu = vent & (rng.random(n) < 0.45)
    intubated = np.where(in_icu, np.where(prolonged, rng.uniform(0, 40, n), rng.uniform(0, 20, n)), 0.0)
    start = intubated + rng.uniform(0.05, 0.5, n)
    end = np.where(prolonged, OBSERVATION_HOURS + rng.uniform(1, 96, n), start + rng.uniform(2, 20, n))
    v, i = np.flatnonzero(vent), np.flatnonzero(in_icu)
    x = np.flatnonzero(vent & (end < OBSERVATION_HOURS + 6))
    task = lambda m: rng.integers(1, 10, m) / 60  # noqa: E731  (a task lasts minutes)
    return SimpleNamespace(stay=np.r_[i, v, x], itemid=np.r_[np.full(len(i), INTUBATION), np.full(len(v), VENTILATION),
                                                            np.full(len(x), EXTUBATION)],
                           start=np.r_[intubated[i], start[v], end[x]],
                           end=np.r_[intubated[i] + task(len(i)), end[v], end[x] + task(len(x))])


def draw_courses(rng, z, age, active, intime) -> SimpleNamespace:
    """Every stay's course rows, per table, with their times in seconds exactly as they will be written."""
    at = lambda stay, hours: minute_times(intime[stay], hours)  # noqa: E731
    lactate, creatinine = lactate_course(rng, z, active), creatinine_course(rng, z, age, active)
    labs = SimpleNamespace(stay=np.r_[lactate.stay, creatinine[0].stay],
                           itemid=np.r_[np.full(len(lactate.stay), LACTATE),
                                        np.full(len(creatinine[0].stay), CREATININE)],
                           value=np.r_[lactate.value, creatinine[0].value])
    labs.chart = at(labs.stay, np.r_[lactate.hours, creatinine[0].hours])
    labs.store = labs.chart + 60 * np.r_[lactate.delay_min, creatinine[0].delay_min]

    pressor = pressor_course(rng, z, active)
    start = at(pressor.stay, pressor.start_h) + 60 * pressor.offset_min
    inputs = SimpleNamespace(stay=pressor.stay, agent=pressor.agent, infusion=pressor.infusion, rate=pressor.rate,
                             start=start, end=start + 60 * pressor.minutes, store=start + 60 * pressor.delay_min)

    cultures, antibiotics = infection_course(rng, z, active)
    micro = SimpleNamespace(stay=cultures.stay, organism=cultures.organism, hours=cultures.hours,
                            chart=at(cultures.stay, cultures.hours))
    micro.store = micro.chart + 60 * cultures.delay_min
    rx = SimpleNamespace(stay=antibiotics.stay, drug=antibiotics.drug, hours=antibiotics.hours,
                         start=at(antibiotics.stay, antibiotics.hours))

    vent, crrt = ventilation_course(rng, z, active), creatinine[1]
    stay = np.r_[vent.stay, crrt.stay]
    start_h, end_h = np.r_[vent.start, crrt.start], np.r_[vent.end, crrt.end]
    procs = SimpleNamespace(stay=stay, itemid=np.r_[vent.itemid, np.full(len(crrt.stay), CRRT)], hours=start_h,
                            start=at(stay, start_h))
    procs.end = procs.start + 60 * np.maximum(1, np.round((end_h - start_h) * 60)).astype(np.int64)
    procs.store = procs.end + 60 * rng.integers(0, 30, len(stay))
    return SimpleNamespace(labs=labs, inputs=inputs, micro=micro, rx=rx, procs=procs)


def visible(rows, intime, kind):
    """(kept, event_time) of course rows as query.sql keeps and times them at the default prediction time:
    results at storetime, prescriptions at starttime, ICU rows by known_at (charted before the prediction
    time, or still running at it)."""
    start_of_window, prediction = intime[rows.stay], intime[rows.stay] + int(OBSERVATION_HOURS * HOUR)
    if kind == "result":
        return (rows.store >= start_of_window) & (rows.store < prediction), rows.store
    if kind == "prescription":
        return (rows.start >= start_of_window) & (rows.start < prediction), rows.start
    kept = (rows.start >= start_of_window) & (rows.start < prediction) \
        & ((rows.store < prediction) | (rows.end > prediction))
    return kept, np.where(rows.store < prediction, np.maximum(rows.start, rows.store), rows.start)


def ordered(stay, time, mask, group=None):
    """Indices of the masked rows sorted by (group or stay, time); the group of each; and each group's first
    position, count and last position in that order."""
    idx = np.flatnonzero(mask)
    key = (stay if group is None else group)[idx]
    idx = idx[np.lexsort((time[idx], key))]
    groups, first, count = np.unique((stay if group is None else group)[idx], return_index=True, return_counts=True)
    return idx, groups, first, count, first + count - 1


def pattern_features(c, intime, n):
    """The five patterns (and the hours since each recency-weighted one was last seen) from the course rows
    the table shows; marks those rows in c.<table>.planted."""
    hours_before = lambda stay, t: (intime[stay] + int(OBSERVATION_HOURS * HOUR) - t) / HOUR  # noqa: E731
    flags = {name: np.zeros(n, bool) for name in PATTERNS}
    hours = {name: np.full(n, np.nan) for name in RECENCY}
    for rows in vars(c).values():
        rows.planted = np.full(len(rows.stay), "", dtype=object)
    kept, ev = visible(c.labs, intime, "result")
    tenths = np.round(c.labs.value * 10).astype(np.int64)
    # lactate that does not clear: >= 2 results, the last > 2.0 mmol/L and >= 90% of the first
    idx, stays, first, count, last = ordered(c.labs.stay, ev, kept & (c.labs.itemid == LACTATE))
    on = (count >= 2) & (tenths[idx[last]] > 20) & (10 * tenths[idx[last]] >= 9 * tenths[idx[first]])
    flags["lactate"][stays[on]] = True
    hours["lactate"][stays[on]] = hours_before(stays[on], ev[idx[last[on]]])
    c.labs.planted[idx[flags["lactate"][c.labs.stay[idx]]]] = "lactate"
    # acute kidney injury (KDIGO): a later creatinine >= the first + 0.3 mg/dL or >= 1.5 x the first
    idx, stays, first, count, last = ordered(c.labs.stay, ev, kept & (c.labs.itemid == CREATININE))
    baseline = np.repeat(tenths[idx[first]], count)
    rise = (group_rank(c.labs.stay[idx]) > 0) & ((tenths[idx] - baseline >= 3) | (2 * tenths[idx] >= 3 * baseline))
    latest = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(latest, c.labs.stay[idx[rise]], ev[idx[rise]])
    flags["renal"] = latest > np.iinfo(np.int64).min
    hours["renal"][flags["renal"]] = hours_before(np.flatnonzero(flags["renal"]), latest[flags["renal"]])
    baseline_row = np.repeat(flags["renal"][stays], count) & (group_rank(c.labs.stay[idx]) == 0)
    c.labs.planted[idx[rise | baseline_row]] = "renal"
    # escalating vasopressors: a second agent, or an agent's last rate >= 1.5 x its first
    kept, ev = visible(c.inputs, intime, "icu")
    idx, infusions, first, count, last = ordered(c.inputs.stay, ev, kept, group=c.inputs.infusion)
    up = c.inputs.rate[idx[last]] >= 1.5 * c.inputs.rate[idx[first]] - 1e-12
    agents = np.bincount(np.unique(c.inputs.stay[kept] * len(PRESSOR_INFUSIONS) + c.inputs.agent[kept])
                         // len(PRESSOR_INFUSIONS), minlength=n)
    rising = np.bincount(c.inputs.stay[idx[first]], weights=up.astype(float), minlength=n) > 0
    flags["pressor"] = (agents >= 2) | rising
    seen = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(seen, c.inputs.stay[kept], ev[kept])
    hours["pressor"][flags["pressor"]] = hours_before(np.flatnonzero(flags["pressor"]), seen[flags["pressor"]])
    c.inputs.planted[kept & flags["pressor"][c.inputs.stay]] = "pressor"
    # a pathogen in a blood culture, no antibiotic started before its first report + 6 h
    kept, ev = visible(c.micro, intime, "result")
    reported = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(reported, c.micro.stay[kept], ev[kept])
    rx_kept, rx_ev = visible(c.rx, intime, "prescription")
    on_time = rx_kept & (rx_ev < reported[c.rx.stay] + int(TREATMENT_DELAY_H * HOUR))
    flags["bacteremia"] = (reported < np.iinfo(np.int64).max) & (np.bincount(c.rx.stay[on_time], minlength=n) == 0)
    c.micro.planted[kept & flags["bacteremia"][c.micro.stay]] = "bacteremia"
    # still on invasive ventilation at the prediction time: ventilation shown, no extubation shown
    kept, ev = visible(c.procs, intime, "icu")
    shown = lambda itemid: np.bincount(c.procs.stay[kept & (c.procs.itemid == itemid)], minlength=n) > 0  # noqa: E731
    flags["ventilated"] = shown(VENTILATION) & ~shown(EXTUBATION)
    airway = np.isin(c.procs.itemid, [INTUBATION, VENTILATION])
    c.procs.planted[kept & flags["ventilated"][c.procs.stay] & airway] = "ventilated"
    return flags, hours


def realistic_truth(rng, p, vitals=None) -> SimpleNamespace:
    """Courses for every stay, the patterns the table shows at 48 h, the true probability and the label
    (vitals: SimpleNamespace(seed, vocab) for --vitals, which adds the physiology patterns)."""
    n = len(p.age)
    quiet = rng.random(n) < 0.01  # nothing charted in the window: the cohort keeps them as one empty row
    severity = rng.normal(0, 1, n)
    course = draw_courses(rng, severity, p.age, ~quiet, p.intime)
    flags, hours = pattern_features(course, p.intime, n)
    state = None
    if vitals is not None:
        state = vital_state(vitals.seed, vitals.vocab, severity, ~quiet, p.intime, p.los_h, course)
        flags.update(vital_flags(state))
    logit = (REALISTIC_INTERCEPT if vitals is None else REALISTIC_INTERCEPT_VITALS) + AGE_PER_YEAR * (p.age - 65) \
        + SHOCK_INTERACTION * (flags["lactate"] & flags["pressor"])
    for name, coefficient in PATTERNS.items():
        weight = 2.0 ** (-np.nan_to_num(hours[name]) / RECENCY_HALF_LIFE_H) if name in RECENCY else 1.0
        logit = logit + coefficient * flags[name] * weight
    if vitals is not None:
        for name, coefficient in VITAL_PATTERNS.items():
            logit = logit + coefficient * flags[name]
    true_probability = sigmoid(logit)
    died = rng.random(n) < true_probability
    return SimpleNamespace(quiet=quiet, factors=flags, true_probability=true_probability, died=died, course=course,
                           columns={f"hours_{name}": hours[name] for name in RECENCY}, vitals=state)


def keep_course_rows(course, keep) -> SimpleNamespace:
    """The course rows of the kept stays, their stay indices renumbered."""
    new_index = np.cumsum(keep) - 1
    out = SimpleNamespace()
    for table, rows in vars(course).items():
        mask = keep[rows.stay]
        kept = SimpleNamespace(**{name: values[mask] for name, values in vars(rows).items()})
        kept.stay = new_index[kept.stay]
        setattr(out, table, kept)
    return out


def write_courses(w, rng, s, next_ids, planted, vocab):
    """The course rows of the kept stays, every table; the rows that show a pattern go to `planted`."""
    ctx, c = SimpleNamespace(w=w, rng=rng, s=s, next_ids=next_ids, vocab=vocab), s.course

    def mark(table, ids, rows, which=slice(None)):
        for factor in PATTERNS:
            on = rows.planted[which] == factor
            planted.append((table, np.asarray(ids)[on].astype(str), factor, s.stay_id[rows.stay[which][on]]))

    for itemid in (LACTATE, CREATININE):
        m = c.labs.itemid == itemid
        ids = add_lab_panels(ctx, c.labs.stay[m], None, np.zeros(m.sum(), int), planted_item=itemid,
                             planted_value=c.labs.value[m], times=(c.labs.chart[m], c.labs.store[m]))
        mark("labevents", ids, c.labs, m)
    ids = add_pressor_rows(ctx, c.inputs)
    mark("inputevents", ids, c.inputs)
    ids = add_realistic_procedures(ctx, c.procs.stay, c.procs.hours, c.procs.itemid, c.procs.end, c.procs.store)
    mark("procedureevents", np.char.add(ids.astype(str), np.char.add(":", c.procs.itemid.astype(str))), c.procs)
    ids, culture = add_micro(w, rng, next_ids, s.stay_subject, s.hadm_id, c.micro.stay, c.micro.hours, s.intime,
                             None, organism=c.micro.organism, store=c.micro.store)
    mark("microbiologyevents", ids, c.micro, culture)
    order = np.where(c.rx.drug >= 0, vocab.empiric_orders[np.maximum(c.rx.drug, 0)], vocab.prophylaxis_order)
    add_realistic_prescriptions(ctx, c.rx.stay, c.rx.hours, order=order)


def add_pressor_rows(ctx, rows):
    """Vasopressor infusion rows (inputevents) with the course's times and rates; the segments of one infusion
    share a linkorderid. Returns each row's source_id as query.sql reports it ("orderid:itemid")."""
    rng, s = ctx.rng, ctx.s
    n = len(rows.stay)
    orderid = ctx.next_ids("order", n)
    first = np.r_[True, rows.infusion[1:] != rows.infusion[:-1]] if n else np.zeros(0, bool)
    last = np.r_[rows.infusion[1:] != rows.infusion[:-1], True] if n else np.zeros(0, bool)
    link = orderid[np.flatnonzero(first)][np.cumsum(first) - 1]
    minutes = (rows.end - rows.start) / 60
    itemid = np.array([p[0][0] for p in PRESSOR_INFUSIONS])[rows.agent]
    per_kg = np.array([p[1].endswith("/kg/min") for p in PRESSOR_INFUSIONS])[rows.agent]
    weight = 80.0
    amount = np.where(per_kg, rows.rate * weight * minutes / 1000, rows.rate * minutes)
    total = np.bincount(np.cumsum(first) - 1, weights=amount)[np.cumsum(first) - 1] if n else amount
    status = np.where(last, np.where(rng.random(n) < 0.9, 0, 1), 2)
    amountuom = strings([p[0][5] for p in PRESSOR_INFUSIONS], rows.agent)
    ctx.w.add("icu/inputevents", n, subject_id=s.stay_subject[rows.stay], hadm_id=s.hadm_id[rows.stay],
              stay_id=s.stay_id[rows.stay], caregiver_id=rng.integers(1000, 99999, n), starttime=stamp(rows.start),
              endtime=stamp(rows.end), storetime=stamp(rows.store), itemid=itemid, amount=amount, amountuom=amountuom,
              rate=rows.rate, rateuom=strings([p[1] for p in PRESSOR_INFUSIONS], rows.agent),
              orderid=orderid, linkorderid=link, ordercategoryname=strings(("01-Drips",), np.zeros(n, int)),
              secondaryordercategoryname=strings(("02-Fluids (Crystalloids)",), np.zeros(n, int)),
              ordercomponenttypedescription=strings(("Main order parameter",), np.zeros(n, int)),
              ordercategorydescription=strings(("Continuous Med",), np.zeros(n, int)),
              patientweight=np.full(n, weight), totalamount=np.round(total, 1), totalamountuom=amountuom,
              isopenbag=np.zeros(n, np.int64), continueinnextdept=np.zeros(n, np.int64),
              statusdescription=strings(("FinishedRunning", "Stopped", "ChangeDose/Rate"), status),
              originalamount=amount, originalrate=rows.rate)
    return np.char.add(np.char.add(orderid.astype(str), ":"), itemid.astype(str))


def realistic_dictionaries(w, vocab, vitals=False):
    items = vocab.lab_items
    w.add("hosp/d_labitems", len(items), itemid=vocab.lab_ids, label=pa.array([i["label"] for i in items]),
          fluid=pa.array([i["fluid"] for i in items], pa.string()),
          category=pa.array([i["category"] for i in items], pa.string()))
    d_items = [tuple(r) for r in vocab.raw["d_items"]]
    known = {r[0] for r in d_items}
    d_items += [r for r in PLANTED_PROCEDURE_ITEMS + [EXTUBATION_ITEM] + [p[0] for p in PRESSOR_INFUSIONS]
                if r[0] not in known]
    if vitals:  # the vital-sign and output items
        d_items += [tuple(r) for r in vocab.raw["vitals"]["d_items"] + vocab.raw["outputs"]["d_items"]
                    if r[0] not in known]
    w.add("icu/d_items", len(d_items), **{name: pa.array([row[k] for row in d_items])
                                          for k, name in enumerate(COLUMNS["icu/d_items"].split(",")[:7])})


# ----------------------------------------------------------------------------- the vital signs (--vitals)
# icu/chartevents (mimic-code's vital-sign and GCS items, extract_cohort.VITAL_RULES) and icu/outputevents, at
# the rates and with the value distributions of synthetic_vocab.json's `vitals` and `outputs` (the MEDS demo's
# chartevents, the demo's outputevents). Each stay's physiology is a state per organ system on a 15-minute grid:
# a stay level drawn from the latent severity, a slow random course (an Ornstein-Uhlenbeck process) and what the
# stay's other courses imply (hypotension before and under vasopressors, hypoxaemia before an intubation, oliguria
# in acute kidney injury, end-stage kidney disease and shock). An item's value is its state at the charting,
# plus noise, read through the item's demo quantiles (a Gaussian copula), so the values keep the demo's
# distribution while sick and well stays overlap. The rows are drawn per chunk of VITAL_CHUNK_STAYS stays from
# their own random stream (seed, VITALS_STREAM, chunk): once for the truth, before the labels, and again,
# identically, when written; the other tables' random draws are those of a run without --vitals.
VITAL_COLUMNS = {
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,"
                       "warning",
    "icu/outputevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom",
}
VITALS_STREAM, VITAL_CHUNK_STAYS = 24, 2000
GRID_H = 0.25
VITAL_SPAN_H = OBSERVATION_HOURS + 6  # rows are drawn over [intime, intime + min(los, 54 h)), as the ICU tables
WEIGHT_KG = 80.0  # every stay's weight (the realistic regime's patientweight); the event table shows none
HEART_RATE, RESP_RATE, SPO2, RESP_RATE_TOTAL = 220045, 220210, 220277, 224690
NIBP, ABP, ART_BP = (220179, 220180, 220181), (220050, 220051, 220052), (225309, 225310, 225312)
MEAN_PRESSURE = (220052, 220181, 225312)
GCS_EYE, GCS_MOTOR, GCS_VERBAL = 220739, 223901, 223900
GCS_INTUBATED = "No Response-ETT"
FOLEY, VOID = 226559, 226560
# urine, as mimic-code's urine_output.sql; its GU irrigant pair (volume in, subtracted, and out) is not generated
URINE_ITEMS = (226559, 226560, 226561, 226584, 226563, 226564, 226565, 226567, 226557, 226558)
OUTPUTS_NOT_GENERATED = (227488, 227489)
# Items charted together (one charting time, storetime and shared measurement noise). A group is charted at its
# item's rate among the demo's stays that chart it, in a share of the stays equal to those stays' share of the
# demo's ICU hours (arterial lines more often in the sicker), the ventilator's rate while ventilated, GCS more often
# while ventilated (GCS_WHEN_VENTILATED); each item of a group at each charting with its own rate's share.
VITAL_GROUPS = {"monitor": (HEART_RATE, RESP_RATE, SPO2), "nibp": NIBP, "abp": ABP, "art_bp": ART_BP,
                "temperature_f": (223761,), "temperature_c": (223762,), "glucose_finger": (225664,),
                "glucose_serum": (220621,), "glucose_blood": (226537,), "gcs": (GCS_EYE, GCS_MOTOR, GCS_VERBAL),
                "vent_rate": (RESP_RATE_TOTAL,)}
# item: (organ system, its weight in the item's state, +1 if a worse state raises the value)
ITEM_STATE = {HEART_RATE: ("circulation", 0.55, 1), RESP_RATE: ("respiration", 0.6, 1),
              RESP_RATE_TOTAL: ("respiration", 0.5, 1), SPO2: ("respiration", 0.85, -1),
              **{i: ("circulation", 0.85, -1) for i in NIBP + ABP + ART_BP},
              223761: ("metabolic", 0.7, 1), 223762: ("metabolic", 0.7, 1), 225664: ("metabolic", 0.7, 1),
              220621: ("metabolic", 0.7, 1), 226537: ("metabolic", 0.7, 1),
              GCS_EYE: ("neurology", 0.85, -1), GCS_MOTOR: ("neurology", 0.85, -1), GCS_VERBAL: ("neurology", 0.85, -1)}
# the mean state where an item is charted in some stays only (arterial lines in the sicker, the ventilator's rate
# while ventilated), measured: the demo's quantiles of such an item are those of its own population
ITEM_OFFSET = {**{i: 0.28 for i in ABP}, RESP_RATE_TOTAL: 0.38}
# the share of an item's own noise that its charting shares with the others charted with it (one cuff reading);
# the GCS components are assessed together but each has much of its own
CHARTING_NOISE_SHARE = {"gcs": 0.3}
URINE_STATE_WEIGHT = 0.85
# organ system: (weight of the stay level, its correlation with the latent severity, weight of the slow course,
# its time constant in hours); then the course effects below. SYSTEM_NORM: the mean and sd of the resulting state
# over 6,000 stays' hours, which standardise it.
SYSTEMS = {"circulation": (0.6, 0.5, 0.65, 6.0), "respiration": (0.6, 0.45, 0.65, 6.0),
           "neurology": (0.85, 0.45, 0.45, 12.0), "renal": (0.65, 0.45, 0.6, 8.0), "metabolic": (0.6, 0.25, 0.7, 8.0)}
SYSTEM_NORM = {"circulation": (0.11, 0.963), "respiration": (0.08, 0.975), "neurology": (0.0, 0.97),
               "renal": (0.265, 1.04), "metabolic": (0.0, 0.927)}
HYPOTENSION_BEFORE_PRESSOR = (2.0, 1.3)  # (hours before the first vasopressor, added state): the hypotension treated
ON_PRESSOR = 0.2  # added while a vasopressor runs (pressure held near its target)
# refractory shock, in some of the stays whose support escalates: (logit intercept, severity slope, added state)
REFRACTORY = (-0.6, 0.8, 1.0)
HYPOXAEMIA_BEFORE_INTUBATION = (5.0, 4.0, 0.6)  # (hours, added state, share of the intubations in the ICU)
ON_VENTILATOR = 0.3
AKI_OLIGURIA, ESRD_OLIGURIA, SHOCK_OLIGURIA = 0.8, 1.8, 0.4
# brief desaturations (a mucus plug, suctioning, turning), deep and in any stay, read in the SpO2 alone: episodes
# per stay (Poisson mean), shortest and longest in hours, added state
DESATURATION = (0.9, 1.0, 3.0, 5.0)
FOLEY_SHARE_LOGIT = (2.6, 0.8)  # a urinary catheter: logit intercept, severity slope (else voiding)
VOIDING_WITH_FOLEY = 0.2  # stays with a catheter that also void (before it, or after it is removed)
GCS_WHEN_VENTILATED = 2.2  # GCS is charted this many times as often in a ventilated (sedated) patient
ABP_SLOPE = 1.0  # arterial line: severity slope on the logit of its share
VENT_RATE_PER_HOUR = 0.55  # the ventilator's total rate, charted while ventilated (its overall rate is the demo's)
VITAL_PATTERNS = {  # pattern: log-odds ratio of in-hospital death
    "hypotension": 1.0,  # mean pressure < 65 mmHg throughout three 2-h bins known after a vasopressor was shown
    "hypoxaemia": 0.9,   # SpO2 < 88% throughout two consecutive 2-h bins
    "coma": 1.5,         # the last complete GCS <= 8 (an intubated verbal response counts as 15, mimic-code)
    "oliguria": 1.1,     # urine < 0.3 mL/kg/h over 24 h (< 576 mL at 80 kg)
}
HYPOTENSION_MMHG, HYPOTENSION_BINS = 65, 3
HYPOXAEMIA_PERCENT = 88
COMA_GCS = 8
OLIGURIA_ML_PER_KG_H, OLIGURIA_HOURS = 0.3, 24
VITAL_BIN_H = 2.0  # extract_cohort's default --vital-bin-hours: the truth reads the bins it writes
REALISTIC_INTERCEPT_VITALS = -4.1


def vital_vocab(raw) -> SimpleNamespace:
    """synthetic_vocab.json's `vitals` and `outputs` as arrays: items in a fixed order, each with its quantile
    row (on the vocabulary's probability grid) or, for the GCS components, its score weights."""
    vitals, outputs = raw["vitals"], raw["outputs"]
    v = SimpleNamespace(p_grid=np.array(vitals["probabilities"]), out_p_grid=np.array(outputs["probabilities"]))
    v.items = {int(k): item for k, item in vitals["items"].items()}
    v.quantiles = {i: np.array(item["quantiles"]) for i, item in v.items.items() if "quantiles" in item}
    v.store_delay = np.array(outputs["store_delay_minutes"])
    v.outputs = [o for o in outputs["items"] if o["itemid"] not in OUTPUTS_NOT_GENERATED]
    v.output_index = {o["itemid"]: k for k, o in enumerate(v.outputs)}
    return v


def ou_course(rng, m, steps, tau_h):
    """m independent stationary Ornstein-Uhlenbeck courses (mean 0, sd 1, time constant tau_h) on the grid."""
    a = np.exp(-GRID_H / tau_h)
    x = np.empty((m, steps))
    x[:, 0] = rng.standard_normal(m)
    noise = rng.standard_normal((m, steps)) * np.sqrt(1 - a * a)
    for k in range(1, steps):
        x[:, k] = a * x[:, k - 1] + noise[:, k]
    return x


def on_grid(m, steps, stay, start_h, end_h, value=1.0):
    """Sum over intervals [start_h, end_h) of stay `stay` (chunk-local index) of `value`, on the grid."""
    out = np.zeros((m, steps + 1))
    lo = np.clip(np.ceil(np.asarray(start_h) / GRID_H), 0, steps).astype(int)
    hi = np.clip(np.ceil(np.asarray(end_h) / GRID_H), 0, steps).astype(int)
    np.add.at(out, (stay, lo), value)
    np.add.at(out, (stay, hi), -np.asarray(value, float) * np.ones(len(lo)))
    return np.cumsum(out, axis=1)[:, :steps]


def vital_state(seed, vocab, z, active, intime, los_h, course) -> SimpleNamespace:
    """What the vital signs of every stay are drawn from: its severity and what its other courses show (per
    stay, by the original stay index, before keep_alive), and the pressor times the truth compares with."""
    n = len(z)
    hours = lambda rows, t: (t - intime[rows.stay]) / HOUR  # noqa: E731
    inputs, procs, labs = course.inputs, course.procs, course.labs
    kept, ev = visible(inputs, intime, "icu")
    first_pressor_seen = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_pressor_seen, inputs.stay[kept], ev[kept])
    # escalating support: an infusion's last rate >= 1.5 x its first, or a second agent
    first = np.r_[True, inputs.infusion[1:] != inputs.infusion[:-1]] if len(inputs.stay) else np.zeros(0, bool)
    last = np.r_[inputs.infusion[1:] != inputs.infusion[:-1], True] if len(inputs.stay) else np.zeros(0, bool)
    up = inputs.rate[last] >= 1.5 * inputs.rate[first]
    escalating = np.bincount(inputs.stay[last][up], minlength=n) > 0
    escalating |= np.bincount(np.unique(inputs.stay * 4 + inputs.agent) // 4, minlength=n) >= 2
    first_pressor_h = np.full(n, np.inf)
    np.minimum.at(first_pressor_h, inputs.stay, hours(inputs, inputs.start))
    vent = procs.itemid == VENTILATION
    intubation = procs.itemid == INTUBATION
    intubated_h = np.full(n, np.inf)
    np.minimum.at(intubated_h, procs.stay[intubation], hours(procs, procs.start)[intubation])
    creat = labs.itemid == CREATININE
    order = np.flatnonzero(creat)[np.lexsort((labs.chart[creat], labs.stay[creat]))]
    first_value = np.full(n, np.nan)
    stays_with, earliest = np.unique(labs.stay[order], return_index=True)
    first_value[stays_with] = labs.value[order][earliest]
    highest = np.zeros(n)
    np.maximum.at(highest, labs.stay[order], labs.value[order])
    aki = (highest >= 1.5 * first_value) | (highest >= first_value + 0.3)
    esrd = first_value >= 4.5
    return SimpleNamespace(
        seed=seed, vocab=vital_vocab(vocab.raw), n=n, z=z, active=active, intime=intime, los_h=los_h,
        first_pressor_seen=first_pressor_seen, first_pressor_h=first_pressor_h, escalating=escalating,
        pressor=SimpleNamespace(stay=inputs.stay, start=hours(inputs, inputs.start), end=hours(inputs, inputs.end)),
        vent=SimpleNamespace(stay=procs.stay[vent], start=hours(procs, procs.start)[vent],
                             end=hours(procs, procs.end)[vent]),
        intubated_h=intubated_h, aki=aki, esrd=esrd, keep=np.ones(n, bool))


def regular_times(rng, rate, span_h, shape=3.0, start_h=None):
    """Stay index (into rate) and times in hours of a charting process per stay: gaps gamma(shape) with mean
    1/rate (more regular than Poisson), a random phase, over [start_h, start_h + span_h)."""
    rate, span_h = np.asarray(rate, float), np.asarray(span_h, float)
    start_h = np.zeros(len(rate)) if start_h is None else np.asarray(start_h, float)
    on = (rate > 0) & (span_h > 0)
    most = np.where(on, np.ceil(rate * span_h * 1.5 + 6 * np.sqrt(rate * span_h + 1) + 2), 0).astype(int)
    stay = np.repeat(np.arange(len(rate)), most)
    gaps = rng.gamma(shape, 1.0 / (shape * rate[stay])) if len(stay) else np.zeros(0)
    first = np.cumsum(most) - most
    is_first = np.zeros(len(stay), bool)
    is_first[first[most > 0]] = True
    # the phase, so that the process is stationary: the start falls in a gap drawn length-biased (gamma(shape + 1)),
    # at a uniform point of it
    gaps[is_first] = rng.gamma(shape + 1, 1.0 / (shape * rate[stay[is_first]])) * rng.random(is_first.sum())
    t = np.cumsum(gaps)
    t -= np.repeat(t[first[most > 0]] - gaps[first[most > 0]], most[most > 0])
    keep = t < span_h[stay]
    return stay[keep], (start_h[stay] + t)[keep]


def three_figures(x):
    """x at 3 significant figures (0 stays 0), as query.sql's fmt_num shows it."""
    x = np.asarray(x, float)
    digits = 2 - np.floor(np.log10(np.where(x > 0, x, 1.0)))
    return np.where(x > 0, np.round(x * 10.0 ** digits) / 10.0 ** digits, x)


def minute_unique(stay, minutes):
    """Rows (sorted by stay, minute) whose minute differs from the previous row's of the same stay."""
    order = np.lexsort((minutes, stay))
    stay, minutes = stay[order], minutes[order]
    new = np.r_[True, (stay[1:] != stay[:-1]) | (minutes[1:] != minutes[:-1])] if len(stay) else np.zeros(0, bool)
    return order[new]


def quantile_value(p_grid, quantiles, u):
    return np.interp(u, p_grid, quantiles)


def organ_states(st, rng, lo_stay, hi_stay, normalise=True):
    """The organ systems' states of stays [lo_stay, hi_stay) on the grid (standardised by SYSTEM_NORM), and
    where a vasopressor runs, where the stay is ventilated and where its SpO2 briefly drops."""
    m = hi_stay - lo_stay
    steps = int(round(VITAL_SPAN_H / GRID_H))
    z = st.z[lo_stay:hi_stay]
    local = lambda rows: (rows.stay >= lo_stay) & (rows.stay < hi_stay)  # noqa: E731
    pressor_on = local(st.pressor)
    running = on_grid(m, steps, st.pressor.stay[pressor_on] - lo_stay, st.pressor.start[pressor_on],
                      st.pressor.end[pressor_on]) > 0
    first_pressor = st.first_pressor_h[lo_stay:hi_stay]
    has_pressor = np.isfinite(first_pressor)
    before_pressor = on_grid(m, steps, np.flatnonzero(has_pressor),
                             first_pressor[has_pressor] - HYPOTENSION_BEFORE_PRESSOR[0], first_pressor[has_pressor])
    vent_on = local(st.vent)
    ventilated = on_grid(m, steps, st.vent.stay[vent_on] - lo_stay, st.vent.start[vent_on], st.vent.end[vent_on]) > 0
    intubated_h = st.intubated_h[lo_stay:hi_stay]
    has_intubation = np.isfinite(intubated_h) & (rng.random(m) < HYPOXAEMIA_BEFORE_INTUBATION[2])
    before_intubation = on_grid(m, steps, np.flatnonzero(has_intubation),
                                intubated_h[has_intubation] - HYPOXAEMIA_BEFORE_INTUBATION[0],
                                intubated_h[has_intubation])
    episodes = rng.poisson(DESATURATION[0], m) * st.active[lo_stay:hi_stay]
    episode_stay = np.repeat(np.arange(m), episodes)
    episode_start = rng.random(len(episode_stay)) * np.minimum(st.los_h[lo_stay:hi_stay], VITAL_SPAN_H)[episode_stay]
    desaturated = on_grid(m, steps, episode_stay, episode_start,
                          episode_start + rng.uniform(DESATURATION[1], DESATURATION[2], len(episode_stay))) > 0
    refractory = st.escalating[lo_stay:hi_stay] & (rng.random(m) < sigmoid(REFRACTORY[0] + REFRACTORY[1] * z))
    effects = {
        "circulation": running * (ON_PRESSOR + REFRACTORY[2] * refractory[:, None])
        + HYPOTENSION_BEFORE_PRESSOR[1] * before_pressor,
        "respiration": ON_VENTILATOR * ventilated + HYPOXAEMIA_BEFORE_INTUBATION[1] * before_intubation,
        "neurology": 0.0,
        "renal": (AKI_OLIGURIA * st.aki[lo_stay:hi_stay] + ESRD_OLIGURIA * st.esrd[lo_stay:hi_stay])[:, None]
        + SHOCK_OLIGURIA * running,
        "metabolic": 0.0,
    }
    state = {}
    for name, (level_w, corr, course_w, tau) in SYSTEMS.items():
        level = corr * z + np.sqrt(1 - corr ** 2) * rng.standard_normal(m)
        raw = level_w * level[:, None] + course_w * ou_course(rng, m, steps, tau) + effects[name]
        mean, sd = SYSTEM_NORM[name] if normalise else (0.0, 1.0)
        state[name] = (raw - mean) / sd
    return state, running, ventilated, desaturated


def vital_rows(st, k) -> SimpleNamespace:
    """The chartevents and outputevents rows of chunk k (original stays [k * VITAL_CHUNK_STAYS, ...)), drawn from
    the chunk's own random stream: the same rows every time (the steps below draw from it in a fixed order)."""
    rng = np.random.default_rng([st.seed, VITALS_STREAM, k])
    lo_stay, hi_stay = k * VITAL_CHUNK_STAYS, min((k + 1) * VITAL_CHUNK_STAYS, st.n)
    active = st.active[lo_stay:hi_stay]
    state, running, ventilated, desaturated = organ_states(st, rng, lo_stay, hi_stay)
    chunk = SimpleNamespace(st=st, v=st.vocab, lo=lo_stay, m=hi_stay - lo_stay, steps=int(round(VITAL_SPAN_H / GRID_H)),
                            z=st.z[lo_stay:hi_stay], active=active, state=state, ventilated=ventilated,
                            desaturated=desaturated,
                            span=np.where(active, np.minimum(st.los_h[lo_stay:hi_stay], VITAL_SPAN_H), 0.0),
                            activity=rng.gamma(16.0, 1 / 16.0, hi_stay - lo_stay))  # how busy each stay's charting is
    return SimpleNamespace(lo=lo_stay, hi=hi_stay, chart=chartevent_rows(chunk, rng), out=outputevent_rows(chunk, rng))


def at_hours(grid, chunk, stay, hours):
    """A [stays, grid steps] array read at each row's stay and hour."""
    return grid[stay, np.clip((hours / GRID_H).astype(int), 0, chunk.steps - 1)]


def group_chartings(chunk, rng, group, items):
    """(stay, hours) of a charting group's chartings: at its rate in the stays that chart it, scaled by each stay's
    activity; the ventilator's rate only while ventilated, GCS more often while ventilated; one per minute."""
    v, m = chunk.v, chunk.m
    lead = max(items, key=lambda i: v.items[i]["rate_in_stays"])
    rate = v.items[lead]["rate_in_stays"]
    share = v.items[lead]["rate"] / rate  # the share of the demo's hours in stays that chart it
    vent_share = 0.18  # of the stays' hours (measured), so that GCS keeps its overall rate
    if group == "vent_rate":
        stay, hours = regular_times(rng, np.full(m, VENT_RATE_PER_HOUR) * chunk.activity, chunk.span)
        on = at_hours(chunk.ventilated, chunk, stay, hours)
        stay, hours = stay[on], hours[on]
    elif group == "gcs":
        boost = GCS_WHEN_VENTILATED / (1 - vent_share + vent_share * GCS_WHEN_VENTILATED)
        stay, hours = regular_times(rng, np.full(m, rate * boost) * chunk.activity * chunk.active, chunk.span)
        keep = at_hours(chunk.ventilated, chunk, stay, hours) | (rng.random(len(stay)) < 1 / GCS_WHEN_VENTILATED)
        stay, hours = stay[keep], hours[keep]
    else:
        if group == "abp":
            has = rng.random(m) < sigmoid(np.log(share / (1 - share)) + ABP_SLOPE * chunk.z)
        else:
            has = rng.random(m) < share
        stay, hours = regular_times(rng, rate * chunk.activity * has, chunk.span)
    pick_rows = minute_unique(stay, minute_times(chunk.st.intime[stay + chunk.lo], hours) // 60)  # one per charttime
    return stay[pick_rows], hours[pick_rows], rate


def item_values(chunk, rng, item, group, stay, hours, noise):
    """(value, ett) of an item at its chartings: its organ system's state plus noise (partly the charting's own,
    shared by its items), read through the demo's value quantiles; GCS components as scores (intubated stays
    from their own score shares; the verbal one then "No Response-ETT", flagged by ett)."""
    v = chunk.v
    system, weight, direction = ITEM_STATE[item]
    shared = CHARTING_NOISE_SHARE.get(group, 0.85)
    own = np.sqrt(1 - weight ** 2) * (shared * noise + np.sqrt(1 - shared ** 2) * rng.standard_normal(len(stay)))
    latent = weight * (at_hours(chunk.state[system], chunk, stay, hours) - ITEM_OFFSET.get(item, 0.0)) + own
    if item == SPO2:  # a brief desaturation reads in the SpO2 alone
        latent += weight * DESATURATION[3] * at_hours(chunk.desaturated, chunk, stay, hours)
    ett = np.zeros(len(stay), bool)
    if item in (GCS_EYE, GCS_MOTOR, GCS_VERBAL):
        intubated = at_hours(chunk.ventilated, chunk, stay, hours)
        u = sigmoid(-1.702 * latent)  # ~ the normal CDF: a worse state, a lower score
        value = np.zeros(len(stay))
        for on, key in ((~intubated, "scores"), (intubated, "scores_intubated")):
            weights = np.array(v.items[item][key], float)
            if weights.sum() == 0:
                continue
            cdf = np.cumsum(weights) / weights.sum()
            value[on] = 1 + np.minimum(np.searchsorted(cdf, u[on], side="right"), len(cdf) - 1)
        if item == GCS_VERBAL:
            ett = intubated
            value[ett] = v.items[item]["intubated_valuenum"]
        return value, ett
    value = quantile_value(v.p_grid, v.quantiles[item], sigmoid(1.702 * direction * latent))
    d = v.items[item]["decimals"]
    return np.round(value * 10.0 ** d) / 10.0 ** d, ett


def chartevent_rows(chunk, rng) -> SimpleNamespace:
    """Per charting group its chartings, then one row per item charted at each, stored together a delay later."""
    v = chunk.v
    rows = {key: [] for key in ("stay", "itemid", "hours", "group_charting", "value", "ett")}
    charting_base = 0
    for group, items in VITAL_GROUPS.items():
        stay, hours, rate = group_chartings(chunk, rng, group, items)
        n_chartings = len(stay)
        noise = rng.standard_normal(n_chartings)  # the charting's own noise, shared by its items (one cuff reading)
        for item in items:
            present = rng.random(n_chartings) < min(1.0, v.items[item]["rate_in_stays"] / rate)
            if group == "vent_rate":
                present[:] = True
            value, ett = item_values(chunk, rng, item, group, stay[present], hours[present], noise[present])
            rows["stay"].append(stay[present])
            rows["itemid"].append(np.full(int(present.sum()), item))
            rows["hours"].append(hours[present])
            rows["group_charting"].append(charting_base + np.flatnonzero(present))
            rows["value"].append(value)
            rows["ett"].append(ett)
        charting_base += n_chartings
    chart = SimpleNamespace(**{key: np.concatenate(parts) for key, parts in rows.items()})
    # a charting's items are stored together, a delay after it (the demo's outputevents delays, none negative)
    delay_min = np.maximum(0, quantile_value(v.out_p_grid, v.store_delay, rng.random(charting_base)))
    chart.stay_index = chart.stay + chunk.lo
    chart.chart = minute_times(chunk.st.intime[chart.stay_index], chart.hours)
    chart.store = chart.chart + (np.round(delay_min[chart.group_charting]) * 60).astype(np.int64)
    chart.caregiver = rng.integers(10000, 99999, charting_base)[chart.group_charting]
    return chart


def outputevent_rows(chunk, rng) -> SimpleNamespace:
    """Urine from the renal state (a catheter charted about hourly, or voids), and the other outputs at the demo's
    rates and volumes; whole mL at three significant figures, stored a delay later."""
    v, m, active = chunk.v, chunk.m, chunk.active
    foley = active & (rng.random(m) < sigmoid(FOLEY_SHARE_LOGIT[0] + FOLEY_SHARE_LOGIT[1] * chunk.z))
    voids = active & (~foley | (rng.random(m) < VOIDING_WITH_FOLEY))
    parts = []
    for itemid, has in ((FOLEY, foley), (VOID, voids)):
        o = v.outputs[v.output_index[itemid]]
        stay, hours = regular_times(rng, o["rate_in_stays"] * chunk.activity * has, chunk.span,
                                    shape=4.0 if itemid == FOLEY else 2.0)
        latent = URINE_STATE_WEIGHT * at_hours(chunk.state["renal"], chunk, stay, hours) \
            + np.sqrt(1 - URINE_STATE_WEIGHT ** 2) * rng.standard_normal(len(stay))
        parts.append((stay, hours, np.full(len(stay), itemid),
                      quantile_value(v.out_p_grid, np.array(o["quantiles"]), sigmoid(-1.702 * latent))))
    for o in v.outputs:
        if o["itemid"] in (FOLEY, VOID):
            continue
        has = active & (rng.random(m) < o["rate"] / o["rate_in_stays"])  # its share of the demo's hours
        stay, hours = regular_times(rng, o["rate_in_stays"] * chunk.activity * has, chunk.span, shape=1.5)
        parts.append((stay, hours, np.full(len(stay), o["itemid"]),
                      quantile_value(v.out_p_grid, np.array(o["quantiles"]), rng.random(len(stay)))))
    stay, hours, itemid, value = (np.concatenate(x) for x in zip(*parts))
    pick_rows = minute_unique(stay * 1_000_000 + itemid, minute_times(chunk.st.intime[stay + chunk.lo], hours) // 60)
    stay, hours, itemid, value = stay[pick_rows], hours[pick_rows], itemid[pick_rows], value[pick_rows]
    out = SimpleNamespace(stay=stay, stay_index=stay + chunk.lo, itemid=itemid,
                          value=three_figures(np.round(value)))  # whole mL, at most 3 significant figures
    out.chart = minute_times(chunk.st.intime[out.stay_index], hours)
    delay = np.round(quantile_value(v.out_p_grid, v.store_delay, rng.random(len(stay))))
    out.store = out.chart + (delay * 60).astype(np.int64)
    out.caregiver = rng.integers(10000, 99999, len(stay))
    return out


def bins_of(stay, key, chart, store, value, prediction):
    """The 2-hour bins query.sql writes (per stay, key = item or item group, bin counted back from the prediction
    time): for rows sorted by (stay, key, bin, charttime), each bin's first position, last position (the charting
    shown), min and max value and the latest storetime (when the bin is known)."""
    bin_number = (prediction - chart) // int(VITAL_BIN_H * HOUR)
    order = np.lexsort((chart, bin_number, key, stay))
    group = np.c_[stay[order], key[order], bin_number[order]]
    new = np.r_[True, np.any(group[1:] != group[:-1], axis=1)] if len(order) else np.zeros(0, bool)
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(order) - 1] if len(first) else first
    with np.errstate(invalid="ignore"):
        low = np.minimum.reduceat(value[order], first) if len(first) else np.zeros(0)
        high = np.maximum.reduceat(value[order], first) if len(first) else np.zeros(0)
    known = np.maximum.reduceat(store[order], first) if len(first) else np.zeros(0, np.int64)
    return SimpleNamespace(order=order, first=first, last=last, stay=stay[order][first], key=key[order][first],
                           bin=bin_number[order][first], low=low, high=high, known=known)


def vital_patterns(st, rows) -> tuple[dict, dict]:
    """The four physiology patterns of the chunk's stays, from the rows query.sql keeps at the default prediction
    time (storetime in [intime, intime + 48 h); every drawn value is inside the items' bounds) and, for chartevents,
    the 2-hour bins it writes (--vital-bin-hours 2: each bin's last charting, min and max, known at its latest
    storetime). Returns per-stay flags (chunk-local) and, per table, each row's pattern ("" if none)."""
    m = rows.hi - rows.lo
    c, o = rows.chart, rows.out
    intime = st.intime[c.stay_index]
    prediction = intime + int(OBSERVATION_HOURS * HOUR)
    kept = (c.store >= intime) & (c.store < prediction)
    flags = {name: np.zeros(m, bool) for name in VITAL_PATTERNS}
    marks = {"chartevents": np.full(len(c.stay), "", dtype=object), "outputevents": np.full(len(o.stay), "", dtype=object)}

    # hypotension despite vasopressors: >= 2 bins of a mean pressure whose highest value is < 65 mmHg (low for the
    # whole 2 hours), known after a vasopressor was shown
    at = np.flatnonzero(kept & np.isin(c.itemid, MEAN_PRESSURE))
    b = bins_of(c.stay[at], c.itemid[at], c.chart[at], c.store[at], c.value[at], prediction[at])
    low = (b.high < HYPOTENSION_MMHG) & (b.known >= st.first_pressor_seen[b.stay + rows.lo])
    distinct = np.unique(b.stay[low] * 10_000 + b.bin[low])
    flags["hypotension"] = np.bincount(distinct // 10_000, minlength=m) >= HYPOTENSION_BINS
    shown = at[b.order[b.last]]
    marks["chartevents"][shown[low & flags["hypotension"][b.stay]]] = "hypotension"

    # hypoxaemia: SpO2 < 88% throughout two consecutive bins (each bin's highest)
    at = np.flatnonzero(kept & (c.itemid == SPO2))
    b = bins_of(c.stay[at], c.itemid[at], c.chart[at], c.store[at], c.value[at], prediction[at])
    low = b.high < HYPOXAEMIA_PERCENT
    key = b.stay.astype(np.int64) * 1000 + b.bin
    low_keys = key[low]
    paired = low & (np.isin(key + 1, low_keys) | np.isin(key - 1, low_keys))
    flags["hypoxaemia"][b.stay[paired]] = True
    marks["chartevents"][at[b.order[b.last]][paired]] = "hypoxaemia"

    # coma: the last complete GCS shown (eye, motor and verbal charted together, each its bin's last) <= 8, with
    # an intubated verbal response ("No Response-ETT") counting the total as 15, as mimic-code's gcs.sql does
    at = np.flatnonzero(kept & np.isin(c.itemid, (GCS_EYE, GCS_MOTOR, GCS_VERBAL)))
    b = bins_of(c.stay[at], c.itemid[at], c.chart[at], c.store[at], c.value[at], prediction[at])
    shown = at[b.order[b.last]]
    order = np.lexsort((c.itemid[shown], c.chart[shown], c.stay[shown]))
    shown = shown[order]
    same = np.c_[c.stay[shown], c.chart[shown]]
    new = np.r_[True, np.any(same[1:] != same[:-1], axis=1)] if len(shown) else np.zeros(0, bool)
    first = np.flatnonzero(new)
    size = np.diff(np.r_[first, len(shown)])
    complete = first[size == 3]
    if len(complete):
        total = c.value[shown[complete]] + c.value[shown[complete + 1]] + c.value[shown[complete + 2]]
        total = np.where(c.ett[shown[complete]] | c.ett[shown[complete + 1]] | c.ett[shown[complete + 2]], 15, total)
        stay_of = c.stay[shown[complete]]
        latest = np.r_[stay_of[1:] != stay_of[:-1], True]  # sorted by (stay, charttime): the last per stay
        coma = latest & (total <= COMA_GCS)
        flags["coma"][stay_of[coma]] = True
        for offset in range(3):
            marks["chartevents"][shown[complete[coma] + offset]] = "coma"

    # oliguria: urine (mimic-code's urine items) charted in (t - 24 h, t] totals < 0.3 mL/kg/h x 80 kg x 24 h, for
    # a urine charting t at least 24 h after the stay's first urine charting shown
    o_intime = st.intime[o.stay_index]
    at = np.flatnonzero((o.store >= o_intime) & (o.store < o_intime + int(OBSERVATION_HOURS * HOUR))
                        & np.isin(o.itemid, URINE_ITEMS))
    at = at[np.lexsort((o.chart[at], o.stay[at]))]
    stay, t, volume = o.stay[at], o.chart[at], o.value[at]
    cum = np.r_[0.0, np.cumsum(volume)]
    key = stay.astype(np.int64) * 10 ** 11 + (t - EPOCH_2100)
    window = int(OLIGURIA_HOURS * HOUR)
    start = np.searchsorted(key, key - window, side="right")  # the first charting after t - 24 h
    end = np.searchsorted(key, key, side="right")  # and every charting at t
    first_of_stay = np.searchsorted(stay, stay, side="left")
    covered = t - window >= t[first_of_stay] if len(t) else np.zeros(0, bool)
    low = covered & (cum[end] - cum[start] < OLIGURIA_ML_PER_KG_H * WEIGHT_KG * OLIGURIA_HOURS)
    flags["oliguria"][stay[low]] = True
    inside = np.zeros(len(t) + 1, int)
    np.add.at(inside, start[low], 1)
    np.add.at(inside, end[low], -1)
    marks["outputevents"][at[np.cumsum(inside)[:-1] > 0]] = "oliguria"
    return flags, marks


def vital_flags(st) -> dict:
    """The physiology patterns of every stay (original indices), chunk by chunk; the rows are not kept."""
    flags = {name: np.zeros(st.n, bool) for name in VITAL_PATTERNS}
    for k in range(-(-st.n // VITAL_CHUNK_STAYS)):
        rows = vital_rows(st, k)
        chunk_flags, _ = vital_patterns(st, rows)
        for name in VITAL_PATTERNS:
            flags[name][rows.lo:rows.hi] = chunk_flags[name]
    return flags


def source_times(seconds) -> np.ndarray:
    """charttime as query.sql casts it into source_id ("2150-01-01 10:00:00")."""
    return np.char.replace(np.datetime_as_string(stamp(seconds), unit="s"), "T", " ")


def write_vitals(w, s, planted):
    """icu/chartevents and icu/outputevents of the kept stays, chunk by chunk (the rows drawn for the truth, drawn
    again); the rows that show a pattern go to `planted` with query.sql's source_id, itemid:charttime."""
    st = s.vitals
    v = st.vocab
    new_index = np.cumsum(st.keep) - 1
    gcs_texts = {i: v.items[i]["texts"] for i in (GCS_EYE, GCS_MOTOR, GCS_VERBAL)}
    for k in range(-(-st.n // VITAL_CHUNK_STAYS)):
        rows = vital_rows(st, k)
        _, marks = vital_patterns(st, rows)
        for table, r in (("chartevents", rows.chart), ("outputevents", rows.out)):
            keep = np.flatnonzero(st.keep[r.stay_index])
            keep = keep[np.lexsort((r.itemid[keep], r.chart[keep], r.stay[keep]))]  # by stay, then time
            stay = new_index[r.stay_index[keep]]
            itemid, chart = r.itemid[keep], r.chart[keep]
            source_id = np.char.add(np.char.add(itemid.astype(str), ":"), source_times(chart))
            for factor in VITAL_PATTERNS:
                on = marks[table][keep] == factor
                if on.any():
                    planted.append((table, source_id[on], factor, s.stay_id[stay[on]]))
            n = len(stay)
            common = dict(subject_id=s.stay_subject[stay], hadm_id=s.hadm_id[stay], stay_id=s.stay_id[stay],
                          caregiver_id=r.caregiver[keep], charttime=stamp(chart), storetime=stamp(r.store[keep]),
                          itemid=itemid)
            value = r.value[keep]
            if table == "outputevents":
                w.add("icu/outputevents", n, **common, value=value,
                      valueuom=strings([o["unit"] for o in v.outputs],
                                       np.array([v.output_index[i] for i in itemid], dtype=np.int64)))
                continue
            ett = r.ett[keep]
            text = np.empty(n, dtype=object)
            for item in np.unique(itemid):
                at = itemid == item
                if item in gcs_texts:
                    words = np.array(gcs_texts[item] + [GCS_INTUBATED], dtype=object)
                    text[at] = words[np.where(ett[at], len(words) - 1, value[at].astype(int) - 1)]
                else:
                    text[at] = np.char.mod(f"%.{v.items[item]['decimals']}f", value[at])
            units = [v.items[i]["unit"] for i in v.items]
            unit_of = {i: j for j, i in enumerate(v.items)}
            unit_index = np.array([unit_of[i] for i in itemid], dtype=np.int64)
            w.add("icu/chartevents", n, **common, value=pa.array(text, pa.string()), valuenum=value,
                  valueuom=strings([u or "" for u in units], unit_index,
                                   mask=np.array([u is None for u in units])[unit_index]),
                  warning=np.zeros(n, np.int64))
        w.flush()


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
    with gzip.open(truth / "planted_rows.csv.gz", "rt") as f:  # --vitals: rows named by stay too
        by_stay = "stay_id" in f.readline().strip().split(",")
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
              LEFT JOIN (SELECT DISTINCT source_table, source_id{", CAST(stay_id AS BIGINT) AS stay_id" if by_stay else ""}
                         FROM read_csv('{truth / "planted_rows.csv.gz"}', all_varchar = true)) AS p
                ON p.source_table = e.source_table AND p.source_id = e.source_id
                   {"AND p.stay_id = e.stay_id" if by_stay else ""}
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
    parser.add_argument("--vitals", action="store_true",
                        help="realistic regime: also write icu/chartevents (vital signs, GCS) and "
                             "icu/outputevents (urine, drains) at the demo's rates and value distributions, with "
                             "physiology patterns in the truth (hypotension despite vasopressors, hypoxaemia, "
                             "coma, oliguria); off, every file is what it was without the option")
    parser.add_argument("--extract", type=Path, metavar="FILE",
                        help="then run extract_cohort.py (query.sql, its defaults; with --vitals also the vital "
                             "and output kinds) on --out-dir and write the event table to FILE (.csv, .csv.gz or "
                             ".parquet), with the truth columns planted_risk and true_probability as in "
                             "sample_train.csv")
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
    if args.vitals and args.regime != "realistic":
        parser.error("--vitals needs --regime realistic")
    stats = generate(args.out_dir, args.n_stays, args.seed, args.events_per_stay, regime=args.regime,
                     vitals=args.vitals)
    print(f"Wrote synthetic MIMIC-IV to {args.out_dir}: " + " ".join(f"{k}={v}" for k, v in stats.items()))
    if args.extract:
        import extract_cohort
        kinds = extract_cohort.EVENT_KINDS_WITH_VITALS if args.vitals else extract_cohort.DEFAULT_EVENT_KINDS
        counts = extract_cohort.extract_cohort(args.extract, args.out_dir, progress=False, event_kinds=kinds)
        attach_truth(args.extract, args.out_dir)
        print(f"Wrote the event table {args.extract}: {extract_cohort.format_counts(counts)}")
    return stats


if __name__ == "__main__":
    main()
