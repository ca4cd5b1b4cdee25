"""Symlinks in an image folder: followed when they point inside the folder; skipped, and
named in one warning, when they point outside it, are broken or loop."""

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


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8)
    Image.fromarray(img).save(path)


def _mk(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        for i in range(n):
            _png(root / c / f"img{i}.png", hash((c, i)) % 1000)
    return root


def _source(name: str) -> dict[str, object]:
    return dict(json.loads(cli_ok("data", "show", name, "--json"))["meta"]["source"])


def _n_images(name: str) -> int:
    meta = json.loads(cli_ok("data", "show", name, "--json"))["meta"]
    return int(sum(meta["split_sizes"].values()))


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_symlinks_out_of_the_folder_are_skipped_and_named(
    workspace: Workspace, tmp_path: Path
) -> None:
    """A symlink to an image outside the folder was ingested silently, one to /etc/passwd
    refused the folder ("cannot read ...passwd.png"), and a folder loop went unnamed."""
    root = _mk(tmp_path / "f", {"a": 5, "b": 5})
    _png(tmp_path / "private" / "secret.png", 99)
    (root / "a" / "stolen.png").symlink_to(tmp_path / "private" / "secret.png")
    (root / "b" / "passwd.png").symlink_to("/etc/passwd")
    (root / "b" / "gone.png").symlink_to(root / "nothere.png")
    (root / "a" / "loop").symlink_to("..")
    (root / "outside").symlink_to(tmp_path / "private")  # a class folder out of the folder
    text = _flat(cli_ok("data", "add", "f", str(root)))
    assert _n_images("f") == 10
    assert "warning: skipped 5 symlink(s) pointing outside the folder, broken or looping" in text
    links = _source("f")["skipped_symlinks"]
    assert links == {
        "count": 5,
        "files": [
            "a/loop -> .. (a loop)",
            f"a/stolen.png -> {tmp_path / 'private' / 'secret.png'} (outside the folder)",
            f"b/gone.png -> {root / 'nothere.png'} (broken)",
            "b/passwd.png -> /etc/passwd (outside the folder)",
            f"outside -> {tmp_path / 'private'} (outside the folder)",
        ],
    }


def test_symlinks_inside_the_folder_are_followed(workspace: Workspace, tmp_path: Path) -> None:
    """A folder symlink inside the image folder was not followed (its images left out)."""
    root = _mk(tmp_path / "g", {"a": 5, "b": 5})
    _png(root / "b" / "nested" / "n0.png", 50)
    _png(root / "b" / "nested" / "n1.png", 51)
    (root / "a" / "more").symlink_to(Path("..") / "b" / "nested")  # 2 images, also as a
    (root / "a" / "same.png").symlink_to(root / "b" / "img0.png")  # 1 image, also as a
    text = _flat(cli_ok("data", "add", "g", str(root)))
    assert "symlink(s)" not in text and "duplicate image(s)" in text  # a and b share 3
    assert _n_images("g") == 12 + 3
    assert "skipped_symlinks" not in _source("g")


def test_two_links_into_each_other_end(workspace: Workspace, tmp_path: Path) -> None:
    """a/x -> b and b/y -> a: each is followed once, the link back is a loop."""
    root = _mk(tmp_path / "h", {"a": 4, "b": 4})
    (root / "a" / "x").symlink_to(Path("..") / "b")
    (root / "b" / "y").symlink_to(Path("..") / "a")
    text = _flat(cli_ok("data", "add", "h", str(root)))
    assert _n_images("h") == 16  # each class has its 4 and the other's 4
    files = _source("h")["skipped_symlinks"]["files"]  # type: ignore[index]
    assert files == ["a/x/y -> ../a (a loop)", "b/y/x -> ../b (a loop)"], text


def test_only_symlinks_out_of_the_folder_say_so(
    data_add: Callable[..., str], tmp_path: Path
) -> None:
    outside = _mk(tmp_path / "pool", {"a": 3, "b": 3})
    root = tmp_path / "links"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for f in sorted((outside / c).iterdir()):
            (root / c / f.name).symlink_to(f)
    err = data_add(root)
    assert "has zero images" in err and "(skipped 6 symlink(s): a/img0.png -> " in err, err
