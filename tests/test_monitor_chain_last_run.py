"""`pomlia monitor status`'s last run of a chain is its own workspace's: users sharing one
PostgreSQL registry, a workspace each, have job rows of the same chain name (the job name is
the model's), and the status named the newest of any of them (another user's FAILED run)."""

from __future__ import annotations

from pathlib import Path

from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.monitor.chains import chain_script, job_name, last_run
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace


def _ended_run(reg: Registry, folder: Path, slurm_id: str, state: str) -> int:
    (rid,) = record_submission(
        reg, backend="slurm", scheduler_ids=[slurm_id], name=job_name("blood"), folder=str(folder)
    )
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        row.state = state
    return rid


def test_a_chains_last_run_is_its_own_workspaces(
    reg: Registry, workspace: Workspace, tmp_path: Path
) -> None:
    own = chain_script(workspace, "blood").parent
    mine = _ended_run(reg, own, "9001", "CANCELLED")
    # Another workspace's chain of the same model name, ended later, in the shared registry.
    _ended_run(reg, tmp_path / "other-home" / "jobs" / "monitor" / "blood", "9002", "FAILED")
    last = last_run(reg, workspace, "blood")
    assert last is not None and last.startswith(f"job {mine} (slurm 9001) CANCELLED"), last
    assert last_run(reg, workspace, "slot:serving") is None
