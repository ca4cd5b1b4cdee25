"""A study's driver cancelled (a pipeline's automl stage `scancel`-ed) cancels its trial jobs;
`runs list` then records those runs `cancelled` rather than showing them `running (stale)`,
and for a pipeline's study says to run the pipeline again. A job collected as COMPLETED
does not keep a cancel as its cause. Which pipeline owns a study is what its study.json
records, not its name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.folders import owning_pipeline
from pomlia_hpc.automl.liveness import DriverBeat
from pomlia_hpc.automl.study import create_study
from pomlia_hpc.cluster.attach import AttachedJob
from pomlia_hpc.pipeline.spec import load_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.pipeline.stages_learn import open_study
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok
from tests.fixtures.factories import tiny_task

CAUSE = "cancelled (SIGTERM: scancel, `pomlia jobs cancel` or kill), with the job that submitted it"


def _trial(reg: Registry, task_id: int, study: str, state: str) -> int:
    now = datetime.now(UTC)
    with reg.session() as s:
        job = Job(name=f"automl-{study}", backend="local", scheduler_id="1", state=state,
                  submitted_at=now - timedelta(seconds=60), started_at=now - timedelta(seconds=50),
                  ended_at=now - timedelta(seconds=20), exit_cause=CAUSE)  # fmt: skip
        s.add(job)
        s.flush()
        job_id = int(job.id)
    run_id = records.create_run(reg, task_id=task_id, study=study, config={"arch": "small_cnn"},
                                epochs=1, dataset_version_id=1, encoder_id=None)  # fmt: skip
    records.mark_running(reg, run_id, job_id)
    return run_id


@pytest.mark.usefixtures("wide_console")
def test_runs_cancelled_with_a_pipelines_driver_are_recorded_cancelled(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    task_id = 1  # the only task
    study = "lookalikes-blood-0123abcd"
    workspace.path("pipelines", "lookalikes").mkdir(parents=True)
    workspace.path("runs", study).mkdir(parents=True)
    beat = DriverBeat(workspace, study)
    beat.start()
    beat.end()  # the stage job that drove it was cancelled
    cancelled = _trial(reg, task_id, study, "CANCELLED")
    running = _trial(reg, task_id, study, "RUNNING")
    out = " ".join(cli_ok("runs", "list", "--study", study).split())
    runs = {r.id: r for r in records.study_runs(reg, study)}
    assert runs[cancelled].status == "cancelled" and runs[cancelled].error == CAUSE
    assert runs[cancelled].cost_s == pytest.approx(30.0, abs=1.0)
    assert runs[running].status == "running"
    assert "run pipeline lookalikes again" in out and "--resume" not in out, out
    assert "1 run(s) cancelled with it are recorded 'cancelled'" in out, out
    assert "1 unfinished run(s) stay 'running'" in out, out
    # what `automl run --resume` counts as ended before it starts (not 0/N)
    assert records.ended_runs(reg, study) == 1


@pytest.mark.usefixtures("wide_console")
def test_a_cancelled_run_of_a_requeued_job_costs_every_attempt_it_ran(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost `runs list` records for a run cancelled with its driver was its job's Start to
    End: a requeued job's latest attempt's alone, or nothing when that attempt never started
    (requeued, then cancelled while it waited: no Start)."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    workspace.path("runs", "rq").mkdir(parents=True)
    ran, waited = _trial(reg, 1, "rq", "CANCELLED"), _trial(reg, 1, "rq", "CANCELLED")
    jobs = {r.id: r.job_id for r in records.study_runs(reg, "rq")}
    with reg.session() as s:
        for run_id, started in ((ran, True), (waited, False)):
            job = s.get(Job, jobs[run_id])
            assert job is not None
            job.backend, job.requeue_count = "slurm", 1
            job.meta = {"earlier_attempts_s": 40.0}
            job.started_at = job.started_at if started else None
    # The rows as recorded: no Slurm of this machine is asked about these made-up ids
    monkeypatch.setattr("pomlia_hpc.cluster.records.sacct_states", lambda *a, **k: {})
    records.settle_cancelled(reg, records.list_runs(reg, study="rq"))
    costs = {r.id: r.cost_s for r in records.study_runs(reg, "rq")}
    assert costs == {ran: pytest.approx(70.0, abs=1.0), waited: 40.0}


def test_the_stale_note_does_not_say_running_under_a_cancelled_row(
    workspace: Workspace, reg: Registry
) -> None:
    """`runs list` showed a run `cancelled` and under it "its unfinished runs stay 'running'"."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    workspace.path("runs", "s1").mkdir(parents=True)
    beat = DriverBeat(workspace, "s1")
    beat.start()
    beat.end()
    _trial(reg, 1, "s1", "CANCELLED")
    out = " ".join(cli_ok("runs", "list", "--study", "s1").split())
    assert "cancelled with it are recorded 'cancelled'" in out, out
    assert "stay 'running'" not in out, out
    assert "--study s1 --resume" in out, out


