"""The Slurm queries of ``cluster/sacct.py`` and the wait of ``cluster/cancel.py`` for
cancelled array parts, with fake ``sacct``/``squeue``/``scancel`` scripts first on PATH (fast,
no cluster needed): what each call is allowed to take, and its error."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pomlia_hpc.automl.liveness import slurm_job_ended
from pomlia_hpc.cluster import cancel, records
from pomlia_hpc.cluster.handle import job_attempts
from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.cluster.sacct import SchedulerState, sacct_states, squeue_ids
from pomlia_hpc.errors import ClusterError, SlurmUnavailableError
from pomlia_hpc.registry import Job, Registry


def _on_path(monkeypatch: pytest.MonkeyPatch, bin_dir: Path, **scripts: str) -> None:
    """Shell scripts ``name=body`` in ``bin_dir``, first on PATH for this test."""
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _spy_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, float]]:
    """Note each ``subprocess.run`` from now on: (command, its time limit, seconds it took)."""
    real_run = subprocess.run
    calls: list[tuple[str, float, float]] = []

    def spy(cmd: list[str], *args: Any, **kw: Any) -> Any:
        begun = time.monotonic()
        try:
            return real_run(cmd, *args, **kw)
        finally:
            calls.append((cmd[0], kw["timeout"], time.monotonic() - begun))

    monkeypatch.setattr(subprocess, "run", spy)
    return calls


def test_the_controllers_look_at_a_requeued_job_keeps_within_the_polls_one_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job sacct says is REQUEUED is asked of squeue too; squeue got the whole limit again
    after sacct had used part of it, so one poll could take twice its limit."""
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct="sleep 0.3; echo '41|REQUEUED|2026-01-01T10:00:00|2026-01-01T10:05:00|0:0'",
        squeue="echo '41|CANCELLED|2026-01-01T10:06:00'",
    )
    calls = _spy_runs(monkeypatch)
    limit_s = 30.0
    states = sacct_states(["41"], timeout_s=limit_s)
    assert states["41"].state == "CANCELLED"  # the controller was asked
    (sacct, sacct_limit, sacct_took), (squeue, squeue_limit, _) = calls
    assert (sacct, squeue, sacct_limit) == ("sacct", "squeue", limit_s)
    assert sacct_took + squeue_limit <= limit_s  # what sacct took is not given again


def test_a_squeue_that_cannot_be_run_is_one_cluster_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a missing squeue was a ClusterError: one that is there but cannot be run (not
    executable) raised PermissionError, a traceback from `jobs list`, and a restarted
    driver's poll of its attached jobs died of it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\n")  # mode 0644: cannot be run
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ClusterError, match=r"^squeue could not be run: .*Permission denied"):
        squeue_ids(["41"])


def test_the_wait_for_cancelled_array_parts_keeps_to_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for cancelled parts of a split array to leave the queue (ARRAY_CANCEL_WAIT_S)
    gave each squeue its own minute: one that hung near the end took the wait that far past
    it, while the user waited for the failed submission's error."""
    _on_path(monkeypatch, tmp_path / "bin", scancel="exit 0", squeue="echo 41_0")  # listed
    monkeypatch.setattr(cancel, "ARRAY_CANCEL_WAIT_S", 1.0)
    limits: list[float] = []

    def squeue_ids_spy(ids: list[str], timeout_s: float = 60.0) -> set[str]:
        limits.append(timeout_s)
        return squeue_ids(ids, timeout_s)

    monkeypatch.setattr(cancel, "squeue_ids", squeue_ids_spy)
    assert not cancel.cancel_array_parts(["41"], ["41_0"], None, [], "cancelled by the test")
    assert limits and max(limits) <= 1.0  # each squeue within what is left of the wait


def _unfinished_row(reg: Registry, tmp_path: Path) -> None:
    """One PENDING Slurm row, job 41."""
    record_submission(reg, backend="slurm", scheduler_ids=["41"], name="t", folder=str(tmp_path))


