"""The performance test of a task scored by AUC or macro F1: the window's labelled predictions
against the reference, in the task's metric.

The champion/challenger gate compares such a task's models by its metric (a paired bootstrap:
:mod:`pomlia_hpc.loop.bootstrap`); the monitor's alarm must watch the same number, or an AUC
task whose ranking collapses while its accuracy holds (a model confidently wrong on a few
images, unsure on the rest) would never alarm. Accuracy is still reported beside it.

The window's labelled images and the reference's images are two samples; under "unchanged
data" (the window drawn from the reference's distribution) they are exchangeable, so the test
is a permutation test: the images of both are pooled and split at random into a window of the
window's size and a reference of the reference's, the metric computed on each part with the
gate's functions (:mod:`pomlia_hpc.automl.resampled`, the parts as 0/1 weights), and the
one-sided p-value of "the window's metric is below the reference's" is
``(1 + #{d* <= d}) / (1 + B)`` with ``d = window - reference`` observed and ``d*`` of each
split. Each split has the sizes the data has, so a metric that is lower on fewer images (macro
F1 with a rare class) is not mistaken for a drop: comparing the observed difference with
bootstraps of each side alone alarmed on 13.5% of unchanged 40-label windows at 0.05, and on
0.5% of 30-label AUC windows (an undefined resample counted as not worse). A split on which the
metric is undefined (a binary AUC whose window part drew no positive) counts as one as low as
the window: it cannot show a drop. Probabilities are compared as the log keeps them (rounded to
:data:`~pomlia_hpc.serve.runtime.LOGGED_DECIMALS`, in float64 on both sides), so ties are the
same in the window and the reference.

AUC needs the predicted probabilities: the window's come from the prediction log, the
reference's from its file (a reference written before it kept them cannot test AUC: the
monitor then tests accuracy and says how to rewrite the reference). Macro F1 needs only the
predicted labels, so it is computed from one-hot predictions on both sides.

Which metric a model is tested by is :func:`pomlia_hpc.models.taskmetric.model_metric`, the
gate's rule too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pomlia_hpc.automl.resampled import (
    CHUNK,
    SEED,
    metric_of,
    resamples_for,
    sparse_classes,
)
from pomlia_hpc.monitor.stats import CheckResult
from pomlia_hpc.serve.reference import Reference
from pomlia_hpc.serve.runtime import LOGGED_DECIMALS

#: A split's difference this close to the observed one counts as equal (float sums in
#: another order: the observed split itself must count).
TOLERANCE = 1e-12


def metric_performance_test(
    metric: str,
    ref: Reference,
    predicted: Sequence[Any],
    truth: Sequence[Any],
    probabilities: Sequence[Sequence[float]] | None,
    *,
    alpha: float,
    seed: int = SEED,
) -> CheckResult:
    """One-sided permutation test of "the window's ``metric`` is below the reference's" (module
    docstring). ``predicted`` / ``truth``: the window's labelled predictions and their labels
    (class indices; for multi-label lists of indices); ``probabilities``: their predicted
    probabilities (needed for ``auc``). ``alpha``: the level the test's share is held to
    (fixes how many random splits are drawn: ``resamples`` in ``detail``). The statistic is
    the window's metric; ``detail`` holds both values, the drop and the split counts."""
    multi = ref.task_type == "multi-label"
    width = len(ref.label_names)
    y_win = _truth(truth, width, multi)
    y_ref = ref.labels.reshape(ref.n, -1) if multi else ref.labels.reshape(ref.n, 1)
    if metric == "auc":
        if probabilities is None or ref.probabilities is None:
            raise ValueError("an AUC test needs the window's and the reference's probabilities")
        # As the log keeps them: a reference's float32 copy of 0.999999 is another number.
        p_win = logged(np.asarray(probabilities, np.float64).reshape(len(y_win), -1))
        p_ref = logged(np.asarray(ref.probabilities, np.float64))
    else:
        p_win = _one_hot(predicted, width)
        p_ref = (
            ref.pred_index.reshape(ref.n, -1).astype(np.float64)  # already 0/1 rows
            if multi
            else _one_hot(ref.pred_index.tolist(), width)
        )
    task = ref.task_type
    value = _once(metric, task, y_win, p_win)
    ref_value = _once(metric, task, y_ref, p_ref)
    detail: dict[str, Any] = {
        "metric": metric,
        "labels": len(y_win),
        "value": _json(value),
        "reference_value": _json(ref_value),
        "reference_n": ref.n,
        "drop": _json(ref_value - value),
        "test": "permutation (window and reference images pooled, split at random)",
        # Classes entering the window's macro mean from few labels, by name (the report says so).
        "few_image_classes": {
            ref.label_names[k] if k < width else str(k): count
            for k, count in sparse_classes(metric, task, y_win, p_win.shape[1]).items()
        },
    }
    if not (math.isfinite(value) and math.isfinite(ref_value)):
        # Undefined on the window (its labels hold one class) or on the reference: no test.
        detail.update(resamples=0, undefined_resamples=0)
        return CheckResult(metric, "performance", value, 1.0, detail)
    total = resamples_for(alpha)
    rng = np.random.default_rng(seed)
    y_all, p_all = np.concatenate([y_win, y_ref]), np.concatenate([p_win, p_ref])
    m, size_all = len(y_win), len(y_win) + ref.n
    observed = value - ref_value
    as_low = undefined = 0
    for lo in range(0, total, CHUNK):
        size = min(CHUNK, total - lo)
        # A random split of the pooled images: the window part as 0/1 weights, m ones per row
        # shuffled in place (half the CPU of sorting a random key per image).
        w = np.zeros((size, size_all))
        w[:, :m] = 1.0
        rng.permuted(w, axis=1, out=w)
        d = metric_of(metric, task, y_all, p_all, w) - metric_of(metric, task, y_all, p_all, 1 - w)
        bad = ~np.isfinite(d)
        undefined += int(bad.sum())
        as_low += int((bad | (d <= observed + TOLERANCE)).sum())
    detail.update(resamples=total, undefined_resamples=undefined)
    return CheckResult(metric, "performance", value, (1 + as_low) / (1 + total), detail)


