"""Duplicate images across splits and under two labels: counted in the explicit fingerprint
and warned about by `data add` and `task add` (they were counted but never reported)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

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
