"""Harvest and leakage: a production image whose pixels the parent already holds (a served
val or test image) goes into its copy's split, not the hash split of its prediction id, so a
harvest creates no train/test copies; and `data harvest` warns of copies across splits as
`data add` does (same function, same words) instead of leaving it to `task add`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.harvest import NewImages, harvest_info, harvest_version, hash_split
from pomlia_hpc.data.leakage import duplicate_warning, harvest_warning
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_arrays, write_npz
from tests.loop_support import CLASSES, make_model, write_production


def _keys(split: str, n: int, prefix: str) -> list[str]:
    """``n`` prediction ids whose hash split is ``split``."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        key = f"{prefix}{i:030x}"
        if hash_split(key) == split:
            out.append(key)
        i += 1
    return out


def _parent(tmp_path: Path, workspace: Workspace, reg: Registry, leak: bool = False) -> str:
    a = tiny_arrays("bloodmnist", sizes=(12, 6, 6), seed=1)
    a = {k: v % len(CLASSES) if k.endswith("labels") else v for k, v in a.items()}
    if leak:  # the parent's own leakage: a test image that is a copy of a training image
        a["test_images"][0] = a["train_images"][0]
        a["test_labels"][0] = a["train_labels"][0]
    path = write_npz(tmp_path / "p.npz", a)
    return ingest(workspace, reg, "d", path, class_names=CLASSES).ref


def test_copies_of_parent_images_go_into_their_copys_split(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    ref = _parent(tmp_path, workspace, reg)
    parent = open_store(find_version(reg, ref).store_path)
    (vlo, _), (tlo, _) = parent.split_range("val"), parent.split_range("test")
    val_imgs, test_imgs = parent.read_rows(vlo, vlo + 4), parent.read_rows(tlo, tlo + 3)
    # served val and test images whose ids hash to train: the reported leakage
    images = np.concatenate([val_imgs, test_imgs])
    labels = np.concatenate([parent.read_labels(vlo, vlo + 4), parent.read_labels(tlo, tlo + 3)])
    keys = _keys("train", 7, "v")
    # and two equal new images whose ids hash to train and test: one split for both
    twin = np.full((1, *images.shape[1:]), 7, np.uint8)
    images = np.concatenate([images, twin, twin])
    labels = np.concatenate([labels, labels[:2]])
    keys += [_keys("train", 1, "a")[0], _keys("test", 1, "b")[0]]
    new = NewImages(images, labels.reshape(len(keys), -1), keys)
    rec = harvest_version(workspace, reg, find_version(reg, ref), "d", new, {})
    info = harvest_info(rec.meta)
    assert info is not None
    twin_split = hash_split(min(keys[-2:]))
    want = {"train": 0, "val": 4, "test": 3}
    want[twin_split] += 2
    assert info["new_per_split"] == want
    assert info["placed_with_copy"] == 8  # the 7 copies and the twin of the other hash
    dup = rec.fingerprint["duplicates"]
    assert dup["across_splits"] == {"val": 0, "test": 0}
    assert duplicate_warning(rec.fingerprint) is None


@pytest.mark.usefixtures("wide_console")
def test_data_harvest_warns_of_copies_across_splits_as_data_add_does(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    ref = _parent(tmp_path, workspace, reg, leak=True)
    version = find_version(reg, ref)
    make_model(reg, tmp_path, "m", 1, version.id)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (6, 28, 28, 3), np.uint8)
    write_production(log_dir(workspace.path("logs"), "m"), images, np.zeros(6))
    res = CliRunner().invoke(app, ["data", "harvest", "m"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    new = find_version(reg, "d")
    # The parent's own copy, inherited: named as such, with no `data add` of a source that a
    # harvest does not have.
    assert (
        f"warning: dataset {new_ref(new)}: inherited from the parent {ref} (a harvest keeps its "
        "parent's rows; retrain from a version without them to be rid of them): 1 test "
        "image(s) are pixel copies of training images (leakage: test metrics come out inflated)"
    ) in text
    assert "pomlia data add" not in text


def test_a_harvest_warning_tells_new_duplicates_from_inherited_ones() -> None:
    def fp(across: dict[str, int], conflicting: int) -> dict[str, object]:
        return {"duplicates": {"across_splits": across, "conflicting_labels": conflicting}}

    parent = fp({"val": 0, "test": 1}, 1)
    assert harvest_warning(fp({"val": 0, "test": 1}, 1), parent, "d@p") == (
        "inherited from the parent d@p (a harvest keeps its parent's rows; retrain from a "
        "version without them to be rid of them): 1 test image(s) are pixel copies of "
        "training images (leakage: test metrics come out inflated) and 1 duplicate image(s) "
        "carry a label other than their copy's (the same pixels under two classes)"
    )
    words = harvest_warning(fp({"val": 2, "test": 1}, 3), parent, "d@p")
    assert words is not None
    assert words.startswith(
        "2 val image(s) are pixel copies of training images (leakage: val metrics come out "
        "inflated); 2 duplicate image(s) carry a label other than their copy's (the same pixels "
        "under two classes): check the feedback labels of those images (a corrected label sent "
        'again with `"replaces": true` replaces the harvested one at the next harvest); '
        "inherited from the parent d@p"
    ), words
    assert harvest_warning(fp({}, 0), parent, "d@p") is None
    assert duplicate_warning(fp({"test": 1}, 0)) == (
        "1 test image(s) are pixel copies of training images (leakage: test metrics come out "
        "inflated); remove the copies from the source and run `pomlia data add` again"
    )


def new_ref(version: object) -> str:
    return f"d@{version.version}"
