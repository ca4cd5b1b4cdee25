"""``pomlia recommend``: JSON answer, recorded recommendation, warm-start file for AutoML."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from pomlia_hpc.automl.space import SpaceOptions, build_space, load_initial_configs
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.pipeline.stages_strategy import RECOMMEND
from pomlia_hpc.registry import KbResult, Model, Recommendation, Registry, Run, Task
from pomlia_hpc.strategy import kb
from pomlia_hpc.strategy.cost import COST_TIE_REL, COST_TIE_S, pareto_front
from pomlia_hpc.strategy.recommend import recommend
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import embedded_sets, row_task, tiny_task

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"


def _runs(reg: Registry, task: str) -> None:
    """Finished trials of ``task`` (one crashed), as a study driver records them."""
    hp = {"optimizer": "adamw", "batch_size": 64, "weight_decay": 1e-4, "augmentation": "flip"}
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        for i, (arch, val) in enumerate([("small_cnn", 0.8), ("resnet18", 0.9)]):
            s.add(
                Run(
                    task_id=tid,
                    study="s",
                    config={"arch": arch, "lr": 0.001 * (i + 1), **hp},
                    budget=3.0,
                    metrics={"objective": val, "val": {"acc": val}, "test": {"acc": val - 0.01}},
                    cost_s=10.0 * (i + 1),
                    status="ok",
                )
            )
        s.add(Run(task_id=tid, study="s", config={"arch": "mobilenet_v3_small"}, status="crashed"))


def _trials(
    reg: Registry, task: str, rows: list[tuple[str, float, float]], budget: float = 3.0
) -> None:
    """Successful trials of ``task``: (architecture, learning rate, validation ACC) each."""
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == task))
        for arch, lr, val in rows:
            s.add(
                Run(
                    task_id=tid,
                    study="s",
                    config={"arch": arch, "lr": lr, "optimizer": "adamw", "batch_size": 64},
                    budget=budget,
                    metrics={"objective": val, "val": {"acc": val}, "test": {"acc": val}},
                    cost_s=5.0,
                    status="ok",
                )
            )


def test_recommend_json_recorded_and_initial_file(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    tiny_task(workspace, reg, "derm", "dermamnist", "acc", seed=1)
    _runs(reg, "derm")
    out_file = tmp_path / "init.json"
    res = CliRunner().invoke(
        app, ["recommend", "blood", "--k", "3", "--json", "--write-initial", str(out_file)]
    )
    assert res.exit_code == 0, res.output
    answer = json.loads(res.output)
    assert answer["task"] == "blood" and len(answer["strategies"]) == 3
    first = answer["strategies"][0]
    assert {"strategy", "expected", "spread", "cost", "evidence"} <= set(first)
    assert first["cost"]["wall_s"] > 0 and first["evidence"]
    assert answer["pareto"] and answer["n_datasets"] == 13  # 12 published + the derm task
    # the registry's runs count, the crashed one as a failure of its strategy (not among the
    # top 3: all strategies are asked for), and no other strategy has a failure
    every = CliRunner().invoke(app, ["recommend", "blood", "--k", "1000", "--json"])
    rates = [(s["strategy"], s["failure_rate"]) for s in json.loads(every.output)["strategies"]]
    # the failure rate of the strategy's registry runs: the crashed one's 1 of 1; none (not
    # 0) for the published strategies, which recorded no failures
    ran = [(st["arch"], rate) for st, rate in rates if rate is not None]
    assert sorted(ran) == [("mobilenet_v3_small", 1.0), ("resnet18", 0.0), ("small_cnn", 0.0)]
    with reg.session() as s:
        row = s.get(Recommendation, answer["recommendation_id"])
        assert row is not None and row.task == "blood" and row.learner == "kernel-regret"
        assert row.output["strategies"][0]["strategy"] == first["strategy"]
        # every option it was asked with, so it can be reproduced and scored
        assert row.inputs["k"] == 3 and row.inputs["max_gpu_hours"] is None
        assert row.inputs["exclude_own_runs"] is False and row.inputs["archs"] is None
    # a published strategy at 224 px runs at the task's 28 px: its note says so
    everything = json.loads(every.output)["strategies"]
    at_224 = [s for s in everything if s["strategy"]["img_size"] == 224 and s["automl"]]
    assert at_224 and all("the task's 28 px, not 224 px" in s["note"] for s in at_224)
    configs = load_initial_configs(out_file, build_space(SpaceOptions()))
    assert 1 <= len(configs) <= 3
    assert {c["arch"] for c in configs} <= {"small_cnn", "resnet18", "mobilenet_v3_small"}
    # the derm runs' hyperparameters travel with their strategies
    assert any(c.get("lr") in (0.001, 0.002) for c in configs)


@pytest.mark.usefixtures("wide_console")  # the headers checked below stay on one line
def test_recommend_max_cost_and_bad_input(workspace: Workspace, reg: Registry) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", "blood", "--max-cost", "30.5", "--json"])
    assert res.exit_code == 0, res.output
    answer = json.loads(res.output)
    assert answer["strategies"]
    assert all(s["cost"]["wall_s"] <= 30.5 for s in answer["strategies"])
    # the tables name their units, and the Pareto front is a table, not one long sentence
    text = runner.invoke(app, ["recommend", "blood", "--k", "2"]).output
    for header in ("cost (s)", "GPU-hours", "evidence (data set, value)", "Pareto front"):
        assert header in text, text
    assert "± spread over the similar data sets" in " ".join(text.split())
    assert "(this task" not in text
    _trials(reg, "blood", [("small_cnn", 1e-3, 0.9)])  # runs of its own: its nearest data set
    text = " ".join(runner.invoke(app, ["recommend", "blood", "--k", "2"]).output.split())
    assert "similar (meta-features): blood (this task: its own runs) (1.00)" in text, text
    answer = json.loads(runner.invoke(app, ["recommend", "blood", "--json"]).output)
    assert [s["own_runs"] for s in answer["similar"]] == [True, False, False, False, False]
    # a task named like a published data set, without runs: the published rows are not its own
    tiny_task(workspace, reg, "bloodmnist", "bloodmnist", "acc", seed=1)
    answer = json.loads(runner.invoke(app, ["recommend", "bloodmnist", "--json"]).output)
    similar = {s["dataset"]: s["own_runs"] for s in answer["similar"]}
    assert similar.get("bloodmnist (published)") is False and not any(similar.values()), similar
    assert "(this task" not in runner.invoke(app, ["recommend", "bloodmnist", "--k", "2"]).output
    # once it has runs, its row and the published one stay apart: its values are not mixed
    # with the published ones, nor are the published meta-features replaced by its own
    _trials(reg, "bloodmnist", [("small_cnn", 1e-3, 0.5)])
    answer = json.loads(runner.invoke(app, ["recommend", "bloodmnist", "--json"]).output)
    similar = {s["dataset"]: s["own_runs"] for s in answer["similar"]}
    assert similar["bloodmnist"] is True and similar["bloodmnist (published)"] is False, similar
    table = kb.load(reg, "acc")
    published = [o for o in table.observations if o.dataset == "bloodmnist (published)"]
    assert len(published) == 120 and {o.source for o in published} == {"plus"}
    own = [o for o in table.observations if o.dataset == "bloodmnist"]
    assert [(o.source, o.value) for o in own] == [("registry", 0.5)]
    assert table.meta["bloodmnist (published)"]["n_train"] == 11959
    assert table.meta["bloodmnist"]["n_train"] != 11959
    # a limit nothing meets: said so, and nothing recorded (it looked like a missing space)
    with reg.session() as s:
        n_recorded = s.query(Recommendation).count()
    bad = runner.invoke(app, ["recommend", "blood", "--max-cost", "0.0001", "--write-initial", "w"])
    assert isinstance(bad.exception, InputError), bad.output
    assert "no strategy fits --max-cost 0.0001 s on this task: the cheapest" in str(bad.exception)
    with reg.session() as s:
        assert s.query(Recommendation).count() == n_recorded
    bad = runner.invoke(app, ["recommend", "nosuchtask"])
    assert isinstance(bad.exception, NotFoundError) and "not found; known:" in str(bad.exception)
    bad = runner.invoke(app, ["recommend", "blood", "--k", "0"])
    assert isinstance(bad.exception, InputError) and "--k 0" in str(bad.exception)


def test_bad_limits_and_initial_file_are_refused_before_recording(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A negative (or NaN) cost limit gave an empty answer with exit 0; --write-initial FOLDER
    recorded the recommendation and then failed on the rename with a traceback."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    runner = CliRunner()
    for args, message in (
        (["--max-cost", "-5"], "--max-cost -5.0: expected a positive finite number"),
        (["--max-gpu-hours", "nan"], "--max-gpu-hours nan: expected a positive finite number"),
        (["--max-cost", "inf"], "--max-cost inf: expected a positive finite number"),
        (["--max-gpu-hours", "Infinity"], "--max-gpu-hours inf: expected a positive finite"),
        (["--write-initial", str(tmp_path)], f"--write-initial {tmp_path} is a folder"),
        # as root, `--write-initial /dev/full` replaced the device with a JSON file
        (["--write-initial", str(fifo)], f"--write-initial {fifo} is not a regular file"),
    ):
        bad = runner.invoke(app, ["recommend", "blood", *args])
        assert isinstance(bad.exception, InputError), (args, bad.output, bad.exception)
        assert message in str(bad.exception)
    with reg.session() as s:
        assert s.scalar(select(Recommendation.id)) is None  # nothing recorded


def test_an_initial_file_that_cannot_be_written_records_nothing(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recommend T --write-initial /proc/x.json` exited 2 but the recommendation was already
    recorded (in `strategy outcomes` and the report): the path is now probed before anything
    is computed, and a write failing after that rolls the record back."""
    import pomlia_hpc.strategy.recommend as rec

    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    (tmp_path / "file").write_text("x")
    bad_paths = [tmp_path / "file" / "x.json"]
    if Path("/proc/self").exists():
        bad_paths.append(Path("/proc/x.json"))
    for path in bad_paths:
        bad = CliRunner().invoke(app, ["recommend", "blood", "--write-initial", str(path)])
        assert isinstance(bad.exception, InputError), (path, bad.output, bad.exception)
        assert f"--write-initial {path} cannot be written" in str(bad.exception)
    with reg.session() as s:
        assert s.scalar(select(Recommendation.id)) is None  # nothing recorded

    def full_disk(*args: object, **kwargs: object) -> NoReturn:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rec, "write_json_atomic", full_disk)
    out = tmp_path / "new" / "warm.json"
    with pytest.raises(InputError, match="No space left on device"):
        recommend(reg, "blood", initial_file=out)
    assert not out.exists() and not out.parent.exists()  # nor the folder it made
    with pytest.raises(InputError, match="No space left on device"):
        recommend(reg, "blood", initial_file=out, record=False)
    assert not out.parent.exists()
    with reg.session() as s:
        assert s.scalar(select(Recommendation.id)) is None  # nothing recorded
    monkeypatch.undo()
    answer = recommend(reg, "blood", initial_file=out)
    assert json.loads(out.read_text())["recommendation_id"] == answer["recommendation_id"]


