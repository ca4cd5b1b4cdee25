"""The cluster layer against the real single-node Slurm of scripts/slurm-local.sh."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError, JobHandle, records, sacct, wait_all
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def _slurm(tmp_path: Path, reg: Registry, **over: object) -> Executor:
    return Executor.from_profile("slurm-local", tmp_path / "jobs", reg, **over)


def _rows(reg: Registry) -> list[Job]:
    with reg.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def test_function(tmp_path: Path, reg: Registry) -> None:
    h = _slurm(tmp_path, reg).submit(jobfns.add, 20, 22, name="add")
    assert h.result() == 42
    (row,) = _rows(reg)
    assert (row.backend, row.state, row.scheduler_id) == ("slurm", "COMPLETED", h.job_id)
    assert row.started_at is not None and row.ended_at is not None
    # The recorded end is Slurm's End, not when result() collected the value.
    assert row.ended_at == records.sacct_states([h.job_id])[h.job_id].ended_at


def test_cancel_after_completion_keeps_completed(tmp_path: Path, reg: Registry) -> None:
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 1)
    assert h.result() == 2
    h.cancel()
    (row,) = _rows(reg)
    assert (row.state, row.exit_cause) == ("COMPLETED", None)


def test_array_of_8_polled_with_one_sacct_per_poll(tmp_path: Path, reg: Registry) -> None:
    log = tmp_path / "log"
    log.mkdir()
    ex = _slurm(tmp_path, reg)
    handles = ex.map_array(lambda x: jobfns.square_logged(x, str(log)), list(range(8)))
    array_ids = {h.job_id.split("_")[0] for h in handles}
    assert len(array_ids) == 1  # one Slurm array
    before = sacct.SACCT_CALLS
    changed = records.refresh_slurm_jobs(reg)  # one poll over all 8 rows
    assert before + 1 == sacct.SACCT_CALLS
    assert changed >= 0
    assert wait_all(handles, poll_s=0.5) == [x * x for x in range(8)]
    rows = _rows(reg)
    assert [r.array_index for r in rows] == list(range(8))
    assert {r.state for r in rows} == {"COMPLETED"}


def test_array_split_at_max_array_size(tmp_path: Path, reg: Registry) -> None:
    ex = _slurm(tmp_path, reg, max_array_size=3)
    handles = ex.map_array(lambda x: x + 100, list(range(7)))
    array_ids = list(dict.fromkeys(h.job_id.split("_")[0] for h in handles))
    assert len(array_ids) == 3  # 3 + 3 + 1
    assert wait_all(handles, poll_s=0.5) == [x + 100 for x in range(7)]
    # The chunks ran one after the other: none started before the previous one ended (times
    # from sacct: a row's end is the collection time when sacct had no End yet).
    chunks = [[h.job_id for h in handles if h.job_id.split("_")[0] == a] for a in array_ids]
    assert [len(c) for c in chunks] == [3, 3, 1]
    deadline = time.time() + 60
    while True:  # slurmdbd records the last tasks' times a moment after they end
        times = records.sacct_states(h.job_id for h in handles)
        known = all(j in times and times[j].ended_at is not None for c in chunks for j in c)
        if known or time.time() > deadline:
            break
        time.sleep(1)
    assert known, times
    for before, after in itertools.pairwise(chunks):
        last_end = max(e for j in before if (e := times[j].ended_at) is not None)
        first_start = min(s for j in after if (s := times[j].started_at) is not None)
        assert first_start >= last_end


def test_a_refused_later_part_cancels_the_parts_submitted_before_it(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch refusing part 2 of a split array left part 1 running on Slurm, unwatched."""
    real = shutil.which("sbatch")
    calls = tmp_path / "sbatch-calls"
    wrapper = tmp_path / "bin" / "sbatch"  # the real sbatch once, then a refusal
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\necho x >> "{calls}"\n'
        f'if [ "$(wc -l < "{calls}")" -ge 2 ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Invalid partition name" >&2\n'
        "  exit 1\nfi\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    traces = [str(tmp_path / f"ran-{i}") for i in range(3)]
    touch = functools.partial(jobfns.touch_after, seconds=8.0)
    started = time.monotonic()
    with pytest.raises(ClusterError) as err:
        _slurm(tmp_path, reg, max_array_size=2).map_array(touch, traces, name="split")
    rows = _rows(reg)
    (array_id,) = {r.array_job_id for r in rows}
    text = " ".join(str(err.value).split())
    assert "check partition" in text and "part 2 of 2" in text
    assert f"were cancelled (Slurm job {array_id})" in text
    assert {r.state for r in rows} == {"CANCELLED"} and len(rows) == 2
    assert not records.squeue_ids([str(r.scheduler_id) for r in rows])  # gone from the queue
    time.sleep(max(0.0, 12.0 - (time.monotonic() - started)))
    assert not [p for p in traces if Path(p).exists()]  # no task outlived the cancel


def test_failing_job(tmp_path: Path, reg: Registry) -> None:
    h = _slurm(tmp_path, reg).submit(jobfns.boom, "label out of range")
    with pytest.raises(JobFailedError) as exc:
        h.result()
    assert "ValueError: label out of range" in (exc.value.traceback or "")
    (row,) = _rows(reg)
    assert row.state == "FAILED"
    assert "ValueError: label out of range" in (row.traceback or "")


