"""`pomlia jobs show/list/cancel` of a Slurm job that Slurm has forgotten (purged from
accounting): shown LOST, not as the state last recorded, and not "cancelled" (Slurm 22.05's
scancel exits 0 silently for an unknown id)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.fake_slurm import FakeSlurm


def _forgotten(reg: Registry, name: str) -> int:
    with reg.session() as s:
        row = Job(
            name=name,
            backend="slurm",
            scheduler_id="999999",
            state="RUNNING",
            submitted_at=datetime.now(UTC) - timedelta(days=30),
        )
        s.add(row)
        s.flush()
        return int(row.id)


def test_a_job_slurm_forgot_is_shown_lost_and_not_claimed_cancelled(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    runner = CliRunner()
    shown, listed, cancelled = (_forgotten(reg, n) for n in ("shown", "listed", "cancelled"))
    res = runner.invoke(app, ["jobs", "show", str(shown)])
    assert res.exit_code == 0, res.output
    (state,) = [ln for ln in res.output.splitlines() if " state " in f" {ln} "]
    assert "LOST" in state and "RUNNING" not in state
    res = runner.invoke(app, ["jobs", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert '"LOST"' in res.output and '"RUNNING"' not in res.output
    with reg.session() as s:
        row = s.get(Job, cancelled)
        assert row is not None
        row.state = "RUNNING"  # as if list had not looked: cancel finds out by itself
        row.ended_at = None
    res = runner.invoke(app, ["jobs", "cancel", str(cancelled)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "recorded LOST, nothing was cancelled" in text and ") cancelled" not in text
    with reg.session() as s:
        assert [s.get(Job, i).state for i in (shown, listed, cancelled)] == ["LOST"] * 3
