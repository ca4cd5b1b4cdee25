"""A task metric on resamples of its images, drawn as integer weights (how often each image
was drawn), shared by the champion/challenger gate's paired bootstrap
(:mod:`pomlia_hpc.loop.bootstrap`) and the monitor's performance test on feedback labels
(:mod:`pomlia_hpc.monitor.metrictest`), so that both score a window alike.

The metrics are the task's (:mod:`pomlia_hpc.automl.metrics`): AUC is the mean one-vs-rest AUC
over the classes (binary: of p(class 1); multi-label: over the labels) where it is defined, and
macro F1 the mean F1 over the classes (labels) present in the truth or the predictions; in a
resample, both sets are those of the resampled images. An AUC is a weighted Mann-Whitney count
and an F1 a weighted confusion count: no image arrays are copied.

A model's output that is not finite for an image (a NaN row of ``probs``) is a missing answer,
as in the task's metrics: the image stays, ranked on the wrong side of every other image for
AUC; for F1 it predicts no class (a multi-label image: every label wrong).

Cost: a resample of n images is drawn in O(n) (a bincount of n uniform indices, about 8 times
faster than a multinomial draw); an AUC column costs a sort of the images once, then about six
passes over a (resamples, n) array; measured figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import math

import numpy as np

from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD, TaskType, normalize_task_type

#: Metrics computed on resamples (accuracy is a mean of per-image scores: tests of a
#: proportion or a mean carry it without resampling).
RESAMPLED_METRICS = ("auc", "f1_macro")
#: Resamples at least; more for a small alpha (20 / alpha), so that a p-value below alpha can
#: be observed at all (the smallest is 1 / (1 + B)), at most :data:`MAX_RESAMPLES` (at 3,000
#: images, about 17 s of one core for a binary AUC's two models: docs/BENCHMARKS.md).
MIN_RESAMPLES = 2000
MAX_RESAMPLES = 200_000
#: The random generator's seed of the gate's bootstrap and the monitor's permutation test: the
#: same images and outputs give the same decision, the same window the same p-value.
SEED = 0
#: Resamples (gate) or random splits (monitor) computed at once: bounds the memory, a few
#: (chunk, images) float64 arrays (about 6 MiB each at 3,000 images).
CHUNK = 250


def resamples_for(alpha: float) -> int:
    """How many resamples a test at level ``alpha`` draws (see :data:`MIN_RESAMPLES`)."""
    return int(min(MAX_RESAMPLES, max(MIN_RESAMPLES, math.ceil(20 / alpha))))


#: A class (label) with fewer true images than this enters a macro mean all the same, with
#: the weight of any other class: one image of a class makes its F1 0 or 1 and its one-vs-rest
#: AUC one image's rank. It is not left out (the task's metrics, which trials are scored by,
#: count it too, and a gate or a monitor that dropped it would judge another number), but the
#: gate's evidence and the monitor's report name it (:func:`sparse_classes`).
FEW_CLASS_IMAGES = 5


def sparse_classes(metric: str, task_type: str, truth: np.ndarray, width: int) -> dict[int, int]:
    """The classes (labels) that enter ``metric``'s macro mean on these images from fewer than
    :data:`FEW_CLASS_IMAGES` images, by index, with that count: for AUC the smaller of a
    column's positives and negatives (both are needed), for macro F1 its true images (a class
    only predicted is left out here: it has none to count). ``width``: the model's outputs."""
    n = len(truth)
    t, _pred, t_auc, _s = metric_columns(task_type, truth, np.zeros((n, width)))
    if metric == "auc":
        pos = t_auc.sum(axis=0)
        count = np.minimum(pos, n - pos)
        first = width - t_auc.shape[1]  # a binary task's one column is class 1
    else:
        count, first = t.sum(axis=0), 0
    few = np.flatnonzero((count > 0) & (count < FEW_CLASS_IMAGES))
    return {int(k) + first: int(count[k]) for k in few}