def _stale_hint(workspace: Workspace, reg: Registry, study: str) -> str:
    """What `runs list` says of ``study`` once its driver is gone, a run left running."""
    beat = DriverBeat(workspace, study)
    beat.start()
    beat.end()
    _trial(reg, 1, study, "RUNNING")
    return " ".join(cli_ok("runs", "list", "--study", study).split())


@pytest.mark.usefixtures("wide_console")
def test_a_users_study_named_like_a_pipelines_is_not_the_pipelines(
    workspace: Workspace, reg: Registry
) -> None:
    """A study counted as a pipeline's by its name alone: `lab-blood-deadbeef`, made by
    `automl run` while a pipeline `lab` exists, got "run pipeline lab again" instead of its
    --resume command. The owner is recorded in study.json when the study is made now."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    workspace.path("pipelines", "lab").mkdir(parents=True)
    study = "lab-blood-deadbeef"
    create_study(reg, workspace, "blood", name=study, n_trials=2, max_epochs=1)
    assert owning_pipeline(workspace, study) is None
    out = _stale_hint(workspace, reg, study)
    assert f"automl run blood --study {study} --resume" in out and "pipeline lab" not in out, out


@pytest.mark.usefixtures("wide_console")
def test_a_study_made_by_a_pipelines_automl_stage_is_the_pipelines(
    workspace: Workspace, reg: Registry
) -> None:
    """The pipeline's automl stage records itself as the owner, whatever the study's name and
    whether or not the pipeline's folder exists."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = load_pipeline(Path(__file__).resolve().parents[1] / "configs/pipelines/lookalikes.yaml")
    spec = spec.model_copy(update={"name": "lab"})
    ctx = StageContext(spec=spec, workspace=workspace, registry=reg, log=lambda _m: None,
                       key="k" * 16)  # fmt: skip
    made, resume = open_study(ctx, "blood-by-lab", "blood", [], None)
    assert not resume and made.pipeline == "lab"
    assert owning_pipeline(workspace, "blood-by-lab") == "lab"
    out = _stale_hint(workspace, reg, "blood-by-lab")
    assert "run pipeline lab again" in out and "--resume" not in out, out


def test_a_collected_result_clears_a_cancel_recorded_just_after_the_job_ended(
    workspace: Workspace, reg: Registry
) -> None:
    with reg.session() as s:
        row = Job(name="t", backend="slurm", scheduler_id="5", state="CANCELLED", exit_cause=CAUSE)
        s.add(row)
        s.flush()
        s.expunge(row)
    job = AttachedJob(reg, row, has_result=lambda: True, failure=lambda: None)
    job.completed()
    with reg.session() as s:
        after = s.get(Job, row.id)
        assert after is not None and (after.state, after.exit_cause) == ("COMPLETED", None)
