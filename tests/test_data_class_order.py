"""Class names and their order: image-folder classes named by integers in numeric order,
an order declared with --class-names, names kept in Unicode NFC (a Mac's NFD copy is the
same version), names that differ only in case refused for every source, and the note for a
renamed file."""

from __future__ import annotations

import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.data.classes import version_changes
from pomlia_hpc.data.sources import open_source
from tests.fixtures.cli import data_add_line, data_show_json
from tests.fixtures.factories import tiny_arrays, write_npz

Run = Callable[..., str]

pytestmark = pytest.mark.usefixtures("workspace")


def _folder(root: Path, classes: list[str], n: int = 4, size: tuple[int, int] = (8, 8)) -> Path:
    rng = np.random.default_rng(len(classes))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, size, dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def test_class_folders_named_by_integers_are_in_numeric_order(tmp_path: Path) -> None:
    # Folders 0..10 gave classes 0, 1, 10, 2, ...: folder 10 was ordinal label 2.
    folder = _folder(tmp_path / "ord", [str(i) for i in range(11)])
    out = data_add_line("ord", str(folder), "--task-type", "ordinal")
    meta = data_show_json("ord")["meta"]
    assert isinstance(meta, dict)
    assert meta["class_names"] == [str(i) for i in range(11)]
    assert meta["source"]["class_order"] == "numeric"
    assert "alphabetical" not in out


def test_folder_class_names_declare_the_order(tmp_path: Path, data_add: Run) -> None:
    folder = _folder(tmp_path / "g", ["low", "mid", "high"])
    err = data_add(folder, "--class-names", "low,mid,hi")
    assert err == (
        f"error: --class-names for image folder '{folder}' (no class folder with images named "
        "'hi'; class folder 'high' not named): expected the class folders' names (high, low, "
        "mid), each once, in the order wanted"
    )
    out = data_add_line("g", str(folder), "--task-type", "ordinal")
    assert (
        "warning: an ordinal task, but its class folders are ordered alphabetically (high, "
        "low, mid): the order is the classes' rank; to set it, pass --class-names"
    ) in out
    out = data_add_line("g", str(folder), "--task-type", "ordinal", "--class-names", "low,mid,high")
    assert "ordered alphabetically" not in out
    assert "classes high, low, mid -> low, mid, high (the same classes in another order" in out
    meta = data_show_json("g")["meta"]
    assert isinstance(meta, dict) and meta["class_names"] == ["low", "mid", "high"]


def test_a_re_add_in_numeric_order_says_why_the_classes_changed() -> None:
    # Versions keep the order they were made with; a re-add of an integer-named folder made
    # before numeric ordering is a new version, and the warning says why.
    old = {"class_names": ["0", "1", "10", "2"]}
    new = {"class_names": ["0", "1", "2", "10"], "source": {"class_order": "numeric"}}
    (change,) = version_changes(old, new)
    assert change.startswith("classes 0, 1, 10, 2 -> 0, 1, 2, 10 (the same classes, now in ")
    assert "numeric order: class folders named by integers are ordered by value" in change
    nfd = unicodedata.normalize("NFD", "Läsion")
    (change,) = version_changes({"class_names": [nfd]}, {"class_names": ["Läsion"]})
    assert "now kept in Unicode NFC form: they print alike" in change
    many = {"class_names": [str(i) for i in range(256)]}
    (change,) = version_changes({"class_names": ["0", "1"]}, many)
    assert change == "classes 0, 1 -> 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 246 more"