def test_a_failed_commit_keeps_an_initial_file_written_before(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was overwritten in place before the commit and deleted when the commit
    failed, so a `--write-initial` file from an earlier run was lost: it is now written
    beside, renamed into place after the commit, and kept as it was when the commit fails."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "warm.json"
    out.write_text('{"earlier": true}')
    _fail_the_record_commit(reg, monkeypatch)
    with pytest.raises(OperationalError, match="database is locked"):
        recommend(reg, "blood", initial_file=out)
    assert out.read_text() == '{"earlier": true}'
    assert [p.name for p in out.parent.iterdir()] == ["warm.json"]  # no temporary left
    monkeypatch.undo()
    with reg.session() as s:
        assert s.scalar(select(Recommendation.id)) is None  # nothing recorded
    answer = recommend(reg, "blood", initial_file=out)
    assert json.loads(out.read_text())["recommendation_id"] == answer["recommendation_id"]


def test_a_failed_commit_leaves_no_folder_it_made(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed commit removed the staged file but left the empty folders made for it."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    out = tmp_path / "made" / "deeper" / "warm.json"
    _fail_the_record_commit(reg, monkeypatch)
    with pytest.raises(OperationalError, match="database is locked"):
        recommend(reg, "blood", initial_file=out)
    assert not (tmp_path / "made").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    with pytest.raises(OperationalError, match="database is locked"):
        recommend(reg, "blood", initial_file=tmp_path / "kept" / "new" / "warm.json")
    assert [p.name for p in tmp_path.iterdir() if p.name in ("kept", "made")] == ["kept"]
    assert not any((tmp_path / "kept").iterdir())


def test_pareto_front() -> None:
    assert pareto_front([3.0, 1.0, 2.0, 4.0], [0.9, 0.5, 0.4, 0.95]) == [1, 0, 3]


def test_costs_within_one_percent_are_one_point_of_the_front() -> None:
    """`recommend`'s front listed six strategies that all cost "30" s (30.00004 to 30.06):
    costs within 1 % (or 1 s) count as equal, and only the best expected metric stays."""
    costs = [30.00004, 30.01, 30.02, 30.03, 30.05, 30.06, 60.0, 60.3, 200.0]
    values = [0.70, 0.72, 0.71, 0.74, 0.75, 0.76, 0.80, 0.79, 0.81]
    assert pareto_front(costs, values) == [0, 1, 3, 4, 5, 6, 8]  # exact: every decimal counts
    tied = pareto_front(costs, values, rel_tol=COST_TIE_REL, abs_tol=COST_TIE_S)
    assert tied == [5, 6, 8]
    # A tie on the metric keeps the cheaper; a group is measured from its cheapest point.
    assert pareto_front([10.0, 10.05], [0.5, 0.5], rel_tol=0.01) == [0]
    assert pareto_front([100.0, 100.9, 101.8], [0.1, 0.2, 0.3], rel_tol=0.01) == [1, 2]


def test_recommend_without_knowledge_is_one_error(workspace: Workspace, reg: Registry) -> None:
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    res = CliRunner().invoke(app, ["recommend", "blood"])
    assert isinstance(res.exception, NotFoundError) and "strategy import" in str(res.exception)


def test_warm_start_keeps_to_supported_strategies(workspace: Workspace, reg: Registry) -> None:
    """A strategy expected to lose by far does not enter the warm start; the good one gives its
    best runs on several similar tasks instead (distinct hyperparameters, most similar first)."""
    from pomlia_hpc.strategy.warmstart import from_recommendation

    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    for seed, task in enumerate(("derm", "path"), 1):
        tiny_task(workspace, reg, task, "dermamnist", "acc", seed=seed)
        _trials(reg, task, [("small_cnn", 0.001 * seed, 0.9), ("mobilenet_v3_small", 0.01, 0.4)])
    warm = from_recommendation(reg, "blood", k=3, sources=["registry"])
    assert warm.archs == ("small_cnn",)  # mobilenet: 50 points behind, not supported
    assert sorted(c["lr"] for c in warm.configs) == [0.001, 0.002]  # one per similar task


def test_hyperparameters_passed_on_are_those_good_on_several_similar_tasks() -> None:
    from pomlia_hpc.strategy.hparams import HpRun, rank_hparams

    fast, steady, slow = {"lr": 0.05}, {"lr": 0.003}, {"lr": 0.0001}
    runs = [  # 'fast' won on the nearest task by a hair and collapsed on the next one
        HpRun("a", fast, 9, 0.90),
        HpRun("a", steady, 9, 0.89),
        HpRun("a", slow, 9, 0.60),
        HpRun("b", fast, 9, 0.30),
        HpRun("b", steady, 9, 0.85),
        HpRun("b", slow, 9, 0.55),
        HpRun("b", {"lr": 0.02}, 3, 0.99),  # a lower Hyperband rung: not comparable
    ]
    assert rank_hparams(runs, {"a": 0.6, "b": 0.4}) == [steady, fast, slow]
    # With only the nearest task's runs it is that task's best first (the old behaviour),
    # and a task without weight does not count.
    assert rank_hparams(runs, {"a": 1.0, "b": 0.0})[0] == fast
    # Settings run on one task each: the most similar task's best comes first.
    x, y = {"lr": 0.01}, {"lr": 0.001}
    solo = [HpRun("a", fast, 9, 0.9), HpRun("a", x, 9, 0.5), HpRun("a", y, 9, 0.4)]
    solo += [HpRun("b", slow, 9, 0.9), HpRun("b", steady, 9, 0.1), HpRun("b", {}, 9, 0.5)]
    assert rank_hparams(solo, {"a": 0.7, "b": 0.3})[0] == fast
    assert rank_hparams([], {"a": 1.0}) == []


def test_a_setting_cut_off_by_the_run_limit_is_not_taken_for_a_typical_one() -> None:
    """On a task whose runs were cut at the limit, a setting missing there may have run below
    the last run read: it counts at least that far behind, not as the task's median."""
    from pomlia_hpc.strategy.hparams import HpRun, rank_hparams

    good, cut, y = {"lr": 0.003}, {"lr": 0.05}, {"lr": 0.01}
    runs = [
        HpRun("a", good, 9, 0.90),
        HpRun("a", y, 9, 0.89),
        HpRun("a", {"lr": 0.02}, 9, 0.89),
        HpRun("a", {"lr": 0.1}, 9, 0.70),  # the last run read on 'a'
        HpRun("b", cut, 9, 0.95),  # 'cut' is not among the runs read on 'a'
        HpRun("b", good, 9, 0.91),
        HpRun("b", y, 9, 0.90),
    ]
    w = {"a": 0.5, "b": 0.5}
    # Taken for a typical setting on 'a' (median regret 1 point), 'cut' comes first (0.5).
    assert rank_hparams(runs, w)[0] == cut
    # Cut there, it is at least 20 points behind on 'a' (score >= 10): 'good' (0 and 4: 2) first.
    assert rank_hparams(runs, w, floor={"a": 0.70})[0] == good


def test_a_strategy_run_on_one_distant_task_only_does_not_win_the_comparison() -> None:
    """Across strategies, a weighted task where a strategy never ran counts as that task's
    median regret: one lucky run on a task of weight 0.05 must not outrank a setting that is
    best on the task of weight 0.95."""
    from pomlia_hpc.strategy.hparams import HpRun, score_hparams, task_best, task_median_regret

    small = [
        HpRun("a", {"lr": 0.003}, 9, 0.90),
        HpRun("a", {"lr": 0.01}, 9, 0.80),
        HpRun("a", {"lr": 0.05}, 9, 0.70),
        HpRun("b", {"lr": 0.003}, 9, 0.85),
    ]
    resnet34 = [HpRun("b", {"lr": 0.001}, 9, 0.90)]
    w = {"a": 0.95, "b": 0.05}
    best, typical = task_best(small + resnet34), task_median_regret(small + resnet34)
    assert typical == pytest.approx({"a": 10.0, "b": 2.5})
    small_score = score_hparams(small, w, None, best, absent=typical)[0][0]
    assert small_score == pytest.approx(0.25)  # 0 points behind on 'a', 5 on 'b'
    # Scored over 'b' alone it would come first (0 points); with 'a' counted it is 9.5.
    assert score_hparams(resnet34, w, None, best)[0][0] == 0.0
    assert score_hparams(resnet34, w, None, best, absent=typical)[0][0] == pytest.approx(9.5)


def test_runs_without_an_architecture_count_as_the_small_cnn() -> None:
    """A run configuration without ``arch`` is the small CNN, as in the knowledge base's run
    statistics (:func:`pomlia_hpc.strategy.runstats.run_strategy`), so its settings are
    passed on with that strategy."""
    from pomlia_hpc.strategy.hparams import HpRun, by_strategy, of_strategy

    runs = [HpRun("a", {"lr": 0.01, "optimizer": "sgd"}, 9, 0.9)]
    got = of_strategy(by_strategy(runs), {"arch": "small_cnn", "init": "scratch"})
    assert [r.hparams for r in got] == [{"lr": 0.01, "optimizer": "sgd"}]


def test_first_warm_configuration_is_the_setting_best_across_strategies(
    workspace: Workspace, reg: Registry
) -> None:
    """The first warm-start configuration (trained at the full budget before the search) is
    the single setting with the lowest regret over the similar tasks, not the top setting of
    the strategy with the best single runs: here ResNet-18 has the best run on one task but
    collapses on the other, one small-CNN setting is good on both."""
    from pomlia_hpc.strategy.warmstart import from_recommendation

    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    cases = {  # task: [(arch, lr, objective)]
        "derm": [("resnet18", 0.01, 0.95), ("resnet18", 0.02, 0.50), ("small_cnn", 0.003, 0.93)],
        "path": [("resnet18", 0.01, 0.60), ("resnet18", 0.02, 0.94), ("small_cnn", 0.003, 0.93)],
    }
    for seed, (task, rows) in enumerate(cases.items(), 1):
        tiny_task(workspace, reg, task, "dermamnist", "acc", seed=seed)
        _trials(reg, task, rows, budget=9.0)
    warm = from_recommendation(reg, "blood", k=3, sources=["registry"])
    # ResNet-18's best runs (0.95, 0.94) beat the small CNN's (0.93, 0.93), but each of its
    # settings lost 35-45 points on one task; the small CNN's setting lost 1-2 on both.
    assert warm.configs[0]["arch"] == "small_cnn" and warm.configs[0]["lr"] == 0.003
    assert {c["arch"] for c in warm.configs} == {"small_cnn", "resnet18"}


def test_the_floor_is_set_only_where_runs_were_cut(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task with exactly the run limit lost nothing: no floor; one run more and the floor is
    the last run read."""
    from pomlia_hpc.strategy import hparams

    monkeypatch.setattr(hparams, "RUNS_PER_TASK", 3)
    for seed, task in enumerate(("derm", "path"), 1):
        tiny_task(workspace, reg, task, "dermamnist", "acc", seed=seed)
    _trials(reg, "derm", [("small_cnn", 0.001 * i, 0.9 - 0.1 * i) for i in range(3)])
    _trials(reg, "path", [("small_cnn", 0.001 * i, 0.9 - 0.1 * i) for i in range(4)])
    read = hparams.task_runs(reg, ["derm", "path"])
    assert read.floor == {"path": pytest.approx(0.7)}
    assert sorted(r.task for r in read.runs) == ["derm"] * 3 + ["path"] * 3


def test_registry_tasks_are_compared_by_fingerprints_in_recommend_and_in_the_eval(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks sharing an encoder with complete embeddings: ``recommend`` gives the learner the
    fingerprint distances between the known tasks (not a constant), and the evaluation
    measures that same learner (it used to leave the fingerprints out). Whether the learner
    then keeps them is its nested choice (tested with the learner); on these four tasks the
    fingerprints rank no better, and every label says so."""
    from pomlia_hpc.strategy import recommend as rec
    from pomlia_hpc.strategy.service import evaluate_kb, evaluate_source

    names = {"blood": "bloodmnist", "derm": "dermamnist", "path": "pathmnist", "oct": "octmnist"}
    means = {"blood": [0.0, 0.0], "derm": [3.0, 0.0], "path": [0.0, 4.0], "oct": [6.0, 8.0]}
    for seed, (task, flag) in enumerate(names.items()):
        tiny_task(workspace, reg, task, flag, "acc", seed=seed)
        _trials(reg, task, [("small_cnn", 0.001, 0.9 - 0.1 * seed), ("resnet18", 0.01, 0.7)])
    weights = embedded_sets(workspace.home, reg, means)
    not_used = "meta-features (fingerprints of enc not used)"
    result = evaluate_source(reg, "registry", "acc")
    assert result.similarity == not_used
    base = kb.load(reg, "acc", ["registry"])
    base.observations = [o for o in base.observations if o.dataset != "oct"]
    three = evaluate_kb(reg, base)  # the bench's per-seed evaluations go this way
    assert three.datasets == ["blood", "derm", "path"]
    assert three.similarity == not_used  # 2 known tasks per fit: nothing to judge them by

    seen: list[np.ndarray | None] = []
    fits: list[Any] = []

    class Spy(rec.KernelRegret):
        def fit(self, train: Any, candidates: Any = None, fingerprints: Any = None) -> Any:
            seen.append(fingerprints)
            fits.append(self)
            return super().fit(train, candidates, fingerprints=fingerprints)

    monkeypatch.setattr(rec, "KernelRegret", Spy)
    answer = rec.recommend(reg, "blood", k=2, sources=["registry"], record=False)
    (fitted,) = fits
    assert fitted.fingerprints_offered and not fitted.uses_fingerprints
    assert answer["similarity"] == not_used
    (pairs,) = seen
    assert pairs is not None
    xy = np.array([means[n] for n in ("blood", "derm", "oct", "path")])  # the matrix's order
    expected = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    np.testing.assert_allclose(pairs, expected)
    # The encoder retrained under its name: its sets' records stay complete, their vectors
    # are of the earlier weights, and were compared with those of the new ones.
    weights.write_bytes(b"weights of the retrained encoder")
    seen.clear()
    fits.clear()
    answer = rec.recommend(reg, "blood", k=2, sources=["registry"], record=False)
    assert len(seen) == 1 and seen[0] is None, "the earlier weights' vectors were compared"
    assert answer["similarity"] == "meta-features"


def test_a_published_data_set_is_never_taken_for_the_task_of_its_name(
    workspace: Workspace, reg: Registry
) -> None:
    """Initial weights come from a similar registry task's model. The published BloodMNIST was
    matched by name to a task called `bloodmnist` (here of another metric, so its row was not
    renamed), whose unrelated model then became the warm start's."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "bloodmnist", "breastmnist", "auc")
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == "bloodmnist"))
        s.add(Model(name="unrelated", task_id=tid, lineage={"config": {"arch": "resnet18"}}))
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc", seed=1)
    for sources in (None, ["plus"]):
        answer = recommend(reg, "blood", k=3, sources=sources, record=False)
        assert "bloodmnist" in [s["dataset"] for s in answer["similar"]], answer["similar"]
        assert answer["sources_of_weights"]["model"] is None


def test_a_pipelines_cost_limit_that_nothing_meets_leaves_the_study_without_a_warm_start(
    workspace: Workspace, reg: Registry
) -> None:
    """The recommender refuses a limit no strategy meets; a pipeline's recommend stage goes on
    as it did before that check (no warm start), saying why, rather than failing the run."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    section = SimpleNamespace(k=3, max_gpu_hours=1e-9, sources=None, shipped_tables=False)
    lines: list[str] = []
    ctx = SimpleNamespace(
        spec=SimpleNamespace(recommend=section),
        registry=reg,
        outputs=lambda _stage: {"t": {"task": "blood"}},
        log=lines.append,
    )
    assert RECOMMEND.run(ctx) == {"t": {"recommendation_id": None, "configs": [], "top": []}}
    assert "no strategy fits --max-gpu-hours 1e-09" in lines[0] and "no warm start" in lines[0]


def test_no_infinity_reaches_an_answer_on_either_backend(
    workspace: Workspace, registry: Registry
) -> None:
    """A cost of 1e308 imported before the limit scaled to infinity: PostgreSQL refused the
    record (a raw "invalid input syntax for type json"), SQLite stored `Infinity` and `--json`
    printed it (not JSON). Such a cost now counts as unknown (the compute estimate)."""
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(registry, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    with registry.session() as s:
        s.execute(update(KbResult).values(cost_s=1e308))
    tiny_task(workspace, registry, "blood", "bloodmnist", "acc")
    answer = recommend(registry, "blood")
    json.dumps(answer, allow_nan=False)  # valid JSON
    assert all(s["cost"]["basis"] == "estimate" for s in answer["strategies"])
    with registry.session() as s:
        row = s.scalar(select(Recommendation))
        assert row is not None and row.output["strategies"][0]["cost"]["wall_s"] < 1e9
    with pytest.raises(InputError, match="--max-cost inf: expected a positive finite number"):
        recommend(registry, "blood", max_cost_s=math.inf)


@pytest.mark.usefixtures("wide_console")
def test_a_task_type_no_known_data_set_has_is_noted(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A multi-class task ranked on multi-label data sets only gave a confident table without
    a word about it."""
    meta = tmp_path / "m.csv"
    meta.write_text(
        "dataset,task_type,n_channels,n_classes,n_train\n"
        "a,multi-label,1,5,1000\nb,multi-label,3,9,5000\n"
    )
    rows = ["dataset,arch,init,mode,img_size,metric,value"]
    for d, base in (("a", 0.7), ("b", 0.8)):
        rows += [f"{d},resnet18,scratch,full,28,acc,{base}", f"{d},vgg16,scratch,full,28,acc,0.6"]
    table = tmp_path / "r.csv"
    table.write_text("\n".join(rows) + "\n")
    kb.import_table(reg, table, "ml", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    answer = recommend(reg, "blood", record=False)
    assert answer["n_same_task_type"] == 0
    assert answer["note"] == (
        "no known data set with metric 'acc' has the task's type 'multi-class': the ranking "
        "rests on data sets of other types (multi-label) only"
    )
    text = " ".join(CliRunner().invoke(app, ["recommend", "blood"]).output.split())
    assert "note: no known data set with metric 'acc' has the task's type" in text, text
    kb.import_table(
        reg,
        DATA / "medmnist_plus_doerrich2025.csv",
        "plus",
        meta_path=DATA / "medmnist_meta_features.csv",
    )
    answer = recommend(reg, "blood", record=False)
    assert answer["note"] is None and answer["n_same_task_type"] > 0


def _fail_the_record_commit(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the registry's session fail at the commit that records a recommendation."""
    real = reg.session

    @contextmanager
    def commit_fails() -> Iterator[Session]:
        with real() as s:
            yield s
            if s.scalar(select(Recommendation.id)) is not None:  # the record's commit
                raise OperationalError("COMMIT", {}, Exception("database is locked"))

    monkeypatch.setattr(reg, "session", commit_fails)


def test_a_tasks_own_runs_rank_strategies_by_validation_never_test(
    workspace: Workspace, reg: Registry
) -> None:
    # Its own runs are the task's nearest data set: were they counted by their test metric,
    # the strategy picked for its next study (and the loop's retrain, whose gate compares on
    # the same test split) would be chosen on test data.
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    tiny_task(workspace, reg, "blood", "bloodmnist", "acc")
    hp = {"optimizer": "adamw", "batch_size": 64}
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == "blood"))
        for arch, val, test in (("small_cnn", 0.95, 0.40), ("resnet18", 0.40, 0.95)):
            metrics = {"objective": val, "val": {"acc": val}, "test": {"acc": test}}
            s.add(
                Run(
                    task_id=tid,
                    study="s",
                    config={"arch": arch, "lr": 1e-3, **hp},
                    budget=3.0,
                    metrics=metrics,
                    cost_s=5.0,
                    status="ok",
                )
            )
    res = CliRunner().invoke(app, ["recommend", "blood", "--k", "500", "--json"])
    answer = json.loads(res.output)
    own = {
        st["strategy"]["arch"]: e["value"]
        for st in answer["strategies"]
        for e in st["evidence"]
        if e["dataset"] == "blood"
    }
    assert own == {"small_cnn": 0.95, "resnet18": 0.40}, own


def test_tied_settings_come_in_one_order_whatever_order_the_runs_were_read_in() -> None:
    """Two settings equally far behind (here: both best on their one task) were passed on in
    the order the database returned their runs, which is the order they were recorded in on
    SQLite and any order on PostgreSQL; two values that round to one setting gave whichever
    came first. Both now follow from the settings alone, so a warm start repeats."""
    from pomlia_hpc.strategy.hparams import HpRun, rank_hparams

    runs = [
        HpRun("a", {"lr": 0.02}, 9, 0.9),
        HpRun("a", {"lr": 0.01}, 9, 0.9),
        HpRun("b", {"lr": 0.0012342}, 9, 0.8),  # rounds, as the next one, to lr=0.001234
        HpRun("b", {"lr": 0.0012341}, 9, 0.8),
        HpRun("b", {"lr": 0.05}, 9, 0.7),
    ]
    w = {"a": 0.5, "b": 0.5}
    once = rank_hparams(runs, w)
    assert rank_hparams(runs[::-1], w) == once
    assert rank_hparams(runs[2:] + runs[:2], w) == once
    assert once[:3] == [{"lr": 0.0012341}, {"lr": 0.01}, {"lr": 0.02}]


def test_the_runs_read_per_task_are_cut_in_one_order_on_either_backend(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs tied on the objective at the per-task limit: the ones read are the first recorded,
    on SQLite and PostgreSQL alike (the order of tied rows was the database's own)."""
    from pomlia_hpc.strategy import hparams

    monkeypatch.setattr(hparams, "RUNS_PER_TASK", 4)
    tid = row_task(registry, "t")
    lrs = [round(0.001 * (1 + (7 * i) % 20), 3) for i in range(20)]
    with registry.session() as s:
        for lr in lrs:
            s.add(
                Run(
                    task_id=tid,
                    study="s",
                    config={"arch": "small_cnn", "lr": lr},
                    budget=9.0,
                    metrics={"objective": 0.5},
                    status="ok",
                )
            )
    read = hparams.task_runs(registry, ["t"])
    assert [r.hparams["lr"] for r in read.runs] == lrs[:4]


def test_a_2d_task_is_compared_with_2d_data_sets_only(
    workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    """A small binary 2D task listed the 3D volume sets of the shipped MedMNIST v2 table among
    its similar data sets (3 of its 5), and their weight went into its strategies' expected
    regrets and evidence. Only data sets of the task's dimensionality are compared now, and the
    others are named."""
    for source, file in kb.SHIPPED_TABLES:
        kb.import_table(reg, DATA / file, source, meta_path=DATA / kb.SHIPPED_META)
    volumes = {d for d, meta in kb.load(reg, "auc").meta.items() if meta.get("dims") == 3}
    assert len(volumes) == 6  # the table's 3D data sets
    row_task(reg, "small")  # 100 grey 28 px images, binary, like the 3D sets' few hundred
    with reg.session() as s:
        s.execute(update(Task).where(Task.name == "small").values(metric="auc"))
    answer = recommend(reg, "small", k=1000, record=False)
    assert not volumes & {s["dataset"] for s in answer["similar"]}, answer["similar"]
    shown = {e["dataset"] for r in answer["strategies"] for e in r["evidence"]}
    assert shown and not volumes & shown, shown
    # the volume-only strategies (ResNet-18+3D, ...) are no candidates for a 2D task
    assert not [r for r in answer["strategies"] if "3D" in r["strategy"]["arch"]]
    assert answer["dims"] == 2 and set(answer["other_dims"]) == volumes
    assert answer["n_datasets"] == 12  # the 2D data sets of both tables
    text = " ".join(CliRunner().invoke(app, ["recommend", "small"]).output.split())
    assert "note: 6 known data set(s) not of the task's dimensionality (2D) were not " in text


def test_a_knowledge_base_of_volumes_only_is_no_evidence_for_a_2d_task(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text(
        "dataset,task_type,n_channels,n_classes,n_train,dims\n"
        "a3d,binary,1,2,1000,3\nb3d,binary,1,2,2000,3\n"
    )
    table = tmp_path / "r.csv"
    table.write_text(
        "dataset,arch,init,mode,img_size,metric,value\n"
        "a3d,resnet18,scratch,full,28,acc,0.8\nb3d,resnet18,scratch,full,28,acc,0.7\n"
    )
    kb.import_table(reg, table, "vol", meta_path=meta)
    row_task(reg, "flat")
    with pytest.raises(NotFoundError) as err:
        recommend(reg, "flat", record=False)
    assert str(err.value).startswith(
        "the knowledge base has results on 0 2D data set(s) for metric 'acc' (2 of other "
        "dimensionality left out); expected at least 2 of the task's dimensionality"
    ), err.value
