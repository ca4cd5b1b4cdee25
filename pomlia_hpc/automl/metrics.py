"""Task metrics as MedMNIST's evaluator computes them, plus macro F1.

ACC and AUC come from ``medmnist.evaluator.getACC`` / ``getAUC`` with MedMNIST's task strings, so
a number here means what it means in the MedMNIST v2 paper:

* multi-class and ordinal: ACC of the argmax; AUC = mean one-vs-rest AUC over the classes;
* binary: ACC of ``p(class 1) > 0.5``; AUC of ``p(class 1)``;
* multi-label: ACC and AUC averaged over the labels, a label predicted when its sigmoid > 0.5.

``f1_macro`` is scikit-learn's macro F1 of the same predictions, averaged over the classes (for
multi-label: the labels) present in the truth or the predictions; ``f1_classes`` says how many.

Small evaluation sets (look-alike tests, scarce data) can miss a class entirely, and then
``roc_auc_score`` is undefined for it and MedMNIST's ``getAUC`` raises or returns NaN. We then
average the same per-class AUCs over the classes where it is defined and say so in
``auc_classes`` (how many classes entered the mean). With no class defined (e.g. a validation
split of one class) AUC is ``None``: undefined, never NaN, because run metrics are stored as JSON
and PostgreSQL's ``json`` rejects NaN; :func:`objective_cost` counts an undefined metric as the
worst.

A model can answer NaN or infinity for an image (a diverged network, an overflow in bf16).
Such an output is a missing answer and counts as wrong, as the champion/challenger gate
scores it (:mod:`pomlia_hpc.loop.gate`): its image is misclassified for ACC and F1 (a miss of
its true class, no class predicted; for multi-label every label wrong) and ranked on the wrong
side of every other image in each AUC it enters. ``missing`` says how many images that was;
scikit-learn and MedMNIST refuse such scores outright, which made a whole trial fail on one
image.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from pomlia_hpc.data.splits import MIN_EVAL_IMAGES
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD, check_metric, medmnist_task


def _auc_defined_classes(
    y_true: np.ndarray, y_score: np.ndarray, task: str
) -> tuple[float | None, int]:
    """MedMNIST's per-class AUC averaged over the classes where it is defined."""
    aucs: list[float] = []
    if task == "multi-label, binary-class":
        columns = [(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]
    elif task == "binary-class":
        columns = [(y_true[:, 0], y_score[:, -1])]
    else:
        columns = [
            ((y_true[:, 0] == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])
        ]
    for truth, score in columns:
        if len(np.unique(truth)) == 2:
            aucs.append(float(roc_auc_score(truth, score)))
    return (float(np.mean(aucs)) if aucs else None), len(aucs)


def evaluate(task_type: str, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float | None]:
    """ACC, AUC and macro F1 of ``y_score`` against ``y_true``.

    ``y_true``: int (N, 1) class indices, or (N, L) 0/1 for multi-label.
    ``y_score``: float (N, C) probabilities: softmax over classes, or one sigmoid per label.
    Returns ``{"acc", "auc", "f1_macro", "auc_classes", "f1_classes", "n", "missing"}``
    (``n``: images evaluated; ``*_classes``: how many classes entered the mean; ``missing``:
    images whose scores are not all finite, each counted wrong: see the module docstring); a
    metric that is undefined on these images is ``None``.
    """
    # Imported here: medmnist loads torch (3 s), and naming or checking a metric (`task add`,
    # `task list`) needs neither.
    from medmnist.evaluator import getACC, getAUC

    task = medmnist_task(task_type)
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_true.shape[0] != y_score.shape[0] or y_score.ndim != 2:
        raise InputError(
            f"evaluate: expected y_true (N, L) and y_score (N, C) with the same N, got "
            f"{y_true.shape} and {y_score.shape}"
        )
    n = int(y_true.shape[0])
    if n < MIN_EVAL_IMAGES:
        # MedMNIST's functions squeeze their inputs, which breaks on a single image
        # (`task add` and `automl run` refuse such splits up front: data.splits).
        raise InputError(f"evaluate: expected at least {MIN_EVAL_IMAGES} images, got {n}")
    missing = ~np.isfinite(y_score).all(axis=1)
    if missing.any():
        y_score = _wrong_answers(y_true, y_score, task, missing)
    auc: float | None
    if task == "multi-label, binary-class" and y_score.shape[1] == 1:
        # MedMNIST squeezes (N, 1) to (N,) and then indexes a second axis: compute its
        # definitions (the mean over labels, here one) directly.
        acc = float(np.mean((y_score[:, 0] > MULTI_LABEL_THRESHOLD) == (y_true[:, 0] > 0.5)))
        auc, n_auc = _auc_defined_classes(y_true, y_score, task)
    else:
        acc = float(getACC(y_true, y_score, task))
        n_auc = y_score.shape[1] if task != "binary-class" else 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auc = float(getAUC(y_true, y_score, task))
        except ValueError:  # older scikit-learn raises on a class without positives
            auc = math.nan
        if not math.isfinite(auc):  # newer scikit-learn returns NaN (with a warning) instead
            auc, n_auc = _auc_defined_classes(y_true, y_score, task)
    f1, n_f1 = _f1_macro(y_true, y_score, task, missing)
    return {
        "acc": acc,
        "auc": auc,
        "f1_macro": f1,
        "auc_classes": n_auc,
        "f1_classes": n_f1,
        "n": n,
        "missing": int(missing.sum()),
    }


def _wrong_answers(
    y_true: np.ndarray, y_score: np.ndarray, task: str, missing: np.ndarray
) -> np.ndarray:
    """``y_score`` with each ``missing`` row replaced by the worst answer for its truth: above
    every finite score where the truth is 0 (a negative class or label), below every one where
    it is 1, so its argmax or threshold is wrong and each AUC ranks it wrongly."""
    finite = y_score[~missing]
    low = float(finite.min()) - 1.0 if finite.size else 0.0
    high = float(finite.max()) + 1.0 if finite.size else 1.0
    if task == "multi-label, binary-class":
        truth = (y_true > 0.5).astype(bool)
    elif task == "binary-class":
        # Only the last column is read (p of class 1); the other is kept its complement.
        truth = np.zeros(y_score.shape, bool)
        truth[:, -1] = y_true[:, 0] == 1
        if y_score.shape[1] == 2:
            truth[:, 0] = ~truth[:, -1]
    else:
        truth = np.arange(y_score.shape[1])[None, :] == y_true[:, :1]
    out = y_score.copy()
    out[missing] = np.where(truth[missing], low, high)
    return out


def _f1_macro(
    y_true: np.ndarray, y_score: np.ndarray, task: str, missing: np.ndarray
) -> tuple[float | None, int]:
    """Macro F1 over the classes (labels) that occur in the truth or the predictions, and how
    many those are. A class absent from both has no F1 (scikit-learn would count it as 0, so
    perfect predictions on a split missing a class would score below 1). A ``missing`` row of
    a single-label task predicts no class (-1): a miss of its true class, no false positive of
    another (its worst-case scores would pick an arbitrary one)."""
    if task == "multi-label, binary-class":
        pred: np.ndarray = (y_score > MULTI_LABEL_THRESHOLD).astype(int)
        truth = (y_true > 0.5).astype(int)
        cols = [i for i in range(truth.shape[1]) if truth[:, i].any() or pred[:, i].any()]
        if not cols:
            return None, 0
        # Each label's F1 of its positives, then their mean (scikit-learn's macro F1 of a
        # label indicator). Not one call on truth[:, cols]: with one column left, scikit-learn
        # reads it as a binary target and averages the F1 of "absent" in too (0.33 for a
        # label never predicted, whose F1 is 0).
        f1 = np.mean([f1_score(truth[:, i], pred[:, i], zero_division=0) for i in cols])
        return float(f1), len(cols)
    if task == "binary-class":
        truth, pred = y_true[:, 0], (y_score[:, -1] > 0.5).astype(int)
    else:
        truth, pred = y_true[:, 0], y_score.argmax(axis=1)
    pred = np.where(missing, -1, pred)
    labels = sorted({int(v) for v in truth} | {int(v) for v in pred if v >= 0})
    f1 = f1_score(truth, pred, average="macro", labels=labels, zero_division=0)
    return float(f1), len(labels)


def objective_cost(metrics: Mapping[str, float | None], metric: str) -> float:
    """What the optimiser minimises: ``1 - metric`` (1.0, the worst, when the metric is
    undefined: ``None``, or NaN in results written before undefined metrics became ``None``)."""
    value = metrics.get(check_metric(metric))
    if value is None or not math.isfinite(float(value)):
        return 1.0
    return 1.0 - float(value)