def logged(probs: np.ndarray) -> np.ndarray:
    """float64 probabilities as the prediction log keeps them (rounded to
    :data:`~pomlia_hpc.serve.runtime.LOGGED_DECIMALS`; NaN stays NaN)."""
    return np.round(np.asarray(probs, np.float64), LOGGED_DECIMALS)


def _once(metric: str, task: str, truth: np.ndarray, probs: np.ndarray) -> float:
    """``metric`` on all the images (NaN when undefined or with none)."""
    if not len(truth):
        return math.nan
    return float(metric_of(metric, task, truth, probs, np.ones((1, len(truth))))[0])


def _truth(labels: Sequence[Any], width: int, multi: bool) -> np.ndarray:
    """Feedback labels as the metrics' truth: (n, 1) class indices, or (n, L) 0/1 rows for a
    multi-label task (a label given as a list of indices)."""
    if multi:
        return _one_hot(labels, width).astype(np.int64)
    return np.asarray([v if isinstance(v, int) else -1 for v in labels], np.int64).reshape(-1, 1)


def _one_hot(indices: Sequence[Any], width: int) -> np.ndarray:
    """Predicted (or true) labels, indices or lists of indices (multi-label), as 0/1
    "probabilities" (n, width): their argmax, a binary task's p(class 1) > 0.5 and a label's
    p > 0.5 give the labels back, so macro F1 scores the same answers."""
    out = np.zeros((len(indices), width))
    for i, v in enumerate(indices):
        for k in v if isinstance(v, list) else [v]:
            if isinstance(k, int) and 0 <= k < width:
                out[i, k] = 1.0
    return out


def _json(x: float) -> float | None:
    """``x`` for a report's JSON: None for NaN (PostgreSQL's json refuses NaN)."""
    return float(x) if math.isfinite(x) else None
