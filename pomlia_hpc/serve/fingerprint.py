"""Input fingerprints written into the prediction log, for drift monitoring.

A fingerprint function maps a batch of images, float32 NCHW scaled to [0, 1] (before the
model's normalisation), to a batch of vectors (N, D). It is pluggable: the server uses

* the task's encoder when the bundle ships one (``encoder.onnx`` via onnxruntime, or
  ``encoder.pt2``, a ``torch.export`` program); its output is flattened per image;
* otherwise the explicit statistics fingerprint ``stats-thumb-v1``: per-channel mean and standard
  deviation, then an 8x8 area-averaged thumbnail per channel — ``2*C + 64*C`` numbers that are
  cheap (two small matrix products: about 0.5 ms for 32 RGB images of 64 px) and readable, so the
  monitor can test drift on intensity and coarse layout even without a learned encoder.

Vectors are rounded to 4 decimals in the log (plenty for drift tests, and a third of the bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

FingerprintFn = Callable[[np.ndarray], np.ndarray]

STATS_KIND = "stats-thumb-v1"
ENCODER_KIND = "encoder"
THUMB = 8
#: Decimals the logged vectors keep (the monitor's reference is rounded the same way).
LOG_DECIMALS = 4


def stats_dim(channels: int) -> int:
    """Length of the ``stats-thumb-v1`` vector for ``channels`` channels."""
    return channels * (2 + THUMB * THUMB)


@functools.lru_cache(maxsize=16)
def _averaging_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) matrix whose rows average consecutive blocks of pixels; block edges spread
    as evenly as integer pixels allow (28 px -> blocks of 3 and 4 px)."""
    edges = np.append((np.arange(out) * size) // out, size)
    m = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        m[i, edges[i] : edges[i + 1]] = 1.0 / (edges[i + 1] - edges[i])
    return m


def stats_fingerprint(images: np.ndarray) -> np.ndarray:
    """``stats-thumb-v1`` of float32 NCHW images in [0, 1] → (N, 2*C + 64*C) float32.

    Layout: means (C), stds (C), then the thumbnail as (C, 8, 8) flattened.
    """
    x = np.asarray(images, dtype=np.float32)
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    mean = flat.mean(axis=2)
    mean_sq = np.einsum("ncp,ncp->nc", flat, flat) / (h * w)
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    # Area averaging as two matrix products: far faster than numpy reductions over strided axes.
    thumb = _averaging_matrix(h, THUMB) @ x @ _averaging_matrix(w, THUMB).T
    return np.concatenate([mean, std, thumb.reshape(n, c * THUMB * THUMB)], axis=1)


def encoder_fingerprint(path: Path, threads: int = 1) -> FingerprintFn:
    """A fingerprint function running the encoder at ``path`` (ONNX on CPU, or a
    ``torch.export`` program, ``.pt2``)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_onnx(images: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(images, dtype=np.float32)
            out = np.asarray(sess.run(None, {name: x})[0])
            return out.reshape(len(images), -1)

        return run_onnx

    import torch

    from pomlia_hpc.serve.runtime import load_program

    module = load_program(str(path))

    def run_program(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with torch.inference_mode():
            return np.asarray(module(x).numpy()).reshape(len(images), -1)

    return run_program


def bundle_fingerprint(encoder_file: Path | None) -> tuple[FingerprintFn, str]:
    """The fingerprint function the server logs for a bundle, and its kind: the shipped
    encoder (``encoder``) when there is one, else ``stats-thumb-v1``. The monitor's reference
    is computed with this same function, so logged and reference vectors compare."""
    if encoder_file is not None:
        return encoder_fingerprint(encoder_file), ENCODER_KIND
    return stats_fingerprint, STATS_KIND


def logged_vectors(fn: FingerprintFn, images_nchw: np.ndarray) -> np.ndarray:
    """``fn`` on float32 NCHW images in [0, 1], as written to the log: rounded to
    :data:`LOG_DECIMALS` decimals, float32 (N, D)."""
    return np.round(fn(images_nchw), LOG_DECIMALS).astype(np.float32)
