"""One contract for every executor backend: the same test body runs in-process (``debug``), as
local processes (``local``), on the fake Slurm (shims at the process boundary) and on the real
single-node Slurm (marked ``slurm``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError, wait_all
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns

MakeExecutor = Callable[[], Executor]


@pytest.fixture(
    params=[
        "debug",
        "local",
        "fake-slurm",
        pytest.param("slurm", marks=pytest.mark.slurm),
    ]
)
def make_executor(
    request: pytest.FixtureRequest, tmp_path: Path, reg: Registry
) -> tuple[str, MakeExecutor]:
    """(backend, a factory of executors on it recording into ``reg``)."""
    profile = {"debug": "debug", "local": "local"}.get(request.param, "slurm-local")
    if request.param == "fake-slurm":
        request.getfixturevalue("fake_slurm")
    elif request.param == "slurm":
        request.getfixturevalue("slurm")
    return request.param, lambda: Executor.from_profile(profile, tmp_path / "jobs", reg)


def _rows(reg: Registry) -> list[Job]:
    with reg.session() as s:
        rows = list(s.scalars(select(Job).order_by(Job.id)))
        for r in rows:
            s.expunge(r)
    return rows


def test_a_value_a_failure_and_an_array_on_every_backend(
    make_executor: tuple[str, MakeExecutor], reg: Registry
) -> None:
    _backend, make = make_executor
    ex = make()
    ok = ex.submit(jobfns.add, 20, 22, name="add")
    arr = ex.map_array(jobfns.negate, [1, 2, 3], name="neg")
    assert ok.result() == 42
    assert wait_all(arr, poll_s=0.2) == [-1, -2, -3]
    # A failing debug job too: its failure is its outcome, recorded (no debugger without a
    # terminal; tests/test_cluster_debug.py).
    bad = ex.submit(jobfns.boom, "label out of range", name="boom")
    with pytest.raises(JobFailedError) as exc:
        bad.result()
    assert exc.value.state == "FAILED"
    assert "ValueError: label out of range" in (exc.value.traceback or "")
    by_name = {}
    for row in _rows(reg):
        by_name.setdefault(row.name, []).append(row)
    (add,) = by_name["add"]
    assert (add.state, add.scheduler_id, add.exit_cause) == ("COMPLETED", ok.job_id, None)
    assert add.ended_at is not None
    (boom,) = by_name["boom"]
    assert boom.state == "FAILED" and "ValueError: label out of range" in (boom.traceback or "")
    assert boom.exit_cause == "ValueError: label out of range"
    assert [r.state for r in by_name["neg"]] == ["COMPLETED"] * 3
