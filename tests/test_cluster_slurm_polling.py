"""How often waiting on Slurm jobs runs ``sacct``, against the real single-node Slurm: a site
expects a client's calls to be few, not one per job at once."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, endwatch, records, sacct, wait_all
from pomlia_hpc.cluster.waiting import settle
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def test_collecting_an_ended_array_runs_one_sacct_not_one_per_task(
    tmp_path: Path, reg: Registry
) -> None:
    """Each task's result() asked sacct for its own end after the one poll that had recorded
    every task's end already: an array of 1000 shards made 1000 sacct calls in a burst."""
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handles = ex.map_array(jobfns.negate, list(range(6)))
    deadline = time.monotonic() + 300
    while not all(h.done() for h in handles) and time.monotonic() < deadline:
        time.sleep(0.5)
    while not _all_recorded_completed(reg) and time.monotonic() < deadline:
        settle(handles)  # one sacct for all (slurmdbd records the ends a moment late)
    before = sacct.SACCT_CALLS
    assert wait_all(handles, poll_s=0.5) == [-x for x in range(6)]
    assert before == sacct.SACCT_CALLS  # every end was known: nothing left to ask


def _all_recorded_completed(reg: Registry) -> bool:
    with reg.session() as s:
        rows = list(s.scalars(select(Job)))
    return all(r.state == "COMPLETED" and r.ended_at is not None for r in rows)


def test_a_job_that_ended_without_a_result_is_seen_done_when_sacct_says_so(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job cancelled outside pomlia (or killed for its memory) writes no result, and
    submitit saw its end only in its own sacct polls, every half of the time since the last
    submission up to every 10 minutes: an AutoML trial killed 20 minutes in held its slot of
    --parallel for up to 10 minutes more. Now done() asks at most endwatch.END_SEEN_WITHIN_S
    seconds after sacct knows (0 here: at once)."""
    monkeypatch.setattr(endwatch, "END_SEEN_WITHIN_S", 0.0)
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    job = ex.submit(jobfns.sleep_for, 120.0, name="killed-without-result")
    try:
        _wait_for_state(job.job_id, "RUNNING")
        time.sleep(8)  # submitit now polls sacct every 4 s or more
        assert not job.done()
    finally:
        subprocess.run(["scancel", job.job_id], check=True)
    _wait_for_state(job.job_id, "CANCELLED")
    # done() reads the answer of the sacct it started in a thread of its own on a later call
    deadline = time.monotonic() + 60
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert job.done()


def test_a_hanging_sacct_does_not_hang_a_driver_waiting_on_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """done() ran submitit's sacct (no time limit) every 30 s in the caller's thread: a
    slurmdbd that took the connection and never answered hung an AutoML driver or a pipeline
    stage waiting on its jobs for good. Now the sacct runs in a thread of its own, one at a
    time, and done() answers with what is known."""
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs")
    job = ex.submit(jobfns.sleep_for, 120.0, name="sacct-hangs")
    job_id = job.job_id  # submitted before sacct hangs
    release, calls, ended = tmp_path / "release", tmp_path / "calls", tmp_path / "ended"
    wait = f"while [ ! -e {release} ]; do sleep 0.2; done; touch {ended}"
    fake_sacct(tmp_path, monkeypatch, wait, calls)
    deadline = time.monotonic() + 60
    monkeypatch.setattr(endwatch, "END_SEEN_WITHIN_S", 0.0)
    answers: list[bool] = []

    def ask_twice() -> None:
        answers.extend(job.done() for _ in range(2))

    try:
        asking = threading.Thread(target=ask_twice, daemon=True)
        asking.start()
        asking.join(60)
        assert not asking.is_alive(), "done() still waits for a sacct that does not answer"
        assert answers == [False, False]
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert calls.read_text() == "x\n"  # the second look started no second sacct
    finally:
        release.touch()
        # its folder goes with the test: a sacct still waiting then would wait for ever
        while not ended.exists() and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        subprocess.run(["scancel", job_id], check=False)


#: An hour ago as sacct prints it (local time): within a node failure's requeue window.
HOUR_AGO = (datetime.now() - timedelta(hours=1)).isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("state", "end", "controller", "ended"),
    [
        ("SUSPENDED", "Unknown", "", False),
        # Not requeued for an hour: Slurm cancels preempted jobs here. submitit waits for ever.
        ("PREEMPTED", HOUR_AGO, "PREEMPTED", True),
        # Requeued after its node failed: the (real) controller lists it queued or running.
        ("NODE_FAIL", HOUR_AGO, "", False),
    ],
    # Named by state: an id with HOUR_AGO in it (the clock at collection) differed between
    # two xdist workers that collected a second apart, and the whole run stopped at collection.
    ids=["SUSPENDED", "PREEMPTED", "NODE_FAIL"],
)
def test_done_judges_the_states_submitit_misjudges(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
    end: str,
    controller: str,
    ended: bool,
) -> None:
    """submitit counts every state but a few as done, SUSPENDED (gang scheduling, preemption
    by suspension, scontrol suspend) among them: with done() asking every 30 s a suspended
    trial was soon taken for ended, and failed for want of a result. And it counts PREEMPTED
    as unfinished for ever, so an AutoML driver waited on a trial Slurm did not requeue. A
    NODE_FAIL that Slurm requeued was taken for the job's end while it ran again unwatched.
    ``controller``: what a fake ``squeue`` says of the job ("": the real one answers)."""
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs")
    job = ex.submit(jobfns.sleep_for, 120.0, name=state.lower())
    job_id = job.job_id
    calls = tmp_path / "calls"
    # as submitit asks (a header, JobID,State,NodeList) and as pomlia asks (no header)
    answer = (
        'case "$*" in *NodeList*) printf "JobID|State|NodeList\\n%s|$S|n1\\n" "$J";; '
        '*) printf "%s|$S|2026-01-01T00:00:00|$E|0:0\\n" "$J";; esac'
    )
    monkeypatch.setenv("J", job_id)
    monkeypatch.setenv("S", state)
    monkeypatch.setenv("E", end)
    fake_sacct(tmp_path, monkeypatch, answer, calls)
    if controller:  # the controller's word on a job that sacct says ended so
        squeue = tmp_path / "bin" / "squeue"
        squeue.write_text(f"#!/bin/sh\necho '{job_id}|{controller}|{end}'\n")
        squeue.chmod(0o755)
    monkeypatch.setattr(endwatch, "END_SEEN_WITHIN_S", 0.0)
    try:
        deadline = time.monotonic() + 60
        seen: list[bool] = []
        # until it is done, or two answers were read (the first is in before the next starts)
        while time.monotonic() < deadline:
            seen.append(job.done())
            if seen[-1] or len(_lines(calls)) >= 3:
                break
            time.sleep(0.2)
        assert job.done() is ended
        assert ended or (len(_lines(calls)) >= 3 and not any(seen))
    finally:
        subprocess.run(["scancel", job_id], check=False)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def fake_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, calls: Path) -> None:
    """Put first on PATH an ``sacct`` that notes each call (a line ``x`` in ``calls``), then
    runs the shell commands ``body``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    sacct.write_text(f"#!/bin/sh\necho x >> {calls}\n{body}\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _wait_for_state(job_id: str, state: str) -> None:
    """Wait (up to 60 s) until sacct reports Slurm job ``job_id`` in ``state``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = records.sacct_states([job_id]).get(job_id)
        if st is not None and st.state == state:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not {state} within 60 s")
