"""`pomlia data synth/add/list/show/verify` end to end on look-alikes (in-process CLI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.cli import app
from pomlia_hpc.data.medmnist_info import FLAGS_2D
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner

pytestmark = pytest.mark.usefixtures("wide_console")


def test_synth_add_list_show_verify(workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "la"
    text = cli_ok("data", "synth", "--scale", "0.005", "--seed", "3", str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{f}.npz" for f in FLAGS_2D)
    assert "H&E-like" in text  # the documented style is shown
    text = cli_ok("data", "add", "chestmnist", "--root", str(out))
    assert "new version chestmnist@" in text
    # off a terminal (a Slurm output file) rich's bar printed nothing: time-stamped lines now
    for stage in ("ingest", "fingerprint"):
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] {stage}: (\d+)/\1 images \(100%\)", text, re.M)
    version = text.split("chestmnist@")[1].split()[0]
    text = cli_ok("data", "add", "chestmnist", "--root", str(out))
    assert f"identical content: existing version chestmnist@{version}" in text
    cli_ok("data", "add", "organs", str(out / "organsmnist.npz"))
    text = cli_ok("data", "list")
    assert "chestmnist" in text and version in text and "organs" in text
    assert "multi-label" in text
    grid = tmp_path / "grid.png"
    text = cli_ok("data", "show", f"chestmnist@{version[:8]}", "--grid", str(grid))
    assert "explicit fingerprint" in text and '"near_constant"' in text and "atelectasis" in text
    with Image.open(grid) as im:
        assert im.width > 8 * 28 and im.height >= 14 * 28  # one row per label
    payload = json.loads(cli_ok("data", "show", "organs", "--json"))
    assert payload["meta"]["n_classes"] == 11 and payload["fingerprint"]["channels"] == 1
    assert "chunk_hashes" not in payload["meta"]
    text = cli_ok("data", "verify")
    assert text.count(" ok ") == 2
    # one report per version, each up to its own size, each naming its version
    done = re.findall(r"verify (\S+@[0-9a-f]+): (\d+)/\2 images \(100%\)", text)
    assert sorted(ref.split("@")[0] for ref, _n in done) == ["chestmnist", "organs"], text


def test_verify_exits_1_and_names_the_damaged_chunk(workspace: Workspace, tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 255, (10000, 28, 28), dtype=np.uint8)
    y = np.arange(10000)[:, None] % 2
    np.savez(tmp_path / "b.npz", train_images=x, train_labels=y)
    cli_ok("data", "add", "big", str(tmp_path / "b.npz"))
    (store,) = (workspace.stores / "big").iterdir()
    chunk = store / "images" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-100])  # truncated chunk file
    res = runner.invoke(app, ["data", "verify", "big"])
    assert res.exit_code == 1
    assert "DAMAGED" in res.output and "1 damaged image chunk(s): 1" in res.output


def test_add_without_source_needs_a_flag(workspace: Workspace) -> None:
    res = runner.invoke(app, ["data", "add", "mine"])
    assert res.exit_code == 2 and "SOURCE" in res.output


def test_add_says_how_many_gray_images_of_a_mixed_folder_became_rgb(
    workspace: Workspace, tmp_path: Path
) -> None:
    # They were converted without notice: keep the conversion, but say so.
    for i in range(3):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / f"g{i}.png")
    for cls in ("a", "b"):
        (tmp_path / "mixed" / cls).mkdir(parents=True)
        (tmp_path / "gray" / cls).mkdir(parents=True)
        for i in range(3):
            Image.open(tmp_path / f"g{i}.png").save(tmp_path / "mixed" / cls / f"{i}.png")
            Image.open(tmp_path / f"g{i}.png").save(tmp_path / "gray" / cls / f"{i}.png")
    colour = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "mixed" / "b" / "rgb.png")
    text = cli_ok("data", "add", "mixed", str(tmp_path / "mixed"))
    assert "note: 6 gray image(s) converted to RGB" in text
    assert (
        json.loads(cli_ok("data", "show", "mixed", "--json"))["meta"]["source"]["gray_to_rgb"] == 6
    )
    assert "converted to RGB" not in cli_ok("data", "add", "gray", str(tmp_path / "gray"))


def test_synth_with_a_bad_scale_makes_no_folder(workspace: Workspace, tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "synth", "--scale", "-1", str(tmp_path / "out" / "deep")])
    assert "look-alike scale -1.0 is not valid" in str(res.exception)
    assert not (tmp_path / "out").exists()


def test_a_dataset_given_by_its_id_is_named_by_its_name(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Every command takes a dataset's name or id (registry.lookup): `data show 1` named the
    version `1@<version>` (in `--json`'s "ref" too), `data verify 1` likewise, and `data list
    1` said "dataset '1' not found; known: blood"."""
    from tests.fixtures.factories import tiny_npz

    text = cli_ok("data", "add", "blood", str(tiny_npz(tmp_path / "b.npz")))
    version = text.split("blood@")[1].split()[0]
    assert json.loads(cli_ok("data", "show", "1", "--json"))["ref"] == f"blood@{version}"
    assert f"blood@{version}" in cli_ok("data", "show", f"1@{version[:6]}")
    assert f"blood@{version}" in cli_ok("data", "verify", "1")
    assert version in cli_ok("data", "list", "1")
