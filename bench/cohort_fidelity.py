"""Cohort fidelity on the MIMIC-IV demo (issue 12): what the event table holds per kind, per stay, and what
the extraction's rules keep or drop, counted on the raw demo tables. Counts only; nothing is timed.

    python bench/cohort_fidelity.py                                    # this query.sql, 48 h and 24 h
    git show b520efe:query.sql > /tmp/old_query.sql
    python bench/cohort_fidelity.py --baseline-query /tmp/old_query.sql  # also the events of an older query

Prints Markdown tables (BENCHMARKS.md, "Cohort fidelity").
"""
import argparse
import re
import tempfile
from pathlib import Path

import pandas as pd

from _common import REPO_ROOT, print_headline, print_table

import extract_cohort
import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--mimic-dir", type=Path, default=REPO_ROOT.parent / "shared" / "mimic-iv-demo")
parser.add_argument("--hours", type=float, nargs="*", default=[48.0, 24.0], help="observation windows")
parser.add_argument("--baseline-query", type=Path, default=None,
                    help="an older query.sql (e.g. from git show) whose event table is compared per kind")
VASOPRESSORS = ("Norepinephrine", "Phenylephrine", "Vasopressin", "Epinephrine", "Dopamine")


def extract(mimic_dir, folder, name, hours, kinds=extract_cohort.DEFAULT_EVENT_KINDS, query=extract_cohort.QUERY_PATH):
    out = Path(folder) / f"{name}.parquet"
    params = extract_cohort.query_parameters(hours, event_kinds=kinds)
    extract_cohort.extract_duckdb(mimic_dir, out, params, progress=False, query_path=query, threads=1)
    return pd.read_parquet(out)


def per_kind(table) -> pd.Series:
    """Per kind: "mean / median events per stay (share of all events)"."""
    events = table.dropna(subset=["event_type"])
    stays = table["stay_id"].unique()
    counts = events.groupby(["event_type", "stay_id"]).size().unstack(0).reindex(stays).fillna(0)
    share = counts.sum() / counts.values.sum() * 100
    return pd.Series({k: f"{counts[k].mean():.1f} / {counts[k].median():g} ({share[k]:.1f}%)" for k in counts})


def markdown(frame: pd.DataFrame, index_name: str, title: str = ""):
    print_table([{index_name: i, **row} for i, row in frame.fillna("-").iterrows()], title)


def per_stay(table, max_events) -> dict:
    n = table.groupby("stay_id")["event_type"].count()
    return {"stays": len(n), "events": int(n.sum()), "median": float(n.median()), "p90": float(n.quantile(0.9)),
            "max": int(n.max()), "whole at 256": f"{(n <= 256).mean():.1%}",
            f"whole at {max_events}": f"{(n <= max_events).mean():.1%}"}


def micro_results(table, mimic_dir) -> pd.Series:
    """Microbiology events by what they say: an organism, a susceptibility, or the result of a test without
    an organism (the end of 'SPECIMEN - TEST, result')."""
    raw = pd.read_csv(Path(mimic_dir) / "hosp" / "microbiologyevents.csv.gz",
                      usecols=["microevent_id", "org_name", "ab_name"]).set_index("microevent_id")
    events = table[table["source_table"] == "microbiologyevents"]
    row = raw.loc[events["source_id"].astype(int)]
    result = events["event_text"].str.extract(r", (mixed flora, likely contamination|[^,]+)$")[0]
    kind = pd.Series(("result: " + result).to_numpy(), index=events.index)
    kind[row["org_name"].notna().to_numpy()] = "organism"
    kind[row["ab_name"].notna().to_numpy()] = "susceptibility (organism, antibiotic)"
    return kind.value_counts()


def micro_comments_all_rows(mimic_dir) -> pd.Series:
    """micro_comment_result over every demo row without an organism (inside a window or not)."""
    import duckdb
    con = duckdb.connect()
    for statement in extract_cohort.duckdb_statements(extract_cohort.query_parameters())[0]:
        con.execute(statement)
    path = str(Path(mimic_dir) / "hosp" / "microbiologyevents.csv.gz").replace("'", "''")
    return con.execute(f"""
        SELECT CASE WHEN upper(org_name) = 'CANCELLED' THEN 'cancelled (org_name)'
                    ELSE coalesce(micro_comment_result(comments), 'result not recorded') END AS result, count(*) AS n
        FROM read_csv('{path}', all_varchar = true)
        WHERE org_name IS NULL OR upper(org_name) = 'CANCELLED'
        GROUP BY ALL ORDER BY n DESC""").df().set_index("result")["n"]


