"""A submission's ``env`` reaches its own job only. A local array's later tasks start from the
executor's feeder thread while the main thread may be submitting another job with its own
``env`` (a registry URL with a password); that job's variables are in this process's
environment for the moment of its submission, and a task started in that moment must not
inherit them. Nor does a task inherit the submitter's restart count."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.handle import JobHandle
from pomlia_hpc.registry import Registry

SECRET = "POMLIA_TEST_SUBMISSION_SECRET"


class _SlowToPickle:
    """An argument whose pickling, inside its submission, waits until the first task of an
    array has ended and then until the feeder thread has submitted the second (without the
    submissions taking turns: within a tenth of a second), or for 3 s (taking turns, the
    feeder waits for this submission, so the second is never submitted meanwhile)."""

    def __init__(self, first: JobHandle, second: JobHandle) -> None:
        self.first, self.second = first, second

    def __reduce__(self) -> tuple[Any, ...]:
        deadline = time.monotonic() + 120
        while not self.first.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        deadline = time.monotonic() + 3
        while not self.second.submitted and time.monotonic() < deadline:
            time.sleep(0.05)
        return (str, ("pickled",))


def test_an_array_task_started_during_another_submission_does_not_get_its_env(
    tmp_path: Path, reg: Registry
) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg, max_parallel=1)
    tasks = ex.map_array(os.getenv, [SECRET, SECRET])  # the second waits for the first
    job = ex.submit(str, _SlowToPickle(*tasks), env={SECRET: "s3cret"})
    assert job.result() == "pickled"
    assert [t.result() for t in tasks] == [None, None]
    assert SECRET not in os.environ


def test_array_tasks_do_not_inherit_the_submitters_restart_count(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # the submitter is a requeued job
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    tasks = ex.map_array(os.getenv, ["SLURM_RESTART_COUNT"])
    assert [t.result() for t in tasks] == [None]
    assert os.environ["SLURM_RESTART_COUNT"] == "2"
