"""The gate compares the task's own metric: a task scored by AUC is gated on AUC (paired
bootstrap), not on accuracy.

Two binary models whose scores are set through the pixels (:func:`readout_net`): ``ranker``
reads channel 0, which ranks every image by its truth (AUC 1) but never crosses its threshold
(it always answers class 0: accuracy 0.5); ``guesser`` reads channel 1, right on 4 images of 5
(accuracy 0.8, AUC 0.8). By accuracy the guesser is far better, by AUC far worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from pomlia_hpc.automl.metrics import evaluate
from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.harvest import NewImages, harvest_version
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.bootstrap import metric_of, paired_bootstrap, probabilities
from pomlia_hpc.loop.gate import promote_with_gate, run_gate
from pomlia_hpc.loop.promote import champion, gate_decisions, put_on_slot
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.models.taskmetric import model_metric, model_task
from pomlia_hpc.registry import Model, Registry, Task
from pomlia_hpc.workspace import Workspace
from tests.loop_support import readout_net, register_small_cnn

CLASSES = ["negative", "positive"]


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images and their 0/1 truth: channel 0 high (about 200) exactly on the positives,
    channel 1 high on the positives but for every fifth image (low on it where it is positive,
    high where negative), channel 2 noise (no two images alike; neither model reads it)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    jitter = rng.integers(0, 20, (2, n))
    wrong = np.arange(n) % 5 == 0
    x = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    x[..., 0] = (np.where(y == 1, 195, 135) + jitter[0])[:, None, None]
    x[..., 1] = (np.where((y == 1) != wrong, 195, 135) + jitter[1])[:, None, None]
    return x, y[:, None].astype(np.int64)


def _setup(tmp_path: Path, workspace: Workspace, reg: Registry, champ: str, metric: str) -> str:
    """A parent version (60 fixed test images), a harvest of 200 production images (its ref,
    returned), a task on it scored by ``metric``, both models of that task trained on it, and
    ``champ`` on slot ``ward``."""
    npz = tmp_path / "ward.npz"
    parts = {
        s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 20), ("test", 60)))
    }
    np.savez(
        npz,
        **{f"{s}_images": x for s, (x, _) in parts.items()},
        **{f"{s}_labels": y for s, (_, y) in parts.items()},
    )
    base = ingest(workspace, reg, "ward", npz, class_names=CLASSES, task_type="binary")
    x, y = _images(200, 7)
    new = NewImages(x, y, [f"{i:032x}" for i in range(200)])
    data = harvest_version(workspace, reg, find_version(reg, base.ref), "ward", new, {}).ref
    vid = find_version(reg, data).id
    task = add_task(reg, "ward-task", data, metric)
    # ranker: f <= 1 and a bias of -2, so its class-1 logit is always negative.
    for name, net in (
        ("ranker", readout_net(0, 1.0, -2.0)),
        ("guesser", readout_net(1, 4.0, -1.3)),
    ):
        register_small_cnn(reg, tmp_path, name, net, vid, "binary", CLASSES, task_id=task.id)
    put_on_slot(reg, workspace, "ward", champ, kind="initial")
    return data


def test_an_auc_task_refuses_a_challenger_worse_by_auc_though_better_by_accuracy(
    tmp_path: Path, workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    data = _setup(tmp_path, workspace, reg, "ranker", "auc")
    out = CliRunner().invoke(app, ["deploy", "promote", "ward", "guesser", "--data", data])
    assert out.exit_code == 1, out.output  # refused: the slot keeps its champion
    text = " ".join(out.output.split())
    assert "paired bootstrap" in text and "auc 1.000 → 0.8" in text, text
    assert champion(reg, "ward").model == "ranker"  # type: ignore[union-attr]
    ev = gate_decisions(reg, "ward")[-1].evidence
    assert ev["metric"] == "auc" and ev["test"] == "paired bootstrap (auc)"
    assert "ward-task" in ev["metric_from"] and not ev["noninferior"] and not ev["superior"]
    prod = ev["production"]
    assert prod["champion_value"] == 1.0 and prod["challenger_value"] < 0.9
    assert ev["lower_bound"] < -0.05 and ev["p_value"] > 0.5

    # On accuracy (what the gate compared before, whatever the task's metric) it passes.
    gate, entry = promote_with_gate(reg, workspace, "ward", "guesser", data_ref=data, metric="acc")
    assert gate is not None and gate.result.passed and gate.result.test == "McNemar"
    assert entry is not None and gate_decisions(reg, "ward")[-1].evidence["metric"] == "acc"
    history = CliRunner().invoke(app, ["deploy", "history", "ward"])
    assert "paired bootstrap (auc)" in history.output and "McNemar" in history.output


def test_an_auc_task_promotes_a_challenger_better_by_auc_though_worse_by_accuracy(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    data = _setup(tmp_path, workspace, reg, "guesser", "auc")
    gate, entry = promote_with_gate(reg, workspace, "ward", "ranker", data_ref=data)
    assert gate is not None and gate.result.passed, gate.result.reason if gate else None
    assert gate.result.metric == "auc" and gate.result.p_value < 0.01
    assert entry is not None and entry.model == "ranker"


def test_tasks_of_different_metrics_are_refused_unless_one_is_chosen(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """Also a task whose metric the gate cannot compare (a record written by another version
    or edited by hand): refused in one line naming the task, the model and --metric (it was
    "metric 'balanced_acc' is not known", naming neither); --metric still gates."""
    data = _setup(tmp_path, workspace, reg, "ranker", "auc")
    other = add_task(reg, "ward-f1", data, "f1_macro")
    net = readout_net(1, 4.0, -1.3)
    vid = find_version(reg, data).id
    register_small_cnn(reg, tmp_path, "f1-model", net, vid, "binary", CLASSES, task_id=other.id)
    with pytest.raises(InputError, match=r"scored by different metrics.*pass --metric"):
        promote_with_gate(reg, workspace, "ward", "f1-model", data_ref=data)
    assert gate_decisions(reg, "ward") == []
    gate, _ = promote_with_gate(reg, workspace, "ward", "f1-model", data_ref=data, metric="auc")
    assert gate is not None and gate.result.test == "paired bootstrap (auc)"
    with pytest.raises(InputError, match="metric 'aucc' is not known"):
        args = ["deploy", "promote", "ward", "f1-model", "--metric", "aucc"]
        CliRunner().invoke(app, args, catch_exceptions=False)
    decided = len(gate_decisions(reg, "ward"))
    with reg.session() as s:
        s.execute(update(Task).where(Task.name == "ward-task").values(metric="balanced_acc"))
    want = r"model guesser's task ward-task is scored by 'balanced_acc'.*pass --metric"
    with pytest.raises(InputError, match=want):
        promote_with_gate(reg, workspace, "ward", "guesser", data_ref=data)
    assert len(gate_decisions(reg, "ward")) == decided
    gate, _ = promote_with_gate(reg, workspace, "ward", "guesser", data_ref=data, metric="auc")
    assert gate is not None and gate.result.metric == "auc"


def test_models_without_a_task_record_are_gated_on_the_metric_they_are_monitored_by(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """A model with no task record whose card names its task's AUC (exported when it had one)
    was monitored on AUC (the monitor read the card) but gated on accuracy ("neither model
    names a task"): the guesser, far worse by AUC, was promoted over the ranker. One rule
    decides for both now (its card's metric, with a note), so the gate compares AUC."""
    data = _setup(tmp_path, workspace, reg, "ranker", "auc")
    with reg.session() as s:
        for model in s.scalars(select(Model)):
            card = {**model.card, "task": {**model.card.get("task", {}), "metric": "auc"}}
            s.execute(update(Model).where(Model.id == model.id).values(task_id=None, card=card))
    out = CliRunner().invoke(app, ["deploy", "promote", "ward", "guesser", "--data", data])
    assert out.exit_code == 1, out.output  # refused on AUC: the slot keeps its champion
    text = " ".join(out.output.split())
    assert "paired bootstrap" in text and "auc 1.000 → 0.8" in text, text
    said = (
        "warning: model guesser has no task record: auc, the metric the registry's card of "
        "model guesser names, is tested by the monitor and compared by the"
    )
    assert said in text, text
    ev = gate_decisions(reg, "ward")[-1].evidence
    assert ev["metric"] == "auc" and "no task record" in ev["metric_from"], ev["metric_from"]
    champ = resolve_model(reg, "ranker")  # what the monitor tests the champion by
    assert model_metric("ranker", champ.card, "card", model_task(reg, champ)).metric == "auc"


@pytest.mark.parametrize(
    ("task_type", "width"), [("multi-class", 4), ("binary", 2), ("ordinal", 3), ("multi-label", 5)]
)
def test_the_bootstrap_scores_each_metric_as_the_task_does(task_type: str, width: int) -> None:
    """With each image drawn once, or as often as a resample draws it, the gate's AUC and
    macro F1 are the task's (:func:`evaluate`), missing outputs and tied scores included."""
    rng = np.random.default_rng(width)
    n = 50
    logits = rng.normal(size=(n, width))
    logits[::6] = np.round(logits[::6])  # ties
    logits[3, 1] = np.nan  # a missing output
    if task_type == "multi-label":
        truth = (rng.random((n, width)) < 0.4).astype(np.int64)
    else:
        truth = rng.integers(0, width, (n, 1))
    probs = probabilities(logits, task_type)
    drawn = rng.integers(0, 3, n)
    copies = np.repeat(np.arange(n), drawn)
    for metric in ("auc", "f1_macro"):
        once = metric_of(metric, task_type, truth, probs, np.ones((1, n)))[0]
        assert once == pytest.approx(evaluate(task_type, truth, probs)[metric])
        resampled = metric_of(metric, task_type, truth, probs, drawn[None, :])[0]
        want = evaluate(task_type, truth[copies], probs[copies])[metric]
        assert resampled == pytest.approx(want)


def test_the_bootstrap_is_not_run_on_too_few_images_or_an_undefined_auc() -> None:
    truth = np.zeros((30, 1), np.int64)  # one class: AUC undefined
    logits = np.random.default_rng(0).normal(size=(30, 2))
    got = paired_bootstrap("auc", "binary", truth, logits, logits + 1, 0.05)
    assert got.resamples == 0 and got.p_value == 1.0 and not got.tested
    few = paired_bootstrap("f1_macro", "binary", truth[:5], logits[:5], logits[:5], 0.05)
    assert not few.tested and few.lower_bound == float("-inf")
    same = paired_bootstrap("f1_macro", "binary", truth, logits, logits, 0.05)
    assert same.tested and same.p_value == 1.0 and same.lower_bound == 0.0


def test_one_positive_image_ranked_higher_does_not_show_a_better_auc() -> None:
    """Resamples without the one positive image (AUC undefined on them) were left out, so every
    other held it, and a challenger that ranked that one image top passed as better with
    p < 0.001: nothing beyond one image was shown. They count as not better now."""
    rng = np.random.default_rng(0)
    n = 30
    truth = np.zeros((n, 1), np.int64)
    truth[0] = 1
    champ, chal = rng.normal(size=(2, n))
    champ[0] = np.median(champ[1:])  # the positive in the middle of the negatives
    chal[0] = 5.0  # above every negative
    two = [np.stack([np.zeros(n), s], axis=1) for s in (champ, chal)]
    got = paired_bootstrap("auc", "binary", truth, *two, 0.05)
    assert (got.champion_value, got.challenger_value) == (0.5, 1.0)
    assert got.tested and got.undefined_resamples > 0
    assert got.p_value >= 0.05 and got.lower_bound == float("-inf")
    # with enough positives the same kind of gain is shown
    truth[:12] = 1
    chal[:12] = 5.0
    two = [np.stack([np.zeros(n), s], axis=1) for s in (champ, chal)]
    assert paired_bootstrap("auc", "binary", truth, *two, 0.05).p_value < 0.05


@pytest.mark.parametrize(
    ("metric", "task_type", "width"),
    [("auc", "binary", 2), ("f1_macro", "multi-class", 3), ("auc", "multi-label", 3)],
)
def test_the_bootstrap_decides_the_same_for_the_same_images_in_any_order(
    metric: str, task_type: str, width: int
) -> None:
    """Resamples drew images by position with a fixed seed: the same images and outputs in
    another order (a harvest read in another file order, the version added again) gave
    another bound and p-value, so a challenger near the line passed or failed by the order."""
    rng = np.random.default_rng(3)
    n = 80
    if task_type == "multi-label":
        truth = (rng.random((n, width)) < 0.4).astype(np.int64)
    else:
        truth = rng.integers(0, width, (n, 1))
    signal = np.eye(width)[truth[:, 0]] if task_type != "multi-label" else truth * 2.0 - 1
    champ = signal + rng.normal(size=(n, width)) * 1.5
    chal = signal + rng.normal(size=(n, width)) * 1.2
    champ[7] = np.nan  # a missing answer sorts too
    first = paired_bootstrap(metric, task_type, truth, champ, chal, 0.05)
    for seed in range(3):
        shuffle = np.random.default_rng(seed).permutation(n)
        again = paired_bootstrap(
            metric, task_type, truth[shuffle], champ[shuffle], chal[shuffle], 0.05
        )
        assert (again.p_value, again.lower_bound) == (first.p_value, first.lower_bound)
        assert again.difference == pytest.approx(first.difference)


def test_a_model_that_cannot_be_scored_on_the_gate_s_data_is_refused(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """A multi-label model on single-label data was scored by a broadcast comparison of its
    (n, 2) answers with the (n, 1) labels, and the gate decided on that."""
    data = _setup(tmp_path, workspace, reg, "ranker", "acc")
    vid = find_version(reg, data).id
    net = readout_net(1, 4.0, -1.3)
    register_small_cnn(reg, tmp_path, "labeller", net, vid, "multi-label", CLASSES)
    with pytest.raises(InputError, match="is a multi-label model but the gate's data is binary"):
        run_gate(reg, "ward", "labeller", data_ref=data, metric="acc")
    assert gate_decisions(reg, "ward") == []
    # A promotion refuses it earlier still: the slot's servers could not swap to it.
    with pytest.raises(InputError, match="its task type is multi-label, the served model's binary"):
        promote_with_gate(reg, workspace, "ward", "labeller", data_ref=data, metric="acc")
    assert gate_decisions(reg, "ward") == []
