"""A write the file system would not take: a full disk or quota, a file-size limit, a
read-only mount, told apart from other errors and said in one line that names the path, the
free space there and what to do (:class:`~pomlia_hpc.errors.StorageError`). Used by the atomic
writers of :mod:`pomlia_hpc.files` and by the registry and index writers, whose libraries
(SQLite, torch, faiss) report the same causes in their own words."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pomlia_hpc.errors import PomliaError, StorageError

#: What a file system answers when it will not take the bytes written to it, whoever writes:
#: the device or the quota is full, the file is over the size limit, the mount is read-only.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def storage_errno(exc: BaseException) -> int | None:
    """The errno (one of :data:`STORAGE_ERRNOS`) behind ``exc``, else None. Found on ``exc``
    itself or on an exception it was raised from or while handling (torch's writers raise a
    ``RuntimeError`` while handling the ``OSError``), or in a C++ library's ``RuntimeError``
    text that quotes the system's message for it (faiss: ``... (No space left on device)``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current.errno
        if isinstance(current, RuntimeError):
            text = str(current)
            found = [n for n in sorted(STORAGE_ERRNOS) if f"({os.strerror(n)})" in text]
            if found:
                return found[0]
        current = current.__cause__ or current.__context__
    return None


def storage_error(
    path: str | Path | None, exc: BaseException, *, kept: bool
) -> StorageError | None:
    """The one-line :class:`StorageError` for writing ``path`` when ``exc`` is a full disk,
    quota or size limit, or a read-only file system (:func:`storage_errno`), else None
    (``exc`` itself when it is one already; None for another :class:`PomliaError`, which a
    command raised from the failed write in its own words, e.g. naming the option whose path
    it was). ``kept``: whether part of what was written may
    still be there (False: the writer removed it, and the message says nothing was kept).
    ``path`` None: the failed write did not say which file it was."""
    if isinstance(exc, StorageError) and exc.filename == str(path):
        return exc
    if isinstance(exc, PomliaError) and not isinstance(exc, StorageError):
        return None  # already said in the command's words: not replaced by a generic one
    number = storage_errno(exc)
    if number is None:
        return None
    where = Path(path) if path is not None else None
    # unnamed: the writer did not say where (a library's write, a copy whose error names
    # its source): the system's cause alone, never a path that may be the wrong one
    at = f" at {where}" if where is not None else " (the file was not named)"
    left = "part of it may be there" if kept else "nothing of it was kept"
    again = "and run the same command again"
    if number == errno.ENOSPC:
        free = f" ({free_space(where)} free there)" if where is not None else ""
        cause = f"no space left on device{at}{free}"
        todo = (
            "free space there, or write to a larger file system (the workspace: POMLIA_HOME "
            f"/ --home), {again}"
        )
    elif number == errno.EDQUOT:
        cause = f"disk quota exceeded{at}"
        todo = f"free space within your quota there (`quota -s` shows it) {again}"
    elif number == errno.EFBIG:
        cause = f"file too large{at} (over the file-size limit, `ulimit -f`)"
        todo = f"raise the limit {again}"
    else:
        cause = f"read-only file system{at}"
        todo = f"expected a writable file system there; remount it or write elsewhere, {again}"
    return StorageError(f"{cause}: {left}; {todo}", number, os.strerror(number), str(where or ""))


def free_space(path: Path) -> str:
    """The space free to this user on ``path``'s file system (its nearest existing folder), as
    ``12.3 MB``; ``unknown`` when it cannot be read."""
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    try:
        return f"{shutil.disk_usage(folder or '.').free / 1e6:,.1f} MB"
    except OSError:
        return "unknown"
