"""The monitor's performance test compares the task's metric, as the promotion gate does: an
AUC task whose AUC collapses on the labelled production feedback while its accuracy holds (the
model confidently wrong on a few images, unsure on the rest) alarmed on nothing, as only
accuracy was tested; a macro F1 task that stopped finding a rare class alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from pomlia_hpc.monitor import history
from pomlia_hpc.monitor.checks import run_checks
from pomlia_hpc.monitor.labels import LabelJoin
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.reference import Reference
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model, images, log_predictions

SINCE = datetime(2026, 12, 1, tzinfo=UTC)


def _binary(n: int, confident_right: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n`` binary labels and p(class 1), 80% of them predicted right: the right ones sure
    and the wrong ones unsure (a good ranking: AUC near 1), or the reverse (AUC near 0.64)."""
    y = np.arange(n) % 2
    right = (np.arange(n) // 2) % 5 != 0
    sure, unsure = (0.9, 0.55) if confident_right else (0.55, 0.98)
    p1 = np.where(right, np.where(y == 1, sure, 1 - sure), np.where(y == 1, 1 - unsure, unsure))
    return y, p1


def _reference(
    task_type: str, names: list[str], y: np.ndarray, probs: np.ndarray | None, pred: np.ndarray
) -> Reference:
    n = len(y)
    return Reference(
        model="m",
        model_version="v",
        fingerprint_kind="test",
        task_type=task_type,
        label_names=names,
        source="d@1 [val]",
        fingerprints=np.zeros((n, 4), np.float32),
        labels=y,
        pred_index=pred,
        confidence=np.full(n, 0.8, np.float32),
        created_at="",
        probabilities=probs,
    )


def _window(pred: list[int], truth: list[int], probs: list[list[float]]) -> LogWindow:
    win = LogWindow(model="m", version="v", since=SINCE, until=SINCE + timedelta(days=1))
    when = SINCE.isoformat()
    win.labels = LabelJoin(
        tested=[(p, t, when) for p, t in zip(pred, truth, strict=True)], probabilities=probs
    )
    return win


def _binary_case(confident_right_in_window: bool) -> tuple[LogWindow, Reference]:
    y, p1 = _binary(400, confident_right=True)
    probs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    ref = _reference("binary", ["no", "yes"], y, probs, (p1 > 0.5).astype(np.int32))
    wy, wp = _binary(200, confident_right=confident_right_in_window)
    win = _window([int(v > 0.5) for v in wp], wy.tolist(), [[1 - v, v] for v in wp])
    return win, ref


def test_an_auc_task_alarms_when_its_auc_collapses_though_its_accuracy_holds() -> None:
    win, ref = _binary_case(confident_right_in_window=False)
    out = run_checks(win, ref, n_perm=50, metric="auc")
    tests = {t.name: t for t in out.tests}
    assert out.alarm and tests["auc"].rejected and tests["auc"].weight > 0
    # accuracy is the reference's (0.8 both): reported beside it, not tested
    assert tests["accuracy"].weight == 0 and not tests["accuracy"].rejected
    assert out.performance is not None and out.performance["metric"] == "auc"
    got = out.performance["metric_test"]
    assert got["value"] < 0.7 < 0.95 < got["reference_value"] and got["labels"] == 200
    assert out.performance["accuracy"] == pytest.approx(0.8)
    # the same window judged by accuracy alone raised no alarm: the defect
    assert not run_checks(win, ref, n_perm=50, metric="acc").alarm


def test_an_auc_task_whose_ranking_holds_raises_no_alarm() -> None:
    win, ref = _binary_case(confident_right_in_window=True)
    out = run_checks(win, ref, n_perm=50, metric="auc")
    assert not out.alarm
    assert {t.name for t in out.tests if t.weight > 0} == {"auc"}


def test_a_reference_without_probabilities_tests_accuracy_and_says_how_to_test_auc() -> None:
    win, ref = _binary_case(confident_right_in_window=False)
    old = _reference("binary", ref.label_names, ref.labels, None, ref.pred_index)
    out = run_checks(win, old, n_perm=50, metric="auc")
    assert {t.name for t in out.tests if t.weight > 0} == {"accuracy"}
    assert any(
        "keeps no probabilities" in n and "pomlia monitor reference m" in n for n in out.notes
    ), out.notes


def test_a_macro_f1_task_alarms_when_a_rare_class_is_no_longer_found() -> None:
    # reference: 3 classes (45/45/10%), 80% right in each, the wrong ones sent to the next class
    y = np.repeat([0, 1, 2], [180, 180, 40])
    wrong = (np.arange(len(y)) % 5) == 0
    pred = np.where(wrong, (y + 1) % 3, y)
    ref = _reference("multi-class", ["a", "b", "c"], y, None, pred.astype(np.int32))
    # window: accuracy 0.8 too, but class c is never predicted any more
    truth = [0] * 90 + [1] * 90 + [2] * 20
    guess = [0] * 90 + [1] * 70 + [0] * 20 + [0] * 20
    win = _window(guess, truth, [])
    out = run_checks(win, ref, n_perm=50, metric="f1_macro")
    tests = {t.name: t for t in out.tests}
    assert out.alarm and tests["f1_macro"].rejected
    assert tests["accuracy"].statistic == pytest.approx(0.8) and not tests["accuracy"].rejected
    assert not run_checks(win, ref, n_perm=50, metric="acc").alarm


def test_a_class_with_one_label_in_the_mean_is_named_by_the_monitor_and_the_gate() -> None:
    """A class with one image enters a macro mean with the weight of any other (its F1 is 0
    or 1 on that image): both the monitor's report and the gate's evidence now name it, with
    the same rule (:data:`~pomlia_hpc.automl.resampled.FEW_CLASS_IMAGES`)."""
    from pomlia_hpc.automl.resampled import FEW_CLASS_IMAGES
    from pomlia_hpc.loop.bootstrap import paired_bootstrap

    y = np.repeat([0, 1, 2], [180, 180, 40])
    ref = _reference("multi-class", ["a", "b", "c"], y, None, y.astype(np.int32))
    truth = [0] * 40 + [1] * 39 + [2]
    win = _window(truth, truth, [])
    out = run_checks(win, ref, n_perm=50, metric="f1_macro")
    assert out.performance is not None
    assert out.performance["metric_test"]["few_image_classes"] == {"c": 1}
    assert any(
        f"fewer than {FEW_CLASS_IMAGES} labels, each with full weight: c (1)" in n
        for n in out.notes
    ), out.notes
    # the gate's evidence on the same images names it too
    logits = np.eye(3)[truth] * 4.0
    got = paired_bootstrap(
        "f1_macro", "multi-class", np.asarray(truth)[:, None], logits, logits, 0.05
    )
    assert got.few_image_classes == {"2": 1}
    assert got.from_dict(got.to_dict()) == got  # kept in the evidence and read back


def test_the_reference_keeps_the_probabilities_the_log_would_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AUC test ranks the log's probabilities against the reference's: the reference must
    hold them as the log does (rounded), or ties the log has (a confident model's 1.000000)
    would be ranked in the reference and the window would look worse than it is."""
    from pomlia_hpc.serve.reference import REFERENCE_FILE, read_reference

    home = tmp_path / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    bundle = demo_model(reg, ws, n_ref=120)
    ref = read_reference(bundle / REFERENCE_FILE)
    x, _ = images(120, split="val")  # the reference's own images
    logged = log_predictions(ws, bundle, x)
    rows = np.asarray([r["output"]["probabilities"] for r in logged], np.float32)
    assert ref.probabilities is not None
    # kept to the log's decimals (runtimes may differ in the last one between batch sizes)
    assert (ref.probabilities == np.round(ref.probabilities, 6).astype(np.float32)).all()
    np.testing.assert_allclose(ref.probabilities, rows, rtol=0, atol=2e-6)
    reg.dispose()


def _null_window(metric: str, rng: np.random.Generator, n: int) -> tuple[list, list, list]:
    """``n`` labelled predictions from one fixed distribution: five unbalanced classes, 70%
    right (macro F1); a binary model of AUC about 0.85 on 30% positives (AUC)."""
    if metric == "f1_macro":
        y = rng.choice(5, n, p=[0.5, 0.2, 0.15, 0.1, 0.05])
        pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 5, n))
        return pred.tolist(), y.tolist(), []
    y = (rng.random(n) < 0.3).astype(int)
    p1 = np.round(1 / (1 + np.exp(-rng.normal(2.0 * y, 1.0) + 1.0)), 6)
    return (p1 > 0.5).astype(int).tolist(), y.tolist(), [[1 - v, v] for v in p1]


@pytest.mark.parametrize(("metric", "labels"), [("f1_macro", 40), ("auc", 30)])
def test_the_metric_test_alarms_at_its_level_on_unchanged_data(metric: str, labels: int) -> None:
    """Windows drawn from the reference's own distribution: the test rejects about alpha of
    them, neither more (false alarms, retrains for nothing) nor far fewer (a test that cannot
    alarm on a small window). Macro F1 is lower on fewer images, so comparing a 40-label
    window's F1 with a 400-image reference's by resampling each alarmed on 13.5% at 0.05,
    and an AUC from 30 labels on 0.5%."""
    from pomlia_hpc.monitor.metrictest import metric_performance_test

    rng = np.random.default_rng(11)
    pred, truth, probs = _null_window(metric, rng, 400)
    ref = _reference(
        "binary" if metric == "auc" else "multi-class",
        ["a", "b"] if metric == "auc" else list("abcde"),
        np.asarray(truth),
        np.asarray(probs, np.float32) if probs else None,
        np.asarray(pred, np.int32),
    )
    p_values = []
    for seed in range(200):
        pred, truth, probs = _null_window(metric, rng, labels)
        got = metric_performance_test(
            metric, ref, pred, truth, probs or None, alpha=0.05, seed=seed
        )
        p_values.append(got.p_value)
    rate = float(np.mean(np.asarray(p_values) < 0.05))
    assert 0.02 <= rate <= 0.08, rate


def test_the_reference_s_probabilities_round_to_the_log_s_values_exactly(
    tmp_path: Path,
) -> None:
    """The server rounds its float64 probabilities to 6 decimals; the reference rounded a
    float32 copy in float32 arithmetic, and 1.6% of its values were another 6-decimal number
    than the log's for the same output (ties and ranks of the AUC test differ)."""
    from pomlia_hpc.serve.exported import ExportedBundle
    from pomlia_hpc.serve.reference import REFERENCE_FILE, read_reference
    from pomlia_hpc.serve.runtime import (
        LOGGED_DECIMALS,
        load_runtime,
        normalize_,
        probabilities,
        to_nchw,
    )

    home = tmp_path / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    root = demo_model(reg, ws, n_ref=120)
    ref = read_reference(root / REFERENCE_FILE)
    bundle = ExportedBundle.open(root)
    x, _ = images(120, split="val")  # the reference's own images, one batch as it ran them
    mean, std = np.float32(bundle.mean), np.float32(bundle.std)
    logits = load_runtime(bundle, "onnx", 1).logits(
        normalize_(to_nchw(x.astype(np.float32) / 255.0), mean, std)
    )
    logged = np.round(probabilities(logits, bundle.task_type), LOGGED_DECIMALS)
    assert ref.probabilities is not None
    kept = np.round(ref.probabilities.astype(np.float64), LOGGED_DECIMALS)
    assert (kept == logged).all(), int((kept != logged).sum())
    reg.dispose()


def test_a_window_of_one_class_where_auc_is_undefined_still_tests_accuracy() -> None:
    """Feedback that arrives for one class only (users report the missed positives) leaves
    AUC undefined on the window; the accuracy test then decides, as before the task's metric
    was tested: an accuracy that fell from 0.8 to 0.25 on 80 labels raised no alarm."""
    _, ref = _binary_case(confident_right_in_window=True)
    truth = [1] * 80
    p1 = [0.9 if i % 4 == 0 else 0.2 for i in range(80)]  # 1 in 4 right
    win = _window([int(v > 0.5) for v in p1], truth, [[1 - v, v] for v in p1])
    out = run_checks(win, ref, n_perm=50, metric="auc")
    tests = {t.name: t for t in out.tests}
    assert out.alarm and tests["accuracy"].rejected and tests["accuracy"].weight > 0
    assert tests["auc"].weight == 0 and out.performance is not None
    assert out.performance["metric"] == "acc" and out.performance["metric_test"]["value"] is None
    assert any("auc is undefined" in n and "accuracy is tested" in n for n in out.notes)


def test_a_window_without_labels_records_no_tested_metric() -> None:
    """An AUC task's window with no labels tested nothing: its report said
    ``performance.metric: "acc"``, a metric neither tested nor the task's. It records None,
    and the readers of reports (history, the workspace report) show no tested metric."""
    _, ref = _binary_case(confident_right_in_window=True)
    win = _window([], [], [])
    win.pred_index = [1, 0] * 20  # predictions, no label yet
    win.confidence.extend([0.9] * 40)
    out = run_checks(win, ref, n_perm=50, metric="auc")
    assert out.performance is not None and out.performance["labels"] == 0
    assert out.performance["metric"] is None
    assert history.tested_metric({"performance": out.performance}, multi_label=False) is None
