"""`monitor schedule --at` reads the time of day on the clock of the process (`TZ`, else the
system's), and the lists and reports are in UTC: the start it prints names its zone and gives
UTC beside it (it printed `begins 2026-12-07 02:30:00`, no zone, under `TZ=Asia/Kolkata`,
while `jobs list` and Slurm showed 21:00). On the real Slurm: the job's --begin is that
instant."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model, local_time_zone

pytestmark = pytest.mark.usefixtures("slurm")


@pytest.fixture
def kolkata() -> Iterator[None]:
    """This process on Asia/Kolkata time (UTC+05:30, no summer time) for the test."""
    with local_time_zone("Asia/Kolkata"):
        yield


@pytest.mark.usefixtures("kolkata")
def test_the_printed_start_names_its_zone_and_utc(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_model(reg, workspace, n_ref=50)
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    res = CliRunner().invoke(app, ["monitor", "schedule", "blood", "--at", "02:30"])
    try:
        assert res.exit_code == 0, (res.output, res.exception)
        text = " ".join(res.output.split())
        m = re.search(r"\(slurm (\d+), .*begins (\S+ 02:30:00) IST \((\S+ 21:00) UTC\)", text)
        assert m is not None, text
        local = datetime.strptime(m.group(2), "%Y-%m-%d %H:%M:%S")
        utc = datetime.strptime(m.group(3), "%Y-%m-%d %H:%M")
        assert local - utc == timedelta(hours=5, minutes=30)
        # Slurm holds the job until that instant (squeue's start time, asked in UTC)
        start = subprocess.run(
            ["squeue", "-h", "-j", m.group(1), "-o", "%S"],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC"},
            check=True,
        ).stdout.strip()
        assert datetime.fromisoformat(start).replace(tzinfo=UTC) == utc.replace(tzinfo=UTC)
    finally:
        CliRunner().invoke(app, ["monitor", "unschedule", "blood"])
