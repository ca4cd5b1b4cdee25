"""An AutoML study on look-alike data with the local executor: records, crashes, the best
model's lineage, and the CLI views (``task add``, ``runs list``, ``model list``)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.space import SpaceOptions
from pomlia_hpc.automl.study import StudyView, create_study, load_spec, run_study
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.models.checkpoint import load_classifier
from pomlia_hpc.registry import Job, Model, Registry, Run
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, donor_model, tiny_task

pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.mark.slow
def test_study_records_every_trial_and_goes_on_after_a_crash(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver's own distributed variables (here: a port already taken, as after in-process
    # DeepSpeed training) must not leak into the trial jobs.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="s1",
        n_trials=3,
        max_epochs=2,
        min_epochs=1,
        eta=2,
        parallel=2,
        space=SpaceOptions(archs=("small_cnn",)),
        init_model=donor,
        n_initial=2,
        initial_configs=[{**FAST, "init": "model", "mode": "full"}, FAST],
    )
    assert load_spec(workspace, "s1") == spec
    assert spec.init_model is not None and spec.init_model.arch == "small_cnn"
    # The prepared weights get damaged on the way: that trial's job raises.
    Path(spec.init_model.path).write_bytes(b"not a checkpoint")
    seen: list[int] = []
    shown: dict[int, str] = {}  # the live table's `job` column, per run

    def update(view: StudyView) -> None:
        seen.append(sum(t.status == "running" for t in view.trials))
        shown.update({t.run_id: t.job for t in view.trials if t.job})

    result = run_study(reg, workspace, spec, poll_s=0.3, on_update=update)
    assert max(seen) == 2  # two trials out at once
    runs = records.study_runs(reg, "s1")
    # the registry's job id, which `pomlia jobs show/cancel` take (not the local pid)
    assert shown == {r.id: str(r.job_id) for r in runs}
    assert len(runs) == 3 and result.n_ok + result.n_crashed == 3
    crashed = [r for r in runs if r.status == "crashed"]
    # exactly the trials that start from the damaged weights crash (the first initial one does)
    assert crashed and {r.id for r in crashed} == {
        r.id for r in runs if r.config.get("init") == "model"
    }
    bad = crashed[0]
    assert bad.config["init"] == "model" and "initial weights" in bad.metrics["cause"]
    assert "Traceback" in (bad.error or "") and bad.job_id is not None
    ok = [r for r in runs if r.status == "ok"]
    assert ok, "the study went on after the crash"
    for r in runs:
        assert r.task_id is not None and r.dataset_version_id == spec.dataset_version_id
        assert r.job_id is not None and r.budget in (1.0, 2.0) and r.cost_s is not None
        assert r.config["config_key"] and r.config["arch"] == "small_cnn"
    for r in ok:
        assert set(r.metrics["val"]) >= {"acc", "auc", "f1_macro"}
        assert r.metrics["objective"] == r.metrics["val"]["acc"]
    # SMAC was told about the crash (status CRASHED = 2 in its runhistory)
    rh = json.loads(next(workspace.path("runs", "s1", "smac").rglob("runhistory.json")).read_text())
    assert sorted(d["status"] for d in rh["data"]).count(2) == len(crashed)
    # the best model, registered with its lineage
    assert result.model_name == "s1-best" and result.best_run_id in {r.id for r in ok}
    with reg.session() as s:
        model = s.scalar(select(Model).where(Model.name == "s1-best"))
        jobs = list(s.scalars(select(Job)))
    assert model is not None and model.run_id == result.best_run_id
    lin = model.lineage
    assert lin["task"] == "blood" and lin["dataset_version_id"] == spec.dataset_version_id
    assert lin["run_id"] == result.best_run_id and lin["code_version"]["version"]
    assert load_classifier(model.path).meta.arch == "small_cnn"
    assert len(jobs) == 3 and {j.state for j in jobs} <= {"COMPLETED", "FAILED"}

    # the CLI views
    cli = CliRunner()
    out = cli.invoke(app, ["runs", "list", "--task", "blood"])
    assert out.exit_code == 0, out.output
    assert "crashed" in out.output and "ok" in out.output and "s1" in out.output
    # each value named ("val acc/auc" held "0.91" alone when a run had only one of them)
    assert re.search(r"acc \d\.\d{3} auc \d\.\d{3} f1_macro \d\.\d{3}", out.output), out.output
    with pytest.raises(PomliaError, match="study 'nosuch' not found; known: s1"):
        cli.invoke(app, ["runs", "list", "--study", "nosuch"], catch_exceptions=False)
    out = cli.invoke(app, ["model", "list"])
    assert out.exit_code == 0 and "s1-best" in out.output and "blood" in out.output
    # a finished study cannot be created again under the same name
    with pytest.raises(PomliaError, match="already exists"):
        create_study(reg, workspace, "blood", name="s1")
    # a study created but not started has no runs yet: an empty list, not "not found"
    create_study(reg, workspace, "blood", name="s2", n_trials=1, max_epochs=1)
    out = cli.invoke(app, ["runs", "list", "--study", "s2"], catch_exceptions=False)
    assert out.exit_code == 0 and "runs (0)" in out.output, out.output
    with pytest.raises(PomliaError, match="study 'nosuch' not found; known: s1, s2"):
        cli.invoke(app, ["runs", "list", "--study", "nosuch"], catch_exceptions=False)
    taken.close()


def test_task_cli_and_input_errors(workspace: Workspace, tmp_path: Path) -> None:
    from tests.fixtures.factories import tiny_dataset

    reg = Registry.open(workspace.db_url)
    ref = tiny_dataset(workspace, reg, "derma", flag="dermamnist", sizes=(8, 4, 4))
    cli = CliRunner()
    out = cli.invoke(app, ["task", "add", "skin", "--dataset", ref, "--metric", "auc"])
    assert out.exit_code == 0, out.output
    assert "multi-class" in out.output and "auc" in out.output
    out = cli.invoke(app, ["task", "add", "skin2", "--dataset", "derma", "--metric", "recall"])
    assert out.exit_code != 0 and "metric 'recall' is not known" in str(out.exception)
    out = cli.invoke(
        app,
        ["task", "add", "skin3", "--dataset", "derma", "--metric", "acc", "--task-type", "binary"],
    )
    assert "does not match dataset" in str(out.exception)
    out = cli.invoke(app, ["task", "list"])
    rows = [[c.strip() for c in ln.strip("│").split("│")] for ln in out.output.splitlines()]
    # the refused tasks (skin2, skin3) were not added
    assert [r for r in rows if len(r) == 5] == [["1", "skin", ref, "multi-class", "auc"]]
    with pytest.raises(InputError, match="--max-epochs 1"):
        create_study(reg, workspace, "skin", min_epochs=2, max_epochs=1)
    with pytest.raises(InputError, match="initial configurations: entry 0"):
        create_study(reg, workspace, "skin", initial_configs=[{"arch": "vgg99"}])
    warm = tmp_path / "warm.yaml"
    warm.write_text("arch: small_cnn\n")
    out = cli.invoke(app, ["automl", "run", "skin", "--initial", str(warm)])
    assert "expected a non-empty list of configurations" in str(out.exception)
    warm.write_text("[]\n")
    out = cli.invoke(app, ["automl", "run", "skin", "--initial", str(warm)])
    assert f"'{warm}': expected a non-empty list" in str(out.exception)
    out = cli.invoke(app, ["automl", "run", "skin", "--gpus", "2"])
    assert out.exit_code != 0 and "--gpus 2: expected 0 or 1" in str(out.exception)
    with reg.session() as s:
        assert s.scalar(select(Run.id)) is None  # nothing ran


def test_train_only_state_checks() -> None:
    # guard: the test helper's fast config is a valid point of the default space
    from pomlia_hpc.automl.space import build_space, make_configuration

    make_configuration(build_space(), FAST, "FAST")
    assert torch.get_num_threads() >= 1


def test_runs_of_a_task_are_found_by_name_or_id_and_an_unknown_task_is_an_error(
    workspace: Workspace,
) -> None:
    from pomlia_hpc.errors import NotFoundError
    from pomlia_hpc.registry import Task

    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    tiny_task(workspace, reg, "derma", flag="dermamnist", sizes=(16, 8, 8))
    with reg.session() as s:
        ids = {t.name: t.id for t in s.scalars(select(Task))}
        for name, tid in ids.items():
            s.add(Run(task_id=tid, study=f"{name}-s", config={}, budget=1.0, status="ok"))
    by_name = records.list_runs(reg, task="derma")
    by_id = records.list_runs(reg, task=str(ids["derma"]))
    assert [r.task for r in by_name] == ["derma"] and by_id == by_name
    # An unknown task was an empty list (as if it had no runs); now it names the known ones.
    with pytest.raises(NotFoundError, match="task 'bloood' not found; known: blood, derma"):
        records.list_runs(reg, task="bloood")
