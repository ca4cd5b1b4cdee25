"""The polls of a long wait come less often while nothing changes (``cluster.backoff``): a
1000-task array waited for a night asked slurmdbd every second and slurmctld every 15 s."""

from __future__ import annotations

from pomlia_hpc.cluster.backoff import CEILING_S, PATIENCE_S, Backoff


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def polls(pace: Backoff, clock: Clock, seen: object, seconds: float) -> list[float]:
    """The intervals of the polls made over ``seconds`` while every answer is ``seen``."""
    out: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        out.append(pace.next(seen))
        clock.now += out[-1]
    return out


def test_the_interval_stays_until_the_patience_is_spent_then_grows_to_the_ceiling() -> None:
    clock = Clock()
    pace = Backoff(1.0, clock=clock)
    first = polls(pace, clock, "RUNNING", PATIENCE_S)
    assert set(first) == {1.0}  # a job that ends in the first minutes is seen as soon as ever
    later = polls(pace, clock, "RUNNING", 3600)
    assert later == sorted(later) and later[0] > 1.0 and later[-1] == CEILING_S
    assert len(first) + len(later) < 300  # not 3720 polls in the first hour


def test_a_change_brings_the_first_interval_back() -> None:
    clock = Clock()
    pace = Backoff(1.0, clock=clock)
    polls(pace, clock, "PENDING", 3600)
    assert pace.next("RUNNING") == 1.0
    assert set(polls(pace, clock, "RUNNING", PATIENCE_S - 1)) == {1.0}


def test_an_interval_above_the_ceiling_is_kept() -> None:
    clock = Clock()
    pace = Backoff(60.0, clock=clock)
    assert set(polls(pace, clock, "x", 7200)) == {60.0}
