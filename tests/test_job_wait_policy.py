"""Job processes wait passively between torch's parallel regions (``OMP_WAIT_POLICY=PASSIVE``)
unless the submitter chose a policy: jobs side by side on the same cores otherwise spend their
time spinning against each other (docs/BENCHMARKS.md, "Job threads that wait"). Each job reads
its own process's environment (``os.getenv`` is pickled by name; ``os.environ.get`` would carry
the submitter's environment with it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.batch import submit_script
from pomlia_hpc.registry import Registry
from tests.fixtures.waiting import written_text

VAR = "OMP_WAIT_POLICY"


@pytest.fixture
def no_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The submitter sets no policy (the test lanes set one for themselves)."""
    monkeypatch.delenv(VAR, raising=False)


@pytest.mark.usefixtures("no_policy")
def test_local_jobs_and_array_tasks_wait_passively_and_the_submitter_is_left_alone(
    tmp_path: Path, reg: Registry
) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    assert ex.submit(os.getenv, VAR).result() == "PASSIVE"
    assert [h.result() for h in ex.map_array(os.getenv, [VAR, VAR])] == ["PASSIVE", "PASSIVE"]
    assert VAR not in os.environ


def test_the_submitters_own_policy_is_kept(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, "ACTIVE")
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    assert ex.submit(os.getenv, VAR).result() == "ACTIVE"
    assert ex.submit(os.getenv, VAR, env={VAR: "FROM_ENV"}).result() == "FROM_ENV"
    assert os.environ[VAR] == "ACTIVE"


@pytest.mark.usefixtures("no_policy")
def test_a_debug_job_runs_in_the_submitters_environment(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("debug", tmp_path / "jobs", reg)
    assert ex.submit(os.getenv, VAR).result() is None


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm", "no_policy")
def test_slurm_jobs_and_batch_scripts_wait_passively(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    job = ex.submit(os.getenv, VAR)
    out = tmp_path / "script.out"
    script = tmp_path / "policy.sh"
    script.write_text(f'#!/bin/sh\necho "${{{VAR}:-unset}}"\n')
    sid = submit_script(script, name=f"wait-policy-{os.getpid()}", output=out, singleton=False)
    try:
        assert job.result() == "PASSIVE"
        assert written_text(out) == "PASSIVE"
    finally:
        subprocess.run(["scancel", sid], check=False)
    assert VAR not in os.environ
