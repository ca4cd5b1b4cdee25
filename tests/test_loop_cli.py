"""``pomlia loop run`` and ``pomlia loop watch`` turn their shared options into the same loop
settings (the loop itself is replaced: it is tested in test_loop_driver.py and end to end)."""

from __future__ import annotations

from typing import Any

import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.loop.promote import champion
from pomlia_hpc.loop.stages import LoopSettings
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner


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
        (["--margin", "-1"], "--margin -1.0: expected a fraction >= 0"),
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
