"""The test suite's own scheduling under pytest-xdist (``make test``: ``--dist loadfile``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.conftest import (
    LONG_FILES,
    keep_the_lane,
    long_files_first,
    pin_each_worker_to_its_cores,
    share_the_cores_between_workers,
)


class _Node:
    """Just enough of an xdist worker for the scheduler: records the work it is sent."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append(list(indices))

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_longest_files_are_handed_out_first(pytestconfig: pytest.Config) -> None:
    """A file of LONG_FILES with one test starts before files with many tests: xdist's default
    reordering by test count would queue it last; this suite's configuration keeps the
    collection order, where LONG_FILES come first."""
    long = LONG_FILES[0]
    items: list[Any] = [
        SimpleNamespace(path=Path(f"tests/{f}"), nodeid=f"tests/{f}::test_{i}")
        for f, n in (("test_a.py", 5), (long, 1), ("test_b.py", 5), ("test_c.py", 5))
        for i in range(n)
    ]
    long_files_first(items)
    collection = [it.nodeid for it in items]
    config = SimpleNamespace(
        option=pytestconfig.option, getvalue=lambda name: ["2*popen"] if name == "tx" else None
    )
    sched = LoadFileScheduling(config)
    nodes = [_Node("gw0"), _Node("gw1")]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    first = collection[nodes[0].sent[0][0]]
    assert first == f"tests/{long}::test_0"


@pytest.mark.usefixtures("restore_torch_threads")
def test_an_xdist_worker_gives_torch_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With as many workers as cores each worker's torch runs one thread (two threads per
    worker on two cores slowed in-process training several-fold); one process is untouched."""
    import torch

    cores = len(os.sched_getaffinity(0))
    for workers in (cores, 2 * cores):
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
        torch.set_num_threads(cores)
        share_the_cores_between_workers()
        assert torch.get_num_threads() == 1
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    torch.set_num_threads(3)
    share_the_cores_between_workers()
    assert torch.get_num_threads() == 3


def test_each_xdist_worker_runs_on_its_own_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker i of n takes every n-th core from the i-th (its processes inherit it); a single
    process, too few cores or POMLIA_TEST_NO_PIN=1 leave the affinity as it is."""
    mine = os.sched_getaffinity(0)
    every = set(range(os.cpu_count() or 1))
    try:
        os.sched_setaffinity(0, every)
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            pytest.skip("one core: nothing to share")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
        monkeypatch.setenv("POMLIA_TEST_NO_PIN", "1")
        pin_each_worker_to_its_cores()
        assert sorted(os.sched_getaffinity(0)) == cores
        monkeypatch.delenv("POMLIA_TEST_NO_PIN")
        pin_each_worker_to_its_cores()
        assert sorted(os.sched_getaffinity(0)) == cores[1::2]
        os.sched_setaffinity(0, every)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(len(cores) + 1))
        pin_each_worker_to_its_cores()
        assert sorted(os.sched_getaffinity(0)) == cores
    finally:
        os.sched_setaffinity(0, mine)


def _item(name: str, slurm: bool) -> Any:
    marker = SimpleNamespace(name="slurm") if slurm else None
    return SimpleNamespace(name=name, get_closest_marker=lambda _name: marker)


def test_each_lane_keeps_its_own_tests_in_their_order() -> None:
    """``--lane=slurm`` keeps the tests marked slurm, ``--lane=rest`` every other one: together
    the whole suite, each test in one lane (scripts/test-lanes.sh runs the two at once)."""
    made = [_item("a", False), _item("b", True), _item("c", False), _item("d", True)]
    for lane, kept, dropped in (("slurm", "bd", "ac"), ("rest", "ac", "bd")):
        items = list(made)
        out = keep_the_lane(lane, items)
        assert "".join(it.name for it in items) == kept
        assert "".join(it.name for it in out) == dropped
