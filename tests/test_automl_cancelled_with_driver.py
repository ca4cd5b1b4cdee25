"""A study's driver cancelled (a pipeline's automl stage `scancel`-ed) cancels its trial jobs;
`runs list` then records those runs `cancelled` rather than showing them `running (stale)`,
and for a pipeline's study says to run the pipeline again. A job collected as COMPLETED
does not keep a cancel as its cause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.liveness import DriverBeat
from pomlia_hpc.cluster.attach import AttachedJob
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
    assert "recorded" in out
    # what `automl run --resume` counts as ended before it starts (not 0/N)
    assert records.ended_runs(reg, study) == 1


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
