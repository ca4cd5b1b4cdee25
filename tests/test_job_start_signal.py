"""The checkpoint signal (USR2) and the time limit, as a failed job's cause says them.

A USR2 that reaches a Slurm job while it starts (unpickling its callable, before submitit's
handler is in place) is held back and acted on once the handler is there: the job is requeued,
not killed. A job the signal killed anyway, and one submitit stopped requeueing after too many
time-outs, get a cause that names the time limit and ``time_min`` wherever the cause is
recorded: by the submitting process, by a restarted driver (attached job), and by a ``sacct``
refresh (``jobs list``/``show``) with nobody waiting for the job.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.cluster.attach import AttachedJob
from pomlia_hpc.cluster.failures import log_cause
from pomlia_hpc.cluster.records import (
    SchedulerState,
    merge_scheduler_state,
    record_submission,
    refresh_slurm_jobs,
    update_job,
)
from pomlia_hpc.cluster.refusal import signal_delay_warning
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns
from tests.fixtures.fake_slurm import FakeSlurm
from tests.fixtures.waiting import wait_until

GAVE_UP = (
    "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.\n"
)
USR2_KILLED = "srun: error: vm: task 0: User defined signal 2\n"


def _row(reg: Registry, rid: int | None) -> Job:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        s.expunge(row)
        return row


def test_a_usr2_while_the_job_starts_requeues_it(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg, time_min=2)
    h = ex.submit(jobfns.SignalledAtStart())
    assert h.result() == [1]  # the first attempt was requeued, the second ran it
    attempts = [a["state"] for a in fake_slurm.tasks()[h.job_id]["attempts"]]
    assert attempts == ["REQUEUED", "COMPLETED"]
    row = _row(reg, h.record_id)
    assert (row.state, row.requeue_count) == ("COMPLETED", 1)
    assert (row.meta["time_min"], row.meta["signal_delay_s"]) == (2, 30)  # for a later cause


def test_causes_name_the_time_limit() -> None:
    gave_up = log_cause(GAVE_UP, attempts=4, limits=(2, 10))
    assert gave_up is not None
    assert "timed out after 4 attempts at its 2 min time limit (signal 10 s before it)" in gave_up
    assert gave_up.endswith("raise time_min")
    killed = log_cause(USR2_KILLED, limits=(1, 30))
    assert killed is not None and "killed by the checkpoint signal (USR2)" in killed
    assert "sent 30 s before the 1 min time limit" in killed and "60 s earlier" in killed
    assert killed.endswith("raise time_min")
    assert log_cause("", exit_code="0:12") is not None  # sacct's step: signal 12 (USR2)
    assert "its time limit" in (log_cause(GAVE_UP) or "")  # limits not recorded
    assert log_cause("ValueError: x", exit_code="1:0") is None


def test_a_sacct_refresh_reads_the_cause_from_the_job_log(tmp_path: Path) -> None:
    """Nobody waits for the job (its driver was killed): ``jobs list`` still says why."""
    (tmp_path / "31_0_log.out").write_text("Requeued job 31 (0 remaining timeouts)\n" + GAVE_UP)
    row = Job(
        backend="slurm",
        scheduler_id="31",
        folder=str(tmp_path),
        state="RUNNING",
        requeue_count=2,
        exit_cause=None,
        meta={"time_min": 2, "signal_delay_s": 10},
    )
    new = merge_scheduler_state(row, SchedulerState("FAILED", exit_code="1:0", requeue_count=3))
    assert new["exit_cause"].startswith("timed out after 4 attempts at its 2 min time limit")
    (tmp_path / "32_0_log.err").write_text(USR2_KILLED)
    row = Job(backend="slurm", scheduler_id="32", folder=str(tmp_path), state="RUNNING")
    row.requeue_count, row.meta = 0, {"time_min": 1, "signal_delay_s": 30}
    new = merge_scheduler_state(row, SchedulerState("FAILED", exit_code="12:0"))
    assert "killed by the checkpoint signal" in new["exit_cause"]
    row = Job(backend="slurm", scheduler_id="33", folder=str(tmp_path), state="RUNNING")
    row.requeue_count, row.meta = 0, {}
    new = merge_scheduler_state(row, SchedulerState("FAILED", exit_code="1:0"))
    assert new["exit_cause"] == "FAILED (exit code 1:0)"  # no log: the state as before


def test_a_restarted_driver_records_the_timeout_cause(tmp_path: Path, reg: Registry) -> None:
    (rid,) = record_submission(
        reg,
        backend="slurm",
        scheduler_ids=["41"],
        name="automl-x-1",
        folder=str(tmp_path),
        meta={"time_min": 2, "signal_delay_s": 10},
    )
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        s.expunge(row)
    error = "UncompletedJobError: Job not requeued because: timed-out too many times."
    job = AttachedJob(
        reg, row, has_result=lambda: False, failure=lambda: (error, "Traceback ...\n" + GAVE_UP)
    )
    job.update(SchedulerState("FAILED", exit_code="1:0", requeue_count=3))
    exc = job.failed()
    assert exc.cause.startswith("timed out after 4 attempts at its 2 min time limit")
    assert _row(reg, rid).exit_cause == exc.cause
    assert _row(reg, rid).traceback is not None  # jobs show keeps its traceback section


def test_the_count_is_of_the_attempts_that_ran(
    tmp_path: Path, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """Slurm requeued the job once before it started, then it hit its time limit at each of
    its 4 attempts and submitit gave up: the cause said "timed out 5 time(s)" (Slurm's
    requeues + 1), one more than the attempts that ran and than submitit counted. The fake
    Slurm runs the job (a real Slurm would take 4 time limits, minutes, to get there)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    fake_slurm.hold()
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg, time_min=1)
    h = ex.submit(jobfns.WaitsEveryAttempt(str(markers)))
    fake_slurm.set_state(h.job_id, "REQUEUED", started=False)  # e.g. its node failed at launch
    fake_slurm.set_state(h.job_id, "PENDING", new_attempt=True)
    fake_slurm.run(h.job_id, wait=False)

    def running(n: int) -> bool:
        return (markers / f"started-{n}").exists() and bool(
            fake_slurm.tasks()[h.job_id]["step_pid"]
        )

    for n in range(1, 5):
        wait_until(functools.partial(running, n), what=f"attempt {n} to run")
        # At a 1 min limit every USR2 is a time-out to submitit (submitit's own rule).
        subprocess.run(["scancel", "--signal=USR2", h.job_id], check=True)
    with pytest.raises(JobFailedError) as err:
        h.result()
    attempts = [a["state"] for a in fake_slurm.tasks()[h.job_id]["attempts"]]
    assert attempts == ["REQUEUED"] * 4 + ["FAILED"]
    assert err.value.cause.startswith(
        "timed out after 4 attempts at its 1 min time limit (signal 30 s before it)"
    ), err.value.cause
    row = _row(reg, h.record_id)
    assert (row.requeue_count, row.exit_cause) == (4, err.value.cause)
    # The same count where nobody waits for the job: a `jobs list` refresh (sacct's records).
    update_job(reg, int(row.id), state="RUNNING", exit_cause=None, requeue_count=3)
    refresh_slurm_jobs(reg, [int(row.id)])
    assert _row(reg, h.record_id).exit_cause == err.value.cause


