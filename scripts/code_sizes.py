"""Print the largest modules and functions of the package, for the architecture figures.

Usage: ``python scripts/code_sizes.py [ROOT] [--top N]`` (ROOT: a checkout, default this one).
Lines are physical lines of the file; a function's size is from its ``def`` (decorators
included) to its last line, nested functions counted inside their parent and on their own.
Modules over the 600-line limit are marked; one that gives its reason at its top (a line
starting ``Why over 600 lines``) is marked as explained.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

LIMIT = 600


def sizes(root: Path) -> tuple[list[tuple[int, str, bool]], list[tuple[int, str]]]:
    """(lines, module, explained) of every module and (lines, module:function) of every
    function under ``root/pomlia_hpc``."""
    modules, functions = [], []
    for path in sorted((root / "pomlia_hpc").rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(root))
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        modules.append((len(text.splitlines()), rel, "Why over 600 lines" in doc))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                functions.append((node.end_lineno - start + 1, f"{rel}:{node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=".", type=Path)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    modules, functions = sizes(args.root)
    total = sum(n for n, _, _ in modules)
    over = [m for m in modules if m[0] > LIMIT]
    print(f"{len(modules)} modules, {total} lines; over {LIMIT}: {len(over)}")
    print(f"  of those without a reason at the top: {sum(not e for _, _, e in over)}")
    print(f"functions: {len(functions)}; over 100 lines: {sum(n > 100 for n, _ in functions)}")
    print("\nlargest modules (lines):")
    for n, name, explained in modules[: args.top]:
        mark = (" (reason given)" if explained else " OVER") if n > LIMIT else ""
        print(f"  {n:5d}  {name}{mark}")
    print("\nlargest functions (lines):")
    for n, name in functions[: args.top]:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
