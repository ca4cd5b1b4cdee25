"""How often waiting on Slurm jobs runs ``sacct``, against the real single-node Slurm: a site
expects a client's calls to be few, not one per job at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, records, wait_all
from pomlia_hpc.cluster.waiting import settle
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def test_collecting_an_ended_array_runs_one_sacct_not_one_per_task(
    tmp_path: Path, reg: Registry
) -> None:
    """Each task's result() asked sacct for its own end after the one poll that had recorded
    every task's end already: an array of 1000 shards made 1000 sacct calls in a burst."""
    ex = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handles = ex.map_array(jobfns.negate, list(range(6)))
    deadline = time.monotonic() + 300
    while not all(h.done() for h in handles) and time.monotonic() < deadline:
        time.sleep(0.5)
    while not _all_recorded_completed(reg) and time.monotonic() < deadline:
        settle(handles)  # one sacct for all (slurmdbd records the ends a moment late)
    before = records.SACCT_CALLS
    assert wait_all(handles, poll_s=0.5) == [-x for x in range(6)]
    assert before == records.SACCT_CALLS  # every end was known: nothing left to ask


def _all_recorded_completed(reg: Registry) -> bool:
    with reg.session() as s:
        rows = list(s.scalars(select(Job)))
    return all(r.state == "COMPLETED" and r.ended_at is not None for r in rows)
