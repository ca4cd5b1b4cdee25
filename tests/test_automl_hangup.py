"""A study's bookkeeping does not depend on its terminal: a hang-up (SIGHUP) stops it like
Ctrl-C with its driver's end recorded, a terminal that hung up (EIO) is a reader gone like a
closed pipe, `runs list` tells a study whose driver stopped before registering its best
model, and `--resume` without `--study` takes the newest study that has not finished."""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl import study as study_room
from pomlia_hpc.automl.liveness import DriverBeat
from pomlia_hpc.automl.study import SUMMARY_FILE, study_dir, study_to_resume
from pomlia_hpc.cli import app
from pomlia_hpc.errors import ConfigError
from pomlia_hpc.processes import Hangup, hangup_as_interrupt
from pomlia_hpc.progress import write_line
from pomlia_hpc.registry import Registry, Run, Task
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task


def test_sighup_in_the_block_is_an_interrupt_and_the_default_comes_back() -> None:
    # a suite started under nohup inherits SIGHUP ignored (the block then leaves it so, as it
    # should): start this test from the default whatever started pytest
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(Hangup), hangup_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            signal.sigtimedwait([], 0.5)  # a Python handler runs between bytecodes: give it one
            raise AssertionError("SIGHUP did not interrupt the block")
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)
    assert issubclass(Hangup, KeyboardInterrupt)  # every Ctrl-C clean-up applies


def test_under_nohup_the_block_leaves_sighup_ignored() -> None:
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with hangup_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_hung_up_terminal_is_a_reader_gone_not_an_error() -> None:
    """After a hang-up, writes to the terminal fail with EIO (a closed pipe: EPIPE); both
    mean nobody reads on, and the study must carry on to record its outcome."""

    class HungUp:
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

        def flush(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

        def fileno(self) -> int:
            raise OSError(errno.EBADF, "no descriptor")

    write_line(HungUp(), "study s: 1/2 trials")  # type: ignore[arg-type]


def test_a_hang_up_stops_automl_run_with_a_resume_hint(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))

    def hang_up(*args: Any, **kw: Any) -> Any:
        raise Hangup()

    monkeypatch.setattr(study_room, "run_study", hang_up)
    args = ["automl", "run", "blood", "--archs", "small_cnn", "--study", "h1"]
    res = CliRunner().invoke(app, [*args, "--min-epochs", "1", "--max-epochs", "2"])
    assert res.exit_code == 129, res.output
    out = " ".join(res.output.split())
    assert "hung up (SIGHUP): study h1 stopped before its end" in out, out
    assert "`pomlia automl run blood --study h1 --resume`" in out, out


def _ended_study_without_outcome(workspace: Workspace, reg: Registry, name: str) -> None:
    """Study ``name`` whose trials all ended ok but whose driver stopped before its end."""
    tiny_study(reg, workspace, "blood", name)
    with reg.session() as s:
        tid = s.scalar(select(Task.id).where(Task.name == "blood"))
        metrics = {"objective": 0.5, "val": {"acc": 0.5}, "test": {"acc": 0.4}}
        s.add(Run(task_id=tid, study=name, status="ok", budget=1.0, metrics=metrics))
    beat = DriverBeat(workspace, name)
    beat.start()
    beat.end()


