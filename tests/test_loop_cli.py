"""``pomlia loop run`` and ``pomlia loop watch`` turn their shared options into the same loop
settings (the loop itself is replaced: it is tested in test_loop_driver.py and end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.loop.promote import champion
from pomlia_hpc.loop.stages import LoopSettings
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner
from tests.loop_support import CLASSES


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings each command hands to the loop; the loop does nothing."""
    from pomlia_hpc.loop import api, watch
    from pomlia_hpc.loop.driver import LoopResult

    got: dict[str, Any] = {}

    def run_loop(_reg: Any, _ws: Any, slot: str, cfg: LoopSettings, **kw: Any) -> LoopResult:
        got["run"] = (slot, cfg, kw["new"])
        return LoopResult(run_id=1, status="done", outputs={}, skipped=[], ran=[])

    def fake_watch(_reg: Any, _ws: Any, cfg: LoopSettings, **kw: Any) -> list[Any]:
        got["watch"] = (cfg, kw["once"])
        return []

    monkeypatch.setattr(api, "run_loop", run_loop)
    monkeypatch.setattr(watch, "watch", fake_watch)
    return got


def test_run_and_watch_take_the_same_settings(workspace: Workspace, seen: dict[str, Any]) -> None:
    shared = ["--trials", "3", "--archs", "small_cnn, resnet18", "--min-labels", "5"]
    cli_ok("loop", "run", "blood", *shared, "--force", "--no-recommend", "--recent-share", "0")
    cli_ok("loop", "watch", "--once", *shared, "--no-fine-tune", "--margin", "0.1")
    slot, run_cfg, new = seen["run"]
    watch_cfg, once = seen["watch"]
    assert slot == "blood" and not new and once
    assert run_cfg == LoopSettings(
        trials=3,
        archs=("small_cnn", "resnet18"),
        min_labels=5,
        force=True,
        recommend=False,
        recent_share=None,
    )
    assert watch_cfg == LoopSettings(
        trials=3, archs=("small_cnn", "resnet18"), min_labels=5, fine_tune=False, margin=0.1
    )


def test_a_share_outside_0_1_is_refused(workspace: Workspace, seen: dict[str, Any]) -> None:
    res = runner.invoke(app, ["loop", "watch", "--once", "--recent-share", "1"])
    assert "--recent-share 1.0: expected 0 <= share < 1" in str(res.exception)
    assert seen == {}


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--alpha", "2"], "--alpha 2.0: expected a significance level between 0 and 1"),
        (["--alpha", "0"], "--alpha 0.0: expected a significance level between 0 and 1"),
        (["--margin", "-1"], "--margin -1.0: expected a fraction in [0, 1)"),
        # `--margin 2` (meant as 2 points) let any challenger pass the non-inferiority test.
        (["--margin", "2"], "--margin 2.0: expected a fraction in [0, 1) (e.g. 0.02 for 2"),
        (["--margin", "1"], "--margin 1.0: expected a fraction in [0, 1)"),
    ],
)
def test_gate_levels_are_checked_before_anything_runs(
    workspace: Workspace, seen: dict[str, Any], option: list[str], message: str
) -> None:
    """A level the gate cannot use was found only at the gate (a ValueError traceback after
    harvest and AutoML), and the first promotion of a slot took it without a word."""
    for args in (["loop", "run", "blood"], ["loop", "watch", "--once"]):
        res = runner.invoke(app, [*args, *option])
        assert isinstance(res.exception, InputError) and message in str(res.exception)
    assert seen == {}
    reg = Registry.open(workspace.db_url)
    ckpt = save_demo_checkpoint(workspace.path("models", "m.pt"), num_classes=3)
    register_model(reg, "m", ckpt)
    res = runner.invoke(app, ["deploy", "promote", "prod", "m", *option])
    assert isinstance(res.exception, InputError) and message in str(res.exception)
    assert champion(reg, "prod") is None
    reg.dispose()


