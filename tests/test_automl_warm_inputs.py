"""What `automl run` and `recommend --write-initial` say about their warm-start and budget
inputs: a file for another task, a recommendation whose architectures --archs leaves out,
strings for numbers, several bad fields, an empty --archs, a folder-like --write-initial, and
the budgets a study chose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.automl import study as study_room
from pomlia_hpc.automl.space import SpaceOptions
from pomlia_hpc.automl.study import create_study
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.strategy import kb
from pomlia_hpc.strategy.warmstart import from_recommendation
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, tiny_task

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["automl", "run", *args])


def _import_kb(reg: Registry) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_v2_yang2023.csv", "v2", meta_path=meta)


def test_a_warm_start_file_written_for_another_task_is_refused_naming_both(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`recommend pneu --write-initial F` records "task": "pneu"; `automl run blood --initial F`
    took it silently."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    warm = tmp_path / "pneu.json"
    warm.write_text(json.dumps({"task": "pneu", "recommendation_id": 4, "configs": [FAST]}))
    res = _run("blood", "--initial", str(warm), "--study", "w1")
    assert isinstance(res.exception, InputError), res.output
    msg = str(res.exception)
    assert f"file '{warm}' was written for task 'pneu', not for task 'blood'" in msg
    assert not workspace.path("runs", "w1").exists()
    # the task's own file (by name) passes that check
    spec = create_study(
        reg, workspace, "blood", name="w2", initial_configs=[FAST], initial_task="blood",
        space=SpaceOptions(archs=("small_cnn",)), n_trials=2, max_epochs=2,
    )  # fmt: skip
    assert spec.initial_configs == [FAST]


def test_bad_entries_name_the_file_every_field_and_a_string_for_a_number(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    warm = tmp_path / "warm.yaml"
    warm.write_text('- {arch: small_cnn}\n- {arch: small_cnn, batch_size: "64", lr: 7, foo: 1}\n')
    res = _run("blood", "--initial", str(warm), "--archs", "small_cnn")
    assert isinstance(res.exception, InputError), res.output
    lines = str(res.exception).splitlines()
    assert lines[0] == f"initial configurations file '{warm}': entry 1: 3 problems:"
    assert "unknown hyperparameter(s) foo" in lines[1]
    assert "value '64' of 'batch_size' is not legal (a string; write the number without" in lines[2]
    assert "value 7 of 'lr' is not legal; expected a number in" in lines[3]


@pytest.mark.parametrize("arch", ["{a: 1}", "[1, 2]"])
def test_an_architecture_that_is_no_name_is_one_line(
    workspace: Workspace, reg: Registry, tmp_path: Path, arch: str
) -> None:
    """`- {arch: {a: 1}}` ended in "TypeError: unhashable type: 'dict'", exit 70."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    warm = tmp_path / "warm.yaml"
    warm.write_text(f"- {{arch: {arch}}}\n")
    res = _run("blood", "--initial", str(warm), "--archs", "small_cnn")
    assert isinstance(res.exception, InputError), res.output
    said = str(res.exception)
    assert said.startswith(f"initial configurations file '{warm}': entry 0: 'arch' is a "), said
    assert said.endswith("expected an architecture name, one of small_cnn"), said


def test_a_recommendation_whose_architectures_archs_leaves_out_is_named(
    workspace: Workspace, reg: Registry
) -> None:
    """`--from-recommendation --archs small_cnn` said `initial configurations: entry 1:
    architecture 'resnet18' is not in this study's space`: the user gave no file."""
    _import_kb(reg)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    archs = from_recommendation(reg, "blood", k=1).archs
    other = next(a for a in ("small_cnn", "resnet18", "mobilenet_v3_small") if a not in archs)
    res = _run("blood", "--from-recommendation", "--recommend-k", "1", "--archs", other)
    assert isinstance(res.exception, InputError), res.output
    msg = " ".join(str(res.exception).split())
    assert msg.startswith("recommendation ") and "initial configurations" not in msg
    assert f"not among --archs {other}: drop --archs" in msg and f"add {archs[0]}" in msg
    with reg.session() as s:  # the refused study's recommendation is withdrawn
        assert s.scalar(select(func.count()).select_from(Recommendation)) == 1


