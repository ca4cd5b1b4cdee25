"""Duplicate images across splits and under two labels: counted in the explicit fingerprint
and warned about by `data add` and `task add` (they were counted but never reported)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, data_add_line
from tests.loop_support import CLASSES
from tests.seen_support import npz

pytestmark = pytest.mark.usefixtures("wide_console")


def _split_folder(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for k, c in enumerate(("benign", "malignant")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (12, 12), dtype=np.uint8) + 100 * k
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_train_copies_in_test_and_conflicting_labels_are_warned(
    workspace: Workspace, tmp_path: Path
) -> None:
    root = _split_folder(tmp_path / "dup")
    for i in range(5):  # same class: leakage only
        shutil.copy(root / f"train/benign/{i}.png", root / f"test/benign/copy{i}.png")
    for i in range(2):  # the same pixels under the other class
        shutil.copy(root / f"train/benign/{i}.png", root / f"test/malignant/dupb{i}.png")
    text = _flat(cli_ok("data", "add", "dup", str(root)))
    assert "warning: 7 test image(s) are pixel copies of training images" in text
    assert "metrics come out inflated" in text
    assert "2 duplicate image(s) carry a label other than their copy's" in text
    text = _flat(cli_ok("task", "add", "dt", "--dataset", "dup", "--metric", "acc"))
    assert "task dt (id" in text
    assert "7 test image(s) are pixel copies of training images" in text
    assert "2 duplicate image(s) carry a label other than their copy's" in text


def test_no_duplicates_no_warning(workspace: Workspace, tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "clean")
    assert "pixel copies" not in cli_ok("data", "add", "clean", str(root))
    assert "warning" not in cli_ok("task", "add", "ct", "--dataset", "clean", "--metric", "acc")


def test_the_same_images_under_another_name_are_named_and_another_split_warned(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The same images ingested under another name, split otherwise, put one name's val/test
    images in the other's train, and `data add` said nothing of it (a copy of a published
    set, re-split by a colleague)."""
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
         (("train", 40), ("val", 12), ("test", 12))}  # fmt: skip
    resplit = {"train": np.concatenate([x["train"], x["val"][:6], x["test"][:6]])}
    resplit |= {"val": x["val"][6:], "test": x["test"][6:]}
    first = npz(tmp_path / "a.npz", x)
    text = data_add_line("scans", str(first), "--class-names", ",".join(CLASSES))
    assert "the same images" not in text, text
    text = data_add_line("copy", str(first), "--class-names", ",".join(CLASSES))
    assert "note: the same images, labels and split as scans@" in text, text
    second = npz(tmp_path / "b.npz", resplit)
    text = data_add_line("other", str(second), "--class-names", ",".join(CLASSES))
    for name in ("scans", "copy"):
        assert (
            f"warning: the same images as {name}@" in text
            and "split otherwise (train 40, val 12, test 12 there, train 52, val 6, test 6 "
            "here): a model trained on either has learnt val/test images of the other"
            in text
        ), text


def test_the_same_images_and_split_in_another_order_are_not_warned_as_split_otherwise(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The same split was told by the version (a content hash of the images in their order
    and of the labels): the same images in each split, only in another order (or with other
    labels), were warned of as "split otherwise" with equal split counts on both sides."""
    rng = np.random.default_rng(1)
    x = {s: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
         (("train", 40), ("val", 12), ("test", 12))}  # fmt: skip
    data_add_line("scans", str(npz(tmp_path / "a.npz", x)), "--class-names", ",".join(CLASSES))
    shuffled = {s: a[::-1] for s, a in x.items()}
    text = data_add_line(
        "mine", str(npz(tmp_path / "b.npz", shuffled)), "--class-names", ",".join(CLASSES)
    )
    assert "split otherwise" not in text, text
    assert "note: the same images and split as scans@" in text, text
