import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Nothing in the test suite may contact a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny_models import make_tiny_bert, make_tiny_longformer  # noqa: E402


def demo_dir() -> Path:
    return Path(os.environ.get("MIMIC_IV_DEMO_DIR", REPO_ROOT.parent / "shared" / "mimic-iv-demo"))


@pytest.fixture(scope="session")
def mimic_demo_dir() -> Path:
    """The MIMIC-IV Clinical Database Demo 2.2, found through MIMIC_IV_DEMO_DIR."""
    path = demo_dir()
    if not (path / "hosp").is_dir() or not (path / "icu").is_dir():
        if os.environ.get("MIMIC_IV_DEMO_DIR"):  # a path given on purpose and wrong is a mistake, not an absent demo
            pytest.fail(f"MIMIC_IV_DEMO_DIR={path} has no hosp/ and icu/: point it at the MIMIC-IV demo folder")
        pytest.skip(f"MIMIC-IV demo not found at {path} (set MIMIC_IV_DEMO_DIR). It is open on PhysioNet: "
                    "https://physionet.org/content/mimic-iv-demo/2.2/")
    return path


def meds_demo_dir_path() -> Path:
    return Path(os.environ.get("MIMIC_IV_DEMO_MEDS_DIR", REPO_ROOT.parent / "shared" / "mimic-iv-demo-meds"))


@pytest.fixture(scope="session")
def meds_demo_dir() -> Path:
    """The MIMIC-IV demo in MEDS (20 subjects, ../shared/mimic-iv-demo-meds/SOURCE.txt), found through
    MIMIC_IV_DEMO_MEDS_DIR."""
    path = meds_demo_dir_path()
    if not (path / "data").is_dir() or not (path / "metadata").is_dir():
        if os.environ.get("MIMIC_IV_DEMO_MEDS_DIR"):  # set on purpose and wrong: a mistake, not an absent demo
            pytest.fail(f"MIMIC_IV_DEMO_MEDS_DIR={path} has no data/ and metadata/: point it at the MEDS demo folder")
        pytest.skip(f"MIMIC-IV demo in MEDS not found at {path} (set MIMIC_IV_DEMO_MEDS_DIR). It is open on "
                    "PhysioNet: https://doi.org/10.13026/t2y8-ea41")
    return path


@pytest.fixture(scope="session")
def tiny_longformer_dir(tmp_path_factory) -> Path:
    return make_tiny_longformer(tmp_path_factory.mktemp("tiny_longformer"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
