"""A run's configuration in one line (``pomlia runs list``, the study's live table, the HTML
report), and listing runs without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pomlia_hpc.automl.records import config_summary


def test_a_configuration_in_one_line() -> None:
    probe = {
        "arch": "resnet18",
        "init": "encoder",
        "mode": "linear_probe",
        "lr_head": 0.0018,
        "optimizer": "adamw",
        "batch_size": 32,
        "extra_data": "nearest",
        "extra_n": 200,
    }
    assert config_summary(probe) == "resnet18 encoder/linear_probe lr=1.8e-03 adamw bs=32 +200nn"
    scratch = {"arch": "small_cnn", "lr": 0.01, "optimizer": "sgd", "batch_size": 64}
    assert config_summary(scratch) == "small_cnn lr=1.0e-02 sgd bs=64"


def test_listing_runs_loads_no_torch(tmp_path: Path) -> None:
    # `pomlia runs list` is a registry query: importing the trainer (torch, 3 s) is not needed.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pomlia_hpc.cli import app\n"
        f"home = {str(tmp_path)!r}\n"
        "CliRunner().invoke(app, ['--home', home, 'init'])\n"
        "res = CliRunner().invoke(app, ['--home', home, 'runs', 'list'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
