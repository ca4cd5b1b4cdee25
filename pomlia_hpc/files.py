"""Small helpers about files on disk, shared by the rooms: the one atomic writer.

:func:`write_atomic` writes a whole file or nothing: the bytes go to a temporary name in the
same folder (``.<name>.<host>.<pid>.tmp``: unique per writer, even across the nodes that share
the file system), are flushed to disk, renamed over the target (atomic on POSIX), and the folder
entry is flushed too, so a crash or a power cut leaves the old file or the new one, never half.
:func:`sweep_stale_temps` removes what writers on this host that died before their rename left.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (renames into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """The temporary name this process writes ``path`` under (same folder, host and pid)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


def write_atomic(
    path: str | Path,
    data: bytes | str | Callable[[IO[bytes]], Any],
    *,
    fsync: bool = True,
) -> Path:
    """Write ``path`` all at once: ``data`` (bytes, text as UTF-8, or a function that writes
    to the open binary file) under :func:`temp_name`, flushed, renamed over ``path``, the folder
    flushed. Creates the folder; nothing is left behind when writing fails. ``fsync=False``
    skips both flushes (files that are cheap to make again). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)
    return path


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """:func:`write_atomic` of ``data`` as JSON (values JSON does not know as ``str``)."""
    return write_atomic(path, json.dumps(data, indent=indent, default=str))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts: its parent may still
    rename)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files of :func:`write_atomic` in ``folder`` whose writer (a process of
    this host) is gone; those of live writers and of other hosts are kept. Returns the removed."""
    host = socket.gethostname()
    removed = []
    root = Path(folder)
    for tmp in root.glob(f".*.{host}.*{TEMP_SUFFIX}") if root.is_dir() else []:
        pid = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