def icu_charting(mimic_dir, hours, stay_ids) -> pd.DataFrame:
    """Rows of cohort stays started in the window, by what the charting rule does with them."""
    cohort = extract_cohort_windows(mimic_dir, hours)
    cohort = cohort[cohort["stay_id"].isin(stay_ids)]
    rows = []
    for table in ("procedureevents", "inputevents", "ingredientevents"):
        df = pd.read_csv(Path(mimic_dir) / "icu" / f"{table}.csv.gz",
                         usecols=["stay_id", "starttime", "endtime", "storetime", "statusdescription"])
        for c in ("starttime", "endtime", "storetime"):
            df[c] = pd.to_datetime(df[c], format="ISO8601")
        df = df.merge(cohort, on="stay_id")
        df = df[(df["starttime"] >= df["intime"]) & (df["starttime"] < df["prediction_time"])
                & df["statusdescription"].ne("Rewritten")]
        known, running = df["storetime"] < df["prediction_time"], df["endtime"] > df["prediction_time"]
        late = df.loc[~known & ~running]
        delay = (late["storetime"] - late["endtime"]).dt.total_seconds() / 3600
        rows.append({"table": table, "started in window": str(len(df)), "charted before (kept)": str(int(known.sum())),
                     "running, charted after (kept at start)": str(int((~known & running).sum())),
                     "ended, charted after (dropped)": str(len(late)),
                     "dropped: median / max h from end to charting":
                         f"{delay.median():.1f} / {delay.max():.1f}" if len(late) else "-"})
    return pd.DataFrame(rows).set_index("table")


def extract_cohort_windows(mimic_dir, hours):
    stays = pd.read_csv(Path(mimic_dir) / "icu" / "icustays.csv.gz", parse_dates=["intime"])
    stays["prediction_time"] = stays["intime"] + pd.Timedelta(hours=hours)
    return stays[["stay_id", "intime", "prediction_time"]]


def null_hadm_recovered(table) -> dict:
    """Lab and microbiology events written from rows without hadm_id."""
    out = {}
    for source, raw, key in (("labevents", "labevents", "labevent_id"),
                             ("microbiologyevents", "microbiologyevents", "microevent_id")):
        ids = pd.read_csv(Path(args.mimic_dir) / "hosp" / f"{raw}.csv.gz", usecols=[key, "hadm_id"])
        null_ids = set(ids.loc[ids["hadm_id"].isna(), key])
        written = table.loc[table["source_table"] == source, "source_id"].astype(int)
        out[source] = int(written.isin(null_ids).sum())
    return out


def main():
    max_events = train.build_arg_parser().get_default("max_events")
    markdown(micro_comments_all_rows(args.mimic_dir).to_frame("rows"), "result",
             "All demo microbiology rows without an organism (and org_name CANCELLED), by what their comment says:")
    headline = {}
    with tempfile.TemporaryDirectory() as folder:
        for hours in args.hours:
            tag = f"{hours:g}h"
            now = extract(args.mimic_dir, folder, f"now{tag}", hours)
            every = extract(args.mimic_dir, folder, f"all{tag}", hours, (*extract_cohort.DEFAULT_EVENT_KINDS, "ingredient"))
            print(f"\n### {tag} window\n")
            tables = {"this query, default kinds": now, "this query, with ingredient": every}
            if args.baseline_query:
                tables = {f"baseline ({args.baseline_query.name})":
                          extract(args.mimic_dir, folder, f"old{tag}", hours, query=args.baseline_query), **tables}
            kinds = pd.DataFrame({name: per_kind(t) for name, t in tables.items()})
            markdown(kinds, "kind", "Events per stay, by kind: mean / median (share of all events):")
            markdown(pd.DataFrame({name: per_stay(t, max_events) for name, t in tables.items()}).T, "event table",
                     "\nEvents per stay:")
            markdown(micro_results(now, args.mimic_dir).to_frame("events"), "microbiology event",
                     "\nMicrobiology events:")
            markdown(icu_charting(args.mimic_dir, hours, now["stay_id"].unique()), "table",
                     "\nICU rows and the charting rule:")
            print(f"\nEvents from rows without hadm_id: {null_hadm_recovered(now)}")
            inputs = now.loc[now["event_type"] == "input", "event_text"]
            pressors = inputs.str.match(rf"Input: (?:{'|'.join(map(re.escape, VASOPRESSORS))}) ")
            print(f"input events: {len(inputs)}, of which vasopressors {int(pressors.sum())} "
                  f"in {now.loc[inputs.index[pressors], 'stay_id'].nunique()} stays")
            ingredient = every.loc[every["event_type"] == "ingredient", "event_text"]
            labels = ingredient.str.extract(r"^Ingredient: (.+?) -?[\d.]+ \S+$")[0].value_counts()
            markdown(labels.head(8).to_frame("events"), "ingredient label",
                     "\ningredient events by label (with --event-kinds ...,ingredient):")
            n = now.groupby("stay_id")["event_type"].count()
            headline.update({f"median_events_{tag}": float(n.median()), f"p90_events_{tag}": float(n.quantile(0.9)),
                             f"whole_at_max_events_{tag}": float((n <= max_events).mean())})
    print_headline(max_events=max_events, **headline)


if __name__ == "__main__":
    args = parser.parse_args()
    main()
