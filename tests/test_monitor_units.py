"""What the monitor's numbers count, recomputed independently: a multi-label model's accuracy is
the task's label-wise ACC (not exact match), the refused share is requests over requests (a
batch is one request), and the accuracy the window is tested against is named by the
reference's split."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.monitor.stats import labelwise_performance_test
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import register_demo_model
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.serve.reference import compute_reference, read_reference, write_reference
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import log_line
from tests.monitor_support import append_lines, log_predictions

LABELS = 14  # ChestMNIST's


def chest_images(n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ChestMNIST look-alikes, uint8 (n, 28, 28, 1), and their 0/1 labels (n, 14)."""
    x, y = make_split("chestmnist", n, seed=2, size=28, split=split)
    return x[..., None], y.astype(np.int8)


@pytest.fixture
def chest(workspace: Workspace, reg: Registry) -> Iterator[tuple[Workspace, Path]]:
    """An exported 14-label demo model 'chest' with a reference from 150 test-split images
    (as `pomlia monitor reference chest --split test` makes it)."""
    res = register_demo_model(
        reg, workspace, "chest", channels=1, num_classes=LABELS, task_type="multi-label"
    )
    x, y = chest_images(150, "test")
    ref = compute_reference(res.bundle, x, y, source="chestmnist@abc [test]", threads=1)
    write_reference(res.bundle, ref)
    yield workspace, res.bundle.root


def run_json() -> dict:
    res = CliRunner().invoke(app, ["monitor", "run", "chest", "--json", "--permutations", "100"])
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.output[res.output.index("{") :])


def labelwise(pred_lists: list[list[int]], truth: np.ndarray) -> np.ndarray:
    """Each image's share of labels right (MedMNIST's ACC is their mean)."""
    pred = np.zeros_like(truth)
    for row, idx in zip(pred, pred_lists, strict=True):
        row[idx] = 1
    return np.asarray((pred == truth).mean(axis=1), dtype=np.float64)


def test_multi_label_accuracy_is_the_tasks_label_wise_acc(chest: tuple[Workspace, Path]) -> None:
    """It was exact match over all 14 labels: 0.0 for window and reference alike where the
    task's ACC was 0.45, so the accuracy test could never alarm."""
    ws, bundle = chest
    ref = read_reference(bundle / "monitor-reference.npz")
    assert ref.accuracy == pytest.approx(float(np.mean(ref.pred_index == ref.labels)))
    assert ref.accuracy > 0.2  # an untrained model gets many of 14 mostly-absent labels right
    x, y = chest_images(60, "val")
    records = log_predictions(ws, bundle, x, labels=y)
    expected = labelwise([r["output"]["label_index"] for r in records], y)
    report = run_json()
    perf = report["performance"]
    assert perf["labels"] == 60
    assert perf["accuracy"] == pytest.approx(expected.mean())
    assert perf["reference_accuracy"] == pytest.approx(ref.accuracy)
    assert report["reference"]["accuracy"] == pytest.approx(ref.accuracy)
    assert perf["unit"].startswith("image")
    assert perf["interval_95"][0] < perf["accuracy"] < perf["interval_95"][1]


def test_a_label_wise_drop_rings_the_alarm(chest: tuple[Workspace, Path]) -> None:
    ws, bundle = chest
    path = bundle / "monitor-reference.npz"
    ref = read_reference(path)
    # Labels = the model's own predictions: a reference accuracy of 1.
    write_reference(ExportedBundle.open(bundle), replace(ref, labels=ref.pred_index.copy()))
    x, _ = chest_images(60, "val")
    records = log_predictions(ws, bundle, x)
    truth = np.zeros((60, LABELS), np.int8)
    for row, r in zip(truth, records, strict=True):
        row[r["output"]["label_index"]] = 1
    truth[:40, :2] ^= 1  # two labels wrong on 40 images: label-wise 1 - 80 / 840
    append_lines(
        next(log_dir(ws.path("logs"), "chest").glob("*.jsonl")),
        *[
            log_line(
                "feedback",
                model="chest",
                model_version=r["model_version"],
                time=r["time"],
                prediction_id=r["id"],
                label=[f"finding_{i}" for i in np.flatnonzero(t)],
                label_index=[int(i) for i in np.flatnonzero(t)],
            )
            for r, t in zip(records, truth, strict=True)
        ],
    )
    report = run_json()
    assert report["performance"]["accuracy"] == pytest.approx(1 - 80 / 840)
    assert report["alarm"] and any(r.startswith("accuracy") for r in report["reasons"])


def test_labelwise_test_uses_images_as_the_unit() -> None:
    """Labels of one image are not independent: with a per-image effect (one bad image gets
    many labels wrong) a test that counted 14 labels per image as 14 trials would ring far
    more often than alpha; the per-image test stays near it."""
    rng = np.random.default_rng(0)

    def scores(n: int) -> np.ndarray:
        hard = rng.random(n) < 0.3  # a hard image gets most of its labels wrong
        wrong = rng.binomial(LABELS, np.where(hard, 0.6, 0.05))
        return np.asarray(1.0 - wrong / LABELS)

    ref = scores(2000)
    rang = sum(
        labelwise_performance_test(scores(200), ref, LABELS).p_value <= 0.05 for _ in range(400)
    )
    assert rang <= 0.05 * 400 * 1.6  # 32: a Wilson-sized allowance around 20
    drop = labelwise_performance_test(scores(200) - 0.1, ref, LABELS)
    assert drop.p_value < 1e-4 and drop.detail["drop"] == pytest.approx(0.1, abs=0.05)


