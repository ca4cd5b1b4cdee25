"""Progress of long commands, readable live in a terminal and in a Slurm job's output file.

Every long command (``fingerprint train``, ``fingerprint extract``, ``index build``,
``automl run``, ``data add``, ``data verify``) reports through :func:`progress`, on stderr
(the CLI passes its stderr console): stdout keeps the results (final tables, ids, JSON), so
``pomlia ... > out`` holds only those:

* in a terminal, a rich progress bar (or, with ``live_view``, a table the command redraws);
* otherwise (stdout redirected to a file, as ``sbatch`` does), plain lines, each flushed at
  once: one whenever the count changes (an epoch, a trial, a shard; at most one per
  ``min_interval_s`` seconds for fine-grained counts such as vectors) and, while nothing
  changes, a heartbeat at least every ``every_s`` seconds (30 by default, or the
  ``POMLIA_PROGRESS_EVERY_S`` environment variable), so ``tail -f`` on the output file shows
  the job is alive. Without this a redirected rich bar prints nothing until the command ends.

A plain line looks like::

    [04:31:07] training 'ae16': 3/10 epochs (30%), 1m12s elapsed; loss 0.0123

Jobs write their own lines into their output files with :func:`say` (a trial's epochs, a
fingerprint shard's rows), stamped the same way (:func:`stamped`).

A reader that goes away (``pomlia automl run ... | head -2``, or a terminal that hung up, whose
writes fail with EIO) does not stop the work: the report's output then goes to ``/dev/null``
(:func:`write_line`), and one line on stderr says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: Longest silence (s) of a plain-text progress report while the work goes on.
DEFAULT_EVERY_S = 30.0
EVERY_ENV = "POMLIA_PROGRESS_EVERY_S"


def _every_s(every_s: float | None) -> float:
    if every_s is not None:
        return every_s
    try:
        value = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        value = DEFAULT_EVERY_S  # a typo in a tuning knob must not stop a training job
    return value if value > 0 else DEFAULT_EVERY_S


def duration(seconds: float) -> str:
    """``seconds`` as a progress line says it: ``42s``, ``3m07s``, ``2h05m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Reporter:
    """What a command calls while it works; see :func:`progress` for the two modes."""

    def __init__(
        self,
        description: str,
        total: int | None,
        unit: str,
        *,
        stream: IO[str] | None,
        bar: Progress | None = None,
        live: Live | None = None,
        console: Console | None = None,
        min_interval_s: float = 0.0,
        result_console: Console | None = None,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self._result_console = result_console or console
        self.done = 0
        self.note_text = ""
        self._stream, self._bar, self._live, self._console = stream, bar, live, console
        self._task = bar.add_task(description, total=total) if bar is not None else None
        self._min_interval_s = min_interval_s
        self._start = self._last_line = time.monotonic()
        self._lock = threading.Lock()
        self._printed: tuple[int, int | None, str] | None = None
        self._view: RenderableType | None = None

    @property
    def console(self) -> Console | None:
        """The console the report is drawn on (None: a plain stream given without one)."""
        return self._console

    @property
    def elapsed_s(self) -> float:
        """Seconds since the report started."""
        return time.monotonic() - self._start

    @property
    def plain(self) -> bool:
        """Whether this reporter writes plain lines (stdout is not a terminal)."""
        return self._stream is not None

    def update(
        self,
        done: int,
        total: int | None = None,
        note: str | None = None,
        view: RenderableType | None = None,
    ) -> None:
        """``done`` of ``total`` units are finished (``total`` may change, e.g. once known);
        ``note`` is a short status (a loss, a cause); ``view`` redraws a live table."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            if note is not None:
                self.note_text = note
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=done, total=self.total)
            if view is not None:
                self._view = view
                if self._live is not None:
                    self._live.update(view)
            if self._stream is None:
                return
            state = (self.done, self.total, self.note_text)
            if state == self._printed:
                return
            finished = self.total is not None and self.done >= self.total
            waited = time.monotonic() - self._last_line
            if self._printed is None or finished or waited >= self._min_interval_s:
                self._write(self._status())

    def line(self, text: str) -> None:
        """An event worth its own line (a trial ended, a shard failed), in both modes."""
        with self._lock:
            if self._stream is not None:
                self._write(text)
            elif self._console is not None:
                self._console.print(text, markup=False, highlight=False)

    def heartbeat(self, every_s: float) -> None:
        """Repeat the status if nothing was written for ``every_s`` seconds (plain mode)."""
        with self._lock:
            if self._stream is not None and time.monotonic() - self._last_line >= every_s:
                self._write(self._status() + " (still working)")

    def finish(self) -> None:
        """Plain mode: write the final status unless the last line said it; then the last
        ``view`` on the result console, unless a terminal's live table shows it there already
        (a live table on a terminal's stderr while stdout goes to a file: the file gets it)."""
        with self._lock:
            if (
                self._stream is not None
                and (
                    self.done,
                    self.total,
                    self.note_text,
                )
                != self._printed
            ):
                self._write(self._status())
            out = self._result_console
            if self._view is None or out is None:
                return
            if self._stream is None and (out is self._console or out.is_terminal):
                return
            try:
                out.print(self._view)
            except OSError as exc:
                if not reader_gone(exc):
                    raise
                drop_output(out.file)

    def _status(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        unit = f" {self.unit}" if self.unit else ""
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        elapsed = duration(time.monotonic() - self._start)
        note = f"; {self.note_text}" if self.note_text else ""
        return f"{self.description}: {self.done}{of}{unit}{pct}, {elapsed} elapsed{note}"

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        write_line(self._stream, stamped(text))
        self._last_line = time.monotonic()
        self._printed = (self.done, self.total, self.note_text)


def write_line(stream: IO[str], text: str) -> None:
    """Write ``text`` and a newline to ``stream``, flushed. If the reader has gone (a closed
    pipe), point ``stream``'s file descriptor at ``/dev/null`` and say so once on stderr: a long
    command (a study's driver) goes on without an audience rather than dying of BrokenPipeError,
    and every later write to that stream, Python's flush at exit included, succeeds quietly."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except OSError as exc:
        if not reader_gone(exc):
            raise
        drop_output(stream)


def reader_gone(exc: OSError) -> bool:
    """Whether a write failed because nobody reads the stream any more: a closed pipe
    (EPIPE), or a terminal that hung up (EIO, what a write to a tty returns after SIGHUP)."""
    return isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.EIO)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def drop_output(stream: IO[str]) -> None:
    """Send ``stream``'s further output to ``/dev/null`` (its reader has gone), with one note on
    stderr; a stream without a file descriptor is left as it is. When stderr is the same pipe
    (``2>&1 | head``), its descriptor goes to ``/dev/null`` too: the next warning would die."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    stderr_too = fd != 2 and _same_file(fd, 2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)  # the same stream object stays usable: its fd now discards
        if stderr_too:
            os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    try:
        sys.stderr.write("note: the output's reader has gone; going on without printing\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr closed too: nothing to tell anyone


#: Why the command's output could not be written (a full disk, a closed stdout), once known;
#: :func:`output_failure` reads it, the CLI reports it when the command ends.
_FAILURES: list[str] = []


def output_failure() -> str | None:
    """Why a write to stdout failed during this command (``No space left on device``,
    ``standard output is closed``), or None if none did (a reader gone is no failure)."""
    return _FAILURES[0] if _FAILURES else None


def _discard(stream: IO[str]) -> None:
    """Point ``stream``'s descriptor at ``/dev/null``, without a note: the rest of the command's
    output to it is lost anyway, and one failed write is reported once, at the end."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class PipeSafeStream:
    """A text stream (``sys.stdout``, ``sys.stderr``) whose writes survive its reader going
    away (``pomlia automl run ... | head -3``, a hung-up terminal): then its descriptor is
    pointed at ``/dev/null`` (:func:`drop_output`) and the command goes on, whoever wrote
    (``say()``, a library's ``print``, ``logging``). Any other failed write (``> /dev/full``:
    ENOSPC) is recorded for :func:`output_failure` (stdout only: ``reported``) and discarded
    the same way, so the command finishes its work and the CLI says once that its output was
    lost. ``closed``: the stream stands in for a closed descriptor (``>&-``); its first write
    is such a failure. Everything else is the wrapped stream's."""

    def __init__(self, stream: IO[str], *, reported: bool = False, closed: str = "") -> None:
        self._stream = stream
        self._reported = reported
        self._closed = closed

    @property
    def wrapped(self) -> IO[str]:
        """The stream this one writes to."""
        return self._stream

    def _failed(self, exc: OSError) -> None:
        if reader_gone(exc):
            drop_output(self._stream)
            return
        if self._reported and not _FAILURES:
            _FAILURES.append(exc.strerror or str(exc))
        _discard(self._stream)

    def write(self, text: str) -> int:
        """Write ``text`` (returns its length in characters, written or discarded)."""
        if self._closed and text:
            if self._reported and not _FAILURES:
                _FAILURES.append(self._closed)
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._failed(exc)
            return len(text)

    def flush(self) -> None:
        """Flush; a failed write drops the output instead of raising (see the class)."""
        try:
            self._stream.flush()
        except OSError as exc:
            self._failed(exc)
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()  # the buffered text now goes to /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _open_std_fds() -> None:
    """Put ``/dev/null`` on any of the descriptors 0-2 that is closed (``pomlia ... >&-``):
    else the next file opened (the registry's database) would get the number, and a write
    meant for stdout or stderr (a library's, a child process's) would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)


def _tolerant(stream: IO[str] | None, fd: int, name: str) -> tuple[IO[str], str]:
    """``stream`` with unencodable characters written as backslash escapes, or for a closed
    one (None) a stream on ``/dev/null`` and why (``standard output is closed``)."""
    if stream is None:
        return open(fd, "w", encoding="utf-8", closefd=False), f"standard {name} is closed"
    reconfigure = getattr(stream, "reconfigure", None)
    if callable(reconfigure):
        # An ASCII or Latin-1 stream (PYTHONIOENCODING, LC_ALL=C) raised UnicodeEncodeError on a
        # class name or path after the work was done; `\xe4` is readable and JSON is ASCII.
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="backslashreplace")
    return stream, ""


def guard_std_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`PipeSafeStream` (idempotent): what the
    CLI does first, so no write anywhere in a command dies of a closed pipe, a failed write,
    a closed stream or a character the stream's encoding lacks."""
    _open_std_fds()
    _FAILURES.clear()  # a new command (tests run several in one process)
    if not isinstance(sys.stdout, PipeSafeStream):
        out, closed = _tolerant(sys.stdout, 1, "output")
        sys.stdout = PipeSafeStream(out, reported=True, closed=closed)
    if not isinstance(sys.stderr, PipeSafeStream):
        err, closed = _tolerant(sys.stderr, 2, "error")
        sys.stderr = PipeSafeStream(err, closed=closed)


def stamped(text: str) -> str:
    """``text`` after the local time of day, as every plain progress line: ``[04:31:07] text``."""
    return f"[{time.strftime('%H:%M:%S')}] {text}"


def say(text: str, stream: IO[str] | None = None) -> None:
    """Write ``text`` as one time-stamped line, flushed at once (default: on stdout): how a job
    reports what it does in its output file, e.g. ``[04:31:07] epoch 3/10 loss 0.0123``."""
    write_line(stream if stream is not None else sys.stdout, stamped(text))


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "",
    console: Console | None = None,
    stream: IO[str] | None = None,
    every_s: float | None = None,
    min_interval_s: float = 0.0,
    live_view: bool = False,
    start: int = 0,
    result_console: Console | None = None,
) -> Iterator[Reporter]:
    """Report the progress of one long piece of work; yields a :class:`Reporter`.

    The mode follows ``console`` (a rich console; default: one on stdout): a terminal gets a
    bar, or with ``live_view`` a live table that :meth:`Reporter.update` redraws from its
    ``view``; anything else gets plain lines on ``stream`` (default: the console's file). A
    plain report writes its first status at once, every change (but at most one line per
    ``min_interval_s`` seconds, except the last), a heartbeat after ``every_s`` seconds of
    silence, and a final status when the block ends. ``start``: how much was done before (a
    resumed piece of work), the first status a plain report writes. ``result_console``: where
    the last ``view`` goes when the work ends (default: ``console``); a command whose progress
    goes to stderr (``console`` on stderr) keeps its final table on stdout this way.
    """
    console = console or Console()
    if stream is None and console.is_terminal:
        if live_view:
            with Live(console=console, refresh_per_second=2) as live:
                live_report = Reporter(
                    description,
                    total,
                    unit,
                    stream=None,
                    live=live,
                    console=console,
                    result_console=result_console,
                )
                yield live_report
            live_report.finish()
        else:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            with bar:
                yield Reporter(description, total, unit, stream=None, bar=bar, console=console)
        return
    out: IO[str] = stream if stream is not None else console.file
    reporter = Reporter(
        description,
        total,
        unit,
        stream=out,
        console=console,
        min_interval_s=min_interval_s,
        result_console=result_console,
    )
    reporter.update(start)
    period = _every_s(every_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(period, 1.0)):
            reporter.heartbeat(period)

    thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
    thread.start()
    try:
        yield reporter
    finally:
        stop.set()
        thread.join()
        reporter.finish()
