"""Small helpers about files on disk, shared by the rooms: the one atomic artifact layer.

Every file, folder and link the project publishes appears whole or not at all:

- :func:`write_atomic` (:func:`write_npz` and :func:`write_json_atomic` for arrays and JSON,
  ``models.checkpoint.write_torch`` for torch objects, as this module imports no torch;
  :func:`atomic_target` for writers that want a path, such as SMAC's ``save``) writes a whole
  file or nothing: the bytes go to a temporary name in the same folder
  (``.<name>.<host>.<pid>-<n>.tmp``: unique per writer and per call, even across the nodes
  that share the file system and the threads of one process), are flushed to disk, renamed
  over the target (atomic on POSIX), and the folder entry is flushed too (with the folders the
  call made for it), so a crash or a power cut leaves the old file or the new one, never
  half.
- :func:`staged_dir` builds a folder under the same kind of temporary name and publishes it
  with one rename (:func:`publish_dir`), its files flushed first; a failed build leaves nothing.
- :func:`replace_link` points a symbolic link elsewhere by renaming a new link over it.
- :func:`sweep_stale_temps` removes what writers on this host that died before their rename
  left (files, folders and links).
- :func:`held_lock` makes a check and the claim that follows it one step for every process
  that takes the same lock file (e.g. "no driver at work, so I am the driver now").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pomlia_hpc.errors import BusyError, InputError
from pomlia_hpc.storage import storage_error

# The temporary names and their sweep live in temps.py; re-exported: callers see one layer
from pomlia_hpc.temps import (  # noqa: F401
    TEMP_SUFFIX,
    aside_name,
    discard_aside,
    host_field,
    put_back_aside,
    sweep_stale_temps,
    temp_name,
    temp_writer,
    unique_temp_name,
    writer_alive,
)
from pomlia_hpc.temps import remove_path as _remove


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (renames into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_path(src: Path, dst: Path) -> None:
    """Rename ``src`` (a file or folder) to ``dst`` in one step (same file system; an existing
    file ``dst`` is replaced), and flush the folder's entries."""
    src.replace(dst)
    fsync_path(dst.parent)


@contextlib.contextmanager
def atomic_target(path: str | Path, *, fsync: bool = True, suffix: str = "") -> Iterator[Path]:
    """The temporary name to write ``path`` under (:func:`unique_temp_name`), for writers that
    take a file name: when the block ends without an error the file is flushed, renamed over
    ``path`` and the folder flushed; otherwise it is removed. Creates the folder, and flushes
    the entries of the folders it made too (:func:`fsync_made_dirs`). ``fsync=False`` skips
    the flushes (files that are cheap to make again); ``suffix`` as for :func:`temp_name`.
    A ``path`` that is a device, pipe or socket is refused: the rename would replace it with a
    regular file (as root, ``/dev/full`` or ``/dev/null``). A link to one is refused too: the
    rename would replace the link, not write where it leads (``/dev/stdout``), which is not
    what the user asked for either."""
    path = Path(path)
    if is_special_file(path):
        raise InputError(
            f"{path} is not a regular file (a device, pipe or socket): expected the path of a "
            "file to write; it was left as it is"
        )
    made = make_dirs(path.parent)
    tmp = unique_temp_name(path, suffix)
    tmp.unlink(missing_ok=True)  # left by an earlier process with this pid and number
    try:
        yield tmp
        if fsync and not tmp.is_symlink():
            fsync_path(tmp)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # first: the free space the message shows is then real
        full = storage_error(path, exc, kept=False)
        if full is not None and full is not exc:
            raise full from exc
        raise
    if fsync:
        fsync_path(path.parent)
        fsync_made_dirs(made)


