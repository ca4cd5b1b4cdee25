"""A Slurm job that ends on its own just before pomlia's ``scancel`` (which Slurm 22.05 answers
with exit 0 for an ended job), and ``jobs cancel --force`` of a job that has ended while
``sacct`` cannot answer. Through the fake Slurm, whose ``scancel`` of an ended job exits 0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.cancel import (
    FORCED_CAUSE,
    GONE_FORCED_CAUSE,
    NotQueuedError,
    cancel_refreshed_row,
    refresh_before_cancel,
)
from pomlia_hpc.cluster.failures import STATE_CAUSES
from pomlia_hpc.cluster.records import (
    REQUEUE_WINDOW_S,
    UNCONFIRMED_META,
    cancel_unconfirmed,
    mark_cancelled,
    refresh_slurm_jobs,
)
from pomlia_hpc.cluster.terminate import cancel_own_jobs, cancelled_with_this_process
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns
from tests.fixtures.fake_slurm import FakeSlurm


def _held_job(tmp_path: Path, reg: Registry, fake: FakeSlurm, state: str) -> tuple[int, str]:
    """A job the fake Slurm reports in ``state`` (it never ran: no result); (row id, Slurm id)."""
    fake.hold()
    handle = Executor.from_profile("slurm-local", tmp_path / "jobs", reg).submit(jobfns.add, 1, 2)
    fake.set_state(handle.job_id, state)
    assert handle.record_id is not None
    return handle.record_id, handle.job_id


@contextmanager
def _sacct_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Within the block, every ``sacct`` fails as with slurmdbd down (a script first on PATH,
    ahead of the fake Slurm's); the fake's ``sacct`` answers again after it."""
    bin_dir = tmp_path / "no-slurmdbd"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "sacct"
    script.write_text("#!/bin/sh\necho 'sacct: error: slurmdbd: Connection refused' >&2\nexit 1\n")
    script.chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        yield


def _row(reg: Registry, rid: int) -> tuple[str, str | None, bool]:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        return row.state, row.exit_cause, row.ended_at is not None