@pytest.mark.parametrize("archs", ["", " ", "small_cnn,"])
def test_an_empty_architecture_list_is_refused(
    workspace: Workspace, reg: Registry, archs: str
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    res = _run("blood", "--archs", archs, "--study", "e1")
    assert isinstance(res.exception, InputError), res.output
    assert str(res.exception).startswith(f"--archs {archs!r}: ")
    assert not workspace.path("runs", "e1").exists()


def test_the_header_states_the_budgets_and_what_chose_them(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))

    def stop(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt  # the header is out: no need to train

    monkeypatch.setattr(study_room, "run_study", stop)
    res = _run("blood", "--archs", "small_cnn", "--study", "h1", "--trials", "5")
    out = " ".join(res.output.split())
    assert "budgets: 20 to 60 epochs per trial (eta 3), 5 trials, 2 at once; epochs: default " \
        "for 64 training images" in out, out  # fmt: skip
    args = ["blood", "--archs", "small_cnn", "--study", "h2", "--min-epochs", "1"]
    res = _run(*args, "--max-epochs", "3", "--budget-epochs", "9")
    out = " ".join(res.output.split())
    assert "budgets: 1 to 3 epochs per trial (eta 3), 20 trials, 2 at once, at most 9 " \
        "epochs in all" in out and "default for" not in out, out  # fmt: skip
    # One given, the other defaulted: the header said "epochs: default ... (--min-epochs,
    # --max-epochs to choose)" though --max-epochs was given.
    res = _run("blood", "--archs", "small_cnn", "--study", "h3", "--max-epochs", "3")
    out = " ".join(res.output.split())
    assert "; minimum epochs: default for 64 training images (--min-epochs to choose)" in out
    assert "epochs: default" not in out.replace("minimum epochs: default", ""), out
    res = _run("blood", "--archs", "small_cnn", "--study", "h4", "--min-epochs", "2")
    out = " ".join(res.output.split())
    assert "; maximum epochs: default for 64 training images (--max-epochs to choose)" in out
    res = _run("blood", "--archs", "small_cnn", "--study", "h5", "--trials", "1")
    assert "(eta 3), 1 trial, 2 at once" in " ".join(res.output.split())  # not "1 trials"


def test_write_initial_ending_in_a_separator_is_refused(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`--write-initial /missing-dir/` wrote a plain file named like the folder."""
    _import_kb(reg)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    target = tmp_path / "missing-dir"
    res = CliRunner().invoke(app, ["recommend", "blood", "--write-initial", f"{target}/"])
    assert isinstance(res.exception, InputError), res.output
    assert "ends in a path separator" in str(res.exception)
    assert not target.exists()
    with reg.session() as s:  # refused before anything was recorded
        assert s.scalar(select(func.count()).select_from(Recommendation)) == 0


def test_a_warm_start_file_that_is_not_text_is_one_error(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`--initial model.pt` (a binary file given by mistake) ended in a UnicodeDecodeError's
    traceback and exit 70, not one line naming the file."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    warm = tmp_path / "model.pt"
    warm.write_bytes(b"PK\x03\x04\xff\xfe\x00binary")
    res = _run("blood", "--initial", str(warm), "--study", "w1")
    assert isinstance(res.exception, InputError), res.output
    msg = str(res.exception)
    assert msg.startswith(f"initial configurations file '{warm}' is not text"), msg
    assert "\n" not in msg
    assert not workspace.path("runs", "w1").exists()


def test_a_warm_start_file_in_utf8_is_read_whatever_the_locale(tmp_path: Path) -> None:
    """The file was read in the locale's encoding: in an ASCII locale (a batch job without
    UTF-8 mode) a UTF-8 comment ("µ", "é") made it "not text" and the study was refused."""
    import os
    import subprocess
    import sys

    warm = tmp_path / "warm.yaml"
    warm.write_text("# lr in µ-steps, café\n- {lr: 0.001}\n", encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = (
        "import sys; from pomlia_hpc.automl.space import read_initial_file; "
        "print(read_initial_file(sys.argv[1]).configs)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(warm)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[{'lr': 0.001}]"
