"""Job rows against what the scheduler says: sacct parsing, state mapping, the poll's locking.

Real Slurm cannot be made to fail a node or preempt a job here; those states are fed to the
pure mapping function as sacct lines (or, for the poll, through a stubbed ``sacct_states``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster import records
from pomlia_hpc.cluster.records import (
    REQUEUE_WINDOW_S,
    UNCONFIRMED_META,
    SchedulerState,
    mark_all_cancelled,
    merge_scheduler_state,
    parse_sacct,
    record_submission,
    refresh_slurm_jobs,
    utcnow,
)
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry
from tests.fixtures.fake_slurm import FakeSlurm


def _sacct_time(t: datetime) -> str:
    """``t`` as sacct prints it: this machine's local time, no zone."""
    return t.astimezone().replace(tzinfo=None).isoformat(timespec="seconds")


def _row(reg: Registry, rid: int) -> Job:
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        return row


def test_node_fail_then_requeued_then_completed(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    t = [_sacct_time(now + timedelta(minutes=m)) for m in range(4)]
    answers = iter(
        [
            f"77|NODE_FAIL|{t[0]}|{t[1]}|0:0",
            f"77|NODE_FAIL|{t[0]}|{t[1]}|0:0\n77|RUNNING|{t[2]}|Unknown|0:0",
            f"77|NODE_FAIL|{t[0]}|{t[1]}|0:0\n77|COMPLETED|{t[2]}|{t[3]}|0:0",
        ]
    )
    monkeypatch.setattr(records, "sacct_states", lambda ids, *_: parse_sacct(next(answers)))
    (rid,) = record_submission(reg, backend="slurm", scheduler_ids=["77"], name="x", folder="/")

    refresh_slurm_jobs(reg)
    row = _row(reg, rid)
    assert (row.state, row.exit_cause) == ("NODE_FAIL", "NODE_FAIL (exit code 0:0)")
    assert row.ended_at == now + timedelta(minutes=1)

    refresh_slurm_jobs(reg)  # a routine poll still looks at a recent NODE_FAIL row
    row = _row(reg, rid)
    assert (row.state, row.requeue_count, row.ended_at, row.exit_cause) == (
        "RUNNING",
        1,
        None,
        None,
    )
    assert row.started_at == now + timedelta(minutes=2)

    refresh_slurm_jobs(reg)
    row = _row(reg, rid)
    assert (row.state, row.exit_cause) == ("COMPLETED", None)
    assert row.ended_at == now + timedelta(minutes=3)


def test_preempted_without_a_later_attempt_is_final() -> None:
    st = parse_sacct("5|PREEMPTED|2026-01-01T01:00:00|2026-01-01T02:00:00|0:0")["5"]
    assert st.state in records.FINAL_STATES
    new = merge_scheduler_state(Job(state="RUNNING", requeue_count=0), st)
    assert new["state"] == "PREEMPTED" and new["ended_at"] == st.ended_at
    assert new["exit_cause"] == "PREEMPTED (exit code 0:0)"
    requeued = parse_sacct(
        "5|PREEMPTED|2026-01-01T01:00:00|2026-01-01T02:00:00|0:0\n5|PENDING|Unknown|Unknown|0:0"
    )["5"]
    assert (requeued.state, requeued.requeue_count) == ("PENDING", 1)
    assert merge_scheduler_state(Job(state="PREEMPTED", requeue_count=0), requeued)["state"] == (
        "PENDING"
    )


def test_stale_answer_does_not_undo_a_recorded_cancellation() -> None:
    row = Job(state="CANCELLED", requeue_count=0, exit_cause="cancelled by user")
    assert merge_scheduler_state(row, SchedulerState("RUNNING")) == {}


def test_sacct_times_are_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        st = parse_sacct("9|COMPLETED|2026-07-01T12:00:00|2026-07-01T12:30:00|0:0")["9"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert st.started_at == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # CEST is UTC+2


def test_unchanged_state_changes_no_row(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    st = SchedulerState("RUNNING", datetime(2026, 1, 1, 3, tzinfo=UTC), None, "0:0", 0)
    monkeypatch.setattr(records, "sacct_states", lambda ids, *_: {"77": st})
    (rid,) = record_submission(reg, backend="slurm", scheduler_ids=["77"], name="x", folder="/")
    assert [refresh_slurm_jobs(reg) for _ in range(3)] == [1, 0, 0]
    row = _row(reg, rid)
    assert row.started_at == st.started_at and row.submitted_at.tzinfo is not None


def test_poll_holds_no_lock_while_sacct_runs(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_submission(reg, backend="slurm", scheduler_ids=["77"], name="x", folder="/")
    other = Registry(reg.url, busy_timeout_s=0.2)
    written: list[int] = []

    def sacct_while_others_write(ids: Any, *_: Any) -> dict[str, SchedulerState]:
        # While sacct runs (up to a minute on a busy cluster), others must be able to write.
        written.extend(
            record_submission(other, backend="local", scheduler_ids=["1"], name="y", folder="/")
        )
        return {"77": SchedulerState("RUNNING")}

    monkeypatch.setattr(records, "sacct_states", sacct_while_others_write)
    assert refresh_slurm_jobs(reg) == 1
    other.dispose()
    assert len(written) == 1


def test_sbatch_script_records_the_job_and_names_sbatchs_refusal(
    reg: Registry, fake_slurm: FakeSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_slurm.hold()  # the script is only submitted here, never run
    folder = tmp_path / "deploy"
    folder.mkdir()
    script = folder / "serve.sbatch"
    script.write_text("#!/bin/sh\n#SBATCH --job-name=pomlia-serve\nsleep 1\n")
    rid = records.sbatch_script(reg, script, name="pomlia-serve", meta={"deployment_id": 3})
    (task,) = fake_slurm.submitted()
    row = _row(reg, rid)
    assert (row.scheduler_id, row.backend, row.state) == (str(task["job_id"]), "slurm", "PENDING")
    assert row.meta == {"deployment_id": 3} and row.folder == str(folder)

    fake_slurm.fail_next("sbatch", "sbatch: error: invalid partition specified: gpu")
    with pytest.raises(ClusterError, match="sbatch refused: sbatch: error: invalid"):
        records.sbatch_script(reg, script, name="pomlia-serve")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ClusterError, match="sbatch not found"):
        records.sbatch_script(reg, script, name="pomlia-serve")


def test_a_sacct_that_hangs_is_one_cluster_error_after_the_timeout(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    sacct.write_text("#!/bin/sh\nsleep 30\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    (rid,) = records.record_submission(
        reg, backend="slurm", scheduler_ids=["4242"], name="x", folder=str(tmp_path)
    )
    began = time.monotonic()
    with pytest.raises(
        ClusterError, match=r"^sacct: Slurm.s accounting daemon .* did not answer within 0\.5 s"
    ):
        records.refresh_jobs(reg, [rid], timeout_s=0.5)
    assert time.monotonic() - began < 10
    assert _row(reg, rid).state == "PENDING"  # as recorded


def test_routine_polls_ask_about_the_cancels_slurm_has_not_confirmed(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which CANCELLED rows a routine poll asks sacct about (SQLite and PostgreSQL): those
    pomlia marked itself, for a day; not one Slurm said was CANCELLED, nor a mark older than
    the day. The first final state Slurm reports replaces the mark, and drops it."""
    ids = record_submission(
        registry, backend="slurm", scheduler_ids=["1", "2", "3", "4"], name="x", folder="/"
    )
    (local,) = record_submission(
        registry, backend="local", scheduler_ids=["9"], name="y", folder="/"
    )
    assert mark_all_cancelled(registry, [*ids[:2], local], "stopped by the test") == 3
    with registry.session() as s:
        old, slurms = s.get(Job, ids[1]), s.get(Job, ids[2])
        assert old is not None and slurms is not None
        old.ended_at = utcnow() - timedelta(seconds=REQUEUE_WINDOW_S + 60)
        slurms.state, slurms.ended_at = "CANCELLED", utcnow()  # as a poll records Slurm's word
    asked: list[str] = []
    end = datetime(2026, 1, 1, 3, tzinfo=UTC)

    def sacct(job_ids: Any, *_: Any) -> dict[str, SchedulerState]:
        asked.extend(job_ids)
        return {"1": SchedulerState("COMPLETED", ended_at=end, exit_code="0:0")}

    monkeypatch.setattr(records, "sacct_states", sacct)
    assert refresh_slurm_jobs(registry) == 1
    assert sorted(asked) == ["1", "4"]  # the marked row and the unfinished one
    row = _row(registry, ids[0])
    assert (row.state, row.exit_cause, row.ended_at) == ("COMPLETED", None, end)
    assert UNCONFIRMED_META not in row.meta
    assert UNCONFIRMED_META in _row(registry, ids[1]).meta  # past the day: left as it is
    assert UNCONFIRMED_META not in _row(registry, local).meta  # no Slurm to confirm it
    asked.clear()
    refresh_slurm_jobs(registry)
    assert asked == ["4"]
