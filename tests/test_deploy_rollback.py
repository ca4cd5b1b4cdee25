"""Repeated `deploy rollback` walks back the slot's history (A, B, C: C → B → A), instead of
flipping between the last two champions; a promotion after a rollback starts a new step. A
rollback to a champion the servers cannot hot-swap to names the way on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.promote import champion, history, put_on_slot, rollback
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.serve.slots import current_bundle, current_link
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import refused
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


def test_a_rollback_the_servers_cannot_swap_to_names_the_way_on(
    workspace: Workspace, reg: Registry
) -> None:
    """A slot whose history holds a champion of another input spec than the served one (put
    on while its link named nothing: a history from before promotions were checked, or a link
    removed by hand). Each rollback was refused as a promotion ("Serve small on a slot of its
    own") and the next tried the same champion again: stuck, with no word of the earlier
    champion that the servers can swap to."""
    for i, (name, side) in enumerate((("large1", 64), ("small", 28), ("large2", 64))):
        ckpt = save_demo_checkpoint(
            workspace.path("models", f"{name}.pt"), image_size=side, num_classes=2, seed=i
        )
        register_model(reg, name, ckpt)
    link = current_link(workspace, "s")
    put_on_slot(reg, workspace, "s", "large1", kind="initial")
    link.unlink()
    put_on_slot(reg, workspace, "s", "small", kind="forced")
    link.unlink()
    put_on_slot(reg, workspace, "s", "large2", kind="forced")
    served = current_bundle(link)
    said = " ".join(refused("deploy", "rollback", "s").split())
    assert (
        "slot 's' cannot roll back to small, its previous champion: its image size is 28, the "
        "served model's 64 (large2)" in said
    ), said
    assert "nothing was changed" in said
    assert (
        "the latest earlier champion they can swap to is large1: promote it with `pomlia "
        "deploy promote s large1 --force`" in said
    ), said
    assert current_bundle(link) == served
    assert [h.model for h in history(reg, "s")] == ["large1", "small", "large2"]

    # Without a champion of the served spec below it: a slot of its own is the way.
    put_on_slot(reg, workspace, "t", "small", kind="initial")
    current_link(workspace, "t").unlink()
    put_on_slot(reg, workspace, "t", "large2", kind="forced")
    said = " ".join(refused("deploy", "rollback", "t").split())
    assert "slot 't' cannot roll back to small, its previous champion" in said, said
    assert (
        "none of its earlier champions (small) has the served model's input and labels: to "
        "serve small again, put it on a slot of its own (`pomlia deploy promote NEW_SLOT "
        "small`)" in said
    ), said


def test_a_refused_rollback_never_advises_the_served_model_and_its_advice_works(
    workspace: Workspace, reg: Registry
) -> None:
    """History large, small, large (the served model was champion before small too): the
    refusal named large itself, the model the slot serves, as "the latest earlier champion
    they can swap to", and `deploy promote s large --force` then said "already the champion".
    The advice must name another model, and running it must serve that model."""
    for i, (name, side) in enumerate((("old", 64), ("large", 64), ("small", 28))):
        ckpt = save_demo_checkpoint(
            workspace.path("models", f"{name}.pt"), image_size=side, num_classes=2, seed=i
        )
        register_model(reg, name, ckpt)
    link = current_link(workspace, "s")
    put_on_slot(reg, workspace, "s", "old", kind="initial")
    put_on_slot(reg, workspace, "s", "large", kind="forced")
    link.unlink()
    put_on_slot(reg, workspace, "s", "small", kind="forced")
    link.unlink()
    put_on_slot(reg, workspace, "s", "large", kind="forced")
    said = " ".join(refused("deploy", "rollback", "s").split())
    assert "cannot roll back to small" in said, said
    assert "`pomlia deploy promote s large --force`" not in said, said
    assert (
        "the latest earlier champion they can swap to is old: promote it with `pomlia deploy "
        "promote s old --force`" in said
    ), said
    res = CliRunner().invoke(app, ["deploy", "promote", "s", "old", "--force"])
    assert res.exit_code == 0, res.output
    assert champion(reg, "s").model == "old"  # type: ignore[union-attr]
