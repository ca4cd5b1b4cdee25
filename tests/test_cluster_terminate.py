"""What a SIGTERM to a driver means for its child jobs (pomlia_hpc.cluster.terminate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.terminate import (
    SIGTERM_CAUSE,
    JobCancelled,
    JobStopped,
    cancel_children_on_stop,
    cancelled_with_this_process,
    stop_cause,
)
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns


def _fake_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Run as Slurm job 4242 whose accounting answers with ``script`` (a shell body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    sacct.write_text(f"#!/bin/sh\n{script}\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")


def _sigterm_with_children(tmp_path: Path, reg: Registry) -> tuple[Any, Any, BaseException]:
    """A driver block that submits two local child jobs, one a restarted driver reattaches to
    (an AutoML trial: ``adoptable``) and one it does not, and gets a SIGTERM; returns
    (adoptable child, other child, what the block raised)."""
    child: list[Any] = []
    with pytest.raises(JobStopped) as info, cancel_children_on_stop():
        ex = Executor.from_profile("local", tmp_path / "jobs", reg)
        child += [ex.submit(jobfns.sleep_for, 60), ex.submit(jobfns.sleep_for, 60)]
        child[0].adoptable = True
        for c in child:
            c.job(30)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    return child[0], child[1], info.value


def _state(reg: Registry, rid: int) -> tuple[str, str | None]:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        return row.state, row.exit_cause


@pytest.mark.parametrize(
    "answer", ["echo REQUEUED", "echo TIMEOUT", "echo 'PREEMPTED '", "exit 1", "sleep 10"]
)
def test_a_slurm_stop_that_is_no_cancellation_leaves_the_children_running(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """A requeue, time limit or preemption (or a state that cannot be read) cancelled every
    child job of a `--requeue` pipeline driver: now the ones the requeued driver reattaches to
    run on, and only the others (which it would submit a second time) are cancelled."""
    _fake_sacct(tmp_path, monkeypatch, answer)
    kept, other, exc = _sigterm_with_children(tmp_path, reg)
    try:
        assert not isinstance(exc, JobCancelled)
        assert "stopped by Slurm" in str(exc) and "run on" in str(exc)
        assert stop_cause(exc) == str(exc)
        assert kept.record_id is not None and other.record_id is not None
        assert _state(reg, kept.record_id)[0] != "CANCELLED"
        assert not kept.done()
        assert _state(reg, other.record_id)[0] == "CANCELLED"
    finally:
        kept.cancel("test over")


def test_a_slurm_job_cancelled_by_scancel_cancels_its_children(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_sacct(tmp_path, monkeypatch, "echo 'CANCELLED by 1000'")
    *children, exc = _sigterm_with_children(tmp_path, reg)
    assert isinstance(exc, JobCancelled) and str(exc) == SIGTERM_CAUSE
    for child in children:  # adoptable or not: a cancellation takes every child along
        assert child.record_id is not None
        assert _state(reg, child.record_id) == (
            "CANCELLED",
            f"{SIGTERM_CAUSE}, with the job that submitted it",
        )


def test_a_scancel_recorded_late_by_accounting_is_still_a_cancellation(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slurmdbd records a scancel asynchronously: the first answers may still say RUNNING.
    counter = tmp_path / "asked"
    _fake_sacct(
        tmp_path,
        monkeypatch,
        f"echo x >> {counter}; "
        f"if [ $(wc -l < {counter}) -lt 3 ]; then echo RUNNING; else echo CANCELLED; fi",
    )
    kept, _, exc = _sigterm_with_children(tmp_path, reg)
    assert isinstance(exc, JobCancelled)
    assert kept.record_id is not None
    assert _state(reg, kept.record_id)[0] == "CANCELLED"


def test_sigterm_outside_slurm_is_a_cancellation(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _, child, exc = _sigterm_with_children(tmp_path, reg)
    assert isinstance(exc, JobCancelled)
    assert child.record_id is not None
    assert _state(reg, child.record_id)[0] == "CANCELLED"
    # what the CLI's Ctrl-C message reports (it said "Slurm jobs run on" whatever happened)
    assert child.name in cancelled_with_this_process()


def test_a_second_sigterm_while_stopping_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second signal raised again inside the cleanup (orphaning the children not yet
    cancelled): once a cause is noted, further SIGTERMs are no-ops."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    second: list[BaseException] = []
    with pytest.raises(JobCancelled), cancel_children_on_stop():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except JobStopped as first:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # raised a second stop here
                time.sleep(0.2)
            except JobStopped as again:
                second.append(again)
            raise first from None
    assert not second


def test_a_cancelled_driver_job_ends_without_a_traceback(tmp_path: Path) -> None:
    # What a pipeline stage or driver job runs: the cause in one line, exit 1, no traceback.
    code = (
        "import os, signal, time\n"
        "from pomlia_hpc.cluster.terminate import cancel_children_on_stop, quiet_cancellation\n"
        "with quiet_cancellation(), cancel_children_on_stop():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)\n"
        "    except BaseException as exc:\n"
        "        print(f'[encoder] failed: {exc}', flush=True); raise\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1
    assert "[encoder] failed:" in proc.stdout
    assert "Traceback" not in proc.stderr and "JobCancelled" not in proc.stderr, proc.stderr


def test_a_requeued_driver_job_ends_without_a_traceback(tmp_path: Path) -> None:
    """`scontrol requeue` of a pipeline stage job left a `JobStopped` traceback ending in
    `srun: error: ... Exited with exit code 1` in its .err: the attempt did not fail."""
    code = (
        "import os, signal, time\n"
        "from pomlia_hpc.cluster.terminate import cancel_children_on_stop, quiet_cancellation\n"
        "with quiet_cancellation(), cancel_children_on_stop():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\necho REQUEUED\n")
    (bin_dir / "sacct").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "JobRequeued" not in proc.stderr, proc.stderr
    assert "stopping: stopped by Slurm (SIGTERM, job state REQUEUED" in proc.stderr