def test_a_listings_squeue_for_jobs_sacct_does_not_know_keeps_within_the_polls_one_limit(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs list` asks squeue about the unfinished jobs sacct does not know (to record the
    LOST ones); that squeue got the whole `cluster.list_sacct_timeout_s` again after sacct
    had used part of it, so a listing could wait twice the limit its help and the guide
    name."""
    _unfinished_row(reg, tmp_path)
    _on_path(monkeypatch, tmp_path / "bin", sacct="sleep 0.3", squeue="echo 41")
    calls = _spy_runs(monkeypatch)
    limit_s = 30.0
    assert records.refresh_slurm_jobs(reg, lost=True, timeout_s=limit_s) == 0  # still queued
    (sacct, sacct_limit, sacct_took), (squeue, squeue_limit, _) = calls
    assert (sacct, squeue, sacct_limit) == ("sacct", "squeue", limit_s)
    assert sacct_took + squeue_limit <= limit_s  # what sacct took is not given again


def test_squeue_is_not_asked_when_sacct_took_the_polls_whole_limit(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing of the limit left after sacct, the listing's poll says so in words
    (the states are then shown as last recorded) instead of waiting for squeue."""
    _unfinished_row(reg, tmp_path)

    def sacct_taking_all(job_ids: Any, timeout_s: float = 60.0) -> dict[str, SchedulerState]:
        time.sleep(timeout_s)
        return {}  # knows none of them

    def squeue_not_asked(*args: Any, **kw: Any) -> set[str]:
        raise AssertionError("squeue was asked with no time left")

    monkeypatch.setattr(records, "sacct_states", sacct_taking_all)
    monkeypatch.setattr(records, "squeue_ids", squeue_not_asked)
    with pytest.raises(SlurmUnavailableError) as err:
        records.refresh_slurm_jobs(reg, lost=True, timeout_s=0.2)
    assert str(err.value) == (
        "squeue: not asked whether 1 job(s) sacct does not know are still queued: sacct took "
        "the whole 0.2 s"
    )


#: sacct's line for job 41 whose last attempt ended by a node failure (or a preemption).
def _sacct_time(ago_s: float) -> str:
    """The time ``ago_s`` seconds ago as sacct prints it (this machine's local time)."""
    return (datetime.now() - timedelta(seconds=ago_s)).isoformat(timespec="seconds")


#: sacct's line for job 41 that ended an hour ago (within its requeue window) in ``{state}``.
ENDED_41 = f"echo '41|{{state}}|{_sacct_time(3900)}|{_sacct_time(3600)}|0:0'"


@pytest.mark.parametrize(
    ("state", "squeue", "said"),
    [
        # requeued: the controller lists its next attempt, which accounting shows only later
        ("NODE_FAIL", "echo '41|PENDING|N/A'", ("PENDING", 1, False)),
        ("PREEMPTED", "echo '41|RUNNING|N/A'", ("RUNNING", 1, False)),
        # its attempt still ends: neither requeued nor ended yet
        ("NODE_FAIL", "echo '41|COMPLETING|N/A'", ("COMPLETING", 0, False)),
        # not requeued: the controller's final word, or accounting's once it forgot the job
        ("NODE_FAIL", "echo '41|NODE_FAIL|2026-01-01T10:05:00'", ("NODE_FAIL", 0, False)),
        ("PREEMPTED", "echo 'Invalid job id specified' >&2; exit 1", ("PREEMPTED", 0, False)),
        # requeued, then cancelled while it waited to run again
        ("NODE_FAIL", "echo '41|CANCELLED|2026-01-01T10:07:00'", ("CANCELLED", 1, False)),
        # the controller cannot say: Slurm may run it again
        ("NODE_FAIL", "echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1", None),
    ],
)
def test_a_node_failure_or_preemption_is_asked_of_the_controller(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
    squeue: str,
    said: tuple[str, int, bool] | None,
) -> None:
    """sacct shows NODE_FAIL (or PREEMPTED) for a job Slurm requeued until its next attempt's
    line comes; pomlia took that for the job's end at once (PREEMPTED after 120 s), and the
    requeued job ran again unwatched while its driver recorded it ended."""
    _on_path(monkeypatch, tmp_path / "bin", sacct=ENDED_41.format(state=state), squeue=squeue)
    st = sacct_states(["41"], timeout_s=30.0)["41"]
    if said is None:
        assert (st.state, st.may_requeue) == (state, True)
        return
    assert (st.state, st.requeue_count, st.may_requeue) == said
    assert (st.ended_at is None) is (st.state in ("PENDING", "RUNNING", "COMPLETING"))


def test_a_poll_leaves_a_row_whose_requeue_the_controller_could_not_confirm(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NODE_FAIL that squeue could not confirm is not recorded as the job's end (it may run
    again), and the poll says why in one error, which a listing shows."""
    _unfinished_row(reg, tmp_path)
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct=ENDED_41.format(state="NODE_FAIL"),
        squeue="echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1",
    )
    with pytest.raises(SlurmUnavailableError, match=r"whether Slurm requeued job\(s\) 41 "):
        records.refresh_slurm_jobs(reg, timeout_s=30.0)
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
        assert (row.state, row.ended_at) == ("PENDING", None)


@pytest.mark.parametrize(
    ("acct", "pending", "state"),
    [
        ("NODE_FAIL", "41_[4-7%2]", "NODE_FAIL"),
        ("NODE_FAIL", "41_[1,3-5]", "PENDING"),
        ("REQUEUED", "41_[4-7%2]", "LOST"),  # forgotten by the controller: it never ran again
        ("REQUEUED", "41_[1,3-5]", "REQUEUED"),
    ],
)
def test_an_array_task_is_queued_only_when_the_controller_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acct: str, pending: str, state: str
) -> None:
    """The controller prints an array's tasks that wait to start as one line (41_[4-7]): a
    requeued task it had forgotten counted as queued (never LOST) while other tasks of its
    array still waited, for hours with a throttled array."""
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct=f"echo '41_3|{acct}|{_sacct_time(3900)}|{_sacct_time(3600)}|0:0'",
        squeue=f"echo '{pending}|PENDING|N/A'",
    )
    assert sacct_states(["41_3"], timeout_s=30.0)["41_3"].state == state


def test_a_driver_whose_requeue_the_controller_could_not_confirm_has_not_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AutoML driver job that sacct reports NODE_FAIL counted as ended (its study could be
    taken over) although Slurm may have requeued it; when squeue cannot say, it may still
    run."""
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct=ENDED_41.format(state="NODE_FAIL"),
        squeue="echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1",
    )
    assert slurm_job_ended("41") is None


@pytest.mark.parametrize("state", ["NODE_FAIL", "PREEMPTED"])
def test_a_node_failure_past_its_requeue_window_is_final_without_the_controller(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """A job that sacct says ended NODE_FAIL (or PREEMPTED) days ago was asked of squeue at
    every look (`jobs show`, `pipeline status`, a reattached driver): with squeue slow or
    down, every such poll raised, and the job counted as perhaps requeued, for good."""
    _unfinished_row(reg, tmp_path)
    asked = tmp_path / "squeue-asked"
    days = records.REQUEUE_WINDOW_S + 3600
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct=f"echo '41|{state}|{_sacct_time(days + 600)}|{_sacct_time(days)}|0:0'",
        squeue=f"touch {asked}; echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1",
    )
    st = sacct_states(["41"], timeout_s=30.0)["41"]
    assert (st.state, st.may_requeue) == (state, False)
    records.refresh_slurm_jobs(reg, [1], timeout_s=30.0)
    with reg.session() as s:
        assert s.scalars(select(Job)).one().state == state
    assert slurm_job_ended("41") == state
    assert not asked.exists()


def test_a_requeue_is_counted_though_another_jobs_node_failure_is_unconfirmed(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AutoML driver counts its trials' attempts in one poll; when squeue could not
    confirm one trial's node failure, the poll raised and no trial's requeue was counted (a
    trial requeued at its time limit went unmentioned for as long as squeue was down)."""
    t = [_sacct_time(3600 - 60 * m) for m in range(4)]
    lines = [f"41|REQUEUED|{t[0]}|{t[1]}|0:0", f"41|RUNNING|{t[2]}|Unknown|0:0"]
    lines.append(f"42|NODE_FAIL|{t[0]}|{t[3]}|0:0")
    _on_path(
        monkeypatch,
        tmp_path / "bin",
        sacct="printf '%s\\n' " + " ".join(f"'{line}'" for line in lines),
        squeue="echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1",
    )
    rids = record_submission(
        reg, backend="slurm", scheduler_ids=["41", "42"], name="t", folder=str(tmp_path)
    )
    assert job_attempts(reg, rids) == {rids[0]: 2, rids[1]: 1}


@pytest.mark.parametrize("seen_queued", [True, False])
def test_a_requeued_job_cancelled_while_it_waited_keeps_its_cancel_once_forgotten(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, seen_queued: bool
) -> None:
    """A job requeued after its node failed and cancelled before its next attempt started
    keeps sacct's NODE_FAIL line for good; once the controller had forgotten it (MinJobAge),
    a poll of its row (`jobs show`, `pipeline status`) recorded the node failure over the
    cancel the controller had confirmed. ``seen_queued``: whether a poll saw the job queued
    again before the cancel."""
    _unfinished_row(reg, tmp_path)
    line = f"41|NODE_FAIL|{_sacct_time(900)}|{_sacct_time(600)}|0:0"
    _on_path(monkeypatch, tmp_path / "bin", sacct=f"echo '{line}'", squeue="echo '41|PENDING|N/A'")
    squeue = tmp_path / "bin" / "squeue"
    said = [
        "echo '41|PENDING|N/A'",  # requeued
        f"echo '41|CANCELLED|{_sacct_time(60)}'",  # cancelled while it waited
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",  # forgotten
    ][0 if seen_queued else 1 :]
    seen = []
    for body in said:
        squeue.write_text(f"#!/bin/sh\n{body}\n")
        records.refresh_slurm_jobs(reg, [1], timeout_s=30.0)
        with reg.session() as s:
            row = s.scalars(select(Job)).one()
            seen.append((row.state, row.requeue_count, row.ended_at is None))
    queued = [("PENDING", 1, True)] if seen_queued else []
    assert seen == [*queued, ("CANCELLED", 1, False), ("CANCELLED", 1, False)]


def test_a_whole_array_is_listed_by_its_pending_line_and_its_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`squeue -j 189` prints a pending array as one line, `189_[0-5%2]`, and its started
    tasks as `189_0`, never `189`: asked for the whole array, squeue_ids listed nothing, so an
    array still pending could be taken as unknown to the controller."""
    _on_path(monkeypatch, tmp_path / "bin", squeue="printf '189_[0-5%%2]\\n190_3\\n191\\n'")
    asked = ["189", "189_4", "190", "190_2", "191", "192", "1890"]
    assert squeue_ids(asked) == {"189", "189_4", "190", "191"}
