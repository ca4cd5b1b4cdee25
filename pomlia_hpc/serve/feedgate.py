"""One label per prediction across all the servers of a deployment on one log folder.

Two servers of one deployment write to one folder while one replaces the other (a restart, a
Slurm switch) or as replicas. Each judged a feedback against what it had read of the others'
files, so two of them given the same prediction id at the same moment both found it unlabelled
and both logged a label (4 of 40 ids labelled twice with two servers and four concurrent
senders per id): the monitor and the harvest saw two labels.

Acceptance is a critical section shared by the deployment: the server takes an exclusive POSIX
record lock (``fcntl``) on ``.feedback-<deployment>.lock`` in the log folder, reads what the
other servers' files gained (:mod:`.peers`), judges the id, writes the feedback durably and
only then lets the lock go. Whoever comes next reads that label and answers 409. A POSIX lock
and not one marker file per id: the kernel (or the NFS server's lock manager) lets it go when
its holder dies, so a server killed mid-feedback leaves nothing that refuses the id later, and
the folder gains one file per deployment, not one per label. Inside one server the
feedbacks that wait for the lock share the next turn (POSIX locks do not exclude threads of
one process; the index's own lock makes each claim atomic there).

A request waits at most ``ANSWER_WAIT_S`` for its answer: the lock holder stuck on a hung file
server (reading the others' files, writing its label) answers 503 then, as the others do
after ``LOCK_WAIT_S``, while its section goes on and may still write the label.

A file system that takes no locks (Lustre mounted without ``flock``, NFS without a lock
manager) is said once at start-up in a warning; feedback is then judged as before, by each
server alone.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from pomlia_hpc.files import PRIVATE_FILE
from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.predlog import LogClosedError, LogWriteError, PredictionLog

log = logging.getLogger("pomlia.serve")
_T = TypeVar("_T")

#: How long a feedback waits for another server of the deployment to finish its own, s: past
#: it the feedback is refused with 503 (a holder that is stuck, e.g. on a hung file server).
LOCK_WAIT_S = 10.0
#: The longest a feedback request waits for its answer, s: the turn (``LOCK_WAIT_S``), then
#: reading the other servers' files and writing the label durably. A holder stuck on a hung
#: file server waited without limit (the others got their 503); past this it answers 503
#: too, and the label may still be written once the file server answers.
ANSWER_WAIT_S = LOCK_WAIT_S + 10.0
#: Longest pause between two tries of the lock while another server holds it, s.
LOCK_POLL_S = 0.02
#: errno values of a file system that takes no POSIX locks.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def lock_path(directory: Path, deployment: int | None) -> Path:
    """The lock file the servers of ``deployment`` share in log folder ``directory`` (a dot
    name: no reader of the log takes it for a log file)."""
    return Path(directory) / f".feedback-{'none' if deployment is None else deployment}.lock"


class FeedbackGate:
    """The deployment-wide turn for accepting a feedback (see the module docstring).

    ``run(section)`` awaits ``section()`` while this server holds the turn; the section runs to
    its end even when the request that asked is cancelled (a client that went away, a shutdown),
    so the lock is never let go before the label it guards is on disk."""

    def __init__(
        self,
        directory: Path,
        deployment: int | None,
        *,
        wait_s: float = LOCK_WAIT_S,
        answer_s: float = ANSWER_WAIT_S,
    ):
        self.path = lock_path(directory, deployment)
        self.wait_s = wait_s
        self.answer_s = answer_s
        self._turn = asyncio.Lock()  # held for a turn, and by close()
        self._waiting: list[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._leader: asyncio.Task[None] | None = None
        #: Run at the start of each turn, once the lock is held (blocking, on the same worker
        #: thread): reading what the other servers logged, which every section then sees.
        self.on_turn: Callable[[], object] | None = None
        self._fd = -1
        self.locks = True  # false once the file system refused a lock: judged alone then

    def open(self) -> None:
        """Create (or open) the lock file and try the lock once; blocking (file I/O)."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        if self._try():  # else held by another server right now: locks work
            self._release()

    async def close(self) -> None:
        """Close the lock file once no feedback holds or waits for the turn (a section still
        running after its request was cancelled must not find its descriptor closed, or
        reused by another file)."""
        async with self._turn:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    async def run(self, section: Callable[[], Awaitable[_T]]) -> _T:
        """``await section()`` holding the deployment's feedback turn; 503 when another server
        held it for longer than ``wait_s``. Sections that come while a turn is held wait for
        the next one and then run together in it: their claims are atomic within the server
        anyway (:class:`~.issued.IssuedIds`), and their labels share one log commit (one
        ``fsync``, not one each: one section a turn took 16 clients on one server from about
        560 feedbacks/s without the lock to 200; turns of all waiting sections, to 470, on
        the loaded 2-core VM). 503 too when no answer came within ``answer_s`` (a file server
        that does not answer): the section goes on, and its label may still be written."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # A cancelled request leaves its section to finish; its outcome is then nobody's.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((section, fut))
        if self._leader is None:
            self._leader = asyncio.ensure_future(self._lead())
        try:
            return cast(_T, await asyncio.wait_for(asyncio.shield(fut), self.answer_s))
        except TimeoutError:
            raise RequestError(
                503,
                f"feedback not confirmed within {self.answer_s:g} s: the prediction log's file "
                "system did not answer; the label may still be recorded once it does: send it "
                'again later with "replaces": true',
            ) from None

    async def _lead(self) -> None:
        """Run the waiting sections, a turn at a time, until none waits."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                async with self._turn:
                    try:
                        await asyncio.to_thread(self._begin_turn)
                    except Exception as exc:  # no turn: each of them is refused
                        for _, fut in batch:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                    try:
                        got = await asyncio.gather(
                            *(section() for section, _ in batch), return_exceptions=True
                        )
                    finally:
                        # Off the event loop: on NFS the unlock is a call to the lock manager,
                        # and a slow one held every request of the server (health included).
                        try:
                            await asyncio.to_thread(self._release)
                        except OSError:  # the labels are on disk: answer them all the same
                            log.exception("feedback lock %s: could not let it go", self.path)
                for (_, fut), res in zip(batch, got, strict=True):
                    if fut.done():
                        continue
                    if isinstance(res, asyncio.CancelledError):
                        fut.cancel()
                    elif isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._leader = None

    def _begin_turn(self) -> None:
        self._acquire()
        if self.on_turn is not None:
            try:
                self.on_turn()
            except BaseException:
                self._release()
                raise

    def _acquire(self) -> None:
        """Take the lock file's exclusive lock, trying again until ``wait_s`` has passed."""
        deadline = time.monotonic() + self.wait_s
        pause = 0.001
        while not self._try():
            if time.monotonic() >= deadline:
                raise RequestError(
                    503,
                    f"feedback not recorded: another server of this deployment held the feedback "
                    f"lock for over {self.wait_s:g} s; try again",
                )
            time.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_S)

    def _try(self) -> bool:
        """One try of the exclusive lock: true when held now (or when there is none to take)."""
        if self._fd < 0 or not self.locks:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False  # another server holds it
            if exc.errno not in NO_LOCKS:
                raise RequestError(503, f"feedback not recorded: lock: {exc.strerror}") from exc
            self.locks = False
            log.warning(
                "feedback lock %s: the file system takes no locks (%s): two servers of this "
                "deployment given the same prediction id at once may both accept a label",
                self.path,
                exc.strerror,
            )
        return True

    def _release(self) -> None:
        if self._fd >= 0 and self.locks:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)


async def append_durably(plog: PredictionLog, record: dict[str, Any]) -> None:
    """Append ``record`` to the log and return once it is on disk (503 when it cannot be)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def done(error: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(RequestError(503, f"feedback not recorded: {error}"))

        loop.call_soon_threadsafe(settle)

    try:
        plog.append([record], done)
    except (LogClosedError, LogWriteError) as exc:
        raise RequestError(503, f"feedback not recorded: {exc}") from exc
    await fut
