"""Running ``pomlia`` in-process from tests."""

from __future__ import annotations

from typer.testing import CliRunner

from pomlia_hpc.cli import app

runner = CliRunner()


def cli_ok(*args: str) -> str:
    """Run ``pomlia ARGS...``, fail the test unless it exits 0, return its output."""
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output