def test_promote_refuses_an_unknown_data_set_also_on_a_first_promotion(
    workspace: Workspace,
) -> None:
    """`pomlia deploy promote SLOT M --data nosuchdata` on an empty slot ignored --data and
    exited 0; with --force on a slot with a champion too an unknown data set is refused."""
    reg = Registry.open(workspace.db_url)
    ckpt = save_demo_checkpoint(workspace.path("models", "m.pt"), num_classes=3)
    register_model(reg, "m", ckpt)
    register_model(reg, "m2", ckpt)
    for extra in ([], ["--force"]):
        res = runner.invoke(app, ["deploy", "promote", "prod", "m", "--data", "nosuchdata", *extra])
        assert isinstance(res.exception, NotFoundError), res.output
        assert "dataset 'nosuchdata' not found" in str(res.exception)
        assert champion(reg, "prod") is None
    cli_ok("deploy", "promote", "prod", "m")
    res = runner.invoke(app, ["deploy", "promote", "prod", "m2", "--force", "--data", "nosuchdata"])
    assert isinstance(res.exception, NotFoundError), res.output
    kept = champion(reg, "prod")
    assert kept is not None and kept.model == "m"
    reg.dispose()


def test_even_a_forced_promotion_keeps_the_slots_label_set(workspace: Workspace) -> None:
    """`deploy promote prod demo --force` put a 9-class model on a slot serving 8 classes:
    --force skipped the gate's evidence and, with it, every check."""
    reg = Registry.open(workspace.db_url)
    register_model(reg, "m3", save_demo_checkpoint(workspace.path("models", "a.pt"), num_classes=3))
    register_model(reg, "m4", save_demo_checkpoint(workspace.path("models", "b.pt"), num_classes=4))
    cli_ok("deploy", "promote", "prod", "m3")
    res = runner.invoke(app, ["deploy", "promote", "prod", "m4", "--force"])
    assert isinstance(res.exception, InputError), res.output
    assert "model m4 predicts 4 classes (class_0, class_1, class_2, class_3) but slot prod" in (
        str(res.exception)
    )
    kept = champion(reg, "prod")
    assert kept is not None and kept.model == "m3"
    reg.dispose()


def test_executor_slurm_means_the_cluster_profile_as_for_automl(
    workspace: Workspace, seen: dict[str, Any]
) -> None:
    """`--executor slurm` reached the study as a profile named 'slurm' (none): the loop now
    reads it as `automl run` does, the --cluster profile, which must be a Slurm one."""
    cli_ok("--cluster", "slurm-local", "loop", "watch", "--once", "--executor", "slurm")
    assert seen["watch"][0].executor == "slurm-local"
    res = runner.invoke(app, ["loop", "run", "blood", "--executor", "slurm"])  # local profile
    assert isinstance(res.exception, InputError)
    assert "--executor slurm: the configured cluster profile 'local' is not a Slurm" in str(
        res.exception
    )
    assert "run" not in seen


def test_without_executor_the_global_cluster_profile_runs_the_study(
    workspace: Workspace, seen: dict[str, Any]
) -> None:
    """`pomlia --cluster slurm-local loop run/watch` without --executor ran the study on the
    local executor: the global profile is the default executor now."""
    cli_ok("--cluster", "slurm-local", "loop", "watch", "--once")
    cli_ok("--cluster", "slurm-local", "loop", "run", "blood")
    assert seen["watch"][0].executor == "slurm-local"
    assert seen["run"][1].executor == "slurm-local"


BAD_SETTINGS = [
    (["--min-labels", "-3"], "--min-labels -3: expected an integer >= 1"),
    (["--min-labels", "0"], "--min-labels 0: expected an integer >= 1"),
    (["--trials", "0"], "--trials 0: expected an integer >= 1"),
    (["--archs", "nonet"], "--archs 'nonet': architecture 'nonet' is not known"),
    (["--optimizer", "bayes"], "--optimizer 'bayes': not an optimizer; expected smac or random"),
    (["--executor", "nope"], "cluster profile 'nope' not found"),
    (["--min-epochs", "5", "--max-epochs", "2"], "--min-epochs 5 is larger than --max-epochs 2"),
]


