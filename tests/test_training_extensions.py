"""Torch's JIT extension cache is one folder per Python environment, unless the user set one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pomlia_hpc.training import build_communication_op, use_interpreter_extension_cache


def test_each_environment_gets_its_own_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In an environment of the test's own: the folder set in os.environ outlived the test
    # (monkeypatch restores only what it changed), and the test process's later DeepSpeed
    # jobs built their op into this test's deleted tmp_path, a minute of CPU each.
    folders = []
    for prefix in ("/opt/a/.venv", "/opt/b/.venv", "/opt/a/.venv"):
        env = {"XDG_CACHE_HOME": str(tmp_path)}
        monkeypatch.setattr(sys, "prefix", prefix)
        folders.append(use_interpreter_extension_cache(env))
        assert env["TORCH_EXTENSIONS_DIR"] == str(folders[-1])  # what its jobs inherit
    assert folders[0] != folders[1]  # two environments never share (and rebuild) one op
    assert folders[0] == folders[2]  # the same one always finds its build again
    assert all(f.parent == tmp_path / "torch_extensions" for f in folders)


def test_a_folder_set_by_the_user_is_kept(tmp_path: Path) -> None:
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "mine")}
    assert use_interpreter_extension_cache(env) == tmp_path / "mine"
    assert env == {"TORCH_EXTENSIONS_DIR": str(tmp_path / "mine")}


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    assert use_interpreter_extension_cache() == Path("/somewhere/else")


def test_the_communication_op_is_built_into_the_environment_s_cache() -> None:
    """What `.ci/run` builds beside the lint lands where a training job looks for it (quick
    once built: the suite's first training job would build it otherwise)."""
    folder = build_communication_op()
    assert folder == use_interpreter_extension_cache()
    assert any((folder / "deepspeed_shm_comm").glob("*.so")), sorted(folder.glob("*/*"))