def test_jobs_cancel_of_a_job_that_completed_after_the_look_records_completed(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """It was recorded CANCELLED by user, and `jobs cancel` said "cancelled", although Slurm
    said COMPLETED: the job had ended between the refresh and the scancel."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert refresh_before_cancel(reg, [rid]) is None
    assert _row(reg, rid)[0] == "RUNNING"
    fake_slurm.set_state(sid, "COMPLETED")  # it ends on its own now, before the scancel
    outcome = cancel_refreshed_row(reg, rid, None)
    assert fake_slurm.calls("scancel") == [["scancel", sid]]  # signalled: exit 0, nothing said
    assert outcome.ended == "COMPLETED"
    assert _row(reg, rid) == ("COMPLETED", None, True)


def test_a_stopping_driver_does_not_record_its_completed_job_cancelled(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """A driver stopped (Ctrl-C, scancel) cancels the jobs it has not collected without
    asking first: one that had completed was recorded CANCELLED."""
    done, done_sid = _held_job(tmp_path, reg, fake_slurm, "COMPLETED")
    running, running_sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    cancel_own_jobs("stopped by the test")
    said = cancelled_with_this_process()  # what the driver's last words list as cancelled
    assert any(running_sid in name for name in said)
    assert not any(done_sid in name for name in said), said
    assert _row(reg, done) == ("COMPLETED", None, True)
    assert _row(reg, running) == ("CANCELLED", "stopped by the test", True)


def test_cancel_force_closes_a_job_that_ended_while_sacct_is_down(
    workspace: Workspace, reg: Registry, tmp_path: Path, fake_slurm: FakeSlurm
) -> None:
    """`jobs cancel --force` refused (exit 69) just as without --force, and the row stayed
    RUNNING until slurmdbd came back: --force now marks it, with a cause that says what is
    known, and signals nothing."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert refresh_before_cancel(reg, [rid]) is None
    fake_slurm.set_state(sid, "COMPLETED")  # ends; squeue no longer lists it
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: Connection refused", times=5)
    refused = CliRunner().invoke(app, ["jobs", "cancel", str(rid)])
    assert isinstance(refused.exception, NotQueuedError), refused.output  # exit 69
    assert _row(reg, rid)[0] == "RUNNING"
    res = CliRunner().invoke(app, ["jobs", "cancel", str(rid), "--force"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "had already ended (squeue no longer lists it): marked CANCELLED" in text, text
    assert "Connection refused" in text
    assert _row(reg, rid) == ("CANCELLED", GONE_FORCED_CAUSE, True)
    assert not fake_slurm.calls("scancel")


def test_a_row_forced_cancelled_while_sacct_was_down_takes_slurms_state_once_it_answers(
    workspace: Workspace, reg: Registry, tmp_path: Path, fake_slurm: FakeSlurm
) -> None:
    """A row that `jobs cancel --force` marked CANCELLED while slurmdbd was down stayed
    CANCELLED ("how it ended is unknown") in `jobs list` for good, although the job had
    COMPLETED: no routine poll asked about a CANCELLED row again. The next listing now records
    Slurm's state, and then stops asking about it."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert refresh_before_cancel(reg, [rid]) is None
    fake_slurm.set_state(sid, "COMPLETED")  # ends; squeue no longer lists it
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: Connection refused", times=1)
    res = CliRunner().invoke(app, ["jobs", "cancel", str(rid), "--force"])
    assert res.exit_code == 0, res.output
    assert _row(reg, rid) == ("CANCELLED", GONE_FORCED_CAUSE, True)
    assert not fake_slurm.failures_left("sacct")  # slurmdbd answers again
    listed = CliRunner().invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert _row(reg, rid) == ("COMPLETED", None, True)
    asked = len(fake_slurm.calls("sacct"))
    assert refresh_slurm_jobs(reg) == 0
    assert len(fake_slurm.calls("sacct")) == asked  # settled: not asked about again


def test_a_row_forced_cancelled_takes_slurms_cause_when_slurm_says_cancelled_too(
    reg: Registry, tmp_path: Path, fake_slurm: FakeSlurm
) -> None:
    """A job `jobs cancel --force` marked (scancel refused it) that Slurm then ends CANCELLED:
    the row keeps its state, and the cause and end become Slurm's (no longer a mark that
    says Slurm could not be asked), so that polls stop asking about it."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert mark_cancelled(reg, rid, FORCED_CAUSE)
    assert refresh_slurm_jobs(reg) == 0  # still running: the mark stands
    assert _row(reg, rid) == ("CANCELLED", FORCED_CAUSE, True)
    fake_slurm.set_state(sid, "CANCELLED")
    assert refresh_slurm_jobs(reg) == 1
    state, cause, _ = _row(reg, rid)
    assert (state, cause) == ("CANCELLED", STATE_CAUSES["CANCELLED"])


def test_a_stopping_driver_keeps_the_cancel_that_accounting_has_not_seen_yet(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """The sacct after the scancel may still say what the job was before it (a slurmdbd a
    moment behind): for a job requeued since the driver last looked (a higher requeue count
    than its row's), that answer took the row back to RUNNING, and the driver, about to be
    killed, said the job "had already ended: not cancelled"."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    fake_slurm.set_state(sid, "REQUEUED")  # its first attempt is requeued...
    fake_slurm.set_state(sid, "RUNNING", new_attempt=True)  # ...and its second one runs
    fake_slurm.freeze_accounting(sid)  # sacct will not have seen the scancel yet
    cancel_own_jobs("stopped by the test")
    assert fake_slurm.state(sid) == "CANCELLED"
    assert any(sid in name for name in cancelled_with_this_process())
    assert _row(reg, rid) == ("CANCELLED", "stopped by the test", True)


def test_jobs_cancel_force_with_sacct_and_squeue_down_leaves_the_end_to_slurm(
    workspace: Workspace, reg: Registry, tmp_path: Path, fake_slurm: FakeSlurm
) -> None:
    """`jobs cancel --force` with sacct and squeue both failing scancel-s the job; one that
    had COMPLETED (scancel exits 0 for it) was recorded "cancelled by user" for good, and the
    warning said it was cancelled "on squeue's word", which had not answered. The row is now
    CANCELLED until sacct answers, then Slurm's COMPLETED."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert refresh_before_cancel(reg, [rid]) is None
    fake_slurm.set_state(sid, "COMPLETED")  # ends; the registry is not told
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: Connection refused")
    fake_slurm.fail_next("squeue", "squeue: error: Unable to contact slurm controller")
    res = CliRunner().invoke(app, ["jobs", "cancel", str(rid), "--force"])
    assert res.exit_code == 0, res.output
    assert fake_slurm.calls("scancel") == [["scancel", sid]]
    text = " ".join(res.output.split())
    assert "Connection refused); squeue: the Slurm controller" in text, text
    assert "squeue's word" not in text, text
    assert "without Slurm saying whether it still ran: recorded CANCELLED until sacct" in text
    assert _row(reg, rid) == ("CANCELLED", "cancelled by user", True)
    listed = CliRunner().invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert _row(reg, rid) == ("COMPLETED", None, True)
    asked = len(fake_slurm.calls("sacct"))
    assert refresh_slurm_jobs(reg) == 0
    assert len(fake_slurm.calls("sacct")) == asked  # settled: not asked about again


def test_a_stopping_drivers_unconfirmed_cancels_take_slurms_states_once_sacct_answers(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver stopping with slurmdbd down recorded its jobs CANCELLED for good, a job that
    had COMPLETED before the scancel included: the sacct after the scancel failed, and no
    poll asked about a CANCELLED row again. Both are now asked again: the completed one takes
    COMPLETED, the cancelled one keeps the driver's cause with Slurm's end."""
    done, _ = _held_job(tmp_path, reg, fake_slurm, "COMPLETED")  # the registry is not told
    running, running_sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    with _sacct_down(monkeypatch, tmp_path):
        cancel_own_jobs("stopped by the test")
        with pytest.raises(ClusterError):  # the rows are asked about: slurmdbd says nothing
            refresh_slurm_jobs(reg)
    assert fake_slurm.state(running_sid) == "CANCELLED"
    for rid in (done, running):
        assert _row(reg, rid) == ("CANCELLED", "stopped by the test", True)
    refresh_slurm_jobs(reg)
    assert _row(reg, done) == ("COMPLETED", None, True)
    assert _row(reg, running) == ("CANCELLED", "stopped by the test", True)
    with reg.session() as s:
        rows = [s.get(Job, rid) for rid in (done, running)]
        assert all(r is not None and UNCONFIRMED_META not in r.meta for r in rows)
    asked = len(fake_slurm.calls("sacct"))
    assert refresh_slurm_jobs(reg) == 0
    assert len(fake_slurm.calls("sacct")) == asked  # confirmed: not asked about again


def test_an_unconfirmed_cancel_is_asked_about_for_a_day(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """Which rows count as CANCELLED on pomlia's word only: a Slurm row marked so, within
    the day the routine polls ask about it; never a row Slurm said was CANCELLED."""
    rid, sid = _held_job(tmp_path, reg, fake_slurm, "RUNNING")
    assert mark_cancelled(reg, rid, "stopped by the test")
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None and row.ended_at is not None
        assert cancel_unconfirmed(row)
        late = row.ended_at + timedelta(seconds=REQUEUE_WINDOW_S + 60)
        assert not cancel_unconfirmed(row, late)
    fake_slurm.set_state(sid, "CANCELLED")
    refresh_slurm_jobs(reg)
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None and row.state == "CANCELLED" and not cancel_unconfirmed(row)


def test_a_listing_whose_poll_fails_marks_a_cancel_slurm_has_not_confirmed(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    fake_slurm: FakeSlurm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed poll marked only unfinished rows `?`: a row recorded CANCELLED while sacct
    could not confirm it (a job that may have COMPLETED) was shown as if Slurm had said so."""
    rid, _ = _held_job(tmp_path, reg, fake_slurm, "COMPLETED")  # the registry is not told
    with _sacct_down(monkeypatch, tmp_path):
        cancel_own_jobs("stopped by the test")
        listed = CliRunner().invoke(app, ["jobs", "list"])
        shown = CliRunner().invoke(app, ["jobs", "show", str(rid)])
    assert _row(reg, rid)[0] == "CANCELLED"
    assert listed.exit_code == 0 and shown.exit_code == 0, listed.output + shown.output
    for out in (listed.output, shown.output):
        text = " ".join(out.split())
        assert "Connection refused" in text and "(marked ?)" in text, text
        assert "CANCELLED?" in text, text
