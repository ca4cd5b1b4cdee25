"""Tests use the public names of pomlia-hpc only: no ``from x import _name``, no ``import _x``,
no ``something._name`` (an object's own ``self._x`` and dunders are fine). A test that reaches
into private names breaks on every refactoring and tests what users cannot call; a seam worth
patching deserves a public name."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: Standard-library names that start with "_" but are documented, public API.
STDLIB_PUBLIC = {("os", "_exit"), ("sys", "_getframe")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, text) of every use of a private name of another module or object in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if any(_private(p) for p in mod.split(".")):
                found.append((node.lineno, f"from {mod} import ..."))
            found += [(node.lineno, f"import {a.name}") for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if any(_private(p) for p in a.name.split(".")):
                    found.append((node.lineno, f"import {a.name}"))
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value.id if isinstance(node.value, ast.Name) else ""
            if base not in ("self", "cls") and (base, node.attr) not in STDLIB_PUBLIC:
                found.append((node.lineno, f"._{node.attr.lstrip('_')}"))
    return found


def test_the_check_finds_private_names() -> None:
    bad = "from m import _x\nimport _y\nimport a._b\nobj._z()\nsuper()._w()\n"
    assert [line for line, _ in private_uses(bad)] == [1, 2, 3, 4, 5]
    good = "from m import x\nself._own = 1\ncls._c\nobj.__class__\nfrom __future__ import a\n"
    good += "os._exit(0)\n"
    assert private_uses(good) == []


def test_no_test_uses_a_private_name() -> None:
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}: {text}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, text in private_uses(path.read_text())
    ]
    assert not offenders, "tests use private names:\n" + "\n".join(offenders)
