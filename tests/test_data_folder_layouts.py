"""Image-folder layouts: split folders under their common names (``valid`` ...), a top level
mixing split and class folders, files directly in a split folder, val/test carved from a
split layout's train folder, and class folders without images (skipped, and said so)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

pytestmark = pytest.mark.usefixtures("wide_console")


def _mk(root: Path, *rels: str, n: int = 10, seed: int | None = None) -> Path:
    """``n`` random 12x12 PNGs in each ``root/rel`` folder (``seed``: of the pixels, else the
    number of folders; two calls with one seed write copies of the same images)."""
    rng = np.random.default_rng(len(rels) if seed is None else seed)
    for rel in rels:
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (12, 12), dtype=np.uint8)
            Image.fromarray(img).save(root / rel / f"{i}.png")
    return root


def _meta(name: str) -> dict[str, object]:
    return dict(json.loads(cli_ok("data", "show", name, "--json"))["meta"])


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("val", ["valid", "validation", "val", "dev", "Valid"])
def test_common_split_folder_names_are_splits_not_classes(
    workspace: Workspace, tmp_path: Path, val: str
) -> None:
    # 'valid' made a 3-class dataset 'test, train, valid', dropping the real labels.
    rels = [f"{s}/{c}" for s in ("train", val, "test") for c in ("benign", "malignant")]
    cli_ok("data", "add", "v", str(_mk(tmp_path / "v", *rels)))
    meta = _meta("v")
    assert meta["class_names"] == ["benign", "malignant"]
    assert meta["split_sizes"] == {"train": 20, "val": 20, "test": 20}
    assert meta["source"]["split_folders"]["val"] == val  # type: ignore[index]


def test_split_and_class_folders_mixed_at_the_top_are_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "mixed", "train/a", "train/b", "c")
    err = data_add(root)
    assert "mixes split folders ('train') with other folders or files ('c')" in err
    assert "root/<split>/<class>/<image>" in err and "val (val/valid/validation/dev)" in err


def test_two_folders_for_one_split_and_files_in_a_split_folder_are_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "two", "train/a", "train/b", "val/a", "valid/a")
    assert "two folders for the val split, 'val' and 'valid': expected one" in data_add(root)
    flat = _mk(tmp_path / "flat", "train", "test")  # images straight in the split folders
    err = data_add(flat)
    assert "is a file in split folder 'train': expected one sub-folder per class" in err
    assert "(train/<class>/<image>)" in err


def test_a_missing_val_split_is_carved_from_train_with_val_fraction(
    workspace: Workspace, tmp_path: Path
) -> None:
    root = _mk(tmp_path / "tt", "train/a", "train/b", "test/a", "test/b", n=20)
    text = _flat(cli_ok("data", "add", "tt", str(root), "--val-fraction", "0.3"))
    meta = _meta("tt")
    sizes = meta["split_sizes"]
    assert isinstance(sizes, dict) and sizes["test"] == 40 and sizes["train"] + sizes["val"] == 40
    assert 4 <= sizes["val"] <= 20 and "warning: no val" not in text
    assert meta["source"]["val_fraction"] == 0.3  # type: ignore[index]
    # The same files, the same split (a hash of the path): a second add is the same version.
    assert "identical content" in cli_ok("data", "add", "tt", str(root), "--val-fraction", "0.3")
    # Without the flag nothing is carved, and the warning says how.
    text = _flat(cli_ok("data", "add", "tt0", str(root)))
    assert "splits: train 40, val 0, test 40" in text
    assert "or carve it from train with --val-fraction F" in text


def test_the_carve_is_stratified_by_class_and_keeps_one_image_in_train(
    workspace: Workspace, tmp_path: Path
) -> None:
    # A hash of each path alone put none of b's 3 images into val (their hashes fall above
    # 0.1): a class no configuration could be picked on.
    root = _mk(tmp_path / "im", "train/a", "test/a", "test/b", n=30)
    _mk(root, "train/b", n=3)
    text = _flat(cli_ok("data", "add", "im", str(root), "--val-fraction", "0.1"))
    assert "without images in a split" not in text
    # a: 3 of 30; b: its share rounds to 0, but a class asked for gives at least one image
    assert _meta("im")["split_sizes"] == {"train": 29, "val": 4, "test": 60}
    assert "identical content" in cli_ok("data", "add", "im", str(root), "--val-fraction", "0.1")
    # Two images and two splits to carve: one stays in train, val is served first.
    two = _mk(tmp_path / "two", "train/a", n=30)
    _mk(two, "train/b", n=2, seed=7)  # not copies of a's images: those share their split
    cli_ok("data", "add", "two", str(two), "--val-fraction", "0.1", "--test-fraction", "0.1")
    assert _meta("two")["split_sizes"] == {"train": 25, "val": 4, "test": 3}


def test_a_fraction_for_a_split_that_has_its_folder_is_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "tt", "train/a", "train/b", "test/a", "test/b")
    err = data_add(root, "--test-fraction", "0.2")
    assert err.startswith("error: --test-fraction 0.2 does not apply: image folder")
    assert "has a test split folder ('test'): expected no --test-fraction" in err


def test_an_empty_class_folder_is_skipped_with_a_warning(
    workspace: Workspace, tmp_path: Path
) -> None:
    root = _mk(tmp_path / "e", "a", "b")
    (root / "[empty]").mkdir()  # printed as markup, "[empty]" vanished from the warning
    text = _flat(cli_ok("data", "add", "e", str(root)))
    assert "warning: skipped 1 class folder(s) without images (not made classes): [empty]" in text
    meta = _meta("e")
    assert meta["class_names"] == ["a", "b"]
    assert meta["source"]["skipped_empty_folders"] == ["[empty]"]  # type: ignore[index]


def test_a_class_without_training_images_is_named_by_add_and_show(
    workspace: Workspace, tmp_path: Path
) -> None:
    rels = ["train/a", "train/b", "val/a", "val/b", "test/a", "test/b", "test/c"]
    text = _flat(cli_ok("data", "add", "s", str(_mk(tmp_path / "s", *rels))))
    assert "warning: class(es) without images in a split: 'c' (train, val)" in text
    assert "classes without images │ 'c' (train, val)" in _flat(cli_ok("data", "show", "s"))


def test_classes_named_like_splits_without_a_train_folder_are_classes(
    workspace: Workspace, tmp_path: Path
) -> None:
    # Any top-level 'Test' made a split layout, so classes Control/Test were refused as a mix.
    root = _mk(tmp_path / "ct", "Control", "Test", n=20)
    text = _flat(cli_ok("data", "add", "ct", str(root)))
    assert "note: class folder(s) 'Test' named like a split folder: treated as a class" in text
    assert "a split layout needs a train/ folder" in text
    meta = _meta("ct")
    assert meta["class_names"] == ["Control", "Test"]
    assert meta["source"]["layout"] == "class folders"  # type: ignore[index]
    assert sum(meta["split_sizes"].values()) == 40  # type: ignore[attr-defined]


def test_a_train_folder_beside_a_class_folder_is_still_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "tc", "Training/a", "Training/b", "Control")
    err = data_add(root)
    assert "mixes split folders ('Training') with other folders or files ('Control')" in err


def test_an_empty_val_folder_is_carved_from_train_as_the_hint_says(
    workspace: Workspace, tmp_path: Path
) -> None:
    root = _mk(tmp_path / "ev", "train/a", "train/b", "test/a", "test/b", n=20)
    (root / "val" / "a").mkdir(parents=True)  # the folder is there, but holds no image
    text = _flat(cli_ok("data", "add", "ev0", str(root)))
    assert "splits: train 40, val 0, test 40" in text
    assert "or carve it from train with --val-fraction F" in text
    assert "note: split folder 'val' holds no file: taken as missing" in text
    # The hint's flag is accepted (it was refused: "has a val split folder").
    text = _flat(cli_ok("data", "add", "ev", str(root), "--val-fraction", "0.3"))
    assert "carved from train with --val-fraction 0.3" in text
    sizes = _meta("ev")["split_sizes"]
    assert isinstance(sizes, dict) and sizes["test"] == 40 and 4 <= sizes["val"] <= 20
    assert "skipped" not in text  # the empty val/a is no class folder to skip


def test_class_folders_one_level_too_deep_are_named_as_the_layout_problem(
    workspace: Workspace, tmp_path: Path
) -> None:
    # train/images/<class>/ read as one class 'images': the warning only said "fewer than 2
    # classes", not that the class folders sit one level too deep.
    rels = [f"{s}/images/{c}" for s in ("train", "val", "test") for c in ("a", "b")]
    text = _flat(cli_ok("data", "add", "deep", str(_mk(tmp_path / "deep", *rels, n=3))))
    assert "fewer than 2 classes have training images" in text
    assert (
        "the only class folder found is 'train/images', whose images sit in its sub-folders "
        "('a', 'b'): class folders belong directly under train/ (train/<class>/<image>), so "
        "'images' was read as one class; move its sub-folders up one level" in text
    )
    flat = _mk(tmp_path / "flat", "images/a", "images/b", n=10)
    text = _flat(cli_ok("data", "add", "flat", str(flat)))
    assert "class folders belong directly in the dataset folder (root/<class>/<image>)" in text
    # A single class without sub-folders keeps the plain warning.
    text = _flat(cli_ok("data", "add", "one", str(_mk(tmp_path / "one", "only", n=10))))
    assert "fewer than 2 classes" in text and "only class folder found" not in text


def _swap(src: Path, dst: Path) -> Path:
    """A copy of split layout ``src`` (``<split>/<class>/<image>``) laid out as class folders
    of split folders (``<class>/<split>/<image>``), the same files."""
    for f in src.rglob("*.png"):
        split, cls, *rest = f.relative_to(src).parts
        target = dst.joinpath(cls, split, *rest)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return dst


def test_class_folders_of_split_folders_ingest_as_the_split_layout(
    workspace: Workspace, tmp_path: Path
) -> None:
    # root/<class>/train/ was read as class folders with nested folders: the given train/test
    # split was dropped and re-split by hash (train 24, val 4, test 4).
    rels = [f"{s}/{c}" for s in ("train", "test") for c in ("benign", "malignant")]
    by_split = _mk(tmp_path / "sc", *rels, n=8)
    _mk(by_split, "train/benign/batch2", n=3)  # nested folders inside a class are kept
    by_class = _swap(by_split, tmp_path / "cs")
    assert (by_class / "benign" / "train" / "batch2" / "0.png").is_file()
    text = _flat(cli_ok("data", "add", "cs", str(by_class)))
    assert "splits: train 19, val 0, test 16" in text
    assert "add the folder(s) <class>/val/ with images" in text
    cli_ok("data", "add", "sc", str(by_split))
    cs, sc = _meta("cs"), _meta("sc")
    assert cs["version"] == sc["version"]  # the same rows in the same order, the same labels
    assert cs["split_sizes"] == sc["split_sizes"] == {"train": 19, "val": 0, "test": 16}
    assert cs["class_names"] == ["benign", "malignant"]
    source = cs["source"]
    assert isinstance(source, dict) and source["layout"] == "class folders of split folders"
    assert source["split_folders"] == {"train": "train", "test": "test"}
    # A val split carved from train picks the same files in both layouts.
    carved = [
        cli_ok("data", "add", n, str(p), "--val-fraction", "0.2")
        for n, p in (("csv", by_class), ("scv", by_split))
    ]
    assert all("new version" in t for t in carved)
    assert _meta("csv")["version"] == _meta("scv")["version"]
    assert _meta("csv")["split_sizes"] == {"train": 15, "val": 4, "test": 16}


def test_class_folders_mixing_split_folders_and_images_are_refused(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    root = _mk(tmp_path / "mix", "a/train", "a/test", "b/train", "b/test")
    _mk(root, "c")  # images straight in class folder c
    err = data_add(root)
    assert "mixes layouts: class folder 'c' holds images or folders that are no split" in err
    assert "while class folder 'a' holds split folders ('test', 'train')" in err
    assert "(root/<class>/<split>/<image>, splits train (train/training)" in err
    assert "or none (root/<class>/<image>)" in err
    extra = _mk(tmp_path / "extra", "a/train", "a/test", "a/more", "b/train")
    err = data_add(extra)
    assert "class folder 'a' holds images or folders that are no split folders ('more')" in err
    assert "beside its split folders ('test', 'train')" in err
    names = _mk(tmp_path / "names", "a/train", "a/val", "b/train", "b/valid")
    err = data_add(names)
    assert "class folders 'a' and 'b' name the val split differently ('val', 'valid')" in err
