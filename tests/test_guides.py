"""The ``pomlia`` commands in the user guide (docs/guide/*.md) run as written, each in a fresh
workspace, as the README's do (tests/test_readme.py); in-process, so that the whole guide costs
one interpreter start. A command must succeed or end with pomlia's one-line error (e.g. a
dataset that a fresh, initialised workspace lacks): never a crash, never a usage error (a wrong
option)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.workspace import Workspace

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"


def guide_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``pomlia`` line in a ``bash`` block of the guide."""
    out = []
    for page in sorted(GUIDE.glob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("#")[0].strip()
                if line.startswith("pomlia ") and "<" not in line:
                    out.append((page.name, line))
    return out


def test_every_guide_page_has_commands() -> None:
    pages = {p for p, _c in guide_commands()}
    expected = {p.name for p in GUIDE.glob("*.md")} - {"README.md"}
    assert pages == expected


@pytest.mark.parametrize(("page", "cmd"), guide_commands())
def test_guide_command_runs(
    page: str, cmd: str, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pomlia_hpc.cli import app

    monkeypatch.chdir(GUIDE.parents[1])  # paths in the guide are relative to the repository
    # A fresh workspace is an initialised one (the README's first step is `pomlia init`): without
    # a registry, every command stopped at "no registry ..., run pomlia init" and none ran. The
    # `workspace` fixture is one, as `pomlia init` makes it (POMLIA_HOME), with a copy of a new
    # registry: `init` itself migrated a new one for each of the ~40 commands.
    res = CliRunner().invoke(app, shlex.split(cmd)[1:])
    if res.exit_code == 0:
        return
    assert isinstance(res.exception, PomliaError), (page, cmd, res.exit_code, res.output)
    assert "\n" not in res.exception.message, (page, cmd, res.exception.message)


class _SubmittedError(Exception):
    """Raised where the encoder's training job would be submitted: every check passed."""


def test_the_data_page_feeds_the_fingerprints_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages chain (automl.md's model is "used on the next pages"), but data.md synthesised
    at --scale 0.002 and fingerprints.md's first command then failed: "training set has 35
    images, fewer than one batch of 128". Here data.md's ingest, then that command, in one
    workspace, up to the training job's submission (the training itself is not run)."""
    from pomlia_hpc.cli import app
    from pomlia_hpc.cluster import Executor

    def page(name: str) -> list[str]:
        return [cmd for p, cmd in guide_commands() if p == name]

    raw = str(tmp_path / "lookalikes")  # not the page's /tmp folder, which other tests write
    ingest = [
        cmd.replace("/tmp/pomlia-guide-lookalikes", raw)
        for cmd in page("data.md")
        if cmd.startswith(("pomlia data synth", "pomlia data add"))
    ]
    assert len(ingest) >= 3, ingest
    monkeypatch.setenv("POMLIA_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    monkeypatch.chdir(GUIDE.parents[1])
    for cmd in ["pomlia init", *ingest]:
        res = CliRunner().invoke(app, shlex.split(cmd)[1:])
        assert res.exit_code == 0, (cmd, res.output)

    def submitted(*args: object, **kw: object) -> Executor:
        raise _SubmittedError

    monkeypatch.setattr(Executor, "from_profile", submitted)
    train = page("fingerprints.md")[0]
    assert train.startswith("pomlia fingerprint train "), train
    res = CliRunner().invoke(app, shlex.split(train)[1:])
    assert isinstance(res.exception, _SubmittedError), (train, res.output)


@pytest.mark.usefixtures("wide_console")
def test_the_dry_run_shown_is_the_one_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline.md shows the dry run of the paper's pipeline on the haicore profile; it showed
    a table of another style than the one printed. The page's block is what a pipe gets (at a
    width that wraps no cell: the console's width is set when it is made, so COLUMNS alone
    depended on which test of the worker made it; CI's run got narrower, wrapped columns)."""
    from pomlia_hpc.cli import app

    text = (GUIDE / "pipeline.md").read_text()
    cmd = "$ pomlia --cluster haicore pipeline run configs/pipelines/medmnist2d.yaml --dry-run\n"
    shown = text[text.index(cmd) + len(cmd) :].split("```", 1)[0]
    monkeypatch.setenv("POMLIA_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    monkeypatch.chdir(GUIDE.parents[1])
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    res = CliRunner().invoke(app, shlex.split(cmd)[2:])
    assert res.exit_code == 0, res.output
    printed = "".join(line.rstrip() + "\n" for line in res.stdout.splitlines())
    assert printed.strip("\n") == shown.strip("\n")
