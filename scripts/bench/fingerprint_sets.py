"""The datasets of the fingerprint quality benchmark (see ``fingerprint_quality.py``).

* Look-alike halves: each of the 12 MedMNIST look-alikes (:mod:`pomlia_hpc.data.synth`) with
  ``images`` images, every split shuffled and cut into two disjoint halves ``_a`` and ``_b``.
* Acquisition-shifted halves: ``_b`` corrupted by one MedMNIST-C family at moderate severity
  (:data:`SHIFTS`, :mod:`pomlia_hpc.data.corruptions`), like the same data from another scanner.
* Mixed halves: the shifted ``_b`` with :data:`FOREIGN` of its rows replaced by images of
  another look-alike (converted to its channel count).
* Real tiles: real images shipped inside installed packages (scikit-image's ``skimage.data``
  files that need no download, scikit-learn's sample images), each cut spatially into two
  halves (left / right of the longer axis), each half tiled into 28 px tiles (stride
  chosen to give ``tiles`` tiles): two disjoint halves per source, ``<source>_1`` and
  ``<source>_2``. :data:`TUNING_SOURCES` may be used to choose objectives and weights;
  :data:`HELDOUT_SOURCES` are only ever reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pomlia_hpc.data.corruptions import corrupt
from pomlia_hpc.data.medmnist_info import FLAGS_2D, flag_info
from pomlia_hpc.data.synth import make_lookalike

Arrays = dict[str, np.ndarray]

#: (family, severity) per look-alike for the acquisition-shifted set: brightness, contrast and
#: gamma shift intensities; blur, noise, jpeg and pixelate change texture; stain (RGB only)
#: changes colour. Chosen so the intensity-histogram baseline loses its siblings.
SHIFTS: dict[str, tuple[str, int]] = {
    "pathmnist": ("stain", 3),
    "chestmnist": ("gamma", 3),
    "dermamnist": ("brightness", 3),
    "octmnist": ("contrast", 3),
    "pneumoniamnist": ("brightness", 3),
    "retinamnist": ("gamma", 3),
    "breastmnist": ("contrast", 3),
    "bloodmnist": ("jpeg", 3),
    "tissuemnist": ("gamma", 3),
    "organamnist": ("brightness", 3),
    "organcmnist": ("noise", 3),
    "organsmnist": ("pixelate", 3),
}
#: Fraction of rows replaced by foreign images in the mixed set.
FOREIGN = 0.05


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))

    return load


#: Real sources: name -> (loader, what it is). All ship inside the installed wheels.
SOURCES: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "ihc": (_skimage("immunohistochemistry"), "immunohistochemistry (IHC) stained tissue, RGB"),
    "camera": (_skimage("camera"), "grey photograph (cameraman)"),
    "grass": (_skimage("grass"), "grey texture: grass"),
    "moon": (_skimage("moon"), "grey photograph of the lunar surface"),
    "astronaut": (_skimage("astronaut"), "RGB portrait photograph"),
    "page": (_skimage("page"), "scanned text page, grey"),
    "china": (_sklearn("china.jpg"), "RGB photograph (scikit-learn sample image)"),
    "retina": (_skimage("retina"), "RGB fundus photograph of a human retina"),
    "cell": (_skimage("cell"), "grey light microscopy of a cell"),
    "brick": (_skimage("brick"), "grey texture: brick wall"),
    "gravel": (_skimage("gravel"), "grey texture: gravel"),
    "coffee": (_skimage("coffee"), "RGB photograph of a coffee cup"),
    "text": (_skimage("text"), "grey photograph of printed text"),
    "hubble": (_skimage("hubble_deep_field"), "RGB Hubble deep-field telescope image"),
    "coins": (_skimage("coins"), "grey photograph of coins"),
}
TUNING_SOURCES = ("ihc", "camera", "grass", "moon", "astronaut", "page", "china")
HELDOUT_SOURCES = ("retina", "cell", "brick", "gravel", "coffee", "text", "hubble", "coins")


def lookalike_halves(flag: str, images: int, seed: int) -> tuple[Arrays, Arrays]:
    """Two disjoint halves (MedMNIST npz layout) of a look-alike with min(size, images)."""
    real = sum(flag_info(flag).n_samples.values())
    full = make_lookalike(flag, scale=min(1.0, images / real), seed=seed, size=28)
    rng = np.random.default_rng([seed, FLAGS_2D.index(flag)])
    halves: list[Arrays] = [{}, {}]
    for split in ("train", "val", "test"):
        x, y = full[f"{split}_images"], full[f"{split}_labels"]
        order = rng.permutation(len(x))
        cut = max(1, len(x) // 2)
        parts = (order[:cut], order[cut:] if len(x) > 1 else order[:cut])
        for half, idx in zip(halves, parts, strict=True):
            half[f"{split}_images"], half[f"{split}_labels"] = x[idx], y[idx]
    return halves[0], halves[1]


def shifted(half: Arrays, flag: str, seed: int) -> Arrays:
    """``half`` with every split corrupted by the flag's :data:`SHIFTS` entry."""
    family, severity = SHIFTS[flag]
    rng = np.random.default_rng([seed, 11, FLAGS_2D.index(flag)])
    out = dict(half)
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = corrupt(half[f"{split}_images"], family, severity, rng)
    return out


