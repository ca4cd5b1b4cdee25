"""Folders that are built then published (exported bundles, deployment folders, the HTML
report, index generations) follow the umask like every other workspace folder but the
prediction log's, and keep a set-group-id parent's group: a private umask (077) leaves them
private, a group's umask (002, the shared install of README "Shared workspaces") leaves them
group-writable with the group bit, so the files written inside belong to the workspace's
group. They were set to 0755 outright: readable by everyone under umask 077, and without the
group bit, so a bundle's files got the exporting user's own group."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.files import staged_dir
from pomlia_hpc.workspace import Workspace


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after the test."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def group_folder(path: Path) -> tuple[Path, int]:
    """A set-group-id folder owned by a group other than this process's own, and that group."""
    gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid())
    path.mkdir()
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        pytest.skip("needs a group this user may give a folder to (root, or a member)")
    path.chmod(0o2775)
    return path, gid


@pytest.mark.usefixtures("umask")
def test_a_private_umask_keeps_a_published_folder_private(tmp_path: Path) -> None:
    os.umask(0o077)
    with staged_dir(tmp_path / "bundle") as staged:
        (staged.path / "card.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o700


@pytest.mark.usefixtures("umask")
def test_a_group_umask_keeps_the_group_and_its_bit(tmp_path: Path) -> None:
    shared, gid = group_folder(tmp_path / "shared")
    os.umask(0o002)
    with staged_dir(shared / "bundle") as staged:
        (staged.path / "model.onnx").write_bytes(b"x")
    folder = shared / "bundle"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o2775
    assert (folder / "model.onnx").stat().st_gid == gid  # the workspace's group, not ours


@pytest.mark.usefixtures("umask")
def test_a_report_in_a_group_workspace_stays_the_groups(
    workspace: Workspace, tmp_path: Path
) -> None:
    shared, gid = group_folder(tmp_path / "shared")
    os.umask(0o002)
    res = CliRunner().invoke(app, ["report", "--out", str(shared / "html")])
    assert res.exit_code == 0, res.output
    html = shared / "html"
    assert stat.S_IMODE(html.stat().st_mode) == 0o2775
    assert {p.stat().st_gid for p in html.iterdir()} == {gid}


@pytest.mark.usefixtures("umask")
def test_a_new_registry_file_follows_a_group_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite made registry.db 0644 under `umask 002`: read-only to the workspace's group, so
    another member's `data add` or `automl run` could not record anything."""
    os.umask(0o002)
    monkeypatch.setenv("POMLIA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    res = CliRunner().invoke(app, ["init"])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "home" / "registry.db").stat().st_mode) == 0o664
    os.umask(0o077)
    res = CliRunner().invoke(app, ["--home", str(tmp_path / "private"), "init"])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "private" / "registry.db").stat().st_mode) == 0o600
