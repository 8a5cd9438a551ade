"""docs/interfaces.md as the tests read it.

Two kinds of check:

- Output names (columns, keys, files, methods) are global: `undocumented(names)` lists those that appear nowhere
  in the document in backticks.
- Command-line options are per command: section 2 has one table per command, under a heading
  "### `script.py`", one row per option: "| `--option` (choice/choice) | default | what it does |".
  `option_table_problems(script)` compares that table with the parser the script itself builds, option by
  option: every option the parser accepts is a row of that command's table, every row is an option of that
  command, and each row's default and choices are the parser's. So one script's `--seed` documents no other
  script's.

Parsers are taken from the modules, never from `--help`: `build_arg_parser()` where the module has one, else the
parser its `main(argv)` builds, captured at its `parse_args` call (nothing after it runs).
"""
import argparse
import importlib
import re
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "interfaces.md"

# "| `--engine` (duckdb/bigquery) | duckdb | ..." -> option, choices, default
ROW = re.compile(r"^\|\s*`(--[A-Za-z0-9][A-Za-z0-9-]*)`\s*(?:\(([^)]*)\))?\s*\|\s*([^|]*?)\s*\|")
SECTION = re.compile(r"^###\s+`([A-Za-z0-9_]+\.py)`\s*$")


def documented_names(text=None) -> set:
    return set(re.findall(r"`([^`\n]+)`", DOC.read_text() if text is None else text))


def undocumented(names) -> list:
    """The names (columns, keys, files, methods) that docs/interfaces.md does not name anywhere."""
    known = documented_names()
    return sorted(str(n) for n in set(names) if str(n) not in known)


def cli_scripts() -> list:
    """The scripts at the repository root that have a command line (they build an argparse parser)."""
    return sorted(p.name for p in REPO_ROOT.glob("*.py") if "ArgumentParser(" in p.read_text())