def test_the_refused_share_counts_requests_not_images(chest: tuple[Workspace, Path]) -> None:
    """One NPY batch of 40 images, two single-image requests and one refused request: the
    refused share is 1 of 4 requests (it was 1 of 43, "requests" counting images)."""
    ws, bundle = chest
    x, _ = chest_images(42, "val")
    records = log_predictions(ws, bundle, x[:40])
    log_predictions(ws, bundle, x[40:], one_request=False)
    first = sorted(log_dir(ws.path("logs"), "chest").glob("*.jsonl"))[0]
    append_lines(first, log_line("rejection", model="chest", time=records[0]["time"]))
    quality = run_json()["quality"]
    assert quality["predictions"] == 42 and quality["answered_requests"] == 3
    assert quality["requests"] == 4 and quality["rejected"] == 1
    assert quality["rejected_share"] == pytest.approx(0.25)
    assert "25.0% of requests were refused (wrong-size 1)" in " ".join(quality["warnings"])


def test_the_reference_accuracy_is_named_by_its_split(chest: tuple[Workspace, Path]) -> None:
    """A reference from the test split was reported as "validation_accuracy" and the page said
    "validation 0.706"."""
    ws, bundle = chest
    x, y = chest_images(30, "val")
    log_predictions(ws, bundle, x, labels=y)
    report = run_json()
    perf = report["performance"]
    assert report["reference"]["split"] == "test" and perf["reference_split"] == "test"
    # The old key stays, an alias with the same value, for readers of older reports.
    assert perf["validation_accuracy"] == perf["reference_accuracy"]
    page = (Path(report_path(ws)) / "report.html").read_text()
    assert f"reference (test split) {perf['reference_accuracy']:.3f}" in page
    assert "validation" not in page.lower()


def report_path(ws: Workspace) -> Path:
    (folder,) = [p for p in ws.path("reports", "chest").iterdir() if not p.name.startswith(".")]
    return folder


def test_labelwise_interval_is_not_degenerate_when_every_image_scores_the_same() -> None:
    """30 images that all get 13 of 14 labels right have a sample variance of 0: the interval
    was [0.92857, 0.92857] and any reference above it an alarm at p ~ 0. The variance is now
    at least that of independent labels, and the quantile a t one."""
    ref = np.full(500, 1.0 - 1 / LABELS)
    ref[:50] = 1.0
    res = labelwise_performance_test(np.full(30, 13 / LABELS), ref, LABELS)
    lo, hi = res.detail["interval_95"]
    assert hi - lo > 0.02 and lo < 13 / LABELS < hi
    assert res.p_value > 0.05  # 0.929 against 0.936 from 30 images is no evidence of a drop
    perfect = labelwise_performance_test(np.ones(30), np.ones(100), LABELS)
    assert perfect.detail["interval_95"][0] < 1.0


def test_labelwise_false_alarms_stay_below_alpha_at_small_windows() -> None:
    rng = np.random.default_rng(1)
    probs = [0.80, 0.15, 0.04, 0.01]  # 0..3 wrong labels per image, ChestMNIST-like

    def draw(n: int) -> np.ndarray:
        return np.asarray(1.0 - rng.choice(4, size=n, p=probs) / LABELS)

    ref = draw(2000)
    for n in (30, 200):
        rang = sum(
            labelwise_performance_test(draw(n), ref, LABELS).p_value <= 0.05 for _ in range(400)
        )
        assert rang <= 0.05 * 400


def test_old_exact_match_accuracies_stay_off_the_history(
    chest: tuple[Workspace, Path], reg: Registry, wide_console: None
) -> None:
    """Reports of format /1 of a multi-label model hold exact-match accuracy (about 0), later
    ones label-wise (about 0.9): one plot or column of both showed a drop that never was."""
    from pomlia_hpc.monitor.html import metric_points
    from pomlia_hpc.registry import Model, MonitorReport

    ws, bundle = chest
    with reg.session() as s:
        model_id = s.query(Model.id).filter(Model.name == "chest").scalar()
        old = MonitorReport(
            model_id=model_id,
            drift={},
            metrics={
                "status": "ok",
                "predictions": 40,
                "performance": {"labels": 40, "accuracy": 0.0},
            },
            triggered=False,
            report_path=str(ws.home / "old" / "report.json"),
        )
        s.add(old)
        s.flush()
        old_id = old.id
    x, y = chest_images(40, "val")
    log_predictions(ws, bundle, x, labels=y)
    report = run_json()
    assert report["format"] == "pomlia-monitor-report/2"
    assert report["performance"]["accuracy_kind"] == "label-wise"
    assert report["quality"]["rejected_share_unit"] == "request"
    with reg.session() as s:
        rows = s.query(MonitorReport).order_by(MonitorReport.id).all()
        s.expunge_all()
    points, left_out = metric_points(rows[:1], report)
    assert left_out == 1 and [label for label, _ in points] == ["now"]

    res = CliRunner().invoke(app, ["monitor", "history", "chest", "--json"])
    assert res.exit_code == 0, res.output
    by_id = {r["id"]: r for r in json.loads(res.output)}
    assert by_id[old_id]["accuracy"] is None and by_id[old_id]["labels"] == 40
    (new,) = [r for i, r in by_id.items() if i != old_id]
    assert new["accuracy"] == pytest.approx(report["performance"]["accuracy"])
    res = CliRunner().invoke(app, ["monitor", "history", "chest"])
    out = " ".join(res.output.split())
    assert "note: 1 report(s) written before report format /2 show no accuracy" in out, out
