"""The nightly chain tests the period each run was scheduled for: a run's window ends at its
scheduled start (not when Slurm started it) and the next run is scheduled one period after
that scheduled start, so a held job leaves no gap and the chain does not drift."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import QueuedJob
from pomlia_hpc.monitor import schedule as schedule_mod
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "monitor.sbatch"


def _run_script(tmp_path: Path, begin: str | None) -> list[str]:
    """Run jobs/monitor.sbatch with a stand-in Python that records its arguments."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {calls}\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    conf = tmp_path / "schedule.env"
    conf.write_text(f"export MODEL=blood EVERY=1d AT=02:00 WINDOW=1d ON_ALARM= PY={fake}\n")
    env = {**os.environ, "POMLIA_MONITOR_CONF": str(conf)}
    env.pop("POMLIA_MONITOR_BEGIN", None)
    if begin is not None:
        env["POMLIA_MONITOR_BEGIN"] = begin
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, capture_output=True)
    return calls.read_text().splitlines()


def test_a_run_tests_the_window_ending_at_its_scheduled_start(tmp_path: Path) -> None:
    begin = "2026-12-05T02:00:00+00:00"
    resubmit, run = _run_script(tmp_path, begin)
    assert "monitor schedule blood" in resubmit and f"--chain --window 1d --after {begin}" in (
        resubmit
    )
    assert run.startswith("-m pomlia_hpc monitor run blood --window 1d")
    assert f"--until {begin}" in run
    # Its window ends a settling margin before that (both ends moved: windows still meet).
    assert "--settle 5m" in run


def test_without_a_scheduled_start_the_window_ends_now(tmp_path: Path) -> None:
    # Cron and scrontab runs (POMLIA_MONITOR_ONCE) know no scheduled start.
    resubmit, run = _run_script(tmp_path, None)
    assert "--after" not in resubmit and "--until" not in run


def test_the_next_run_is_scheduled_from_the_schedule_not_the_start(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_model(reg, workspace, n_ref=50)
    folder = workspace.path("jobs", "monitor", "blood")
    folder.mkdir(parents=True)
    (folder / "schedule.env").write_text("export MODEL=blood\n")
    submitted: list[tuple[datetime | None, dict[str, str]]] = []

    def submit(
        *args: object, begin: datetime | None = None, env: dict[str, str], **kw: object
    ) -> str:
        submitted.append((begin, dict(env)))
        return "77"

    def none_queued(name: str, script: Path | None = None) -> list[QueuedJob]:
        return []

    monkeypatch.setattr(schedule_mod, "submit_script", submit)
    monkeypatch.setattr(schedule_mod, "jobs_named", none_queued)
    scheduled = datetime.fromisoformat("2026-12-05T02:00:00+00:00")
    # The run scheduled for 02:00 started three hours late; its successor is due at 02:00
    # the next day all the same, and is told that it was scheduled for then. As the chain's
    # job calls it: the command line with the hidden --chain --after.
    args = ["monitor", "schedule", "blood", "--every", "1d", "--at", "02:00", "--chain"]
    res = CliRunner().invoke(app, [*args, "--after", scheduled.isoformat()])
    assert res.exit_code == 0, (res.output, res.exception)
    ((begin, env),) = submitted
    assert begin == scheduled + timedelta(days=1)
    assert datetime.fromisoformat(env["POMLIA_MONITOR_BEGIN"]) == begin
