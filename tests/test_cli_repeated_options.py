"""An option that takes one value, given twice with different values: click keeps the last one
without a word (`strategy eval --source a --source b` evaluated `b` only, and the user read it
as both). The command still runs with the last value (scripts append overrides to fixed
options) and a warning names the option and both values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cli.repeated import repeated_options
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def test_a_one_value_option_given_twice_is_warned_and_the_last_used(
    workspace: Workspace, reg: Registry
) -> None:
    # the installed command, in its own process: the warning must not depend on a test having
    # imported the module that gives it
    args = ["strategy", "eval", "--source", "published", "--source=mine", "--metric", "acc"]
    home = ["--home", str(workspace.home)]
    out = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", *home, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "POMLIA_DB_URL"},
    )
    text = " ".join(out.stderr.split())
    assert "warning: --source given 2 times ('published', 'mine'): it takes one value, " \
        "and the last, 'mine', is used" in text, text  # fmt: skip
    # the command ran on the last one: no source of that name
    assert out.returncode != 0 and "'mine'" in text.split("is used", 1)[1], text


def test_the_same_value_twice_and_values_after_a_double_dash_are_not_warned(
    workspace: Workspace, reg: Registry
) -> None:
    out = CliRunner().invoke(app, ["runs", "list", "--limit", "3", "--limit", "3"])
    assert "warning" not in out.output, out.output
    command = typer.main.get_command(app)
    strategy = command.get_command(None, "strategy")  # type: ignore[attr-defined]
    evaluate = strategy.get_command(None, "eval")
    assert repeated_options(evaluate, ["--source", "a", "--", "--source", "b"]) == []
    # a value that looks like an option is the value, not a second --source
    assert repeated_options(evaluate, ["--metric", "--source", "--source", "a"]) == []
    assert repeated_options(evaluate, ["--source", "a", "--source", "b"]) == [
        ("--source", ["a", "b"])
    ]


def test_a_root_option_given_twice_is_warned_and_the_last_used(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`pomlia --home a --home b ...` ran on `b` without a word (the command's own options were
    warned of, the root group's not)."""
    other = tmp_path / "other-home"
    args = ["--home", str(other), "--home", str(workspace.home), "strategy", "sources"]
    out = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "POMLIA_HOME")},
    )
    text = " ".join(out.stderr.split())
    assert f"warning: --home given 2 times ('{other}', '{workspace.home}'): it takes one " \
        f"value, and the last, '{workspace.home}', is used" in text, text  # fmt: skip
    assert out.returncode == 0 and not other.exists(), out.stdout + out.stderr
    root = typer.main.get_command(app)
    # the group's options end at the command's name: a command's own option is not the root's
    assert repeated_options(root, ["--cluster", "a", "jobs", "list", "--cluster", "b"]) == []
    assert repeated_options(root, ["--cluster=a", "--db-url", "x", "--cluster", "b", "data"]) == [
        ("--cluster", ["a", "b"])
    ]
