"""What `pomlia deploy` finds that a killed run left: a server job queued before its record
(real Slurm), a deployment row whose directory was never finished."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.cluster.batch import jobs_named, submit_script
from pomlia_hpc.registry import Deployment, Job, Model, Registry
from pomlia_hpc.serve.deploy import IMAGE, DeployResult, server_job_name, submit_deployment


def _deployment(reg: Registry, directory: Path) -> int:
    """A model and a deployment row of it whose directory is ``directory``."""
    with reg.session() as s:
        model = Model(name="m", path="")
        s.add(model)
        s.flush()
        dep = Deployment(model_id=model.id, bundle_path=str(directory / "bundle"))
        s.add(dep)
        s.flush()
        return dep.id


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_server_queued_by_a_killed_submission_is_found_not_submitted_again(
    reg: Registry, tmp_path: Path
) -> None:
    """A `deploy --submit` (or a pipeline's deploy stage) killed between the server's sbatch
    and recording its job left a server queued that no record named; run again, it submitted
    a second server. The server's job name carries the deployment id: the run finds it with
    squeue, records it and submits nothing."""
    directory = tmp_path / "deploy"
    directory.mkdir()
    (directory / IMAGE).write_bytes(b"built image")
    script = directory / "serve.sbatch"  # pends for an hour: it never runs here
    script.write_text(
        "#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=1\n#SBATCH --begin=now+3600\n"
        f"#SBATCH --output={tmp_path}/%j.out\ntrue\n"
    )
    dep_id = _deployment(reg, directory)
    name = server_job_name(dep_id)
    result = DeployResult(directory, dep_id, directory / "apptainer.def", script)
    # The killed run: its sbatch went through, nothing was recorded.
    queued = submit_script(script, name=name, singleton=False, cwd=directory)
    try:
        again = submit_deployment(reg, result)
        assert again.already is not None and "not submitted again" in again.submission
        assert [j.job_id for j in jobs_named(name, script)] == [queued]
        with reg.session() as s:
            job = s.get(Job, again.job_id)
            assert job is not None and job.scheduler_id == queued
            dep = s.get(Deployment, dep_id)
            assert dep is not None and (dep.job_id, dep.status) == (again.job_id, "submitted")
        third = submit_deployment(reg, result)  # recorded now: the same row, no new one
        assert third.job_id == again.job_id
        assert [j.job_id for j in jobs_named(name, script)] == [queued]
        with reg.session() as s:
            assert s.query(Job).count() == 1
    finally:
        for job in jobs_named(name, script):
            subprocess.run(["scancel", job.job_id], check=False)
