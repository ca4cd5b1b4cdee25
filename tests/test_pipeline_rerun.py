"""Running a pipeline again while its jobs are queued or running, `pipeline cancel`, and what
`pipeline status` (and `run --wait`'s progress) says about submitted, stale and stopped stages.

The stage jobs here are local jobs that sleep: what the commands read is the run file, the
stage records and the jobs' registry rows, whichever backend ran them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster import Executor
from pomlia_hpc.errors import BUSY_EXIT, PomliaError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.lock import LOCK_WAIT_S, pipeline_held, pipeline_lock
from pomlia_hpc.pipeline.runner import RUN_FILE, context_for, pipeline_status, snapshot_spec
from pomlia_hpc.pipeline.spec import load_pipeline
from pomlia_hpc.pipeline.stage import StageContext, now
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns
from tests.fixtures.factories import tiny_npz
from tests.fixtures.fake_slurm import FakeSlurm

PLAN_HEADER = "est. time per job"  # a column of the plan's table


def _pipeline(tmp_path: Path, **more: Any) -> tuple[Path, dict[str, Any]]:
    tiny_npz(tmp_path / "a.npz")
    data: dict[str, Any] = {"name": "p", "datasets": [{"name": "a", "file": "a.npz"}], **more}
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(data))
    return file, data


def _submitted(
    workspace: Workspace,
    reg: Registry,
    file: Path,
    data: dict[str, Any],
    jobs: dict[str, int],
    mode: str = "chain",
) -> StageContext:
    """What `pipeline run FILE` on a cluster leaves: the snapshot and the run file naming
    each stage's job (``jobs``: stage -> registry id)."""
    ctx = context_for(workspace, reg, load_pipeline(file))
    snapshot_spec(ctx, data, str(file))
    write_json_atomic(
        ctx.folder / RUN_FILE,
        {
            "pipeline": "p",
            "mode": mode,
            "profile": "local",
            "submitted_at": now(),
            "stages": {s: {"action": "run", "job": j} for s, j in jobs.items()},
        },
    )
    return ctx


def _sleeper(tmp_path: Path, reg: Registry, seconds: float) -> int:
    handle = Executor.from_profile("local", tmp_path / "jobs", reg).submit(
        jobfns.sleep_for, seconds
    )
    assert handle.record_id is not None
    return handle.record_id


def _state(reg: Registry, job_id: int) -> str:
    with reg.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        return row.state


def test_the_same_command_again_attaches_to_its_running_jobs_and_cancel_stops_them(
    workspace: Workspace, reg: Registry, tmp_path: Path, wide_console: None
) -> None:
    """After Ctrl-C of `run --wait`, it said "the same command resumes", but the same command
    printed the plan and refused, naming `pipeline status` (which cancels nothing)."""
    file, data = _pipeline(tmp_path)
    job = _sleeper(tmp_path, reg, 120)
    _submitted(workspace, reg, file, data, {"data": job})
    cli = CliRunner()

    res = cli.invoke(app, ["pipeline", "run", str(file)])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "pipeline p is already running: " in said and "watch it with:" in said
    assert PLAN_HEADER not in said

    # Another version of the file is refused, before the plan, naming a command that cancels.
    file.write_text(yaml.safe_dump({**data, "description": "changed"}))
    res = cli.invoke(app, ["pipeline", "run", str(file)])
    assert isinstance(res.exception, PomliaError) and res.exception.exit_code == 2
    assert "has jobs of another version of its file" in str(res.exception)
    assert "pomlia pipeline cancel p" in str(res.exception.hint)
    assert PLAN_HEADER not in " ".join(res.output.split())

    res = cli.invoke(app, ["pipeline", "cancel", "p"])
    assert res.exit_code == 0 and f"cancelled job {job} " in res.output, res.output
    assert _state(reg, job) == "CANCELLED"
    res = cli.invoke(app, ["pipeline", "cancel", "p"])
    assert res.exit_code == 0 and "nothing cancelled" in res.output


