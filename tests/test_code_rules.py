"""Rules about the code itself that a review would otherwise have to re-check by hand: small
modules (docs/ARCHITECTURE.md, "Architecture figures") and one atomic writer (``files.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pomlia_hpc"
MAX_LINES = 600


def renames(source: str) -> list[int]:
    """Lines of ``source`` that rename or replace a file themselves: ``os.rename``/``os.replace``
    or a one-argument ``.rename(x)``/``.replace(x)`` (``Path``'s; ``str.replace`` takes two)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, node.func.value
        if name not in ("rename", "replace"):
            continue
        module = owner.id if isinstance(owner, ast.Name) else None
        one_path = len(node.args) == 1 and not node.keywords and module not in ("dataclasses", "re")
        if module == "os" or one_path:
            found.append(node.lineno)
    return found


def test_the_check_finds_renames() -> None:
    bad = "os.replace(a, b)\np.rename(q)\ntmp.replace(path)\n"
    ok = "s.replace('a', 'b')\ndataclasses.replace(x, y=1)\nt.replace(tzinfo=None)\n"
    assert renames(bad) == [1, 2, 3] and renames(ok) == []


def test_only_the_atomic_layer_renames_files() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "files.py"
        for line in renames(path.read_text())
    ]
    assert not offenders, f"write through pomlia_hpc.files instead: {offenders}"


def test_no_module_over_the_size_limit_without_a_reason() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "Why over 600 lines" not in doc:
            too_long.append(f"{path.relative_to(PACKAGE.parent)} ({len(text.splitlines())})")
    assert not too_long, f"split these or say at their top why not: {too_long}"
