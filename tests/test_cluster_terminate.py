"""What a SIGTERM to a driver means for its child jobs (pomlia_hpc.cluster.terminate)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.terminate import (
    SIGTERM_CAUSE,
    JobCancelled,
    JobStopped,
    cancel_children_on_stop,
    cancelled_with_this_process,
    stop_cause,
)
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns


def _fake_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Run as Slurm job 4242 whose accounting answers with ``script`` (a shell body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    sacct.write_text(f"#!/bin/sh\n{script}\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")


def _sigterm_with_a_child(tmp_path: Path, reg: Registry) -> tuple[Any, BaseException]:
    """A driver block that submits a local child job and gets a SIGTERM; returns the child's
    handle and what the block raised."""
    child: list[Any] = []
    with pytest.raises(JobStopped) as info, cancel_children_on_stop():
        child.append(
            Executor.from_profile("local", tmp_path / "jobs", reg).submit(jobfns.sleep_for, 60)
        )
        child[0].job(30)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    return child[0], info.value


def _state(reg: Registry, rid: int) -> tuple[str, str | None]:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        return row.state, row.exit_cause


@pytest.mark.parametrize(
    "answer", ["echo REQUEUED", "echo TIMEOUT", "echo 'PREEMPTED '", "exit 1", "sleep 10"]
)
def test_a_slurm_stop_that_is_no_cancellation_leaves_the_children_running(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """A requeue, time limit or preemption (or a state that cannot be read) cancelled every
    child job of a `--requeue` pipeline driver: now they run on for the requeued driver."""
    _fake_sacct(tmp_path, monkeypatch, answer)
    child, exc = _sigterm_with_a_child(tmp_path, reg)
    try:
        assert not isinstance(exc, JobCancelled)
        assert "stopped by Slurm" in str(exc) and "run on" in str(exc)
        assert stop_cause(exc) == str(exc)
        assert child.record_id is not None
        assert _state(reg, child.record_id)[0] != "CANCELLED"
        assert not child.done()
    finally:
        child.cancel("test over")


def test_a_slurm_job_cancelled_by_scancel_cancels_its_children(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_sacct(tmp_path, monkeypatch, "echo 'CANCELLED by 1000'")
    child, exc = _sigterm_with_a_child(tmp_path, reg)
    assert isinstance(exc, JobCancelled) and str(exc) == SIGTERM_CAUSE
    assert child.record_id is not None
    assert _state(reg, child.record_id) == (
        "CANCELLED",
        f"{SIGTERM_CAUSE}, with the job that submitted it",
    )


def test_sigterm_outside_slurm_is_a_cancellation(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    child, exc = _sigterm_with_a_child(tmp_path, reg)
    assert isinstance(exc, JobCancelled)
    assert child.record_id is not None
    assert _state(reg, child.record_id)[0] == "CANCELLED"
    # what the CLI's Ctrl-C message reports (it said "Slurm jobs run on" whatever happened)
    assert child.name in cancelled_with_this_process()


def test_a_second_sigterm_while_stopping_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second signal raised again inside the cleanup (orphaning the children not yet
    cancelled): once a cause is noted, further SIGTERMs are no-ops."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(JobCancelled), cancel_children_on_stop():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except JobCancelled as first:
            os.kill(os.getpid(), signal.SIGTERM)  # raised a second JobCancelled here
            time.sleep(0.2)
            raise first from None
