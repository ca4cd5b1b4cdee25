"""Slurm-only logic of the cluster layer, through the fake Slurm (fast, no cluster needed):
accounting hiccups, preemption grace and requeue, a checkpoint-requeue on USR2, cancellation,
array chunks chained by dependencies. ``tests/test_cluster_slurm.py`` is the integration proof
of the same paths on the real single-node Slurm."""

from __future__ import annotations

import contextlib
import itertools
import pickle
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import submitit
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError, records, sacctwatch, states, wait_all
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns
from tests.fixtures.clock import FakeClock
from tests.fixtures.fake_slurm import FakeSlurm
from tests.fixtures.waiting import wait_until


def _slurm(tmp_path: Path, reg: Registry, **over: Any) -> Executor:
    return Executor.from_profile("slurm-local", tmp_path / "jobs", reg, **over)


def _row(reg: Registry, rid: int | None) -> Job:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        s.expunge(row)
        return row


def _in_thread(fn: Any, *args: Any, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as exc:  # checked by the test
            out["value"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_one_sacct_call_per_poll_for_an_array(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.hold()
    # 3 tasks, each a job process: more than one, so a call per task would show
    handles = _slurm(tmp_path, reg).map_array(jobfns.negate, list(range(3)))
    assert len({h.job_id.split("_")[0] for h in handles}) == 1  # one Slurm array
    before = len(fake_slurm.calls("sacct"))
    records.refresh_slurm_jobs(reg)
    assert len(fake_slurm.calls("sacct")) == before + 1
    fake_slurm.release()
    assert wait_all(handles, poll_s=0.1) == [-x for x in range(3)]


def test_an_accounting_hiccup_does_not_end_the_wait(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.hold()
    (h,) = _slurm(tmp_path, reg).map_array(jobfns.negate, [7])
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: connection refused", times=3)
    with pytest.raises(ClusterError, match="connection refused"):
        records.sacct_states([h.job_id])  # the hiccup is visible to a direct caller...
    waiter, out = _in_thread(wait_all, [h], poll_s=0.05)
    wait_until(lambda: not fake_slurm.failures_left("sacct"), what="the failing sacct calls")
    assert waiter.is_alive(), out
    fake_slurm.run(h.job_id)
    waiter.join(60)
    assert out["value"] == [-7]  # ...but a waiting wait_all() asks again at the next poll
    assert _row(reg, h.record_id).state == "COMPLETED"


@pytest.mark.parametrize("wait", ["result", "wait_all"])
def test_preempted_job_counts_as_ended_only_after_the_grace_period(
    wait: str,
    tmp_path: Path,
    reg: Registry,
    fake_slurm: FakeSlurm,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(states, "SLURM_FINAL_CHECK_S", 0.1)
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "PREEMPTED")
    slurm_end = records.sacct_states([h.job_id])[h.job_id].ended_at
    if wait == "result":
        waiter, out = _in_thread(h.result)
    else:
        waiter, out = _in_thread(lambda: wait_all([h], poll_s=0.05)[0])
    n = len(fake_slurm.calls("sacct"))
    wait_until(lambda: len(fake_slurm.calls("sacct")) > n + 2, what="polls during the grace")
    assert waiter.is_alive() and h.given_up_state is None  # within the grace: may be requeued
    clock.advance(states.PREEMPT_GRACE_S + 1)
    waiter.join(30)
    # result() raises the failure; wait_all() returns it in place of the value
    assert isinstance(out["value"], JobFailedError) and out["value"].state == "PREEMPTED"
    row = _row(reg, h.record_id)
    assert (row.state, row.ended_at) == ("PREEMPTED", slurm_end)  # Slurm's End, not give-up time


def test_collecting_a_job_preempted_for_good_that_the_end_watch_saw_first(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """A job PREEMPTED and not requeued, whose end pomlia's end watch saw before the wait's
    own check (every 30 s): submitit, which counts PREEMPTED as unfinished, was then asked
    for the result and waited for ever."""
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "PREEMPTED", ended_ago_s=states.PREEMPT_GRACE_S + 10)
    waiter, out = _in_thread(h.result)
    waiter.join(90)
    assert not waiter.is_alive(), "result() still waits on a job preempted for good"
    assert isinstance(out["value"], JobFailedError) and out["value"].state == "PREEMPTED"
    assert _row(reg, h.record_id).state == "PREEMPTED"


def test_result_keeps_slurms_end_time(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, clock: FakeClock
) -> None:
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 40, 2)
    fake_slurm.run(h.job_id)
    clock.advance(3600)  # collected an hour after the job ended
    assert h.result() == 42
    row = _row(reg, h.record_id)
    assert row.ended_at == records.sacct_states([h.job_id])[h.job_id].ended_at
    assert row.started_at is not None and row.started_at <= row.ended_at


def test_preempted_then_requeued_job_completes_with_its_requeue_counted(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, clock: FakeClock
) -> None:
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 2, 3)
    fake_slurm.set_state(h.job_id, "PREEMPTED")
    records.refresh_slurm_jobs(reg)
    assert _row(reg, h.record_id).state == "PREEMPTED"
    clock.advance(60)  # the cluster requeues it within the grace period
    fake_slurm.set_state(h.job_id, "PENDING", new_attempt=True)
    assert records.refresh_slurm_jobs(reg) == 1
    assert _row(reg, h.record_id).state == "PENDING"  # a requeued row goes back to waiting
    fake_slurm.run(h.job_id)
    assert h.result() == 5
    row = _row(reg, h.record_id)
    assert (row.state, row.requeue_count, row.exit_cause) == ("COMPLETED", 1, None)


def test_usr2_checkpoints_requeues_and_resumes(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    h = _slurm(tmp_path, reg).submit(jobfns.SlowSum(str(markers), hold_at=6), 30, 0.05)
    wait_until(lambda: (markers / "holding").exists(), what="the first attempt to make progress")
    wait_until(lambda: fake_slurm.tasks()[h.job_id]["step_pid"], what="the job step")
    subprocess.run(["scancel", "--signal=USR2", h.job_id], check=True)
    out = h.result()
    assert out["total"] == sum(range(30)) and out["attempts"] == [0, 1]
    assert int((markers / "started-2").read_text()) > 0  # resumed from its checkpoint
    attempts = [a["state"] for a in fake_slurm.tasks()[h.job_id]["attempts"]]
    assert attempts == ["REQUEUED", "COMPLETED"]
    row = _row(reg, h.record_id)
    assert (row.state, row.requeue_count) == ("COMPLETED", 1)


def test_cancelled_running_job(tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm) -> None:
    h = _slurm(tmp_path, reg).submit(jobfns.sleep_for, 300)
    wait_until(lambda: fake_slurm.state(h.job_id) == "RUNNING", what="the job to run")
    h.cancel()
    with pytest.raises(JobFailedError) as exc:
        h.result()
    assert exc.value.state == "CANCELLED"
    assert fake_slurm.calls("scancel") == [["scancel", h.job_id]]
    assert _row(reg, h.record_id).state == "CANCELLED"


def test_cancelling_a_job_while_sacct_is_down_cancels_it(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """cancel() asked sacct whether the job had ended before its scancel, and failed with
    sacct's error while slurmdbd was down: the job ran on, and a waiting driver whose job
    Slurm would never start (its pending reason) stopped with that error instead."""
    h = _slurm(tmp_path, reg).submit(jobfns.sleep_for, 300)
    wait_until(lambda: fake_slurm.state(h.job_id) == "RUNNING", what="the job to run")
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: Connection refused", times=20)
    h.cancel()
    assert fake_slurm.calls("scancel") == [["scancel", h.job_id]]
    assert fake_slurm.state(h.job_id) == "CANCELLED"
    assert _row(reg, h.record_id).state == "CANCELLED"


def test_cancelling_a_job_that_ended_while_sacct_is_down_leaves_its_end_to_slurm(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """cancel() scancel-ed a job sacct could not say had ended; one that had (COMPLETED,
    which scancel answers with exit 0) was recorded CANCELLED by user, and as the sacct
    after the scancel could not answer either, for good: no poll asks about such a row
    again. squeue, which no longer lists it, now says it has ended: nothing is cancelled or
    recorded, and the next poll records Slurm's state."""
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "COMPLETED")  # ended; the registry is not told
    fake_slurm.fail_next("sacct", "sacct: error: slurmdbd: Connection refused", times=2)
    h.cancel()
    assert not fake_slurm.calls("scancel")
    while fake_slurm.failures_left("sacct"):  # slurmdbd answers again
        with contextlib.suppress(ClusterError):
            records.refresh_slurm_jobs(reg)
    records.refresh_slurm_jobs(reg)
    assert (_row(reg, h.record_id).state, _row(reg, h.record_id).exit_cause) == (
        "COMPLETED",
        None,
    )


def test_collecting_a_job_that_ended_without_a_result_does_not_hang_on_sacct(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """result() ran submitit's own sacct, which has no time limit, to collect a job that wrote
    no result: a slurmdbd that stopped answering after the end watch had seen the job end hung
    the driver (an AutoML study, a pipeline) for good."""
    monkeypatch.setattr(sacctwatch, "SACCT_LIMIT_S", 1.0)
    monkeypatch.setattr(states, "SLURM_END_WAIT_S", 1.0)
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "CANCELLED")  # scancel-ed by hand before it ran
    wait_until(h.done, what="the end watch to see the job end")
    fake_slurm.fail_next("sacct", "", hang_s=300, times=50)  # then slurmdbd stops answering
    waiter, out = _in_thread(h.result)
    waiter.join(120)
    assert not waiter.is_alive(), "result() still waits on a sacct that does not answer"
    assert isinstance(out["value"], JobFailedError), out
    assert out["value"].state == "CANCELLED"
    assert _row(reg, h.record_id).state == "CANCELLED"


def test_the_bounded_sacct_watcher_is_set_on_pomlias_own_jobs_only(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """The bounded watcher replaced submitit's class-wide one, which every submitit Slurm job
    of the process shares, those of any other library too: pomlia's jobs (a single job, each
    task of an array) get it each, and submitit's own stays as it was."""
    theirs = submitit.SlurmJob.watcher
    fake_slurm.hold()
    ex = _slurm(tmp_path, reg)
    handles = [ex.submit(jobfns.add, 1, 2), *ex.map_array(jobfns.negate, [1, 2])]
    assert submitit.SlurmJob.watcher is theirs
    assert not isinstance(theirs, sacctwatch.BoundedWatcher)
    for h in handles:
        assert h.job().watcher is sacctwatch.WATCHER
    other = submitit.SlurmJob(folder=tmp_path / "other", job_id="12")  # another library's job
    assert other.watcher is theirs


def test_a_pickled_job_is_polled_by_the_processs_one_bounded_watcher(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """The bounded watcher was each job's own attribute, which submitit pickles with the job
    (its ``__dict__``): a pickle of a job held a copy of the process's watcher, with every job
    it polls, and the job loaded from it was polled by that copy (a sacct of its own for all
    of them), not by the process's one watcher."""
    fake_slurm.hold()
    ex = _slurm(tmp_path, reg)
    for h in [ex.submit(jobfns.add, 1, 2), *ex.map_array(jobfns.negate, [1, 2])]:
        data = pickle.dumps(h.job())
        assert b"BoundedWatcher" not in data
        loaded = pickle.loads(data)
        assert isinstance(loaded, submitit.SlurmJob) and loaded.job_id == h.job_id
        assert loaded.watcher is sacctwatch.WATCHER


def test_the_wait_for_slurms_record_of_an_end_keeps_to_its_time_when_sacct_hangs(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settle_slurm_rows waits states.SLURM_END_WAIT_S for Slurm's record of a job's end: a
    sacct that did not answer took its own minute within it, at each collection."""
    monkeypatch.setattr(states, "SLURM_END_WAIT_S", 1.0)
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    assert h.record_id is not None
    fake_slurm.fail_next("sacct", "", hang_s=300, times=50)  # slurmdbd stops answering
    waiter, out = _in_thread(lambda: states.settle_slurm_rows(reg, [h.record_id]))
    waiter.join(30)
    assert not waiter.is_alive(), "the settle still waits on a sacct that does not answer"
    assert out["value"] is None
    assert _row(reg, h.record_id).state == "PENDING"  # as recorded: nothing was learnt


def test_a_requeued_job_cancelled_before_its_next_start_is_collected(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """Slurm 22.05 keeps a requeued job that is cancelled before its next attempt starts
    REQUEUED in sacct for good (the controller says CANCELLED): its driver waited for ever,
    and `jobs list` showed it queued."""
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "RUNNING")
    fake_slurm.set_state(h.job_id, "REQUEUED")  # scontrol requeue: waits to run again...
    fake_slurm.set_controller_state(h.job_id, "CANCELLED")  # ...and is scancel-ed meanwhile
    waiter, out = _in_thread(h.result)
    waiter.join(90)
    assert not waiter.is_alive(), "result() still waits on a job that has ended"
    assert isinstance(out["value"], JobFailedError), out
    assert out["value"].state == "CANCELLED"
    row = _row(reg, h.record_id)
    assert (row.state, row.requeue_count) == ("CANCELLED", 1)
    assert row.ended_at is not None


def test_a_requeued_job_that_the_controller_has_forgotten_is_collected(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """The same job asked about after the controller's MinJobAge (300 s): squeue lists it no
    more, even with --states=all, and its driver (one restarted late, say) waited for ever on
    a job that sacct still says REQUEUED. It never ran again and is gone: LOST, how unknown."""
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    fake_slurm.set_state(h.job_id, "RUNNING")
    fake_slurm.set_state(h.job_id, "REQUEUED")
    fake_slurm.forget_in_controller(h.job_id)  # cancelled (say) more than MinJobAge ago
    waiter, out = _in_thread(h.result)
    waiter.join(90)
    assert not waiter.is_alive(), "result() still waits on a job that has ended"
    assert isinstance(out["value"], JobFailedError), out
    assert out["value"].state == "LOST"
    row = _row(reg, h.record_id)
    assert (row.state, row.requeue_count) == ("LOST", 1)
    assert row.ended_at is not None


def _last_attempts(tasks: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    return [t["attempts"][-1] for t in tasks if job in (t["array_id"], t["id"])]


def test_array_chunks_are_chained_by_dependencies(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    handles = _slurm(tmp_path, reg, max_array_size=2).map_array(jobfns.negate, list(range(5)))
    assert wait_all(handles, poll_s=0.1) == [-x for x in range(5)]
    arrays = list(dict.fromkeys(h.job_id.split("_")[0] for h in handles))
    assert len(arrays) == 3  # 2 + 2 + 1
    tasks = fake_slurm.submitted()
    # A chunk of one is submitted as a plain job (its id is its own array id).
    deps = {(t["array_id"] or t["id"]): t["dependency"] for t in tasks}
    assert deps == {
        arrays[0]: None,
        arrays[1]: f"afterany:{arrays[0]}",
        arrays[2]: f"afterany:{arrays[1]}",
    }
    for before, after in itertools.pairwise(arrays):
        ended = max(a["end"] for a in _last_attempts(tasks, before))
        started = min(a["start"] for a in _last_attempts(tasks, after))
        assert started >= ended
    with reg.session() as s:
        rows = list(s.scalars(select(Job).order_by(Job.id)))
        assert [r.array_job_id for r in rows] == [arrays[0]] * 2 + [arrays[1]] * 2 + [arrays[2]]


def test_a_refused_submission_is_a_cluster_error(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.fail_next("sbatch", "sbatch: error: Batch job submission failed: QOS limit")
    # one line naming the option and sbatch's message, not submitit's FailedJobError
    with pytest.raises(ClusterError, match=r"check qos: sbatch: error: .*QOS limit"):
        _slurm(tmp_path, reg).submit(jobfns.add, 1, 1)
    with reg.session() as s:
        assert s.scalars(select(Job)).first() is None  # nothing recorded for a refused job


def test_a_driver_is_told_when_its_job_is_requeued(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `fingerprint train` driver whose job was requeued at its time limit showed ~20 s
    gaps and never said "requeued": :class:`RequeueWatch` says it once per new attempt."""
    from pomlia_hpc.cluster import handle as handle_mod

    monkeypatch.setattr(handle_mod, "REQUEUE_POLL_S", 0.0)
    fake_slurm.hold()
    h = _slurm(tmp_path, reg).submit(jobfns.add, 2, 3)
    watch = handle_mod.RequeueWatch(h, "training job")
    fake_slurm.set_state(h.job_id, "RUNNING")
    assert watch.poll() is None  # its first attempt: nothing to say
    fake_slurm.set_state(h.job_id, "REQUEUED")
    fake_slurm.set_state(h.job_id, "RUNNING", new_attempt=True)
    line = watch.poll()
    assert line is not None and f"training job {h.name} requeued (attempt 2 of 4" in line, line
    assert watch.poll() is None  # said once
