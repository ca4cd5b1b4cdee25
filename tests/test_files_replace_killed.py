"""A replace of a published folder killed between its two renames (``files.publish_dir``):
the old folder was moved aside and the new one not yet renamed in, so no folder stood at the
target, and the next sweep of temporaries removed the moved-aside old folder too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pomlia_hpc.files import publish_dir, staged_dir, sweep_stale_temps

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


def _killed_replace(tmp_path: Path) -> Path:
    """``tmp_path/bundle`` (holding ``a`` = "old") after a replace killed between its renames."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "a").write_text("old")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a").write_text("new")
    cmd = [sys.executable, "-c", KILLED_REPLACE, str(target), str(staged)]
    assert subprocess.run(cmd, cwd=ROOT, check=False).returncode == 9
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
