"""MedMNIST look-alikes: exact layouts, determinism, documented styles, learnable content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.metrics import roc_auc_score

from pomlia_hpc.data import synth
from pomlia_hpc.data.medmnist_info import FLAGS_2D, flag_info
from pomlia_hpc.data.synth import STYLES, make_lookalike, make_split, split_sizes, write_lookalikes
from pomlia_hpc.errors import InputError

KEYS = {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_lookalikes(tmp_path_factory.mktemp("la"), scale=0.01, seed=0)


def test_twelve_files_with_medmnist_layout(lookalikes: list[Path]) -> None:
    assert [p.name for p in lookalikes] == [f"{f}.npz" for f in FLAGS_2D]
    for path, flag in zip(lookalikes, FLAGS_2D, strict=True):
        info = flag_info(flag)
        with np.load(path) as d:
            assert set(d.files) == KEYS
            for split in ("train", "val", "test"):
                x, y = d[f"{split}_images"], d[f"{split}_labels"]
                n = max(1, round(info.n_samples[split] * 0.01))
                assert x.dtype == np.uint8 and y.dtype == np.uint8
                expect_x = (n, 28, 28, 3) if info.channels == 3 else (n, 28, 28)
                assert x.shape == expect_x, (flag, split, x.shape)
                assert y.shape == (n, 14 if flag == "chestmnist" else 1), (flag, y.shape)
                if info.multi_label:
                    assert set(np.unique(y)) <= {0, 1}
                else:
                    assert y.max() < info.n_classes
        assert STYLES[flag].strip()


def test_split_sizes_scale_and_minimum() -> None:
    assert split_sizes("pathmnist", 0.01) == {"train": 900, "val": 100, "test": 72}
    assert split_sizes("breastmnist", 0.001) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(InputError, match="scale"):
        split_sizes("pathmnist", 0)


def test_every_class_present_when_split_large_enough() -> None:
    for flag in ("organamnist", "bloodmnist", "retinamnist"):
        _, y = make_split(flag, 60, seed=3)
        assert set(np.unique(y)) == set(range(flag_info(flag).n_classes))


def test_deterministic_for_a_seed() -> None:
    a = make_lookalike("dermamnist", 0.01, seed=5)
    b = make_lookalike("dermamnist", 0.01, seed=5)
    c = make_lookalike("dermamnist", 0.01, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)
    assert not np.array_equal(a["train_images"], c["train_images"])


def test_other_sizes_use_medmnist_file_names(tmp_path: Path) -> None:
    (p,) = write_lookalikes(tmp_path, scale=0.002, seed=0, size=64, flags=["breastmnist"])
    assert p.name == "breastmnist_64.npz"
    with np.load(p) as d:
        assert d["train_images"].shape[1:] == (64, 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale": -1}, "scale -1 is not valid"),
        ({"scale": float("inf")}, "scale inf is not valid: expected a number > 0 and at most 100"),
        ({"scale": float("nan")}, "scale nan is not valid"),
        ({"seed": -1}, "seed -1 is not valid"),  # a ValueError traceback from numpy before
        ({"size": 30}, "size 30 is not available"),
        ({"flags": ["breastmnist", "nosuch"]}, "'nosuch' is not a MedMNIST 2D dataset"),
    ],
)
def test_bad_options_are_refused_before_the_folder_is_made(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    # `data synth --scale -1 out/deep` exited 2 but left out/deep behind.
    kw: dict[str, object] = {"scale": 0.002, "flags": ["breastmnist"], **options}
    with pytest.raises(InputError, match=message):
        write_lookalikes(tmp_path / "out" / "deep", **kw)
    assert not (tmp_path / "out").exists()


def test_a_failed_write_takes_back_what_it_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, written = synth.write_lookalike, []

    def full_disk(path: Path, *args: Any, **kw: Any) -> Path:
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real(path, *args, **kw)

    monkeypatch.setattr(synth, "write_lookalike", full_disk)
    flags = ["breastmnist", "pneumoniamnist"]
    with pytest.raises(OSError, match="No space left"):
        write_lookalikes(tmp_path / "new" / "la", scale=0.002, flags=flags)
    assert not (tmp_path / "new").exists()
    # In a folder that existed, only the files the call added go; the others stay.
    keep = tmp_path / "old"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    written.clear()
    with pytest.raises(OSError, match="No space left"):
        write_lookalikes(keep, scale=0.002, flags=flags)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def _features(x: np.ndarray) -> np.ndarray:
    """4x4-block means and standard deviations: enough for a linear model to see the styles."""
    x = x.astype(np.float32) / 255
    x = x if x.ndim == 4 else x[..., None]
    n, h, w, c = x.shape
    b = x.reshape(n, h // 4, 4, w // 4, 4, c)
    return np.concatenate([b.mean((2, 4)).reshape(n, -1), b.std((2, 4)).reshape(n, -1)], 1)


@pytest.mark.parametrize("flag", FLAGS_2D)
def test_content_is_learnable(flag: str) -> None:
    xtr, ytr = make_split(flag, 300, seed=1, split="train")
    xte, yte = make_split(flag, 150, seed=1, split="test")
    if flag == "chestmnist":
        scores = Ridge(alpha=1.0).fit(_features(xtr), ytr).predict(_features(xte))
        assert roc_auc_score(yte, scores, average="macro") > 0.8
        return
    model = RidgeClassifier(alpha=1.0).fit(_features(xtr), ytr[:, 0])
    acc = float((model.predict(_features(xte)) == yte[:, 0]).mean())
    majority = np.bincount(yte[:, 0]).max() / len(yte)
    assert acc > majority + 0.1, (flag, acc, majority)


def test_a_file_is_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file was built whole in memory before it was written (scale 1 at 224 px: ~15 GB);
    it is written a batch of images at a time, so memory stays at a batch: here a few
    hundred images of 28 px, far below the file's 25 MB of pixels."""
    import tracemalloc

    monkeypatch.setattr(synth, "BATCH_PIXELS", 1 << 16)  # about 28 RGB images of 28 px
    sizes = split_sizes("pathmnist", 0.1)
    raw = sum(sizes.values()) * 28 * 28 * 3
    tracemalloc.start()
    try:
        (path,) = write_lookalikes(tmp_path, scale=0.1, seed=3, flags=["pathmnist"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raw > 20e6 and peak < raw / 8, (peak, raw)
    with np.load(path) as d:  # the same arrays as made in memory
        whole = make_lookalike("pathmnist", 0.1, seed=3)
        assert sorted(d.keys()) == sorted(whole)
        assert all(np.array_equal(d[k], whole[k]) for k in KEYS)


def test_the_file_is_what_numpy_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written in batches, a file has the bytes `np.savez_compressed` writes of the arrays
    (zip entry times fixed), for a split of several batches and one of a part of one."""
    import time

    monkeypatch.setattr(synth, "BATCH_PIXELS", 1 << 16)
    monkeypatch.setattr(time, "time", lambda: 1.7e9)  # the zip entries' times
    for compress in (True, False):
        (path,) = write_lookalikes(
            tmp_path / str(compress), 0.01, seed=1, size=64, flags=["chestmnist"], compress=compress
        )
        arrays = make_lookalike("chestmnist", 0.01, seed=1, size=64)
        expect = tmp_path / f"expect{compress}.npz"
        (np.savez_compressed if compress else np.savez)(expect, **arrays)
        assert path.read_bytes() == expect.read_bytes()
