"""The prediction log: every prediction and every feedback, appended durably as JSON lines.

Layout (read by the monitoring job)::

    <workspace>/logs/predictions/<model name>/<start time>-<host>-<pid>-<seq>.jsonl

Each server process writes its own files (one writer, so no two processes ever append to the same
file, which shared file systems do not make atomic). One JSON object a line, a prediction,
a feedback or a rejection, each a strict model of :mod:`.records`::

    {"type": "prediction", "id": ..., "time": ..., "model": ..., "model_version": ...,
     "fingerprint_kind": ..., "fingerprint": [...], "output": {"label": ..., ...}}
    {"type": "feedback", "id": ..., "time": ..., "prediction_id": ..., "label": ..., ...}

Durability: one writer thread takes every record queued since its last write, writes them,
flushes and ``fsync``s once (group commit), and only then runs the callbacks that answer the
requests. So an answered request is on disk, and a crash loses at most requests that were never
answered. ``close()`` (on SIGTERM, after the server drained) writes what is still queued.
A file is rotated after ``max_bytes``; a torn last line (power loss mid-write) is skipped by
the readers (:mod:`.logfiles`: :func:`~.logfiles.read_records` refuses any other bad line, with
file, line and key). A file is created at the first record, so a server that answered nothing
leaves no file; its name's start time is the process's, so no record in it is older than the
name says (:func:`.logfiles.file_start_time`).

A failed write (a full disk or quota, an I/O error) refuses the requests of its group (503), and
the server is not ready from then on, refusing predictions rather than answering them
unrecorded; every ``retry_s`` the writer thread tries the disk again by writing and removing
:data:`PROBE_BYTES` beside the log, and once that succeeds it takes records again, in a new file
(the failed one ends at its last whole commit), so freeing space brings a server back without a
restart.

Retention (``retention_s``, off by default: every file is kept): at each rotation, files of the
folder whose last write is older than ``retention_s`` are deleted, each logged, except the file
being written and any file that may hold a prediction the server still takes feedback for
(``keep_after``: the time of the oldest one; see :func:`prune_log`).

Kept inputs (``--keep-inputs``): a ``sidecar`` :class:`~.inbox.Inbox` receives each group's
input images in the same commit, written and fsynced before the group's log lines, so a logged
prediction marked ``"input_kept": true`` always has its image on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pomlia_hpc.files import PRIVATE_FILE, TEMP_SUFFIX, fsync_path, make_private_dirs
from pomlia_hpc.serve.logfiles import CLOCK_SKEW_S
from pomlia_hpc.serve.retention import note_deleted

if TYPE_CHECKING:
    from pomlia_hpc.serve.inbox import Inbox

log = logging.getLogger("pomlia.serve")
Record = dict[str, Any]
_ORJSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
Callback = Callable[[BaseException | None], None]
#: Bytes written (and removed) to try a disk whose log write failed: room for a group of some
#: hundred predictions, so the first group after the try does not fail at once.
PROBE_BYTES = 64 * 1024


class LogClosedError(RuntimeError):
    """The log was closed; no more records are accepted."""


class LogWriteError(RuntimeError):
    """Records could not be made durable (disk full, I/O error): what every callback and caller
    sees, whatever the OS error was, so the server answers 503 for all of them."""


@dataclass(frozen=True)
class _Entry:
    lines: bytes
    count: int
    done: Callback | None
    inputs: bytes = b""


def log_dir(logs_root: Path, model_name: str) -> Path:
    """Where the records of ``model_name`` go under the workspace's ``logs/``."""
    return logs_root / "predictions" / model_name


