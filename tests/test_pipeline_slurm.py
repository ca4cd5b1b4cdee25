"""A small look-alike pipeline through ``pomlia pipeline run`` on the real single-node Slurm:
stages as jobs chained with afterok; a failing stage cancels the ones after it; the next run
skips what is done and resumes at the failed stage; a third run submits nothing.

The first run is the console's own process (its exit status and stderr are checked); the
commands after it run in this process as the console script does (``pomlia_main``): each
process of its own started Python and the CLI again (~2.5 s of CPU, ~10 s on a busy CI
machine) for nothing these checks need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]
REPO = Path(__file__).resolve().parents[1]


def small_pipeline(task_dataset: str) -> dict[str, Any]:
    flags = ["bloodmnist", "pneumoniamnist"]
    return {
        "name": "small",
        "lookalikes": {"scale": 0.004, "flags": flags},
        "datasets": [{"name": f, "medmnist": f} for f in flags],
        "encoder": {
            "name": "small-d2",
            "latent_dim": 2,
            "epochs": 1,
            "max_images": 64,
            "batch_size": 32,
        },
        "extract": {"batch_size": 64},
        "index": {},
        "tasks": [{"name": "small-pneu", "dataset": task_dataset, "metric": "auc"}],
    }


def pomlia(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POMLIA_HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    env.pop("POMLIA_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "--cluster", "slurm-local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a slow CI machine: 3 min here once, 70 s on a quiet one
        check=False,
    )


@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("wide_console")  # 250 columns, as the CLI processes are given
def test_chain_on_slurm_fails_resumes_and_skips(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:

    def in_process(*args: str) -> tuple[Any, str]:
        """``pomlia --cluster slurm-local ARGS`` in this process: (exit code, stdout)."""
        code, out, _ = pomlia_main(monkeypatch, capsys, "--cluster", "slurm-local", *args)
        return code, out

    file = workspace.home.parent / "small.yaml"
    # First run: the task names a dataset version that does not exist, so 'tasks' fails.
    file.write_text(yaml.safe_dump(small_pipeline("pneumoniamnist@000000000000")))
    first = pomlia(workspace.home, "pipeline", "run", str(file), "--wait")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    records = workspace.path("pipelines", "small", "stages")
    status = {p.stem: json.loads(p.read_text())["status"] for p in records.glob("*.json")}
    assert status == {
        "lookalikes": "done",
        "data": "done",
        "encoder": "done",
        "extract": "done",
        "index": "done",
        "tasks": "failed",
    }
    with reg.session() as s:
        stage_jobs = {
            j.name.removeprefix("pipeline-small-"): j
            for j in s.scalars(select(Job).where(Job.name.like("pipeline-small-%")))
        }
        # The stage's own work ran as jobs of their own (nested), e.g. the encoder training.
        assert s.scalar(select(Job).where(Job.name == "fingerprint-train-small-d2")) is not None
    assert stage_jobs["data"].state == "COMPLETED" and stage_jobs["tasks"].state == "FAILED"
    error = json.loads((records / "tasks.json").read_text())["error"]
    assert "000000000000" in error
    # The stage job's row says the stage's cause (not only "FAILED (exit code 1:0)"), with
    # its traceback and log files.
    _, shown_job = in_process("jobs", "show", str(stage_jobs["tasks"].id), "--json")
    job_shown = json.loads(shown_job)
    assert job_shown["exit_cause"] == error.splitlines()[0][:500], job_shown
    assert "Traceback" in job_shown["traceback"]
    assert any(p.endswith(f"{job_shown['scheduler_id']}_0_log.out") for p in job_shown["logs"])

    # Fixed file: done stages are skipped (no job), only 'tasks' runs.
    file.write_text(yaml.safe_dump(small_pipeline("pneumoniamnist")))
    code, second = in_process("pipeline", "run", str(file), "--wait")
    assert code == 0, second
    assert "tasks: job" in second and "encoder: job" not in second
    with reg.session() as s:
        n_jobs = len(list(s.scalars(select(Job).where(Job.name.like("pipeline-small-%")))))
    assert n_jobs == len(stage_jobs) + 1

    # Nothing changed: nothing is submitted.
    code, third = in_process("pipeline", "run", str(file))
    assert code == 0 and "every stage is up to date" in third

    code, shown = in_process("pipeline", "status", "small")
    assert code == 0
    for stage in ("lookalikes", "data", "encoder", "extract", "index", "tasks"):
        line = next(ln for ln in shown.splitlines() if f" {stage} " in ln)
        assert " done " in line, shown
        # The stage job that ran it, though the last submission's run.json names none ('tasks'
        # ran in the second submission's job, not in stage_jobs).
        ran = f" stage {stage_jobs[stage].id}" if stage != "tasks" else " stage "
        assert ran in line, shown
