"""`pomlia monitor status` tells a live chain from one that ended, on the real Slurm: a chain
whose queued job was cancelled by hand, and one whose run could not submit its successor
(that run's log says the chain ended, and the job ends FAILED); a pipeline's monitor stage
runs again for an ended chain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.monitor.schedule import job_name
from pomlia_hpc.pipeline.stages_monitor import MONITOR
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.waiting import wait_until
from tests.monitor_support import demo_model

pytestmark = pytest.mark.slurm
runner = CliRunner()


@pytest.fixture
def model(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A model of its own (job names are the user's, cluster-wide); its chain ended after."""
    name = f"status-{os.getpid()}"
    demo_model(reg, workspace, name=name, n_ref=50)
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    yield name
    runner.invoke(app, ["monitor", "unschedule", name])
    wait_until(lambda: jobs_named(job_name(name)) == [], timeout=60, interval=0.5, what="end")


def status(model: str) -> dict[str, object]:
    res = runner.invoke(app, ["monitor", "status", model, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    (row,) = json.loads(res.stdout)
    return dict(row)


def test_a_chain_whose_queued_job_was_cancelled_by_hand_is_said_to_have_ended(
    model: str, workspace: Workspace
) -> None:
    res = runner.invoke(app, ["monitor", "schedule", model, "--at", "", "--every", "1h"])
    assert res.exit_code == 0, (res.output, res.exception)
    row = status(model)
    assert row["state"] == "scheduled" and len(row["queued"]) == 1, row  # type: ignore[arg-type]
    # values, not the table's words ("job 2 (slurm 10)"); the begin time with its zone
    # (squeue prints local wall time without one)
    (queued,) = row["queued"]  # type: ignore[misc]
    (job,) = jobs_named(job_name(model))
    assert queued["scheduler_id"] == job.job_id and queued["state"] == "PENDING", queued
    assert isinstance(queued["job"], int) and row["last"] is None, row
    assert datetime.fromisoformat(queued["begin"]).tzinfo is not None, queued
    # A pipeline whose monitor stage scheduled it counts the stage done while the chain lives.
    ctx: Any = SimpleNamespace(workspace=workspace)
    stage_out = {"t": {"model": model, "scheduled": True}}
    assert MONITOR.still_there(ctx, stage_out)
    subprocess.run(["scancel", job.job_id], check=True)
    wait_until(lambda: jobs_named(job_name(model)) == [], timeout=60, interval=0.5, what="gone")
    row = status(model)
    assert row["state"] == "ended" and row["queued"] == [], row
    last: Any = row["last"]
    assert (last["job"], last["scheduler_id"]) == (queued["job"], job.job_id), last
    assert last["state"] == "CANCELLED" and last["exit_cause"] is not None, last
    assert datetime.fromisoformat(last["ended_at"]).tzinfo is not None, last
    again = f"pomlia monitor schedule {model} --every 1h --at '' --window 1h"
    assert f"schedule it again with `{again}`" in str(row["advice"]), row
    plain = " ".join(runner.invoke(app, ["monitor", "status"]).output.split())
    assert f"{model}: ENDED (every 1h)" in plain, plain
    # ... and runs it again once it ended (it counted the settings file alone).
    assert not MONITOR.still_there(ctx, stage_out)


def test_a_run_that_cannot_submit_the_next_says_the_chain_ended(
    model: str, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run said "could not submit the next run; this run goes on" and ended COMPLETED:
    nothing but that line in its log told that no run would come any more."""
    real = shutil.which("sbatch")
    assert real is not None
    shims = tmp_path / "shims"
    shims.mkdir()
    # sbatch works for `monitor schedule` here and fails inside the chain's job, whose
    # environment (PATH included) is this one's.
    (shims / "sbatch").write_text(
        "#!/bin/bash\n"
        'if [ -n "${SLURM_JOB_ID:-}" ]; then echo "sbatch: error: Batch job submission failed:'
        ' Resource temporarily unavailable" >&2; exit 1; fi\n'
        f'exec "{real}" "$@"\n'
    )
    (shims / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("POMLIA_MONITOR_RESUBMIT_TRIES", "1")
    res = runner.invoke(app, ["monitor", "schedule", model, "--at", "", "--every", "3s"])
    assert res.exit_code == 0, (res.output, res.exception)
    (job,) = jobs_named(job_name(model))
    wait_until(lambda: jobs_named(job_name(model)) == [], timeout=240, interval=1, what="run")
    log = workspace.path("jobs", "monitor", model, f"slurm-{job.job_id}.out").read_text()
    assert "Resource temporarily unavailable" in log, log
    last = log.strip().splitlines()[-1]
    assert f"the chain of {model} ENDED with this run: no next run is queued" in last, log
    assert f"schedule it again with: pomlia monitor schedule {model} --every 3s" in last, log
    row = status(model)
    assert row["state"] == "ended", row
    last: Any = row["last"]
    assert (last["scheduler_id"], last["state"]) == (job.job_id, "FAILED"), row
    # exit 5, not 3: 3 is a busy `monitor run` (jobs/monitor.sbatch, docs/guide/monitor.md)
    assert "5:0" in str(last["exit_cause"]), row
