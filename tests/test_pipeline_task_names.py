"""The ``tasks`` stage registers each task of the file under a name whose registered task has
the file's dataset version and metric: a task name already taken by another metric or version
gets a new name, never a task of the other metric (its study would optimise that metric while
the pipeline reported the file's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.pipeline.spec import load_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.registry import Registry, Task
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import tiny_npz


def _file(tmp_path: Path, metric: str, task: str = "t") -> Path:
    data = {
        "name": "p",
        "datasets": [{"name": "a", "file": "a.npz"}],
        "tasks": [{"name": task, "dataset": "a", "metric": metric}],
    }
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(data))
    return file


def _metric_of(reg: Registry, name: str) -> str:
    with reg.session() as s:
        metric = s.scalar(select(Task.metric).where(Task.name == name))
    assert metric is not None, name
    return metric


@pytest.fixture
def run_tasks(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, dict[str, str]]]:
    """`pipeline run` of a file with data set `a` and one task of ``metric``: (exit status,
    stderr, the `tasks` stage's output for the task; empty when the run failed)."""
    tiny_npz(tmp_path / "a.npz")

    def run(metric: str, task: str = "t") -> tuple[int, str, dict[str, str]]:
        file = _file(tmp_path, metric, task)
        code, _out, err = pomlia_main(monkeypatch, capsys, "pipeline", "run", str(file))
        if code != 0:
            return code, err, {}
        return code, err, StageContext(load_pipeline(file), workspace, reg).outputs("tasks")[task]

    return run


def test_each_metric_of_a_task_gets_a_task_of_that_metric(
    reg: Registry, run_tasks: Callable[..., tuple[int, str, dict[str, str]]]
) -> None:
    names = []
    for metric in ("acc", "f1_macro", "auc", "acc"):
        code, err, task = run_tasks(metric)
        assert code == 0, err
        assert task["metric"] == metric
        assert _metric_of(reg, task["task"]) == metric, (metric, task)
        names.append(task["task"])
    assert names[0] == "t" and names[3] == "t"  # the first metric's task again
    assert len(set(names[:3])) == 3, names


def test_names_all_taken_by_other_metrics_are_refused_in_one_line(
    reg: Registry, run_tasks: Callable[..., tuple[int, str, dict[str, str]]]
) -> None:
    code, err, task = run_tasks("acc")
    assert code == 0, err
    version = task["dataset"]
    suffix = version.partition("@")[2][:8]
    add_task(reg, f"t-{suffix}", version, "acc")  # a user's own tasks, of another metric
    add_task(reg, f"t-{suffix}-f1_macro", version, "acc")
    code, err, _task = run_tasks("f1_macro")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, (code, err)
    assert f"'t', 't-{suffix}', 't-{suffix}-f1_macro' are all tasks of another" in said, said
    assert _metric_of(reg, f"t-{suffix}-f1_macro") == "acc"  # nothing of the user's changed


def test_the_names_of_a_long_task_stay_valid_names(
    run_tasks: Callable[..., tuple[int, str, dict[str, str]]],
) -> None:
    """A task name of 64 characters (the file allows it) plus `-<version>-<metric>` was
    refused by the task registry, naming a name the user never wrote."""
    long = "t" * 64
    names = []
    for metric in ("acc", "f1_macro", "auc"):
        code, err, task = run_tasks(metric, long)
        assert code == 0, err
        names.append(task["task"])
    assert names[0] == long and len(set(names)) == 3
    assert all(len(n) <= 64 for n in names), names
