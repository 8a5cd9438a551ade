"""Peak memory and time of one training step (forward + backward) of train.py's default model on a batch of
stays that all have L events, for choosing --max-events and --batch-size. Each length runs in a fresh process,
so its peak resident memory (VmHWM) is its own. Random inputs: the cost depends on the shapes only.

    python bench/step_memory.py                       # batch 32, L = 256 and 768 (train.py's old and new default)
    python bench/step_memory.py --lengths 256 512 768 1024 --batch-size 16
"""
import argparse
import json
import sys
import time

import _common
from _common import machine_description, peak_rss_mib, print_headline, print_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--lengths", type=int, nargs="*", default=[256, 768], help="events per stay")
parser.add_argument("--batch-size", type=int, default=32, help="train.py's default")
parser.add_argument("--threads", type=int, default=1, help="torch threads")
parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)


def worker(length, batch_size, threads):
    import torch

    import train
    torch.set_num_threads(threads)
    defaults = train.build_arg_parser().parse_args([])
    config = train.ModelConfig(text_dim=384, n_static=40, d_model=defaults.d_model, n_layers=defaults.n_layers,
                               n_heads=defaults.n_heads, d_ff=defaults.d_ff, dropout=defaults.dropout,
                               pool_heads=defaults.pool_heads)  # 384: the default encoder's vector size
    model = train.MortalityTransformer(config).train()
    events = torch.randn(batch_size, length, config.n_event_types + config.text_dim + 1)
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    static = torch.randn(batch_size, config.n_static)
    start = time.perf_counter()
    model(events, mask, static)[0].sum().backward()
    print(json.dumps({"events per stay": length, "batch": batch_size, "step s": time.perf_counter() - start,
                      "peak RSS MiB": peak_rss_mib()}))


def main(args):
    print(machine_description())
    rows = [_common.run_json_subprocess([__file__, "--worker", str(n), "--batch-size", str(args.batch_size),
                                         "--threads", str(args.threads)]) for n in args.lengths]
    print_table(rows, f"One training step of the default model, batch {args.batch_size}, {args.threads} thread(s):")
    print_headline(**{f"peak_mib_L{r['events per stay']}": r["peak RSS MiB"] for r in rows})


if __name__ == "__main__":
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.batch_size, args.threads)
        sys.exit(0)
    main(args)
