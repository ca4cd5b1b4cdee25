"""What counts as a strategy's evidence in ``pomlia recommend`` and ``pomlia strategy eval``:
runs far below the budget, start-up in the cost, one spelling per architecture, 3D-only
strategies for a 2D task, the Pareto front, strategies without evidence, the effective number
of data sets behind an expected value."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry, Run, Task
from pomlia_hpc.strategy import kb, learner
from pomlia_hpc.strategy.evaluate import loo
from pomlia_hpc.strategy.recommend import recommend
from pomlia_hpc.strategy.service import evaluate_source
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_task

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"
META = DATA / "medmnist_meta_features.csv"


def _run(
    reg: Registry, task: str, arch: str, test: float, epochs: int, wall_s: float, epoch_s: float
) -> None:
    """A successful run of ``arch`` trained to ``epochs`` epochs, as a study records it:
    ``wall_s`` seconds in all, ``epoch_s`` of them per epoch (the rest: start-up)."""
    history = [{"epoch": e + 1.0, "train_loss": 1.0, "seconds": epoch_s} for e in range(epochs)]
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        s.add(
            Run(
                task_id=tid,
                study="s",
                config={"arch": arch, "lr": 0.001},
                budget=float(epochs),
                metrics={
                    "objective": test,
                    "val": {"acc": test},
                    "test": {"acc": test},
                    "epochs": epochs,
                    "start_epoch": 0,
                    "epochs_run": epochs,
                    "history": history,
                },
                cost_s=wall_s,
                status="ok",
            )
        )


def test_runs_far_below_the_budget_are_no_value_and_start_up_is_paid_once(
    workspace: Workspace, reg: Registry
) -> None:
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=META)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    tiny_task(workspace, reg, "derm", "dermamnist", "acc", seed=1)
    # 1-epoch test runs on blood: 3.6 s start-up and 0.2 s per epoch each
    _run(reg, "blood", "small_cnn", 0.176, 1, 3.8, 0.2)
    _run(reg, "blood", "small_cnn", 0.150, 1, 3.8, 0.2)
    # derm: a 1-epoch and a 20-epoch resnet18 run, 2 s start-up, 0.2 s per epoch
    _run(reg, "derm", "resnet18", 0.30, 1, 2.2, 0.2)
    _run(reg, "derm", "resnet18", 0.70, 20, 6.0, 0.2)
    base = kb.load(reg, "acc")
    # blood's runs reached 1 of 60 epochs: no value, and blood is no known data set
    assert "blood" not in base.datasets()
    [short] = [v for (t, _), v in base.short.items() if t == "blood"]
    assert short["n"] == 2 and short["value"] == 0.176 and short["full_epochs"] == 60
    [derm] = [o for o in base.observations if o.dataset == "derm"]
    # the value is the 20-epoch run's; the cost is start-up once plus 60 x 0.2 s (seconds per
    # epoch with start-up folded in would say (2.2 + 6) / 21 x 60 = 23.4 s)
    assert derm.value == 0.70 and derm.strategy["arch"] == "resnet18"
    assert derm.cost_s is not None and abs(derm.cost_s - 14.0) < 1e-6
    answer = recommend(reg, "blood", k=200, record=False)
    assert not any(s["own_runs"] for s in answer["similar"])
    # small_cnn has no run at the budget anywhere: not ranked on its 1-epoch value, but named
    assert not any(r["strategy"]["arch"] == "small_cnn" for r in answer["strategies"])
    [short_run] = answer["short_runs"]
    assert short_run["strategy"]["arch"] == "small_cnn" and short_run["value"] == 0.176
    res = CliRunner().invoke(app, ["recommend", "blood", "--k", "3"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "reached at most 1 of 60 epochs" in text and "not counted (best test 0.176" in text
    # the derm cost is scaled by epochs without the start-up: 2 s + 0.2 s x 60 here too
    [r18] = [
        r
        for r in answer["strategies"]
        if r["strategy"] == {**r["strategy"], "arch": "resnet18", "init": "scratch", "img_size": 28}
    ]
    assert r18["cost"]["basis"] == "measured" and r18["cost"]["wall_s"] < 20
    # the evaluation on the registry's runs says why blood is not among its data sets
    with pytest.raises(InputError, match="runs of blood reached less than a third"):
        evaluate_source(reg, "registry", "acc")


def test_one_architecture_one_strategy_and_costs_of_what_runs(
    workspace: Workspace, reg: Registry
) -> None:
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=META)
    kb.import_table(reg, DATA / "medmnist_v2_yang2023.csv", "v2", meta_path=META)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    tiny_task(workspace, reg, "derm", "dermamnist", "acc", seed=1)
    _run(reg, "derm", "resnet18", 0.70, 60, 14.0, 0.2)
    answer = recommend(reg, "blood", k=1000, record=False)
    ranked = answer["strategies"]
    archs = {r["strategy"]["arch"] for r in ranked}
    # the published ResNet-18 and the runs' resnet18 are one architecture
    assert "resnet18" in archs and "ResNet-18" not in archs
    [scratch28] = [
        r
        for r in ranked
        if r["strategy"]["arch"] == "resnet18"
        and r["strategy"]["init"] == "scratch"
        and r["strategy"]["img_size"] == 28
    ]
    assert {e["dataset"] for e in scratch28["evidence"]} >= {"derm"}
    # a published pretrained 224-px ResNet-18 runs here from scratch at 28 px: it costs what
    # that run costs, and its expected value says whose it is
    [pre224] = [
        r
        for r in ranked
        if r["strategy"]["arch"] == "resnet18"
        and r["strategy"]["init"] == "pretrained"
        and r["strategy"]["img_size"] == 224
        and r["strategy"]["mode"] == "full"
    ]
    assert pre224["runs_as"]["init"] == "scratch" and pre224["runs_as"]["img_size"] == 28
    assert pre224["cost"] == scratch28["cost"]
    assert pre224["expected_of_published"] and "of the published strategy" in pre224["note"]
    # --max-cost applies to the run here: the 224-px strategy fits whatever its published cost
    limited = recommend(reg, "blood", k=1000, record=False, max_cost_s=scratch28["cost"]["wall_s"])
    assert any(r["strategy"] == pre224["strategy"] for r in limited["strategies"])
    # 3D-volume strategies are no candidates for a 2D task, on the ranking or the front
    assert not any("3D" in a or "ACS" in a or "2.5D" in a for a in archs)
    front = answer["pareto"]
    assert not any("3D" in p["strategy"]["arch"] or "ACS" in p["strategy"]["arch"] for p in front)
    # the front is on the ranking's expected regret, among strategies with evidence weight:
    # the first-ranked of those ends it
    by_key = {json.dumps(r["strategy"], sort_keys=True): r for r in ranked}
    for p in front:
        assert by_key[json.dumps(p["strategy"], sort_keys=True)]["evidence_weight"] > 0.01
    backed = [r for r in ranked if r["evidence_weight"] > 0.01]
    assert front[-1]["strategy"] == backed[0]["strategy"]


def test_one_data_set_carrying_the_weight_shows_no_spread(
    workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=META)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    tiny_task(workspace, reg, "derm", "dermamnist", "acc", seed=1)
    _run(reg, "derm", "small_cnn", 0.70, 60, 14.0, 0.2)
    answer = recommend(reg, "blood", k=1000, record=False)
    [cnn] = [r for r in answer["strategies"] if r["strategy"]["arch"] == "small_cnn"]
    # measured on derm alone: one data set, no spread (not ± 0.000)
    assert cnn["n_eff"] == 1.0 and cnn["spread"] is None
    assert all(r["n_eff"] >= 1.0 for r in answer["strategies"])
    res = CliRunner().invoke(app, ["recommend", "blood", "--k", "120"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "± 0.000" not in text and "(n=1.0)" in text


def _matrix(values: np.ndarray) -> learner.Matrix:
    n, k = values.shape
    nan = np.full(values.shape, np.nan)
    return learner.Matrix(
        [f"d{i}" for i in range(n)],
        [f"{j:04d}" for j in range(k)],
        [{"arch": f"a{j}", "init": "scratch", "mode": "full", "img_size": 28} for j in range(k)],
        values,
        np.zeros(values.shape),
        nan,
        nan,
        np.zeros((n, len(learner.FEATURES))),
    )


def test_a_strategy_without_evidence_is_ranked_last_and_eval_warns_of_nothing() -> None:
    # strategy 0 was tried only on d0; elsewhere it would get the median regret (1 point),
    # as good as strategy 3's mean, and come first on the tie
    nan = np.nan
    values = np.array(
        [
            [0.10, 0.90, 0.60, 0.89],
            [nan, 0.90, 0.60, 0.89],
            [nan, 0.60, 0.90, 0.89],
            [nan, 0.90, 0.60, 0.89],
            [nan, 0.60, 0.90, 0.89],
        ]
    )
    m = _matrix(values)
    fitted = learner.KernelRegret().fit(m.subset([1, 2, 3, 4]))
    ranking = fitted.rank(m.features[0])
    assert list(ranking.supported) == [False, True, True, True]
    assert ranking.order[-1] == 0 and ranking.order[0] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" and the like fail the test
        result = loo(m, k=1)
    # held out d0: the learner's pick is strategy 3 (regret 1 point), not strategy 0 (80)
    assert abs(result.methods["kernel-regret"].top1[0] - 1.0) < 1e-6
    assert abs(result.methods["best_mean"].top1[0] - 1.0) < 1e-6


def test_a_study_run_at_nine_epochs_counts_whatever_the_full_budget(
    workspace: Workspace, reg: Registry
) -> None:
    """A knowledge base of deliberately short studies (9 epochs, the smallest full budget
    AutoML gives any task) is evidence even where the task's full budget is 60 epochs (a
    third of it is 20): only runs below both are kept apart."""
    tiny_task(workspace, reg, "derm", "dermamnist", "acc", seed=1)
    _run(reg, "derm", "resnet18", 0.60, 9, 4.0, 0.2)
    _run(reg, "derm", "small_cnn", 0.50, 8, 4.0, 0.2)
    base = kb.load(reg, "acc")
    [obs] = [o for o in base.observations if o.dataset == "derm"]
    assert obs.value == 0.60 and obs.strategy["arch"] == "resnet18"
    [short] = [v for (t, _), v in base.short.items() if t == "derm"]
    assert short["epochs"] == 8 and short["counted_epochs"] == 9