def test_cancelled_job(tmp_path: Path, reg: Registry) -> None:
    h = _slurm(tmp_path, reg).submit(jobfns.sleep_for, 300)
    deadline = time.time() + 60
    while h.state != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", h.job_id], check=True)
    with pytest.raises(JobFailedError) as exc:  # a hang is the suite's timeout
        h.result()
    assert exc.value.state == "CANCELLED"
    (row,) = _rows(reg)
    assert row.state == "CANCELLED"
    # The recorded end is Slurm's End of the cancelled job.
    assert row.ended_at == records.sacct_states([h.job_id])[h.job_id].ended_at
    assert row.ended_at is not None


def test_checkpointable_job_requeues_and_resumes(tmp_path: Path, reg: Registry) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    job = jobfns.SlowSum(str(markers), hold_at=8)
    h = _slurm(tmp_path, reg).submit(job, 40, 0.25)
    deadline = time.time() + 240
    while not (markers / "holding").exists():  # it made progress and waits for the signal
        assert time.time() < deadline, "the first attempt did not make progress in 240 s"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", h.job_id], check=True)
    out = h.result()
    assert out["total"] == sum(range(40))
    assert len(out["attempts"]) >= 2  # it ran again after the requeue
    resumed_at = int((markers / "started-2").read_text())
    assert resumed_at > 0  # the second attempt started from the checkpoint, not from zero
    (row,) = _rows(reg)
    assert row.state == "COMPLETED"
    assert row.requeue_count >= 1


def _parent_with_a_child(
    tmp_path: Path, reg: Registry, *, adoptable: bool
) -> tuple[str, JobHandle]:
    """A driver job on the real Slurm that submits a child job (sleeping 300 s) and waits for
    it: (the child's job name, the parent's handle)."""
    child = f"child-{os.getpid()}-{time.time_ns()}"
    parent = _slurm(tmp_path, reg).submit(
        jobfns.parent_of_a_child,
        str(tmp_path / "child-jobs"),
        reg.url,
        "slurm-local",
        child,
        300,
        adoptable,
        name="parent",
    )
    return child, parent


@pytest.mark.timeout(300)
def test_a_cancelled_driver_job_cancels_its_child_job(tmp_path: Path, reg: Registry) -> None:
    """scancel of a pipeline stage job left the Slurm job it had submitted running, and the
    stage's cause was a DataLoader RuntimeError: the child is cancelled with it, and says so."""
    from pomlia_hpc.cluster.batch import jobs_named

    child, parent = _parent_with_a_child(tmp_path, reg, adoptable=False)
    deadline = time.time() + 180
    while not [j for j in jobs_named(child) if j.state == "RUNNING"]:
        assert time.time() < deadline, "the child job never ran"
        time.sleep(0.5)
    subprocess.run(["scancel", parent.job_id], check=True)
    deadline = time.time() + 60  # Slurm's KillWait is 30 s: the child goes before that
    while jobs_named(child):
        assert time.time() < deadline, "the child job runs on after its parent was cancelled"
        time.sleep(0.5)
    with pytest.raises(JobFailedError):
        parent.result()
    with reg.session() as s:
        row = s.scalars(select(Job).where(Job.name == child)).one()
    assert row.state == "CANCELLED", row.state
    assert (row.exit_cause or "").startswith("cancelled (SIGTERM"), row.exit_cause


@pytest.mark.timeout(300)
def test_a_requeued_driver_job_leaves_its_child_job_running(tmp_path: Path, reg: Registry) -> None:
    """A requeue (as a time limit or preemption of a `--requeue` job) SIGTERMs the driver too:
    it cancelled the child jobs the requeued driver should reattach to. Only a cancellation
    (sacct: CANCELLED) cancels those now (children it would not reattach to are cancelled on
    any stop: tests/test_cluster_terminate.py)."""
    from pomlia_hpc.cluster.batch import jobs_named

    # a child the requeued driver reattaches to, as an AutoML trial
    child, parent = _parent_with_a_child(tmp_path, reg, adoptable=True)
    try:
        deadline = time.time() + 180
        while not [j for j in jobs_named(child) if j.state == "RUNNING"]:
            assert time.time() < deadline, "the child job never ran"
            time.sleep(0.5)
        first = [j.job_id for j in jobs_named(child)]
        subprocess.run(["scontrol", "requeue", parent.job_id], check=True)
        time.sleep(12)  # KillWait (5 s here) and then some: a cancel would have happened
        running = {j.job_id for j in jobs_named(child) if j.state == "RUNNING"}
        assert set(first) <= running, (first, running)
        with reg.session() as s:
            rows = s.scalars(select(Job).where(Job.scheduler_id.in_(first))).all()
        assert rows and all(r.state != "CANCELLED" for r in rows), [r.exit_cause for r in rows]
    finally:
        subprocess.run(["scancel", parent.job_id], check=False)
        time.sleep(1)
        subprocess.run(["scancel", "--name", child], check=False)
