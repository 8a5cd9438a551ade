"""Cohort extraction: time and peak memory of extract_cohort.py (query.sql on DuckDB) on the MIMIC-IV demo and
on synthetic MIMIC-IV of N stays, and the number of distinct event texts with numbers as stored (the
prototype's texts) versus at three significant figures (the project's).

Each extraction runs in a fresh process, so its peak resident memory (DuckDB included) is its own.

    python bench/extract.py                                   # demo + 5,000 realistic synthetic stays
    python bench/extract.py --synthetic-stays 5000 20000 50000 --memory-limit 4GB
    python bench/extract.py --regime small                    # the light regime of sample_train.csv
    python bench/extract.py --synthetic-stays 68000 --vitals --raw-texts off   # issue 24: full size with vital
                                                              # signs and outputs (--event-kinds ...,vital,output)

--vitals generates the synthetic tables with chartevents and outputevents (synthetic_mimic.py --vitals) and
extracts the default kinds plus `vital` and `output` from them and from the demo (whose outputevents are real;
skipped, with extract_cohort's reason, where it lacks a table these kinds need: the demo ships no chartevents).
--raw-texts off skips the second extraction that only counts distinct texts with raw numbers.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import _common
from _common import REPO_ROOT, WorkDir, machine_description, peak_rss_mib, print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--mimic-dir", type=Path, default=REPO_ROOT.parent / "shared" / "mimic-iv-demo",
                    help="a real MIMIC-IV (demo) directory; skipped when absent")
parser.add_argument("--synthetic-stays", type=int, nargs="*", default=[5000],
                    help="sizes of the synthetic MIMIC-IV to generate and extract")
parser.add_argument("--regime", choices=["realistic", "small"], default="realistic",
                    help="synthetic_mimic.py --regime of the synthetic data")
parser.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit (extract_cohort.py --memory-limit)")
parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--vitals", action="store_true",
                    help="synthetic tables with chartevents/outputevents, extracted with the vital and output kinds too")
parser.add_argument("--raw-texts", choices=("on", "off"), default="on",
                    help="also extract with raw numbers to count distinct texts as stored (a second extraction)")
parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
parser.add_argument("--worker", nargs=3, metavar=("MIMIC_DIR", "OUTPUT", "NUMBERS"), help=argparse.SUPPRESS)


def event_kinds(vitals: bool) -> tuple:
    import extract_cohort
    return extract_cohort.EVENT_KINDS_WITH_VITALS if vitals else extract_cohort.DEFAULT_EVENT_KINDS


def worker(mimic_dir, output, numbers, memory_limit, threads, vitals):
    """One extraction in this process; prints JSON: seconds, peak RSS, counts, distinct texts."""
    import duckdb

    import extract_cohort
    params = extract_cohort.query_parameters(event_kinds=event_kinds(vitals))
    start = time.perf_counter()
    counts = extract_cohort.extract_duckdb(mimic_dir, Path(output), params, memory_limit=memory_limit,
                                           threads=threads, progress=False, raw_numbers=numbers == "raw")
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    distinct = duckdb.connect().execute(f"SELECT count(DISTINCT event_text) FROM read_parquet('{output}')").fetchone()[0]
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "distinct_texts": distinct, **counts}))


def extract(mimic_dir, output, numbers, args) -> dict:
    extra = ["--memory-limit", args.memory_limit] + (["--threads", str(args.threads)] if args.threads else [])
    extra += ["--vitals"] if args.vitals else []
    return _common.run_json_subprocess([str(Path(__file__).resolve()), "--worker", str(mimic_dir), str(output),
                                        numbers, *extra], timeout=3600)


def main():
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.memory_limit, args.threads, args.vitals)
    import extract_cohort
    import synthetic_mimic

    print(f"Machine: {machine_description()}")
    print(f"DuckDB memory limit {args.memory_limit}, threads {args.threads or 'all'}, "
          f"event kinds {','.join(event_kinds(args.vitals))}")
    rows, headline = [], {}
    with WorkDir(args.work_dir, "bench_extract_") as work:
        datasets = []
        if not (args.mimic_dir / "hosp").is_dir():
            print(f"(no MIMIC-IV demo at {args.mimic_dir}: skipped)", file=sys.stderr)
        else:
            try:  # the extraction's own check of the tables these kinds need (the demo ships no chartevents)
                extract_cohort.find_mimic_tables(args.mimic_dir, event_kinds(args.vitals))
                datasets.append(("MIMIC-IV demo", args.mimic_dir, None))
            except extract_cohort.ExtractionError as error:
                print(f"(MIMIC-IV demo skipped: {error})", file=sys.stderr)
        for n in args.synthetic_stays:
            folder = work / f"synthetic_{n}"
            start = time.perf_counter()
            synthetic_mimic.generate(folder, n, seed=args.seed, regime=args.regime, vitals=args.vitals)
            datasets.append((f"synthetic {n:,} stays ({args.regime})", folder, time.perf_counter() - start))
        for name, folder, generation_s in datasets:
            project = extract(folder, work / "project.parquet", "sig3", args)
            raw = extract(folder, work / "raw.parquet", "raw", args) if args.raw_texts == "on" else {"distinct_texts": "-"}
            rows.append({"data": name, "stays": project["stays"], "events": project["events"],
                         "extract s": project["seconds"], "events/s": project["events"] / project["seconds"],
                         "peak RSS MiB": project["peak_rss_mib"],
                         "distinct texts, raw numbers": raw["distinct_texts"],
                         "distinct texts, rounded": project["distinct_texts"],
                         "distinct share": project["distinct_texts"] / max(project["events"], 1),
                         "per stay": project["events"] / max(project["stays"], 1),
                         "generate s": generation_s if generation_s is not None else "-"})
            key = "demo" if generation_s is None else f"synth{name.split()[1].replace(',', '')}"
            headline[f"{key}_extract_s"] = round(project["seconds"], 2)
            headline[f"{key}_peak_mib"] = round(project["peak_rss_mib"])
            headline[f"{key}_distinct_raw"] = raw["distinct_texts"]
            headline[f"{key}_distinct_rounded"] = project["distinct_texts"]
    print_table(rows, "Cohort extraction (extract_cohort.py, DuckDB engine, output Parquet, 48 h window)")
    print_headline(**headline)


if __name__ == "__main__":
    main()