def is_special_file(path: Path) -> bool:
    """Whether ``path`` (or what its link points to) is a device, pipe or socket: one stat."""
    try:
        mode = path.stat().st_mode
    except OSError:  # not there (or not reachable): the write says what is wrong
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def fsync_made_dirs(made: list[Path]) -> None:
    """Flush the entry of each folder in ``made`` (as :func:`make_dirs` reports them) in its
    parent, so a file renamed into the innermost one and flushed there survives a power cut:
    a folder's own new entry is in its parent, which nothing else flushes. Folders that
    existed before are not this call's to flush, and one that cannot be opened for reading
    (write and search only: ``0o300``, a drop-box) is skipped, as the write has succeeded."""
    for folder in reversed(made):
        try:
            fsync_path(folder.parent)
        except PermissionError:  # the file is in place: no failure to report for it
            continue


def write_atomic(
    path: str | Path,
    data: bytes | str | Callable[[IO[bytes]], Any],
    *,
    fsync: bool = True,
    mode: int | None = None,
) -> Path:
    """Write ``path`` all at once: ``data`` (bytes, text as UTF-8, or a function that writes
    to the open binary file) under :func:`unique_temp_name`, flushed, renamed over ``path``,
    the folder flushed (:func:`atomic_target`). Creates the folder; nothing is left behind when
    writing fails. ``fsync=False`` skips the flushes (files that are cheap to make again).
    ``mode``: the permission bits the file is created with (``0o600`` for a secret; the umask
    still applies), never wider for an instant; ``None``: the umask's default. Returns ``path``."""
    path = Path(path)
    with atomic_target(path, fsync=fsync) as tmp, _create(tmp, mode) as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode() if isinstance(data, str) else data)
    return path


def _create(path: Path, mode: int | None) -> IO[bytes]:
    """``path`` opened for writing, created with ``mode`` (a chmod afterwards would leave a
    moment in which others can open it, and keep what they opened then)."""
    if mode is None:
        return open(path, "wb")
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")


def write_npz(
    path: str | Path, arrays: Mapping[str, Any], *, compress: bool = True, fsync: bool = True
) -> Path:
    """:func:`write_atomic` of ``arrays`` as an ``.npz`` file (zip-compressed unless
    ``compress=False``); returns ``path``."""
    import numpy as np

    save: Any = np.savez_compressed if compress else np.savez
    return write_atomic(path, lambda f: save(f, **arrays), fsync=fsync)


def write_json_atomic(
    path: str | Path, data: Any, *, indent: int | None = 1, sort_keys: bool = False
) -> Path:
    """:func:`write_atomic` of ``data`` as JSON (values JSON does not know as ``str``)."""
    return write_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str))


#: Permission bits of files and folders that hold clinical data (a server's prediction log
#: and kept inputs): the owner's alone whatever the umask, which governs the rest.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(path: str | Path) -> Path:
    """Create folder ``path`` and its missing parents, each made ``0o700`` (:data:`PRIVATE_DIR`)
    from the start; folders that exist are left as they are (they are not this call's to
    change). Returns ``path``."""
    target = Path(path)
    for folder in (*reversed(target.parents), target):
        if folder.is_dir():
            continue
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made by another process meanwhile: theirs, left as it is
            continue
        # mkdir's mode passes through the umask: a umask that removes owner bits (0o277)
        # would leave a folder its owner cannot enter, so the mode is set outright.
        folder.chmod(PRIVATE_DIR)
    return target


def current_umask() -> int:
    """This process's umask, read from ``/proc`` where it is shown (no change of it, which
    another thread could see), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def keep_owner_access(folder: Path) -> None:
    """Give ``folder``'s owner read, write and search access if the umask took any of them
    (``0o277``), keeping every other bit. Never a mode set outright: that would override a
    group's umask (``0o002``: 0775, ``0o077``: 0700) and drop the set-group-id bit, so files
    written inside would get the writer's own group, unreadable to the workspace's group."""
    bits = stat.S_IMODE(folder.stat().st_mode)
    if bits & 0o700 != 0o700:
        folder.chmod(bits | 0o700)


def make_dirs(path: str | Path) -> list[Path]:
    """Create folder ``path`` and its missing parents; return the folders this call created,
    outermost first, so that a command that fails afterwards can remove them again
    (:func:`remove_made_dirs`). If creating one fails, those made so far are removed and the
    :class:`OSError` is raised."""
    target = Path(path)
    if target.is_dir():  # the common case, a stat instead of one per folder above
        return []
    missing = [p for p in (target, *target.parents) if not p.exists() and not p.is_symlink()]
    made = list(reversed(missing))
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        # Only those that exist now: rmdir of one never made can fail otherwise than with
        # ENOENT (a name too long: ENAMETOOLONG), which would stop the removal above it.
        remove_made_dirs([p for p in made if os.path.lexists(p)])
        raise
    return made


def check_png_suffix(path: str | Path, what: str) -> Path:
    """Refuse ``path`` for a PNG image unless it ends in ``.png`` (any case), before any work:
    the writers write PNG whatever the name says, and ``x.jpg`` holding PNG data misleads
    every viewer. ``what`` names the path in the message (``--png``, ``sample grid``)."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise InputError(
            f"{what} '{out}' has suffix '{out.suffix}': expected a .png path (the file is "
            "written as PNG)"
        )
    return out


