"""Scale: synthetic MIMIC-IV of growing size through the whole pipeline, time and peak memory per stage.

For each size N (ICU stays), each stage runs the project's own command in its own process, so its peak
resident memory (VmHWM of that process) is its own:

    synthesize  python synthetic_mimic.py --out-dir D --n-stays N --regime realistic   (or --regime small)
    extract     python extract_cohort.py --mimic-dir D --output events.parquet      (query.sql on DuckDB)
    read        event_table.read_event_table(events.parquet)                             (the table every rank holds)
    embed       train.embed_texts(event texts, default encoder, fresh cache)        (all-MiniLM-L6-v2)
    train       python train.py --data events.parquet --epochs 1 --cache-dir C ...  (one epoch + outputs)
    explain     python explain_clinicalLF.py --max-stays 100 ...                   (Captum on 100 test stays)

The table shows how time and memory grow with N (close to linear is the goal) and the last line gives the
largest size's figures.

    python bench/scale.py                                 # 500, 1000, 2000 stays: tens of minutes on 2 cores
                                                          # (most of it embedding and explaining realistic stays)
    python bench/scale.py --sizes 5000 20000 --regime small  # the sample's short stays: a few minutes
    python bench/scale.py --sizes 68000                   # issue 14: full MIMIC-IV size, ~50,000 cohort stays and ~18M
                                                          # events (the generator also writes stays the cohort excludes);
                                                          # 71 minutes on 2 quiet CPU cores, peak 12.5 GiB (BENCHMARKS.md
                                                          # "Scale"; docs/design.md "Memory of a full-size run")

--read-events N adds, for the largest size, a read of a table of N event rows made by repeating its
extracted table with new ids (and, in every other copy, new texts): the memory of read_event_table at full
scale (20 million events) when the machine cannot synthesize and extract that many.

--regime (default realistic) and --events-per-stay (default: the regime's own) are passed to synthetic_mimic.py.
"""
import argparse
import json
import sys
from pathlib import Path

import _common
from _common import print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000], help="numbers of ICU stays")
parser.add_argument("--regime", choices=["realistic", "small"], default="realistic",
                    help="synthetic_mimic.py --regime (realistic: the demo's volume and mix)")
parser.add_argument("--events-per-stay", type=float, default=None,
                    help="synthetic_mimic.py --events-per-stay (default: the regime's own)")
parser.add_argument("--explain-stays", type=int, default=100, help="explain_clinicalLF.py --max-stays (0: no explain stage)")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=32, help="train.py --batch-size")
parser.add_argument("--embed-batch-size", type=int, default=64, help="train.py --embed-batch-size")
parser.add_argument("--work-dir", default=None, help="keep everything here (default: a temp folder, removed)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--read-events", type=int, default=0, help="also read a table of this many rows (see above)")
parser.add_argument("--stage-read", metavar="TABLE", help=argparse.SUPPRESS)
parser.add_argument("--stage-embed", nargs=3, metavar=("TABLE", "CACHE", "BATCH"), help=argparse.SUPPRESS)


def embed_stage(table_path, cache_dir, batch_size):
    """The embedding stage, in its own process: every event text of the table through train.embed_texts."""
    import event_table
    import train
    table = event_table.read_event_table(table_path)
    texts = table.loc[table["event_type"].notna(), "event_text"]  # the column, as train.prepare_stays passes it
    stats = {}
    matrix, rows = train.embed_texts(texts, _common.default_encoder_folder(), cache_dir, "cpu",
                                     batch_size=int(batch_size), stats=stats)
    print(json.dumps(dict(events=len(texts), unique_texts=stats["unique_texts"], embedded=stats["embedded"])))


def read_stage(table_path):
    """The table as train.py holds it (on every rank): its rows and in-memory size."""
    import event_table
    table = event_table.read_event_table(table_path)
    events = int(table["event_type"].notna().sum())
    size = int(table.memory_usage(deep=True).sum())
    print(json.dumps(dict(rows=len(table), events=events, table_MiB=size / 2**20,
                          bytes_per_row=size / max(1, len(table)))))


