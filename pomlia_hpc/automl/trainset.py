"""The rows one training call reads (:func:`pomlia_hpc.automl.engine.train`): a task's dataset
store split into train/val/test tensors, the configuration's extra images appended to the
training rows, the normalisation and the augmentations applied to a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from pomlia_hpc.automl.sampling import RecentRows, recent_rows
from pomlia_hpc.data.store import open_store
from pomlia_hpc.errors import InputError


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,) class index, or float (N, L) for multi-label


def as_split(images: np.ndarray, labels: np.ndarray, multilabel: bool) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    y = lab.float() if multilabel else lab.reshape(len(lab), -1)[:, 0]
    return Split(x, y)


def check_labels(labels: np.ndarray, n_out: int, multilabel: bool, where: str) -> None:
    """One :class:`InputError` naming ``where``, the row and the value, for a label outside
    the task: a class index outside ``0..n_out-1`` (single-label: ``labels`` (N, 1)), or a
    value other than 0 and 1 (multi-label: (N, n_out)). Training would otherwise stop in
    cross-entropy's "Target 9 is out of bounds" (a device-side assert on CUDA), or, for
    multi-label, train on the value silently."""
    lab = np.asarray(labels)
    lab = lab[:, None] if lab.ndim == 1 else lab
    if multilabel:
        bad = np.argwhere((lab != 0) & (lab != 1))
        want = "0 or 1 per label"
    else:
        bad = np.argwhere((lab[:, :1] < 0) | (lab[:, :1] >= n_out))
        want = f"a class index 0..{n_out - 1} ({n_out} classes)"
    if len(bad):
        row, col = (int(v) for v in bad[0])
        what = f"label {lab[row, col]} of row {row}" + (f", column {col}" if multilabel else "")
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{where}: {what}{more}; expected {want}")


def load_extra(
    path: str, n: int, shape: tuple[int, int, int], n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        if "images" not in z or "labels" not in z:
            raise InputError(f"extra data '{path}': expected arrays 'images' and 'labels'")
        images, labels = z["images"][:n], z["labels"][:n]
    if images.shape[1:] != shape or labels.ndim != 2 or labels.shape[1] != n_labels:
        raise InputError(
            f"extra data '{path}': expected images (N, {shape[0]}, {shape[1]}, {shape[2]}) and "
            f"labels (N, {n_labels}), got {images.shape} and {labels.shape}"
        )
    return images, labels


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 → float in [-1, 1]: the default preprocessing of :mod:`pomlia_hpc.models.card`."""
    return (x.float() / 255.0 - 0.5) / 0.5


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Augment a float batch (N, C, H, W): ``flip`` (random horizontal flips), ``flip_crop``
    (flips and random shifts of up to 2 px, reflect-padded), ``none``."""
    if kind == "none":
        return x
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if kind == "flip_crop":
        pad = 2
        h, w = x.shape[2:]
        padded = functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        offs = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])
    elif kind != "flip":
        raise InputError(f"augmentation '{kind}' is not known: expected none, flip or flip_crop")
    return x


@dataclass
class TrainData:
    """What one training call reads: the training rows (the store's train split, then any
    extra images), the val/test splits, the network's output width and image shape."""

    splits: dict[str, Split]
    x: torch.Tensor
    y: torch.Tensor
    n_out: int
    shape: tuple[int, int, int]  # (H, W, C)
    class_names: list[str]
    recent: RecentRows | None
    n_extra: int


def read_train_data(
    store_path: str,
    multilabel: bool,
    *,
    extra: tuple[str | None, int] = (None, 0),
    recent: tuple[int, float | None] = (0, None),
) -> TrainData:
    """The store's splits, plus ``extra`` = (npz path, count) extra images appended to the
    training rows (an :class:`InputError` when a count is asked for and no path given), and
    ``recent`` = (rows, share): the last rows drawn at that share (see ``sampling``)."""
    store = open_store(store_path)
    h, w, c = store.image_shape
    class_names = store.class_names
    arrays = {s: store.read_split(s) for s in ("train", "val", "test")}
    labels = arrays["train"][1]
    n_out = int(labels.shape[1]) if multilabel else len(class_names)
    for split, (_x, lab) in arrays.items():
        check_labels(lab, n_out, multilabel, f"store '{store_path}', {split} split")
    splits = {s: as_split(x, lab, multilabel) for s, (x, lab) in arrays.items()}
    train_x, train_y = splits["train"].x, splits["train"].y
    recent_at = recent_rows(len(train_x), *recent)
    extra_data, extra_n = extra
    n_extra = 0
    if extra_n > 0:
        if not extra_data:
            raise InputError("configuration asks for extra images but no extra data was given")
        ex_img, ex_lab = load_extra(extra_data, extra_n, (h, w, c), n_out if multilabel else 1)
        check_labels(ex_lab, n_out, multilabel, f"extra data '{extra_data}'")
        more = as_split(ex_img, ex_lab, multilabel)
        train_x, train_y = torch.cat([train_x, more.x]), torch.cat([train_y, more.y])
        n_extra = len(ex_img)
    if len(train_x) < 2:
        raise InputError(f"store '{store_path}': expected at least 2 training images")
    return TrainData(splits, train_x, train_y, n_out, (h, w, c), class_names, recent_at, n_extra)
