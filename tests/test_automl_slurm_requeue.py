"""A study's trial requeued by Slurm's time limit on the real single-node Slurm, end to end: Slurm
signals the trial job (USR2, ``signal_delay_s`` before its limit), the job checkpoints and is
requeued, its next attempt resumes from the last epoch checkpoint, the driver and the trial's
log say so, and the study finishes with the trial's whole span in its record.

To keep it short and certain, the trial starts with a long limit; once it has checkpointed an
epoch the test stops its process (SIGSTOP) and lowers the job's limit (``scontrol update
TimeLimit``) so that Slurm's own time-limit warning comes at its next check (every 30 s). The
stopped trial cannot finish before that check however fast the machine (a 50-epoch trial that
kept training did once, 28 s after the limit was lowered, and the test failed); once the
warning is pending the process continues (Slurm wakes it with SIGCONT; the test does if Slurm
has not) and handles it. After the requeue the limit is raised again so the next attempt can
finish. The signal and the requeue are Slurm's and submitit's, as at a limit given at
submission."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.engine import read_state
from pomlia_hpc.automl.space import SpaceOptions
from pomlia_hpc.automl.study import StudyResult, TrialLog, create_study, run_study
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, tiny_task

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm")]

#: Enough epochs that the trial is still training when the test stops it (the test looks for
#: the first epoch checkpoint every 0.2 s; an epoch takes about 0.5 s on a CI core, 2 s on a
#: busy one) and that its second attempt trains some.
EPOCHS = 10

#: The bit of SIGUSR2 in /proc/PID/status's pending-signal masks.
USR2_BIT = 1 << (signal.SIGUSR2 - 1)


def _trial_job(reg: Registry) -> Job | None:
    runs = records.study_runs(reg, "rq")
    if not runs or runs[0].job_id is None:
        return None
    with reg.session() as s:
        return s.get(Job, runs[0].job_id)


def _config_dir(configs: Path) -> Path:
    """The one trial's folder under ``configs`` (not there yet: ``configs`` itself, no state)."""
    return next(configs.glob("*"), configs)


def _sacct(job_id: str, field: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", field],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def _job_field(job_id: str, key: str) -> str:
    """``key`` of the job in ``scontrol show job`` (slurmctld's view, at once)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(rf"\b{key}=(\S+)", out)
    assert m is not None, out
    return m.group(1)


def _elapsed_s(job_id: str) -> int:
    h, m, s = (int(x) for x in _sacct(job_id, "Elapsed").split("-")[-1].split(":"))
    return h * 3600 + m * 60 + s


def _limit(job_id: str, minutes: int) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], check=True)


def _task_pid(job_id: str) -> int:
    """The process of the job's step 0, task 0: the trial (its batch script runs srun)."""
    out = subprocess.run(
        ["scontrol", "listpids", job_id], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    pids = [int(r[0]) for r in (line.split() for line in out[1:]) if r[2:4] == ["0", "0"]]
    assert len(pids) == 1, f"no trial process (ended already? raise EPOCHS): {out}"
    return pids[0]


def _status(pid: int) -> dict[str, str] | None:
    """/proc/PID/status as a dict, None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _wake_at_usr2(pid: int, timeout_s: float) -> None:
    """Wait until the stopped process ``pid`` has a USR2 pending, then continue it; return
    once it runs or has ended. Slurm sends SIGCONT after its signal itself; the test's own
    SIGCONT is for a Slurm that does not, and is sent only once the USR2 is there."""
    deadline = time.time() + timeout_s
    while (st := _status(pid)) is not None and st["State"].startswith("T"):
        if (int(st["ShdPnd"], 16) | int(st["SigPnd"], 16)) & USR2_BIT:
            os.kill(pid, signal.SIGCONT)
        assert time.time() < deadline, f"no USR2 from Slurm within {timeout_s} s: {st}"
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_a_trial_requeued_at_its_time_limit_resumes_and_is_recorded_whole(
    workspace: Workspace,
) -> None:
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(512, 24, 24))
    spec = create_study(
        reg, workspace, "blood", name="rq", n_trials=1, max_epochs=EPOCHS, min_epochs=EPOCHS,
        parallel=1, optimizer="random", executor="slurm-local",
        space=SpaceOptions(archs=("small_cnn",)), initial_configs=[FAST], final_full_budget=False,
    )  # fmt: skip
    said: list[str] = []
    out: dict[str, StudyResult | BaseException] = {}

    def drive() -> None:
        try:
            out["result"] = run_study(reg, workspace, spec, on_update=TrialLog(said.append))
        except BaseException as exc:  # re-raised below, in the test's thread
            out["result"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    configs = workspace.path("runs", "rq", "configs")
    deadline = time.time() + 180
    while (read_state(_config_dir(configs)) or {}).get("epoch", 0) < 1:
        assert time.time() < deadline, "the trial checkpointed no epoch within 180 s"
        assert driver.is_alive(), out
        time.sleep(0.2)
    job = _trial_job(reg)
    assert job is not None
    sid = job.scheduler_id
    pid = _task_pid(sid)
    os.kill(pid, signal.SIGSTOP)  # it trains no further until Slurm's warning is pending
    try:
        assert (read_state(_config_dir(configs)) or {}).get("epoch", 0) < EPOCHS, (
            "the trial ended before it was stopped: raise EPOCHS"
        )
        # The limit Slurm warns at its next check (<= 30 s; slurm-local's signal comes 30 s
        # before the limit): at least 31 s ahead, so that the check cannot find the job past it.
        _limit(sid, math.ceil((_elapsed_s(sid) + 31) / 60))
        _wake_at_usr2(pid, timeout_s=90)
    finally:  # never leave it stopped
        if (st := _status(pid)) is not None and st["State"].startswith("T"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    # Slurm's own count (slurmctld's, not sacct's, which may lag behind the short pending
    # state between two attempts).
    deadline = time.time() + 120
    while int(_job_field(sid, "Restarts")) < 1:
        state = _job_field(sid, "JobState")
        assert state != "COMPLETED", "the trial ended without being requeued"
        assert time.time() < deadline, f"no requeue within 120 s: {state}"
        assert driver.is_alive(), out
        time.sleep(0.5)
    _limit(sid, 30)  # the next attempt finishes
    driver.join(timeout=360)
    assert not driver.is_alive(), "the study did not finish"
    result = out["result"]
    if isinstance(result, BaseException):
        raise result

    (run,) = records.study_runs(reg, "rq")
    assert run.status == "ok", run.error
    # The trial's whole span, not the last attempt's (was start_epoch = the resume point).
    assert run.metrics["start_epoch"] == 0 and run.metrics["epochs_run"] == EPOCHS
    assert len(run.metrics["history"]) == EPOCHS  # every epoch once
    assert result.spent_epochs == EPOCHS
    with reg.session() as s:
        row = s.get(Job, run.job_id)
        assert row is not None and row.state == "COMPLETED" and row.requeue_count >= 1
    # The driver said the requeue, the trial's log where its second attempt resumed.
    assert any(re.search(r"job \d+ requeued \(attempt 2 of 4 ", x) for x in said), said
    log = Path(row.folder) / f"{sid}_0_log.out"
    resumed = re.findall(
        r"; resumed from epoch (\d+) \(checkpoint .+, attempt 2\)", log.read_text()
    )
    assert resumed and int(resumed[0]) >= 1, log.read_text()[-3000:]
