"""``pomlia loop run`` and ``pomlia loop watch`` turn their shared options into the same loop
settings (the loop itself is replaced: it is tested in test_loop_driver.py and end to end)."""

from __future__ import annotations

from typing import Any

import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.loop.stages import LoopSettings
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
