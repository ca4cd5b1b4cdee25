"""A pipeline's stage jobs held, requeued and cancelled on the real single-node Slurm, as the
stage jobs' logs and `pipeline status` say it (tests/test_pipeline_stops.py: the same without
Slurm).

`pipeline run` and `pipeline status` run in this process as the console script does
(``pomlia_main``): a process of their own started Python and the CLI again (~2.5 s of CPU, ~10 s
on a busy CI machine) each time, for nothing these checks need."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import tiny_npz
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]
#: ``pomlia --cluster slurm-local ARGS`` in this process: (exit code, stdout, stderr).
Pomlia = Callable[..., tuple[object, str, str]]


@pytest.fixture
def pomlia(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wide_console: None
) -> Pomlia:
    """`pomlia --cluster slurm-local ARGS` in this process (the workspace fixture's
    POMLIA_HOME), 250 columns wide."""

    def run(*args: str) -> tuple[object, str, str]:
        return pomlia_main(monkeypatch, capsys, "--cluster", "slurm-local", *args)

    return run


def _status_line(pomlia: Pomlia, stage: str) -> str:
    code, out, err = pomlia("pipeline", "status", "stops")
    assert code == 0, out + err
    return " ".join(next(ln for ln in out.splitlines() if f" {stage} " in ln).split())


def _stage_job(reg: Registry, stage: str) -> Job:
    with reg.session() as s:
        row = s.scalar(select(Job).where(Job.name == f"pipeline-stops-{stage}"))
        assert row is not None
        return row


def _log(job: Job, kind: str) -> str:
    path = Path(job.folder) / f"{job.scheduler_id}_0_log.{kind}"
    return path.read_text() if path.exists() else ""


def _record(workspace: Workspace, stage: str) -> dict[str, object]:
    path = workspace.path("pipelines", "stops", "stages", f"{stage}.json")
    return json.loads(path.read_text()) if path.exists() else {}


def _training_jobs(reg: Registry) -> int:
    with reg.session() as s:
        return len(list(s.scalars(select(Job).where(Job.name.like("fingerprint-train-%")))))


@pytest.mark.timeout(900)
def test_stage_jobs_held_requeued_and_cancelled(
    workspace: Workspace, reg: Registry, pomlia: Pomlia
) -> None:
    home = workspace.home
    tiny_npz(home.parent / "a.npz", sizes=(64, 8, 8))
    file = home.parent / "stops.yaml"
    spec = {
        "name": "stops",
        "datasets": [{"name": "a", "file": str(home.parent / "a.npz")}],
        # Long enough to be requeued and cancelled while it trains.
        "encoder": {"name": "stops-enc", "latent_dim": 2, "epochs": 1000, "batch_size": 8},
        "extract": {"shards": 2},
    }
    file.write_text(yaml.safe_dump(spec))
    code, out, err = pomlia("pipeline", "run", str(file))
    assert code == 0, out + err
    extract, encoder = _stage_job(reg, "extract"), _stage_job(reg, "encoder")

    # Held while queued: the detail says why it pends (it said nothing).
    subprocess.run(["scontrol", "hold", extract.scheduler_id], check=True)
    try:
        line = _status_line(pomlia, "extract")
        assert "pending" in line and "JobHeld" in line, line
        assert f"scontrol release {extract.scheduler_id}" in line, line
    finally:
        subprocess.run(["scontrol", "release", extract.scheduler_id], check=True)

    # Requeued while its training job runs: no failure, no traceback; it resumes.
    wait_until(lambda: _training_jobs(reg) >= 1, 300, interval=1, what="the encoder's training")
    subprocess.run(["scontrol", "requeue", encoder.scheduler_id], check=True)
    wait_until(
        lambda: "resumed after a requeue" in _log(encoder, "out"), 300, interval=1, what="resume"
    )
    out, err = _log(encoder, "out"), _log(encoder, "err")
    assert "[encoder] requeued, will resume" in out, out
    assert "failed" not in out and "Traceback" not in err, out + err

    # The queued stage job cancelled, then the running one: both `cancelled`, and the queued
    # one shows no times (never those of the stage's earlier run).
    wait_until(lambda: _training_jobs(reg) >= 2, 300, interval=1, what="the training again")
    subprocess.run(["scancel", extract.scheduler_id], check=True)
    subprocess.run(["scancel", encoder.scheduler_id], check=True)
    wait_until(
        lambda: _record(workspace, "encoder").get("status") == "cancelled",
        120,
        interval=1,
        what="the encoder's record",
    )
    line = _status_line(pomlia, "encoder")
    assert line.startswith("│ encoder │ cancelled │") and "cancelled (SIGTERM" in line, line
    line = _status_line(pomlia, "extract")
    assert line.startswith("│ extract │ cancelled │"), line
    assert "│ CANCELLED │ - │ - │ its job was cancelled before it started │" in line, line
