"""A monitoring chain that is behind its schedule catches up in one run: after an outage an
hourly chain ran once per missed hour (168 runs for a week), and a period shorter than one run
fell further behind with every run. The run that finds its successor's time passed queues
one run at the latest time passed, told the start of the whole missed span, and says so in
the chain's log. Resubmission on the real Slurm; the running job is played by the test
(``SLURM_JOB_ID`` set to the chain's queued job, as in test_monitor_chain_outage.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.monitor.catchup import catch_up, next_run
from pomlia_hpc.monitor.schedule import job_name
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import local_time_zone, scheduled_hourly_chain

runner = CliRunner()
HOUR = timedelta(hours=1)
SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "monitor.sbatch"


@pytest.fixture
def chain(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An hourly chain of its own model, its first run an hour ahead; the test runs as that
    job. Yields the model's name; ends the chain after."""
    yield from scheduled_hourly_chain(reg, workspace, monkeypatch, "catchup")


@pytest.mark.slurm
def test_a_chain_down_a_week_catches_up_in_one_run(chain: str, reg: Registry) -> None:
    scheduled = datetime.now(UTC).replace(microsecond=0) - timedelta(days=7, minutes=10)
    args = ["monitor", "schedule", chain, "--every", "1h", "--at", "", "--chain", "--window"]
    res = runner.invoke(app, [*args, "1h", "--after", scheduled.isoformat()])
    out = " ".join((res.output + str(res.exception or "")).split())
    assert res.exit_code == 0, out
    assert "the chain is behind: 168 run(s) due from" in out, out
    queued = [j for j in jobs_named(job_name(chain)) if j.job_id != os.environ["SLURM_JOB_ID"]]
    assert len(queued) == 1, queued  # one run, not 168
    with reg.session() as s:
        row = s.scalars(select(Job).where(Job.scheduler_id == queued[0].job_id)).one()
        meta = dict(row.meta or {})
    # It stands for the runs due at +1 h ... +168 h: its window is all of theirs, from the
    # end of the late run's own window to its scheduled start (the latest time passed).
    assert datetime.fromisoformat(meta["since"]) == scheduled
    assert datetime.fromisoformat(meta["begin"]) == scheduled + 168 * HOUR


