"""`data show --grid`: the path is checked before anything is printed (a .png in a writable
folder), class names outside ASCII are drawn with their glyphs, not a box, and the classes past
the row cap are named, not dropped silently."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pomlia_hpc.cli import main
from pomlia_hpc.data.grid import (
    LABEL_WIDTH_PX,
    TITLE_PX,
    fit_label,
    label_font,
    plan_grid,
)
from pomlia_hpc.data.store import open_version
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

pytestmark = pytest.mark.usefixtures("wide_console")


def _npz(path: Path, n_classes: int = 2, per_split: int = 20, side: int = 8) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 255, (per_split, side, side), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(per_split) % n_classes)[:, None]
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _show_fails(
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    grid: Path,
    *more: str,
) -> str:
    argv = ["pomlia", "--home", str(workspace.home), "data", "show", "d", "--grid", str(grid)]
    monkeypatch.setattr(sys, "argv", [*argv, *more])
    with pytest.raises(SystemExit) as ex:
        main()
    out = capsys.readouterr()
    assert ex.value.code == 2 and "Traceback" not in out.err
    assert out.out == ""  # no fingerprint printed before the error
    return " ".join(out.err.split())


def test_a_bad_grid_path_is_refused_before_anything_is_printed(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_ok("data", "add", "d", str(_npz(tmp_path / "d.npz")))
    capsys.readouterr()
    for suffix in (".jpg", ".txt", ""):
        err = _show_fails(workspace, monkeypatch, capsys, tmp_path / f"g{suffix}")
        assert f"has suffix '{suffix}': expected a .png path" in err
        assert not (tmp_path / f"g{suffix}").exists()
    err = _show_fails(workspace, monkeypatch, capsys, tmp_path / "no" / "g.png")
    assert "folder" in err and "does not exist" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        probe = ro / "x"
        try:
            probe.write_bytes(b"")  # root ignores permissions: skip that case
            writable = True
        except OSError:
            writable = False
        if not writable:
            err = _show_fails(workspace, monkeypatch, capsys, ro / "g.png")
            assert "cannot be written" in err and "expected a writable path" in err
    finally:
        ro.chmod(0o700)
    assert sorted(p.name for p in ro.iterdir()) in ([], ["x"])  # no probe left behind
    cli_ok("data", "show", "d", "--grid", str(tmp_path / "g.PNG"))
    with Image.open(tmp_path / "g.PNG") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--per-class", "0"), "per-class"),
        (("--max-rows", "0"), "max-rows"),
        (("--split", "bogus"), "bogus"),
        (("--classes", "5"), "5"),
        # a canvas past any use (10**9 columns overflowed: a traceback)
        (("--per-class", "1000000000"), "--per-class 1000000000: expected 1 to 64"),
        (("--max-rows", "65"), "--max-rows 65: expected 1 to 64"),
        # empty (an unset variable): read as "every class" / "every split" before
        (("--classes", ""), "class '' is not in this data set"),
        (("--split", ""), "--split is empty"),
    ],
)
def test_bad_grid_options_are_refused_before_the_record_is_printed(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: tuple[str, ...],
    said: str,
) -> None:
    """Without --json the whole record went to stdout before the error (with --json the
    grid was checked first already)."""
    cli_ok("data", "add", "d", str(_npz(tmp_path / "d.npz")))
    capsys.readouterr()
    for json_flag in ((), ("--json",)):
        err = _show_fails(workspace, monkeypatch, capsys, tmp_path / "g.png", *options, *json_flag)
        assert err.startswith("error: ") and said in err, err
    assert not (tmp_path / "g.png").exists()


def test_non_ascii_class_names_are_drawn_not_boxed(workspace: Workspace, tmp_path: Path) -> None:
    src = str(_npz(tmp_path / "d.npz"))
    # U+E000 (private use) has a glyph in no font: it is always drawn as the missing-glyph box.
    for name, names in (("accent", "dög,cat"), ("boxed", "d\ue000g,cat")):
        cli_ok("data", "add", name, src, "--class-names", names)
        cli_ok("data", "show", name, "--grid", str(tmp_path / f"{name}.png"))
    with Image.open(tmp_path / "accent.png") as a, Image.open(tmp_path / "boxed.png") as b:
        assert a.size == b.size
        # Same images (same seed), so only the labels can differ: 'ö' must not be the box.
        assert np.any(np.asarray(a) != np.asarray(b))


def test_a_long_upper_case_class_name_stays_in_the_label_column(
    workspace: Workspace, tmp_path: Path
) -> None:
    # 18 characters were kept whatever their width: ~130-170 px upper case in the 120 px column.
    long = "WWWWWWWWWWWWWWWWWWWWWWWW"
    cli_ok("data", "add", "up", str(_npz(tmp_path / "d.npz")), "--class-names", f"{long},cat")
    cli_ok("data", "show", "up", "--grid", str(tmp_path / "up.png"))
    label = fit_label(long)
    assert label.endswith("…") and label_font().getlength(label) <= LABEL_WIDTH_PX - 8
    assert fit_label("cat") == "cat"
    with Image.open(tmp_path / "up.png") as im:
        pixels = np.asarray(im.convert("L"))
    # The strip just before the first tile (its 1 px border included) is left white, below the
    # title band (the title spans the whole width).
    assert (pixels[TITLE_PX:, LABEL_WIDTH_PX - 4 : LABEL_WIDTH_PX + 1] == 255).all()


@pytest.mark.parametrize("name", ["ben\nign", "tab\there", "x\u2028y"])
def test_control_characters_in_a_label_are_drawn_escaped(name: str) -> None:
    # a newline in a class name crashed `data show --grid` (raqm_layout() failed)
    label = fit_label(name)
    assert label == repr(name)[1:-1] and "\n" not in label
    ImageDraw.Draw(Image.new("RGB", (400, 20))).text((0, 0), label, font=label_font())


def test_classes_past_the_row_cap_are_named_and_can_be_chosen(
    workspace: Workspace, tmp_path: Path
) -> None:
    # 25 classes: rows 0-19 were drawn and the other five left out without a word.
    cli_ok("data", "add", "many", str(_npz(tmp_path / "m.npz", n_classes=25, per_split=100)))
    text = " ".join(cli_ok("data", "show", "many", "--grid", str(tmp_path / "m.png")).split())
    assert "note: 5 more classes not drawn (20, 21, 22, 23, 24)" in text
    assert "--max-rows 25" in text and "--classes" in text
    store = open_version(workspace, "many")
    plan = plan_grid(store)
    assert [r.name for r in plan.rows] == [str(i) for i in range(20)]
    assert plan.left_out == ["20", "21", "22", "23", "24"]
    assert plan.title == f"{store.ref}, all splits, 20 of 25 classes"
    assert not plan_grid(store, max_rows=25).left_out
    chosen = plan_grid(store, classes=["24", "3"], split="val")
    assert [r.cls for r in chosen.rows] == [24, 3] and not chosen.left_out
    lo, hi = store.split_range("val")
    assert chosen.title == f"{store.ref}, val split"
    assert all(lo <= i < hi for r in chosen.rows for i in r.picks)
    text = cli_ok("data", "show", "many", "--grid", str(tmp_path / "c.png"), "--classes", "24,3")
    assert "note:" not in text and "2 classes" in text


def test_a_class_with_fewer_images_than_columns_says_how_many(
    workspace: Workspace, tmp_path: Path
) -> None:
    # 4 images of each class in the val split, 8 columns: 4 tiles were left plain white.
    cli_ok("data", "add", "few", str(_npz(tmp_path / "f.npz", n_classes=5)))
    store = open_version(workspace, "few")
    plan = plan_grid(store, split="val", per_class=8)
    assert plan.columns == 8 and [(len(r.picks), r.available) for r in plan.rows] == [(4, 4)] * 5
    cli_ok("data", "show", "few", "--grid", str(tmp_path / "f.png"), "--split", "val")
    with Image.open(tmp_path / "f.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    # The fifth column of the first row is a grey hatched tile, not white.
    tile = pixels[
        TITLE_PX + 2 : TITLE_PX + 60, LABEL_WIDTH_PX + 4 * 66 + 2 : LABEL_WIDTH_PX + 5 * 66
    ]
    assert (tile != 255).any()


def test_large_images_are_shrunk_to_the_tile_size(workspace: Workspace, tmp_path: Path) -> None:
    """Tiles were drawn at the images' own size: 4096 px images made a canvas of gigabytes."""
    cli_ok("data", "add", "big", str(_npz(tmp_path / "big.npz", per_split=4, side=300)))
    out = tmp_path / "g.png"
    cli_ok("data", "show", "big", "--grid", str(out), "--per-class", "2")
    with Image.open(out) as im:
        # the label column, then 2 tiles of at most 128 px (and their 1 px borders) per row
        assert im.width == 120 + 2 * (128 + 2), im.size
