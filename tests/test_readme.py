"""The ``pomlia`` commands shown in README.md run as written (in a fresh, initialised
workspace)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("pomlia ") and "<" not in line:
                cmds.append(line)
    return cmds


def test_readme_has_commands() -> None:
    assert "pomlia init" in readme_commands()


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs(cmd: str, tmp_path: Path) -> None:
    env = {**os.environ, "POMLIA_HOME": str(tmp_path / "ws"), "COLUMNS": "200"}
    env.pop("POMLIA_DB_URL", None)
    env.pop("POMLIA_CLUSTER", None)
    # Initialised as the README's first step does (in-process: one interpreter start less per
    # command); without a registry every other command stopped at "no registry ..., run pomlia
    # init" and none ran.
    init = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "ws"), "init"],
        env={"POMLIA_DB_URL": None, "POMLIA_CLUSTER": None},  # as the command's env below
    )
    assert init.exit_code == 0, init.output
    argv = [sys.executable, "-m", "pomlia_hpc", *shlex.split(cmd)[1:]]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    # An example may refer to data or ids that a fresh workspace lacks: then it must end with
    # pomlia's one-line error (exit 2), never a crash or a usage error (a wrong option).
    if proc.returncode != 0:
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:"), proc.stderr
        assert "Usage:" not in proc.stderr, proc.stderr