@pytest.mark.slurm
def test_the_run_after_a_catch_up_run_tests_its_own_window_only(
    chain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch exports the submitting job's environment: the successors of a catch-up run
    inherited its window start and each tested from there (windows that grew and overlapped,
    seen on a held 30 s chain). The next run is submitted with it set empty."""
    real = shutil.which("sbatch")
    assert real is not None
    shims, calls = tmp_path / "shims", tmp_path / "sbatch-args.txt"
    shims.mkdir()
    (shims / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> "{calls}"\nexec "{real}" "$@"\n')
    (shims / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    # As inside the catch-up run; its successor is not behind.
    monkeypatch.setenv("POMLIA_MONITOR_SINCE", "2026-12-01T00:00:00+00:00")
    scheduled = datetime.now(UTC).replace(microsecond=0)
    args = ["monitor", "schedule", chain, "--every", "1h", "--at", "", "--chain"]
    res = runner.invoke(app, [*args, "--after", scheduled.isoformat()])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "behind" not in res.output
    (line,) = calls.read_text().splitlines()
    exported = line.split("--export=", 1)[1].split()[0].split(",")
    assert "POMLIA_MONITOR_SINCE=" in exported, line


def test_a_run_that_is_not_behind_schedules_its_next_time() -> None:
    now = datetime(2026, 12, 5, 12, 30, tzinfo=UTC)
    assert catch_up(None, HOUR, now - 10 * timedelta(minutes=1), HOUR, now) is None
    assert catch_up("02:00", timedelta(days=1), now - 10 * HOUR, timedelta(days=1), now) is None


def test_a_period_shorter_than_one_run_merges_the_runs_it_missed() -> None:
    """Runs of 25 min every 10 min: the next run stands for the two it missed, so the chain
    is never more than one run behind (it was 15 min more behind with each run)."""
    every = timedelta(minutes=10)
    scheduled = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    behind = catch_up(None, every, scheduled, every, scheduled + timedelta(minutes=25))
    assert behind is not None and behind.missed == 2
    assert behind.begin == scheduled + 2 * every and behind.since == scheduled
    # A longer window than the period (overlapping runs): from the first missed run's start.
    wide = catch_up(None, every, scheduled, 3 * every, scheduled + timedelta(minutes=25))
    assert wide is not None and wide.since == scheduled + every - 3 * every


def test_a_nightly_chain_catches_up_at_its_time_of_day() -> None:
    day = timedelta(days=1)
    # Scheduled for 02:00 (local wall clock) three nights ago, started at 09:00 today.
    scheduled = datetime.now().astimezone().replace(hour=2, minute=0, second=0, microsecond=0)
    scheduled -= 3 * day
    behind = catch_up("02:00", day, scheduled, day, scheduled + 3 * day + 7 * HOUR)
    assert behind is not None and behind.missed == 3
    assert behind.begin.hour == 2 and behind.begin.date() == (scheduled + 3 * day).date()
    assert behind.since == scheduled  # the first missed night's window start
    assert "3 run(s) due from" in behind.describe()


def test_the_catch_up_run_tests_the_whole_missed_span(tmp_path: Path) -> None:
    """jobs/monitor.sbatch: a run told POMLIA_MONITOR_SINCE tests from there to its scheduled
    start, and passes the chain's window to its resubmission."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-python"
    fake.write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\necho "since=${{POMLIA_MONITOR_SINCE:-}}" >> {calls}\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    conf = tmp_path / "schedule.env"
    conf.write_text(f"export MODEL=blood EVERY=1h AT= WINDOW=2h ON_ALARM= PY={fake}\n")
    begin, since = "2026-12-05T10:00:00+00:00", "2026-12-01T00:00:00+00:00"
    env = {
        **os.environ,
        "POMLIA_MONITOR_CONF": str(conf),
        "POMLIA_MONITOR_BEGIN": begin,
        "POMLIA_MONITOR_SINCE": since,
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, check=True, capture_output=True)
    resubmit, inherited, run, _ = calls.read_text().splitlines()
    assert "--chain --window 2h --after" in resubmit
    assert inherited == "since="  # not handed on to the next run's submission
    assert f"--until {begin} --since {since}" in run
    said = " ".join(done.stdout.decode().split())
    assert f"this run tests from {since} to {begin}, as the run before it said" in said


@pytest.fixture
def berlin() -> Iterator[None]:
    """This process on Europe/Berlin time (summer time from the last Sunday of March to the
    last Sunday of October) for the test."""
    with local_time_zone("Europe/Berlin"):
        yield


@pytest.mark.usefixtures("berlin")
@pytest.mark.parametrize(
    ("at", "night", "apart"),
    [
        ("04:00", datetime(2026, 10, 24, 4), 25 * HOUR),
        ("03:00", datetime(2026, 3, 28, 3), 23 * HOUR),
    ],
)
def test_windows_meet_across_a_summer_time_change(
    at: str, night: datetime, apart: timedelta
) -> None:
    """A nightly chain keeps its time of day, so across a summer-time change its runs are 25
    (or 23) hours apart; each run tested the 24 hours before it, leaving an hour untested (or
    testing one twice). The next run's window starts where this run's ended, also when it
    catches up."""
    day = timedelta(days=1)
    scheduled = night.astimezone()  # this run's scheduled start, on the local wall clock
    nxt = next_run(at, day, scheduled, day, scheduled + 12 * HOUR)
    assert nxt.behind is None and nxt.begin - scheduled == apart
    assert nxt.since == scheduled  # not nxt.begin - 24 h
    assert (nxt.describe() or "").startswith("the clock changes (summer time) before the next")
    late = next_run(at, day, scheduled, day, scheduled + 3 * day)
    assert late.behind is not None and late.since == scheduled
    # Runs on either side of the change: the window is --window before the run, as always.
    week = (night + 7 * day).astimezone()
    steady = next_run(at, day, week, day, week + HOUR)
    assert steady.since is None and steady.begin - week == day
    # A window shorter than the period keeps its length (23 h apart, one period after the
    # last window's start would be the run's own start: an empty window, refused).
    short = next_run(at, day, scheduled, HOUR, scheduled + 12 * HOUR)
    assert short.since is None and short.begin == nxt.begin
    late_short = next_run(at, day, scheduled, HOUR, scheduled + day + 2 * HOUR)
    assert late_short.behind is not None and late_short.since == late_short.begin - HOUR
