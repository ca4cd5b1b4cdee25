"""Which training rows an epoch visits: all once (plain shuffle), or recent rows given a share.

A retrain after a distribution shift (:mod:`pomlia_hpc.loop`) trains on the old training data
plus a few hundred harvested production images. Shuffled plainly, the new images are a small
part of every epoch (180 of 1,120 in an offline trial), and a network that already fits the
old data learns little from them: measured offline on a PneumoniaMNIST look-alike with
contrast-corrupted production images, fine-tuning for 4 epochs on the plain mix left the
accuracy on the corrupted stream at the majority class (0.65), while giving the recent rows
half of each epoch's draws reached 0.76-0.95 (more with more epochs or a larger learning
rate) with the clean accuracy mostly kept; see docs/BENCHMARKS.md, "The loop".

:func:`epoch_order` draws an epoch of the same length as the training set: ``share`` of it
from the recent rows and the rest from the others, each group cycled through shuffled (every
row of a group is drawn once before any row is drawn again), then the whole epoch shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pomlia_hpc.errors import InputError


@dataclass(frozen=True)
class RecentRows:
    """Rows ``[start, stop)`` of the training images are recent; ``share`` (0 < share < 1) of
    every epoch's draws comes from them."""

    start: int
    stop: int
    share: float

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"recent rows [{self.start}, {self.stop}): expected 0 <= start <= end")
        if not 0 < self.share < 1:
            raise ValueError(f"recent share {self.share}: expected 0 < share < 1")


def _cycled(rows: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` rows of ``rows``, each permutation used up before the next starts."""
    if k <= 0 or len(rows) == 0:
        return rows[:0]
    reps = -(-k // len(rows))
    perms = [rows[torch.randperm(len(rows), generator=gen)] for _ in range(reps)]
    return torch.cat(perms)[:k]


def epoch_order(n: int, recent: RecentRows | None, gen: torch.Generator) -> torch.Tensor:
    """The row indices (length ``n``) one epoch visits, in order (module docstring). Without
    ``recent``, or when it holds no row or every row, a plain permutation of ``range(n)``."""
    if recent is None:
        return torch.randperm(n, generator=gen)
    if recent.stop > n:
        raise ValueError(f"recent rows [{recent.start}, {recent.stop}) beyond the {n} rows")
    new = torch.arange(recent.start, recent.stop)
    old = torch.cat([torch.arange(0, recent.start), torch.arange(recent.stop, n)])
    if len(new) == 0 or len(old) == 0:
        return torch.randperm(n, generator=gen)
    k = round(recent.share * n)
    order = torch.cat([_cycled(new, k, gen), _cycled(old, n - k, gen)])
    return order[torch.randperm(n, generator=gen)]


def recent_rows(n_train: int, count: int, share: float | None) -> RecentRows | None:
    """The last ``count`` of ``n_train`` training rows as :class:`RecentRows` at ``share``
    (``None`` when ``count`` is 0 or ``share`` is ``None``); an :class:`InputError` when there
    are not that many rows or the share is outside (0, 1)."""
    if not count or share is None:
        return None
    if not 0 < count <= n_train or not 0 < share < 1:
        raise InputError(
            f"recent rows: {count} of {n_train} training rows at share {share}; expected "
            "1..n_train rows and a share strictly between 0 and 1"
        )
    return RecentRows(n_train - count, n_train, share)