class PredictionLog:
    """Append-only JSON-lines log with one writer thread and group-committed fsyncs.

    ``append(records, done)`` is thread-safe and returns at once; ``done(None)`` runs on the
    writer thread after the records are on disk, ``done(LogWriteError)`` if writing them failed.
    After a failed write the file is cut back to its last commit and nothing more is written to
    it; records are refused until a try of the disk, every ``retry_s`` seconds, succeeds (see
    the module docstring). ``written`` counts records made durable.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        fsync: bool = True,
        sidecar: Inbox | None = None,
        retention_s: float | None = None,
        keep_after: Callable[[], float | None] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.retry_s = retry_s
        self.recoveries = 0
        self.sidecar = sidecar
        self.retention_s = retention_s
        self.keep_after = keep_after
        self.pruned = 0
        make_private_dirs(self.directory)  # clinical data: the owner's alone
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.written = 0
        self.commits = 0
        self._stem = (
            f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-"
            f"{_safe(socket.gethostname())}-{os.getpid()}"
        )
        self._seq = 0
        self._fd = -1
        self._size = 0
        self._last_write = time.monotonic()
        self._queue: queue.Queue[_Entry | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._error: BaseException | None = None
        self._failed_at = 0.0  # time.monotonic() of the last failed write or try
        # No file yet: it is created with the first record, so a start without traffic leaves
        # no empty file behind (every reader globs the folder; none needs one to exist).
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @property
    def stem(self) -> str:
        """How the names of this log's files start (``<start>-<host>-<pid>``)."""
        return self._stem

    @property
    def path(self) -> Path:
        """The file being written now."""
        return self.directory / f"{self._stem}-{self._seq:04d}.jsonl"

    @property
    def failure(self) -> str | None:
        """Why records are refused now (a failed write, said without the server's paths), or
        None."""
        return None if self._error is None else str(self._error)

    @property
    def healthy(self) -> bool:
        return self._error is None and self._thread.is_alive() and not self._closed

    def append(
        self, records: Sequence[Record], done: Callback | None = None, inputs: bytes = b""
    ) -> None:
        """Queue ``records``; ``done(error_or_None)`` runs once they are durable (or failed).
        ``inputs`` (inbox records of their images) go to the sidecar in the same commit."""
        # orjson: 20x faster than json on the fingerprint floats, and numpy arrays as lists.
        lines = b"".join(orjson.dumps(r, option=_ORJSON) for r in records)
        with self._lock:
            if self._closed:
                raise LogClosedError("the prediction log is closed")
            if self._error is not None:
                raise LogWriteError(f"the prediction log failed earlier: {self._error}")
            self._queue.put(_Entry(lines, len(records), done, inputs))

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, fsync, close the file and stop the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    def _open_next(self) -> None:
        rotated = self._fd >= 0
        if rotated:
            os.close(self._fd)
            self._fd = -1  # never a stale number: the OS may hand it to another file
            self._seq += 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        self._size = 0
        fsync_path(self.directory)  # the new file's name is durable too
        if rotated and self.retention_s is not None:
            self._prune(self.retention_s)

    def _gone(self) -> bool:
        """Whether the current file was deleted while idle (another server's retention, or by
        hand): records appended to it would be lost with it. Only a file idle longer than the
        clock margin can be pruned, so only then is its name looked up (one stat)."""
        if self._fd < 0 or time.monotonic() - self._last_write < CLOCK_SKEW_S:
            return False
        try:
            gone = self.path.stat().st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            gone = True
        if gone:
            log.warning("prediction log %s was deleted while open: on in a new file", self.path)
        return gone

    def _prune(self, retention_s: float) -> None:
        """Apply the retention (see the module docstring); a failure is logged, never fatal."""
        now = time.time()
        older_than = now - retention_s
        oldest = self.keep_after() if self.keep_after is not None else None
        if oldest is not None:  # the newest feedback window's files stay
            older_than = min(older_than, oldest - CLOCK_SKEW_S)
        try:
            self.pruned += len(prune_log(self.directory, older_than=older_than, keep={self.path}))
        except OSError as exc:
            log.warning("prediction log %s: retention not applied: %s", self.directory, exc)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self._retry_wait())
            except queue.Empty:  # failed, and no record is taken meanwhile: try the disk
                self._try_again()
                continue
            group: list[_Entry] = []
            if first is None:
                stop = True
            else:
                group.append(first)
            while True:  # everything queued meanwhile joins this commit
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    group.append(item)
            if group:
                self._commit(group)
        if self._fd >= 0:  # -1 if a rotation failed
            os.close(self._fd)
        if self.sidecar is not None:
            self.sidecar.close()

    def _commit(self, group: list[_Entry]) -> None:
        data = b"".join(e.lines for e in group)
        error: LogWriteError | None = None
        if self._error is not None:
            # Groups queued before the failure was seen: nothing more is written after a failed
            # write, so the file never holds records after a gap or a torn line.
            error = LogWriteError(f"the prediction log failed earlier: {self._error}")
        else:
            try:
                if self.sidecar is not None:
                    # Inputs first: a logged prediction never lacks its kept image.
                    self.sidecar.write(b"".join(e.inputs for e in group))
                full = self._size and self._size + len(data) > self.max_bytes
                if self._fd < 0 or full or self._gone():
                    self._open_next()
                self.write_all(data)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                # The requests of this group get the error instead of an answer, the server
                # reports not-ready from now on, and the file is cut back to its last commit
                # (a partial write, e.g. on ENOSPC, would leave a torn line mid-file).
                self._rollback()
                self._failed_at = time.monotonic()
                log.error(
                    "prediction log %s: write failed, no records taken until a try of the disk "
                    "(every %g s) succeeds: %s",
                    self.path,
                    self.retry_s,
                    exc,
                )
                # The message goes to clients: the reason, not the server's paths.
                self._error = error = LogWriteError(
                    f"cannot write the prediction log ({exc.strerror or type(exc).__name__})"
                )
            else:
                self._last_write = time.monotonic()
                self._size += len(data)
                self.written += sum(e.count for e in group)
                self.commits += 1
        for e in group:
            if e.done is not None:
                e.done(error)

    def _retry_wait(self) -> float | None:
        """How long the writer thread waits for records before it tries the disk again, s;
        None (for ever) while writes succeed."""
        if self._error is None or self._closed:
            return None
        return max(0.0, self._failed_at + self.retry_s - time.monotonic())

    def _try_again(self) -> None:
        """Write, flush and remove :data:`PROBE_BYTES` beside the log; if that works, take
        records again, in a new file: the failed one keeps only whole commits (its tail was cut
        back, or, if even that failed, may be torn, and nothing is appended after it)."""
        probe = self.directory / f".probe-{self._stem}{TEMP_SUFFIX}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            try:
                self._write_fd(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1  # the next commit opens the next file
        except OSError as exc:
            self._failed_at = time.monotonic()
            log.info("prediction log %s: still not writable: %s", self.directory, exc)
            return
        if self.path.exists():
            self._seq += 1
        self._size = 0
        self._error = None
        self.recoveries += 1
        log.warning("prediction log %s: writable again, records taken from now on", self.path)

    @staticmethod
    def _write_fd(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def write_all(self, data: bytes) -> None:
        """Write ``data`` to the current file (``os.write`` may write only part at a time)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _rollback(self) -> None:
        """Cut the current file back to its committed size (best effort: the disk may be gone)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:64] or "host"


def prune_log(directory: Path, *, older_than: float, keep: Collection[Path] = ()) -> list[Path]:
    """Delete the log files (``*.jsonl``) in ``directory`` last written before ``older_than``
    (epoch s), but those in ``keep``; each deletion is logged (path, size in bytes, last
    write) and noted for the readers (:func:`.retention.note_deleted`). Returns the deleted
    paths. Kept inputs are not touched (:mod:`.inbox` has its own retention)."""
    removed: list[Path] = []
    latest = 0.0
    try:
        for path in sorted(Path(directory).glob("*.jsonl")):
            if path in keep:
                continue
            try:
                st = path.stat()
                if st.st_mtime >= older_than:
                    continue
                path.unlink()
            except FileNotFoundError:  # another server's retention was first
                continue
            when = datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds")
            log.info(
                "prediction log retention: deleted %s (%d bytes, last written %s)",
                path,
                st.st_size,
                when,
            )
            removed.append(path)
            latest = max(latest, st.st_mtime)
    finally:  # also when a later file could not be deleted: those before it are gone
        if removed:  # the readers say what is gone (serve/retention.py)
            note_deleted(directory, latest)
    return removed
