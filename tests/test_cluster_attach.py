"""Attaching to jobs an earlier process submitted (a restarted driver), through the fake Slurm:
one sacct for all, accounting hiccups, jobs that ended while nobody watched, jobs the scheduler
forgot. The last test asks the real single-node Slurm about a job it never knew."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from pomlia_hpc.cluster import Executor, JobFailedError, states
from pomlia_hpc.cluster.attach import AttachedJob, poll_attached
from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns
from tests.fixtures.clock import FakeClock
from tests.fixtures.fake_slurm import FakeSlurm


def _failure(folder: Path) -> tuple[str, str | None] | None:
    path = folder / "failure.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return str(data["error"]), data.get("tb")


def _attach(reg: Registry, record_id: int | None, folder: Path) -> AttachedJob:
    """What a restarted driver does: find the row, attach with the outcome probes."""
    with reg.session() as s:
        row = s.get(Job, record_id)
        assert row is not None
        s.expunge(row)
    result = folder / "result.json"
    return AttachedJob(reg, row, has_result=result.is_file, failure=lambda: _failure(folder))


def _submit_and_forget(tmp_path: Path, reg: Registry, name: str, **kw: object) -> tuple[str, Path]:
    """A first driver submits a job and is gone (only the registry row and folder remain)."""
    folder = tmp_path / name
    folder.mkdir()
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.write_outcome, str(folder), 7, name=name, **kw)
    return h.job_id, folder


def _row_id(reg: Registry, name: str) -> int:
    with reg.session() as s:
        row = s.query(Job).filter(Job.name == name).one()
        return int(row.id)


def test_adopted_jobs_are_polled_together_and_settled(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.hold()
    ok_id, ok_dir = _submit_and_forget(tmp_path, reg, "ok")
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    bad_id = ex.submit(jobfns.write_outcome, str(bad_dir), 0, True, name="bad").job_id
    gone_id, gone_dir = _submit_and_forget(tmp_path, reg, "gone")
    cancelled_id, cancelled_dir = _submit_and_forget(tmp_path, reg, "cancelled")
    # The restarted driver attaches to all four.
    ok, bad, gone, cancelled = (
        _attach(reg, _row_id(reg, name), folder)
        for name, folder in (
            ("ok", ok_dir),
            ("bad", bad_dir),
            ("gone", gone_dir),
            ("cancelled", cancelled_dir),
        )
    )
    jobs = [ok, bad, gone, cancelled]
    n = len(fake_slurm.calls("sacct"))
    poll_attached(jobs)
    assert len(fake_slurm.calls("sacct")) == n + 1  # one call for all
    assert [j.state for j in jobs] == ["PENDING"] * 4 and not any(j.done() for j in jobs)
    # While nobody watched: two ran, one was purged from the accounting, one cancelled.
    fake_slurm.run(ok_id)
    fake_slurm.run(bad_id)
    fake_slurm.forget(gone_id)
    fake_slurm.set_state(cancelled_id, "CANCELLED")
    poll_attached(jobs)
    assert all(j.done() for j in jobs)
    assert [j.state for j in jobs] == ["COMPLETED", "FAILED", None, "CANCELLED"]
    assert [j.lost(cancelled_too=False) for j in jobs] == [False, False, True, False]
    assert [j.lost(cancelled_too=True) for j in jobs] == [False, False, True, True]
    ok.completed()
    err = bad.failed()
    assert isinstance(err, JobFailedError) and err.state == "FAILED"
    assert err.cause == "ValueError: bad"
    gone.forget("trial")
    with reg.session() as s:
        rows = {r.name: r for r in s.query(Job)}
        assert rows["ok"].state == "COMPLETED" and rows["ok"].ended_at is not None
        assert (rows["bad"].state, rows["bad"].exit_cause) == ("FAILED", "ValueError: bad")
        assert rows["gone"].exit_cause == "unknown to the scheduler; the trial was resubmitted"


def test_an_accounting_hiccup_keeps_the_wait(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.hold()
    job_id, folder = _submit_and_forget(tmp_path, reg, "x")
    job = _attach(reg, _row_id(reg, "x"), folder)
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: connection refused")
    fake_slurm.forget(job_id)  # were sacct asked, it would say "no such job"...
    poll_attached([job])
    assert not job.done() and job.state == "PENDING"  # ...but it failed: nothing is concluded
    poll_attached([job])
    assert job.done() and job.lost(cancelled_too=False)


def test_an_attached_job_preempted_is_ended_only_after_the_grace(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, clock: FakeClock
) -> None:
    """A restarted driver took a trial that Slurm preempted (and was about to requeue) for
    ended at once and recorded it failed, while its next attempt ran on unwatched; a job this
    process submits counts as ended only after states.PREEMPT_GRACE_S."""
    fake_slurm.hold()
    job_id, folder = _submit_and_forget(tmp_path, reg, "p")
    job = _attach(reg, _row_id(reg, "p"), folder)
    fake_slurm.set_state(job_id, "PREEMPTED")
    poll_attached([job])
    assert job.state == "PREEMPTED" and not job.ended and not job.done()
    clock.advance(states.PREEMPT_GRACE_S + 1)  # not requeued within the grace: it has ended
    poll_attached([job])
    assert job.ended and job.done()


def test_an_attached_job_requeued_then_forgotten_by_the_controller_is_lost(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """sacct leaves it REQUEUED and squeue no longer lists it: it never ran again (cancelled
    while it waited, say) and nothing was learnt, so a restarted AutoML driver runs the trial
    again rather than recording it failed."""
    fake_slurm.hold()
    job_id, folder = _submit_and_forget(tmp_path, reg, "r")
    job = _attach(reg, _row_id(reg, "r"), folder)
    fake_slurm.set_state(job_id, "RUNNING")
    fake_slurm.set_state(job_id, "REQUEUED")
    fake_slurm.forget_in_controller(job_id)
    poll_attached([job])
    assert job.state == "LOST" and job.ended and job.done()
    assert job.lost(cancelled_too=False)


def test_an_attached_job_is_never_asked_of_submitits_own_watcher(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pomlia's bounded sacct watcher is set on the jobs it submits, no longer on submitit's
    class (cluster/sacctwatch.py); a job a restarted driver attaches to by its id has no
    submitit job at all: it is polled and collected with the bounded sacct_states alone."""

    class Refusing(SlurmInfoWatcher):
        def update(self) -> None:
            raise AssertionError("submitit's own sacct (no time limit) was run")

    monkeypatch.setattr(submitit.SlurmJob, "watcher", Refusing(delay_s=0))
    fake_slurm.hold()
    job_id, folder = _submit_and_forget(tmp_path, reg, "w")
    job = _attach(reg, _row_id(reg, "w"), folder)
    fake_slurm.set_state(job_id, "CANCELLED")
    poll_attached([job])
    assert job.state == "CANCELLED" and job.done()
    assert isinstance(job.failed(), JobFailedError)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_job_the_real_slurm_never_knew_is_lost(tmp_path: Path, reg: Registry) -> None:
    (rid,) = record_submission(
        reg, backend="slurm", scheduler_ids=["987654321"], name="automl-x-1", folder="f"
    )
    job = _attach(reg, rid, tmp_path)
    poll_attached([job])
    assert job.done() and job.lost(cancelled_too=False)


def test_a_local_job_stopped_by_ctrl_c_is_closed_cancelled_when_resubmitted(
    tmp_path: Path, reg: Registry
) -> None:
    """A resumed study closed the row of a trial job that Ctrl-C had stopped as FAILED ("unknown
    to the scheduler") when it ran the trial again; its controller noted the SIGINT."""
    import subprocess

    from pomlia_hpc.cluster.submitit_local import SIGINT_CAUSE, cancel_marker

    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = tmp_path / "jobs"
    folder.mkdir()
    cancel_marker(folder, str(gone.pid)).write_text(SIGINT_CAUSE + "\n")
    (rid,) = record_submission(
        reg, backend="local", scheduler_ids=[str(gone.pid)], name="automl-s-1", folder=str(folder)
    )
    job = _attach(reg, rid, tmp_path)
    poll_attached([job])
    assert job.lost(cancelled_too=False)  # still run again: nothing was learnt
    job.forget("trial")
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        assert row.state == "CANCELLED" and SIGINT_CAUSE in (row.exit_cause or ""), row.exit_cause