def test_a_macs_nfd_copy_of_a_folder_is_the_same_version(tmp_path: Path) -> None:
    # A Mac (NFD) copy made a new version "classes Läsion, gesund -> Läsion, gesund", with
    # another split (the split is decided by hashes of the paths).
    nfc = _folder(tmp_path / "nfc", ["Läsion", "gesund"], n=10)
    (nfc / "Läsion" / "bild-ä.png").write_bytes((nfc / "Läsion" / "0.png").read_bytes())
    (nfc / "Läsion" / "0.png").unlink()
    nfd = tmp_path / "nfd"
    for f in sorted(nfc.rglob("*.png")):
        rel = unicodedata.normalize("NFD", f.relative_to(nfc).as_posix())
        (nfd / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, nfd / rel)
    assert {p.name for p in nfd.iterdir()} != {p.name for p in nfc.iterdir()}
    first = data_add_line("mac", str(nfc))
    again = data_add_line("mac", str(nfd))
    assert "new version" in first and "identical content: existing version" in again
    meta = data_show_json("mac")["meta"]
    assert isinstance(meta, dict) and meta["class_names"] == ["Läsion", "gesund"]


def test_two_folders_of_one_name_in_two_unicode_forms_are_refused(
    tmp_path: Path, data_add: Run
) -> None:
    _folder(tmp_path / "both", [unicodedata.normalize("NFC", "Zelltyp-ä"), "b"])
    _folder(tmp_path / "x", [unicodedata.normalize("NFD", "Zelltyp-ä")])
    shutil.move(tmp_path / "x" / unicodedata.normalize("NFD", "Zelltyp-ä"), tmp_path / "both")
    err = data_add(tmp_path / "both")
    assert "differ only in Unicode form (NFC / NFD: " in err
    assert "'Zelltyp-a\\u0308'" in err and "'Zelltyp-\\xe4'" in err


def test_twin_folders_in_one_split_are_refused_when_an_earlier_split_has_the_name(
    tmp_path: Path, data_add: Run
) -> None:
    # train/Läsion, val/Läsion (NFC) and val/Läsion (NFD): the check kept only the first
    # folder of a name (train's), so val's two folders were silently merged into one class.
    nfc, nfd = (unicodedata.normalize(form, "Läsion") for form in ("NFC", "NFD"))
    root = tmp_path / "sbs"
    _folder(root / "train", [nfc, "gesund"])
    _folder(root / "val", [nfc, "gesund"])
    _folder(tmp_path / "x", [nfd])
    shutil.move(tmp_path / "x" / nfd, root / "val")
    err = data_add(root)
    assert "differ only in Unicode form (NFC / NFD: " in err, err
    assert "'val/" in err and "'train/" not in err, err


def test_class_names_differing_only_in_case_are_refused_for_npz_and_hdf5(
    tmp_path: Path, data_add: Run
) -> None:
    arrays = tiny_arrays("bloodmnist", (30, 9, 9))
    for split in ("train", "val", "test"):
        arrays[f"{split}_labels"] = np.arange(len(arrays[f"{split}_labels"]))[:, None] % 3
    npz = write_npz(tmp_path / "a.npz", arrays)
    err = data_add(npz, "--class-names", "Tumor,tumor,Normal")
    assert err == (
        "error: --class-names 'Tumor,tumor,Normal' names 'Tumor' and 'tumor', which differ only "
        "in case: expected one name per class (as for class folders)"
    )
    nfd = unicodedata.normalize("NFD", "Läsion")
    names = open_source(npz, class_names=f"{nfd},b,c").label_info.class_names
    assert names[0] == "Läsion" and len(names[0]) == 6


def test_a_renamed_file_keeps_its_split(tmp_path: Path) -> None:
    # "only the split differs (split sizes now round half up since 607d07e)" though the sizes
    # were the same and a renamed file had moved in the split; a renamed file now keeps the
    # split of the version it was added as (data.carry): only the order of rows differs.
    folder = _folder(tmp_path / "ver", ["A", "B"], n=10)
    data_add_line("ver", str(folder))
    seen = set()
    for i in range(10):
        (folder / "B" / f"{i}.png").rename(folder / "B" / f"{i}renamed.png")
        out = data_add_line("ver", str(folder))
        assert "607d07e" not in out and "only the split differs" not in out, out
        if "same split, only the order of the rows differs" in out:
            seen.add("order")
        else:  # the row kept its place among the others too
            assert "identical content: existing version" in out, out
    assert seen == {"order"}
