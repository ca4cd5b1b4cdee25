"""Study names: generated names of starts in the same second never collide, and a study whose
driver is at work is never answered with advice to ``--resume`` it."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from pomlia_hpc.automl.folders import study_dir
from pomlia_hpc.automl.liveness import DriverBeat
from pomlia_hpc.automl.study import create, load_spec
from pomlia_hpc.cli import main
from pomlia_hpc.errors import BUSY_EXIT, PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task

NOW = datetime(2026, 12, 5, 10, 16, 51, tzinfo=UTC)


class FrozenClock(datetime):
    """``datetime`` whose ``now`` is always :data:`NOW`: starts in the same second."""

    @classmethod
    def now(cls, tz: Any = None) -> FrozenClock:  # type: ignore[override]
        return cls.fromtimestamp(NOW.timestamp(), tz)


def test_generated_names_in_the_same_second_get_a_suffix(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `automl run t1` without --study in one second: the second was told "study
    't1-20261205-101651' already exists; pass --resume to continue it", a name it never
    chose. A start whose folder is made but not yet claimed holds its name too."""
    tiny_task(workspace, reg, "t1")
    monkeypatch.setattr(create, "datetime", FrozenClock)
    first = tiny_study(reg, workspace, "t1", None)
    second = tiny_study(reg, workspace, "t1", None)
    assert (first.name, second.name) == ("t1-20261205-101651", "t1-20261205-101651-2")
    study_dir(workspace, "t1-20261205-101651-3").mkdir()  # another start, still preparing
    assert tiny_study(reg, workspace, "t1", None).name == "t1-20261205-101651-4"


def test_a_refused_generated_start_removes_the_folder_it_made(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "t1")
    monkeypatch.setattr(create, "datetime", FrozenClock)
    with pytest.raises(PomliaError, match="not a harvested dataset version"):
        tiny_study(reg, workspace, "t1", None, recent_share=0.5)
    assert not study_dir(workspace, "t1-20261205-101651").exists()


def test_a_study_at_work_is_not_offered_to_resume(workspace: Workspace, reg: Registry) -> None:
    """`--resume` would be refused while its driver is at work: say who drives it instead."""
    tiny_task(workspace, reg, "t1")
    tiny_study(reg, workspace, "t1", "kc")
    DriverBeat(workspace, "kc").start()  # this process drives it
    with pytest.raises(PomliaError) as refused:
        tiny_study(reg, workspace, "t1", "kc")
    message = str(refused.value)
    assert "study 'kc' already exists: study 'kc' is being driven by pid" in message
    assert "pass --resume" not in message and "choose another --study name" in message


def test_a_refused_resume_prints_nothing_before_its_refusal(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second `automl run --resume` driver printed the study header, its budgets and
    `study kc: 0/1 trials (0%)` before `error: study 'kc' is being driven by pid ...`."""
    tiny_task(workspace, reg, "t1")
    tiny_study(reg, workspace, "t1", "kc")
    DriverBeat(workspace, "kc").start()  # this process drives it
    argv = ["pomlia", "--home", str(workspace.home), "automl", "run", "t1", "--study", "kc"]
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    with pytest.raises(SystemExit) as ex:
        main()
    out, err = capsys.readouterr()
    assert ex.value.code == BUSY_EXIT and out == "", out
    err = " ".join(err.split())
    assert err.startswith("error: study 'kc' is being driven by pid"), err


def test_a_resume_of_another_tasks_study_is_refused(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`automl run t2 --study kc --resume` with kc a study of t1 (a mistyped --study) ran
    kc's trials on t1's data and said so only in its header; it is refused, nothing run.
    The task's id names it as well as its name."""
    tiny_task(workspace, reg, "t1")
    tiny_task(workspace, reg, "t2", sizes=(16, 8, 8))
    tiny_study(reg, workspace, "t1", "kc")
    argv = ["pomlia", "--home", str(workspace.home), "automl", "run"]
    monkeypatch.setattr(sys, "argv", [*argv, "t2", "--study", "kc", "--resume"])
    with pytest.raises(SystemExit) as ex:
        main()
    out, err = capsys.readouterr()
    assert ex.value.code == 2 and out == "", out
    assert " ".join(err.split()) == (
        "error: study 'kc' is a study of task 't1', not of task 't2'; resume it with "
        "`pomlia automl run t1 --study kc --resume`"
    )
    assert not study_dir(workspace, "kc").joinpath("driver.json").exists()  # no driver ran
    assert load_spec(workspace, "kc", task="1").task == "t1"  # its id
