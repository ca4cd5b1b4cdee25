"""Job processes wait passively between torch's parallel regions (``OMP_WAIT_POLICY=PASSIVE``)
unless the submitter chose a policy: jobs side by side on the same cores otherwise spend their
time spinning against each other (docs/BENCHMARKS.md, "Job threads that wait")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.registry import Registry


def test_a_local_job_waits_passively_and_the_submitter_is_left_alone(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # the test lanes set one
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    assert ex.submit(os.environ.get, "OMP_WAIT_POLICY").result() == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_submitters_own_policy_is_kept(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    assert ex.submit(os.environ.get, "OMP_WAIT_POLICY").result() == "ACTIVE"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_slurm_job_waits_passively(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    assert ex.submit(os.environ.get, "OMP_WAIT_POLICY").result() == "PASSIVE"