def option_tables(text=None) -> dict:
    """script -> {option: (choices or None, default cell)} from each "### `script.py`" section."""
    tables, current = {}, None
    for line in (DOC.read_text() if text is None else text).splitlines():
        heading = SECTION.match(line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        if line.startswith("#"):
            current = None
            continue
        row = ROW.match(line)
        if row and current is not None:
            option, choices, default = row.groups()
            if option in current:
                raise ValueError(f"docs/interfaces.md: {option} appears twice in one command's table")
            current[option] = (tuple(choices.split("/")) if choices else None, default.strip().strip("`"))
    return tables


class _Captured(Exception):
    pass


def parser_of(script: str) -> argparse.ArgumentParser:
    """The parser `python script` uses: build_arg_parser() or the one main(argv) builds, captured unparsed."""
    module = importlib.import_module(script.removesuffix(".py"))
    if hasattr(module, "build_arg_parser"):
        return module.build_arg_parser()

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            module.main([])
        except _Captured as captured:
            return captured.args[0]
    raise AssertionError(f"{script}: main([]) never parsed its arguments")


def parser_options(parser) -> dict:
    """--option -> its argparse action, for every option --help shows (not --help itself)."""
    options = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            options[long[0]] = action
    return options


def default_cell(action) -> str:
    """How the table writes the action's default: "(required)", "off" for a flag, "-" for none, paths relative
    to the repository."""
    if action.required:
        return "(required)"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    default = action.default
    if default is None or (isinstance(default, (list, tuple)) and not default):
        return "-"
    if isinstance(default, (list, tuple)):
        return " ".join(str(d) for d in default)
    text = str(default)
    if Path(text).is_absolute():
        try:
            text = str(Path(text).relative_to(REPO_ROOT))
        except ValueError:
            pass
    return text


def _same_default(doc: str, action) -> bool:
    expected = default_cell(action)
    if doc == expected:
        return True
    if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
        try:
            return float(doc) == float(action.default)
        except ValueError:
            return False
    return False


def option_table_problems(script: str, parser=None, text=None) -> list:
    """Every difference between `script`'s table in docs/interfaces.md and its parser, one line each."""
    parser = parser_of(script) if parser is None else parser
    table = option_tables(text).get(script)
    if table is None:
        return [f"{script}: no '### `{script}`' option table in docs/interfaces.md"]
    options = parser_options(parser)
    problems = [f"{script}: {o} is an option of the command but not a row of its table"
                for o in options if o not in table]
    problems += [f"{script}: {o} is a row of its table but not an option of the command"
                 for o in table if o not in options]
    for option in [o for o in options if o in table]:
        action, (choices, default) = options[option], table[option]
        wanted = tuple(str(c) for c in action.choices) if action.choices else None
        if choices != wanted:
            problems.append(f"{script}: {option} choices: the table says {choices}, the parser {wanted}")
        if not _same_default(default, action):
            problems.append(f"{script}: {option} default: the table says {default!r}, "
                            f"the parser {default_cell(action)!r}")
    return problems


# -----------------------------------------------------------------------------
# Links between the documents, and docs/design.md's import diagram

LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")


def markdown_files() -> list:
    skip = {".venv", ".git", "node_modules", "trained_models", "runs", "hf_cache"}
    return sorted(p for p in REPO_ROOT.rglob("*.md")
                  if not any(part in skip or part.startswith(".") for part in p.relative_to(REPO_ROOT).parts))


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    seen, out, fenced = {}, set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading and not fenced:
            base = github_anchor(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links() -> list:
    """Relative links of the repository's Markdown files whose file or #anchor does not exist."""
    problems = []
    for doc in markdown_files():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(REPO_ROOT)}: ({target})"
            if not file.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                problems.append(f"{where}: no heading with that anchor")
    return problems


def project_imports() -> dict:
    """module -> the project modules it imports (anywhere in the file), for the scripts at the root."""
    import ast
    modules = {p.stem for p in REPO_ROOT.glob("*.py")}
    found = {}
    for path in REPO_ROOT.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[path.stem] = (names & modules) - {path.stem}
    return found


def design_layout() -> dict:
    """module -> what docs/design.md's "Code layout" diagram says it imports."""
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    block = text[text.index("## Code layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    said = {}
    for line in block.splitlines():
        line = re.sub(r"\(.*?\)", "", line).strip()
        arrow = re.match(r"([\w]+)\.py\s*─+▶\s*(.*)", line)
        if arrow:
            said[arrow.group(1)] = {m.strip() for m in arrow.group(2).split(",") if m.strip()}
        elif line.endswith("import no project module"):
            for name in re.findall(r"(\w+)\.py", line):
                said[name] = set()
        elif re.fullmatch(r"\w+\.py", line):
            said[line[:-3]] = set()
    return said


SECTION_NAME = re.compile(r"\b(BENCHMARKS(?:\.md)?|design\.md|README(?:\.md)?|interfaces\.md),? \(?\"([^\"\n]{2,60})\"")
NAMED_DOCS = {"BENCHMARKS": "BENCHMARKS.md", "BENCHMARKS.md": "BENCHMARKS.md", "design.md": "docs/design.md",
              "README": "README.md", "README.md": "README.md", "interfaces.md": "docs/interfaces.md"}


def headings(path: Path) -> list:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [h.replace("`", "").strip() for h in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M)]


def broken_section_names() -> list:
    """Sections named in words ('BENCHMARKS.md, "Scale"') in the code and the documents that no heading starts with."""
    files = [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("bench/*.py"), *markdown_files()]
    problems = []
    for path in files:
        for doc, name in SECTION_NAME.findall(path.read_text()):
            if not any(h.startswith(name) for h in headings(REPO_ROOT / NAMED_DOCS[doc])):
                problems.append(f'{path.relative_to(REPO_ROOT)}: {doc} "{name}": no such section')
    return problems