def _as_channels(x: np.ndarray, gray: bool) -> np.ndarray:
    if gray and x.ndim == 4:
        return (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    if not gray and x.ndim == 3:
        return np.repeat(x[..., None], 3, axis=-1)
    return x


def mixed(half: Arrays, foreign: Arrays, flag: str, seed: int) -> Arrays:
    """``half`` with :data:`FOREIGN` of the rows of every split replaced by ``foreign``'s
    images (same split, converted to ``half``'s channels)."""
    rng = np.random.default_rng([seed, 13, FLAGS_2D.index(flag)])
    out = dict(half)
    for split in ("train", "val", "test"):
        x = half[f"{split}_images"].copy()
        k = round(FOREIGN * len(x))
        if k:
            pool = _as_channels(foreign[f"{split}_images"], gray=x.ndim == 3)
            rows = rng.choice(len(x), size=k, replace=False)
            x[rows] = pool[rng.choice(len(pool), size=k, replace=len(pool) < k)]
        out[f"{split}_images"] = x
    return out


def _tiles(img: np.ndarray, n: int, size: int = 28) -> np.ndarray:
    """``n`` (or fewer) size x size tiles on an even grid over ``img`` (H, W[, C])."""
    h, w = img.shape[:2]
    best = None
    for stride in range(size, 3, -1):  # the largest stride that still gives n tiles
        ys, xs = range(0, h - size + 1, stride), range(0, w - size + 1, stride)
        best = [(y, x) for y in ys for x in xs]
        if len(best) >= n:
            break
    assert best is not None
    pick = np.linspace(0, len(best) - 1, min(n, len(best))).round().astype(int)
    return np.stack(
        [img[best[i][0] : best[i][0] + size, best[i][1] : best[i][1] + size] for i in pick]
    )


def _uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float64)
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)
    return (x * 255 + 0.5).astype(np.uint8)


def real_halves(source: str, tiles: int) -> tuple[Arrays, Arrays]:
    """Two disjoint halves of real source ``source`` as single-class npz layouts (all tiles in
    the train split; one val and test tile each, taken from the same half)."""
    img = _uint8(SOURCES[source][0]())
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    h, w = img.shape[:2]
    parts = (img[:, : w // 2], img[:, w // 2 :]) if w >= h else (img[: h // 2], img[h // 2 :])
    out = []
    for part in parts:
        t = _tiles(part, tiles + 2)
        y = np.zeros((len(t), 1), np.uint8)
        out.append(
            {
                "train_images": t[:-2],
                "train_labels": y[:-2],
                "val_images": t[-2:-1],
                "val_labels": y[-2:-1],
                "test_images": t[-1:],
                "test_labels": y[-1:],
            }
        )
    return out[0], out[1]


def channel_histograms(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """Per-channel normalised histograms (C, bins) of uint8 images (N, H, W[, C])."""
    x = np.asarray(images, np.uint8)
    x = x[..., None] if x.ndim == 3 else x
    out = np.empty((x.shape[-1], bins))
    for c in range(x.shape[-1]):
        h = np.bincount(x[..., c].ravel().astype(np.int64) * bins // 256, minlength=bins)
        out[c] = h / max(h.sum(), 1)
    return out


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The trivial baseline: infinitely far for different channel counts, else the mean over
    channels of the L1 distance between per-channel histograms."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).sum(1).mean())
