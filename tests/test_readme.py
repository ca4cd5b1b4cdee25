"""The ``pomlia`` commands shown in README.md run as written (in a fresh, initialised
workspace)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main

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
def test_readme_command_runs(
    cmd: str,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In a workspace made as the README's first step (`pomlia init`) makes one; without a
    # registry every other command stopped at "no registry ..., run pomlia init" and none ran.
    # Through the console script's own entry point, in this process: a new interpreter per
    # command (torch and the CLI imported again, ~2 s of CPU each) cost the suite minutes, and
    # tests/test_cli.py runs `python -m pomlia_hpc` itself.
    monkeypatch.setenv("COLUMNS", "200")
    code, _out, err = pomlia_main(monkeypatch, capsys, *shlex.split(cmd)[1:])
    assert "Traceback" not in err, err
    # An example may refer to data or ids that a fresh workspace lacks: then it must end with
    # pomlia's one-line error (exit 4, not found, or 2), never a crash or a usage error.
    if code not in (0, None):
        assert code in (2, 4), err
        assert err.startswith("error:"), err
        assert "Usage:" not in err, err


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
