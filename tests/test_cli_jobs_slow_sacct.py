"""`pomlia jobs list` / `jobs show` / `status` when `sacct` does not answer: a line on stderr
while they wait, a wait as long as the workspace's `cluster.list_sacct_timeout_s`, then one
message in words and the states as last recorded, marked as possibly out of date.

The commands run in this process, through the console script's entry point (``pomlia``), with
fake ``sacct``/``squeue`` that hang first on PATH: what is checked is how long the command
waits for them and what it says, not the process around it (a start costs seconds of CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pomlia_hpc.cli.jobs as jobs_cli
from pomlia_hpc.cli import app
from pomlia_hpc.cli.app import console
from pomlia_hpc.cli.polling import unsure_states
from pomlia_hpc.cluster import refusal
from pomlia_hpc.cluster.records import REQUEUE_WINDOW_S, utcnow
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.slow_sacct import waited_for_sacct

Pomlia = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pomlia(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Pomlia:
    """``pomlia(bin_dir, *args)``: ``pomlia ARGS`` on the workspace, in this process through
    the console script's entry point, with ``bin_dir`` first on PATH (fake ``sacct``/``squeue``
    that hang for 60 s: the command must return before), 200 columns wide; its exit status,
    stdout and stderr as a process of its own gives them."""

    def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setattr(console, "width", 200)
        code, out, err = pomlia_main(monkeypatch, capsys, *args)
        return subprocess.CompletedProcess(["pomlia", *args], code, out, err)

    return run


def _slow_slurm(tmp_path: Path) -> Path:
    """A folder whose ``sacct`` and ``squeue`` hang (slurmdbd and slurmctld busy)."""
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text("#!/bin/sh\nsleep 60\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _running_job(reg: Registry, polled: str) -> int:
    with reg.session() as s:
        row = Job(
            name="train",
            backend="slurm",
            scheduler_id="4242",
            state="RUNNING",
            submitted_at=datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC),
            meta={"polled_at": polled},
        )
        s.add(row)
        s.flush()
        return int(row.id)


@pytest.mark.parametrize("command", [["jobs", "list"], ["status"], ["jobs", "show", "1"]])
def test_a_slow_sacct_is_waited_for_briefly_and_said_in_words(
    workspace: Workspace, reg: Registry, tmp_path: Path, command: list[str], pomlia: Pomlia
) -> None:
    """It waited 60 s in silence, then printed `Could not poll Slurm: sacct could not be run:
    Command '[...]' timed out after 60.0 seconds` above a table that showed the recorded
    RUNNING as if it were current."""
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 3\n")
    job = _running_job(reg, "2026-01-02T03:04:05+00:00")
    res = pomlia(_slow_slurm(tmp_path), *command)
    out = waited_for_sacct(res, 3)
    assert (
        "did not answer within 3 s; the states shown are the last recorded ones, "
        "as of 2026-01-02 03:04:05 (marked ?)" in out
    ), out
    assert "RUNNING?" in out
    with reg.session() as s:
        row = s.get(Job, job)
        assert row is not None and row.state == "RUNNING"  # nothing written on a failed poll


def test_only_the_jobs_slurm_did_not_confirm_are_marked(
    workspace: Workspace, reg: Registry, tmp_path: Path, pomlia: Pomlia
) -> None:
    """sacct answered for one job and did not list the other, and squeue, asked whether that
    one is still queued, did not answer: both were marked `?`, also the one sacct had just
    confirmed (and recorded)."""
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 3\n")
    _running_job(reg, "2026-01-02T03:04:05+00:00")  # 4242, which sacct answers for
    with reg.session() as s:
        s.add(Job(name="other", backend="slurm", scheduler_id="4343", state="PENDING"))
    bin_dir = _slow_slurm(tmp_path)  # squeue hangs
    answer = "4242|RUNNING|2026-01-02T03:00:00|Unknown|0:0"
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho '{answer}'\n")
    res = pomlia(bin_dir, "jobs", "list")
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "(marked ?)" in out and "PENDING?" in out, out
    assert "RUNNING?" not in out and "RUNNING" in out, out


def test_a_listing_whose_shown_states_do_not_depend_on_the_failed_poll_says_so(
    workspace: Workspace, reg: Registry, tmp_path: Path, pomlia: Pomlia
) -> None:
    """The running job sacct did not answer for is not among those shown (`--limit 1`): the
    listing said its states were "the last recorded ones" though none depends on the poll."""
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 3\n")
    _running_job(reg, "2026-01-02T03:04:05+00:00")
    with reg.session() as s:
        s.add(Job(name="done", backend="slurm", scheduler_id="4343", state="COMPLETED"))
    res = pomlia(_slow_slurm(tmp_path), "jobs", "list", "--limit", "1")
    out = waited_for_sacct(res, 3)
    assert "did not answer within 3 s; no state shown depends on what it did not answer" in out
    assert "COMPLETED" in out and "COMPLETED?" not in out and "(marked ?)" not in out


def test_json_keeps_stdout_one_document_and_the_states_as_recorded(
    workspace: Workspace, reg: Registry, tmp_path: Path, pomlia: Pomlia
) -> None:
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 1\n")
    _running_job(reg, "2026-01-02T03:04:05+00:00")
    res = pomlia(_slow_slurm(tmp_path), "jobs", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert [r["state"] for r in json.loads(res.stdout)] == ["RUNNING"]
    assert "did not answer within 1 s" in " ".join(res.stderr.split())


def test_a_bad_timeout_setting_is_one_error(
    workspace: Workspace, tmp_path: Path, pomlia: Pomlia
) -> None:
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 0\n")
    res = pomlia(_slow_slurm(tmp_path), "jobs", "list")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "list_sacct_timeout_s" in res.stderr


def test_a_node_failure_or_preemption_within_its_requeue_window_is_marked_unsure() -> None:
    """After a failed poll, rows NODE_FAIL or PREEMPTED that the poll would have asked about
    (Slurm may have requeued them since) were shown as if their end were certain."""
    now = utcnow()
    recent, old = now - timedelta(hours=1), now - timedelta(seconds=REQUEUE_WINDOW_S + 60)
    rows = [
        Job(id=1, backend="slurm", state="NODE_FAIL", ended_at=recent),
        Job(id=2, backend="slurm", state="PREEMPTED", ended_at=recent),
        Job(id=3, backend="slurm", state="NODE_FAIL", ended_at=old),  # its window is closed
        Job(id=4, backend="slurm", state="FAILED", ended_at=recent),
        Job(id=5, backend="slurm", state="RUNNING", ended_at=None),
        Job(id=6, backend="local", state="PREEMPTED", ended_at=recent),
    ]
    assert [r.id for r in unsure_states(rows)] == [1, 2, 5]


def test_only_a_slurm_answer_since_the_poll_began_makes_a_row_current() -> None:
    """A row submitted, or cancelled on pomlia's word, after its last answer from Slurm is
    not current, however recent (the whole-run CI caught the cancel taken for confirmed)."""
    asked = utcnow()
    after = (asked + timedelta(milliseconds=5)).isoformat()
    before = (asked - timedelta(milliseconds=5)).isoformat()  # the same second, perhaps
    rows = [
        Job(id=1, backend="slurm", state="RUNNING", meta={"polled_at": after}),
        Job(id=2, backend="slurm", state="PENDING", submitted_at=asked, meta={}),
        Job(id=3, backend="slurm", state="RUNNING", meta={"polled_at": before}),
        Job(id=4, backend="slurm", state="CANCELLED", ended_at=asked,
            meta={"polled_at": after, "cancel_unconfirmed": after}),
    ]  # fmt: skip
    assert [r.id for r in unsure_states(rows, asked)] == [2, 3, 4]
    assert [r.id for r in unsure_states(rows)] == [1, 2, 3, 4]


def test_show_gives_the_pending_reasons_squeue_what_sacct_left_of_the_one_limit(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs show` of a pending Slurm job asked squeue for its pending reason with a minute
    of its own after sacct had used the listing's limit (`cluster.list_sacct_timeout_s`,
    which its help gives as the limit of both): squeue gets what is left, and is not asked
    when nothing is, or when sacct did not answer."""
    with reg.session() as s:
        row = Job(name="t", backend="slurm", scheduler_id="4242", state="PENDING")
        row.submitted_at = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
        s.add(row)
    limit = workspace.list_sacct_timeout_s
    clock, asked = [100.0], []

    def refresh_taking(seconds: float, problem: str | None) -> Callable[..., str | None]:
        def refresh(*args: Any, **kwargs: Any) -> str | None:
            clock[0] += seconds  # the time sacct took
            return problem

        return refresh

    def reasons(job_ids: Sequence[str], timeout_s: float = 60.0) -> dict[str, str]:
        asked.append(timeout_s)
        return {"4242": "Resources"}

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(refusal, "pending_reasons", reasons)
    runs = [(0.75 * limit, None), (limit, None), (0.1, "sacct: did not answer within 15 s")]
    for seconds, problem in runs:
        monkeypatch.setattr(jobs_cli, "refresh_for_listing", refresh_taking(seconds, problem))
        res = CliRunner().invoke(app, ["jobs", "show", "1"])
        assert res.exit_code == 0, res.output
    # not asked with nothing left, nor after sacct failed
    assert asked == [pytest.approx(0.25 * limit)]
