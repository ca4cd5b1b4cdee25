"""The study driver when things go wrong: undefined metrics, a driver stopped early, failed
submissions, and trial jobs that ended or vanished while the driver was away."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from automl_support import FAST, tiny_task, warm_file
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.space import SpaceOptions
from pomlia_hpc.automl.study import create_study, run_study
from pomlia_hpc.cli import app
from pomlia_hpc.errors import ClusterError, PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

pytestmark = pytest.mark.usefixtures("wide_console")


def _run_cli(*args: str) -> tuple[int, str]:
    """Exit code and output of ``pomlia automl run ARGS``; an exception other than the CLI's
    own exit (a driver that died) fails the test."""
    out = CliRunner().invoke(app, ["automl", "run", *args])
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise AssertionError(f"the driver died: {out.exception!r}\n{out.output}")
    return out.exit_code, out.output


@pytest.mark.slow
def test_undefined_validation_auc_is_stored_as_null_on_every_backend(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One class in the validation split: AUC is undefined there. PostgreSQL's json rejects NaN,
    # so a NaN used to kill the driver with a DataError (and SQLite hid it as "0 crashed").
    home = tmp_path / "home"
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.setenv("POMLIA_DB_URL", db_url)
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    ws = Workspace(home=home, db_url=db_url, cluster_profile="local")
    ws.create()
    reg = Registry.open(db_url)
    tiny_task(ws, reg, "breast", flag="breastmnist", metric="auc", sizes=(32, 8, 8), val_label=0)
    warm = warm_file(tmp_path / "warm.yaml", [FAST])
    code, text = _run_cli(
        "breast",
        "--trials",
        "1",
        "--max-epochs",
        "1",
        "--optimizer",
        "random",
        "--archs",
        "small_cnn",
        "--initial",
        str(warm),
        "--study",
        "u",
    )
    assert code == 1, text
    assert "1 trial(s) finished ok but their validation auc is undefined" in text
    (run,) = records.study_runs(reg, "u")
    assert run.status == "ok" and run.metrics["val"]["auc"] is None
    assert run.metrics["objective"] is None and run.metrics["val"]["auc_classes"] == 0
    assert run.metrics["test"]["auc"] is not None  # the test split has both classes
    reg.dispose()


@pytest.mark.slow
def test_driver_stopped_before_smacs_first_save_can_resume(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="s",
        n_trials=1,
        max_epochs=1,
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST],
    )
    # The driver was killed here: study.json written, no SMAC state, no trial recorded.
    assert not (workspace.path("runs", "s") / "smac").exists()
    result = run_study(reg, workspace, spec, resume=True, poll_s=0.2)
    assert result.n_ok == 1 and result.best_run_id is not None
    # A study with recorded trials but no SMAC state is not silently restarted.
    shutil.rmtree(workspace.path("runs", "s", "smac"))
    with pytest.raises(PomliaError, match=r"no SMAC state to resume .* has recorded trials"):
        run_study(reg, workspace, spec, resume=True)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_failed_submission_stops_the_study_and_resume_submits_it(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="sf",
        n_trials=1,
        max_epochs=1,
        executor="slurm-local",
        optimizer="random",
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST],
    )
    # sbatch refuses the job, as when slurmctld is down (faked at the subprocess boundary).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: Slurm controller not responding' >&2\nexit 1\n"
    )
    (fake / "sbatch").chmod(0o755)
    real_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{fake}:{real_path}")
    with pytest.raises(ClusterError, match="could not be submitted") as err:
        run_study(reg, workspace, spec, poll_s=0.2)
    assert "controller not responding" in str(err.value) and "--resume" in str(err.value)
    (run,) = records.study_runs(reg, "sf")
    assert run.status == "submit_failed" and "controller not responding" in (run.error or "")
    assert run.job_id is None

    monkeypatch.setenv("PATH", real_path)  # the scheduler is back
    result = run_study(reg, workspace, spec, resume=True, poll_s=0.5)
    (again,) = records.study_runs(reg, "sf")
    assert again.id == run.id and again.status == "ok" and again.error is None
    assert result.n_ok == 1 and result.best_run_id == run.id
