"""Torch's JIT extension cache is one folder per Python environment, unless the user set one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pomlia_hpc.training import build_communication_op, use_interpreter_extension_cache


def test_each_environment_gets_its_own_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folders = []
    for prefix in ("/opt/a/.venv", "/opt/b/.venv", "/opt/a/.venv"):
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        monkeypatch.setattr(sys, "prefix", prefix)
        folders.append(use_interpreter_extension_cache())
    assert folders[0] != folders[1]  # two environments never share (and rebuild) one op
    assert folders[0] == folders[2]  # the same one always finds its build again
    assert all(f.parent == tmp_path / "torch_extensions" for f in folders)


def test_a_folder_set_by_the_user_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert use_interpreter_extension_cache() == tmp_path / "mine"


def test_the_communication_op_is_built_into_the_environment_s_cache() -> None:
    """What `.ci/run` builds beside the lint lands where a training job looks for it (quick
    once built: the suite's first training job would build it otherwise)."""
    folder = build_communication_op()
    assert folder == use_interpreter_extension_cache()
    assert any((folder / "deepspeed_shm_comm").glob("*.so")), sorted(folder.glob("*/*"))
