"""A chain's settings file as a user keeps it: `monitor schedule --replace` keeps the lines the
user added (``SETTLE``), and `monitor unschedule` with Slurm out of reach changes nothing."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import register_demo_model
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model
from tests.test_cli_slurm_unreachable import dead_slurm, one_error_line, pomlia

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]
runner = CliRunner()
__all__ = ["dead_slurm"]  # a fixture, used by name

ADDED = "# our replicas' clocks drift: a longer margin\nexport SETTLE=20m\n"


def test_replace_keeps_the_lines_a_user_added(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide says to set ``SETTLE`` in the chain's ``schedule.env``; `monitor schedule
    --replace` (a new time) rewrote the file without it, and the chain's runs went back to
    5 minutes without a word."""
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    name = "settle-kept"  # job names are the user's on the whole cluster: one of its own
    demo_model(reg, workspace, name=name, n_ref=50)
    conf = workspace.path("jobs", "monitor", name, "schedule.env")
    res = runner.invoke(app, ["monitor", "schedule", name, "--at", "02:00"])
    assert res.exit_code == 0, (res.output, res.exception)
    try:
        conf.write_text(conf.read_text() + ADDED)
        res = runner.invoke(app, ["monitor", "schedule", name, "--at", "03:00", "--replace"])
        assert res.exit_code == 0, (res.output, res.exception)
        text = conf.read_text()
        assert text.endswith(ADDED), text
        assert text.count("export AT=") == 1 and "export AT=03:00\n" in text, text
    finally:
        res = runner.invoke(app, ["monitor", "unschedule", name])
    assert res.exit_code == 0, res.output


def test_unschedule_without_slurm_leaves_the_chain_as_it_was(
    workspace: Workspace, reg: Registry, dead_slurm: tuple[int, int]
) -> None:
    """With the controller out of reach, `monitor unschedule` removed the chain's settings and
    then failed at squeue: its queued runs stayed, and each found its settings gone. Now the
    error comes first and the settings stay."""
    register_demo_model(reg, workspace, "down-chain", channels=3, num_classes=4)
    conf = workspace.path("jobs", "monitor", "down-chain", "schedule.env")
    conf.parent.mkdir(parents=True)
    conf.write_text("export MODEL=down-chain\nexport EVERY=1d\n")
    line = one_error_line(pomlia(workspace.home, "monitor", "unschedule", "down-chain"))
    assert line.startswith("error: squeue: the Slurm controller"), line
    assert conf.is_file()


def test_replace_leaves_no_piece_of_a_hook_written_over_two_lines(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``--on-alarm`` command with a newline is written quoted over two lines; `monitor
    schedule --replace` kept its second line as a user's, so the file opened a quote it never
    closed and every run of the chain failed to read its settings."""
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    name = "hook-lines"
    demo_model(reg, workspace, name=name, n_ref=50)
    conf = workspace.path("jobs", "monitor", name, "schedule.env")
    hook = "echo alarm\necho 'a second line'"
    res = runner.invoke(app, ["monitor", "schedule", name, "--at", "02:00", "--on-alarm", hook])
    assert res.exit_code == 0, (res.output, res.exception)
    try:
        conf.write_text(conf.read_text() + ADDED)
        args = ["monitor", "schedule", name, "--at", "03:00", "--replace", "--on-alarm", "true"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (res.output, res.exception)
        shown = subprocess.run(
            ["bash", "-c", 'source "$1" && echo "$ON_ALARM|$SETTLE"', "-", str(conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, "true|20m\n", ""), (
            conf.read_text()
        )
    finally:
        res = runner.invoke(app, ["monitor", "unschedule", name])
    assert res.exit_code == 0, res.output
