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
    pytest_collection_modifyitems,
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
    pytest_collection_modifyitems(items)
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
