"""Recorded recommendations scored against the runs on their task since (``pomlia strategy
outcomes``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.registry import Recommendation, Registry, Run, Task
from pomlia_hpc.strategy.outcomes import outcomes
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_process
from tests.fixtures.factories import tiny_task

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _run(task_id: int, arch: str, val: float, test: float, minutes: int, **kw: Any) -> Run:
    return Run(
        task_id=task_id,
        study="s",
        config={"arch": arch, "lr": 0.01},
        metrics={"objective": val, "val": {"acc": val}, "test": {"acc": test}},
        status=kw.pop("status", "ok"),
        created_at=NOW + timedelta(minutes=minutes),
    )


def _answer(reg: Registry, task: str) -> int:
    """A recorded answer: ResNet-18 first (it runs here), a ViT second (it cannot), a third
    pick beyond k = 2, and the small CNN at lr 0.01 (the runs' own) as the AutoML warm start."""
    picks = [
        {"rank": 1, "strategy": {"arch": "resnet18", "img_size": 28}, "expected": 0.9,
         "automl": {"arch": "resnet18", "lr": 0.001}},
        {"rank": 2, "strategy": {"arch": "ViT-B/16", "img_size": 224}, "expected": 0.89,
         "automl": None, "note": "architecture 'ViT-B/16' is not in the AutoML space"},
        {"rank": 3, "strategy": {"arch": "small_cnn", "img_size": 28}, "expected": 0.8,
         "automl": {"arch": "small_cnn"}},
    ]  # fmt: skip
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        row = Recommendation(
            task_id=tid,
            task=task,
            learner="kernel-regret",
            learner_version="2",
            inputs={"metric": "acc", "k": 2},
            output={"strategies": picks, "initial": [{"arch": "small_cnn", "lr": 0.01}]},
            created_at=NOW,
        )
        s.add(row)
        s.flush()
        assert tid is not None
        s.add_all(
            [
                _run(tid, "resnet18", 0.99, 0.99, -5),  # before the answer: not counted
                _run(tid, "small_cnn", 0.90, 0.88, 5),  # the best since (by validation)
                _run(tid, "small_cnn", 0.80, 0.95, 6),  # a better test, a worse validation
                _run(tid, "resnet18", 0.85, 0.86, 7),
                _run(tid, "resnet18", 0.95, 0.99, 8, status="crashed"),
            ]
        )
        return int(row.id)


def test_an_answer_is_scored_against_the_runs_since(workspace: Workspace, reg: Registry) -> None:
    task = tiny_task(workspace, reg, "new")
    rid = _answer(reg, task)
    (o,) = outcomes(reg, task)
    assert (o.recommendation_id, o.n_runs, o.best_value) == (rid, 3, 0.88)
    assert o.best_strategy == dict(arch="small_cnn", init="scratch", mode="full", extra_data="none")
    first, vit = o.picks  # k = 2: the third pick is not scored
    assert (first.n_runs, first.value, first.regret) == (1, 0.86, pytest.approx(2.0))
    assert (vit.n_runs, vit.value, vit.regret) == (0, None, None)  # cannot run here
    assert o.top1_regret == pytest.approx(2.0) and o.topk_regret == pytest.approx(2.0)
    (warm,) = o.warm
    assert (warm.n_runs, warm.regret, o.warm_regret) == (2, 0.0, 0.0)

    res = CliRunner().invoke(app, ["strategy", "outcomes", "--task", task, "--json"])
    assert res.exit_code == 0, res.output
    (data,) = json.loads(res.output)
    assert data["top1_regret"] == pytest.approx(2.0) and data["picks"][1]["regret"] is None
    res = CliRunner().invoke(app, ["strategy", "outcomes"])
    assert res.exit_code == 0 and "2.00" in res.output and "0.00" in res.output, res.output


@pytest.mark.usefixtures("wide_console")  # "no picks" in one cell line: whole words wrap
def test_an_answer_without_runs_since_is_not_run_and_bad_input_is_one_error(
    workspace: Workspace, reg: Registry
) -> None:
    task = tiny_task(workspace, reg, "quiet")
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        pick = {"rank": 1, "strategy": {"arch": "small_cnn"}}
        output = {"strategies": [pick]}
        s.add(Recommendation(task_id=tid, task=task, inputs={"metric": "acc"}, output=output))
    (o,) = outcomes(reg)
    assert (o.n_runs, o.best_value, o.top1_regret, o.warm, o.warm_regret) == (
        0,
        None,
        None,
        [],
        None,
    )
    res = CliRunner().invoke(app, ["strategy", "outcomes"])
    assert res.exit_code == 0 and "not run" in res.output and "no picks" in res.output
    # No best since: the missing-value marker, not a blank cell.
    (row,) = [
        line for line in res.output.splitlines() if line.startswith("│") and "not run" in line
    ]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[3:5] == ["0", "-"], cells
    with pytest.raises(NotFoundError, match="task 'nosuch' not found"):
        outcomes(reg, "nosuch")
    with pytest.raises(InputError, match="--limit 0"):
        outcomes(reg, limit=0)


def test_the_warm_regret_scores_the_warm_start_configuration_not_its_architecture(
    workspace: Workspace, reg: Registry
) -> None:
    """A ``--from-recommendation --recommend-k 1`` study: its first run trained the warm-start
    configuration (test 0.500), the next one SMAC's own proposal of the same architecture
    (test 0.667, better on validation too). The warm regret is the warm configuration's."""
    task = tiny_task(workspace, reg, "warmth")
    warm = {"arch": "mobilenet_v3_small", "lr": 0.0006210398231, "optimizer": "adamw"}
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        assert tid is not None
        s.add(
            Recommendation(
                task_id=tid,
                task=task,
                inputs={"metric": "acc", "k": 1},
                output={"strategies": [], "initial": [warm]},
                created_at=NOW,
            )
        )
        own = _run(tid, "mobilenet_v3_small", 0.7, 0.667, 2)
        own.config = {"arch": "mobilenet_v3_small", "lr": 0.0186848325935, "optimizer": "sgd"}
        first = _run(tid, "mobilenet_v3_small", 0.5, 0.5, 1)
        # as recorded: the search's bookkeeping beside the values, the lr's last digits rounded
        first.config = {**warm, "lr": 0.00062103982, "origin": "Initial design: warm start"}
        s.add_all([first, own])
        s.flush()
        first_id, own_id = first.id, own.id
    (o,) = outcomes(reg, task)
    assert o.best_run_id == own_id
    (w,) = o.warm
    assert (w.run_id, w.n_runs, w.value) == (first_id, 1, 0.5)
    assert w.regret == pytest.approx(16.7) and o.warm_regret == pytest.approx(16.7)


def test_outcomes_json_gives_times_to_the_second_as_every_list(
    workspace: Workspace, reg: Registry
) -> None:
    """`strategy outcomes --json` wrote its answers' times with microseconds
    (`2026-12-06T04:00:27.605601+00:00`), unlike every other list's."""
    task = tiny_task(workspace, reg, "timed")
    answer = _answer(reg, task)
    with reg.session() as s:
        row = s.get(Recommendation, answer)
        assert row is not None
        row.created_at = NOW.replace(microsecond=605601)
        s.commit()
    proc = pomlia_process("--home", str(workspace.home), "strategy", "outcomes", "--json")
    assert proc.returncode == 0, proc.stderr
    (data,) = json.loads(proc.stdout)
    assert data["created_at"] == "2026-12-03T12:00:00+00:00", data["created_at"]


def test_a_run_too_short_for_the_knowledge_base_is_not_scored(
    workspace: Workspace, reg: Registry
) -> None:
    """A 1-epoch test run since the answer, best by validation, became the "best since" and
    every pick's regret was taken against it, while the knowledge base ignores such a run (a
    third of the full budget, or 9 epochs, at least): outcomes count runs by that rule."""
    task = tiny_task(workspace, reg, "shortrun")
    rid = _answer(reg, task)
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        assert tid is not None
        short = _run(tid, "small_cnn", 0.99, 0.99, 9)
        short.metrics = {**short.metrics, "epochs": 1}
        full = _run(tid, "resnet18", 0.70, 0.70, 10)
        full.metrics = {**full.metrics, "epochs": 9}  # just counted (min(100 / 3, 9))
        s.add_all([short, full])
    (o,) = outcomes(reg, task)
    # The runs of the first test (3 counted, no epochs recorded), the 9-epoch run; not the
    # 1-epoch one, whose 0.99 would have been the best since.
    assert (o.recommendation_id, o.n_runs, o.n_short, o.best_value) == (rid, 4, 1, 0.88)
    (warm,) = o.warm
    assert warm.n_runs == 2
    res = CliRunner().invoke(app, ["strategy", "outcomes", "--task", task])
    assert res.exit_code == 0 and "too short" in res.output, res.output
