"""docs/interfaces.md names every column, event type, method and figure the code defines, and its option
tables are each command's own parser, option by option and command by command (tests/interfaces_doc.py).

The outputs a run writes (predictions.csv, metrics.json, checkpoints, faithfulness.json) are checked against
the document where those runs happen: tests/test_train_cli.py and tests/test_explain_end_to_end.py."""
import argparse

import pytest

import attribution
import event_table
import explain_clinicalLF
from interfaces_doc import (DOC, broken_links, broken_section_names, cli_scripts, design_layout, option_table_problems,
                            option_tables, parser_of, parser_options, project_imports, undocumented)

COMMANDS = ["derive_synthetic_vocab.py", "explain_clinicalLF.py", "extract_cohort.py", "meds_export.py", "predict.py",
            "synthetic_mimic.py",
            "train.py"]


def test_event_table_columns_and_event_types_are_documented():
    assert undocumented(event_table.REQUIRED_COLUMNS) == []
    assert undocumented(event_table.EVENT_TYPES) == []


def test_explain_methods_figures_and_columns_are_documented():
    assert undocumented(attribution.METHODS) == []
    assert undocumented(explain_clinicalLF.FIGURES) == []
    assert undocumented(explain_clinicalLF.DEVELOPER_FIGURES) == []
    import figures  # the figures module draws exactly these behind --developer-figures
    assert figures.DEVELOPER_FIGURES == explain_clinicalLF.DEVELOPER_FIGURES
    assert undocumented(explain_clinicalLF.ATTRIBUTION_EVENT_COLUMNS) == []


def test_every_command_line_has_one_option_table():
    """A new script with a command line needs its table; a table needs a script with a command line."""
    assert cli_scripts() == COMMANDS
    assert sorted(option_tables()) == COMMANDS


@pytest.mark.parametrize("script", COMMANDS)
def test_option_table_is_the_parser(script):
    parser = parser_of(script)
    assert len(parser_options(parser)) >= 2
    assert option_table_problems(script, parser) == []


def _with_line(text: str, after: str, line: str) -> str:
    assert after in text
    return text.replace(after, after + "\n" + line, 1)


def test_a_wrong_table_is_caught():
    """The check fails on each kind of wrong row (the document itself is not changed)."""
    text = DOC.read_text()
    train, extract = parser_of("train.py"), parser_of("extract_cohort.py")
    # another command's option: train.py's --seed in extract_cohort.py's table
    extra = _with_line(text, "| `--no-progress` | off | hide DuckDB's progress bar |", "| `--seed` | 42 | seed |")
    assert option_table_problems("extract_cohort.py", extract, extra) == [
        "extract_cohort.py: --seed is a row of its table but not an option of the command"]
    assert option_table_problems("train.py", train, extra) == []
    # a missing row, a wrong default, wrong choices
    seed_row = next(line for line in text.splitlines() if line.startswith("| `--seed` | 42 |"))
    assert option_table_problems("train.py", train, text.replace(seed_row + "\n", "", 1)) == [
        "train.py: --seed is an option of the command but not a row of its table"]
    wrong = text.replace("| `--max-events` | 768 |", "| `--max-events` | 256 |", 1)
    assert option_table_problems("train.py", train, wrong) == [
        "train.py: --max-events default: the table says '256', the parser '768'"]
    wrong = text.replace("| `--pooling` (cls/mean) |", "| `--pooling` (cls/max) |", 1)
    assert option_table_problems("train.py", train, wrong) == [
        "train.py: --pooling choices: the table says ('cls', 'max'), the parser ('cls', 'mean')"]
    # no table at all
    assert option_table_problems("train.py", train, text.replace("### `train.py`", "### train", 1)) == [
        "train.py: no '### `train.py`' option table in docs/interfaces.md"]


def test_parsers_of_scripts_without_build_arg_parser_are_captured_unparsed():
    parser = parser_of("extract_cohort.py")
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser_options(parser)["--output"].required


def test_a_name_missing_from_the_document_is_reported():
    assert undocumented(["stay_id", "no_such_column_anywhere"]) == ["no_such_column_anywhere"]


def test_links_between_the_documents_resolve():
    """Every relative link of every Markdown file names a file that exists and, after #, one of its headings;
    every section named in words (BENCHMARKS.md, "Scale") in the code or the documents exists."""
    assert broken_links() == []
    assert broken_section_names() == []


def test_the_code_layout_diagram_is_the_imports():
    """docs/design.md "Code layout": each root module's arrow lists exactly the project modules it imports."""
    assert design_layout() == project_imports()
