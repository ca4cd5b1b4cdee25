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


def test_a_report_not_published_takes_back_only_its_own_alarm(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undoing a report whose alarm was added to an open request deleted the whole request,
    with the alarms of the other runs it held."""
    from pomlia_hpc.monitor.requests import record_alarm
    from pomlia_hpc.registry import Model, RetrainRequest

    with reg.session() as s:
        model = Model(name="m")
        s.add(model)
        s.flush()
        model_id = int(model.id)
    parent = workspace.path("reports", "m")

    def alarming(name: str) -> tuple[int, int]:
        final = parent / name

        def record() -> tuple[int, int]:
            with reg.session() as s:
                row = MonitorReport(model_id=model_id, report_path=str(final / "report.json"))
                s.add(row)
                s.flush()
                got = record_alarm(s, model_id=model_id, report_id=row.id, reason="mmd", meta={})
                return int(row.id), got.request_id

        return publish_report(reg, final, {"report.json": "{}"}, record)

    def unpublishable(name: str) -> None:
        def refused(_staged: Path, _final: Path) -> bool:
            raise OSError(13, "Permission denied")

        with monkeypatch.context() as m:
            m.setattr(publish, "publish_dir", refused)
            with pytest.raises(PomliaError, match="could not be published"):
                alarming(name)

    def request(request_id: int) -> tuple[str, int | None, dict[str, object]] | None:
        with reg.session() as s:
            row = s.get(RetrainRequest, request_id)
            return None if row is None else (row.status, row.monitor_report_id, dict(row.meta))

    first, req = alarming("20261201T020000Z-aaaaaa")
    unpublishable("20261202T020000Z-bbbbbb")  # added to request `req`, then taken back
    got = request(req)
    assert got is not None and got[1] == first
    assert got[2]["alarms"] == 1 and "last_alarm" not in got[2] and got[2]["alarm_reports"] == []
    second, again = alarming("20261203T020000Z-cccccc")
    assert again == req
    unpublishable("20261204T020000Z-dddddd")
    got = request(req)
    assert got is not None and got[2]["alarms"] == 2 and got[2]["alarm_reports"] == [second]
    assert got[2]["last_alarm"]["report_id"] == second  # type: ignore[index]
    with reg.session() as s:
        row = s.get(RetrainRequest, req)
        assert row is not None
        row.status = "done"
        assert s.scalar(select(func.count()).select_from(MonitorReport)) == 2
    unpublishable("20261205T020000Z-eeeeee")  # its own new request: deleted with it
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(RetrainRequest)) == 1
        assert s.scalar(select(func.count()).select_from(MonitorReport)) == 2
    # Another run's alarm joins the request this report created before its folder fails.
    joined: list[int] = []
    with monkeypatch.context() as m:

        def refused(_staged: Path, _final: Path) -> bool:
            with reg.session() as s:
                row = MonitorReport(model_id=model_id, report_path="elsewhere/report.json")
                s.add(row)
                s.flush()
                record_alarm(s, model_id=model_id, report_id=row.id, reason="psi", meta={})
                joined.append(int(row.id))
            raise OSError(13, "Permission denied")

        m.setattr(publish, "publish_dir", refused)
        with pytest.raises(PomliaError, match="could not be published"):
            alarming("20261206T020000Z-ffffff")
    with reg.session() as s:
        rows = s.scalars(select(RetrainRequest).where(RetrainRequest.status == "open")).all()
        assert len(rows) == 1 and rows[0].monitor_report_id == joined[0]
        assert rows[0].meta["alarms"] == 1 and "last_alarm" not in rows[0].meta


def test_an_alarm_added_to_a_request_from_before_the_report_list_is_taken_back_exactly(
    reg: Registry,
) -> None:
    """A request recorded before ``alarm_reports`` (its alarms counted, the newest kept, no
    list): an alarm added to it now is listed, so taking it back restores the request as it
    was; the alarms before are not listed, and need not be (their reports were published)."""
    from pomlia_hpc.monitor.requests import record_alarm, take_back_alarm
    from pomlia_hpc.registry import Model, RetrainRequest

    with reg.session() as s:
        model = Model(name="m")
        s.add(model)
        s.flush()
        reports = [MonitorReport(model_id=model.id, triggered=True) for _ in range(4)]
        s.add_all(reports)
        s.flush()
        ids, model_id = [int(r.id) for r in reports], int(model.id)
        last = {"at": "2026-12-04T02:00:00+00:00", "report_id": ids[2], "reason": "mmd"}
        old = {"alarms": 3, "last_alarm": last}  # reports ids[0] (its own), ids[1], ids[2]
        s.add(RetrainRequest(model_id=model_id, monitor_report_id=ids[0], reason="mmd", meta=old))
    with reg.session() as s:
        assert record_alarm(s, model_id=model_id, report_id=ids[3], reason="psi", meta={}).merged
    with reg.session() as s:
        take_back_alarm(s, ids[3], model_id)
    with reg.session() as s:
        row = s.scalars(select(RetrainRequest)).one()
        assert (row.status, row.monitor_report_id) == ("open", ids[0])
        assert row.meta == {**old, "alarm_reports": []}
