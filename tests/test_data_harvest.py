"""Harvest at the data level: parent rows plus hash-split new images, parent = the given
version, the fixed and production test ranges recorded, the same inputs give the same version."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.harvest import NewImages, harvest_info, harvest_version, hash_split
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.predlog import PredictionLog, log_dir
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import log_line, tiny_arrays, tiny_npz, write_npz
from tests.loop_support import CLASSES, make_model, write_production


def _new(n: int, seed: int = 5) -> NewImages:
    a = tiny_arrays("bloodmnist", sizes=(n, 0, 0), seed=seed)
    return NewImages(
        a["train_images"], a["train_labels"], [f"{seed:04d}{i:028x}" for i in range(n)]
    )


def test_harvest_adds_new_rows_per_split_under_the_given_parent(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    base = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "a.npz"))
    # A newer, unrelated version exists: the harvest's parent must still be ``base``.
    other = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz", seed=9))
    new = _new(30)
    rec = harvest_version(
        workspace, reg, find_version(reg, base.ref), "blood", new, {"model": "m1"}
    )
    assert rec.created and rec.parent == base.version and rec.parent != other.version
    store = open_store(rec.store_path)
    info = harvest_info(store.meta)
    assert info is not None and info["model"] == "m1" and info["n_new"] == 30
    per = {s: sum(hash_split(k) == s for k in new.keys) for s in ("train", "val", "test")}
    assert info["new_per_split"] == per
    parent = open_store(base.store_path)
    for split in ("train", "val", "test"):
        lo, hi = store.split_range(split)
        plo, phi = parent.split_range(split)
        assert hi - lo == (phi - plo) + per[split]
        np.testing.assert_array_equal(
            store.read_rows(lo, lo + (phi - plo)), parent.read_rows(plo, phi)
        )
    flo, fhi = info["fixed_test_rows"]
    plo, phi = info["production_test_rows"]
    assert (flo, fhi) == (store.split_range("test")[0], store.split_range("test")[0] + 13)
    assert (plo, phi) == (fhi, store.split_range("test")[1])
    test_keys = [i for i, k in enumerate(new.keys) if hash_split(k) == "test"]
    np.testing.assert_array_equal(store.read_rows(plo, phi), new.images[test_keys])
    np.testing.assert_array_equal(store.read_labels(plo, phi)[:, 0], new.labels[test_keys, 0])
    again = harvest_version(
        workspace, reg, find_version(reg, base.ref), "blood", new, {"model": "m1"}
    )
    assert not again.created and again.version == rec.version


def test_harvest_refuses_nothing_and_wrong_shapes(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    base = find_version(reg, ingest(workspace, reg, "blood", tiny_npz(tmp_path / "a.npz")).ref)
    empty = NewImages(np.zeros((0, 28, 28, 3), np.uint8), np.zeros((0, 1), np.int64), [])
    with pytest.raises(InputError, match="no labelled images"):
        harvest_version(workspace, reg, base, "blood", empty, {})
    wrong = NewImages(np.zeros((2, 14, 14, 3), np.uint8), np.zeros((2, 1), np.int64), ["a", "b"])
    with pytest.raises(InputError, match=r"expected uint8 \(28, 28, 3\)"):
        harvest_version(workspace, reg, base, "blood", wrong, {})
    assert len(list((workspace.stores / "blood").glob("*.zarr"))) == 1


def test_harvest_keeps_the_parents_16_bit_intensity_scaling(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    # The kept inputs were made 8-bit on the parent's scale: without the parent's scaling in
    # the version's meta, a retrained model would be exported with none (uploads / 65535) and
    # the hot swap from the champion (scaling set) to it would be refused.
    images = np.zeros((40, 28, 28), np.uint16)
    images[:, 0, 0] = np.arange(40) * 100
    path = write_npz(
        tmp_path / "d.npz", {"train_images": images, "train_labels": np.arange(40) % 2}
    )
    base = ingest(workspace, reg, "deep", path)
    scaling = open_store(base.store_path).meta["source"]["intensity_scaling"]
    assert scaling["max"] == 3900
    a = tiny_arrays("bloodmnist", sizes=(6, 0, 0), seed=3)
    new = NewImages(
        a["train_images"][..., :1], a["train_labels"] % 2, [f"k{i:030x}" for i in range(6)]
    )
    rec = harvest_version(workspace, reg, find_version(reg, base.ref), "deep", new, {})
    assert open_store(rec.store_path).meta["source"]["intensity_scaling"] == scaling
    # Where export reads it: the registry's meta of the version a model was trained on.
    meta = find_version(reg, rec.ref).meta or {}
    assert meta["source"]["intensity_scaling"] == scaling
    # A harvest of the harvest keeps it too.
    again = harvest_version(workspace, reg, find_version(reg, rec.ref), "deep", _new_gray(4), {})
    assert open_store(again.store_path).meta["source"]["intensity_scaling"] == scaling


def _new_gray(n: int) -> NewImages:
    a = tiny_arrays("bloodmnist", sizes=(n, 0, 0), seed=11)
    return NewImages(a["train_images"][..., :1], a["train_labels"] % 2, [f"g{i}" for i in range(n)])


def test_harvest_skips_ids_in_the_parent_and_replaces_corrected_labels(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    # A --since reaching back into the parent's window reads the parent's images again, and a
    # corrected label ("replaces": true) comes back for an id the parent holds: the first must
    # be skipped, the second must replace the parent's row, never add a second copy.
    base = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "a.npz"))
    first = _new(30)
    one = harvest_version(workspace, reg, find_version(reg, base.ref), "blood", first, {})
    rows = harvest_info(open_store(one.store_path).meta)["prediction_rows"]  # type: ignore[index]
    assert sorted(rows) == sorted(first.keys)
    fixed = int(first.labels[3, 0] + 1) % 8
    labels = first.labels.copy()
    labels[3, 0] = fixed
    more = _new(5, seed=6)
    again = NewImages(
        np.concatenate([first.images, more.images]),
        np.concatenate([labels, more.labels]),
        first.keys + more.keys,
    )
    two = harvest_version(workspace, reg, find_version(reg, one.ref), "blood", again, {})
    store = open_store(two.store_path)
    info = harvest_info(store.meta)
    assert info is not None
    assert (info["skipped_in_parent"], info["replaced"], info["n_new"]) == (29, 1, 6)
    assert info["replaced_ids"] == [first.keys[3]]
    assert store.n_images == open_store(one.store_path).n_images + 5
    rows = info["prediction_rows"]
    assert sorted(rows) == sorted(first.keys + more.keys)
    labels_now = store.read_labels()
    images_now = store.read_rows(0, store.n_images)
    for i, key in enumerate(again.keys):  # every id once, on its row, with its latest label
        np.testing.assert_array_equal(images_now[rows[key]], again.images[i])
        assert labels_now[rows[key], 0] == again.labels[i, 0]
    for split in ("train", "val", "test"):
        lo, hi = store.split_range(split)
        assert all(lo <= rows[k] < hi for k in again.keys if hash_split(k) == split)
    with pytest.raises(InputError, match=r"all 35 labelled image.* already in"):
        harvest_version(workspace, reg, find_version(reg, two.ref), "blood", again, {})


@pytest.mark.usefixtures("wide_console")
def test_harvest_cli_says_what_it_skipped_and_replaced(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    # `data harvest` end to end: a --since reaching back into the parent's window and a
    # corrected label of a harvested image; the command says what it skipped and replaced.
    a = tiny_arrays("bloodmnist", sizes=(8, 8, 8), seed=1)
    a = {k: v % len(CLASSES) if k.endswith("labels") else v for k, v in a.items()}
    base = ingest(workspace, reg, "d", write_npz(tmp_path / "d.npz", a), class_names=CLASSES)
    make_model(reg, tmp_path, "m", 1, base.id)
    logs = log_dir(workspace.path("logs"), "m")
    rng = np.random.default_rng(3)
    ids = write_production(logs, rng.integers(0, 255, (20, 28, 28, 3), np.uint8), np.zeros(20))
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    res = CliRunner().invoke(app, ["data", "harvest", "m"])
    assert res.exit_code == 0, res.output
    # The recorded ranges are [start, end): said as their first and last row and their count
    # (printed as the list, [16, 24] read as 9 rows, one too many).
    info = harvest_info(open_store(find_version(reg, "d").store_path).meta)
    assert info is not None
    first_row, end_row = info["fixed_test_rows"]
    assert end_row - first_row == 8  # the parent's 8 test images
    said = f"fixed test rows {first_row}-{end_row - 1} (8 rows)"
    assert said in " ".join(res.output.split()), res.output
    # The harvested model is retrained: its successor is trained on the harvest.
    first = find_version(reg, "d").id
    make_model(reg, tmp_path, "m2", 2, first)
    plog = PredictionLog(logs)  # a corrected label ("replaces": true) of a harvested image
    now = datetime.now(UTC).isoformat()
    plog.append(
        [log_line("feedback", prediction_id=ids[0], label_index=1, replaces=True, time=now)]
    )
    plog.close()
    res = CliRunner().invoke(
        app, ["data", "harvest", "m2", "--log-dir", str(logs), "--since", start]
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "skipped 19 image(s) already in the parent with the same label" in text
    assert "replaced 1 image(s) of the parent with a corrected label" in text and ids[0] in text


def test_a_damaged_kept_input_is_one_warning_line_of_the_command(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """A library's log warning (here the inbox reader's) printed through Python's fallback
    handler as the bare message, which read like the command's output; the command's own
    process (not CliRunner, where pytest's log capture takes it) shows the line as printed."""
    a = tiny_arrays("bloodmnist", sizes=(8, 8, 8), seed=1)
    a = {k: v % len(CLASSES) if k.endswith("labels") else v for k, v in a.items()}
    base = ingest(workspace, reg, "d", write_npz(tmp_path / "d.npz", a), class_names=CLASSES)
    make_model(reg, tmp_path, "m", 1, base.id)
    logs = log_dir(workspace.path("logs"), "m")
    images = np.random.default_rng(3).integers(0, 255, (6, 28, 28, 3), np.uint8)
    write_production(logs, images, np.zeros(6))
    (chunk,) = (logs / "inputs").glob("*.pin")
    data = bytearray(chunk.read_bytes())
    size = len(data) // 6  # six records of one shape
    data[2 * size + size // 2] ^= 0xFF  # the third input's payload: its CRC fails
    chunk.write_bytes(bytes(data))
    res = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "data", "harvest", "m"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    said = [line for line in res.stderr.splitlines() if "damaged record" in line]
    assert said == [
        f"warning: kept inputs {chunk}: a damaged record at byte {2 * size} ({size} bytes) "
        "was skipped; the records after it are read"
    ], res.stderr
