"""Rules about the code itself that a review would otherwise have to re-check by hand: small
modules (docs/ARCHITECTURE.md, "Architecture figures") and one atomic writer (``files.py``;
npz and torch files through ``files.write_npz`` and ``models.checkpoint.write_torch``)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pomlia_hpc"
MAX_LINES = 600


def method_calls(source: str) -> list[tuple[int, str | None, str, int]]:
    """(line, owner name or None, method, positional argument count) of every ``x.f(...)``
    call in ``source``, with no keyword arguments counted as positional."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            module = owner.id if isinstance(owner, ast.Name) else None
            args = len(node.args) + (99 if node.keywords else 0)
            found.append((node.lineno, module, node.func.attr, args))
    return sorted(found, key=lambda call: call[0])


def renames(source: str) -> list[int]:
    """Lines of ``source`` that rename or replace a file themselves: ``os.rename``/``os.replace``
    or a one-argument ``.rename(x)``/``.replace(x)`` (``Path``'s; ``str.replace`` takes two)."""
    return [
        line
        for line, module, name, args in method_calls(source)
        if name in ("rename", "replace")
        and (module == "os" or (args == 1 and module not in ("dataclasses", "re")))
    ]


def test_the_check_finds_renames() -> None:
    bad = "os.replace(a, b)\np.rename(q)\ntmp.replace(path)\n"
    ok = "s.replace('a', 'b')\ndataclasses.replace(x, y=1)\nt.replace(tzinfo=None)\n"
    assert renames(bad) == [1, 2, 3] and renames(ok) == []


def outside(find: Callable[[str], list[int]], *allowed: str) -> list[str]:
    """``file:line`` of every line ``find`` finds in the package's modules but ``allowed``."""
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in allowed
        for line in find(path.read_text())
    ]


def test_only_the_atomic_layer_renames_files() -> None:
    offenders = outside(renames, "files.py", "temps.py")  # temps.py puts back a moved-aside folder
    assert not offenders, f"write through pomlia_hpc.files instead: {offenders}"


def array_and_torch_saves(source: str) -> list[int]:
    """Lines of ``source`` that call ``torch.save`` or ``np.savez``/``np.savez_compressed``
    themselves (``models.checkpoint.write_torch`` and ``files.write_npz`` write them whole or
    not at all)."""
    return [line for line, module, name, _ in method_calls(source) if (module, name) in SAVES]


SAVES = {("torch", "save"), ("np", "savez"), ("np", "savez_compressed"), ("numpy", "savez")}


def test_only_the_atomic_layer_saves_arrays_and_torch_objects() -> None:
    assert array_and_torch_saves("torch.save(x, f)\nnp.savez(f, a=1)\nnp.save(f, a)\n") == [1, 2]
    offenders = outside(array_and_torch_saves, "files.py", "models/checkpoint.py")
    assert not offenders, f"use files.write_npz / checkpoint.write_torch instead: {offenders}"


def test_no_module_over_the_size_limit_without_a_reason() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "Why over 600 lines" not in doc:
            too_long.append(f"{path.relative_to(PACKAGE.parent)} ({len(text.splitlines())})")
    assert not too_long, f"split these or say at their top why not: {too_long}"


#: The functions over 100 lines that docs/ARCHITECTURE.md names ("Architecture figures"): the
#: first migration, two command option lists and the recommender's one pass.
LONG_FUNCTIONS = {
    "registry/migrations/versions/0001_initial_schema.py:upgrade",
    "cli/automl.py:automl_run",
    "cli/serve.py:serve",
    "strategy/recommend.py:recommend",
}


def test_functions_over_100_lines_are_the_ones_architecture_names() -> None:
    """Measured as scripts/code_sizes.py does: from the first decorator to the last line."""
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno is not None and node.end_lineno - start + 1 > 100:
                    long[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = (
                        node.end_lineno - start + 1
                    )
    extra = {name: n for name, n in long.items() if name not in LONG_FUNCTIONS}
    assert not extra, f"split these into named steps (or name them in ARCHITECTURE): {extra}"


def test_every_top_level_module_is_in_the_layer_contract() -> None:
    # A module the contract does not list is not checked by import-linter at all.
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    listed = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules | packages <= listed, sorted((modules | packages) - listed)


def marked_helpers(source: str) -> list[str]:
    """Functions of ``source`` not named ``test*`` that carry a pytest mark: pytest applies a
    mark to the tests it decorates only, so a mark on a helper is lost (a test that calls it
    runs unmarked, e.g. in the wrong lane)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith(
            "test"
        ):
            for mark in map(ast.unparse, node.decorator_list):
                if mark.startswith("pytest.mark."):
                    found.append(node.name)
    return found


def test_the_check_finds_marks_on_helpers() -> None:
    source = "@pytest.mark.slurm\ndef _helper(): pass\n@pytest.mark.slurm\ndef test_x(): pass\n"
    assert marked_helpers(source) == ["_helper"]


def test_no_pytest_mark_sits_on_a_helper() -> None:
    tests = Path(__file__).resolve().parent
    found = {
        str(path.relative_to(tests)): names
        for path in sorted(tests.rglob("*.py"))
        if (names := marked_helpers(path.read_text()))
    }
    assert found == {}
