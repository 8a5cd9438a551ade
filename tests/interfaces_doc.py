"""docs/interfaces.md as the tests read it: a name is documented where it appears in backticks."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "interfaces.md"


def documented_names() -> set:
    return set(re.findall(r"`([^`\n]+)`", DOC.read_text()))


def undocumented(names) -> list:
    """The names (columns, keys, options, files) that docs/interfaces.md does not name."""
    known = documented_names()
    return sorted(str(n) for n in set(names) if str(n) not in known)
