"""Ingest into versioned Zarr stores: layout, versions, sources, registry, verify, crashes."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from sqlalchemy import select

from pomlia_hpc.data.api import clean_stale_staging, ingest, list_versions, show, verify
from pomlia_hpc.data.medmnist_info import flag_info
from pomlia_hpc.data.sources.medmnist import medmnist_file
from pomlia_hpc.data.store import SPLITS, open_store, open_version
from pomlia_hpc.data.synth import write_lookalikes
from pomlia_hpc.data.writer import StoreWriter
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import host_field
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import nothing_visible, tiny_arrays, tiny_npz, write_npz


def _concat(arrays: dict[str, np.ndarray], kind: str) -> np.ndarray:
    return np.concatenate([arrays[f"{s}_{kind}"] for s in SPLITS])


# ----------------------------------------------------------------------------- layout


def test_npz_roundtrip_layout_and_registry(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    arrays = tiny_arrays("bloodmnist", (40, 7, 13))
    rec = ingest(
        workspace,
        reg,
        "blood",
        write_npz(tmp_path / "b.npz", arrays),
        class_names=list(flag_info("bloodmnist").class_names),
    )
    assert rec.created and rec.parent is None and rec.n_images == 60
    assert rec.store_path == workspace.stores / "blood" / f"{rec.version}.zarr"
    ds = open_version(workspace, "blood")
    assert ds.images.dtype == np.uint8 and ds.images.shape == (60, 28, 28, 3)
    assert ds.images.chunks == (ds.chunk_rows, 28, 28, 3)  # chunked along N only
    assert "blosc" in str(ds.images.compressors).lower()
    np.testing.assert_array_equal(ds.read_rows(0, 60), _concat(arrays, "images"))
    np.testing.assert_array_equal(ds.read_labels(), _concat(arrays, "labels").astype(np.int32))
    assert ds.split[:].tolist() == [0] * 40 + [1] * 7 + [2] * 13
    assert ds.split_range("val") == (40, 47)
    m = ds.meta
    assert m["task_type"] == "multi-class" and m["n_classes"] == 8 and m["channels"] == 3
    assert m["class_names"][0] == "basophil" and (m["height"], m["width"], m["size"]) == (28,) * 3
    assert m["split_sizes"] == {"train": 40, "val": 7, "test": 13}
    assert sum(m["label_distribution"]["train"]) == 40
    assert m["source"]["kind"] == "npz" and m["ingested_at"]
    with reg.session() as s:
        row = s.scalar(select(DatasetVersion))
        assert row is not None and s.get(Dataset, row.dataset_id).name == "blood"
        assert row.meta["version"] == row.version == rec.version
        assert row.fingerprint["n_images"] == 60 and row.fingerprint == ds.fingerprint
    assert not list(workspace.tmp.iterdir())


def test_multilabel_labels_kept(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    rec = ingest(workspace, reg, "chest", tiny_npz(tmp_path / "c.npz", "chestmnist"))
    ds = open_store(rec.store_path)
    assert ds.labels.shape == (60, 14) and ds.images.shape == (60, 28, 28, 1)
    assert ds.task_type == "multi-label, binary-class"
    assert ds.fingerprint["class_balance"]["all"]["counts"] == ds.read_labels().sum(0).tolist()


def test_records_on_each_registry_backend(
    workspace: Workspace, registry: Registry, tmp_path: Path
) -> None:
    rec = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "b.npz"))
    again = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "b2.npz"))
    assert again.version == rec.version and not again.created
    assert [v.version for v in list_versions(registry)] == [rec.version]


# ----------------------------------------------------------------------------- versions


def test_identical_content_same_version_changed_content_new_child(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    a = tiny_arrays("organamnist", (30, 5, 5))
    first = ingest(workspace, reg, "organ", write_npz(tmp_path / "a.npz", a))
    # Same content from another file (uncompressed this time): same version, no copy.
    same = ingest(workspace, reg, "organ", write_npz(tmp_path / "a2.npz", a, compressed=False))
    assert (same.version, same.created) == (first.version, False)
    assert len(list((workspace.stores / "organ").iterdir())) == 1
    b = dict(a)
    b["train_images"] = a["train_images"].copy()
    b["train_images"][3, 5, 5] ^= 1  # one pixel
    second = ingest(workspace, reg, "organ", write_npz(tmp_path / "b.npz", b))
    assert second.created and second.version != first.version and second.parent == first.version
    assert open_version(reg, "organ").version == second.version
    assert open_version(reg, f"organ@{first.version[:6]}").version == first.version
    assert show(reg, f"organ@{second.version}").parent == first.version
    listed = list_versions(reg, "organ")
    assert [(v.version, v.parent) for v in listed] == [
        (first.version, None),
        (second.version, first.version),
    ]
    with pytest.raises(NotFoundError, match="not known"):
        open_version(reg, "organ@ffffffff")
    with pytest.raises(NotFoundError, match="not found; known:"):
        open_version(reg, "nosuch")


def test_labels_are_content(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    a = tiny_arrays("breastmnist", (10, 3, 3))
    v1 = ingest(workspace, reg, "br", write_npz(tmp_path / "a.npz", a)).version
    a["test_labels"] = 1 - a["test_labels"]
    v2 = ingest(workspace, reg, "br", write_npz(tmp_path / "b.npz", a)).version
    assert v1 != v2


def test_writer_assembles_chunks_from_scattered_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (10, 3, 3, 1), dtype=np.uint8)
    w = StoreWriter(tmp_path / "s.zarr", 10, (3, 3, 1), 1, chunk_rows=4)
    for lo, hi in [(6, 7), (0, 3), (8, 10), (3, 6), (7, 8)]:  # out of order, across chunks
        w.put(lo, x[lo:hi])
    digests = w.finish(np.zeros((10, 1), np.int32), np.zeros(10, np.int8))
    assert len(digests["images"]) == 3  # type: ignore[arg-type]
    np.testing.assert_array_equal(w.images[:], x)


def test_writer_reports_missing_rows(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "s.zarr", 10, (3, 3, 1), 1, chunk_rows=4)
    w.put(0, np.zeros((6, 3, 3, 1), np.uint8))
    with pytest.raises(InputError, match="6 of 10 rows"):
        w.finish(np.zeros((10, 1), np.int32), np.zeros(10, np.int8))


# ----------------------------------------------------------------------------- MedMNIST


def test_medmnist_flag_from_local_root(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    root = tmp_path / "mm"
    write_lookalikes(root, scale=0.002, seed=0, flags=["pneumoniamnist"])
    write_lookalikes(root, scale=0.002, seed=0, size=64, flags=["pneumoniamnist"])
    rec = ingest(workspace, reg, "pneu", "medmnist:pneumoniamnist", root=root)
    rec64 = ingest(workspace, reg, "pneu64", "pneumoniamnist", root=root, size=64)
    assert rec.meta["source"] == {
        "kind": "medmnist",
        "path": str(root / "pneumoniamnist.npz"),
        "flag": "pneumoniamnist",
        "size": 28,
    }
    assert rec.meta["class_names"] == ["normal", "pneumonia"]
    assert rec.meta["task_type"] == "binary-class"
    assert open_store(rec64.store_path).image_shape == (64, 64, 1)
    (root / "pneumoniamnist.npz").rename(root / "pneumoniamnist_128.npz")
    msg = re.escape("expected 128x128 for 'pneumoniamnist_128.npz'")
    with pytest.raises(InputError, match=msg):
        ingest(workspace, reg, "p128", "pneumoniamnist", root=root, size=64 * 2)


def test_medmnist_offline_says_which_file_where(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        medmnist_file("dermamnist", 128, tmp_path, download_ok=False)
    msg = str(err.value)
    assert "'dermamnist_128.npz'" in msg and str(tmp_path) in msg and "md5" in msg
    refused = re.escape("from http://127.0.0.1:9/dermamnist.npz failed")
    with pytest.raises(InputError, match=refused):
        medmnist_file("dermamnist", 28, tmp_path, mirror="http://127.0.0.1:9", timeout_s=5)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def test_medmnist_download_is_md5_checked(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    import hashlib

    url, served = http_dir
    (p,) = write_lookalikes(served, scale=0.002, flags=["breastmnist"])
    root = tmp_path / "root"
    with pytest.raises(InputError, match="md5"):  # INFO's md5 is the real file's
        medmnist_file("breastmnist", 28, root, mirror=url)
    assert not root.exists() or not list(root.iterdir())  # nothing half-written
    good = hashlib.md5(p.read_bytes()).hexdigest()
    got = medmnist_file("breastmnist", 28, root, mirror=url, md5=good)
    assert got == root / "breastmnist.npz" and got.read_bytes() == p.read_bytes()


# ----------------------------------------------------------------------------- folders


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_gray_rgb_jpeg_and_hash_splits(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(12):
        _save_png(root / "cat" / f"c{i}.png", np.full((16, 16), 40 + i, np.uint8))
        _save_png(root / "dog" / f"d{i}.png", np.full((16, 16), 200 - i, np.uint8))
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "dog" / "x.jpg")
    (root / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden files are skipped
    rec = ingest(workspace, reg, "pets", root)
    ds = open_store(rec.store_path)
    assert ds.meta["class_names"] == ["cat", "dog"] and ds.task_type == "binary-class"
    assert ds.image_shape == (16, 16, 3)  # one colour image makes the dataset RGB
    assert ds.n_images == 25 and sum(ds.meta["split_sizes"].values()) == 25
    x, y = ds.read_rows(0, 25), ds.read_labels()[:, 0]
    gray = x[:, 0, 0, 0] == x[:, 0, 0, 2]
    assert np.all(x[gray & (y == 0), 0, 0, 0] < 60) and np.all(x[gray & (y == 1), 0, 0, 0] > 180)
    # Within a split rows are in hash order, not all cats then all dogs.
    lo, hi = ds.split_range("train")
    assert set(y[lo:hi]) == {0, 1} and np.any(np.diff(y[lo:hi]) < 0)
    # Adding a file never moves the existing ones to another split.
    before = {s: ds.split_range(s) for s in SPLITS}
    _save_png(root / "cat" / "c99.png", np.full((16, 16), 50, np.uint8))
    ds2 = open_store(ingest(workspace, reg, "pets", root).store_path)
    assert ds2.n_images == 26
    assert sum(b - a for a, b in ds2.meta["splits"].values()) == 26
    assert (
        sum(
            abs((b2 - a2) - (b - a))
            for (a, b), (a2, b2) in zip(before.values(), ds2.meta["splits"].values(), strict=True)
        )
        == 1
    )


def test_folder_with_split_folders_16bit_and_tiff(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "ct"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for cls, level in (("lo", 1000), ("hi", 4000)):
            for i in range(n):
                arr = np.full((8, 8), level + i, np.uint16)
                p = root / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                if i % 2:
                    tifffile.imwrite(p.with_suffix(".tif"), arr)
                else:
                    Image.fromarray(arr).save(p)
    rec = ingest(workspace, reg, "ct", root)
    ds = open_store(rec.store_path)
    assert ds.meta["split_sizes"] == {"train": 8, "val": 4, "test": 4}
    assert ds.image_shape == (8, 8, 1)
    scaling = ds.meta["source"]["intensity_scaling"]
    assert scaling["from"] == "uint16" and scaling["max"] == 4003
    x = ds.read_rows(0, 16)[:, 0, 0, 0]
    y = ds.read_labels()[:, 0]
    assert ds.class_names == ["hi", "lo"]
    assert np.all(x[y == 0] >= 254) and np.all(np.abs(x[y == 1].astype(int) - 64) <= 1)


# ----------------------------------------------------------------------------- HDF5


@pytest.mark.parametrize("split_kind", ["int", "str", None])
def test_hdf5_rows_follow_their_split_and_labels(
    workspace: Workspace, reg: Registry, tmp_path: Path, split_kind: str | None
) -> None:
    n = 50
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, n)
    codes = rng.integers(0, 3, n)
    images = (labels[:, None, None] * 40 + np.arange(n)[:, None, None] % 7).astype(np.uint8)
    images = np.broadcast_to(images, (n, 6, 6)).copy()
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/x", data=images, chunks=(8, 6, 6))
        f.create_dataset("data/y", data=labels)
        if split_kind == "int":
            f.create_dataset("data/s", data=codes)
        elif split_kind == "str":
            f.create_dataset("data/s", data=np.array([SPLITS[c] for c in codes], dtype="S5"))
    opts = {"split": "data/s"} if split_kind else {}
    rec = ingest(workspace, reg, "h", path, images="data/x", labels="data/y", n_classes=5, **opts)
    ds = open_store(rec.store_path)
    x, y, s = ds.read_rows(0, n)[:, 0, 0, 0], ds.read_labels()[:, 0], ds.split[:]
    np.testing.assert_array_equal(x // 40, y)  # every image kept its own label
    assert np.all(np.diff(s) >= 0)  # rows ordered by split
    if split_kind:
        assert ds.meta["split_sizes"] == {
            sp: int((codes == i).sum()) for i, sp in enumerate(SPLITS)
        }
        # Within a split, file order is kept.
        np.testing.assert_array_equal(x[s == 0], images[codes == 0][:, 0, 0])


# ----------------------------------------------------------------------------- fingerprint


def test_explicit_fingerprint_values(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tr = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    tr[0] = 7  # near-constant
    tr[1] = 9
    tr[5] = tr[4]  # duplicate within train
    te = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    te[2] = tr[10]  # leaks into test
    ytr, yte = np.arange(30) % 3, np.array([0, 0, 0, 0, 1, 1])
    p = write_npz(
        tmp_path / "f.npz",
        {
            "train_images": tr,
            "train_labels": ytr[:, None],
            "test_images": te,
            "test_labels": yte[:, None],
        },
    )
    fp = ingest(workspace, reg, "fp", p).fingerprint
    assert fp["counts"] == {"train": 30, "test": 6} and fp["image_size"] == [8, 8]
    assert fp["channels"] == 1 and fp["n_classes"] == 3
    assert fp["near_constant"]["count"] == 2
    assert fp["duplicates"]["duplicate_images"] == 2
    assert fp["duplicates"]["across_splits"] == {"test": 1}
    allpix = np.concatenate([tr, te]).astype(np.float64)
    ch = fp["intensity"][0]
    assert ch["mean"] == pytest.approx(allpix.mean(), abs=1e-3)
    assert ch["std"] == pytest.approx(allpix.std(), abs=1e-3)
    assert ch["percentiles"]["50"] == pytest.approx(np.percentile(allpix, 50), abs=1)
    assert fp["class_balance"]["test"]["counts"] == [4, 2, 0]
    assert fp["class_balance"]["test"]["empty_classes"] == [2]
    assert fp["class_balance"]["train"]["imbalance_ratio"] == 1.0


# ----------------------------------------------------------------------------- verify


def test_verify_names_damaged_and_missing_chunks(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    arrays = tiny_arrays("tissuemnist", (9000, 10, 10))  # 2 chunks of 8192 gray images
    rec = ingest(workspace, reg, "t", write_npz(tmp_path / "t.npz", arrays))
    assert [r.ok for r in verify(reg)] == [True]
    chunk1 = rec.store_path / "images" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(chunk1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk1.write_bytes(bytes(data))
    (res,) = verify(reg, "t")
    assert not res.ok and res.damaged_chunks == [1]
    (rec.store_path / "images" / "c" / "0" / "0" / "0" / "0").unlink()
    (res,) = verify(reg, f"t@{rec.version}")
    assert res.damaged_chunks == [0, 1]
    shutil.rmtree(rec.store_path / "labels")
    assert any("labels" in p for p in verify(reg)[0].problems)


# ----------------------------------------------------------------------------- interruption

_KILLED_INGEST = textwrap.dedent("""
    import os, signal, sys
    from pomlia_hpc.data.api import ingest
    from pomlia_hpc.data.sources import open_source
    from pomlia_hpc.registry import Registry
    from pomlia_hpc.workspace import Workspace
    home = sys.argv[1]
    ws = Workspace(home=__import__("pathlib").Path(home), db_url=f"sqlite:///{home}/registry.db",
                   cluster_profile="local")
    src = open_source(sys.argv[2])
    rows = src.iter_rows
    def dying(batch_rows):
        for i, item in enumerate(rows(batch_rows)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # as if the node died mid-ingest
            yield item
    src.iter_rows = dying
    ingest(ws, Registry.open(ws.db_url), "killed", src)
""")


def test_killed_ingest_leaves_no_version_and_reruns(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    npz = tiny_npz(tmp_path / "k.npz", "tissuemnist", sizes=(9000, 10, 10))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_INGEST, str(workspace.home), str(npz)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert list(workspace.stores.glob(".ingest-killed-*"))  # the staging folder it left ...
    assert not list((workspace.stores / "killed").glob("*.zarr"))
    assert list_versions(reg) == []
    rec = ingest(workspace, reg, "killed", npz)  # ... is cleaned up by the re-run
    assert rec.created and rec.n_images == 9020
    assert nothing_visible(workspace, "other") and not list(workspace.stores.glob(".*"))


@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (1, 1, 1, 1), (2, 3, 3, 1), (4, 28, 28, 3)])
def test_pair_histogram_is_exact(shape: tuple[int, int, int, int]) -> None:
    from pomlia_hpc.data.explicit_fingerprint import pair_histogram

    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ref = np.stack([np.bincount(x[..., k].ravel(), minlength=256) for k in range(shape[-1])])
    np.testing.assert_array_equal(pair_histogram(x), ref)


@pytest.mark.parametrize("kind", ["hdf5", "npz"])
def test_uint16_first_pass_reads_batches_of_bounded_bytes(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    from pomlia_hpc.data.sources.intensity import PixelConverter
    from pomlia_hpc.data.writer import CHUNK_TARGET_BYTES

    # 72 images of 256 x 256 uint16 = 9.4 MB: more than one batch's worth of bytes.
    images = np.zeros((72, 256, 256), np.uint16)
    images[:, 0, 0] = np.arange(72) * 50
    labels = np.arange(72) % 2
    seen: list[int] = []
    observe = PixelConverter.observe

    def spy(self: PixelConverter, batch: np.ndarray, *args: object, **kw: object) -> None:
        seen.append(batch.nbytes)
        observe(self, batch, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(PixelConverter, "observe", spy)
    if kind == "hdf5":
        path = tmp_path / "d.h5"
        with h5py.File(path, "w") as f:
            f["x"], f["y"] = images, labels
        rec = ingest(workspace, reg, "big", path, images="x", labels="y")
    else:
        path = write_npz(tmp_path / "d.npz", {"train_images": images, "train_labels": labels})
        rec = ingest(workspace, reg, "big", path)
    assert sum(seen) == images.nbytes and len(seen) > 1
    assert max(seen) <= CHUNK_TARGET_BYTES
    assert open_store(rec.store_path).meta["source"]["intensity_scaling"]["max"] == 71 * 50


@pytest.mark.parametrize("size", [28, 64])
def test_near_constant_looks_at_every_channel(size: int) -> None:
    from pomlia_hpc.data.explicit_fingerprint import chunk_stats

    rng = np.random.default_rng(0)
    x = np.zeros((4, size, size, 3), np.uint8)
    x[0] = (200, 30, 30)  # one flat colour: near-constant
    x[1, ..., 0] = 128  # red flat, green and blue noise: not near-constant
    x[1, ..., 1:] = rng.integers(0, 256, (size, size, 2))
    x[2, ..., :2] = 90  # only blue varies
    x[2, ..., 2] = rng.integers(0, 256, (size, size))
    x[3] = rng.integers(0, 256, (size, size, 3))
    assert chunk_stats(x)[1] == 1
    assert chunk_stats(x[:1])[1] == 1 and chunk_stats(x[1:2])[1] == 0
    assert chunk_stats(x[2:3])[1] == 0


def test_folder_split_fractions_are_checked(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    _save_png(tmp_path / "f" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="expected fractions >= 0 that sum to less than 1"):
        ingest(workspace, reg, "f", tmp_path / "f", val_fraction=0.6, test_fraction=0.5)
    assert nothing_visible(workspace, "f")
    # HDF5 files without a split dataset are split by the same rule.
    h5 = tmp_path / "d.h5"
    with h5py.File(h5, "w") as f:
        f["x"], f["y"] = np.zeros((20, 4, 4), np.uint8), np.arange(20) % 2
    for val, test in ((0.7, 0.6), (-0.5, 0.1), (0.1, -0.2)):
        with pytest.raises(
            InputError,
            match=rf"HDF5 file '.*d.h5': --val-fraction {val} \+ --test-fraction {test}: expected",
        ):
            ingest(
                workspace,
                reg,
                "h",
                h5,
                images="x",
                labels="y",
                val_fraction=val,
                test_fraction=test,
            )
    assert nothing_visible(workspace, "h")


def test_stale_staging_of_killed_ingests_is_removed(workspace: Workspace) -> None:
    host = host_field()
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is free (and not reused within this test)
    stale = workspace.tmp / f".ingest-a-0001.{host}.{dead.pid}.tmp"
    live = workspace.tmp / f".ingest-b-0002.{host}.{os.getpid()}.tmp"
    elsewhere = workspace.tmp / f".ingest-c-0003.other-node.{dead.pid}.tmp"
    for path in (stale, live, elsewhere):
        (path / "images").mkdir(parents=True)
    assert clean_stale_staging(workspace) == [stale]
    assert not stale.exists() and live.is_dir() and elsewhere.is_dir()


def test_big_endian_16_bit_images_are_ingested_as_native_ones(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`>u2` arrays (npz or HDF5) were refused with "has dtype >u2: expected uint8, uint16 or
    float in [0, 1]": they are uint16, in another byte order."""
    arrays = tiny_arrays("bloodmnist", (40, 7, 13))
    little = {k: v.astype(np.uint16) * 16 if "images" in k else v for k, v in arrays.items()}
    big = {k: v.astype(">u2") if "images" in k else v for k, v in little.items()}
    ingest(workspace, reg, "le", write_npz(tmp_path / "le.npz", little))
    ingest(workspace, reg, "be", write_npz(tmp_path / "be.npz", big))
    expected = np.asarray(open_version(workspace, "le").images[:])
    assert np.array_equal(np.asarray(open_version(workspace, "be").images[:]), expected)
    path = tmp_path / "be.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.concatenate([big[f"{s}_images"] for s in ("train", "val", "test")])
        f["y"] = np.concatenate([big[f"{s}_labels"] for s in ("train", "val", "test")])[:, 0]
    rec = ingest(workspace, reg, "beh5", path, images="x", labels="y")
    assert rec.n_images == 60
    assert np.array_equal(
        np.sort(open_version(workspace, "beh5").images[:], axis=None), np.sort(expected, axis=None)
    )
