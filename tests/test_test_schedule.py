"""The test suite's own scheduling under pytest-xdist (``make test``: ``--dist loadfile``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.conftest import LONG_FILES, pytest_collection_modifyitems


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
