"""docs/interfaces.md names every column, event type, option, method and figure the code defines.

The outputs a run writes (predictions.csv, metrics.json, checkpoints, faithfulness.json) are checked against
the document where those runs happen: tests/test_train_cli.py and tests/test_explain_end_to_end.py."""
import os
import re
import subprocess
import sys

import pytest

import explain_clinicalLF
import event_table
from conftest import REPO_ROOT
from interfaces_doc import undocumented


def test_event_table_columns_and_event_types_are_documented():
    assert undocumented(event_table.REQUIRED_COLUMNS) == []
    assert undocumented(event_table.EVENT_TYPES) == []


def test_explain_methods_figures_and_columns_are_documented():
    assert undocumented(explain_clinicalLF.METHODS) == []
    assert undocumented(explain_clinicalLF.FIGURES) == []
    assert undocumented(explain_clinicalLF.EVENT_COLUMNS) == []


@pytest.mark.parametrize("script", ["extract_cohort.py", "train.py", "explain_clinicalLF.py", "synthetic_mimic.py"])
def test_every_command_line_option_is_documented(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, COLUMNS="200"), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout)) - {"--help"}
    assert len(options) >= 3
    assert undocumented(options) == [], f"{script}: options missing from docs/interfaces.md"


def test_a_name_missing_from_the_document_is_reported():
    assert undocumented(["stay_id", "no_such_column_anywhere"]) == ["no_such_column_anywhere"]
