"""What an operator sees of Slurm work: a failed stage job's cause on its job row, whole causes
in `runs list` and `automl run`'s table, `pipeline status` pointing at the stage job, and the
log files `jobs show` names."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cli.automl import study_table
from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.records import (
    SchedulerState,
    merge_scheduler_state,
    own_job_id,
    record_submission,
    sacct_states,
    update_job,
)
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.runner import RUN_FILE, pipeline_status
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import Stage, StageContext, run_stage
from pomlia_hpc.registry import Job, Registry, Run
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns

SPEC: dict[str, Any] = {
    "name": "p",
    "datasets": [{"name": "a", "medmnist": "bloodmnist"}],
    "encoder": {"name": "e", "epochs": 2},
}
INDEX_ERROR = (
    "an index with 4096 inverted lists needs at least that many training vectors, got 229: "
    "use fewer lists (e.g. IVF5,Flat) or the exact default"
)
CAUSE = (
    "FAILED: pomlia_hpc.errors.InputError: device 'cuda' was asked for but this node has no "
    "GPU (torch.cuda.is_available() is False)"
)


@pytest.fixture
def ctx(workspace: Workspace, reg: Registry) -> StageContext:
    return StageContext(parse_pipeline(SPEC, "p.yaml", Path("/data")), workspace, reg)


def _sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    """A ``sacct`` on PATH that prints ``line``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho '{line}'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _failing(ctx: StageContext) -> dict[str, Any]:
    raise InputError(INDEX_ERROR)


