"""A pipeline stage that is requeued, cancelled or held, as `pipeline run`'s log and `pipeline
status` say it; no real Slurm (a fake `sacct`/`squeue` on PATH, job rows written here).
tests/test_pipeline_slurm_stops.py does the same on the real single-node Slurm."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster.records import record_submission, update_job
from pomlia_hpc.cluster.terminate import JobRequeued, JobStopped, cancel_children_on_stop
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.runner import RUN_FILE, pipeline_status
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import Stage, StageContext, run_stage
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

SPEC: dict[str, Any] = {
    "name": "p",
    "datasets": [{"name": "a", "medmnist": "bloodmnist"}],
    "encoder": {"name": "e", "epochs": 2},
}
OLD_START, OLD_END = "2020-01-01T00:00:00+00:00", "2020-01-01T00:00:05+00:00"


@pytest.fixture
def ctx(workspace: Workspace, reg: Registry) -> StageContext:
    return StageContext(parse_pipeline(SPEC, "p.yaml", Path("/data")), workspace, reg)


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> None:
    """Commands ``name`` on PATH that run the shell body ``scripts[name]``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _stage(run: Any) -> Stage:
    return Stage(
        name="s", needs=(), summary="s", enabled=lambda s: True, section=lambda s: None, run=run
    )


def _sigterm(ctx: StageContext) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    return {}


def test_a_requeued_stage_job_says_it_will_resume_and_is_no_failure(
    ctx: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scontrol requeue` of a stage job logged `[encoder] failed: stopped by Slurm ...`, and
    the next attempt `running again, since its last run failed`."""
    _fake_slurm(tmp_path, monkeypatch, sacct="echo REQUEUED")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    logged: list[str] = []
    ctx.log = logged.append
    with pytest.raises(JobStopped) as info, cancel_children_on_stop():
        run_stage(ctx, _stage(_sigterm))
    assert isinstance(info.value, JobRequeued)
    assert (ctx.record("s") or {}).get("status") == "requeued"
    assert logged[-1] == "[s] requeued, will resume when Slurm starts its job again"
    assert not [line for line in logged if "failed" in line]
    logged.clear()
    assert run_stage(ctx, _stage(lambda c: {})) == "done"
    assert logged[0] == "[s] resumed after a requeue: s"


def test_a_stage_job_stopped_otherwise_by_slurm_still_fails(
    ctx: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A time limit ends the stage job for good: the stage failed, with the cause.
    _fake_slurm(tmp_path, monkeypatch, sacct="echo TIMEOUT")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(JobStopped) as info, cancel_children_on_stop():
        run_stage(ctx, _stage(_sigterm))
    assert not isinstance(info.value, JobRequeued)
    rec = ctx.record("s") or {}
    assert rec.get("status") == "failed" and "job state TIMEOUT" in rec.get("error", "")


def _write_stage(ctx: StageContext, name: str, status: str, started: str, ended: str) -> None:
    rec = {"stage": name, "status": status, "started_at": started, "ended_at": ended}
    write_json_atomic(ctx.record_path(name), {**rec, "outputs": {}})


def _submitted(ctx: StageContext, backend: str, **stage_jobs: str) -> dict[str, int]:
    """Stage jobs of a submission made now (``stage=scheduler id``), recorded PENDING."""
    jobs = {}
    for stage, sid in stage_jobs.items():
        (jobs[stage],) = record_submission(
            ctx.registry, backend=backend, scheduler_ids=[sid], name=f"p-{stage}", folder="/x"
        )
    stages = {st: {"action": "run", "job": job} for st, job in jobs.items()}
    run = {"mode": "chain", "stages": stages, "submitted_at": "2026-01-01T00:00:00+00:00"}
    write_json_atomic(ctx.folder / RUN_FILE, run)
    return jobs


def test_cancelled_stages_say_cancelled_and_show_no_earlier_times(ctx: StageContext) -> None:
    """A stage job scancel-ed while it ran showed `failed`; one scancel-ed while it was queued
    showed the start and end of the stage's previous run, as if it had run."""
    _write_stage(ctx, "data", "done", OLD_START, OLD_END)
    _write_stage(ctx, "encoder", "done", OLD_START, OLD_END)
    _write_stage(ctx, "extract", "done", OLD_START, OLD_END)
    jobs = _submitted(ctx, "debug", encoder="1", extract="2")
    # The encoder's job was killed while it ran (its record says so), extract's while queued.
    _write_stage(ctx, "encoder", "running", "2026-01-01T00:01:00+00:00", "")
    for job in jobs.values():
        update_job(ctx.registry, job, state="CANCELLED", exit_cause="CANCELLED (exit code 0:0)")
    rows = {r.stage: r for r in pipeline_status(ctx)}
    assert rows["encoder"].state == "cancelled"
    assert rows["encoder"].started_at.startswith("2026-01-01T00:01")
    extract = rows["extract"]
    assert (extract.state, extract.started_at, extract.ended_at) == ("cancelled", "", "")
    assert extract.detail == "its job was cancelled before it started"


def test_a_held_stage_job_shows_why_it_pends(
    ctx: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scontrol hold` of a queued stage job: `pipeline status` showed `pending` with an empty
    detail, while `jobs show` gave `pending_reason JobHeldAdmin`."""
    _fake_slurm(
        tmp_path,
        monkeypatch,
        sacct="echo '4242|PENDING|Unknown|Unknown|0:0'",
        squeue="echo '4242|PENDING|JobHeldAdmin'",
    )
    _write_stage(ctx, "data", "done", OLD_START, OLD_END)
    _submitted(ctx, "slurm", encoder="4242")
    row = {r.stage: r for r in pipeline_status(ctx)}["encoder"]
    assert row.state == "pending"
    assert row.detail == "pending reason: JobHeldAdmin (held: scontrol release 4242 lets it start)"


@pytest.mark.parametrize("earlier", [None, "done"])
def test_a_stage_job_that_failed_before_its_stage_began_shows_failed(
    ctx: StageContext, earlier: str | None
) -> None:
    """A stage job that failed before its stage wrote a record (its environment without the
    registry, the pipeline's lock held) showed `cancelled`, beside the detail `FAILED (exit
    code 1:0)`, or the staleness of the stage's earlier record."""
    _write_stage(ctx, "data", "done", OLD_START, OLD_END)
    if earlier is not None:
        _write_stage(ctx, "encoder", earlier, OLD_START, OLD_END)
    jobs = _submitted(ctx, "debug", encoder="1")
    cause = "ConfigError: this pipeline job has no POMLIA_DB_URL in its environment"
    update_job(ctx.registry, jobs["encoder"], state="FAILED", exit_cause=cause)
    row = {r.stage: r for r in pipeline_status(ctx)}["encoder"]
    assert (row.state, row.detail) == ("failed", cause)
    assert (row.started_at, row.ended_at) == ("", "")  # not the earlier run's times
