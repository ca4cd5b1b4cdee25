"""The loop's recent share when a harvest put no new image into the training split.

The hash split sends a new image to training with probability 0.6, so a harvest of n labels
has none there with odds 0.4^n; a study refuses a recent share it cannot apply, so the loop
must pass none then, or its AutoML stage fails on a harmless harvest."""

from __future__ import annotations

from typing import Any

import pytest

from pomlia_hpc.loop.driver import LoopContext
from pomlia_hpc.loop.stages import effective_recent_share
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def _ctx(reg: Registry, ws: Workspace, ingest: dict[str, Any], said: list[str]) -> LoopContext:
    return LoopContext(reg, ws, 1, "slot", {}, {"ingest": ingest}, progress=said.append)


@pytest.mark.parametrize(
    ("ingest", "share", "expected"),
    [
        ({"new_train_rows": 0}, 0.5, None),  # nothing recent to weight: no share, said so
        ({"new_train_rows": 3}, 0.5, 0.5),
        ({"new_train_rows": 0}, None, None),
        ({}, 0.5, 0.5),  # a run recorded before the count existed keeps its share
    ],
)
def test_recent_share_is_dropped_only_without_new_training_rows(
    reg: Registry,
    workspace: Workspace,
    ingest: dict[str, Any],
    share: float | None,
    expected: float | None,
) -> None:
    said: list[str] = []
    assert effective_recent_share(_ctx(reg, workspace, ingest, said), share) == expected
    assert bool(said) == (share is not None and expected is None)