def test_run_wait_again_follows_the_running_jobs_to_their_end(
    workspace: Workspace, reg: Registry, tmp_path: Path, wide_console: None
) -> None:
    file, data = _pipeline(tmp_path)
    job = _sleeper(tmp_path, reg, 3)
    _submitted(workspace, reg, file, data, {"data": job})
    res = CliRunner().invoke(app, ["pipeline", "run", str(file), "--wait"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "pipeline p is already running" in said, said
    assert _state(reg, job) == "COMPLETED" and PLAN_HEADER not in said


def test_a_pipeline_run_by_another_process_is_refused_before_the_plan(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    wide_console: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan and its GPU-hour estimate were printed first, then the refusal; which named
    no holder: it names the process (and the Slurm job of a stage job) that holds the lock."""
    import os

    file, _data = _pipeline(tmp_path)
    ctx = context_for(workspace, reg, load_pipeline(file))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the holder is a stage job
    with pipeline_lock(ctx.folder):
        res = CliRunner().invoke(app, ["pipeline", "run", str(file)])
    said = " ".join(res.output.split())
    assert isinstance(res.exception, PomliaError) and res.exception.exit_code == BUSY_EXIT
    assert "is being run by another process (pid" in str(res.exception)
    assert f"pid {os.getpid()} on " in str(res.exception)
    assert "Slurm job 4242" in str(res.exception)
    assert PLAN_HEADER not in said and "GPU-hours" not in said


def test_a_stage_starting_while_the_lock_is_probed_waits_for_it(tmp_path: Path) -> None:
    """`pipeline status` and `pipeline run` probe the lock by taking it for an instant; a stage
    or driver job starting then failed as "being run by another process"."""
    import fcntl
    import threading
    import time

    folder = tmp_path / "p"
    folder.mkdir()
    taken, held_s = threading.Event(), 0.3

    def probe() -> None:  # a probe that takes a moment (a busy machine)
        with (folder / "lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken.set()
            time.sleep(held_s)
            fcntl.flock(fh, fcntl.LOCK_UN)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        assert taken.wait(5)
        start = time.monotonic()
        with pipeline_lock(folder):
            assert pipeline_held(folder)
        assert time.monotonic() - start < LOCK_WAIT_S
    finally:
        prober.join()
    assert not pipeline_held(folder)


@pytest.mark.parametrize(("mode", "state"), [("chain", "running"), ("driver", "pending")])
def test_a_submitted_stage_is_never_not_run(
    workspace: Workspace, reg: Registry, tmp_path: Path, mode: str, state: str
) -> None:
    """`--wait` showed extract=pending, then extract=not run (the job started, its record not
    written yet), then extract=running."""
    file, data = _pipeline(tmp_path, tasks=[{"name": "t", "dataset": "a"}])
    job = _sleeper(tmp_path, reg, 120)
    try:
        ctx = _submitted(workspace, reg, file, data, {"data": job, "tasks": job}, mode)
        rows = {r.stage: r for r in pipeline_status(ctx)}
        assert rows["data"].state == state and rows["tasks"].state == state
        assert rows["data"].detail == ""  # not "None" (a running job has no exit cause)
        assert rows["data"].job == job
    finally:
        CliRunner().invoke(app, ["jobs", "cancel", str(job)])


def test_status_says_why_a_stage_is_stale_and_names_the_job_a_local_stage_ran(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """Stale `data` and `encoder` rows had no detail; "needs encoder, extract, which is not
    up to date"; after Ctrl-C of a local run the encoder row had no job, though its training
    job had been submitted."""
    encoder = {"name": "e", "latent_dim": 4, "max_images": 100, "batch_size": 16}
    file, data = _pipeline(tmp_path, encoder=encoder, extract={})
    ctx = _submitted(workspace, reg, file, data, {})
    job = _sleeper(tmp_path, reg, 0.1)
    CliRunner().invoke(app, ["jobs", "cancel", str(job)])
    stages = ctx.folder / "stages"
    stages.mkdir(parents=True)
    old = {"key": "0" * 64, "outputs": {}, "started_at": "2026-01-01T00:00:00+00:00"}
    ended = {"ended_at": "2026-01-01T01:00:00+00:00"}
    for stage, rec in {
        "data": {"status": "done", **ended},
        "encoder": {"status": "failed", "error": "cancelled (SIGINT)", "jobs": [job], **ended},
        "extract": {"status": "done", **ended},
    }.items():
        (stages / f"{stage}.json").write_text(json.dumps({**old, "stage": stage, **rec}))
    rows = {r.stage: r for r in pipeline_status(ctx)}
    assert rows["data"].state == "stale"
    assert rows["data"].detail.endswith("changed since it ran (2026-01-01T01:00:00+00:00)")
    assert rows["encoder"].state == "failed" and rows["encoder"].job == job
    assert rows["extract"].detail == "needs data, encoder, which are not up to date"


def test_two_submissions_at_once_submit_one_chain(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `pipeline run`s started at once each found no job queued and each submitted a
    chain (every stage twice; the run file named one of them). One submits at a time now: the
    other, once it may, finds the first one's jobs and is refused as busy (exit 3: nothing
    was done, and the same command then says the pipeline is running)."""
    import dataclasses
    import threading
    import time

    from pomlia_hpc.pipeline import runner

    file, data = _pipeline(tmp_path)
    ctx = context_for(workspace, reg, load_pipeline(file))
    plan = dataclasses.replace(runner.make_plan(ctx, "local"), mode="chain")
    snapshot = snapshot_spec(ctx, data, str(file))
    check = runner.check_not_running

    def slow_check(c: StageContext) -> None:  # a slow sacct: both would check, then submit
        check(c)
        time.sleep(1.0)

    monkeypatch.setattr(runner, "check_not_running", slow_check)
    said: list[str] = []

    def run() -> None:
        try:
            said.append(str(runner.submit(ctx, plan, snapshot)))
        except PomliaError as exc:
            said.append(f"{exc.exit_code}: {exc}")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert len(said) == 2, said
        refused = [s for s in said if "has jobs queued or running" in s]
        assert len(refused) == 1 and refused[0].startswith(f"{BUSY_EXIT}: "), said
        with reg.session() as s:
            assert s.query(Job).count() == 1
    finally:
        runner.cancel_pipeline(workspace, reg, "p")


def test_a_submission_stopped_midway_records_the_jobs_it_queued(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run file was written after the last sbatch only: an sbatch that failed (or Ctrl-C)
    after the first stage's job was queued left that job out of it, so the next run found
    nothing queued and submitted a second chain, and `pipeline cancel` did not stop it."""
    import dataclasses
    from types import SimpleNamespace

    from pomlia_hpc.errors import SlurmUnavailableError
    from pomlia_hpc.pipeline import runner
    from pomlia_hpc.pipeline.runfiles import run_job_ids

    file, data = _pipeline(tmp_path, tasks=[{"name": "t", "dataset": "a"}])
    ctx = context_for(workspace, reg, load_pipeline(file))
    plan = dataclasses.replace(runner.make_plan(ctx, "local"), mode="chain")
    assert sum(sp.action == "run" for sp in plan.stages) >= 2, plan.stages
    calls: list[str] = []

    class HalfExecutor:  # the first sbatch queues a job, the second one fails
        def __init__(self, *_: object) -> None:
            pass

        def submit(self, *_: object, name: str, **__: object) -> object:
            calls.append(name)
            if len(calls) > 1:
                raise SlurmUnavailableError("sbatch: the Slurm controller did not answer")
            return SimpleNamespace(record_id=41, job_id="9041")

    monkeypatch.setattr(runner, "Executor", HalfExecutor)
    with pytest.raises(SlurmUnavailableError):
        runner.submit_file(ctx, plan, data, str(file))
    assert run_job_ids(ctx.folder) == [41]


def test_a_refused_submission_leaves_the_snapshot_the_queued_jobs_read(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A submission refused because the last one's jobs are still queued or running replaced
    the spec snapshot those jobs read when they start; it is replaced only once the check has
    passed, under the submission lock."""
    import dataclasses

    from pomlia_hpc.errors import BusyError
    from pomlia_hpc.pipeline import runner
    from pomlia_hpc.pipeline.runfiles import same_submission

    file, data = _pipeline(tmp_path)
    job = _sleeper(tmp_path, reg, 120)
    ctx = _submitted(workspace, reg, file, data, {"data": job})
    changed = {**data, "description": "changed"}
    plan = dataclasses.replace(runner.make_plan(ctx, "local"), mode="chain")
    try:
        with pytest.raises(BusyError, match="has jobs queued or running"):
            runner.submit_file(ctx, plan, changed, str(file))
        assert same_submission(ctx, data, "local") and not same_submission(ctx, changed, "local")
    finally:
        runner.cancel_pipeline(workspace, reg, "p")


def test_a_submission_that_waits_for_another_says_so_at_once(tmp_path: Path) -> None:
    """A second `pipeline run` whose submission lock another one holds waited silently up to
    60 s before its refusal; it says at once (on the run's log, stderr) that it waits and for
    whom, then goes on once the lock is free."""
    import os
    import threading

    from pomlia_hpc.pipeline.lock import submission_lock

    folder = tmp_path / "pipelines" / "p"
    said: list[str] = []
    entered = threading.Event()

    def second() -> None:
        with submission_lock(folder, said.append):
            entered.set()

    with submission_lock(folder):
        waiter = threading.Thread(target=second)
        waiter.start()
        for _ in range(200):  # said before its first poll: within moments
            if said:
                break
            threading.Event().wait(0.05)
        assert not entered.is_set()
    waiter.join(timeout=30)
    assert entered.is_set()
    assert len(said) == 1 and "being submitted by another `pipeline run`" in said[0]
    assert f"pid {os.getpid()}" in said[0] and "waiting for it" in said[0]


def test_a_stage_job_slurm_has_forgotten_no_longer_blocks_the_next_run(
    workspace: Workspace, reg: Registry, tmp_path: Path, fake_slurm: FakeSlurm
) -> None:
    """A stage job that neither sacct nor squeue knows any more (accounting purged) stayed
    recorded queued: `pipeline status` showed it waiting and every `pipeline run` was
    refused until `pipeline cancel`. It is recorded LOST now, and the run says so."""
    from pomlia_hpc.cluster.records import record_submission
    from pomlia_hpc.pipeline import runner

    file, data = _pipeline(tmp_path)
    (job,) = record_submission(
        reg, backend="slurm", scheduler_ids=["4"], name="pipeline-p-data", folder=str(tmp_path)
    )
    ctx = _submitted(workspace, reg, file, data, {"data": job})
    logged: list[str] = []
    ctx = context_for(workspace, reg, ctx.spec, log=logged.append)
    (row,) = pipeline_status(ctx)
    assert row.job_state == "LOST" and row.state != "pending", row
    with reg.session() as s:  # as it was recorded before: queued
        got = s.get(Job, job)
        assert got is not None
        got.state, got.ended_at = "PENDING", None
    runner.check_not_running(ctx)  # no refusal: nothing of the pipeline runs
    assert _state(reg, job) == "LOST"
    (said,) = logged
    assert f"job {job} (pipeline-p-data, Slurm 4) is known to neither sacct nor squeue" in said


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_lock_file_that_takes_no_holder_note_still_locks(tmp_path: Path) -> None:
    """The holder of the pipeline's lock writes itself into the lock file, a note for a
    waiting or refused run; a file that did not take it (a full disk or quota: here a lock
    file that is /dev/full) failed the run, the stage job, and `pipeline status`'s probe."""
    from pomlia_hpc.pipeline.lock import submission_lock

    folder = tmp_path / "pipelines" / "p"
    folder.mkdir(parents=True)
    for name in ("lock", "submit.lock"):
        (folder / name).symlink_to("/dev/full")
    with pipeline_lock(folder):
        assert pipeline_held(folder)
    with submission_lock(folder):
        pass
    assert not pipeline_held(folder)


def test_a_refused_submission_names_the_holder_at_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal after the wait named the holder the waiting run had read when it began
    waiting: one that may have gone since, the lock taken by another, which it did not name."""
    import fcntl

    import pomlia_hpc.pipeline.lock as lock_module

    folder = tmp_path / "pipelines" / "p"
    folder.mkdir(parents=True)
    path = folder / lock_module.SUBMIT_LOCK
    monkeypatch.setattr(lock_module, "SUBMIT_WAIT_S", 0.5)

    def holder(pid: int) -> None:
        path.write_text(json.dumps({"host": "node1", "pid": pid, "since": 0, "slurm_job": ""}))

    def taken_over(_said: str) -> None:
        holder(202)  # the first holder is gone and another has taken the lock

    holder(101)
    with path.open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(PomliaError) as refused, lock_module.submission_lock(folder, taken_over):
            pass
    assert refused.value.exit_code == BUSY_EXIT
    assert "pid 202 on node1" in str(refused.value) and "pid 101" not in str(refused.value)


def test_a_relative_profile_path_is_recorded_absolute_and_still_reattaches(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pomlia --cluster ./prof.yaml pipeline run` recorded and gave its stage jobs
    `./prof.yaml`, which each job read again in its own working folder (another file, or none
    there). The plan names the absolute path; a run recorded with the relative name before
    still counts as the same submission, so the same command re-attaches to its jobs."""
    import shutil

    from pomlia_hpc.config import config_dir
    from pomlia_hpc.pipeline import runner
    from pomlia_hpc.pipeline.runfiles import same_submission

    shutil.copy(config_dir() / "cluster" / "local.yaml", tmp_path / "prof.yaml")
    monkeypatch.chdir(tmp_path)
    file, data = _pipeline(tmp_path)
    ctx = _submitted(workspace, reg, file, data, {})
    assert runner.make_plan(ctx, "./prof.yaml").profile_name == str(tmp_path / "prof.yaml")
    assert runner.make_plan(ctx, "local").profile_name == "local"  # a name stays a name
    run = json.loads((ctx.folder / RUN_FILE).read_text())
    write_json_atomic(ctx.folder / RUN_FILE, {**run, "profile": "./prof.yaml"})
    assert same_submission(ctx, data, str(tmp_path / "prof.yaml"))
    assert same_submission(ctx, data, "prof.yaml")
    assert not same_submission(ctx, data, "local")


def test_two_spellings_of_one_profile_file_are_one_submission(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run that names the profile file another way (`../proj/prof.yaml` from `proj`, a
    folder reached through a link) was refused as "another profile" while its jobs ran."""
    import shutil

    from pomlia_hpc.config import config_dir
    from pomlia_hpc.pipeline.runfiles import same_submission

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(config_dir() / "cluster" / "local.yaml", proj / "prof.yaml")
    (tmp_path / "via").symlink_to(proj)
    monkeypatch.chdir(proj)
    file, data = _pipeline(tmp_path)
    ctx = _submitted(workspace, reg, file, data, {})
    run = json.loads((ctx.folder / RUN_FILE).read_text())
    write_json_atomic(ctx.folder / RUN_FILE, {**run, "profile": "./prof.yaml"})
    assert same_submission(ctx, data, "../proj/prof.yaml")
    assert same_submission(ctx, data, str(tmp_path / "via" / "prof.yaml"))
    assert not same_submission(ctx, data, "../other.yaml")