def tile_table(source: Path, target: Path, n_rows: int):
    """Repeat `source`'s rows with new subject/hadm/stay ids until n_rows; every other copy's texts get a
    suffix, so distinct texts grow with the table as they would (about one per 8 events at full scale)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    table = pq.read_table(source)
    copies = -(-n_rows // table.num_rows)
    with pq.ParquetWriter(target, table.schema) as writer:
        for k in range(copies):
            part = table.slice(0, min(table.num_rows, n_rows - k * table.num_rows))
            for name, step in (("subject_id", 1_000_000), ("hadm_id", 1_000_000), ("stay_id", 1_000_000)):
                column = part.column(name)
                part = part.set_column(part.schema.get_field_index(name), name,
                                       pc.add(column, pa.scalar(k * step, column.type)))
            if k % 2:
                text = part.column("event_text")
                part = part.set_column(part.schema.get_field_index("event_text"), "event_text",
                                       pc.binary_join_element_wise(text, pa.scalar(f" #{k}", text.type),
                                                                                  pa.scalar("", text.type)))
            writer.write_table(part.cast(table.schema))
    return target


def last_json(log_path: Path) -> dict:
    return json.loads(log_path.read_text().strip().splitlines()[-1])


def one_size(n_stays, work: Path, args) -> list[dict]:
    import pandas as pd
    folder = work / f"n{n_stays}"
    mimic, table, cache, out = folder / "mimic", folder / "events.parquet", folder / "cache", folder / "model"
    folder.mkdir(parents=True, exist_ok=True)
    encoder = str(_common.default_encoder_folder())
    rows = []

    def record(stage, result, **extra):
        rows.append(dict(stays=n_stays, stage=stage, seconds=result["seconds"],
                         ms_per_stay=1000 * result["seconds"] / n_stays, peak_rss_MiB=result["peak_rss_MiB"], **extra))
        print(f"  {n_stays} stays, {stage}: {result['seconds']:.1f} s, peak {result['peak_rss_MiB']:.0f} MiB",
              file=sys.stderr, flush=True)

    per_stay = ["--events-per-stay", str(args.events_per_stay)] if args.events_per_stay else []
    record("synthesize", _common.run_measured(["synthetic_mimic.py", "--out-dir", str(mimic), "--n-stays", str(n_stays),
                                    "--seed", str(args.seed), "--regime", args.regime, *per_stay],
                                   folder / "synthesize.log"))
    result = _common.run_measured(["extract_cohort.py", "--mimic-dir", str(mimic), "--output", str(table), "--no-progress"],
                       folder / "extract.log")
    events = pd.read_parquet(table, columns=["stay_id", "event_type"])
    record("extract", result, events=int(events["event_type"].notna().sum()))
    result = _common.run_measured([str(Path(__file__).resolve()), "--stage-read", str(table)], folder / "read.log")
    read = last_json(folder / "read.log")
    record("read (event_table.read_event_table)", result, events=read["events"], table_MiB=read["table_MiB"],
           bytes_per_row=read["bytes_per_row"])
    result = _common.run_measured([str(Path(__file__).resolve()), "--stage-embed", str(table), str(cache),
                        str(args.embed_batch_size)], folder / "embed.log")
    embedded = last_json(folder / "embed.log")
    record("embed", result, events=embedded["events"], unique_texts=embedded["unique_texts"])
    result = _common.run_measured(["train.py", "--data", str(table), "--epochs", str(args.epochs), "--cache-dir", str(cache),
                        "--output-dir", str(out), "--text-encoder", encoder, "--batch-size", str(args.batch_size),
                        "--seed", str(args.seed), "--device", "cpu"], folder / "train.log")
    metrics = json.loads((out / "metrics.json").read_text())
    record("train (1 epoch + outputs)" if args.epochs == 1 else f"train ({args.epochs} epochs + outputs)", result,
           events=embedded["events"], test_auroc=(metrics.get("test") or {}).get("auroc"))
    if args.explain_stays:
        result = _common.run_measured(["explain_clinicalLF.py", "--checkpoint", str(out / "checkpoints" / "best_model.pth"),
                                       "--data", str(table), "--save-dir", str(folder / "explain"), "--cache-dir", str(cache),
                                       "--text-encoder", encoder, "--max-stays", str(args.explain_stays), "--device", "cpu",
                                       "--seed", str(args.seed)], folder / "explain.log")
        record(f"explain ({args.explain_stays} stays)", result)
    return rows


def main():
    args = parser.parse_args()
    if args.stage_embed:
        return embed_stage(*args.stage_embed)
    if args.stage_read:
        return read_stage(args.stage_read)
    print(_common.machine_description())
    rows = []
    with _common.WorkDir(args.work_dir, "bench_scale_") as work:
        for n_stays in args.sizes:
            rows += one_size(n_stays, work, args)
        if args.read_events:
            largest = max(args.sizes)
            tiled = tile_table(work / f"n{largest}" / "events.parquet", work / "tiled.parquet", args.read_events)
            result = _common.run_measured([str(Path(__file__).resolve()), "--stage-read", str(tiled)], work / "tiled.log")
            read = last_json(work / "tiled.log")
            rows.append(dict(stays=largest, stage=f"read, table repeated to {args.read_events:,} rows",
                             seconds=result["seconds"], ms_per_stay="", peak_rss_MiB=result["peak_rss_MiB"],
                             events=read["events"], table_MiB=read["table_MiB"], bytes_per_row=read["bytes_per_row"]))
            print(f"  read of {args.read_events:,} rows: {result['seconds']:.1f} s, peak {result['peak_rss_MiB']:.0f} MiB",
                  file=sys.stderr, flush=True)
    columns = ["stays", "stage", "seconds", "ms_per_stay", "peak_rss_MiB", "events", "unique_texts", "table_MiB",
               "bytes_per_row", "test_auroc"]
    rows = [{c: row.get(c, "") for c in columns} for row in rows]
    volume = f", {args.events_per_stay:g} background events per stay" if args.events_per_stay else ""
    print_table(rows, f"Scale: synthetic MIMIC-IV, {args.regime} regime{volume}")
    per_size = [r for r in rows if not r["stage"].startswith("read, table repeated")]
    largest = [r for r in per_size if r["stays"] == max(args.sizes)]
    smallest = [r for r in per_size if r["stays"] == min(args.sizes)]
    total = sum(r["seconds"] for r in largest)
    growth = total / sum(r["seconds"] for r in smallest) / (max(args.sizes) / min(args.sizes))
    print_headline(stays=max(args.sizes), total_s=total, peak_rss_MiB=max(r["peak_rss_MiB"] for r in largest),
                   time_growth_vs_linear=growth,
                   **{f"{r['stage'].split()[0]}_s": r["seconds"] for r in largest})


if __name__ == "__main__":
    main()
