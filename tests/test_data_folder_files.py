"""Image folders without split folders (the split is stratified by class) and the files an
image folder may hold besides images: system files, other files, unreadable images, class
folder names that differ only in case or hold control characters."""

from __future__ import annotations

import json
from collections.abc import Callable
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
    share = {3: 1, 4: 1, 10: 1, 11: 1, 25: 3}[n]  # 10 % rounded half up, at least 1
    assert dist["val"] == [share, share, 1] and dist["test"] == [share, share, 1]
    assert dist["train"] == [n - 2 * share, n - 2 * share, 1]
    # the same files give the same split (the same version)
    assert "identical content: existing version" in cli_ok("data", "add", "f", str(root))


def test_a_fraction_carves_each_class(workspace: Workspace, tmp_path: Path) -> None:
    root = _mk(tmp_path / "g", {"a": 20, "b": 6})
    cli_ok("data", "add", "g", str(root), "--val-fraction", "0.2", "--test-fraction", "0.3")
    dist = _meta("g")["label_distribution"]
    assert dist == {"train": [10, 3], "val": [4, 1], "test": [6, 2]}


def _broken(root: Path) -> None:
    """A truncated PNG (header intact) and a 0-byte PNG in ``root``'s class folders."""
    cut, empty = root / "benign" / "cut.png", root / "malignant" / "empty.png"
    cut.write_bytes((root / "benign" / "img0.png").read_bytes()[:80])
    empty.write_bytes(b"")


def test_system_and_other_files_are_skipped_and_named(workspace: Workspace, tmp_path: Path) -> None:
    # Thumbs.db, notes.txt each refused the whole folder (.DS_Store alone was skipped)
    root = _mk(tmp_path / "s", {"benign": 5, "malignant": 5})
    for name in ("Thumbs.db", "desktop.ini", "ehthumbs.db", "._img0.png", ".DS_Store"):
        (root / "benign" / name).write_bytes(b"\0\1")
    (root / "benign" / "notes.txt").write_text("hello")
    (root / "malignant" / "labels.csv").write_text("a,b")
    (root / "[readme].md").write_text("# data")  # no markup: "[readme]" vanished
    text = _flat(cli_ok("data", "add", "s", str(root)))
    assert "splits: train 6, val 2, test 2" in text
    assert (
        "warning: skipped 3 file(s) that are not images: '[readme].md', 'benign/notes.txt', "
        "'malignant/labels.csv'" in text
    )
    assert "Thumbs" not in text and "desktop" not in text and "._img0" not in text
    skipped = _meta("s")["source"]["skipped_other_files"]  # type: ignore[index]
    assert skipped == {
        "count": 3,
        "files": ["[readme].md", "benign/notes.txt", "malignant/labels.csv"],
    }


def test_unreadable_images_refuse_unless_skipped(
    data_add: Callable[..., str], workspace: Workspace, tmp_path: Path
) -> None:
    root = _mk(tmp_path / "u", {"benign": 5, "malignant": 5})
    _broken(root)
    err = data_add(root)
    assert "cannot be read" in err and "--skip-unreadable" in err
    text = _flat(cli_ok("data", "add", "u", str(root), "--skip-unreadable"))
    assert "warning: skipped 2 unreadable image file(s) (--skip-unreadable):" in text
    assert "benign/cut.png (" in text and "malignant/empty.png (empty file, 0 bytes)" in text
    meta = _meta("u")
    assert meta["n_images"] == 10
    assert meta["source"]["skipped_unreadable"]["count"] == 2  # type: ignore[index]


def test_class_folders_differing_only_in_case_are_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "c", {"Benign": 3, "benign": 3, "malignant": 3})
    err = data_add(root)
    assert "class folders 'Benign' and 'benign'" in err and "differ only in case" in err
    split = _mk(tmp_path / "sc", {"train/benign": 3, "train/malignant": 3, "test/Benign": 3})
    assert "class folders 'train/benign' and 'test/Benign'" in data_add(split)


@pytest.mark.parametrize("name", ["ben\nign", "tab\there", "bell\x07"])
def test_control_characters_in_a_class_folder_name_are_refused(
    data_add: Callable[..., str], tmp_path: Path, name: str
) -> None:
    root = _mk(tmp_path / "n", {name: 3, "malignant": 3})
    err = data_add(root)
    assert f"class folder {name!r} in image folder" in err and "control character" in err
