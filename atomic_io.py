"""Atomic file output, shared by every script that writes results: a reader sees the old file or the complete
new one, never half of one, and a killed run leaves at most a hidden `.tmp-<pid>-<name>` file, never a
truncated output under the real name.

    with atomic_output(path) as tmp:   # tmp: a hidden name in the same folder, with path's suffix
        write_somehow(tmp)             # DuckDB COPY, pandas, open(tmp, "wb"), ...
    write_bytes(path, data)            # the same for bytes in memory
    write_json(obj, path), write_csv(frame, path), save_figure(fig, path)   # the results' formats
"""
import json
import os
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path) -> Path:
    """A hidden name in the same folder (a rename across filesystems is not atomic) that keeps the suffix,
    so writers that pick the format by extension (DuckDB COPY, pandas) still do."""
    path = Path(path)
    return path.parent / f".tmp-{os.getpid()}-{path.name}"


def publish(tmp, path) -> None:
    """Make the complete file `tmp` durable, rename it over `path`, then make the rename durable."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every platform or filesystem can fsync a directory
        pass


@contextmanager
def atomic_output(path):
    """Yield a temporary path to write; publish it as `path` if the block succeeds, remove it in any case."""
    tmp = temporary_name(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_json(obj, path) -> Path:
    """Indented JSON; numpy numbers and arrays are written as plain numbers and lists."""
    return write_bytes(path, json.dumps(obj, indent=2, default=_plain_json).encode())


def _plain_json(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_csv(frame, path) -> Path:
    """A pandas DataFrame as CSV without its index."""
    return write_bytes(path, frame.to_csv(index=False).encode())


def write_parquet(table, path) -> Path:
    """A pyarrow Table as Parquet."""
    import pyarrow.parquet as pq
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def save_figure(fig, path) -> Path:
    """A matplotlib figure as PNG (110 dpi, tight), then closed so that a long run does not pile up figures."""
    import matplotlib.pyplot as plt
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
