"""The Python names README.md and docs/ give (```pomlia_hpc.serve.logfiles.read_records```, a
``from pomlia_hpc.x import a, b`` in a ``python`` block) exist where the docs say: README sent
readers of the prediction log to ``pomlia_hpc.serve.predlog.read_records`` long after the
function had moved to ``serve/logfiles.py``. Checked from the source (ast), importing nothing,
so the whole of docs/ costs a fraction of a second."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def named(text: str) -> list[str]:
    """Dotted ``pomlia_hpc...`` names in backticks, and ``module.name`` for each name a
    ``python`` block imports from a pomlia_hpc module."""
    names = re.findall(r"`(pomlia_hpc(?:\.\w+)+)", text)
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for mod, imported in re.findall(r"^from (pomlia_hpc[\w.]*) import (.+)$", block, re.M):
            names += [f"{mod}.{n.strip()}" for n in imported.strip("()").split(",") if n.strip()]
    return list(dict.fromkeys(names))


@cache
def top_level(module: Path) -> frozenset[str]:
    """The names a module defines or imports at its top level, and those in its ``__all__``
    (a package that resolves its names on first use lists them there)."""
    tree = ast.parse(module.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                out |= {e.value for e in ast.walk(node) if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(out)


def problem(dotted: str) -> str | None:
    """Why ``dotted`` does not name a module or a module's top-level name (None if it does)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        module = next(
            (m for m in (base.with_suffix(".py"), base / "__init__.py") if m.is_file()), None
        )
        if module is not None:
            break
    else:
        return "no such module"
    if i == len(parts) or parts[i] in top_level(module):
        return None
    return f"{module.relative_to(REPO)} has no {parts[i]!r}"


def every() -> list[tuple[str, str]]:
    return [(d.relative_to(REPO).as_posix(), n) for d in DOCS for n in named(d.read_text())]


def test_the_docs_name_python_api() -> None:
    assert len(every()) > 30


@pytest.mark.parametrize(("doc", "name"), every())
def test_a_named_python_name_exists(doc: str, name: str) -> None:
    assert problem(name) is None, (doc, name, problem(name))


def test_the_check_finds_a_moved_name() -> None:
    assert problem("pomlia_hpc.serve.predlog.read_records") == (
        "pomlia_hpc/serve/predlog.py has no 'read_records'"
    )
    assert problem("pomlia_hpc.serve.logfiles.read_records") is None
    assert problem("pomlia_hpc.nosuch.thing") == "pomlia_hpc/__init__.py has no 'nosuch'"
