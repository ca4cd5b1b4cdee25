"""The exit status of a monitoring chain's job (``jobs/monitor.sbatch``): "the chain ended" is
not the status a busy ``monitor run`` (another run of the model at work) answers with.

The script is run by bash with a stand-in for the chain's Python (``PY`` of its settings), which
answers ``monitor schedule --chain`` and ``monitor run`` with the statuses a test chooses; no
Slurm is needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.errors import BUSY_EXIT

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "monitor.sbatch"


def chain_job(tmp_path: Path, *, schedule: int, run: int) -> subprocess.CompletedProcess[str]:
    """Run the chain's job whose next-run submission exits ``schedule`` and whose ``monitor
    run`` exits ``run``."""
    py = tmp_path / "py"
    py.write_text(
        f'#!/bin/bash\ncase "$4" in schedule) exit {schedule} ;; run) exit {run} ;; esac\nexit 99\n'
    )
    py.chmod(0o755)
    conf = tmp_path / "schedule.env"
    conf.write_text(f"export MODEL=m1 EVERY=1h AT='' WINDOW=1h PY={py}\n")
    env = {**os.environ, "POMLIA_MONITOR_CONF": str(conf)}
    for key in ("POMLIA_MONITOR_BEGIN", "POMLIA_MONITOR_SINCE", "POMLIA_MONITOR_ONCE"):
        env.pop(key, None)
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, check=False
    )


def test_a_chain_that_ended_is_not_told_as_busy(tmp_path: Path) -> None:
    """A run that could not submit its successor ended the job with 3, which every pomlia
    command answers for "busy, nothing done; retry": a script retrying on 3 would wait for a
    chain that no longer runs."""
    proc = chain_job(tmp_path, schedule=1, run=0)
    assert "ENDED with this run" in proc.stderr, proc.stderr
    assert proc.returncode not in (0, 1, BUSY_EXIT), proc.returncode


@pytest.mark.parametrize("schedule", [0, 1])
def test_a_busy_run_in_the_chain_is_told_as_busy(tmp_path: Path, schedule: int) -> None:
    """A ``monitor run`` refused because another run of the model is at work keeps its own
    status, whether or not the chain goes on."""
    assert chain_job(tmp_path, schedule=schedule, run=BUSY_EXIT).returncode == BUSY_EXIT


def test_an_alarm_ends_the_job_completed(tmp_path: Path) -> None:
    """1 (an alarm: the report is written) is no failure of the job."""
    assert chain_job(tmp_path, schedule=0, run=1).returncode == 0