#: Suffixes that make a path read as an image file, not a folder (``--out x.png``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".tif", ".tiff", ".gif", ".webp")


def check_folder_path(path: str | Path, what: str, writes: str) -> Path:
    """Refuse ``path`` as a folder for several output files, before any work, when it reads
    as an image file (``x.png``: the command made a folder named ``x.png``) and is not an
    existing folder. ``what`` names the path in the message (``--out``), ``writes`` says
    which files go into the folder."""
    out = Path(path)
    if out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        raise InputError(
            f"{what} {out}: is an image file name, but {what} is a folder, into which the "
            f"command writes {writes}; expected a folder path (e.g. {what} "
            f"{out.with_suffix('')})"
        )
    return out


def probe_writable(folder: str | Path) -> None:
    """Create and remove a temporary file in ``folder``; raises the :class:`OSError` of a
    folder where nothing can be written. A probe, not ``os.access``: root passes that check
    where the file system refuses (``/proc``, a read-only mount)."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".pomlia-probe-")
    os.close(fd)
    Path(probe).unlink()


def remove_made_dirs(made: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` reported (outermost first), deepest first and each
    only while empty: what the command wrote is its own to clean up, and what another process
    put there meanwhile stays (and with it the folders above)."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue  # never made (creation failed before it)
        except OSError:
            return  # not empty: keep it and everything above it


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a second name of the file ``src`` (a hard link: no bytes copied), or a copy
    where the file system refuses a link (another file system, no hard links). Safe for files
    that are only ever replaced whole by rename (every writer of :mod:`pomlia_hpc.files`): a
    new ``src`` is a new file, and removing either name leaves the other."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_counted(paths: list[Path]) -> int:
    """Remove the files and folders ``paths`` (missing ones are skipped); returns the bytes of
    the files there, counted just before: what a finished training frees (its resume state)."""
    freed = 0
    for path in paths:
        inside = path.rglob("*") if path.is_dir() and not path.is_symlink() else [path]
        for file in inside:
            with contextlib.suppress(FileNotFoundError):
                if file.is_symlink() or not file.is_dir():
                    freed += file.lstat().st_size
        _remove(path)
    return freed


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and ``folder``) to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root, name)
            if not p.is_symlink():
                fsync_path(p)
        fsync_path(Path(root))


def publish_dir(staged: Path, target: Path, *, replace: bool = False, fsync: bool = True) -> bool:
    """Rename the finished folder ``staged`` to ``target`` (same file system), its files flushed
    first and the parent folder after (``fsync=False``: neither, for folders that are cheap to
    make again).

    When ``target`` exists and is not empty (also when it appears meanwhile, made by a
    concurrent writer): with ``replace``, the old folder is moved aside under a temporary
    name, the new one renamed in and the old one removed (readers see the old or the new
    folder, and for a moment neither); without, nothing happens and False is returned,
    ``staged`` left to the caller (to drop, or to publish under another name). A missing
    ``target`` whose earlier replace was killed between its renames gets its old folder back
    first (:func:`put_back_aside`), as if that replace had not begun."""
    made = make_dirs(target.parent)
    if fsync:
        fsync_tree(staged)
    put_back_aside(target)
    old = None
    if replace and target.exists():
        # a name of this call alone: one left by an earlier replace (an old folder that
        # could not all be removed) would refuse the rename with ENOTEMPTY
        old = aside_name(target)
        # Its change time must be this move's, after this writer started (how a sweep tells
        # a live writer's aside from a dead one's, temps.writer_alive): rename(2) need not
        # set it on every file system; setting the times to what they are does. Only the
        # folder's owner may (a teammate's folder in a shared workspace: the rename's own).
        st = target.stat()
        with contextlib.suppress(PermissionError):
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        target.rename(old)
    try:  # rename(2) replaces an empty folder and refuses a full one
        staged.rename(target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            if old is not None:  # put the old folder back: never leave neither
                old.rename(target)
            raise
        if old is not None:  # someone else published between the two renames: keep theirs
            discard_aside(old, target)
        return False
    if fsync:
        fsync_path(target.parent)
        fsync_made_dirs(made)
    if old is not None:
        discard_aside(old, target)
    return True


@dataclass
class StagedDir:
    """A folder being built by :func:`staged_dir`: write into ``path``; after the block,
    ``published`` says whether it became ``target`` (False: ``target`` existed)."""

    path: Path
    target: Path
    published: bool = False


@contextlib.contextmanager
def staged_dir(
    target: str | Path, *, replace: bool = False, fsync: bool = True, mode: int = 0o777
) -> Iterator[StagedDir]:
    """Build the folder ``target`` whole or not at all: the block writes into an empty folder
    under :func:`temp_name` beside it (made with ``mode``, less the umask, as ``mkdir`` does;
    it inherits a set-group-id parent's group and bit); when the block ends without an
    error it is published by :func:`publish_dir` (``replace`` and ``fsync`` as there), and in
    every case nothing of it is left under the temporary name. Temporaries of dead writers of
    this host beside ``target`` are swept first.

    A folder that cannot be made there (a parent that is a file, ``/proc``, a read-only mount,
    no permission) is an :class:`InputError` naming ``target``, raised before the block runs
    (the parent folders this call made are removed again); so is a publishing rename that
    fails. A full disk or quota, or a read-only file system, while the block writes is a
    :class:`StorageError` naming ``target`` (:func:`storage_error`); the block's other errors
    pass unchanged."""
    target = Path(target)
    staged = StagedDir(temp_name(target), target)
    made: list[Path] = []
    try:
        made = make_dirs(target.parent)
        sweep_stale_temps(target.parent)
        _remove(staged.path)
        staged.path.mkdir(mode=mode)
        keep_owner_access(staged.path)
    except OSError as exc:
        # A path the user chose (--out) reaches here: one line naming it, not a traceback
        with contextlib.suppress(OSError):  # under a file there is nothing to remove
            _remove(staged.path)
        remove_made_dirs(made)
        raise _unwritable(target, exc) from exc
    try:
        yield staged
        try:
            staged.published = publish_dir(staged.path, target, replace=replace, fsync=fsync)
            if fsync and staged.published:
                fsync_made_dirs(made)  # made here, before publish_dir: it flushed only its own
        except OSError as exc:
            raise _unwritable(target, exc) from exc
    except BaseException as exc:
        _remove(staged.path)  # first: the free space the message shows is then real
        # named by the folder the user asked for, not by a file under its temporary name
        full = storage_error(target, exc, kept=False)
        if full is not None and full is not exc:
            raise full from exc
        raise
    finally:
        _remove(staged.path)


def _unwritable(target: Path, exc: OSError) -> InputError:
    """The one-line error for a folder ``target`` that cannot be made or published: the
    command called :func:`staged_dir` with a path the user chose (``--out``), or the
    workspace's own disk refused."""
    # A file in the way reads as "File exists" or "Not a directory" (by depth): say which file
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = f"{blocker} is a file, not a folder"
    else:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
        reason = f"{exc.strerror or exc}{where}"
    return InputError(
        f"folder {target} cannot be created: {reason}; expected a path in a writable folder"
    )


def replace_link(link: str | Path, points_to: str | Path, *, fsync: bool = True) -> None:
    """Make the symbolic link ``link`` point to ``points_to`` (kept as given: relative or
    absolute) by renaming a new link over it, so a reader finds the old target or the new one,
    never no link. Creates the folder."""
    with atomic_target(link, fsync=fsync) as tmp:
        tmp.symlink_to(points_to)


#: Seconds :func:`held_lock` waits for another holder before giving up.
LOCK_WAIT_S = 60.0
#: What ``lockf`` fails with on a file system that does not lock (NFS without ``lockd``:
#: ENOLCK; Lustre mounted without ``flock``, some FUSE file systems: ENOSYS, EOPNOTSUPP).
NO_LOCKING_ERRNOS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
#: The lock files :func:`held_lock` already warned about (once per process and file).
_warned_unlocked: set[Path] = set()


@contextlib.contextmanager
def held_lock(path: str | Path, what: str, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, with its folder, if missing) for
    the block, waiting at most ``wait_s`` seconds for another holder; ``what`` names the lock
    in the :class:`~pomlia_hpc.errors.BusyError` raised when it stays held.

    A POSIX record lock (``lockf``): the kernel drops it when its holder dies, however it
    dies, and NFS clients pass it to the server, so processes on other nodes of a shared file
    system wait for it too. Hold it for a check and the claim after it, not for long work.

    A file system that cannot lock (:data:`NO_LOCKING_ERRNOS`) runs the block without the lock
    after one warning on stderr: the work went on there before locks existed, only concurrent
    claims are no longer excluded. A lock file that cannot be created (a read-only folder) is
    an :class:`~pomlia_hpc.errors.InputError` naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a")
    except OSError as exc:
        raise InputError(
            f"{what}: the lock file {path} cannot be created: {exc.strerror or exc}; "
            "expected a writable folder"
        ) from exc
    with fh:
        if not _lock(fh, path, what, wait_s):
            yield
            return
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


#: Seconds between two tries of :func:`poll_lock`: short beside the waits (2 s, 60 s).
LOCK_POLL_S = 0.05


def poll_lock(try_lock: Callable[[], bool], refusal: str, wait_s: float) -> None:
    """Call ``try_lock`` (a non-blocking attempt: True when taken, False while another process
    holds the lock) every :data:`LOCK_POLL_S` seconds until it succeeds; after ``wait_s``
    seconds of False, raise :class:`~pomlia_hpc.errors.BusyError` with ``refusal``.

    Polled, not waited on in the kernel, so a lock really held refuses after ``wait_s``
    instead of hanging. The caller keeps its own primitive: ``held_lock``'s ``lockf`` and the
    pipeline's ``flock`` (which its Slurm chain jobs take) do not exclude each other on Linux.
    """
    deadline = time.monotonic() + wait_s
    while not try_lock():
        if time.monotonic() >= deadline:
            raise BusyError(refusal)
        time.sleep(LOCK_POLL_S)


def _lock(fh: IO[str], path: Path, what: str, wait_s: float) -> bool:
    """Take :func:`held_lock`'s lock on ``fh`` (waiting at most ``wait_s`` seconds); False
    (after the warning) where the file system does not lock."""
    unlocked = False

    def attempt() -> bool:
        nonlocal unlocked
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in NO_LOCKING_ERRNOS:
                _warn_unlocked(path, what, exc)
                unlocked = True  # go on without the lock: stop polling
                return True
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return False
        return True

    refusal = (
        f"{what}: the lock {path} stayed held by another process for {wait_s:.0f} s; try again"
    )
    poll_lock(attempt, refusal, wait_s)
    return not unlocked


def _warn_unlocked(path: Path, what: str, exc: OSError) -> None:
    """Say once per lock file that its file system does not lock."""
    if path in _warned_unlocked:
        return
    _warned_unlocked.add(path)
    reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    with contextlib.suppress(OSError):  # stderr's reader has gone: the work goes on
        print(
            f"warning: {what}: the file system of {path} does not support locks ({reason}: "
            f"{exc.strerror}); going on without the lock, so concurrent starts are not "
            "excluded",
            file=sys.stderr,
            flush=True,
        )
