"""Split sizes carved per class round half up (2.5 -> 3), not half to even (Python's round,
which gave a class of 25 the same count as one of 15): one documented rule for image folders
and HDF5 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.cli import app
from pomlia_hpc.data.sources.base import carved_count, stratified_split
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

pytestmark = pytest.mark.usefixtures("wide_console")

#: Images per class and the val (= test) count each gets at the default fraction 0.1.
SIZES = {"a": 25, "b": 15, "c": 3, "d": 45}
CARVED = {"a": 3, "b": 2, "c": 1, "d": 5}


@pytest.mark.parametrize(
    ("n", "fraction", "want"),
    [(25, 0.1, 3), (15, 0.1, 2), (45, 0.1, 5), (24, 0.1, 2), (45, 0.7, 32), (3, 0.1, 1), (7, 0, 0)],
)
def test_carved_count_rounds_half_up(n: int, fraction: float, want: int) -> None:
    assert carved_count(n, fraction) == want


def test_stratified_split_gives_each_class_its_half_up_share() -> None:
    classes = np.concatenate([np.full(n, i) for i, n in enumerate(SIZES.values())])
    ranks = np.arange(len(classes), dtype=np.uint64)[::-1].copy()
    codes = stratified_split(ranks, classes, 0.1, 0.1)
    for i, name in enumerate(SIZES):
        mine = codes[classes == i]
        assert (int((mine == 1).sum()), int((mine == 2).sum())) == (CARVED[name],) * 2, name


def test_an_image_folder_is_split_half_up_per_class(workspace: Workspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in SIZES.items():
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    cli_ok("data", "add", "roundy", str(tmp_path / "imgs"))
    meta = json.loads(cli_ok("data", "show", "roundy", "--json"))["meta"]
    carved = sum(CARVED.values())
    sizes = meta["split_sizes"]
    assert (sizes["val"], sizes["test"]) == (carved, carved)
    assert sizes["train"] == sum(SIZES.values()) - 2 * carved


def test_re_adding_an_unchanged_folder_split_anew_says_so(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder added before the rounding changed (classes of 25 and 14: 33/3/3), added again,
    # silently became a new version (31/4/4) where the guide promised the same one.
    from pomlia_hpc.data.sources import base
    from tests.fixtures.cli import runner

    rng = np.random.default_rng(1)
    for name, n in {"a": 25, "b": 14}.items():
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    with monkeypatch.context() as mp:  # the old rule: half to even
        mp.setattr(base, "carved_count", lambda n, f: max(1, round(n * f)) if f > 0 else 0)
        cli_ok("data", "add", "roundy", str(tmp_path / "imgs"))
    old = json.loads(cli_ok("data", "show", "roundy", "--json"))
    # Added again to the same workspace, the images keep the split of the version they were
    # added as (data.carry): the same version, not a split anew.
    res = runner.invoke(app, ["data", "add", "roundy", str(tmp_path / "imgs")])
    assert res.exit_code == 0, res.output
    assert f"identical content: existing version {old['ref']}" in " ".join(res.output.split())
    # In another workspace (no version to grow from), the note says why the split differs.
    from pomlia_hpc.data.splits import resplit_note
    from pomlia_hpc.data.store import open_version

    new_home = tmp_path / "other-home"
    monkeypatch.setenv("POMLIA_HOME", str(new_home))
    cli_ok("init")
    cli_ok("data", "add", "roundy", str(tmp_path / "imgs"))
    ref = old["ref"]
    other = Workspace(new_home, f"sqlite:///{new_home / 'registry.db'}", "local")
    note = resplit_note(open_version(other, "roundy"), open_version(workspace, ref))
    assert note == (
        f"same images as {ref}; only the split differs (split sizes now round half up "
        f"since 607d07e); use {ref} to keep the old split"
    )


def test_the_resplit_note_reads_each_store_once(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note hashed every row of both stores to tell "same images", then again to count
    the images in another split: each store was read twice."""
    from pomlia_hpc.data.splits import resplit_note
    from pomlia_hpc.data.store import DatasetStore, open_version
    from tests.fixtures.factories import tiny_arrays, write_npz

    arrays = tiny_arrays("bloodmnist", (40, 7, 13), size=28)
    cli_ok("data", "add", "moved", str(write_npz(tmp_path / "a.npz", arrays)))
    first = open_version(workspace, "moved").ref
    # One image each way between train and val: same images, same sizes, another split.
    for key in ("images", "labels"):
        tr, va = arrays[f"train_{key}"].copy(), arrays[f"val_{key}"].copy()
        arrays[f"train_{key}"][0], arrays[f"val_{key}"][0] = va[0], tr[0]
    cli_ok("data", "add", "moved", str(write_npz(tmp_path / "b.npz", arrays)))
    new, parent = open_version(workspace, "moved"), open_version(workspace, first)
    reads: list[int] = []
    read_rows = DatasetStore.read_rows

    def counted(self: DatasetStore, lo: int, hi: int) -> np.ndarray:
        reads.append(hi - lo)
        return read_rows(self, lo, hi)

    monkeypatch.setattr(DatasetStore, "read_rows", counted)
    note = resplit_note(new, parent)
    assert note is not None and "2 image(s) in another split" in note, note
    assert sum(reads) == new.n_images + parent.n_images, reads
