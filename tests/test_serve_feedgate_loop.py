"""The deployment's feedback lock (serve/feedgate.py) is taken and let go off the event loop:
on NFS each is a call to the lock manager, and the event loop answers every request."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.serve.feedgate import FeedbackGate


def test_the_lock_is_let_go_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn was taken in a worker thread but let go on the event loop's own thread: a
    lock manager slow to answer held every request of the server, /health included."""
    calls: list[tuple[int, int]] = []  # (operation, thread), each call of the real lockf
    real = fcntl.lockf

    def lockf(fd: int, op: int, *args: Any) -> Any:
        calls.append((op, threading.get_ident()))
        return real(fd, op, *args)

    monkeypatch.setattr(fcntl, "lockf", lockf)

    async def feedback() -> tuple[int, list[str]]:
        gate = FeedbackGate(tmp_path, 7)
        await asyncio.to_thread(gate.open)
        calls.clear()

        async def section() -> str:
            return "logged"

        got = await asyncio.gather(gate.run(section), gate.run(section))
        await gate.close()
        return threading.get_ident(), got

    loop_thread, got = asyncio.run(feedback())
    assert got == ["logged", "logged"]
    assert {op for op, _ in calls} >= {fcntl.LOCK_UN}
    assert [op for op, thread in calls if thread == loop_thread] == []


def test_a_lock_that_cannot_be_let_go_still_answers_the_turns_feedbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unlock the file system refused (a lock manager gone) ended the turn's leader with
    the error, and the feedbacks of that turn, whose labels were on disk, waited for ever."""
    real = fcntl.lockf

    def lockf(fd: int, op: int, *args: Any) -> Any:
        if op == fcntl.LOCK_UN:
            raise OSError(errno.ENOLCK, "No locks available")
        return real(fd, op, *args)

    async def feedback() -> str:
        gate = FeedbackGate(tmp_path, 7)
        await asyncio.to_thread(gate.open)
        monkeypatch.setattr(fcntl, "lockf", lockf)

        async def section() -> str:
            return "logged"

        try:  # a bound for a loaded machine, not a timing check: without it a hang
            return await asyncio.wait_for(gate.run(section), 120)
        finally:
            monkeypatch.setattr(fcntl, "lockf", real)
            await gate.close()

    assert asyncio.run(feedback()) == "logged"
