"""What `pomlia deploy` and the pipeline's deploy stage do with what they find: a damaged
bundle, a directory an earlier run wrote, a server already submitted (fake Slurm, no image)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext, run_stage
from pomlia_hpc.pipeline.stages import active_stages
from pomlia_hpc.registry import Deployment, Job, Model
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.workspace import Workspace
from tests.fixtures.fake_slurm import FakeSlurm
from tests.test_serve_deploy import register_exported


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def _deploy_stage_context(workspace: Workspace, bundle: Path, logged: list[str]) -> Any:
    """A pipeline with ``deploy: {submit: true}`` whose export stage is recorded done with
    ``bundle`` (as model 'demo'); returns (context, the deploy stage)."""
    reg = register_exported(workspace, bundle)
    data = {
        "name": "p",
        "datasets": [{"name": "a", "medmnist": "bloodmnist"}],
        "tasks": [{"name": "t", "dataset": "a"}],
        "automl": {},
        "export": {},
        "deploy": {"submit": True},
    }
    spec = parse_pipeline(data, "p.yaml", workspace.home)
    ctx = StageContext(spec, workspace, reg, log=logged.append)
    version = json.loads((bundle / "card.json").read_text())["model_version"]
    outputs = {"t": {"model": "demo", "bundle": str(bundle), "version": version}}
    write_json_atomic(ctx.record_path("export"), {"status": "done", "key": "k", "outputs": outputs})
    deploy = next(s for s in active_stages(spec) if s.name == "deploy")
    return ctx, deploy


def test_a_deploy_stage_run_again_after_its_submission_failed_submits(
    workspace: Workspace, bundle: Path, fake_slurm: FakeSlurm
) -> None:
    """`deploy: {submit: true}` fails the first time (no image is built yet); run again once
    the image was built, the stage took the directory it had written as done: the server was
    never submitted and no deployment id recorded. It is reused and submitted now, once."""
    logged: list[str] = []
    ctx, deploy = _deploy_stage_context(workspace, bundle, logged)
    with pytest.raises(InputError, match=r"apptainer build pomlia-serve\.sif"):
        run_stage(ctx, deploy)
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    (directory / "pomlia-serve.sif").write_bytes(b"built image")  # apptainer build
    fake_slurm.hold()
    assert run_stage(ctx, deploy) == "done"
    (sbatch,) = fake_slurm.calls("sbatch")
    assert sbatch[-1] == str(directory / "serve.sbatch")
    with ctx.registry.session() as s:
        (dep,) = s.query(Deployment).all()
        assert dep.status == "submitted" and dep.job_id is not None
    record = ctx.record("deploy")
    assert record is not None
    assert record["outputs"]["t"]["deployment"] == dep.id
    # Its record lost (killed after the submission): run again, the queued server is not
    # submitted a second time.
    ctx.record_path("deploy").unlink()
    assert run_stage(ctx, deploy) == "done"
    assert len(fake_slurm.calls("sbatch")) == 1
    assert any("already submitted" in line for line in logged), logged


def test_a_deploy_stage_submits_again_when_its_server_job_is_gone(
    workspace: Workspace, bundle: Path, fake_slurm: FakeSlurm
) -> None:
    """The "no second server" check took the server job's recorded state for its state: a
    row left PENDING whose job Slurm no longer knows (accounting purged), or one recorded
    queued while sacct did not answer though the job had ended, made every later run log
    "already submitted" and record the stage done, with no server. Such a row is LOST now, and
    with sacct down, squeue says; a job squeue lists is still not submitted twice."""
    logged: list[str] = []
    ctx, deploy = _deploy_stage_context(workspace, bundle, logged)
    with pytest.raises(InputError, match=r"apptainer build"):
        run_stage(ctx, deploy)
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    (directory / "pomlia-serve.sif").write_bytes(b"built image")
    fake_slurm.hold()

    def run_again() -> str:  # the stage's record lost: its deploy runs again
        ctx.record_path("deploy").unlink()
        assert run_stage(ctx, deploy) == "done"
        with ctx.registry.session() as s:
            (dep,) = s.query(Deployment).all()
            assert dep.job_id is not None
            return str(s.get(Job, dep.job_id).scheduler_id)

    run_stage(ctx, deploy)
    first = str(fake_slurm.submitted()[0]["job_id"])
    fake_slurm.forget(first)  # purged from accounting, long gone from the queue
    second = run_again()
    assert len(fake_slurm.calls("sbatch")) == 2 and second != first, logged
    fake_slurm.fail_next("sacct", times=5)  # slurmdbd down; the job still queued
    assert run_again() == second and len(fake_slurm.calls("sbatch")) == 2, logged
    fake_slurm.forget(second)  # it has ended; sacct still down
    third = run_again()
    assert len(fake_slurm.calls("sbatch")) == 3 and third != second, logged


def test_deploy_refuses_a_bundle_damaged_since_its_export(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """A bundle whose file changed after the export was copied into the deployment directory
    and recorded as a deployment; only the server refused it, on the cluster, after the image
    was built. `deploy` checks the card's SHA-256 first: one line naming the file and how to
    rebuild it, exit 2, nothing written."""
    copy = tmp_path / "copy"
    shutil.copytree(bundle.parents[1], copy)
    damaged = copy / bundle.relative_to(bundle.parents[1])
    with (damaged / "model.onnx").open("ab") as f:
        f.write(b"\0")
    reg = register_exported(workspace, damaged)
    res = CliRunner().invoke(app, ["deploy", "demo"])
    assert isinstance(res.exception, InputError), res.output  # exit 2
    said = " ".join(str(res.exception).split())
    assert "model.onnx does not match its SHA-256 in card.json" in said, said
    assert "pomlia model export demo" in said, said
    assert not workspace.path("models", "demo", "deploy").exists()
    with reg.session() as s:
        assert s.query(Deployment).count() == 0


@pytest.mark.parametrize("relative", [False, True])
def test_the_build_command_serve_sbatch_prints_builds_from_the_deploy_directory(
    tmp_path: Path, relative: bool
) -> None:
    """Without the image, serve.sbatch said `apptainer build SIF DIR/apptainer.def`: run from
    anywhere but the deploy directory (the job's output is read elsewhere), the definition's
    relative %files (src/, bundle/) named files that are not there. The command it prints
    now changes into the directory first (quoted: a path with a space), both paths absolute:
    with a relative POMLIA_DEPLOY_DIR it named a folder and an image path relative to the
    job's folder, read again from elsewhere and, after the cd, below the deploy directory."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    deploy_dir = tmp_path / "deploy dir"
    deploy_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"  # where whoever reads the job's output runs it
    elsewhere.mkdir()
    tool = tmp_path / "bin"
    tool.mkdir()
    (tool / "apptainer").write_text('#!/bin/sh\npwd > "$BUILT_IN"\necho "$2" >> "$BUILT_IN"\n')
    (tool / "apptainer").chmod(0o755)
    env = {
        "PATH": f"{tool}:/usr/bin:/bin",
        "POMLIA_DEPLOY_DIR": deploy_dir.name if relative else str(deploy_dir),
        "POMLIA_LOG_DIR": str(tmp_path / "logs"),
        "BUILT_IN": str(tmp_path / "built-in.txt"),
    }
    missing = subprocess.run(
        ["bash", str(repo / "jobs" / "serve.sbatch")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert missing.returncode == 2, missing.stderr
    (line,) = [x for x in missing.stderr.splitlines() if "build it: " in x]
    command = line.split("build it: ", 1)[1]
    built = subprocess.run(["bash", "-c", command], env=env, cwd=elsewhere, check=False, timeout=60)
    assert built.returncode == 0, command
    image = deploy_dir / "pomlia-serve.sif"  # where the job looks for it
    said = (tmp_path / "built-in.txt").read_text().splitlines()
    assert said == [str(deploy_dir), str(image)], command


def test_a_writers_temporary_file_in_the_bundle_is_not_deployed(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """A temporary file in the bundle (a monitoring reference being rewritten, or one a killed
    writer left) was copied into the deployment, so into the image; once swept, the model's
    bundle no longer matched the copy and `deploy --submit` refused the directory it had
    written ("holds a bundle other than demo ...")."""
    from pomlia_hpc.files import temp_name

    copy = tmp_path / "copy"
    shutil.copytree(bundle.parents[1], copy)
    own = copy / bundle.relative_to(bundle.parents[1])
    leftover = temp_name(own / "monitor-reference.npz")
    leftover.write_bytes(b"half a reference")
    register_exported(workspace, own)
    wrote = CliRunner().invoke(app, ["deploy", "demo"])
    assert wrote.exit_code == 0, wrote.output
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    assert not list((directory / "bundle").glob(".*")), list((directory / "bundle").iterdir())
    leftover.unlink()  # what the next sweep of the bundle folder does
    again = CliRunner().invoke(app, ["deploy", "demo"])
    assert again.exit_code == 0 and "reused" in again.output, again.output


def test_a_hidden_folder_in_the_bundle_is_left_out_of_the_copy_and_the_comparison(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """The copy left out hidden folders with all they hold, but the comparison of a reused
    directory left out hidden files only: a file in a hidden folder of the bundle (a
    writer's, an editor's) made `deploy` refuse the directory it had written itself."""
    copy = tmp_path / "copy"
    shutil.copytree(bundle.parents[1], copy)
    own = copy / bundle.relative_to(bundle.parents[1])
    (own / ".scratch").mkdir()
    (own / ".scratch" / "notes.txt").write_text("not part of the model")
    register_exported(workspace, own)
    wrote = CliRunner().invoke(app, ["deploy", "demo"])
    assert wrote.exit_code == 0, wrote.output
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    assert not (directory / "bundle" / ".scratch").exists()
    again = CliRunner().invoke(app, ["deploy", "demo"])
    assert again.exit_code == 0 and "reused" in again.output, again.output


def test_deploy_settles_the_row_of_a_deploy_killed_while_copying(
    workspace: Workspace, bundle: Path
) -> None:
    """A `deploy` SIGKILLed while it copied the bundle left its row `created` for good: a
    second deployment of the model that never existed. The next `deploy` settles it (said on
    stderr), sweeps the staging folder and writes the directory under a new row."""
    reg = register_exported(workspace, bundle)
    version = json.loads((bundle / "card.json").read_text())["model_version"]
    target = workspace.path("models", "demo", "deploy", version)
    gone = subprocess.Popen(["true"])
    gone.wait()
    staged = target.parent / f".{target.name}.{socket.gethostname().replace('.', '_')}"
    (Path(f"{staged}.{gone.pid}.tmp") / "bundle").mkdir(parents=True)
    with reg.session() as s:
        model = s.query(Model).one()
        killed = Deployment(model_id=model.id, bundle_path=str(target / "bundle"))
        s.add(killed)
        s.flush()
        killed_id = killed.id
    res = CliRunner().invoke(app, ["deploy", "demo"])
    assert res.exit_code == 0, res.output
    assert f"deployment {killed_id} was never finished" in res.stderr
    with reg.session() as s:
        (dep,) = s.query(Deployment).all()  # SQLite may give the settled id again
        assert dep.bundle_path == str(target / "bundle") and (target / "serve.sbatch").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [version]