def test_the_warning_counts_slurms_early_signal() -> None:
    # 10 s before a 2 min limit: Slurm may send it 70 s before, in the first half
    warning = signal_delay_warning(
        load_cluster_profile("slurm-local", time_min=2, signal_delay_s=10)
    )
    assert warning is not None and "up to 60 s earlier" in warning
    assert "killed outright" in warning and "raise time_min" in warning
    assert signal_delay_warning(load_cluster_profile("slurm-local")) is None  # 30 s of 30 min


def test_a_job_that_gives_up_ends_its_log_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A training refused its 4th requeue ended its .err in 121 lines of traceback through
    matplotlib's savefig, `UncompletedJobError: ... timed-out too many times` last; pomlia's
    one-line cause was in neither log file. The job's last line says it now."""
    from submitit.core.utils import UncompletedJobError

    from pomlia_hpc.cluster.jobstart import final_line

    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    why = "Job not requeued because: timed-out too many times."
    text = f"Traceback (most recent call last):\n  ...savefig...\n{why}\n"
    line = final_line(UncompletedJobError(why), text)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] error: the job gave up: timed out after 4 .*", line)
    assert "raise time_min" in line
    other = final_line(ValueError("bad value\nmore"), "Traceback ...\nValueError: bad value")
    assert other.endswith("error: the job gave up: ValueError: bad value"), other
