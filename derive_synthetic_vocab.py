"""
Derives synthetic_vocab.json, the dictionaries of synthetic_mimic.py's realistic regime, from the
MIMIC-IV Clinical Database Demo (open access, ODbL):

    python derive_synthetic_vocab.py --demo-dir ../shared/mimic-iv-demo      # rewrites synthetic_vocab.json

Only aggregates are kept: item ids and labels (MIMIC's public dictionaries), how often each item,
drug order or microbiology result occurs, the quantiles of its numeric values, lab panels (which items
are measured together), and the commonest free-text values (microbiology comments seen at least
MIN_TEXT_COUNT times). No subject, admission, stay or time is copied. The generator reads only the
JSON file; it never reads MIMIC at run time.

The vital signs of `synthetic_mimic.py --vitals` (keys `vitals` and `outputs`): the demo download has no
chartevents file, so the vital-sign and GCS items (extract_cohort.VITAL_RULES) are read from the demo in MEDS
(20 of the 100 subjects, 27 ICU stays: rows `LAB//{itemid}//{unit}` with icustay_id), found through the
MIMIC_IV_DEMO_MEDS_DIR environment variable as the tests find it (default: `mimic-iv-demo-meds` beside
--demo-dir; without it the two keys are left out). Per item: charting rate per hour of ICU stay (all stays;
and among the stays that chart it, with their share), value quantiles at VITAL_PROBABILITIES (finer in the
tails, where the clinical thresholds lie), and for the GCS components the share of each score (eye and motor
separately for chartings whose verbal response is "No Response-ETT", intubated) with the word each score is
charted as. Outputs come from the demo's icu/outputevents (every stay): per item the same rates, the volume
quantiles, and the delay from charttime to storetime (the only chart storetimes the demo has; MEDS has none).
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

VOCAB_PATH = Path(__file__).resolve().parent / "synthetic_vocab.json"
QUANTILES = np.linspace(0, 1, 21)
MIN_TEXT_COUNT = 3
# Planted risk factors are left out of the background vocabulary so that they mean what the truth says.
VASOPRESSORS = ("Norepinephrine", "Phenylephrine", "Vasopressin", "Epinephrine", "Dopamine")
PLANTED_PROCEDURES = ("Intubation", "Invasive Ventilation", "Dialysis - CRRT", "Extubation",
                      "Non-invasive Ventilation")
# extract_cohort.VITAL_RULES' items (this script imports no project module; tests/test_synthetic.py checks the list)
VITAL_ITEMIDS = (220045, 220179, 220050, 225309, 220180, 220051, 225310, 220052, 220181, 225312, 220210, 224690,
                 223761, 223762, 220277, 225664, 220621, 226537, 220739, 223901, 223900)
GCS_ITEMIDS, GCS_VERBAL, INTUBATED = (220739, 223901, 223900), 223900, "No Response-ETT"
VITAL_PROBABILITIES = (0.0, 0.005, 0.01, 0.025, 0.05, *np.round(np.linspace(0.1, 0.9, 17), 3).tolist(),
                       0.95, 0.975, 0.99, 0.995, 1.0)


def quantiles(values) -> list:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return []
    return [float(f"{v:.6g}") for v in np.quantile(values, QUANTILES)]


def decimals(values: pd.Series) -> int:
    """The commonest number of decimals in a value column's text."""
    text = values.dropna().astype(str)
    counts = text.str.extract(r"\.(\d+)$")[0].str.len().fillna(0).astype(int)
    return int(counts.mode().iloc[0]) if len(counts) else 0


