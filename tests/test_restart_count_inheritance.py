"""A job submitted from inside a requeued Slurm job (a pipeline's driver job, a study driver in
``jobs/automl.sbatch``, the monitor's self-resubmitting chain) must start with a restart count
of its own. Slurm sets ``SLURM_RESTART_COUNT`` in a job only after a requeue, and sbatch exports
the submitting environment: the child inherited its parent's count and its first attempt said
"attempt 2" (``Checkpointable.restart_count``), its give-up line counted attempts it never
made, and a study driver in it took its own first start for a requeue."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.batch import submit_script
from pomlia_hpc.registry import Registry
from tests.fixtures.waiting import written_text


def test_a_local_job_does_not_inherit_its_submitters_restart_count(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # the submitter: a requeued driver job
    h = Executor.from_profile("local", tmp_path / "jobs", reg).submit(
        os.getenv, "SLURM_RESTART_COUNT", "unset"
    )
    assert h.result() == "unset"
    assert os.environ["SLURM_RESTART_COUNT"] == "2"  # the submitter's own is left alone


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_slurm_jobs_do_not_inherit_their_submitters_restart_count(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    job = ex.submit(os.getenv, "SLURM_RESTART_COUNT", "unset")
    (task,) = ex.map_array(os.getenv, ["SLURM_RESTART_COUNT"])
    out = tmp_path / "script.out"
    script = tmp_path / "count.sh"
    script.write_text('#!/bin/sh\necho "${SLURM_RESTART_COUNT:-unset}"\n')
    sid = submit_script(script, name=f"restart-count-{os.getpid()}", output=out, singleton=False)
    try:
        assert job.result() == "unset"
        assert task.result() is None  # os.getenv without a value: not set
        assert written_text(out) == "unset"
    finally:
        subprocess.run(["scancel", sid], check=False)
