"""How soon the end of a Slurm job that wrote no result is looked for: half the age of the
youngest job watched, from endwatch.END_SEEN_FIRST_S up to END_SEEN_WITHIN_S.

The first version asked sacct at most every 30 s whatever the jobs' age: a job cancelled
seconds after it started was seen ended up to 30 s late (test_cluster_slurm's cancelled-job
tests went from ~25 s to ~44 s), where submitit, pacing its polls by the last submission, saw
it in seconds. A fake clock and a recording sacct here: the pace, not Slurm, is under test
(tests/test_cluster_slurm_polling.py runs the watch against the real Slurm)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pomlia_hpc.cluster import endwatch


def test_a_young_job_is_looked_for_in_seconds_an_old_one_every_30(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1e9]  # far past any real monotonic time an earlier test of this process left
    asked: list[list[str]] = []
    answered = threading.Semaphore(0)

    def sacct_states(job_ids: list[str], timeout_s: float) -> dict[str, Any]:
        asked.append(list(job_ids))
        answered.release()
        return {}  # nothing ended

    monkeypatch.setattr(endwatch, "sacct_states", sacct_states)
    monkeypatch.setattr(endwatch.time, "monotonic", lambda: clock[0])

    def look(after_s: float) -> int:
        """Look for the job's end `after_s` seconds on; how many sacct calls so far."""
        clock[0] += after_s
        assert endwatch.ended_unseen("990001") is False
        if len(asked) < calls[0] + 1 and answered.acquire(timeout=5):
            calls[0] += 1
        for watch in [t for t in threading.enumerate() if t.name == "end-watch"]:
            watch.join(timeout=5)  # its answer recorded: the next look may ask again
        return len(asked)

    calls = [0]
    assert look(0) == 1  # the first look asks at once
    assert look(1) == 1  # 1 s on: within END_SEEN_FIRST_S
    assert look(endwatch.END_SEEN_FIRST_S) == 2  # 3 s old: asked again (was 30 s later)
    assert look(1) == 2
    assert look(100) == 3  # 104 s old: asks
    assert look(endwatch.END_SEEN_WITHIN_S - 1) == 3  # then no sooner than 30 s on
    assert look(1) == 4
    assert all("990001" in ids for ids in asked)