def draw_weights(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` bootstrap resamples of ``n`` images as int64 weights (size, n): how often
    each image was drawn (n uniform draws with replacement per resample)."""
    idx = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)


def metric_columns(task_type: str, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """(T, P, A, S): per class or label, the 0/1 truth (n, K) and prediction (n, K; a missing
    output predicts no class, or every label wrong) macro F1 counts; per AUC column, the 0/1
    truth and the score ranked (+-inf for a missing output: on the wrong side of all others)."""
    task = normalize_task_type(task_type)
    missing = np.isnan(probs).any(axis=1)
    if task == TaskType.MULTI_LABEL:
        t = truth.reshape(len(truth), -1) > 0
        # A missing output gets every label wrong (a false positive where the truth is 0), as
        # the task's metrics count it.
        pred = np.where(missing[:, None], ~t, probs > MULTI_LABEL_THRESHOLD)
        t_auc, s = t, probs
    else:
        y = truth.reshape(len(truth), -1)[:, 0]
        classes = np.arange(probs.shape[1])[None, :]
        t = classes == y[:, None]
        if task == TaskType.BINARY:
            # MedMNIST's binary ACC and AUC read p(class 1) alone; its F1 covers both classes.
            chosen = (probs[:, -1] > 0.5).astype(np.int64)
            t_auc, s = t[:, -1:], probs[:, -1:]
        else:
            chosen = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
            t_auc, s = t, probs
        pred = (classes == chosen[:, None]) & ~missing[:, None]
    s = np.where(missing[:, None], np.where(t_auc, -np.inf, np.inf), s)
    return t, pred, t_auc, s


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one column per resample: ``truth`` (n,) bool, ``score`` (n,), ``weights`` (B, n)
    how often each image was drawn. A positive ranked above a negative counts 1, a tie 1/2
    (the Mann-Whitney count, as scikit-learn's ``roc_auc_score``). NaN where a resample holds
    no positive or no negative."""
    order = np.argsort(score, kind="stable")
    s, t = score[order], np.asarray(truth, bool)[order]
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1  # equal scores share a group
    neg_group = group[~t]
    # Per positive, the negatives sorted before its group and those up to its group's end:
    # their cumulative weights at these two places sum to twice its Mann-Whitney count
    # (below + 1/2 tied). Only the negatives are summed and only the positives gathered, so
    # the work per resample is about six passes over n, whatever the share of positives.
    lo = np.searchsorted(neg_group, group[t], side="left")
    hi = np.searchsorted(neg_group, group[t], side="right")
    cum = np.zeros((len(weights), len(neg_group) + 1))
    cum[:, 1:] = weights[:, order[~t]]
    np.cumsum(cum, axis=1, out=cum)
    pos = weights[:, order[t]]
    twice = (pos * (cum[:, lo] + cum[:, hi])).sum(axis=1)
    pairs = pos.sum(axis=1) * cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, twice / (2 * pairs), np.nan)


def weighted_f1(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro F1 per resample: ``truth`` and ``pred`` (n, K) bool, ``weights`` (B, n); the mean
    over the classes present in the resample's truth or predictions (NaN with none)."""
    k = truth.shape[1]
    # One float matrix product for the three counts (a product with a bool matrix is not
    # done by BLAS: 2.5 times slower at 3,000 images).
    cells = np.concatenate([truth & pred, ~truth & pred, truth & ~pred], axis=1)
    counts = np.asarray(weights, np.float64) @ cells.astype(np.float64)
    tp, fp, fn = counts[:, :k], counts[:, k : 2 * k], counts[:, 2 * k :]
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(den > 0, 2 * tp / den, np.nan)
    present = np.isfinite(f1).any(axis=1)
    out = np.full(len(weights), np.nan)
    out[present] = np.nanmean(f1[present], axis=1)
    return out


def metric_of(
    metric: str, task_type: str, truth: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``metric`` (``auc`` or ``f1_macro``) of ``probs`` (n, C; NaN rows missing) against
    ``truth`` per row of ``weights`` (B, n); NaN where undefined (no class with both
    positives and negatives for AUC)."""
    t, pred, t_auc, s = metric_columns(task_type, truth, probs)
    w = np.asarray(weights, np.float64)
    if metric == "f1_macro":
        return weighted_f1(t, pred, w)
    if metric != "auc":
        raise ValueError(f"metric {metric!r}: resampled metrics are {RESAMPLED_METRICS}")
    per = np.stack([weighted_auc(t_auc[:, k], s[:, k], w) for k in range(s.shape[1])])
    out = np.full(len(w), np.nan)
    defined = np.isfinite(per).any(axis=0)
    out[defined] = np.nanmean(per[:, defined], axis=0)
    return out
