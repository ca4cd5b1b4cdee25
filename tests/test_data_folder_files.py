"""Image folders without split folders (the split is stratified by class) and the files an
image folder may hold besides images: system files, other files, unreadable images, class
folder names that differ only in case or hold control characters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

pytestmark = pytest.mark.usefixtures("wide_console")


def _mk(root: Path, counts: dict[str, int]) -> Path:
    """``counts[c]`` random 12x12 PNGs in each class folder ``root/c``."""
    rng = np.random.default_rng(0)
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (12, 12), dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"img{i}.png")
    return root


def _meta(name: str) -> dict[str, object]:
    return dict(json.loads(cli_ok("data", "show", name, "--json"))["meta"])


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("n", [3, 4, 10, 11, 25])
def test_the_split_of_class_folders_is_stratified(
    workspace: Workspace, tmp_path: Path, n: int
) -> None:
    # 2 x 10 images gave train 17, val 1, test 2 with 'benign' missing from val and
    # 'malignant' from test; another folder had no test image at all.
    root = _mk(tmp_path / "f", {"benign": n, "malignant": n, "other": 3})
    text = cli_ok("data", "add", "f", str(root))
    assert "without images in a split" not in text and "warning" not in text
    dist = _meta("f")["label_distribution"]
    assert isinstance(dist, dict)
    share = max(1, round(n * 0.1))
    assert dist["val"] == [share, share, 1] and dist["test"] == [share, share, 1]
    assert dist["train"] == [n - 2 * share, n - 2 * share, 1]
    # the same files give the same split (the same version)
    assert "identical content: existing version" in cli_ok("data", "add", "f", str(root))


def test_a_fraction_carves_each_class(workspace: Workspace, tmp_path: Path) -> None:
    root = _mk(tmp_path / "g", {"a": 20, "b": 6})
    cli_ok("data", "add", "g", str(root), "--val-fraction", "0.2", "--test-fraction", "0.3")
    dist = _meta("g")["label_distribution"]
    assert dist == {"train": [10, 3], "val": [4, 1], "test": [6, 2]}
