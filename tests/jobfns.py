"""Callables that tests submit as jobs. conftest registers this module with cloudpickle *by
value*, so job processes (local or Slurm) need not import it from the tests folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pomlia_hpc.cluster import Checkpointable


def add(a: int, b: int) -> int:
    return a + b


def square_logged(x: int, log_dir: str, sleep_s: float = 0.0) -> int:
    """x*x; writes start/end times so tests can check how many ran at once."""
    start = time.time()
    time.sleep(sleep_s)
    Path(log_dir, f"{x}.txt").write_text(f"{start} {time.time()} {os.getpid()}")
    return x * x


def boom(message: str) -> None:
    raise ValueError(message)


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


class SlowSum(Checkpointable):
    """Sums range(n), one number per ``step_s`` seconds; progress survives a requeue."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir
        self.i = 0
        self.total = 0
        self.attempts: list[int] = []

    def __call__(self, n: int, step_s: float) -> dict[str, object]:
        self.attempts.append(self.restart_count())
        Path(self.marker_dir, f"started-{len(self.attempts)}").write_text(str(self.i))
        while self.i < n:
            self.total += self.i
            self.i += 1
            time.sleep(step_s)
        return {"total": self.total, "attempts": self.attempts}


def touch_after(path: str, seconds: float) -> str:
    """Sleep, then create ``path``: a job whose task outliving a cancel leaves a trace."""
    time.sleep(seconds)
    Path(path).touch()
    return path
