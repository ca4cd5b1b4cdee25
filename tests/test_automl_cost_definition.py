"""One definition of a run's cost: its trial job's wall time from start to end, start-up
included, for every status. ``runs list``, the study's span on ``--resume`` and the
recommender's measured start-up all read it; the training call's own seconds are kept apart
as ``metrics["train_s"]``. An ok run recorded before that (cost = the training call alone)
is costed from its job's times."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pomlia_hpc.automl import records
from pomlia_hpc.automl.study import StudyRunner
from pomlia_hpc.automl.study.trialjobs import attached_result, trial_wall_s
from pomlia_hpc.automl.study.view import view_of_run
from pomlia_hpc.cluster.attach import AttachedJob
from pomlia_hpc.registry import Job, Registry, Run
from pomlia_hpc.strategy import kb
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import row_task, tiny_study, tiny_task

T0 = datetime(2026, 12, 5, 7, 17, 30, 790000, tzinfo=UTC)


def _job(reg: Registry, start: float, end: float, backend: str = "slurm") -> int:
    """A job row that ran from ``start`` to ``end`` seconds after :data:`T0`."""
    with reg.session() as s:
        job = Job(backend=backend, scheduler_id="1", name="x", state="COMPLETED")
        job.started_at = T0 + timedelta(seconds=start)
        job.ended_at = T0 + timedelta(seconds=end)
        s.add(job)
        s.flush()
        return int(job.id)


class _Handle:
    """A trial job that has ended with ``result`` (what the scheduler recorded: ``job_id``)."""

    adoptable = False

    def __init__(self, record_id: int, result: dict[str, Any]) -> None:
        self.record_id, self.job_id, self._result = record_id, "1", result

    def done(self) -> bool:
        return True

    def result(self) -> dict[str, Any]:
        return self._result


class _Executor:
    """Submits nothing: every trial's job is the row ``job_id`` and ends with ``result``."""

    def __init__(self, job_id: int, result: dict[str, Any]) -> None:
        self.job_id, self.result = job_id, result

    def submit(self, job: Any, **_: Any) -> _Handle:
        return _Handle(self.job_id, self.result)


def _result(train_s: float) -> dict[str, Any]:
    val = {"acc": 0.5, "auc": 0.5}
    return {
        "metrics": {"val": val, "test": val},
        "epochs": 1,
        "start_epoch": 0,
        "cost_s": train_s,
        "gpu_hours": 0.0,
        "device": "cpu",
        "model_path": "-",
        "history": [{"train_loss": 1.0, "seconds": train_s}],
        "n_train": 32,
    }


def test_an_ok_run_costs_its_jobs_wall_time_start_up_included(
    workspace: Workspace, reg: Registry
) -> None:
    # Run 4 showed cost 6.7 s while its job ran 27.1 s: the training call's seconds only.
    tiny_task(workspace, reg, "blood")
    spec = tiny_study(reg, workspace, "blood", "c", n_trials=1)
    job_id = _job(reg, 0.0, 27.1)
    runner = StudyRunner(reg, workspace, spec, executor=_Executor(job_id, _result(6.7)))  # type: ignore[arg-type]
    opt = runner.optimizer(resume=False)
    runner.start(opt, opt.ask())
    (act,) = runner.active.values()
    runner.collect(opt, act)
    (run,) = records.study_runs(reg, "c")
    assert run.status == "ok" and run.cost_s == pytest.approx(27.1)
    assert run.metrics["train_s"] == pytest.approx(6.7)
    assert runner.view().trials[0].cost_s == pytest.approx(27.1)
    (row,) = records.list_runs(reg, study="c")
    assert row.cost_s == pytest.approx(27.1)


def test_a_study_spans_its_first_job_start_to_its_last_job_end(reg: Registry) -> None:
    # "35 s (the study's trials, first start to last end)" for jobs spanning 55.4 s: the span
    # was each run's creation plus its cost, and the cost left the start-up out.
    created = T0 - timedelta(seconds=2)  # before its job was submitted and started
    spans = [(0.0, 27.1), (27.4, 55.45)]
    with reg.session() as s:
        for start, end in spans:
            job_id = _job(reg, start, end)
            s.add(
                Run(study="sp", status="ok", cost_s=end - start, job_id=job_id, created_at=created)
            )
    assert records.study_span_s(reg, records.study_runs(reg, "sp")) == pytest.approx(55.45)


def _ok_run(reg: Registry, task_id: int, cost_s: float, job_id: int, **metrics: Any) -> None:
    # a 60-epoch run (a full budget: its value counts) resumed for its last 2 epochs
    history = [{"seconds": 2.0}] * 60
    m = {"objective": 0.7, "val": {"acc": 0.7}, "test": {"acc": 0.65}, "epochs_run": 2}
    with reg.session() as s:
        s.add(
            Run(
                task_id=task_id,
                config={"arch": "small_cnn"},
                status="ok",
                budget=60,
                cost_s=cost_s,
                job_id=job_id,
                metrics={**m, "epochs": 60, "history": history, **metrics},
            )
        )