@pytest.mark.parametrize(("option", "message"), BAD_SETTINGS)
def test_bad_settings_are_refused_before_the_loop_is_called(
    workspace: Workspace, seen: dict[str, Any], option: list[str], message: str
) -> None:
    """Each was found only at the stage that used it (the AutoML study, or a traceback for a
    --min-labels below 1), after a loop run was recorded and a harvest, a dataset version and
    a task were made; `loop watch` would have failed every retrain request on it."""
    for args in (["loop", "run", "blood"], ["loop", "watch", "--once"]):
        res = runner.invoke(app, [*args, *option])
        assert isinstance(res.exception, PomliaError), (args, res.output)
        assert message in str(res.exception)
    assert seen == {}


def test_bad_settings_record_no_loop_run(tmp_path: Path, workspace: Workspace) -> None:
    """The loop itself refuses them too (a caller of the API, a resumed run's new options):
    no loop run row, no dataset version, no task."""
    from pomlia_hpc.automl.tasks import list_tasks
    from pomlia_hpc.data.api import ingest, list_versions
    from pomlia_hpc.loop.api import run_loop
    from pomlia_hpc.loop.promote import put_on_slot
    from pomlia_hpc.registry import LoopRun
    from tests.loop_support import make_model

    reg = Registry.open(workspace.db_url)
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        **{f"{s}_images": rng.integers(0, 256, (8, 28, 28, 3), np.uint8) for s in SPLITS},
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in SPLITS},
    )
    v = ingest(workspace, reg, "d", npz, class_names=CLASSES)
    make_model(reg, tmp_path, "m", 1, v.id)
    put_on_slot(reg, workspace, "prod", "m", kind="initial")
    for option, message in BAD_SETTINGS:
        res = runner.invoke(app, ["loop", "run", "prod", *option])
        assert isinstance(res.exception, PomliaError) and message in str(res.exception)
    with pytest.raises(PomliaError, match="--trials 0"):
        run_loop(reg, workspace, "prod", LoopSettings(trials=0), progress=lambda _l: None)
    # A slot that never was is not found (exit 4, as `loop show` says it), with the known
    # ones; it was bad input (exit 2), listing none.
    res = runner.invoke(app, ["loop", "run", "prdo"])
    assert isinstance(res.exception, NotFoundError), res.output
    assert "slot 'prdo' not found; known: prod" in str(res.exception)
    assert "hint: a slot is made by putting a model on it: pomlia deploy promote" in str(
        res.exception
    )
    with reg.session() as s:
        assert s.query(LoopRun).count() == 0
    assert [x.version for x in list_versions(reg)] == [v.version]
    assert list_tasks(reg) == []
    reg.dispose()


@pytest.mark.parametrize(("interval", "once"), [("-5", True), ("nan", True), ("0", False)])
def test_watch_refuses_an_interval_that_is_not_positive(
    workspace: Workspace, seen: dict[str, Any], interval: str, once: bool
) -> None:
    """`--interval -5` crashed at the first sleep, and with --once it exited 0."""
    res = runner.invoke(
        app, ["loop", "watch", *(["--once"] if once else []), "--interval", interval]
    )
    assert isinstance(res.exception, InputError)
    assert f"--interval {float(interval)}: expected a number of seconds > 0" in str(res.exception)
    assert seen == {}


def test_watch_once_accepts_interval_zero(workspace: Workspace, seen: dict[str, Any]) -> None:
    """`loop watch --once --interval 0` was refused, although --once never waits."""
    res = runner.invoke(app, ["loop", "watch", "--once", "--interval", "0"])
    assert res.exit_code == 0, res.output
    assert seen["watch"][1] is True


def test_recent_share_help_and_error_agree(workspace: Workspace) -> None:
    """The help said "0 < share < 1; 0: plain shuffling", the error "expected 0 <= share < 1"."""
    for command in ("run", "watch"):
        res = runner.invoke(app, ["loop", command, "--help"], env={"COLUMNS": "200"})
        shown = " ".join(res.output.split())
        assert "(0 <= share < 1; 0: plain shuffling" in shown, shown
    res = runner.invoke(app, ["loop", "watch", "--once", "--recent-share", "1"])
    assert "expected 0 <= share < 1" in str(res.exception)


