"""The commit a result records is pomlia's own: never that of another project's checkout
that merely holds the environment pomlia is installed in."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pomlia_hpc.provenance import code_version


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_an_installed_package_inside_another_checkout_records_no_commit(tmp_path: Path) -> None:
    """pomlia installed in a venv inside the user's own git project (``project/.venv/lib/
    .../site-packages``) recorded that project's HEAD as pomlia's commit in every study's and
    model's lineage: a provenance that pointed at unrelated code."""
    project = tmp_path / "my project"  # a space in the path, as home folders have
    site = project / ".venv" / "lib" / "site-packages"
    (site / "pomlia_hpc").mkdir(parents=True)
    _git(project, "init", "-q")
    _git(project, "commit", "-q", "--allow-empty", "-m", "the user's work")
    assert "commit" not in code_version(site)
    # The checkout of pomlia itself (the package folder at its top) still gives its commit.
    (project / "pomlia_hpc").mkdir()
    head = _git(project, "rev-parse", "--short=12", "HEAD")
    assert code_version(project)["commit"] == head