@pytest.mark.parametrize("recorded", ["now", "before train_s"])
def test_measured_start_up_is_the_jobs_not_the_training_calls(
    registry: Registry, recorded: str
) -> None:
    # Start-up = cost less the epochs' seconds: of a cost without the job's start-up it came
    # out ~0 s, while estimates assume 30 s, so measured and estimated costs did not compare.
    tid = row_task(registry)
    job_id = _job(registry, 0.0, 27.0)
    if recorded == "now":
        _ok_run(registry, tid, 27.0, job_id, train_s=5.0)
    else:  # an older pomlia recorded the training call's 5 s as the cost
        _ok_run(registry, tid, 5.0, job_id)
    obs, _meta = kb.registry_observations(registry, "acc")
    (o,) = obs
    assert o.startup_s == pytest.approx(23.0)  # 27 s of the job less 2 x 2 s of epochs
    (row,) = records.list_runs(registry)
    assert row.cost_s == pytest.approx(27.0)


def test_a_local_job_found_ended_on_resume_ends_when_it_wrote_its_result(
    reg: Registry, tmp_path: Path
) -> None:
    # A driver attaching to a local job that ended while it was away recorded its own time
    # as the job's end (maybe hours later): the cost and the study's span with it.
    job_id = _job(reg, 0.0, 0.0, backend="local")
    with reg.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        row.ended_at, row.state = None, "RUNNING"
        s.flush()
        s.expunge(row)
    result = tmp_path / "result.json"
    result.write_text(json.dumps(_result(5.0)))
    os.utime(result, ((T0 + timedelta(seconds=30)).timestamp(),) * 2)
    job = AttachedJob(reg, row, has_result=result.is_file, failure=lambda: None)
    job.check_local()
    assert attached_result(job, result)["cost_s"] == 5.0
    assert trial_wall_s(reg, job_id, result) == pytest.approx(30.0)


def test_an_old_ok_run_of_a_local_job_keeps_its_recorded_cost(registry: Registry) -> None:
    # An older pomlia closed a local job's row when the driver collected it: a resumed driver
    # collected a trial 3 h after it ended, so its job times said 10800 s. Only Slurm's are
    # the job's; a local one's recorded cost stays (runs list, the recommender, a resume).
    tid = row_task(registry)
    job_id = _job(registry, 0.0, 10800.0, backend="local")
    _ok_run(registry, tid, 27.0, job_id)  # before train_s
    (row,) = records.list_runs(registry)
    assert row.cost_s == pytest.approx(27.0)
    obs, _meta = kb.registry_observations(registry, "acc")
    (o,) = obs
    assert o.startup_s == pytest.approx(23.0)  # 27 s less 2 x 2 s of epochs, not 10796 s
    with registry.session() as s:
        run = s.scalars(select(Run)).one()
        s.expunge(run)
    assert view_of_run(registry, run, "acc").cost_s == pytest.approx(27.0)


def test_a_resume_tells_the_optimiser_the_runs_cost_by_the_one_definition(
    registry: Registry,
) -> None:
    # A resumed driver told the optimiser an ok run's stored cost_s (the training call's 5 s
    # for a run recorded before train_s) where every other reader takes its job's 27 s.
    from types import SimpleNamespace

    from pomlia_hpc.automl.study.recover import recover_trial

    tid = row_task(registry)
    job_id = _job(registry, 0.0, 27.0)
    _ok_run(registry, tid, 5.0, job_id)
    with registry.session() as s:
        run = s.scalars(select(Run)).one()
        s.expunge(run)
    told: list[float] = []
    opt = SimpleNamespace(tell=lambda *a, crashed, time_s: told.append(time_s))
    proposal = SimpleNamespace(key="k", epochs=60)
    runner = SimpleNamespace(
        known={("k", 60): run}, spec=SimpleNamespace(metric="acc"), registry=registry
    )
    recover_trial(runner, opt, proposal)  # type: ignore[arg-type]
    assert told == [pytest.approx(27.0)]


def test_run_stats_read_train_s_alone_to_tell_old_runs(registry: Registry) -> None:
    # The rebuild selected the whole metrics (history included) to test for train_s; it reads
    # metrics["train_s"] now: a run that kept it keeps its cost (27 s), its job's 40 s aside.
    tid = row_task(registry)
    _ok_run(registry, tid, 27.0, _job(registry, 0.0, 40.0), train_s=5.0)
    (o,) = kb.registry_observations(registry, "acc")[0]
    assert o.startup_s == pytest.approx(23.0)
