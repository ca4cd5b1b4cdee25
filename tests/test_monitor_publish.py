"""A monitor report's folder and row appear together: what killed runs leave beside a model's
report folders is settled by the next run, and only what a dead writer of this host left."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.monitor import publish
from pomlia_hpc.monitor.publish import publish_report, settle_staged
from pomlia_hpc.registry import MonitorReport, Registry
from pomlia_hpc.workspace import Workspace


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _staged(parent: Path, name: str, pid: int, host: str | None = None) -> Path:
    """A staged report folder for ``parent/name`` as writer ``pid`` of ``host`` names it."""
    field = (host or socket.gethostname()).replace(".", "_")
    staged = parent / f".{name}.{field}.{pid}.tmp"
    staged.mkdir(parents=True)
    (staged / "report.json").write_text("{}")
    return staged


def _row(reg: Registry, final: Path) -> int:
    with reg.session() as s:
        row = MonitorReport(model_id=None, report_path=str(final / "report.json"))
        s.add(row)
        s.flush()
        return int(row.id)


def test_a_dead_writers_staged_folders_are_published_or_removed_by_their_rows(
    workspace: Workspace, reg: Registry
) -> None:
    parent = workspace.path("reports", "blood")
    dead = _dead_pid()
    recorded = _staged(parent, "20261201T020000Z-aaaaaa", dead)  # killed after its commit
    _row(reg, parent / "20261201T020000Z-aaaaaa")
    unrecorded = _staged(parent, "20261201T020000Z-bbbbbb", dead)  # killed before it
    live = _staged(parent, "20261201T020000Z-cccccc", os.getpid())  # a run at work
    remote = _staged(parent, "20261201T020000Z-dddddd", dead, host="other.node")

    assert settle_staged(reg, parent) == [parent / "20261201T020000Z-aaaaaa"]
    assert (parent / "20261201T020000Z-aaaaaa" / "report.json").is_file()
    assert not recorded.exists() and not unrecorded.exists()
    assert not (parent / "20261201T020000Z-bbbbbb").exists()
    assert live.is_dir() and remote.is_dir()  # not ours to judge


def test_a_failed_recording_leaves_no_folder(workspace: Workspace, reg: Registry) -> None:
    final = workspace.path("reports", "blood", "20261201T020000Z-eeeeee")

    def record() -> int:
        raise RuntimeError("database is gone")

    with pytest.raises(RuntimeError, match="database is gone"):
        publish_report(reg, final, {"report.json": "{}"}, record)
    assert list(final.parent.iterdir()) == []
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(MonitorReport)) == 0


def test_a_published_report_has_its_row_and_files(workspace: Workspace, reg: Registry) -> None:
    final = workspace.path("reports", "blood", "20261201T020000Z-ffffff")
    row = publish_report(
        reg, final, {"report.json": "{}", "report.html": "<p>"}, lambda: _row(reg, final)
    )
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]
    assert (final / "report.html").read_text() == "<p>"
    with reg.session() as s:
        got = s.get(MonitorReport, row)
        assert got is not None and got.report_path == str(final / "report.json")


def test_a_full_disk_is_one_message_and_leaves_nothing(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = workspace.path("reports", "blood", "20261201T020000Z-abcdef")

    def full(_folder: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "fsync_tree", full)
    with pytest.raises(PomliaError, match=r"cannot be written \(No space left on device\)"):
        publish_report(reg, final, {"report.json": "{}"}, lambda: _row(reg, final))
    assert list(final.parent.iterdir()) == []
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(MonitorReport)) == 0