def nan_to_none(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def labs(demo: Path) -> dict:
    le = pd.read_csv(demo / "hosp/labevents.csv.gz", usecols=["specimen_id", "itemid", "value", "valuenum",
                                                                "valueuom", "ref_range_lower", "ref_range_upper",
                                                                "hadm_id"])
    dl = pd.read_csv(demo / "hosp/d_labitems.csv.gz").set_index("itemid")
    items = {}
    for itemid, rows in le.groupby("itemid"):
        numeric = rows["valuenum"].notna().mean() >= 0.5
        row = dl.loc[itemid]
        item = {"label": row["label"], "fluid": nan_to_none(row["fluid"]), "category": nan_to_none(row["category"]),
                "unit": nan_to_none(rows["valueuom"].mode().iloc[0] if rows["valueuom"].notna().any() else None),
                "ref": [nan_to_none(float(rows["ref_range_lower"].median())),
                        nan_to_none(float(rows["ref_range_upper"].median()))]}
        if numeric:
            item.update(quantiles=quantiles(rows["valuenum"]), decimals=decimals(rows.loc[rows["valuenum"].notna(), "value"]))
        else:
            counts = rows["value"].dropna().value_counts().head(8)
            item.update(text_values=list(counts.index), text_weights=[int(c) for c in counts])
            if not len(counts):
                continue
        items[str(int(itemid))] = item
    le = le[le["itemid"].astype(str).isin(items)]
    panels = le.groupby("specimen_id")["itemid"].apply(lambda s: tuple(sorted(set(s)))).value_counts()
    return {"items": items,
            "panels": [[list(map(int, p)), int(c)] for p, c in panels.head(400).items()],
            "null_hadm_share": float(le["hadm_id"].isna().mean())}


def prescriptions(demo: Path) -> dict:
    rx = pd.read_csv(demo / "hosp/prescriptions.csv.gz", dtype=str,
                     usecols=["drug", "dose_val_rx", "dose_unit_rx", "route", "drug_type"]).dropna(subset=["drug"])
    rx = rx[~rx["drug"].str.contains("|".join(VASOPRESSORS), case=False)]
    orders = rx.fillna("").value_counts()
    orders = orders[orders >= 2]
    return {"orders": [list(k) + [int(c)] for k, c in orders.items()],
            "columns": list(orders.index.names) + ["weight"]}


def icu_items(demo: Path, table: str, exclude) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = pd.read_csv(demo / f"icu/{table}.csv.gz")
    d_items = pd.read_csv(demo / "icu/d_items.csv.gz")
    rows = rows.merge(d_items[["itemid", "label"]], on="itemid", how="left")
    return rows[~rows["label"].isin(exclude)], d_items


def inputs(demo: Path) -> dict:
    ie, _ = icu_items(demo, "inputevents", VASOPRESSORS)
    ie["minutes"] = (pd.to_datetime(ie["endtime"], format="ISO8601") - pd.to_datetime(ie["starttime"], format="ISO8601")).dt.total_seconds() / 60
    ie["store_delay"] = (pd.to_datetime(ie["storetime"], format="ISO8601") - pd.to_datetime(ie["starttime"], format="ISO8601")).dt.total_seconds() / 60
    rows_per_order = ie.groupby("linkorderid").size()
    items = []
    for itemid, rows in ie.groupby("itemid"):
        if len(rows) < 3:
            continue
        segments = rows_per_order.loc[rows["linkorderid"].unique()]
        items.append({"itemid": int(itemid), "weight": int(len(rows)),
                      "amountuom": rows["amountuom"].mode().iloc[0],
                      "rateuom": nan_to_none(rows["rateuom"].mode().iloc[0] if rows["rateuom"].notna().any() else None),
                      "rate_share": float(rows["rate"].notna().mean()),
                      "ordercategoryname": rows["ordercategoryname"].mode().iloc[0],
                      "secondaryordercategoryname": nan_to_none(rows["secondaryordercategoryname"].mode().iloc[0]
                                                                if rows["secondaryordercategoryname"].notna().any() else None),
                      "ordercategorydescription": rows["ordercategorydescription"].mode().iloc[0],
                      "amount": quantiles(rows["amount"]), "rate": quantiles(rows["rate"]),
                      "minutes": quantiles(rows["minutes"].clip(lower=1)),
                      "rows_per_order": float(segments.mean())})
    return {"items": items, "store_delay_minutes": quantiles(ie["store_delay"].clip(lower=0))}


def ingredients(demo: Path) -> dict:
    ig, _ = icu_items(demo, "ingredientevents", ())
    items = []
    for itemid, rows in ig.groupby("itemid"):
        if len(rows) < 3:
            continue
        items.append({"itemid": int(itemid), "weight": int(len(rows)), "amountuom": rows["amountuom"].mode().iloc[0],
                      "amount": quantiles(rows["amount"]), "rate_share": float(rows["rate"].notna().mean())})
    per_order = ig.groupby("orderid").size()
    return {"items": items, "rows_per_order": float(per_order.mean())}


def procedures(demo: Path) -> dict:
    pe, _ = icu_items(demo, "procedureevents", PLANTED_PROCEDURES)
    start, end = pd.to_datetime(pe["starttime"], format="ISO8601"), pd.to_datetime(pe["endtime"], format="ISO8601")
    pe["minutes"] = (end - start).dt.total_seconds() / 60
    pe["store_after_end"] = (pd.to_datetime(pe["storetime"], format="ISO8601") - end).dt.total_seconds() / 60
    items = []
    for itemid, rows in pe.groupby("itemid"):
        items.append({"itemid": int(itemid), "weight": int(len(rows)),
                      "ordercategoryname": rows["ordercategoryname"].mode().iloc[0],
                      "ordercategorydescription": rows["ordercategorydescription"].mode().iloc[0],
                      "minutes": quantiles(rows["minutes"].clip(lower=0))})
    return {"items": items, "store_after_end_minutes": quantiles(pe["store_after_end"])}


def microbiology(demo: Path) -> dict:
    mb = pd.read_csv(demo / "hosp/microbiologyevents.csv.gz", dtype=str)
    # positive blood cultures are the planted bacteremia
    mb = mb[~((mb["spec_type_desc"] == "BLOOD CULTURE") & mb["org_name"].notna())]
    common = mb["comments"].value_counts()
    mb["comments"] = mb["comments"].where(mb["comments"].isin(common[common >= MIN_TEXT_COUNT].index))
    columns = ["spec_itemid", "spec_type_desc", "test_itemid", "test_name", "org_itemid", "org_name",
               "ab_itemid", "ab_name", "dilution_text", "interpretation", "comments"]
    rows = mb[columns].fillna("").value_counts()
    store_delay = (pd.to_datetime(mb["storetime"], format="ISO8601") - pd.to_datetime(mb["charttime"], format="ISO8601")).dt.total_seconds() / 3600
    return {"columns": columns + ["weight"], "rows": [list(k) + [int(c)] for k, c in rows.items()],
            "null_hadm_share": float(mb["hadm_id"].isna().mean()),
            "store_delay_hours": quantiles(store_delay.clip(lower=0))}


def d_items(demo: Path, itemids) -> list:
    di = pd.read_csv(demo / "icu/d_items.csv.gz")
    di = di[di["itemid"].isin(itemids)]
    return [[nan_to_none(v) for v in row] for row in
            di[["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type"]].itertuples(index=False)]


def vital_quantiles(values) -> list:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return [float(f"{v:.6g}") for v in np.quantile(values, VITAL_PROBABILITIES)] if len(values) else []


def stay_hours(demo: Path) -> pd.DataFrame:
    icu = pd.read_csv(demo / "icu/icustays.csv.gz", usecols=["stay_id", "intime", "outtime"])
    icu["intime"], icu["outtime"] = (pd.to_datetime(icu[c], format="ISO8601") for c in ("intime", "outtime"))
    icu["hours"] = (icu["outtime"] - icu["intime"]).dt.total_seconds() / 3600
    return icu.set_index("stay_id")


def charting_rates(rows: pd.DataFrame, stays: pd.DataFrame) -> dict:
    """Rows per hour of ICU stay over all `stays`, the share of stays with a row, and rows per hour of those."""
    with_item = rows["stay_id"].unique()
    return {"rate": round(len(rows) / stays["hours"].sum(), 6), "stay_share": round(len(with_item) / len(stays), 6),
            "rate_in_stays": round(len(rows) / stays.loc[with_item, "hours"].sum(), 6)}


def meds_chartevents(meds: Path) -> pd.DataFrame:
    """The MEDS demo's chartevents rows of the vital-sign items: stay_id, charttime, itemid, unit, valuenum (MEDS
    keeps float32: written at its shortest, 96.599998 -> 96.6) and value (the text, e.g. GCS words)."""
    files = sorted((meds / "data").rglob("*.parquet"))
    rows = pd.concat([pd.read_parquet(f, columns=["time", "code", "numeric_value", "text_value", "icustay_id"])
                      for f in files], ignore_index=True)
    parts = rows["code"].str.split("//")
    itemid = pd.to_numeric(parts.str[1].where(parts.str[0] == "LAB"), errors="coerce")
    keep = itemid.isin(VITAL_ITEMIDS) & rows["icustay_id"].notna()
    rows, parts = rows[keep], parts[keep]
    unit = parts.str[2].where(parts.str.len() > 2)
    return pd.DataFrame({"stay_id": rows["icustay_id"].astype("int64"), "charttime": rows["time"],
                         "itemid": itemid[keep].astype("int64"), "unit": unit.where(unit != "UNK"),
                         "valuenum": [float(str(v)) if pd.notna(v) else np.nan
                                      for v in rows["numeric_value"].to_numpy()],
                         "value": rows["text_value"]})


def vitals(demo: Path, meds: Path) -> dict:
    ce = meds_chartevents(meds)
    stays = stay_hours(demo).loc[sorted(ce["stay_id"].unique())]
    ce = ce.join(stays[["intime", "outtime"]], on="stay_id")
    ce = ce[(ce["charttime"] >= ce["intime"]) & (ce["charttime"] <= ce["outtime"])]
    verbal = ce[ce["itemid"] == GCS_VERBAL]
    intubated_at = set(zip(verbal.loc[verbal["value"] == INTUBATED, "stay_id"],
                           verbal.loc[verbal["value"] == INTUBATED, "charttime"]))
    ce["intubated"] = [key in intubated_at for key in zip(ce["stay_id"], ce["charttime"])]
    items = {}
    for itemid, rows in ce.groupby("itemid"):
        item = {"unit": nan_to_none(rows["unit"].mode().iloc[0] if rows["unit"].notna().any() else None),
                **charting_rates(rows, stays)}
        if itemid in GCS_ITEMIDS:
            scored = rows[rows["value"] != INTUBATED].dropna(subset=["valuenum"])
            top = int(scored["valuenum"].max())
            item["texts"] = [nan_to_none(scored.loc[scored["valuenum"] == k, "value"].mode().iloc[0]
                                         if (scored["valuenum"] == k).any() else None) for k in range(1, top + 1)]
            for name, part in (("scores", scored[~scored["intubated"]]), ("scores_intubated", scored[scored["intubated"]])):
                item[name] = [int((part["valuenum"] == k).sum()) for k in range(1, top + 1)]
            if itemid == GCS_VERBAL:
                ett = rows[rows["value"] == INTUBATED]
                item.update(intubated_share=round(len(ett) / len(rows), 6),
                            intubated_valuenum=float(ett["valuenum"].mode().iloc[0]))
        else:
            item.update(quantiles=vital_quantiles(rows["valuenum"]),
                        decimals=decimals(rows["valuenum"].dropna().map(lambda v: f"{v:g}")))
        items[str(int(itemid))] = item
    return {"source": "MIMIC-IV demo in MEDS 0.0.1: chartevents of 20 subjects (aggregates only)",
            "stays": len(stays), "hours": round(float(stays["hours"].sum()), 3),
            "probabilities": list(VITAL_PROBABILITIES), "items": items,
            "d_items": d_items(demo, [int(i) for i in items])}


def outputs(demo: Path) -> dict:
    oe = pd.read_csv(demo / "icu/outputevents.csv.gz", usecols=["stay_id", "charttime", "storetime", "itemid", "value",
                                                               "valueuom"])
    oe["charttime"], oe["storetime"] = (pd.to_datetime(oe[c], format="ISO8601") for c in ("charttime", "storetime"))
    stays = stay_hours(demo)
    oe = oe.join(stays[["intime", "outtime"]], on="stay_id")
    oe = oe[(oe["charttime"] >= oe["intime"]) & (oe["charttime"] <= oe["outtime"])]
    items = []
    for itemid, rows in oe.groupby("itemid"):
        if len(rows) < 3:
            continue
        items.append({"itemid": int(itemid), "unit": rows["valueuom"].mode().iloc[0], **charting_rates(rows, stays),
                      "quantiles": vital_quantiles(rows["value"])})
    delay = (oe["storetime"] - oe["charttime"]).dt.total_seconds() / 60
    return {"stays": len(stays), "hours": round(float(stays["hours"].sum()), 3),
            "probabilities": list(VITAL_PROBABILITIES), "items": items,
            "store_delay_minutes": vital_quantiles(delay), "d_items": d_items(demo, [i["itemid"] for i in items])}


def meds_dir(demo: Path) -> Path:
    return Path(os.environ.get("MIMIC_IV_DEMO_MEDS_DIR", Path(demo).resolve().parent / "mimic-iv-demo-meds"))


def derive(demo: Path) -> dict:
    vocab = {"source": "MIMIC-IV Clinical Database Demo 2.2 (aggregates only)", "labs": labs(demo),
             "prescriptions": prescriptions(demo), "inputs": inputs(demo), "ingredients": ingredients(demo),
             "procedures": procedures(demo), "microbiology": microbiology(demo)}
    itemids = {i["itemid"] for kind in ("inputs", "ingredients", "procedures") for i in vocab[kind]["items"]}
    vocab["d_items"] = d_items(demo, itemids)
    meds = meds_dir(demo)
    if (meds / "data").is_dir():
        vocab["vitals"] = vitals(demo, meds)
        vocab["outputs"] = outputs(demo)
    else:
        print(f"no MEDS demo at {meds} (set MIMIC_IV_DEMO_MEDS_DIR): vitals and outputs left out")
    return vocab


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=VOCAB_PATH)
    args = parser.parse_args(argv)
    vocab = derive(args.demo_dir)
    args.output.write_text(json.dumps(vocab, separators=(",", ":")) + "\n")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
