"""Dynamic batching: requests from the event loop are grouped into one model call.

One worker thread owns the model. It takes the oldest request, then keeps taking queued ones
until the batch holds ``max_batch`` images, or ``max_wait_s`` has passed since it took the
first, or no new request arrived for ``idle_gap_s`` (1 ms: requests of one wave arrive back to
back, so a pause means everyone in flight is already in the batch; waiting on would only idle
the model, which matters most in closed loops such as the benchmark's clients).
A request is never split; one larger than ``max_batch`` runs alone. ``max_batch=1`` turns
batching off (one request per model call, same code path), which is what the benchmark compares.

Completion is two-phase: ``process`` computes the results, then ``finish`` is called with a
``deliver`` callback that hands them to the waiting coroutines. The server's ``finish`` appends
the prediction records to the durable log first and delivers only once they are on disk, so an
answer is never sent for a prediction that was not logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

R = TypeVar("R")

#: ``process(list of image arrays) -> one result per array`` (runs on the worker thread).
ProcessFn = Callable[[Sequence[np.ndarray]], Sequence[R]]
#: ``finish(results, deliver)``: make the results durable, then call ``deliver(None)``, or
#: ``deliver(error)`` to fail the requests instead.
Deliver = Callable[[BaseException | None], None]
FinishFn = Callable[[Sequence[R], Deliver], None]


class BatcherClosedError(RuntimeError):
    """The batcher is draining or stopped and takes no new requests."""


@dataclass
class _Item(Generic[R]):
    images: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(futures: list[asyncio.Future[R]], outcomes: list[R | BaseException]) -> None:
    for fut, out in zip(futures, outcomes, strict=True):
        if fut.done():  # the client went away; nothing to deliver
            continue
        if isinstance(out, BaseException):
            fut.set_exception(out)
        else:
            fut.set_result(out)


def _closed_process(_arrays: Sequence[np.ndarray]) -> Sequence[Any]:
    raise BatcherClosedError("the batcher is stopped")


def _closed_finish(_results: Sequence[Any], deliver: Deliver) -> None:
    deliver(BatcherClosedError("the batcher is stopped"))


class DynamicBatcher(Generic[R]):
    """Group image arrays from many coroutines into calls of ``process`` on one thread.

    ``on_batch(images, seconds)`` (optional) observes each model call, for metrics.
    """

    def __init__(
        self,
        process: ProcessFn[R],
        finish: FinishFn[R] | None = None,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        idle_gap_s: float = 0.001,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or idle_gap_s <= 0:
            raise ValueError("max_batch must be >= 1, max_wait_s >= 0 and idle_gap_s > 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.idle_gap_s = idle_gap_s
        self._process = process
        self._finish: FinishFn[R] = finish or (lambda _results, deliver: deliver(None))
        self._on_batch = on_batch
        self._queue: queue.Queue[_Item[R] | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (approximate)."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    async def submit(self, images: np.ndarray) -> R:
        """Queue ``images`` (N, ...) and wait for their result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        with self._lock:  # no put after close(): close() puts the stop marker under this lock
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            self._queue.put(_Item(images, loop, fut))
        return await fut

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish every queued one, then stop the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    def _take_batch(self, first: _Item[R]) -> tuple[list[_Item[R]], bool]:
        batch, n = [first], len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        stop = False
        while n < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                # Wait for company only while requests keep coming: a gap of idle_gap_s means
                # the current wave has arrived, and waiting longer would idle the model.
                item = (
                    self._queue.get(timeout=min(remaining, self.idle_gap_s))
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            if n + len(item.images) > self.max_batch:
                self._requeue_front(item)
                break
            batch.append(item)
            n += len(item.images)
        return batch, stop

    def _requeue_front(self, item: _Item[R]) -> None:
        # queue.Queue has no push-front; its deque does. Keeps arrival order fair.
        with self._queue.mutex:
            self._queue.queue.appendleft(item)
            self._queue.not_empty.notify()

    def _run(self) -> None:
        # close() puts the stop marker last (under the lock that submit() takes), so every
        # request queued before it is taken, and answered, before the loop sees the marker.
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._take_batch(first)
            self._run_batch(batch)
        # Nothing is processed any more: drop the callbacks. They are the owner's bound methods
        # (a Predictor holds its batcher, the batcher its ``process``), a cycle that only a full
        # garbage collection frees: after each hot swap the old model, its runtime's threads
        # and (on a GPU) its weights stayed in memory until then.
        self._process = _closed_process
        self._finish = _closed_finish

    def _run_batch(self, batch: list[_Item[R]]) -> None:
        t0 = time.perf_counter()
        outcomes: list[R | BaseException]
        results: Sequence[R] = ()
        try:
            results = self._process([it.images for it in batch])
            outcomes = list(results)
        except Exception as exc:  # one bad batch must not kill the worker
            outcomes = [exc] * len(batch)
        if self._on_batch is not None:
            self._on_batch(sum(len(it.images) for it in batch), time.perf_counter() - t0)
        futures = [it.future for it in batch]
        loop = batch[0].loop

        def deliver(error: BaseException | None = None) -> None:
            final: list[R | BaseException] = outcomes if error is None else [error] * len(futures)
            # RuntimeError: the loop is already closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, futures, final)

        if results and not isinstance(outcomes[0], BaseException):
            try:
                self._finish(results, deliver)
            except Exception as exc:
                deliver(exc)
        else:
            deliver(None)
