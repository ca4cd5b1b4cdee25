"""Repeated `deploy rollback` walks back the slot's history (A, B, C: C → B → A), instead of
flipping between the last two champions; a promotion after a rollback starts a new step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.promote import champion, history, put_on_slot, rollback
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.loop_support import CLASSES, make_model


def _dataset(tmp_path: Path, workspace: Workspace, reg: Registry) -> int:
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        **{
            f"{s}_images": rng.integers(0, 255, (8, 28, 28, 3), np.uint8)
            for s in ("train", "val", "test")
        },
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in ("train", "val", "test")},
    )
    return ingest(workspace, reg, "d", npz, class_names=CLASSES).id


def test_repeated_rollbacks_walk_back_the_history(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    vid = _dataset(tmp_path, workspace, reg)
    for seed, name in enumerate(("a", "b", "c", "d"), start=1):
        make_model(reg, tmp_path, name, seed, vid)
    put_on_slot(reg, workspace, "s", "a", kind="initial")
    put_on_slot(reg, workspace, "s", "b", kind="forced")
    put_on_slot(reg, workspace, "s", "c", kind="forced")
    assert rollback(reg, workspace, "s").model == "b"
    assert rollback(reg, workspace, "s").model == "a"  # not back to c
    with pytest.raises(InputError, match="no earlier champion to roll back to"):
        rollback(reg, workspace, "s")
    put_on_slot(reg, workspace, "s", "d", kind="forced")
    res = CliRunner().invoke(app, ["deploy", "rollback", "s"])
    assert res.exit_code == 0, res.output
    assert champion(reg, "s").model == "a"  # type: ignore[union-attr]
    assert [h.model for h in history(reg, "s")] == ["a", "b", "c", "b", "a", "d", "a"]


def test_promoting_the_champion_says_it_is_the_champion(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    # It said "not trained on a harvested dataset version ...", the gate's complaint.
    make_model(reg, tmp_path, "a", 1, _dataset(tmp_path, workspace, reg))
    put_on_slot(reg, workspace, "s", "a", kind="initial")
    res = CliRunner().invoke(app, ["deploy", "promote", "s", "a"])
    # The console script prints a PomliaError as one line and exits 2 (tests/test_cli.py).
    assert isinstance(res.exception, InputError) and res.exception.exit_code == 2
    text = " ".join(str(res.exception).split())
    assert "model a is already the champion of slot s (since " in text
    assert "nothing to promote" in text and "harvested" not in text
    assert [h.model for h in history(reg, "s")] == ["a"]
