"""A study driver (``pomlia automl run``) killed in the middle and restarted with ``--resume``
finishes the study without repeating a finished trial; a promoted configuration continues from
its lower-budget checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pomlia_hpc.automl import records
from pomlia_hpc.registry import Job, Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_task

pytestmark = pytest.mark.slow


def _cmd(ws: Workspace, *extra: str) -> list[str]:
    # No warm start: a warm start's first configuration trains at the full budget first, and
    # this test needs Hyperband's own promotion from 1 to 2 epochs (SMAC's random design).
    return [
        sys.executable,
        "-m",
        "pomlia_hpc",
        "--home",
        str(ws.home),
        "automl",
        "run",
        "blood",
        "--trials",
        "3",
        "--max-epochs",
        "2",
        "--min-epochs",
        "1",
        "--eta",
        "2",
        "--parallel",
        "1",
        "--archs",
        "small_cnn",
        "--study",
        "r1",
        *extra,
    ]


@pytest.mark.timeout(1500)
def test_killed_driver_resumes_without_repeating_trials(
    workspace: Workspace, tmp_path: Path
) -> None:
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    env = {**os.environ, "COLUMNS": "200"}
    log = (tmp_path / "driver1.log").open("w")
    driver = subprocess.Popen(_cmd(workspace), stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 600  # trial jobs import torch one after another: slow under load
    try:
        while True:
            runs = records.study_runs(reg, "r1")
            done = [r for r in runs if r.status == "ok"]
            out = [r for r in runs if r.status == "running" and r.job_id is not None]
            # The driver's redirected stdout (a Slurm output file) shows the finished trial
            # while the driver still runs, not only when it ends.
            if done and out and ": ok val acc" in (tmp_path / "driver1.log").read_text():
                break
            assert driver.poll() is None, (tmp_path / "driver1.log").read_text()
            assert time.time() < deadline, "the first trial did not finish in time"
            time.sleep(0.3)
    finally:
        driver.send_signal(signal.SIGKILL)  # no clean-up: as if the node died
        driver.wait()
    finished_before = {(r.config["config_key"], r.budget) for r in done}

    resumed = subprocess.run(
        _cmd(workspace, "--resume"), capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "best: run" in resumed.stdout
    assert "ignored: --trials, --max-epochs" in " ".join(resumed.stderr.split())  # a note

    runs = records.study_runs(reg, "r1")
    assert len(runs) == 3 and {r.status for r in runs} == {"ok"}
    keys = [(r.config["config_key"], r.budget) for r in runs]
    assert len(set(keys)) == 3 and finished_before <= set(keys)
    with reg.session() as s:
        n_jobs = s.scalar(select(func.count(Job.id)))
        model = s.scalar(select(Model).where(Model.name == "r1-best"))
    assert n_jobs == 3  # each trial ran once: none was submitted again after the restart
    assert model is not None and model.lineage["study"] == "r1"
    # Hyperband promoted a configuration from 1 to 2 epochs: it continued from epoch 1
    promoted = [r for r in runs if r.budget == 2.0 and r.metrics["start_epoch"] == 1]
    assert len(promoted) == 1 and promoted[0].metrics["epochs_run"] == 1
    assert (promoted[0].config["config_key"], 1.0) in keys
    assert len(promoted[0].metrics["history"]) == 2
