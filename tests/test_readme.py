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
    # pomlia's one-line error (exit 4, not found, or 2), never a crash or a usage error.
    if proc.returncode != 0:
        assert proc.returncode in (2, 4), proc.stderr
        assert proc.stderr.startswith("error:"), proc.stderr
        assert "Usage:" not in proc.stderr, proc.stderr


def test_commands_named_in_comments_have_their_arguments() -> None:
    """A command a bash block's comment names in backticks (`loop show`) is one the reader may
    type as written: README said "(`loop show` lists them)", but `loop show` needs SLOT."""
    import typer

    root = typer.main.get_command(app)
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    comments = [line.split("#", 1)[1] for b in blocks for line in b.splitlines() if "#" in line]
    checked = []
    for span in (s for c in comments for s in re.findall(r"`([^`]+)`", c)):
        words = span.removeprefix("pomlia ").split()
        cmd, rest = root, words
        while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
            cmd, rest = cmd.commands[rest[0]], rest[1:]
        if cmd is root or hasattr(cmd, "commands"):
            continue  # not a command of pomlia (or only a group named)
        required = [p for p in cmd.params if p.param_type_name == "argument" and p.required]
        given = [w for w in rest if not w.startswith("-")]
        assert len(given) >= len(required), (span, [p.name for p in required])
        checked.append(span)
    assert "loop show SLOT" in checked


def layout_entries() -> dict[str, set[str]]:
    """README's Layout block as {top folder: the names listed for it} (``cli/``, ``vocab.py``)."""
    text = README.read_text()
    block = re.search(r"## Layout\n\n```\n(.*?)```", text, flags=re.S)
    assert block, "README.md has no Layout block"
    listed: dict[str, set[str]] = {}
    top = ""
    for line in block.group(1).splitlines():
        if line and not line[0].isspace():
            top, line = line.split()[0], line[len(line.split()[0]) :]
        listed.setdefault(top, set()).update(w.strip(",") for w in line.split())
    return listed


@pytest.mark.parametrize("folder", ["pomlia_hpc/", "scripts/"])
def test_the_layout_lists_every_module_and_script(folder: str) -> None:
    """The Layout block named neither `provenance.py` and `storage.py` (rooms of their own in
    docs/ARCHITECTURE.md) nor `scripts/gpu_automl_check.sh`; it also must name nothing gone."""
    root = README.parent / folder
    skip = {"__init__.py", "__main__.py", "py.typed", "__pycache__"}
    on_disk = {p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if p.name not in skip}
    assert layout_entries()[folder] == on_disk
