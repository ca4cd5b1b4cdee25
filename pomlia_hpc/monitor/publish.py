"""Publishing a monitor report: its folder and its registry row appear together or not at all.

The steps, each safe to be killed after:

1. the files are written into a staged folder beside the final one (:func:`~pomlia_hpc.files.
   temp_name`: ``.<folder>.<host>.<pid>.tmp``) and flushed to disk (with the model's report
   folder's entry, when the run made that folder);
2. the ``monitor_reports`` row (and, on an alarm, the retrain request) is committed, its
   ``report_path`` naming the final folder;
3. the staged folder is renamed to the final one.

A kill before 2 leaves a staged folder and no row: nothing is visible, and the next run of the
same model's monitor removes it. A kill between 2 and 3 leaves the row and the complete staged
folder: the next run renames it into place (the row was committed, so the report happened; a
second retrain request for the same drift is never made). A failure of the rename itself
removes the row again. Staged folders of writers still at work, or of another host (whose
processes cannot be checked from here), are left alone.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from sqlalchemy import delete, select

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import (
    TEMP_SUFFIX,
    fsync_made_dirs,
    fsync_tree,
    make_dirs,
    publish_dir,
    temp_name,
    temp_writer,
    writer_alive,
)
from pomlia_hpc.monitor.requests import take_back_alarm
from pomlia_hpc.registry import MonitorReport, Registry

T = TypeVar("T")

#: The file of a report folder that its row's ``report_path`` names.
REPORT_JSON = "report.json"


def publish_report(
    registry: Registry,
    final: Path,
    files: Mapping[str, str],
    record: Callable[[], T],
) -> T:
    """Write ``files`` (name -> text) as the folder ``final`` and call ``record``, which commits
    the rows whose ``report_path`` is ``final/report.json``, so that both exist or neither
    (see the module docstring). Stale staged folders beside ``final`` are settled first
    (:func:`settle_staged`). Returns what ``record`` returns; its errors pass unchanged, with
    nothing left behind."""
    parent = final.parent
    try:
        # a model's first report: its folder's entry flushed too, before the row commits
        fsync_made_dirs(make_dirs(parent))
    except OSError as exc:
        raise _unwritable(final, exc) from exc
    settle_staged(registry, parent)
    staged = temp_name(final)
    shutil.rmtree(staged, ignore_errors=True)  # left by an earlier process with this pid
    try:
        try:
            staged.mkdir()
            for name, text in files.items():
                (staged / name).write_text(text)
            # On disk before the row commits: a row must never outlive a power loss of its files.
            fsync_tree(staged)
        except OSError as exc:  # a full disk, a read-only reports folder: one line, no traceback
            raise _unwritable(final, exc) from exc
        result = record()
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # not recorded: not visible either
        raise
    try:
        published = publish_dir(staged, final)
    except OSError as exc:
        _undo(registry, final, staged)
        raise PomliaError(
            f"monitor report folder {final} could not be published ({exc.strerror or exc}); "
            "the report was not recorded: expected a writable reports folder"
        ) from exc
    except BaseException:
        _undo(registry, final, staged)
        raise
    if not published:  # a folder of that name appeared meanwhile: not ours to keep or replace
        _undo(registry, final, staged)
        raise PomliaError(
            f"monitor report folder {final} exists already (made by someone else); the report "
            "was not recorded: run the monitor again"
        )
    return result


def _unwritable(final: Path, exc: OSError) -> PomliaError:
    """The one-line error for a report folder ``final`` that cannot be written."""
    return PomliaError(
        f"monitor report folder {final} cannot be written ({exc.strerror or exc}); the report "
        "was not recorded: expected a writable reports folder"
    )


def _undo(registry: Registry, final: Path, staged: Path) -> None:
    """Take back a recording whose folder could not be published: its report row is deleted
    and its alarm taken back (:func:`~pomlia_hpc.monitor.requests.take_back_alarm`: a request
    holding other runs' alarms stays), then the staged folder removed. If the rows cannot be
    changed the staged folder stays, for the next run to publish (a row without its folder
    must not be left)."""
    try:
        with registry.session() as s:
            rows = s.scalars(
                select(MonitorReport).where(MonitorReport.report_path == _row_path(final))
            ).all()
            for row in rows:
                take_back_alarm(s, row.id, row.model_id)
            s.flush()  # the requests no longer name the report before it goes
            s.execute(delete(MonitorReport).where(MonitorReport.report_path == _row_path(final)))
    except Exception:
        return
    shutil.rmtree(staged, ignore_errors=True)


def _row_path(final: Path) -> str:
    """The ``report_path`` the row of the report folder ``final`` records."""
    return str(final / REPORT_JSON)


def settle_staged(registry: Registry, parent: Path) -> list[Path]:
    """Finish what killed monitor runs left in ``parent`` (a model's report folder): a staged
    report folder of a dead writer of this host is renamed into place when its row was
    committed, else removed. Returns the final folders published."""
    host = socket.gethostname()
    published: list[Path] = []
    for staged in sorted(parent.glob(f".*{TEMP_SUFFIX}")) if parent.is_dir() else []:
        pid = temp_writer(staged.name, host)
        final = _final_of(staged)
        if pid is None or writer_alive(pid, staged) or final is None or not staged.is_dir():
            continue  # not a staged folder, another host's, or its writer is at work
        with registry.session() as s:
            recorded = s.scalar(
                select(MonitorReport.id).where(
                    MonitorReport.report_path.endswith(
                        f"/{parent.name}/{final.name}/{REPORT_JSON}", autoescape=True
                    )
                )
            )
        try:
            if recorded is not None and publish_dir(staged, final):
                published.append(final)
            else:
                shutil.rmtree(staged)
        except OSError:
            continue  # another run settled it meanwhile
    return published


def _final_of(staged: Path) -> Path | None:
    """The folder ``staged`` (``.<name>.<host>.<pid>.tmp``) is staged for; report folder names
    hold no dot, so the name is everything before the first dot after the leading one."""
    name = staged.name[1:].split(".", 1)[0]
    return staged.with_name(name) if name else None
