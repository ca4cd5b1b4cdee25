"""The nightly monitor on the real single-node Slurm, with the period compressed to seconds:
the chain runs twice (two reports), refuses a second chain, and unschedule leaves no job."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor.schedule import job_name, next_begin
from pomlia_hpc.registry import Job, MonitorReport, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.waiting import wait_until
from tests.monitor_support import demo_model, images, log_predictions

pytestmark = pytest.mark.slurm
runner = CliRunner()


@pytest.fixture(autouse=True)
def slurm_profile(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """`monitor schedule` needs a Slurm profile (the local one is refused with a cron line)."""
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")


def reports(reg: Registry) -> int:
    with reg.session() as s:
        return int(s.scalar(select(func.count()).select_from(MonitorReport)) or 0)


def test_chain_runs_twice_and_unschedule_leaves_no_job(
    slurm: None, workspace: Workspace, reg: Registry
) -> None:
    bundle = demo_model(reg, workspace, n_ref=100)
    x, _ = images(40)
    log_predictions(workspace, bundle, x)
    res = runner.invoke(app, ["monitor", "schedule", "blood", "--at", "", "--every", "3s"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "submitted" in res.output and "no cron line" in res.output
    name = job_name("blood")
    try:
        with pytest.raises(InputError, match="already scheduled"):
            runner.invoke(
                app, ["monitor", "schedule", "blood", "--every", "3s"], catch_exceptions=False
            )
        deadline = time.monotonic() + 240  # each run a job that starts Python: slow on CI
        while reports(reg) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        outputs = sorted(workspace.path("jobs", "monitor", "blood").glob("slurm-*.out"))
        logs = "\n".join(p.read_text() for p in outputs)
        assert reports(reg) >= 2, logs
        # Each run submitted the next one: at any time one job of the chain is queued.
        assert len([j for j in jobs_named(name) if j.state == "PENDING"]) <= 1
    finally:
        res = runner.invoke(app, ["monitor", "unschedule", "blood"])
    assert res.exit_code == 0 and "cancelled" in res.output, res.output
    # A cancelled job shows in squeue until its processes are gone.
    wait_until(lambda: jobs_named(name) == [], timeout=60, interval=0.5, what="no chain job")
    assert not workspace.path("jobs", "monitor", "blood", "schedule.env").exists()
    with reg.session() as s:
        paths = [Path(p) for p in s.scalars(select(MonitorReport.report_path))]
    assert all(p.is_file() and p.with_name("report.html").is_file() for p in paths)


@pytest.mark.usefixtures("wide_console")  # the `jobs list` row on one line
def test_daily_schedule_prints_cron_and_scrontab_lines(
    slurm: None, workspace: Workspace, reg: Registry
) -> None:
    # Its own model name: the chain test's job name is cluster-wide (one user, one name).
    demo_model(reg, workspace, name="blood-daily", n_ref=50)
    res = runner.invoke(app, ["monitor", "schedule", "blood-daily", "--at", "02:30"])
    try:
        assert res.exit_code == 0, (res.output, res.exception)
        out = " ".join(res.output.split())
        cron = "sbatch --job-name=pomlia-monitor-blood-daily --dependency=singleton"
        assert "30 2 * * * POMLIA_MONITOR_CONF=" in out and cron in out
        assert "#SCRON --job-name=pomlia-monitor-blood-daily" in out
        if shutil.which("scrontab") is None:  # Debian's Slurm (CI's): said, with the way here
            assert "scrontab is not enabled on this cluster (no scrontab command" in out
            assert "the chain above runs the monitor" in out
        (job,) = jobs_named(job_name("blood-daily"))
        assert job.state == "PENDING" and "02:30:00" in job.begin
        # Recorded like any job: `jobs list` shows it (it was missing from the registry).
        with reg.session() as s:
            (row,) = s.scalars(select(Job).where(Job.name == job_name("blood-daily")))
            assert row.backend == "slurm" and row.scheduler_id == job.job_id
        assert f"job {row.id} (slurm {job.job_id}, pomlia-monitor-blood-daily)" in out
        listed = " ".join(runner.invoke(app, ["jobs", "list"]).output.split())
        assert f"{row.id} │ pomlia-monitor-blood-daily │ slurm │ {job.job_id} │" in listed, listed
    finally:
        runner.invoke(app, ["monitor", "unschedule", "blood-daily"])
    assert jobs_named(job_name("blood-daily")) == []
    with reg.session() as s:
        assert s.get(Job, row.id).state == "CANCELLED"  # type: ignore[union-attr]


def test_next_begin() -> None:
    from datetime import datetime, timedelta

    tz = UTC
    now = datetime(2026, 12, 2, 5, 0, 0, tzinfo=tz)
    day = timedelta(days=1)
    assert next_begin("02:00", day, now) == datetime(2026, 12, 3, 2, 0, tzinfo=tz)
    assert next_begin("06:15", day, now) == datetime(2026, 12, 2, 6, 15, tzinfo=tz)
    assert next_begin("06:15", timedelta(hours=1), now) == datetime(2026, 12, 2, 5, 15, tzinfo=tz)
    assert next_begin("05:00", timedelta(hours=6), now) == datetime(2026, 12, 2, 11, 0, tzinfo=tz)
    assert next_begin(None, timedelta(seconds=5), now) == now + timedelta(seconds=5)


@pytest.mark.usefixtures("wide_console")
def test_replace_records_the_replaced_job_and_a_registry_failure_is_no_submit_failure(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--replace scancelled the queued job but left its row PENDING; a registry failure after
    the submission failed the command, and the chain job then said "could not submit"."""
    from sqlalchemy.exc import OperationalError

    from pomlia_hpc.monitor import schedule as schedule_module

    demo_model(reg, workspace, name="blood-repl", n_ref=50)
    name = job_name("blood-repl")
    try:
        res = runner.invoke(app, ["monitor", "schedule", "blood-repl", "--at", "03:30"])
        assert res.exit_code == 0, (res.output, res.exception)
        with reg.session() as s:
            (first,) = s.scalars(select(Job).where(Job.name == name))
        res = runner.invoke(
            app, ["monitor", "schedule", "blood-repl", "--at", "03:40", "--replace"]
        )
        assert res.exit_code == 0, (res.output, res.exception)
        with reg.session() as s:
            row = s.get(Job, first.id)
            assert row is not None and row.state == "CANCELLED"
            assert row.exit_cause is not None and "--replace" in row.exit_cause

        def broken(*args: object, **kw: object) -> None:
            raise OperationalError("INSERT", {}, Exception("database is locked"))

        with monkeypatch.context() as m:
            m.setattr(schedule_module, "record_submission", broken)
            res = runner.invoke(
                app, ["monitor", "schedule", "blood-repl", "--at", "03:50", "--replace"]
            )
        out = " ".join(res.output.split())
        assert res.exit_code == 0, (out, res.exception)
        assert "submitted" in out and "could not record it in the registry" in out, out
        assert len([j for j in jobs_named(name) if j.state == "PENDING"]) == 1
    finally:
        res = runner.invoke(app, ["monitor", "unschedule", "blood-repl"])
    assert res.exit_code == 0, (res.output, res.exception)
    wait_until(lambda: jobs_named(name) == [], timeout=60, interval=0.5, what="no chain job")