def test_a_failed_stage_jobs_row_gets_the_stages_cause(
    ctx: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline status` said why the index stage failed; `jobs list/show` said only
    `FAILED (exit code 1:0)`, with no traceback."""
    (job,) = record_submission(
        ctx.registry, backend="slurm", scheduler_ids=["4242"], name="p-index", folder="/x"
    )
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert own_job_id(ctx.registry) == job
    stage = Stage(
        name="index", needs=(), summary="s", enabled=lambda s: True, section=lambda s: None,
        run=_failing,
    )  # fmt: skip
    with pytest.raises(InputError):
        run_stage(ctx, stage, job_id=job)
    assert (ctx.record("index") or {})["job"] == job
    with ctx.registry.session() as s:
        row = s.get(Job, job)
        assert row is not None
        new = merge_scheduler_state(row, SchedulerState("FAILED", exit_code="1:0"))
        assert row.traceback is not None and "InputError" in row.traceback
    assert new["exit_cause"] == INDEX_ERROR


def test_pipeline_status_shows_the_stage_job_and_its_children(
    ctx: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extract row showed one shard (`61_1`) of its array, not the stage job, once a
    later submission's run.json no longer named the stage's job."""
    reg = ctx.registry
    (stage_job,) = record_submission(
        reg, backend="slurm", scheduler_ids=["54"], name="p-extract", folder="/x"
    )
    shards = record_submission(
        reg, backend="slurm", scheduler_ids=["61_0", "61_1"], name="shard", folder="/x",
        array_job_id="61",
    )  # fmt: skip
    rec = {"stage": "extract", "status": "done", "job": stage_job, "jobs": shards}
    rec |= {"started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T00:01:00+00:00"}
    write_json_atomic(ctx.record_path("extract"), {**rec, "outputs": {}})
    run = {"mode": "chain", "stages": {"extract": {"action": "skip"}}, "submitted_at": "2027"}
    write_json_atomic(ctx.folder / RUN_FILE, run)
    _sacct(tmp_path, monkeypatch, "54|COMPLETED|2026-01-01T00:00:00|2026-01-01T00:01:00|0:0")
    row = {r.stage: r for r in pipeline_status(ctx)}["extract"]
    assert (row.job, row.stage_job, row.scheduler_id) == (stage_job, True, "54")
    assert row.children == "array 61 (2 tasks)"
    data = {r.stage: r for r in pipeline_status(ctx)}["data"]
    assert (data.job, data.children) == (None, "")


def test_runs_list_shows_the_whole_cause_and_json_keeps_the_traceback_apart(
    workspace: Workspace, reg: Registry
) -> None:
    with reg.session() as s:
        s.add(Run(study="st", status="crashed", error=f"{CAUSE}\n\nTraceback (most recent)\n  x"))
    table = " ".join(CliRunner().invoke(app, ["runs", "list"]).output.split())
    assert "(torch.cuda.is_available()" in table.replace("│ ", "").replace(" │", "")
    res = CliRunner().invoke(app, ["runs", "list", "--json"])
    (run,) = json.loads(res.stdout)
    assert run["cause"] == CAUSE
    assert run["traceback"] == "Traceback (most recent)\n  x"


def test_automl_table_shows_the_whole_cause_and_dashes(workspace: Workspace) -> None:
    trial = SimpleNamespace(
        run_id=3, summary="cnn", epochs=1, start_epoch=0, status="crashed", objective=None,
        test=None, cost_s=None, job="9", cause=CAUSE,
    )  # fmt: skip
    view = SimpleNamespace(
        name="st", budget_epochs=None, best=None, search=[trial], trials=[trial], n_trials=1,
        spent_epochs=1, run_epochs=1, metric="acc",
    )  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=250).print(study_table(view))
    text = out.getvalue()
    assert "1 epoch" in text and "1 epochs" not in text
    assert "(torch.cuda.is_available() is False)" in text  # whole, not cut at 60 characters
    (line,) = [ln for ln in text.splitlines() if "cnn" in ln]
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[4:7] == ["-", "-", "-"]  # val, test, cost of a crashed trial


def test_jobs_show_names_its_log_files(workspace: Workspace, reg: Registry) -> None:
    folder = workspace.home / "jobs"
    folder.mkdir(exist_ok=True)
    (job,) = record_submission(
        reg, backend="local", scheduler_ids=["77"], name="j", folder=str(folder)
    )
    shard, _ = record_submission(
        reg, backend="local", scheduler_ids=["61_0", "61_1"], name="s", folder=str(folder),
        array_job_id="61",
    )  # fmt: skip
    for name in ("77_0_log.out", "77_0_log.err"):
        (folder / name).write_text("x\n")
    res = CliRunner().invoke(app, ["jobs", "show", str(job), "--json"])
    shown = json.loads(res.stdout)
    assert shown["logs"] == [str(folder / "77_0_log.out"), str(folder / "77_0_log.err")]
    assert shown["folder"] == str(folder) and shown["array_logs"] is None
    task = json.loads(CliRunner().invoke(app, ["jobs", "show", str(shard), "--json"]).stdout)
    assert task["array_logs"] == f"{folder / '61_<task>_0_log.out'}, .err (2 tasks)"
    (listed, *_) = json.loads(CliRunner().invoke(app, ["jobs", "list", "--json"]).stdout)
    assert listed["folder"] == str(folder)


@pytest.mark.parametrize(
    "command",
    [
        ("fingerprint", "train"),
        ("fingerprint", "extract"),
        ("automl", "run"),
        ("pipeline", "run"),
        ("monitor", "schedule"),
    ],
)
def test_long_commands_say_where_their_output_goes(command: tuple[str, ...]) -> None:
    text = " ".join(CliRunner().invoke(app, [*command, "--help"]).output.split())
    assert "jobs show" in text and "log" in text


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["index_build.sbatch", "automl.sbatch"])
def test_shipped_scripts_logs_are_ignored_and_the_home_form_documented(script: str) -> None:
    """Run from the checkout as the guides said, their logs landed in the repo root, tracked
    by nobody and ignored by nobody."""
    text = (REPO / "jobs" / script).read_text()
    (default,) = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH --out")]
    log = default.replace("%j", "123")
    res = subprocess.run(
        ["git", "check-ignore", "-q", log], cwd=REPO, check=False, capture_output=True
    )
    assert res.returncode == 0, f"{log} is not git-ignored"
    assert f'--output="$POMLIA_HOME/jobs/{default}"' in text


def test_jobs_list_cuts_a_long_cause_at_a_word_with_an_ellipsis(
    workspace: Workspace, reg: Registry
) -> None:
    """`jobs list` cut causes at 80 characters mid-word, with nothing to say so."""
    (job,) = record_submission(reg, backend="local", scheduler_ids=["5"], name="j", folder="/x")
    long = "word " * 40 + "tail"  # 204 characters
    with reg.session() as s:
        row = s.get(Job, job)
        assert row is not None
        row.state, row.exit_cause = "FAILED", CAUSE
    out = " ".join(CliRunner().invoke(app, ["jobs", "list"]).output.split())
    assert "is_available()" in out and "False)" in out  # whole: the column wraps
    with reg.session() as s:
        row = s.get(Job, job)
        assert row is not None
        row.exit_cause = long
    out = " ".join(CliRunner().invoke(app, ["jobs", "list"]).output.split())
    assert "word …" in out and "tail" not in out and "wor …" not in out


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_failed_job_nobody_collected_shows_its_own_last_word(
    workspace: Workspace, reg: Registry
) -> None:
    """A job whose submitter is gone (or has not collected it yet) ends its log with
    `error: the job gave up: ValueError: ...`, "as `pomlia jobs show` words it", but `jobs
    show` and `jobs list` said only `FAILED (exit code 1:0)`: sacct knows no more."""
    executor = Executor.from_profile("slurm-local", workspace.path("jobs"), reg)
    handle = executor.submit(jobfns.boom, "the lookup table is empty", name="gives-up")
    for _ in range(600):  # the job fails within seconds; its result is never collected
        st = sacct_states([handle.job_id]).get(handle.job_id)
        if st is not None and st.state == "FAILED":
            break
        time.sleep(0.2)
    res = CliRunner().invoke(app, ["jobs", "show", str(handle.record_id), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["state"] == "FAILED", shown
    assert shown["exit_cause"] == "ValueError: the lookup table is empty", shown


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_job_cancelled_outside_pomlia_says_so_not_its_exit_code(
    workspace: Workspace, reg: Registry
) -> None:
    """`scancel` of a job (not `jobs cancel`) showed `CANCELLED (exit code 0:0)`, where a
    trial its driver saw cancelled says `cancelled (scancel or preemption)`."""
    executor = Executor.from_profile("slurm-local", workspace.path("jobs"), reg)
    handle = executor.submit(jobfns.sleep_for, 300.0, name="cancelled-outside")
    subprocess.run(["scancel", handle.job_id], check=True)
    for _ in range(600):
        st = sacct_states([handle.job_id]).get(handle.job_id)
        if st is not None and st.state == "CANCELLED":
            break
        time.sleep(0.2)
    res = CliRunner().invoke(app, ["jobs", "show", str(handle.record_id), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert (shown["state"], shown["exit_cause"]) == (
        "CANCELLED",
        "cancelled (scancel or preemption)",
    )


def test_jobs_show_does_not_call_deleted_logs_not_written_yet(
    workspace: Workspace, reg: Registry
) -> None:
    """A running job whose log files were deleted showed `logs - (none written yet)`, as if
    it had not started."""
    folder = workspace.home / "jobs"
    (queued, running) = record_submission(
        reg, backend="local", scheduler_ids=["999990", "999991"], name="j", folder=str(folder)
    )
    update_job(reg, running, state="RUNNING", started_at=datetime.now(UTC))
    shown = {
        job: " ".join(CliRunner().invoke(app, ["jobs", "show", str(job)]).stdout.split())
        for job in (queued, running)
    }
    assert "logs │ - (none written yet)" in shown[queued], shown[queued]
    assert "none written yet" not in shown[running], shown[running]
    assert "logs │ - (none in " in shown[running] and "deleted, or never" in shown[running]


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_jobs_show_json_has_the_pending_reason_its_table_has(
    workspace: Workspace, reg: Registry
) -> None:
    """`jobs show` listed a queued Slurm job's pending_reason, `jobs show --json` did not."""
    queued = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--hold",
                "--job-name=held",
                "--output=/dev/null",
                "--wrap=true",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.split(";")[0]
        .strip()
    )
    try:
        (job,) = record_submission(
            reg, backend="slurm", scheduler_ids=[queued], name="held", folder="/x"
        )
        res = CliRunner().invoke(app, ["jobs", "show", str(job), "--json"])
        table = CliRunner().invoke(app, ["jobs", "show", str(job)])
    finally:
        subprocess.run(["scancel", queued], check=False)
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert (shown["state"], shown["pending_reason"]) == ("PENDING", "JobHeldUser"), shown
    assert "pending_reason │ JobHeldUser" in " ".join(table.stdout.split()), table.stdout
    ended = json.loads(CliRunner().invoke(app, ["jobs", "show", str(job), "--json"]).stdout)
    assert ended["pending_reason"] is None
