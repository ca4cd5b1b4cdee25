"""The task metrics (``automl.metrics.evaluate``) agree with scikit-learn's on the same arrays,
edge cases included, and a model's missing answers (NaN, infinity) count as wrong, in the
metrics as in the champion/challenger gate.

Property tests draw label and score arrays with hypothesis; each compares with the
scikit-learn call that defines the metric (not with our own code or MedMNIST's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from pomlia_hpc.automl.metrics import evaluate, objective_cost
from pomlia_hpc.loop.gate import correct, labelwise_accuracy
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.runtime import probabilities
from tests.loop_support import register_small_cnn

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def single_label(draw: st.DrawFn, classes: tuple[int, int] = (3, 6)) -> tuple[np.ndarray, ...]:
    """(truth (N,), scores (N, C)): scores on a coarse grid (ties are common), rows that need
    not sum to 1, classes that may be absent from the truth or never predicted."""
    c = draw(st.integers(*classes))
    n = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # At most c - 1 distinct classes sometimes: a class absent from the truth.
    used = draw(st.integers(1, c))
    y = rng.integers(0, used, n)
    scores = rng.integers(0, 5, (n, c)) / 4.0  # grid of 0, .25, ..., 1: many ties
    if draw(st.booleans()):
        scores = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-9)
    return y, scores


def ovr_auc_of_defined_classes(y: np.ndarray, scores: np.ndarray) -> float | None:
    """scikit-learn's one-vs-rest AUC per class, averaged over the classes both present and
    absent in ``y`` (where it is defined); None if there is no such class."""
    aucs = [
        roc_auc_score((y == i).astype(int), scores[:, i])
        for i in range(scores.shape[1])
        if 0 < (y == i).sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else None


@SETTINGS
@given(single_label())
def test_multi_class_metrics_are_sklearns(drawn: tuple[np.ndarray, ...]) -> None:
    y, scores = drawn
    m = evaluate("multi-class", y[:, None], scores)
    pred = scores.argmax(axis=1)  # ties: the first class, as numpy's and torch's argmax
    assert m["acc"] == pytest.approx(accuracy_score(y, pred))
    # scikit-learn's own macro F1: its labels are those in the truth or the predictions
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    expected_auc = ovr_auc_of_defined_classes(y, scores)
    if expected_auc is None:
        assert m["auc"] is None and objective_cost(m, "auc") == 1.0
    else:
        assert m["auc"] == pytest.approx(expected_auc)
    if len(set(y)) == scores.shape[1] and np.allclose(scores.sum(axis=1), 1.0):
        # every class present, rows that are probabilities: sklearn's multi-class call itself
        sk = roc_auc_score(y, scores, multi_class="ovr", average="macro")
        assert m["auc"] == pytest.approx(sk)
    assert m["missing"] == 0 and m["n"] == len(y)


@SETTINGS
@given(single_label(classes=(2, 2)))
def test_binary_metrics_are_sklearns_given_one_or_two_columns(
    drawn: tuple[np.ndarray, ...],
) -> None:
    y, scores = drawn
    p1 = scores[:, 1]
    one, two = evaluate("binary", y[:, None], p1[:, None]), evaluate("binary", y[:, None], scores)
    assert one == two  # p(class 1) is all that is read
    pred = (p1 > 0.5).astype(int)
    assert one["acc"] == pytest.approx(accuracy_score(y, pred))
    assert one["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    if len(set(y)) == 2:
        assert one["auc"] == pytest.approx(roc_auc_score(y, p1))
    else:
        assert one["auc"] is None


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_multi_label_metrics_are_sklearns(n: int, labels: int, seed: int, empty: bool) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, labels))
    if empty:
        y[:, 0] = 0  # a label no image has
    scores = rng.integers(0, 5, (n, labels)) / 4.0  # 0.5 on the grid: not predicted
    m = evaluate("multi-label", y, scores)
    pred = (scores > 0.5).astype(int)
    assert m["acc"] == pytest.approx(
        np.mean([accuracy_score(y[:, j], pred[:, j]) for j in range(labels)])
    )
    present = [j for j in range(labels) if y[:, j].any() or pred[:, j].any()]
    if present:
        if labels > 1:  # a label indicator: scikit-learn's macro F1 over the labels in play
            sk_f1 = f1_score(y, pred, average="macro", labels=present, zero_division=0)
        else:  # one column is a binary target to scikit-learn: the label's F1 is its positives'
            sk_f1 = f1_score(y[:, 0], pred[:, 0], zero_division=0)
        assert m["f1_macro"] == pytest.approx(sk_f1) and m["f1_classes"] == len(present)
    else:
        assert m["f1_macro"] is None
    defined = [j for j in range(labels) if 0 < y[:, j].sum() < n]
    if defined:
        sk_auc = roc_auc_score(y[:, defined], scores[:, defined], average="macro")
        assert m["auc"] == pytest.approx(sk_auc) and m["auc_classes"] == len(defined)
    else:
        assert m["auc"] is None


def worst_answers(y: np.ndarray, scores: np.ndarray, rows: list[int]) -> np.ndarray:
    """``scores`` with ``rows`` given the worst answer: 0 for the true class, 1 for every
    other (the other scores lie strictly inside, so no tie)."""
    out = scores.copy()
    for r in rows:
        out[r] = 1.0
        out[r, y[r]] = 0.0
    return out


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_missing_answer_counts_as_wrong_in_every_metric(bad: float) -> None:
    rng = np.random.default_rng(3)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    scores = rng.uniform(0.05, 0.95, (8, 3))
    broken = scores.copy()
    broken[[0, 4], 1] = bad
    m = evaluate("multi-class", y[:, None], broken)
    assert m["missing"] == 2
    worst = worst_answers(y, scores, [0, 4])
    pred = scores.argmax(axis=1)
    right = (pred == y) & ~np.isin(np.arange(8), [0, 4])
    assert m["acc"] == pytest.approx(right.mean())
    # ranked below every image of its class, above every other image in each other class
    assert m["auc"] == pytest.approx(ovr_auc_of_defined_classes(y, worst))
    # a missing answer predicts no class: a miss of its own, no false positive of another
    pred_missing = np.where(np.isin(np.arange(8), [0, 4]), -1, pred)
    sk_f1 = f1_score(y, pred_missing, labels=[0, 1, 2], average="macro", zero_division=0)
    assert m["f1_macro"] == pytest.approx(sk_f1)
    # binary and multi-label alike
    yb = np.array([0, 1, 1, 0, 1, 0])
    pb = np.array([[0.8, 0.2], [0.3, 0.7], [bad, bad], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    mb = evaluate("binary", yb[:, None], pb)
    assert mb["missing"] == 1 and mb["acc"] == pytest.approx(5 / 6)
    yl = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    pl = np.array([[0.9, 0.1], [0.2, 0.8], [bad, 0.9], [0.1, 0.2]])
    ml = evaluate("multi-label", yl, pl)
    assert ml["missing"] == 1 and ml["acc"] == pytest.approx(3 / 4)  # the row: both labels wrong


def _constant_model(reg: Registry, root: Path, name: str, bias: list[float], task: str) -> Model:
    """A small CNN on 28 px that answers the logits ``bias`` for every image."""
    net = build_classifier("small_cnn", len(bias), 3, image_size=28)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(bias))
    labels = [f"c{i}" for i in range(len(bias))]
    return register_small_cnn(reg, root, name, net, 1, task, labels)


def test_the_gate_counts_a_missing_answer_wrong_as_the_task_metric_does(
    tmp_path: Path, reg: Registry
) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 3), dtype=np.uint8)
    labels = np.zeros((6, 1), np.int64)  # all class 0: what argmax reads a NaN output as
    silent = _constant_model(reg, tmp_path, "silent", [float("nan")] * 3, "multi-class")
    assert not correct(silent, images, labels).any()
    # The gate's accuracy and the task's ACC of the same outputs are the same number.
    steady = _constant_model(reg, tmp_path, "steady", [2.0, 0.0, 1.0], "multi-class")
    labels = np.array([[0], [0], [1], [2], [0], [1]])
    logits = np.tile([[2.0, 0.0, 1.0]], (6, 1))
    acc = evaluate("multi-class", labels, probabilities(logits, "multi-class"))["acc"]
    assert correct(steady, images, labels).mean() == pytest.approx(acc)
    nan_acc = evaluate("multi-class", labels, probabilities(logits * np.nan, "multi-class"))
    assert nan_acc["acc"] == correct(silent, images, labels).mean() == 0.0
    # multi-label: label-wise, a missing answer scores 0 in both
    multi = _constant_model(reg, tmp_path, "multi", [3.0, -3.0, 3.0], "multi-label")
    yl = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 1], [1, 0, 1], [0, 0, 0], [1, 0, 1]])
    wise = labelwise_accuracy(multi, images, yl)
    ml = evaluate(
        "multi-label", yl, probabilities(np.tile([[3.0, -3.0, 3.0]], (6, 1)), "multi-label")
    )
    assert wise.mean() == pytest.approx(ml["acc"])
