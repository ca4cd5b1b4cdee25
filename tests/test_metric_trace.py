"""One trial's metric, traced through every place it is shown or used: the study's objective,
`runs list`, the best model's card, the report's Studies page, the recommender's knowledge
base, and the same metric recomputed from the registered model as the gate and the monitoring
reference compute it. Each must be the same number on the same scale (a fraction, higher
better), of the task's own metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.metrics import objective_cost
from pomlia_hpc.automl.study import run_study
from pomlia_hpc.cli import app
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.gate import correct
from pomlia_hpc.models.checkpoint import load_classifier, save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Model, Registry, Task
from pomlia_hpc.report import build_report
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.serve.reference import read_reference
from pomlia_hpc.strategy import kb
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.mark.slow
def test_one_runs_metric_is_the_same_number_everywhere(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", metric="f1_macro", sizes=(24, 12, 12))
    spec = tiny_study(reg, workspace, "blood", "trace", n_trials=1)
    result = run_study(reg, workspace, spec, poll_s=0.2)
    (run,) = records.study_runs(reg, "trace")
    val, test = run.metrics["val"], run.metrics["test"]
    assert run.status == "ok" and result.best_run_id == run.id
    for split in (val, test):
        assert all(0.0 <= split[k] <= 1.0 for k in ("acc", "auc", "f1_macro") if split[k])
    # the study: its objective is the validation value of the task's metric, minimised as 1 - it
    assert run.metrics["objective"] == val["f1_macro"]
    assert objective_cost(val, "f1_macro") == pytest.approx(1.0 - val["f1_macro"])

    # `runs list --json` and its table
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    listed = CliRunner().invoke(app, ["runs", "list", "--study", "trace", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["test"]["f1_macro"] == test["f1_macro"] and row["objective"] == val["f1_macro"]
    table = CliRunner().invoke(app, ["runs", "list", "--study", "trace"])
    assert f"f1_macro {test['f1_macro']:.3f}" in " ".join(table.output.split())

    # the best model's card
    with reg.session() as s:
        model = s.scalar(select(Model).where(Model.name == "trace-best"))
        assert model is not None
        s.expunge(model)
    assert model.card["metrics"]["test"]["f1_macro"] == test["f1_macro"]
    assert model.card["metrics"]["val"]["acc"] == val["acc"]

    # the report's Studies page: val and test of the task's metric, 3 decimals
    page = (build_report(reg, workspace, tmp_path / "report").folder / "studies.html").read_text()
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", page)]

    # a value with its image count where the run recorded one: "0.042 (n=12)"
    def shown(text: str) -> bool:
        return any(c == text or c.startswith(f"{text} (n=") for c in cells)

    assert shown(f"{val['f1_macro']:.3f}") and shown(f"{test['f1_macro']:.3f}")
    assert shown(f"f1_macro {val['f1_macro']:.3f}")  # the overview's best validation metric

    # the knowledge base: the run's test value of the metric (a 1-epoch run: kept apart, as
    # short of the task's budget, but the same value)
    base = kb.load(reg, "f1_macro")
    (short,) = [v for (task, _), v in base.short.items() if task == "blood"]
    assert short["value"] == test["f1_macro"]

    # recomputed from the registered model: the gate's per-image correctness, and the task
    # metrics of its probabilities, on the test split. Recomputed at another batch size than
    # the trial's evaluation, a float32 logit can move by a few ulps: an image whose two top
    # logits are that close (a 1-epoch model is near uniform) may flip, so such images are
    # the tolerance, not a fixed one (1 image of 12 is 0.083).
    store = open_store(find_version(reg, "blood_data").store_path)
    x, y = store.read_split("test")
    y = y.reshape(len(y), -1).astype(np.int64)
    right = int(correct(model, x, y).sum())
    assert abs(right - test["acc"] * len(y)) <= _near_ties(model, x) + 1e-6
    # the monitoring reference written at export, from the validation split
    exported = export_model(reg, workspace, "trace-best")
    assert exported.reference is not None
    ref = read_reference(exported.reference)
    xv, _ = store.read_split("val")
    assert ref.split == "val"
    assert abs(ref.accuracy - val["acc"]) * len(xv) <= _near_ties(model, xv) + 1e-6


def _near_ties(model: Model, images: np.ndarray, tol: float = 1e-4) -> int:
    """How many of uint8 NHWC ``images`` ``model`` gives two top logits within ``tol`` of
    each other (scored in one batch): the images whose predicted class may differ between
    two evaluations at other batch sizes."""
    import torch

    loaded = load_classifier(model.path)
    mean = torch.tensor(loaded.meta.pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.meta.pre.std).view(1, -1, 1, 1)
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        logits = loaded.model((batch - mean) / std).numpy()
    top = np.sort(logits, axis=1)
    return int((top[:, -1] - top[:, -2] < tol).sum())


def test_a_model_registered_by_hand_shows_its_tasks_metric(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model register NAME CKPT --task-id T` (what a study says to run when its best model's
    name is taken) gave a model whose `model list` metric was empty: the list read the metric
    from the lineage a study writes, not from the model's task."""
    tiny_task(workspace, reg, "blood", metric="auc", sizes=(16, 8, 8))
    with reg.session() as s:
        task_id = s.scalar(select(Task.id).where(Task.name == "blood"))
    net = build_classifier("small_cnn", 8, 3, image_size=28)
    ckpt = tmp_path / "by-hand.pt"
    metrics = {"val": {"acc": 0.5, "auc": 0.8125}, "test": {"acc": 0.375, "auc": 0.71875, "n": 8}}
    labels = [f"c{i}" for i in range(8)]
    save_classifier(
        ckpt,
        net,
        arch="small_cnn",
        num_classes=8,
        in_channels=3,
        image_size=28,
        task_type="multi-class",
        label_names=labels,
        metrics=metrics,
    )
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    cli = CliRunner()
    done = cli.invoke(app, ["model", "register", "by-hand", str(ckpt), "--task-id", str(task_id)])
    assert done.exit_code == 0, done.output
    listed = cli.invoke(app, ["model", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["metric"] == "auc" and row["test_score"] == 0.71875 and row["test_n"] == 8
    table = cli.invoke(app, ["model", "list"], env={"COLUMNS": "200"})
    # with the images it was computed on, as `runs list` shows a run's
    assert "test auc 0.719 (n=8)" in table.output


def test_a_metric_name_is_read_in_any_case_everywhere(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`strategy import` read a table's ``ACC`` (the published tables' spelling) as ``acc``,
    while `task add --metric ACC` and `strategy eval --metric ACC` refused it."""
    table = tmp_path / "upper.csv"
    table.write_text(
        "dataset,arch,init,mode,img_size,metric,value\n"
        "bloodmnist,ResNet-18,scratch,full,28,ACC,0.9\n"
        "pathmnist,ResNet-18,scratch,full,28,Acc,0.8\n"
        "dermamnist,ResNet-18,scratch,full,28,acc,0.7\n"
        "bloodmnist,ResNet-50,scratch,full,28,ACC,0.85\n"
        "pathmnist,ResNet-50,scratch,full,28,ACC,0.9\n"
        "dermamnist,ResNet-50,scratch,full,28,ACC,0.75\n"
    )
    meta = kb.SHIPPED_DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, table, "upper", meta_path=meta)
    assert kb.load(reg, "ACC", ["upper"]).metric == "acc"
    assert len(kb.load(reg, " Acc ", ["upper"]).observations) == 6
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    cli = CliRunner()
    evaluated = cli.invoke(
        app, ["strategy", "eval", "--source", "upper", "--metric", "ACC", "--json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["metric"] == "acc"
    tiny_task(workspace, reg, "blood", metric="F1_Macro", sizes=(16, 8, 8))
    with reg.session() as s:
        assert s.scalar(select(Task.metric).where(Task.name == "blood")) == "f1_macro"
    with pytest.raises(InputError, match=r"metric 'balanced' is not known: .*\(any case\)"):
        kb.load(reg, "balanced")