def test_runs_list_tells_a_study_whose_best_model_was_not_registered(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    _ended_study_without_outcome(workspace, reg, "cut")
    res = CliRunner().invoke(app, ["runs", "list", "--task", "blood"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "unfinished: study cut: its trials ended but its driver" in out, out
    assert "before it registered the best model" in out, out
    assert "`pomlia automl run blood --study cut --resume` registers it" in out, out
    (study_dir(workspace, "cut") / SUMMARY_FILE).write_text("{}")  # finished: nothing to say
    res = CliRunner().invoke(app, ["runs", "list", "--task", "blood"])
    assert "unfinished" not in res.output, res.output


def test_resume_without_study_prefers_the_newest_unfinished_study(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    _ended_study_without_outcome(workspace, reg, "v-9009")
    tiny_study(reg, workspace, "blood", "done")  # newer, and finished
    (study_dir(workspace, "done") / SUMMARY_FILE).write_text("{}")
    name, note = study_to_resume(workspace, "blood")
    assert name == "v-9009" and "v-9009" in note and "done" in note, note

    def stop(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt  # which study it took is all this test needs

    monkeypatch.setattr(study_room, "run_study", stop)
    res = CliRunner().invoke(app, ["automl", "run", "blood", "--resume"])
    out = " ".join(res.output.split())
    assert "resuming study v-9009, the newest of task 'blood' that has not finished" in out, out
    assert "study v-9009 on task blood" in out, out
    (study_dir(workspace, "v-9009") / SUMMARY_FILE).write_text("{}")
    assert study_to_resume(workspace, "blood") == ("done", "")  # all finished: the newest


def test_resume_without_study_passes_over_studies_of_a_pipeline_or_a_loop_run(
    workspace: Workspace, reg: Registry
) -> None:
    """An abandoned loop study (newer, unfinished) was resumed and started trials."""
    import json

    from pomlia_hpc.errors import InputError

    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    tiny_study(reg, workspace, "blood", "mine")
    (study_dir(workspace, "mine") / SUMMARY_FILE).write_text("{}")  # finished
    tiny_study(reg, workspace, "blood", "s-loop7", loop_run=7)
    tiny_study(reg, workspace, "blood", "nightly-blood-0a1b2c3d", pipeline="nightly")
    assert json.loads((study_dir(workspace, "s-loop7") / "study.json").read_text())["loop_run"] == 7
    assert study_to_resume(workspace, "blood") == ("mine", "")
    # A loop study made before the loop run was recorded: told by its name and task.
    tiny_task(workspace, reg, "p-loop3", sizes=(64, 24, 24))
    tiny_study(reg, workspace, "p-loop3", "p-loop3")
    spec_file = study_dir(workspace, "p-loop3") / "study.json"
    data = json.loads(spec_file.read_text())
    del data["loop_run"]
    spec_file.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        study_to_resume(workspace, "p-loop3")
    assert "task 'p-loop3' has no study of `automl run` to resume" in str(err.value)
    assert "p-loop3 (loop run 3)" in str(err.value)
    res = CliRunner().invoke(app, ["automl", "run", "p-loop3", "--resume"])
    assert isinstance(res.exception, InputError), res.output  # one line, exit status 2
    assert "p-loop3 (loop run 3)" in str(res.exception)


@pytest.mark.parametrize("text", ['{"task": "t1", "name": ', '["t1"]'])
def test_a_damaged_study_file_is_named_when_resume_looks_for_the_study(
    workspace: Workspace, text: str
) -> None:
    """One study's damaged study.json (cut by a full disk, edited by hand) made every
    `automl run TASK --resume` without --study end in a JSONDecodeError's (or an
    AttributeError's) traceback, exit 70; it is one error naming the file and --study."""
    bad = study_dir(workspace, "junk") / "study.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    with pytest.raises(ConfigError) as refused:
        study_to_resume(workspace, "t1")
    message = str(refused.value)
    assert message.startswith(f"{bad}: "), message
    assert "name it with --study NAME" in message and "\n" not in message


def test_resume_without_study_takes_the_task_by_its_id_too(
    workspace: Workspace, reg: Registry
) -> None:
    """`automl run 1 --resume` (TASK is a name or an id) said "no study of task '1' to
    resume": the studies were looked up by the task's name alone."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    tiny_study(reg, workspace, "blood", "mine")
    with reg.session() as s:
        task_id = s.scalars(select(Task.id).where(Task.name == "blood")).one()
    assert study_to_resume(workspace, str(task_id)) == ("mine", "")
