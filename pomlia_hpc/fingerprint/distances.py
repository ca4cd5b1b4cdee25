"""Distances between two datasets' embedding distributions, samples ``a`` (n, d), ``b`` (m, d).

=========  ==========================================================================
name       what
=========  ==========================================================================
mean       Euclidean distance between the mean embeddings (the paper's fingerprint)
frechet    Fréchet distance between Gaussians fitted to a and b (as FID):
           |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))
mmd        maximum mean discrepancy with the Gaussian kernel exp(-|x - y|^2 / m), m = the
           median squared pairwise distance of (up to 1000 evenly spaced rows of) the pooled
           sample (biased estimate, reported as sqrt(MMD^2))
kl         binned symmetric KL divergence: both samples projected on the pooled sample's
           top principal axes (at most 8); per axis, histograms over shared bins (20, over
           the pooled 0.5-99.5 % range, add-half smoothing); KL(a|b) + KL(b|a) summed over
           axes — a per-axis binned KL in the spirit of Godau et al. (2024)
=========  ==========================================================================

All are symmetric, 0 for identical samples, and larger for more different datasets. The
``histogram`` baseline of the benchmark lives in :func:`intensity_baseline` (it needs images,
not embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import linalg

from pomlia_hpc.errors import InputError

#: Samples larger than this are subsampled (evenly, deterministic) for MMD (O(n^2) memory).
MMD_MAX = 2000
KL_BINS = 20
KL_AXES = 8


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise InputError(
            f"embedding samples of shapes {a.shape} and {b.shape}: expected two non-empty "
            "(n, d) arrays with the same d"
        )
    return a, b


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between the two means."""
    a, b = _check(a, b)
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def _cov(x: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    if len(x) < 2:
        return np.zeros((d, d))
    return np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (squared-distance units, like FID)."""
    a, b = _check(a, b)
    mu = a.mean(0) - b.mean(0)
    ca, cb = _cov(a), _cov(b)
    eps = 1e-6 * np.eye(len(ca))  # keeps sqrtm stable for (near-)singular covariances
    covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = np.real(np.asarray(covmean))
    value = float(mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _even(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.linspace(0, len(x) - 1, n).round().astype(int)]


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d, 0.0)


def mmd(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt of the (biased) squared MMD with the kernel exp(-|x - y|^2 / m), m the median
    squared pairwise distance of the pooled sample (see the module docstring)."""
    a, b = _check(a, b)
    a, b = _even(a, MMD_MAX), _even(b, MMD_MAX)
    pooled = np.concatenate([a, b])
    sample = _even(pooled, 1000)
    d2 = _sqdist(sample, sample)
    med = float(np.median(d2[np.triu_indices(len(sample), 1)])) if len(sample) > 1 else 1.0
    gamma = 1.0 / max(med, 1e-12)
    kaa = np.exp(-gamma * _sqdist(a, a)).mean()
    kbb = np.exp(-gamma * _sqdist(b, b)).mean()
    kab = np.exp(-gamma * _sqdist(a, b)).mean()
    return float(np.sqrt(max(kaa + kbb - 2.0 * kab, 0.0)))


def binned_kl(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric binned KL on the pooled principal axes (nats, summed over axes)."""
    a, b = _check(a, b)
    pooled = np.concatenate([a, b])
    center = pooled.mean(0)
    _u, _s, vt = np.linalg.svd(pooled - center, full_matrices=False)
    axes = vt[:KL_AXES].T
    pa, pb, pp = (a - center) @ axes, (b - center) @ axes, (pooled - center) @ axes
    total = 0.0
    for j in range(axes.shape[1]):
        lo, hi = np.percentile(pp[:, j], [0.5, 99.5])
        if hi <= lo:
            continue
        edges = np.linspace(lo, hi, KL_BINS + 1)
        ha = np.histogram(np.clip(pa[:, j], lo, hi), edges)[0] + 0.5
        hb = np.histogram(np.clip(pb[:, j], lo, hi), edges)[0] + 0.5
        p, q = ha / ha.sum(), hb / hb.sum()
        total += float(np.sum((p - q) * np.log(p / q)))
    return total


DISTANCES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mean": mean_distance,
    "frechet": frechet_distance,
    "mmd": mmd,
    "kl": binned_kl,
}
"""Distance name → function of two embedding samples."""


def get_distance(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """The distance function called ``name`` (see :data:`DISTANCES`)."""
    if name not in DISTANCES:
        raise InputError(f"distance '{name}' is not known: expected one of {', '.join(DISTANCES)}")
    return DISTANCES[name]


def intensity_histogram(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """Normalised histogram of all pixel values of uint8 images (any shape), ``bins`` bins."""
    values = np.asarray(images, np.uint8).ravel().astype(np.int64)  # no uint8 overflow
    h = np.bincount(values * bins // 256, minlength=bins)
    return h / max(h.sum(), 1)


def intensity_baseline(
    channels_a: int, hist_a: np.ndarray, channels_b: int, hist_b: np.ndarray
) -> float:
    """The trivial baseline: infinitely far for different channel counts, else the L1 distance
    between intensity histograms."""
    if channels_a != channels_b:
        return float("inf")
    return float(np.abs(np.asarray(hist_a) - np.asarray(hist_b)).sum())
