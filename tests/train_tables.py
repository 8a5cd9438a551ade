"""Small synthetic event tables (docs/interfaces.md section 1) for the train.py tests, with a planted risk."""
import numpy as np
import pandas as pd

RISKY = ["Lab: Lactate 8.1 mmol/L (ref 0.5-2.0) abnormal", "Procedure: Invasive Ventilation",
         "Ingredient: Norepinephrine 0.1 mg"]
BENIGN = ["Lab: Creatinine 1.1 mg/dL (ref 0.5-1.2)", "Prescription: Heparin 5000 UNIT SC",
          "Procedure: Arterial Line", "Microbiology: URINE - NO GROWTH", "Prescription: Vancomycin 1000 mg IV",
          "Lab: White Blood Cells 7.5 K/uL (ref 4.0-11.0)", "Ingredient: Sodium Chloride 0.9% 250 mL"]
TYPE_OF = {"Lab": "lab", "Procedure": "procedure", "Ingredient": "ingredient", "Microbiology": "microbiology",
           "Prescription": "prescription"}


def make_event_table(n_patients=60, seed=0, max_events=20, empty_every=9):
    """Patients with 1-2 stays; a stay's risk grows with its number of risky events."""
    rng = np.random.default_rng(seed)
    rows, stay_id = [], 30000000
    for p in range(n_patients):
        subject_id = 10000000 + p
        for _ in range(rng.integers(1, 3)):
            stay_id += 1
            n = 0 if stay_id % empty_every == 0 else int(rng.integers(1, max_events + 1))
            risky = rng.random(n) < 0.25
            texts = [RISKY[rng.integers(len(RISKY))] if r else BENIGN[rng.integers(len(BENIGN))] for r in risky]
            p_death = 1 / (1 + np.exp(-(-2.0 + 1.5 * risky.sum())))
            static = dict(gender=rng.choice(["F", "M"]), race=rng.choice(["WHITE", "BLACK", "ASIAN"]),
                          marital_status=rng.choice(["MARRIED", "SINGLE", None]),
                          admission_type=rng.choice(["EW EMER.", "URGENT"]),
                          admission_location=rng.choice(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL"]),
                          insurance=rng.choice(["Medicare", "Other"]), first_careunit=rng.choice(["MICU", "SICU"]),
                          patient_age=float(rng.integers(20, 90)), mortality=int(rng.random() < p_death))
            base = pd.Timestamp("2150-01-01") + pd.Timedelta(days=int(rng.integers(0, 1000)))
            minutes = np.sort(rng.uniform(0, 48 * 60, n))[::-1]
            if n == 0:
                rows.append(dict(subject_id=subject_id, hadm_id=stay_id + 1, stay_id=stay_id, event_time=None,
                                 event_type=None, event_text=None, relative_time_to_final_event=None, **static))
            for text, m in zip(texts, minutes):
                rows.append(dict(subject_id=subject_id, hadm_id=stay_id + 1, stay_id=stay_id,
                                 event_time=(base + pd.Timedelta(minutes=48 * 60 - m)).strftime("%Y-%m-%d %H:%M:%S"),
                                 event_type=TYPE_OF[text.split(":")[0]], event_text=text,
                                 relative_time_to_final_event=round(float(m), 2), **static))
    return pd.DataFrame(rows)


def write_event_table(path, **kwargs):
    make_event_table(**kwargs).to_csv(path, index=False)
    return path


SMALL_MODEL_ARGS = ["--d-model", "32", "--n-layers", "2", "--n-heads", "4", "--d-ff", "64", "--pool-heads", "4",
                    "--batch-size", "16", "--bootstrap", "50", "--attention-every", "5", "--checkpoint-every", "4"]


def run_train(args, env_extra=None, timeout=300, launcher=None):
    """Run train.py as a user would (a fresh process, from the repository root)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    cmd = [sys.executable, *(launcher or []), str(repo / "train.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def cached_vectors(cache, keys):
    """What the cache holds for keys (uint64 [n, 2], train.text_keys): (found bool[n], float32 [n, dim] vectors,
    zeros where missing), read through EmbeddingCache.read as training reads them."""
    positions, cached = cache.read(keys)
    vectors = np.zeros((len(keys), cache.dim), dtype=np.float32)
    vectors[positions] = cached.float().numpy()
    found = np.zeros(len(keys), dtype=bool)
    found[positions] = True
    return found, vectors
