"""Pomlia's Slurm jobs under a site's sbatch settings (``SBATCH_*``, ``SLURM_EXPORT_ENV``) and
inside an enclosing job's allocation, against the real single-node Slurm."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor, JobHandle, refusal, wait_all
from pomlia_hpc.cluster.batch import submit_script
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Registry
from tests.fixtures import jobfns

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def _slurm(tmp_path: Path, reg: Registry) -> Executor:
    return Executor.from_profile("slurm-local", tmp_path / "jobs", reg)


def _time_limit(job_id: str) -> str:
    """The job's time limit as sacct prints it, once slurmdbd has recorded the job."""
    for _ in range(300):
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "Timelimit", "-j", job_id],
            capture_output=True,
            text=True,
            check=True,
        )
        if out.stdout.strip():
            return out.stdout.strip()
        time.sleep(0.1)
    raise AssertionError(f"sacct never listed job {job_id}")


def test_a_site_that_exports_nothing_still_gives_the_job_its_environment(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SBATCH_EXPORT=NONE (sbatch) and SLURM_EXPORT_ENV=NONE (srun) started the job without
    the venv's environment: submitit failed in the job ("Could not figure out which
    environment"), and the registry URL passed in the job's environment never arrived."""
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    monkeypatch.setenv("SLURM_EXPORT_ENV", "NONE")
    monkeypatch.setenv("POMLIA_SITE_TEST", "from the submitter")
    h = _slurm(tmp_path, reg).submit(
        jobfns.environ_of, "POMLIA_SITE_TEST", "POMLIA_SECRET_TEST", env={"POMLIA_SECRET_TEST": "s"}
    )
    assert h.result() == {"POMLIA_SITE_TEST": "from the submitter", "POMLIA_SECRET_TEST": "s"}


def test_an_array_submitted_inside_a_job_with_memory_per_cpu_runs(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command run inside an allocation made with --mem-per-cpu (salloc, a driver job) gave
    each job it submitted that job's SLURM_MEM_PER_CPU beside the new SLURM_MEM_PER_NODE, and
    srun refused them as mutually exclusive: every task ended FAILED before it started."""
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "500")
    handles = _slurm(tmp_path, reg).map_array(jobfns.negate, [1, 2])
    assert wait_all(handles, poll_s=0.5) == [-1, -2]


def test_a_sites_time_limit_does_not_replace_the_jobs_own(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """SBATCH_TIMELIMIT overrode the #SBATCH --time of the profile (30 min here), while the
    job's row, its failure causes and the checkpoint warning went by the profile's."""
    monkeypatch.setenv("SBATCH_TIMELIMIT", "5")
    h = _slurm(tmp_path, reg).submit(jobfns.add, 1, 2)
    assert h.result() == 3
    assert _time_limit(h.job_id) == "00:30:00"
    assert "SBATCH_TIMELIMIT=5" in capsys.readouterr().err  # said, not silently dropped


def test_a_sites_partition_applies_where_the_profile_names_none(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options the profile leaves to the site come from the site's SBATCH_* variables: a
    partition that does not exist is sbatch's refusal, so it was asked for."""
    profile = load_cluster_profile("slurm-local").model_copy(update={"partition": None})
    monkeypatch.setenv("SBATCH_PARTITION", "no-such-partition")
    with pytest.raises(ClusterError, match=r"check partition: .*(?i:partition)"):
        Executor(profile, tmp_path / "jobs", reg).submit(jobfns.add, 1, 2)


def test_a_sites_workload_key_applies(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SBATCH_WCKEY was left out with the options a job's script names, so submitit's
    placeholder ``--wckey=submitit`` replaced the site's key: a site that enforces workload
    keys refused every job, one that charges by them booked it under "submitit"."""
    monkeypatch.setenv("SBATCH_WCKEY", "site-key")
    h = _slurm(tmp_path, reg).submit(jobfns.sleep_for, 60.0)
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", h.job_id, "-O", "wckey"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        h.cancel()
    assert out.stdout.strip() == "site-key"


def test_a_batch_script_gets_the_environment_where_the_site_exports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain batch script (a deployment's serve.sbatch) relies on the submitting
    environment as well."""
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    monkeypatch.setenv("POMLIA_SITE_TEST", "from the submitter")
    seen = tmp_path / "seen"
    script = tmp_path / "show.sbatch"
    script.write_text(f'#!/bin/bash\necho "${{POMLIA_SITE_TEST:-}}" > {seen}\n')
    job_id = submit_script(
        script, name="pomlia-site-env", singleton=False, output=tmp_path / "out-%j"
    )
    subprocess.run(["scontrol", "wait_job", job_id], capture_output=True, check=False)
    for _ in range(600):  # scontrol wait_job returns once the job left the node
        if seen.exists():
            break
        time.sleep(0.1)
    assert seen.read_text().strip() == "from the submitter"


def test_a_held_job_is_said_with_what_releases_it_and_again_while_it_waits(
    tmp_path: Path,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A held job was said once ("pending: JobHeldUser") and then waited on in silence for
    ever; now the note says how to release it, and a reminder says for how long it pends."""
    monkeypatch.setattr(refusal, "REASON_CHECK_S", 0.0)
    monkeypatch.setattr(refusal, "PENDING_REMIND_S", 1.0)
    h = _held_job(_slurm(tmp_path, reg))
    try:
        err = ""
        deadline = time.monotonic() + 120
        while "still pending after" not in err and time.monotonic() < deadline:
            assert not h.done()
            err += capsys.readouterr().err
            time.sleep(0.2)
    finally:
        h.cancel()
    release = f"(held: scontrol release {h.job_id} lets it start)"
    assert f"pending: JobHeldUser {release}" in err
    assert re.search(rf"still pending after \d+ s: JobHeldUser {re.escape(release)}", err), err


def _held_job(ex: Executor) -> JobHandle:
    """A job held by its user (``scontrol hold``), submitted again while it had started
    before the hold came."""
    for _ in range(5):
        h = ex.submit(jobfns.sleep_for, 60.0)
        if subprocess.run(["scontrol", "uhold", h.job_id], capture_output=True).returncode == 0:
            return h
        h.cancel()
    raise AssertionError("every job started before it could be held")
