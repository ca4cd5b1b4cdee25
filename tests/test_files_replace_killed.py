"""A replace of a published folder killed between its two renames (``files.publish_dir``):
the old folder was moved aside and the new one not yet renamed in, so no folder stood at the
target, and the next sweep of temporaries removed the moved-aside old folder too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pomlia_hpc.files import (
    aside_name,
    publish_dir,
    put_back_aside,
    staged_dir,
    sweep_stale_temps,
)
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.temps import CLOCK_SKEW_S

ROOT = Path(__file__).resolve().parents[1]

#: A process that replaces argv[1] with argv[2] and is killed (SIGKILL's exit, no clean-up)
#: right before renaming the new folder in, after the old one was moved aside.
KILLED_REPLACE = """
import os, sys
from pathlib import Path
from pomlia_hpc import files
target, staged = Path(sys.argv[1]), Path(sys.argv[2])
real = Path.rename
def rename(self, dst):
    if self == staged:
        os._exit(9)
    return real(self, dst)
Path.rename = rename
files.publish_dir(staged, target, replace=True)
"""


#: A process that replaces argv[1] with argv[2] and is killed once the new folder is in,
#: as it begins to remove the old one.
KILLED_REMOVING = """
import os, shutil, sys
from pathlib import Path
from pomlia_hpc import files
def rmtree(*args, **kwargs):
    os._exit(9)
shutil.rmtree = rmtree
files.publish_dir(Path(sys.argv[2]), Path(sys.argv[1]), replace=True)
"""


def _replace_killed_by(script: str, tmp_path: Path) -> Path:
    """``tmp_path/bundle`` (``a`` = "old") after a replace by ``staged`` (``a`` = "new") that
    ``script`` killed (exit 9) at its moment."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "a").write_text("old")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a").write_text("new")
    cmd = [sys.executable, "-c", script, str(target), str(staged)]
    assert subprocess.run(cmd, cwd=ROOT, check=False).returncode == 9
    return target


def _killed_replace(tmp_path: Path) -> Path:
    """``tmp_path/bundle`` (holding ``a`` = "old") after a replace killed between its renames."""
    target = _replace_killed_by(KILLED_REPLACE, tmp_path)
    assert not target.exists()  # the moment the fix is about
    return target


def test_the_sweep_puts_back_the_old_folder_of_a_killed_replace(tmp_path: Path) -> None:
    target = _killed_replace(tmp_path)
    asides = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.old.")]
    assert len(asides) == 1
    assert sweep_stale_temps(tmp_path) == []  # nothing removed: the old folder is back
    assert (target / "a").read_text() == "old"
    assert not asides[0].exists()
    # Once the target stands, the aside of a dead writer is an ordinary leftover again
    asides[0].mkdir()
    assert sweep_stale_temps(tmp_path) == asides and (target / "a").read_text() == "old"


def test_the_old_folder_of_a_writer_whose_pid_a_later_process_took_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid is reused once its process is gone. Judged by the pid alone, the old folder of a
    killed replace whose pid an unrelated process took stayed aside (a replace in flight)
    for as long as that process ran, and no folder stood at the target meanwhile."""
    target = _killed_replace(tmp_path)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.old.")]
    dead = aside.name.split(".")[-2].partition("-")[0]
    reused = aside.rename(aside.with_name(aside.name.replace(f".{dead}-", f".{os.getpid()}-")))
    assert sweep_stale_temps(tmp_path) == [] and reused.is_dir()  # this process: at work
    assert not target.exists()
    later = time.time() + 2 * CLOCK_SKEW_S  # the process with the pid started after the rename
    monkeypatch.setattr("pomlia_hpc.temps.process_started_s", lambda pid: later)
    assert sweep_stale_temps(tmp_path) == []
    assert (target / "a").read_text() == "old" and not reused.exists()


def test_the_next_publish_puts_back_the_old_folder_first(tmp_path: Path) -> None:
    target = _killed_replace(tmp_path)
    new = tmp_path / "next"
    new.mkdir()
    (new / "a").write_text("next")
    # Without replace the old folder counts as there (the killed replace never happened)
    assert not publish_dir(new, target)
    assert (target / "a").read_text() == "old"
    with staged_dir(target, replace=True) as staged:
        (staged.path / "a").write_text("next")
    assert staged.published and (target / "a").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "next", "staged"]


def _dead_pid() -> int:
    cmd = [sys.executable, "-c", "import os; print(os.getpid())"]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def _aside(target: Path, pid: int, content: str) -> Path:
    """An old folder of ``target`` moved aside by writer ``pid`` (of this host), holding ``a``."""
    name = aside_name(target).name.replace(f".{os.getpid()}-", f".{pid}-")
    aside = target.with_name(name)
    aside.mkdir()
    (aside / "a").write_text(content)
    return aside


def test_no_old_folder_is_put_back_while_a_replace_is_in_flight(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    # v1: left by a writer killed while removing it, after its new folder (v2) was in
    dead = _aside(target, _dead_pid(), "v1")
    # v2: moved aside by a live writer (this process) about to rename v3 in
    live = _aside(target, os.getpid(), "v2")
    assert sweep_stale_temps(tmp_path) == []
    assert not target.exists()  # the live writer's v3 takes it, not the older v1
    assert (dead / "a").read_text() == "v1" and (live / "a").read_text() == "v2"


def test_a_replace_killed_while_removing_the_old_folder_leaves_none_to_put_back(
    tmp_path: Path,
) -> None:
    target = _replace_killed_by(KILLED_REMOVING, tmp_path)
    assert (target / "a").read_text() == "new"
    shutil.rmtree(target)  # deleted on purpose
    swept = sweep_stale_temps(tmp_path)
    assert not target.exists()  # the old folder does not come back
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert len(swept) == 1


def test_a_sweep_whose_aside_another_put_back_meanwhile_does_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _killed_replace(tmp_path)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.old.")]
    alive = pid_alive

    def other_sweep_first(pid: int) -> bool:
        if aside.exists():  # the other sweep puts it back between this one's glob and stat
            aside.rename(target)
        return alive(pid)

    monkeypatch.setattr("pomlia_hpc.temps.pid_alive", other_sweep_first)
    assert put_back_aside(target) is None  # the other one did it
    assert (target / "a").read_text() == "old"
