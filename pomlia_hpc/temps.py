"""Temporary names of the atomic artifact layer (:mod:`pomlia_hpc.files`), and the sweep of
what writers of this host that died before their rename left.

A temporary is ``.<name>.<host>.<pid>[-<n>].tmp[<suffix>]`` beside its target: the host and
pid name its writer, so a later process can tell a dead writer's leftovers from a live one's.
An old folder that :func:`pomlia_hpc.files.publish_dir` moves aside (its target's name plus
``.old``, numbered) is the one temporary the sweep may put back instead of removing.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import sys
from pathlib import Path

from pomlia_hpc.processes import pid_alive, process_started_s

TEMP_SUFFIX = ".tmp"

#: Seconds by which a temporary's change time may seem to precede its writer's start: the
#: clocks of a file server and of this host differ (a few seconds on a kept cluster).
CLOCK_SKEW_S = 300.0


def host_field(host: str | None = None) -> str:
    """``host`` (default: this host's name) as temporary names carry it: its dots become
    ``_``, so the field never holds a dot and a sweep can split it off exactly (host
    ``sub.node1`` must not pass for ``node1``)."""
    return (socket.gethostname() if host is None else host).replace(".", "_")


def temp_name(path: Path, suffix: str = "") -> Path:
    """The temporary name this process writes ``path`` under (same folder, host and pid);
    ``suffix`` is appended for writers that insist on a file ending (SMAC wants ``.json``).
    The same for every call of the process: for staged folders that a later run must find by
    name (:mod:`pomlia_hpc.monitor.publish`); a file is written under :func:`unique_temp_name`."""
    return path.with_name(f".{path.name}.{host_field()}.{os.getpid()}{TEMP_SUFFIX}{suffix}")


#: Numbers the temporary names of one process apart (``next`` of a count is atomic in CPython).
_temp_numbers = itertools.count(1)


def unique_temp_name(path: Path, suffix: str = "") -> Path:
    """A temporary name for ``path`` of this call alone: :func:`temp_name`'s with a number of
    the process's own after the pid (``.<name>.<host>.<pid>-<n>.tmp``). Two threads writing
    one file (a heartbeat and the end of a driver, both ``driver.json``) shared one name: the
    second truncated the first's half-written temporary, or renamed it away under it."""
    name = f".{path.name}.{host_field()}.{os.getpid()}-{next(_temp_numbers)}"
    return path.with_name(f"{name}{TEMP_SUFFIX}{suffix}")


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files, folders and links of this module's writers in ``folder`` whose
    writer (a process of this host) is gone; those of live writers and of other hosts are
    kept. An old folder that :func:`pomlia_hpc.files.publish_dir` moved aside is never removed
    while its target is missing: a writer killed between its two renames left no folder
    there, and the old one is put back (:func:`put_back_aside`). Returns the removed."""
    host = socket.gethostname()
    removed = []
    root = Path(folder)
    for tmp in sorted(root.glob(f".*{TEMP_SUFFIX}*")) if root.is_dir() else []:
        pid = temp_writer(tmp.name, host)
        if pid is None or writer_alive(pid, tmp):
            continue
        target = aside_target(tmp)
        if target is not None and not target.exists() and not target.is_symlink():
            put_back_aside(target)  # the newest aside of the target, maybe not this one
        settled = target is None or target.exists() or target.is_symlink()
        if os.path.lexists(tmp) and settled:  # a link may dangle
            remove_path(tmp)
            removed.append(tmp)
    return removed


def writer_alive(pid: int, tmp: Path) -> bool:
    """Whether the process of this host that wrote the temporary ``tmp`` as ``pid`` still runs:
    ``pid`` runs, and did not start after ``tmp`` last changed (more than
    :data:`CLOCK_SKEW_S` later). A pid is reused once its process is gone; judged by the pid
    alone, a dead writer's temporary, or its old folder moved aside, was kept for as long as
    an unrelated process with its pid ran (and that folder never put back)."""
    if not pid_alive(pid):
        return False
    started = process_started_s(pid)
    try:
        changed = tmp.lstat().st_ctime  # a write, the writer's rename aside: after its start
    except OSError:  # removed or renamed meanwhile: the pid's word stands
        return True
    return started is None or started <= changed + CLOCK_SKEW_S


def temp_writer(name: str, host: str) -> int | None:
    """The pid of the process of ``host`` that writes under the temporary name ``name`` (as
    :func:`temp_name` and :func:`unique_temp_name` make it:
    ``.<name>.<host>.<pid>[-<n>].tmp[<suffix>]``), or None when ``name`` is not one, or is
    another host's: the host field (:func:`host_field`) must equal ``host``'s, not merely end
    like it, and a target's own name may hold dots (``.x.node7.json.node1.42.tmp`` is
    node1's)."""
    if not name.startswith(".") or TEMP_SUFFIX not in name:
        return None
    stem = name[: name.rindex(TEMP_SUFFIX)]  # .<name>.<host>.<pid>
    rest, _, writer = stem.rpartition(".")
    target, _, field = rest.rpartition(".")
    pid, _, number = writer.partition("-")
    numbered = number.isdigit() or writer == pid  # the number is unique_temp_name's
    if not pid.isdigit() or not numbered or field != host_field(host) or len(target) < 2:
        return None
    return int(pid)


#: What :func:`aside_name` adds to a target's name for the old folder moved aside.
ASIDE_MARK = ".old"


def aside_name(target: Path) -> Path:
    """The name (of this call alone) that a replace moves the old folder ``target`` aside to,
    until the new one is renamed in: ``.<target>.old.<host>.<pid>-<n>.tmp``."""
    return unique_temp_name(target.with_name(target.name + ASIDE_MARK))


def aside_target(tmp: Path) -> Path | None:
    """The folder that ``tmp`` is an old copy of, when ``tmp`` is a folder :func:`aside_name`
    named (numbered, ending ``.old`` before the host); None for every other temporary."""
    name = tmp.name
    if TEMP_SUFFIX not in name or not tmp.is_dir() or tmp.is_symlink():
        return None
    rest, _, writer = name[: name.rindex(TEMP_SUFFIX)].rpartition(".")
    target = rest.rpartition(".")[0]  # .<target>.old
    if "-" not in writer or not target.endswith(ASIDE_MARK) or len(target) <= len(ASIDE_MARK) + 1:
        return None
    return tmp.with_name(target[1 : -len(ASIDE_MARK)])


def put_back_aside(target: Path) -> Path | None:
    """Put back the old folder of ``target`` that a replace of a dead writer of this host moved
    aside, when ``target`` is missing: that writer was killed between moving the old folder
    aside and renaming the new one in, and without this the old folder's contents were lost
    to the next sweep. The newest such folder is renamed back (said on stderr); returns it,
    or None when there is none, ``target`` exists, or a live writer of this host has one aside
    (its replace is in flight: an older dead writer's aside must not take the place its new
    folder is about to take)."""
    if target.exists() or target.is_symlink():
        return None
    host = socket.gethostname()
    pattern = glob.escape(f".{target.name}{ASIDE_MARK}.") + f"*{TEMP_SUFFIX}"
    found = []
    for tmp in target.parent.glob(pattern) if target.parent.is_dir() else []:
        pid = temp_writer(tmp.name, host)
        if pid is None or aside_target(tmp) != target:
            continue
        if writer_alive(pid, tmp):  # a replace in flight: its writer renames its new folder in
            return None
        try:
            found.append((tmp.stat().st_ctime_ns, tmp))  # its move aside set its ctime
        except OSError:  # put back (or removed) by another sweep meanwhile
            continue
    for _ctime, tmp in sorted(found, reverse=True):
        try:
            tmp.rename(target)
        except OSError:  # another process published meanwhile: theirs stays
            return None
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        print(f"put back {target} from {tmp.name} (its replace was killed)", file=sys.stderr)
        return tmp
    return None


#: What :func:`discard_aside` adds to a target's name for an old folder no longer to put back.
GONE_MARK = ".gone"


def discard_aside(old: Path, target: Path) -> None:
    """Remove the old folder ``old`` that a replace moved aside from ``target``, once it is not
    to be put back (the new folder is in, or a concurrent writer's): it is first renamed out
    of the aside names (``.<target>.gone.<host>.<pid>-<n>.tmp``), so that a removal cut short
    (a kill, files that will not go) leaves nothing that :func:`put_back_aside` would put
    back over a later target, or over a target deleted on purpose."""
    gone = unique_temp_name(target.with_name(target.name + GONE_MARK))
    try:
        old.rename(gone)
    except OSError:  # not renamed: removed under its aside name, as before
        gone = old
    shutil.rmtree(gone, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove the file, link or folder tree ``path`` (a missing one is skipped)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
