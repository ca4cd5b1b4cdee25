"""What `pomlia deploy` finds that a killed run left: a server job queued before its record
(real Slurm), a deployment row whose directory was never finished; and the memory its
serve.sbatch asks for."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pomlia_hpc.cluster.batch import jobs_named, submit_script
from pomlia_hpc.cluster.records import UNCONFIRMED_META
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.registry import Deployment, Job, Model, Registry
from pomlia_hpc.serve.deploy import (
    IMAGE,
    DeployResult,
    check_deployment,
    server_job_name,
    submit_deployment,
)
from pomlia_hpc.serve.unfinished import FOREIGN_DEPLOY_GONE_S


def _deployment(reg: Registry, directory: Path) -> int:
    """A deployment row (of model 'm', made on first use) whose directory is ``directory``."""
    with reg.session() as s:
        model = s.query(Model).filter_by(name="m").first() or Model(name="m", path="")
        s.add(model)
        s.flush()
        dep = Deployment(model_id=model.id, bundle_path=str(directory / "bundle"))
        s.add(dep)
        s.flush()
        return dep.id


def _pending_server(tmp_path: Path) -> tuple[Path, Path]:
    """A deploy directory with a built image and a `serve.sbatch` that pends for an hour (it
    never runs here): (the directory, the script)."""
    directory = tmp_path / "deploy"
    directory.mkdir()
    (directory / IMAGE).write_bytes(b"built image")
    script = directory / "serve.sbatch"  # pends for an hour: it never runs here
    script.write_text(
        "#!/bin/sh\n#SBATCH --job-name=pomlia-serve-m\n#SBATCH --partition=debug\n"
        f"#SBATCH --time=1\n#SBATCH --begin=now+3600\n#SBATCH --output={tmp_path}/%j.out\ntrue\n"
    )
    return directory, script


def _queued_unrecorded(reg: Registry, tmp_path: Path) -> tuple[DeployResult, str]:
    """A deployment whose pending server (:func:`_pending_server`) is queued under the
    deployment's job name and recorded nowhere, as a run killed after its sbatch leaves it:
    (the deployment, the server's Slurm id)."""
    directory, script = _pending_server(tmp_path)
    dep_id = _deployment(reg, directory)
    result = DeployResult(directory, dep_id, directory / "apptainer.def", script)
    name = server_job_name(dep_id)
    return result, submit_script(script, name=name, singleton=False, cwd=directory)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_server_queued_by_a_killed_submission_is_found_not_submitted_again(
    reg: Registry, tmp_path: Path
) -> None:
    """A `deploy --submit` (or a pipeline's deploy stage) killed between the server's sbatch
    and recording its job left a server queued that no record named; run again, it submitted
    a second server. The server's job name carries the deployment id: the run finds it with
    squeue, records it and submits nothing; so it does a server submitted by hand."""
    result, queued = _queued_unrecorded(reg, tmp_path)  # the killed run's server
    directory, script, dep_id = result.directory, result.sbatch_file, result.deployment_id
    name = server_job_name(dep_id)
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
        # A server the user submitted by hand (`sbatch serve.sbatch`: the script's own name)
        subprocess.run(["scancel", queued], check=True)
        sbatch = ["sbatch", "--parsable", "serve.sbatch"]
        by_hand = subprocess.run(sbatch, cwd=directory, capture_output=True, text=True)
        assert by_hand.returncode == 0, by_hand.stderr
        found = submit_deployment(reg, result)
        assert found.already is not None and found.already.startswith(
            f"Slurm {by_hand.stdout.strip()}"
        )
        assert not jobs_named(name, script)  # none submitted under the deployment's name
    finally:
        for job in jobs_named(f"{name},pomlia-serve-m", script):
            subprocess.run(["scancel", job.job_id], check=False)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_queued_server_is_not_taken_for_an_ended_job_that_had_its_id(
    reg: Registry, tmp_path: Path
) -> None:
    """Slurm numbers jobs anew once its controller's state is lost (a reinstalled cluster
    starts again at FirstJobId): the registry may hold an ended job with the id of the server
    queued now. The found server was taken for that row, whose state (ended) the deployment
    then showed."""
    result, queued = _queued_unrecorded(reg, tmp_path)
    dep_id = result.deployment_id
    name = server_job_name(dep_id)
    try:
        with reg.session() as s:  # the earlier cluster's server of this deployment
            old = Job(backend="slurm", scheduler_id=queued, name=name, state="COMPLETED")
            old.meta = {"deployment_id": dep_id}
            s.add(old)
            s.flush()
            old_id = old.id
        found = submit_deployment(reg, result)
        assert found.already is not None and found.job_id != old_id
        with reg.session() as s:
            job = s.get(Job, found.job_id)
            assert job is not None and job.scheduler_id == queued and job.state != "COMPLETED"
        assert submit_deployment(reg, result).job_id == found.job_id  # and taken again
        with reg.session() as s:  # a cancel on pomlia's word alone has not ended it
            row = s.get(Job, found.job_id)
            assert row is not None
            marked = datetime.now(UTC).isoformat(timespec="seconds")
            row.state, row.meta = "CANCELLED", {UNCONFIRMED_META: marked}
        assert submit_deployment(reg, result).job_id == found.job_id
    finally:
        subprocess.run(["scancel", queued], check=False)


def _killed_writer_row(reg: Registry, directory: Path) -> int:
    """What a `pomlia deploy` SIGKILLed while copying the bundle leaves: a row `created` and
    the staging folder of a process that is gone beside ``directory``, which never appeared."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname().replace(".", "_")
    staged = directory.parent / f".{directory.name}.{host}.{gone.pid}.tmp"
    (staged / "bundle").mkdir(parents=True)
    return _deployment(reg, directory)


def test_a_deployment_a_killed_deploy_never_finished_is_not_served_under(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row left `created` by a deploy killed while it copied the bundle stayed for good, and
    `pomlia serve --deployment-id` took it as a deployment. It is settled now (deleted, said
    on stderr); a row whose writer is at work (its staging folder's pid alive) is left."""
    dead = _killed_writer_row(reg, tmp_path / "deploy" / "v1")
    with pytest.raises(NotFoundError, match=f"--deployment-id {dead}: no such deployment"):
        check_deployment(reg, dead)
    assert f"deployment {dead} was never finished" in capsys.readouterr().err
    at_work = tmp_path / "deploy" / "v2"
    host = socket.gethostname().replace(".", "_")
    (at_work.parent / f".{at_work.name}.{host}.{os.getpid()}.tmp").mkdir()
    busy = _deployment(reg, at_work)
    check_deployment(reg, busy)  # its writer runs: a deployment in the making
    with reg.session() as s:
        assert [d.id for d in s.query(Deployment)] == [busy]


def test_a_deployment_another_host_never_finished_is_settled_once_it_is_a_day_old(
    reg: Registry, tmp_path: Path
) -> None:
    """A deploy killed on another node left a row `created` beside that node's staging folder:
    no process of this host can say whether its writer is gone, and the row stayed for good
    (a `serve --deployment-id` took it as a deployment). A deploy takes minutes: such a row
    older than a day is settled; a younger one is left (its writer may be at work there)."""
    directory = tmp_path / "deploy" / "v1"
    (directory.parent / f".{directory.name}.another-node.4242.tmp" / "bundle").mkdir(parents=True)
    dep_id = _deployment(reg, directory)
    check_deployment(reg, dep_id)  # an hour old at most: left
    with reg.session() as s:
        row = s.get(Deployment, dep_id)
        assert row is not None
        row.created_at = row.created_at - timedelta(seconds=FOREIGN_DEPLOY_GONE_S + 60)
    with pytest.raises(NotFoundError, match=f"--deployment-id {dep_id}: no such deployment"):
        check_deployment(reg, dep_id)


def test_serve_sbatch_asks_for_the_memory_the_profile_gives() -> None:
    """serve.sbatch wrote `--mem={int(mem_gb)}G`: a profile's 0.5 GB became `--mem=0G`, which
    Slurm reads as all the node's memory, and 1.5 GB became 1 GB, less than asked."""
    from pomlia_hpc.config import load_cluster_profile
    from pomlia_hpc.serve.deploy import sbatch_directives

    base = load_cluster_profile("slurm-local")
    for mem_gb, line in ((0.5, "--mem=512M"), (1.5, "--mem=1536M"), (64.0, "--mem=64G")):
        profile = base.model_copy(update={"mem_gb": mem_gb})
        assert f"#SBATCH {line}" in sbatch_directives(profile, name="pomlia-serve-m")


def test_a_server_that_is_ending_is_not_taken_for_the_submission(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """squeue lists a server `scancel`led a moment ago (to be replaced, as the guide says) as
    COMPLETING while it drains: `deploy --submit` took it for the deployment's server and
    submitted none, and once it had ended no server ran. An ending job is passed over."""
    directory = tmp_path / "deploy"
    directory.mkdir()
    (directory / IMAGE).write_bytes(b"built image")
    script = directory / "serve.sbatch"
    script.write_text("#!/bin/sh\n#SBATCH --job-name=pomlia-serve-m\ntrue\n")
    dep_id = _deployment(reg, directory)
    shims = tmp_path / "bin"  # squeue lists the ending server; sbatch queues job 7002
    shims.mkdir()
    listed = f"7001|COMPLETING|N/A|(null)|{script}"
    for name, text in (("squeue", f"echo '{listed}'"), ("sbatch", "echo 7002")):
        (shims / name).write_text(f"#!/bin/sh\n{text}\n")
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    result = DeployResult(directory, dep_id, directory / "apptainer.def", script)
    done = submit_deployment(reg, result)
    assert done.already is None and done.submission.startswith("submitted: registry job")
    with reg.session() as s:
        job = s.get(Job, done.job_id)
        assert job is not None and job.scheduler_id == "7002"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_server_an_older_version_queued_is_not_submitted_twice(
    reg: Registry, tmp_path: Path
) -> None:
    """Every `deploy --submit` before the deployment's job name named its server
    `pomlia-serve`: after the upgrade, `deploy --submit` of that deployment looked for its new
    name and the script's own only, and queued a second server beside the running one."""
    directory, script = _pending_server(tmp_path)
    dep_id = _deployment(reg, directory)
    old = submit_script(script, name="pomlia-serve", singleton=False, cwd=directory)
    try:
        done = submit_deployment(reg, DeployResult(directory, dep_id, directory, script))
        assert done.already is not None and done.already.startswith(f"Slurm {old},"), done
        assert not jobs_named(server_job_name(dep_id), script)
    finally:
        names = f"pomlia-serve,{server_job_name(dep_id)}"
        for job in jobs_named(names, script):
            subprocess.run(["scancel", job.job_id], check=False)


def test_a_deploy_at_work_under_a_name_like_a_pattern_keeps_its_row(
    reg: Registry, tmp_path: Path
) -> None:
    """The staging folders beside a deployment directory were found with its name as a glob
    pattern: for `--out .../v[1]` that matched the folder a killed deploy of `v1` left and
    missed the one of the deploy at work, whose row was deleted under it."""
    dead = _killed_writer_row(reg, tmp_path / "deploy" / "v1")
    at_work = tmp_path / "deploy" / "v[1]"
    host = socket.gethostname().replace(".", "_")
    (at_work.parent / f".{at_work.name}.{host}.{os.getpid()}.tmp").mkdir()
    busy = _deployment(reg, at_work)
    check_deployment(reg, busy)  # its writer runs: a deployment in the making, kept
    with reg.session() as s:
        assert s.get(Deployment, busy) is not None and s.get(Deployment, dead) is not None
