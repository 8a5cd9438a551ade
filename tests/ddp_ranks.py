"""Run train.main in N local processes joined by gloo, as torchrun would start them (env:// rendezvous),
with an optional per-rank patch applied in each process first. Every rank writes what happened to
RESULT_DIR/rank<R>.json, so a test sees each rank's outcome, and the whole group is killed at a deadline:
a hang is a test failure, never a hung test suite."""
import json
import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world_size, port, argv, patch, result_dir, env):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      **env.get(rank, {}))
    log = open(Path(result_dir) / f"rank{rank}.log", "w")
    os.dup2(log.fileno(), 2)  # this rank's stderr (its log and train.py's error line), for the test to read
    import torch
    torch.set_num_threads(1)
    import train
    if patch is not None:
        patch(train, rank, Path(result_dir))
    outcome = {"ok": True}
    start = time.time()
    try:
        train.cli([str(a) for a in argv])  # as `torchrun train.py ...` runs it
    except SystemExit as e:
        outcome = {"ok": e.code in (0, None), "exit_code": e.code}
    except BaseException as e:  # what each rank ended with is the test's subject
        outcome = {"ok": False, "error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()[-3000:]}
    outcome["seconds"] = time.time() - start
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no atexit or process-group teardown that could wait on a dead peer


def run_ranks(argv, result_dir, world_size=2, patch=None, env=None, deadline_s=120):
    """{rank: outcome} for every rank; a rank that wrote nothing by the deadline is {"ok": False, "error":
    "no result (killed, or still running at the deadline)"}."""
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world_size, port, list(argv), patch, str(result_dir), env or {}))
             for r in range(world_size)]
    for p in procs:
        p.start()
    end = time.time() + deadline_s
    for p in procs:
        p.join(max(0.1, end - time.time()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    outcomes = {}
    for r in range(world_size):
        path = result_dir / f"rank{r}.json"
        outcomes[r] = json.loads(path.read_text()) if path.is_file() else {
            "ok": False, "error": "no result (killed, or still running at the deadline)"}
        log = result_dir / f"rank{r}.log"
        outcomes[r]["stderr"] = log.read_text(errors="replace") if log.is_file() else ""
        outcomes[r]["exitcode"] = procs[r].exitcode
        outcomes[r]["hung"] = procs[r] in hung
    return outcomes
