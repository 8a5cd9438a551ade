"""atomic_io: outputs appear whole or not at all."""
import pytest

import atomic_io


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_io.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_io.atomic_output(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".tmp-")
            tmp.write_bytes(b"half of the ne")
            raise RuntimeError("killed while writing")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    atomic_io.write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
