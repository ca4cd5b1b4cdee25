"""Layer rules that import-linter cannot state: the strategy room imports no torch at module
level (a lazy import inside a function is allowed; the rest is in pyproject's contracts)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pomlia_hpc.strategy

REPO = Path(__file__).resolve().parents[1]


def test_strategy_modules_import_no_torch() -> None:
    modules = ["pomlia_hpc.strategy"] + [
        info.name
        for info in pkgutil.walk_packages(pomlia_hpc.strategy.__path__, "pomlia_hpc.strategy.")
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(m)\n"
        "        break\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"importing {out.stdout.strip()} imported torch"
