"""Does an exported graph answer like the PyTorch model it came from? (the export's gate)

What is compared is what a client gets: probabilities (softmax, or a sigmoid per label for
multi-label tasks) on inputs as the server's preprocessing produces them (pixels in [0, 1],
then ``(x - mean) / std`` with the model's own statistics), not raw logits on standard-normal
noise. Logits of a network fed inputs far outside its range amplify float rounding (a
``mobilenet_v3_small``'s differed by 0.007 and its export was refused although its served
predictions matched the offline accuracy exactly).

The rule, per probability: ``|p_export - p_torch| <= rtol * p_torch + atol`` (a relative
tolerance; ``atol`` only keeps probabilities near 0 from needing exact equality), and the
predicted class must be the same, except where PyTorch's own top two are closer than the
tolerance (a tie that rounding may break either way). Inputs: uniform-noise images and smooth
images (bilinear upsampling of a coarse grid), batches of 1 and 7.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pomlia_hpc.models.checkpoint import LoadedClassifier
from pomlia_hpc.serve.runtime import normalize_, probabilities
from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD

#: Batch sizes the exported graphs are run at (1 and an odd size, for the dynamic batch axis).
PARITY_BATCHES = (1, 7)
#: Default relative tolerance on each probability.
DEFAULT_RTOL = 1e-3
#: Default absolute floor, for probabilities near 0.
DEFAULT_ATOL = 1e-5

Runner = Callable[[np.ndarray], np.ndarray]
"""float32 NCHW normalised inputs -> logits (n, classes)."""


@dataclass(frozen=True)
class ParityReport:
    """How far one exported graph is from PyTorch, on probabilities."""

    max_abs_diff: float  # largest |p_export - p_torch|
    max_excess: float  # largest |Δp| / (rtol * p_torch + atol): <= 1 passes
    class_mismatches: int  # images whose predicted class differs (ties excluded)

    def ok(self) -> bool:
        return self.max_excess <= 1.0 and self.class_mismatches == 0


def parity_inputs(loaded: LoadedClassifier, n: int, seed: int) -> np.ndarray:
    """``n`` float32 NCHW images as preprocessing makes them: half uniform noise, half smooth
    images, pixels quantised to 8 bits, scaled to [0, 1], normalised with the model's
    mean and std."""
    meta = loaded.meta
    c, s = meta.in_channels, meta.image_size
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, c, s, s)).astype(np.float32)
    coarse = torch.from_numpy(rng.integers(0, 256, (n, c, 4, 4)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear").numpy()
    pixels = np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, np.round(smooth))
    x = np.ascontiguousarray(pixels / np.float32(255.0), dtype=np.float32)
    pre = meta.pre
    return normalize_(
        x, np.asarray(pre.mean, dtype=np.float32), np.asarray(pre.std, dtype=np.float32)
    )


def _nonfinite(logits: np.ndarray) -> int:
    """How many rows of ``logits`` hold a NaN or an infinity."""
    return int((~np.isfinite(logits).all(axis=1)).sum())


def _predicted(p: np.ndarray, multi_label: bool) -> np.ndarray:
    return (p > MULTI_LABEL_THRESHOLD) if multi_label else p.argmax(axis=1)


def compare(
    ref_logits: np.ndarray,
    out_logits: np.ndarray,
    task_type: str,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ParityReport:
    """Compare an export's logits with PyTorch's on the same inputs (see the module doc)."""
    multi = task_type.startswith("multi-label")
    kind = "multi-label" if multi else "multi-class"
    ref = probabilities(ref_logits, kind)
    out = probabilities(out_logits, kind)
    diff = np.abs(out - ref)
    allowed = rtol * ref + atol
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance: exact or inf
        ratio = np.where(diff == 0, 0.0, diff / np.maximum(allowed, 0.0))
    excess = float(ratio.max()) if diff.size else 0.0
    if multi:
        # A label counts when PyTorch is clearly on one side of 0.5.
        clear = np.abs(ref - 0.5) > allowed
        mismatches = int(((_predicted(ref, True) != _predicted(out, True)) & clear).any(1).sum())
    else:
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
        clear = (top2[:, 1] - top2[:, 0]) > 2 * allowed.max(axis=1)
        mismatches = int(((_predicted(ref, False) != _predicted(out, False)) & clear).sum())
    return ParityReport(float(diff.max()) if diff.size else 0.0, excess, mismatches)


def check_exports(
    loaded: LoadedClassifier,
    runners: Mapping[str, Runner],
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    batches: Sequence[int] = PARITY_BATCHES,
) -> dict[str, ParityReport]:
    """Run every exported graph in ``runners`` and eager PyTorch on :func:`parity_inputs`;
    return the worst report per graph over ``batches`` (raising is the caller's choice). A
    ``ValueError`` for a graph of another output shape, and for non-finite outputs, naming
    whose: PyTorch's own (the model is broken, not its export) or an export's."""
    worst: dict[str, ParityReport] = {}
    for i, n in enumerate(batches):
        x = parity_inputs(loaded, n, seed + i)
        with torch.inference_mode():
            ref = loaded.model(torch.from_numpy(x.copy())).numpy()
        if bad := _nonfinite(ref):
            # Not the export's fault: comparing NaN with NaN read "probabilities differ by up
            # to nan", which sent the user looking for an export bug.
            raise ValueError(
                f"the model itself (PyTorch, before export) produced non-finite outputs (NaN "
                f"or infinity) for {bad} of {n} test input(s): expected finite outputs (a "
                "diverged or overflowing model; retrain it)"
            )
        for key, run in runners.items():
            out = np.asarray(run(x.copy()))
            if out.shape != ref.shape:
                raise ValueError(
                    f"{key} export returns shape {out.shape} for batch {n}, expected {ref.shape}"
                )
            if bad := _nonfinite(out):
                raise ValueError(
                    f"the {key} export produced non-finite outputs (NaN or infinity) for {bad} "
                    f"of {n} test input(s) where PyTorch's are finite"
                )
            rep = compare(ref, out, loaded.meta.task_type, rtol=rtol, atol=atol)
            old = worst.get(key)
            worst[key] = (
                rep
                if old is None
                else ParityReport(
                    max(old.max_abs_diff, rep.max_abs_diff),
                    max(old.max_excess, rep.max_excess),
                    old.class_mismatches + rep.class_mismatches,
                )
            )
    return worst
