"""The study driver when things go wrong: undefined metrics, a driver stopped early, failed
submissions, and trial jobs that ended or vanished while the driver was away."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.study import StudyRunner, TrialLog, run_study
from pomlia_hpc.automl.study.trialjobs import ActiveTrial, job_wall_s
from pomlia_hpc.automl.trial import TrialStart, failure_path, started_path
from pomlia_hpc.cli import app
from pomlia_hpc.cluster.cancel import cancel_scheduler_job
from pomlia_hpc.errors import ClusterError, PomliaError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.registry import Job, Model, Registry, Run
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, donor_model, tiny_study, tiny_task, warm_file
from tests.fixtures.fake_slurm import FakeSlurm

# Trials run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("wide_console", "restore_torch_threads")


def _run_cli(*args: str) -> tuple[int, str]:
    """Exit code and output of ``pomlia automl run ARGS``; an exception other than the CLI's
    own exit (a driver that died) fails the test."""
    out = CliRunner().invoke(app, ["automl", "run", *args])
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise AssertionError(f"the driver died: {out.exception!r}\n{out.output}")
    return out.exit_code, out.output


def _cli_workspace(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Workspace, Registry]:
    """A workspace on ``db_url`` that the CLI run in this process finds (local jobs unless a
    command names another executor)."""
    home = tmp_path / "home"
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.setenv("POMLIA_DB_URL", db_url)
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    ws = Workspace(home=home, db_url=db_url, cluster_profile="local")
    ws.create()
    return ws, Registry.open(db_url)


@pytest.mark.slow
def test_undefined_test_auc_is_stored_as_null_on_every_backend(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One class in the test split: AUC is undefined there. PostgreSQL's json rejects NaN, so a
    # NaN used to kill the driver with a DataError (and SQLite hid it as "0 crashed"). (One
    # class in the val split is refused before any trial: tests/test_task_metric_defined.py.)
    ws, reg = _cli_workspace(db_url, tmp_path, monkeypatch)
    only = ("test", 0)
    tiny_task(
        ws, reg, "breast", flag="breastmnist", metric="auc", sizes=(32, 8, 8), only_label=only
    )
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
        "--no-final",
        "--executor",
        "debug",  # the trial in this process: what the driver stores is under test
    )
    assert code == 0, text
    assert "model u-best registered" in text
    (run,) = records.study_runs(reg, "u")
    assert run.status == "ok" and run.metrics["test"]["auc"] is None
    assert run.metrics["test"]["auc_classes"] == 0
    assert run.metrics["val"]["auc"] is not None  # the val split has both classes
    assert run.metrics["objective"] is not None
    reg.dispose()


@pytest.mark.slow
def test_driver_stopped_before_smacs_first_save_can_resume(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "s", n_trials=1, optimizer="smac")
    # The driver was killed here: study.json written, no SMAC state, no trial recorded.
    assert not (workspace.path("runs", "s") / "smac").exists()
    result = run_study(reg, workspace, spec, resume=True, poll_s=0.2)
    assert result.n_ok == 1 and result.best_run_id is not None
    # A study with recorded trials but no SMAC state is not silently restarted.
    shutil.rmtree(workspace.path("runs", "s", "smac"))
    with pytest.raises(PomliaError, match=r"no SMAC state to resume .* has recorded trials"):
        run_study(reg, workspace, spec, resume=True)


@pytest.mark.slow
def test_resume_of_a_finished_study_reports_the_studys_time(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`automl run --resume` of a study that had finished said "0 s" (the time of the resuming
    driver, which ran nothing): it gives the study's own span, first trial start to last end."""
    from datetime import timedelta

    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    # The trial in this process (debug executor): its job row's times, set below, are read.
    spec = tiny_study(reg, workspace, "blood", "done", n_trials=1)
    run_study(reg, workspace, spec, poll_s=0.2)
    with reg.session() as s:  # the study's one trial job ran an hour ago, for 125 s
        (run,) = s.scalars(select(Run).where(Run.study == "done"))
        job = s.get(Job, run.job_id)
        assert job is not None and job.ended_at is not None  # (a debug job has no start)
        job.started_at = job.ended_at - timedelta(hours=1)
        job.ended_at = job.started_at + timedelta(seconds=125)
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    code, text = _run_cli("blood", "--study", "done", "--resume")
    said = " ".join(text.split())
    assert code == 0, text
    assert "1 epoch, 125 s (the study's trials, first start to last end)" in said, said
    assert " 0 s" not in said
    # It registered nothing: the model an earlier driver registered is kept, and said so.
    with reg.session() as s:
        (model,) = s.scalars(select(Model).where(Model.name == "done-best"))
    assert f"model done-best already registered (model id {model.id}, unchanged);" in said, said


