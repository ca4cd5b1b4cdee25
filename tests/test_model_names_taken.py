"""A model name or file that belongs to another model, and a registration whose task, run and
checkpoint contradict each other: refused, nothing written, the other model left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.study import StudyView, run_study
from pomlia_hpc.cli import app
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.models.catalog import promote_checkpoint, register_model, resolve_model
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task

# Trials run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("wide_console", "restore_torch_threads")


def test_a_study_whose_best_name_is_taken_is_refused_before_it_starts(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    tiny_task(workspace, reg, "blood")
    ckpt = save_demo_checkpoint(tmp_path / "hand.pt", num_classes=3)
    register_model(reg, "sx-best", ckpt)
    with pytest.raises(PomliaError, match="'sx-best' is already registered") as info:
        tiny_study(reg, workspace, "blood", "sx")
    assert "choose another --study name" in str(info.value)
    assert not workspace.path("runs", "sx", "study.json").exists()
    # a file of another registry under models/ counts as taken too
    stray = workspace.path("models", "sy-best.pt")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(ckpt.read_bytes())
    with pytest.raises(PomliaError, match=r"sy-best\.pt exists but no model 'sy-best'"):
        tiny_study(reg, workspace, "blood", "sy")


@pytest.mark.slow
def test_a_best_name_taken_during_the_study_is_reported_not_claimed(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    tiny_task(workspace, reg, "blood")
    spec = tiny_study(reg, workspace, "blood", "sx", n_trials=1)
    hand = save_demo_checkpoint(tmp_path / "hand.pt", num_classes=3)

    def squat(view: StudyView) -> None:  # someone registers the name while the study runs
        if resolve_model_or_none(reg, "sx-best") is None:
            register_model(reg, "sx-best", hand)

    result = run_study(reg, workspace, spec, poll_s=0.2, on_update=squat)
    assert result.best_run_id is not None and result.model_name is None
    assert "'sx-best' is taken by model id" in result.model_refused
    assert "pomlia model register NAME" in result.model_refused
    row = resolve_model(reg, "sx-best")
    assert row.run_id is None and Path(row.path) == hand.resolve()
    assert not workspace.path("models", "sx-best.pt").exists()
    # the CLI says so and fails
    out = CliRunner().invoke(app, ["automl", "run", "blood", "--study", "sx", "--resume"])
    text = " ".join(out.output.split())
    assert out.exit_code == 1, out.output
    assert "model not registered: model name 'sx-best' is taken" in text
    assert "sx-best registered" not in text


@pytest.mark.slow
def test_a_resumed_finished_study_keeps_its_own_model(workspace: Workspace, reg: Registry) -> None:
    tiny_task(workspace, reg, "blood")
    spec = tiny_study(reg, workspace, "blood", "s1", n_trials=1)
    first = run_study(reg, workspace, spec, poll_s=0.2)
    assert first.model_name == "s1-best"
    again = run_study(reg, workspace, spec, resume=True, poll_s=0.2)
    assert again.model_name == "s1-best" and again.model_refused == ""
    (run,) = records.study_runs(reg, "s1")
    assert resolve_model(reg, "s1-best").run_id == run.id


def resolve_model_or_none(reg: Registry, name: str) -> Model | None:
    with reg.session() as s:
        return s.scalar(select(Model).where(Model.name == name))


def test_register_refuses_to_overwrite_another_registrys_file(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    theirs = workspace.path("models", "m1.pt")
    save_demo_checkpoint(theirs, num_classes=3)
    before = theirs.read_bytes()
    mine = save_demo_checkpoint(tmp_path / "mine.pt", num_classes=5)
    text = refused("model", "register", "m1", str(mine))
    assert f"{theirs} exists but no model 'm1' is registered" in text
    assert theirs.read_bytes() == before
    assert resolve_model_or_none(reg, "m1") is None
    # the file itself (the same checkpoint) is no conflict: registered
    row = promote_checkpoint(reg, workspace, "m1", theirs)
    assert Path(row.path) == theirs and theirs.read_bytes() == before


def test_register_refuses_a_task_run_or_checkpoint_that_contradict_each_other(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    tiny_task(workspace, reg, "blood")  # 8 classes
    tiny_task(workspace, reg, "breast", flag="breastmnist")  # 2 classes
    eight = save_demo_checkpoint(tmp_path / "eight.pt", num_classes=8)
    run_id = make_run(reg, task="blood")

    def register(*args: str) -> str:
        return refused("model", "register", *args)

    breast_id, blood_id = task_id(reg, "breast"), task_id(reg, "blood")
    text = register("m_wrong", str(eight), "--task-id", str(breast_id), "--run-id", str(run_id))
    assert f"run {run_id} belongs to task id {blood_id}, not to --task-id {breast_id}" in text
    text = register("m_wrong", str(eight), "--task-id", str(breast_id))
    assert "the checkpoint has 8 classes but task 'breast'" in text and "has 2" in text
    assert resolve_model_or_none(reg, "m_wrong") is None
    assert not workspace.path("models", "m_wrong.pt").exists()
    # consistent: registered
    promote_checkpoint(reg, workspace, "m_ok", eight, task_id=blood_id, run_id=run_id)


def refused(*args: str) -> str:
    """The message of the one-line error (exit 2) ``pomlia ARGS...`` stops with."""
    with pytest.raises(PomliaError) as info:
        CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert info.value.exit_code == 2
    return str(info.value)


def task_id(reg: Registry, name: str) -> int:
    from pomlia_hpc.automl.tasks import get_task

    return get_task(reg, name).id


def make_run(reg: Registry, task: str) -> int:
    from pomlia_hpc.registry import Run

    with reg.session() as s:
        row = Run(task_id=task_id(reg, task), study="x", status="ok")
        s.add(row)
        s.flush()
        return row.id