def test_replace_submits_first_a_failed_submission_keeps_the_old_chain(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--replace cancelled the old chain (and recorded it) before sbatch: a refused submission
    left the model unscheduled. Now the old chain and its settings stay; a successful replace
    cancels only the old jobs (by id, not the new job of the same name)."""
    from pomlia_hpc.errors import ClusterError
    from pomlia_hpc.monitor import schedule as schedule_module

    demo_model(reg, workspace, name="blood-keep", n_ref=50)
    name = job_name("blood-keep")
    conf = workspace.path("jobs", "monitor", "blood-keep", "schedule.env")
    try:
        res = runner.invoke(app, ["monitor", "schedule", "blood-keep", "--at", "04:10"])
        assert res.exit_code == 0, (res.output, res.exception)
        (old,) = jobs_named(name)
        settings = conf.read_text()

        def refused(*args: object, **kw: object) -> str:
            raise ClusterError("sbatch refused: Invalid account")

        with monkeypatch.context() as m:
            m.setattr(schedule_module, "submit_script", refused)
            res = runner.invoke(
                app, ["monitor", "schedule", "blood-keep", "--at", "04:20", "--replace"]
            )
        assert res.exit_code != 0
        assert [j.job_id for j in jobs_named(name)] == [old.job_id]
        assert conf.read_text() == settings
        with reg.session() as s:
            (row,) = s.scalars(select(Job).where(Job.name == name))
            assert row.state == "PENDING"

        res = runner.invoke(
            app, ["monitor", "schedule", "blood-keep", "--at", "04:30", "--replace"]
        )
        assert res.exit_code == 0, (res.output, res.exception)
        # jobs named as `runs list` does: the registry id (`jobs show` takes it), Slurm's beside
        said = " ".join(res.output.split())
        assert f"replaced (cancelled): job {row.id} (slurm {old.job_id})" in said
        with pytest.raises(InputError, match=r"already scheduled \(job \d+ \(slurm \d+\) pending"):
            runner.invoke(
                app, ["monitor", "schedule", "blood-keep", "--at", "04:40"], catch_exceptions=False
            )
        wait_until(
            lambda: [j.job_id for j in jobs_named(name)] != [old.job_id],
            timeout=30,
            interval=0.5,
            what="old job gone",
        )
        (new,) = jobs_named(name)
        assert new.job_id != old.job_id and new.state == "PENDING" and "04:30:00" in new.begin
        assert "AT=04:30" in conf.read_text()
        with reg.session() as s:
            assert s.get(Job, row.id).state == "CANCELLED"  # type: ignore[union-attr]
            new_row = s.scalar(select(Job.id).where(Job.scheduler_id == new.job_id))
        res = runner.invoke(app, ["monitor", "unschedule", "blood-keep"])
        assert f"cancelled: job {new_row} (slurm {new.job_id})" in " ".join(res.output.split())
    finally:
        runner.invoke(app, ["monitor", "unschedule", "blood-keep"])
    wait_until(lambda: jobs_named(name) == [], timeout=60, interval=0.5, what="no chain job")


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """Sets this process's local time zone (TZ + tzset); restores the old one after."""
    old = os.environ.get("TZ")

    def use(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield use
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.parametrize(
    ("zone", "at", "after", "expected"),
    [
        # --at 02:00 is local time: the next night at 02:00 local, not 02:00 UTC
        ("Europe/Berlin", "02:00", "2026-12-04T02:00:00+01:00", "2026-12-05T02:00:00+01:00"),
        ("America/New_York", "02:00", "2026-12-04T02:00:00-05:00", "2026-12-05T02:00:00-05:00"),
        # a daily run stays at its wall-clock time across the start of summer time
        ("Europe/Berlin", "04:00", "2027-03-27T04:00:00+01:00", "2027-03-28T04:00:00+02:00"),
    ],
)
def test_next_begin_applies_at_in_local_time_to_a_utc_after(
    local_zone: Callable[[str], None], zone: str, at: str, after: str, expected: str
) -> None:
    from datetime import datetime, timedelta

    from pomlia_hpc.monitor.run import parse_time

    local_zone(zone)
    begin = next_begin(at, timedelta(days=1), parse_time(after, "--after"))
    assert begin == datetime.fromisoformat(expected)
    assert begin.isoformat() == expected  # local wall clock and offset, as submitted


def test_a_slot_chain_follows_a_promotion(slurm: None, workspace: Workspace, reg: Registry) -> None:
    """The chain of `monitor schedule SLOT` was the champion's of that moment: after the loop
    promoted another model onto the slot, every run still tested the old one (empty reports).
    Now each run monitors what the slot serves then, and says so."""
    from pomlia_hpc.registry import Model, Promotion

    old = demo_model(reg, workspace, name="ward-old", n_ref=50)
    new = demo_model(reg, workspace, name="ward-new", n_ref=50)

    def promote(model: str, bundle: Path, kind: str) -> int:
        with reg.session() as s:
            model_id = s.scalar(select(Model.id).where(Model.name == model))
            assert model_id is not None
            s.add(Promotion(slot="ward", model_id=model_id, bundle_path=str(bundle), kind=kind))
            return model_id

    def reports_of(model_id: int) -> int:
        with reg.session() as s:
            q = select(func.count()).where(MonitorReport.model_id == model_id)
            return int(s.scalar(q.select_from(MonitorReport)) or 0)

    old_id = promote("ward-old", old, "initial")
    res = runner.invoke(app, ["monitor", "schedule", "ward", "--at", "", "--every", "3s"])
    assert res.exit_code == 0, (res.output, res.exception)
    name = job_name("slot:ward")
    folder = workspace.path("jobs", "monitor", "slot:ward")
    try:
        wait_until(lambda: reports_of(old_id) >= 1, timeout=240, interval=0.5, what="a report")
        new_id = promote("ward-new", new, "promoted")
        x, _ = images(40)
        log_predictions(workspace, new, x, log_name="ward")  # the server follows the slot
        wait_until(lambda: reports_of(new_id) >= 1, timeout=240, interval=0.5, what="its report")
        logs = "\n".join(p.read_text() for p in sorted(folder.glob("slurm-*.out")))
        assert "slot 'ward' serves model 'ward-new': monitoring that model" in logs, logs
    finally:
        res = runner.invoke(app, ["monitor", "unschedule", "ward"])
    assert res.exit_code == 0 and "cancelled" in res.output, res.output
    wait_until(lambda: jobs_named(name) == [], timeout=60, interval=0.5, what="no chain job")