@pytest.mark.slow
def test_failed_submission_stops_the_study_and_resume_submits_it(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "sf", n_trials=1, executor="slurm-local")
    # sbatch refuses the job, as when slurmctld is down.
    fake_slurm.fail_next("sbatch", "sbatch: error: Slurm controller not responding")
    with pytest.raises(ClusterError, match="could not be submitted") as err:
        run_study(reg, workspace, spec, poll_s=0.2)
    assert "controller not responding" in str(err.value) and "--resume" in str(err.value)
    (run,) = records.study_runs(reg, "sf")
    assert run.status == "submit_failed" and "controller not responding" in (run.error or "")
    assert run.job_id is None

    # The scheduler is back.
    result = run_study(reg, workspace, spec, resume=True, poll_s=0.5)
    (again,) = records.study_runs(reg, "sf")
    assert again.id == run.id and again.status == "ok" and again.error is None
    assert result.n_ok == 1 and result.best_run_id == run.id


def _jobs_named(reg: Registry, name: str) -> list[Job]:
    with reg.session() as s:
        rows = list(s.scalars(select(Job).where(Job.name == name).order_by(Job.id)))
        for r in rows:
            s.expunge(r)
    return rows


@pytest.mark.slow
def test_resume_settles_jobs_that_ended_while_the_driver_was_away(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    donor = donor_model(workspace, reg)
    bad = {**FAST, "init": "model", "mode": "full"}
    initial = [bad, FAST, {**FAST, "lr": 0.001}]
    spec = tiny_study(
        reg,
        workspace,
        "blood",
        "aw",
        n_trials=3,
        parallel=3,
        executor="local",  # jobs that end while no driver watches
        init_model=donor,
        initial_configs=initial,
    )
    assert spec.init_model is not None
    Path(spec.init_model.path).write_bytes(b"not a checkpoint")  # trial 1's job will fail
    # A first driver submits the three trials and stops watching them.
    first = StudyRunner(reg, workspace, spec)
    opt = first.optimizer(resume=False)
    for _ in range(3):
        first.start(opt, opt.ask())
    failed, unlinked, cancelled = (first.active[k] for k in sorted(first.active))
    cancel_scheduler_job("local", str(cancelled.handle.job_id))  # cancelled while away
    with reg.session() as s:  # the driver died between submitting and linking the job
        row = s.get(Run, unlinked.run_id)
        assert row is not None
        row.status, row.job_id, row.metrics = "pending", None, {}
    deadline = time.time() + 240
    while not (failed.handle.done() and unlinked.handle.done()):
        assert time.time() < deadline, "the first driver's jobs did not end"
        time.sleep(0.3)

    result = run_study(reg, workspace, spec, resume=True, poll_s=0.2)
    runs = {r.id: r for r in records.study_runs(reg, "aw")}
    assert len(runs) == 3 and result.n_ok == 2 and result.n_crashed == 1
    # the failed job is a crash with its cause, not run again
    crash = runs[failed.run_id]
    assert crash.status == "crashed" and "initial weights" in crash.metrics["cause"]
    (job,) = _jobs_named(reg, f"automl-aw-{failed.run_id}")
    assert job.state == "FAILED" and job.ended_at is not None and "Traceback" in job.traceback
    # the unlinked job was adopted, not submitted a second time
    (job,) = _jobs_named(reg, f"automl-aw-{unlinked.run_id}")
    assert runs[unlinked.run_id].status == "ok" and runs[unlinked.run_id].job_id == job.id
    assert job.state == "COMPLETED" and job.ended_at is not None
    # the cancelled one never had its chance: submitted again
    old, new = _jobs_named(reg, f"automl-aw-{cancelled.run_id}")
    assert runs[cancelled.run_id].status == "ok" and runs[cancelled.run_id].job_id == new.id
    assert old.ended_at is not None and "resubmitted" in (old.exit_cause or "")


@pytest.mark.slow
def test_a_study_that_finds_a_best_model_ends_with_exit_0_and_its_outcome(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outcome lines once raised a NameError after every successful study (exit 1).
    ws, reg = _cli_workspace(db_url, tmp_path, monkeypatch)
    tiny_task(ws, reg, "blood", sizes=(32, 8, 8))
    args = ["blood", "--trials", "1", "--max-epochs", "1", "--optimizer", "random"]
    args += ["--executor", "debug"]  # the trial in this process: the outcome lines are tested
    code, text = _run_cli(*args, "--archs", "small_cnn", "--no-final", "--study", "ok")
    assert code == 0, text
    assert "best: run" in text and "1 ok, 0 crashed" in " ".join(text.split())
    code, text = _run_cli("blood", "--study", "ok", "--resume")
    assert code == 0, text
    assert "best: run" in text
    reg.dispose()


@pytest.mark.slow
def test_a_cancelled_trial_costs_its_jobs_time_not_the_drivers(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    # The recommender's expected cost reads a crashed trial's cost_s: it is the job's own
    # run time (sacct's Start to End), not the time until the driver noticed the end.
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "cc", n_trials=1, executor="slurm-local")
    fake_slurm.hold()
    runner = StudyRunner(reg, workspace, spec)
    opt = runner.optimizer(resume=False)
    runner.start(opt, opt.ask())
    (act,) = runner.active.values()
    time.sleep(3)  # queued, then noticed late (sacct polls, a busy login node)
    fake_slurm.set_state(str(act.handle.job_id), "CANCELLED")  # ran 1 s: Start = End - 1 s
    runner.collect(opt, act)
    (run,) = records.study_runs(reg, "cc")
    # a cancel is its own status (not a crash of the configuration), its error one line
    assert run.status == "cancelled" and run.metrics["state"] == "CANCELLED"
    assert run.error == run.metrics["cause"] and "\n" not in run.error
    assert run.cost_s == pytest.approx(1.0, abs=0.01)
    assert runner.view().trials[0].status == "cancelled"


@pytest.mark.slow
def test_a_requeue_whose_short_last_attempt_ended_between_two_polls_is_said(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    # The driver asks sacct for requeues every 15 s; a job requeued and then done within one
    # such gap (or whose poll timed out under load) ended with its view at attempt 1, and the
    # driver never said the requeue (CI, the real requeue test, once in three runs).
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "rq", n_trials=1, executor="slurm-local")
    fake_slurm.hold()
    said: list[str] = []
    runner = StudyRunner(reg, workspace, spec, on_update=TrialLog(said.append))
    opt = runner.optimizer(resume=False)
    runner.start(opt, opt.ask())
    runner.emit()  # the driver's view: the trial running
    (act,) = runner.active.values()
    job = str(act.handle.job_id)
    fake_slurm.set_state(job, "REQUEUED")  # its first attempt hit the time limit
    fake_slurm.set_state(job, "PENDING", new_attempt=True)
    fake_slurm.run(job)  # the second attempt runs and completes: no poll in between
    runner.collect(opt, act)
    runner.emit()
    (trial,) = runner.view().trials
    assert (trial.status, trial.attempt) == ("ok", 2), (trial.cause, said)
    assert any(f"job {trial.job} requeued (attempt 2 of 4 " in x for x in said), said
    ok = next(i for i, x in enumerate(said) if ": ok" in x)
    assert any("requeued" in x for x in said[:ok]), said  # said before its end


def test_without_scheduler_times_a_crash_costs_from_the_jobs_own_start_stamp(
    reg: Registry, tmp_path: Path
) -> None:
    # A local job has no Start/End from a scheduler: its own stamps measure it, not the time
    # since its submission (which counts the wait for a free slot).
    result = tmp_path / "trials" / "run-1" / "result.json"
    handle: Any = SimpleNamespace(record_id=None)  # no registry job row
    proposal: Any = None  # not read
    act = ActiveTrial(1, proposal, handle, time.time() - 100.0, result)
    assert job_wall_s(reg, act) == pytest.approx(100.0, abs=5.0)  # no stamp: since submission
    begun = time.time() - 30.0
    write_json_atomic(started_path(result), TrialStart(started=begun).to_dict())
    failure = failure_path(result)
    failure.write_text("{}")
    os.utime(failure, (begun + 12.0, begun + 12.0))
    assert job_wall_s(reg, act) == pytest.approx(12.0, abs=0.01)