def test_the_watcher_itself_refuses_a_bad_interval(workspace: Workspace) -> None:
    from pomlia_hpc.loop.watch import watch

    reg = Registry.open(workspace.db_url)
    for interval, once in ((-5.0, True), (0.0, False)):
        with pytest.raises(InputError, match=f"--interval {interval}: expected"):
            watch(reg, workspace, interval_s=interval, once=once, progress=lambda _l: None)
    reg.dispose()


def test_a_suggested_command_quotes_the_slot(workspace: Workspace) -> None:
    """`loop run 'bad slot/..'` suggested `pomlia deploy promote bad slot/.. MODEL`, which a
    shell splits into other arguments. A slot never promoted to is not found now, and its hint
    names no user value (a placeholder) where the message quotes the slot."""
    res = runner.invoke(app, ["loop", "run", "bad slot/.."])
    assert isinstance(res.exception, NotFoundError), (res.output, res.exception)
    said = str(res.exception)
    assert said.startswith("slot 'bad slot/..' not found; known: none"), said
    assert "pomlia deploy promote SLOT MODEL" in said and "promote bad" not in said, said


def test_loop_show_prints_stage_outputs_as_text_not_python_reprs(
    workspace: Workspace, reg: Registry
) -> None:
    """`loop show` printed each stage's output as a Python dict ('since': None, a reason
    with its hint as "...\\n  hint: ..."); now key value pairs, '-' for unset, and the hint
    on a line of its own."""
    from pomlia_hpc.registry import LoopRun

    reason = "no recommendation: the knowledge base is empty\n  hint: run `pomlia strategy import`"
    with reg.session() as s:
        s.add(
            LoopRun(
                slot="blood",
                status="done",
                stages={
                    "params": {"new": 1},
                    "harvest": {"since": None, "images": 12, "forced": False},
                    "retrain": {"skipped": reason},
                },
            )
        )
    out = cli_ok("loop", "show", "blood")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "harvest: since -; images 12; forced no" in lines, out
    assert "retrain: skipped no recommendation: the knowledge base is empty" in lines, out
    assert "hint: run `pomlia strategy import`" in lines, out
    assert "None" not in out and "{" not in out and "\\n" not in out, out


def test_loop_show_prints_an_error_with_brackets_as_it_is(
    workspace: Workspace, reg: Registry
) -> None:
    """An error's text was read as rich markup: `[val]` vanished, and `[/logs]` (a closing
    tag with nothing open) ended `loop show` in a traceback."""
    from pomlia_hpc.registry import LoopRun

    errors = (
        "monitoring reference /x/ref.npz [val] is damaged",
        "--log-dir /data/[/logs]: no such folder",
    )
    with reg.session() as s:
        for i, error in enumerate(errors):
            s.add(LoopRun(slot=f"s{i}", status="failed", stages={}, error=error))
    for i, error in enumerate(errors):
        assert error in cli_ok("loop", "show", f"s{i}")


def test_loop_show_marks_a_running_loop_run_whose_driver_is_gone(
    workspace: Workspace, reg: Registry
) -> None:
    """`loop show` said "loop run 1 running ... stage automl" after its watcher was killed
    with SIGKILL, with nothing running; now it says the run is stale and what resumes it,
    and says nothing of the kind while the driver is at work."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    from dataclasses import asdict

    from pomlia_hpc.automl.liveness import DRIVER_FILE, DriverRecord
    from pomlia_hpc.loop.claim import run_dir
    from pomlia_hpc.registry import LoopRun

    with reg.session() as s:
        for _ in range(2):
            s.add(LoopRun(slot="blood", status="running", stage="automl", stages={}))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    now = time.time()
    for run_id, pid in ((1, int(dead.stdout)), (2, os.getpid())):
        record = DriverRecord(socket.gethostname(), pid, now, now, None, None, None, None, None)
        folder = run_dir(workspace, "blood", run_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DRIVER_FILE).write_text(json.dumps(asdict(record)))
    out = " ".join(cli_ok("loop", "show", "blood").split())
    first, second = out.split("loop run 2")
    assert f"stale: its driver (pid {int(dead.stdout)} on" in first, out
    assert "`pomlia loop watch --once` resumes it" in first, out
    assert "stale" not in second, out
