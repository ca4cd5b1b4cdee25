"""A DeepSpeed op build (minutes of cc1plus on first use) says so in the job's log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc import training


def test_an_op_build_and_a_wait_for_its_lock_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial spent minutes with no line between `trial: run 8 ...` and DeepSpeed's `built
    successfully`; the next waited >4 min on the same folder's lock without a word."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    calls: list[str] = []

    def fake_jit_load(self: Any, verbose: bool = True) -> str:
        folder = tmp_path / str(self.name)
        folder.mkdir(exist_ok=True)
        (folder / "lock").touch()  # another job's build holds the lock
        time.sleep(0.35)
        (folder / "lock").unlink()
        (folder / f"{self.name}.so").touch()
        calls.append(self.name)
        return "module"

    monkeypatch.setattr(OpBuilder, "jit_load", fake_jit_load)
    monkeypatch.setattr(training, "BUILD_NOTE_EVERY_S", 0.1)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    training.announce_op_builds()
    training.announce_op_builds()  # once only: no second wrapper

    class Op(OpBuilder):
        NAME = "fake_op"

        def __init__(self) -> None:
            self.name = "fake_op"

        def absolute_name(self) -> str:
            return "fake_op"

        def sources(self) -> list[str]:
            return []

    capsys.readouterr()  # DeepSpeed's own import lines
    assert Op().jit_load() == "module"
    out = capsys.readouterr().out
    assert "] building DeepSpeed op fake_op (first use in this environment, may take " in out
    assert "DeepSpeed op fake_op: still waiting for the build lock" in out, out
    assert Op().jit_load() == "module"  # built: nothing said
    assert "DeepSpeed op" not in capsys.readouterr().out and calls == ["fake_op", "fake_op"]
