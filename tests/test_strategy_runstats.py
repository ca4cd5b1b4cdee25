"""The registry's runs in the knowledge base: folded in once each, unfinished ones later."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest
from sqlalchemy import delete

from pomlia_hpc.registry import Registry, Run
from pomlia_hpc.strategy import cost, kb
from tests.fixtures.factories import row_task


def _run(
    reg: Registry, task_id: int, arch: str, status: str, val: float | None = None, cost: float = 10
) -> int:
    metrics: dict[str, Any] = {}
    if val is not None:
        metrics = {"objective": val, "val": {"acc": val}, "test": {"acc": val - 0.05}}
    with reg.session() as s:
        run = Run(task_id=task_id, config={"arch": arch}, metrics=metrics, status=status)
        run.cost_s = cost
        s.add(run)
        s.flush()
        return int(run.id)


def _finish(reg: Registry, run_id: int, val: float) -> None:
    with reg.session() as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.status = "ok"
        run.metrics = {"objective": val, "val": {"acc": val}, "test": {"acc": val - 0.05}}


def _by_arch(reg: Registry) -> dict[str, kb.Observation]:
    obs, meta = kb.registry_observations(reg, "acc")
    assert meta["t"]["n_train"] == 100
    return {o.strategy["arch"]: o for o in obs}


def test_runs_counted_once_and_unfinished_ones_later(registry: Registry) -> None:
    reg = registry
    tid = row_task(reg)
    _run(reg, tid, "small_cnn", "ok", 0.7)
    _run(reg, tid, "small_cnn", "crashed", cost=40.0)  # a crashed run's seconds are no cost
    waiting = _run(reg, tid, "resnet18", "running")
    got = _by_arch(reg)
    assert (got["small_cnn"].n_runs, got["small_cnn"].n_failed) == (2, 1)
    assert got["small_cnn"].value == pytest.approx(0.65) and got["small_cnn"].cost_s == 10.0
    assert "resnet18" not in got  # still running: not counted yet
    assert _by_arch(reg)["small_cnn"].n_runs == 2  # read again: nothing counted twice
    _finish(reg, waiting, 0.9)
    best = _run(reg, tid, "small_cnn", "ok", 0.8, cost=20.0)
    got = _by_arch(reg)
    # the run finished after it was first seen: its test value and run, counted now
    assert (got["resnet18"].n_runs, got["resnet18"].value) == (1, pytest.approx(0.85))
    assert got["resnet18"].evidence == (waiting,)
    # the best run's test value; the mean seconds of the successful runs
    assert (got["small_cnn"].value, got["small_cnn"].cost_s) == (pytest.approx(0.75), 15.0)
    assert got["small_cnn"].n_runs == 3 and got["small_cnn"].evidence == (best,)
    assert _by_arch(reg)["resnet18"].n_runs == 1


def _run_with_id(reg: Registry, task_id: int, run_id: int, status: str, val: float = 0.0) -> None:
    metrics = {"objective": val, "test": {"acc": val}} if status == "ok" else {}
    with reg.session() as s:
        s.add(
            Run(
                id=run_id,
                task_id=task_id,
                config={"arch": "small_cnn"},
                status=status,
                metrics=metrics,
                cost_s=1.0,
            )
        )


def test_a_run_that_becomes_visible_after_a_higher_id_is_counted(registry: Registry) -> None:
    """Ids come at insert, visibility at commit: two drivers can commit run 101 before run 100.
    The knowledge base read in between must still count run 100 once it is visible."""
    tid = row_task(registry)
    _run_with_id(registry, tid, 101, "running")
    assert _by_arch(registry) == {}  # read while only 101 is visible
    _run_with_id(registry, tid, 100, "ok", 0.95)  # commits late, with the lower id
    _run_with_id(registry, tid, 102, "ok", 0.5)
    got = _by_arch(registry)["small_cnn"]
    assert (got.n_runs, got.value, got.evidence) == (2, 0.95, (100,))
    assert _by_arch(registry)["small_cnn"].n_runs == 2  # and only once


def test_of_two_runs_with_the_best_objective_the_lower_id_counts_whenever_read(
    registry: Registry,
) -> None:
    """The tie is broken as :mod:`pomlia_hpc.strategy.outcomes` breaks it, not by which run
    was folded first (a read between the two used to keep the later run)."""
    for name, read_between in (("t", False), ("u", True)):
        tid = row_task(registry, name)
        first = _run(registry, tid, "small_cnn", "running")
        _run(registry, tid, "small_cnn", "ok", 0.9)
        if read_between:
            kb.registry_observations(registry, "acc")
        _finish(registry, first, 0.9)
        obs, _ = kb.registry_observations(registry, "acc")
        assert [o.evidence for o in obs if o.dataset == name] == [(first,)], name


def test_runs_deleted_after_they_were_counted_are_no_longer_counted(registry: Registry) -> None:
    """The summaries kept counting runs deleted from the registry (their best run, its value,
    their number). A refresh notices the deletion and builds the summaries again, whether the
    delete removed the run's kb_run_seen row too (foreign keys enforced) or left it behind
    (the sqlite3 shell, where foreign keys are off)."""
    tid = row_task(registry)
    kept = _run(registry, tid, "small_cnn", "ok", 0.7)
    best = _run(registry, tid, "small_cnn", "ok", 0.9)
    crashed = _run(registry, tid, "resnet18", "crashed")
    got = _by_arch(registry)
    assert (got["small_cnn"].n_runs, got["small_cnn"].evidence) == (2, (best,))
    assert got["resnet18"].n_runs == 1
    with registry.session() as s:
        s.execute(delete(Run).where(Run.id == best))
    got = _by_arch(registry)
    assert (got["small_cnn"].n_runs, got["small_cnn"].evidence) == (1, (kept,))
    assert got["small_cnn"].value == pytest.approx(0.65) and got["resnet18"].n_runs == 1
    if registry.engine.dialect.name == "sqlite":
        database = registry.engine.url.database
        assert database is not None
        with contextlib.closing(sqlite3.connect(database)) as conn, conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (crashed,))  # foreign keys off
        assert set(_by_arch(registry)) == {"small_cnn"}
    assert _by_arch(registry)["small_cnn"].n_runs == 1  # nothing counted twice after a rebuild


def test_a_strategys_cost_is_one_run_at_the_tasks_full_budget(registry: Registry) -> None:
    """Seconds per epoch trained (a study's budgets span 3 to 60 epochs, and a promoted run
    resumes from its checkpoint: its seconds cover only the epochs it added) times the epochs
    of a full run on the task, not the mean of runs of any length."""
    tid = row_task(registry)  # 100 training images: a full run is 60 epochs
    # (budget, epochs it trained, seconds): the 27-epoch run resumed from the 9-epoch one's
    for budget, trained, seconds in ((3, 3, 30.0), (9, 9, 90.0), (27, 18, 180.0)):
        with registry.session() as s:
            s.add(
                Run(
                    task_id=tid,
                    config={"arch": "small_cnn"},
                    status="ok",
                    budget=budget,
                    cost_s=seconds,
                    metrics={"objective": 0.5, "test": {"acc": 0.5}, "epochs_run": trained},
                )
            )
    assert cost.full_epochs(100) == 60 and cost.full_epochs(100_000) == 9
    assert _by_arch(registry)["small_cnn"].cost_s == pytest.approx(10.0 * 60)
    # projected to 1,000x the images: 1,000x the seconds per epoch, at 9 epochs, not 60
    scaled = cost.measured(600.0, 100, 100_000, (60, 9))
    assert scaled.wall_s == pytest.approx(10.0 * 1000 * 9) and scaled.basis == "measured"


def test_a_cancelled_run_is_no_failure_of_its_strategy(registry: Registry) -> None:
    # A trial cancelled by a user (or with its driver) says nothing about its configuration.
    tid = row_task(registry)
    _run(registry, tid, "small_cnn", "ok", 0.7)
    _run(registry, tid, "small_cnn", "cancelled", cost=40.0)
    got = _by_arch(registry)
    assert (got["small_cnn"].n_runs, got["small_cnn"].n_failed) == (1, 0)
    assert got["small_cnn"].cost_s == 10.0


def test_a_cancelled_run_leaves_the_waiting_list(registry: Registry) -> None:
    from pomlia_hpc.registry import KbRunSeen
    from pomlia_hpc.strategy import runstats

    tid = row_task(registry)
    _run(registry, tid, "small_cnn", "ok", 0.7)
    _run(registry, tid, "small_cnn", "cancelled", cost=40.0)
    _by_arch(registry)
    with registry.session() as s:
        waiting = s.query(KbRunSeen).filter(KbRunSeen.done.is_(False)).count()
    assert waiting == 0  # not examined again on every refresh
    assert runstats.refresh(registry, {tid: 28}) == 0
    got = _by_arch(registry)
    assert (got["small_cnn"].n_runs, got["small_cnn"].n_failed) == (1, 0)


def test_a_cancelled_run_resumed_under_its_id_is_counted_when_it_ends(
    registry: Registry,
) -> None:
    # A resumed study submits a cancelled trial again under its id: examined once as
    # cancelled, its later result must still count (the summaries are built again).
    tid = row_task(registry)
    _run(registry, tid, "small_cnn", "ok", 0.7)
    again = _run(registry, tid, "small_cnn", "cancelled", cost=40.0)
    assert _by_arch(registry)["small_cnn"].n_runs == 1
    _finish(registry, again, 0.9)
    got = _by_arch(registry)["small_cnn"]
    assert (got.n_runs, got.n_failed, got.value) == (2, 0, pytest.approx(0.85))


@pytest.mark.postgres
def test_two_refreshes_that_both_rebuild_count_each_run_once_on_postgres(pg_url: str) -> None:
    """Refresh A rebuilds the summaries and waits before its commit; refresh B, started
    meanwhile, must wait for it and then count nothing again (it used to delete A's rows it
    could not see yet, then fold every run onto A's: each run counted twice)."""
    import threading
    import time
    from collections.abc import Iterator

    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from pomlia_hpc.strategy import runstats

    reg = Registry.open(pg_url)
    task_id = row_task(reg)
    _run(reg, task_id, "small_cnn", "ok", 0.9)
    _run(reg, task_id, "small_cnn", "ok", 0.8)
    kb.registry_observations(reg, "acc")
    with reg.session() as s:  # rows of another format: both refreshes build all again
        s.execute(text("UPDATE kb_run_stats SET summary_format = NULL"))
        s.execute(text("UPDATE kb_run_seen SET summary_format = NULL"))

    paused, go = threading.Event(), threading.Event()

    class Held(Registry):
        @contextlib.contextmanager
        def session(self) -> Iterator[Session]:
            with super().session() as s:
                yield s
                paused.set()  # the refresh is done, its commit waits
                assert go.wait(120)

    folded: dict[str, Any] = {}

    def refresh(name: str, r: Registry) -> None:
        try:
            folded[name] = runstats.refresh(r, {}, {})
        except Exception as exc:  # reported by the assertion below
            folded[name] = exc

    reg_a, reg_b = Held(pg_url), Registry(pg_url)
    a = threading.Thread(target=refresh, args=("a", reg_a))
    a.start()
    assert paused.wait(120)
    b = threading.Thread(target=refresh, args=("b", reg_b))
    b.start()
    deadline = time.monotonic() + 120  # until B waits on a lock A holds
    waiting = 0
    while not waiting and time.monotonic() < deadline and b.is_alive():
        with reg.session() as s:
            waiting = s.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
        time.sleep(0.05)
    go.set()
    a.join(120)
    b.join(120)
    assert folded == {"a": 2, "b": 0}
    (obs,) = kb.registry_observations(reg, "acc")[0]
    assert obs.n_runs == 2
    for r in (reg_a, reg_b, reg):
        r.dispose()


def _summaries(reg: Registry) -> list[tuple[Any, ...]]:
    from pomlia_hpc.registry import KbRunStats

    with reg.session() as s:
        return sorted(
            (st.task_id, st.strategy_key, st.n_runs, st.n_failed, st.best_run_id, st.cost_sum)
            for st in s.query(KbRunStats)
        )


def test_the_fold_reads_the_runs_in_batches(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first refresh read every run (with its training history) in one query, so its
    memory grew with the registry (~0.6 GB at 100,000 runs); it reads them in id order,
    ``BATCH`` at a time, and counts the same."""
    from sqlalchemy import event

    from pomlia_hpc.registry import KbRunSeen, KbRunStats
    from pomlia_hpc.strategy import runstats

    tid = row_task(registry)
    archs = ("small_cnn", "resnet18", "small_cnn", "mobilenet_v3_small")
    for i in range(10):
        status = "crashed" if i % 4 == 3 else "ok"
        _run(registry, tid, archs[i % 4], status, None if status == "crashed" else 0.5 + i / 50)
    waiting = _run(registry, tid, "resnet18", "running")
    monkeypatch.setattr(runstats, "BATCH", 1000)
    assert runstats.refresh(registry, {tid: 28}) == 10
    whole = _summaries(registry)
    with registry.session() as s:  # fold it all again, now in batches of 3
        s.execute(delete(KbRunStats))
        s.execute(delete(KbRunSeen))
    limits: list[Any] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "kb_run_seen" in statement and "FROM runs" in statement:  # the examined runs
            limits.append("LIMIT" in statement)

    monkeypatch.setattr(runstats, "BATCH", 3)
    event.listen(registry.engine, "before_cursor_execute", seen)
    try:
        assert runstats.refresh(registry, {tid: 28}) == 10
    finally:
        event.remove(registry.engine, "before_cursor_execute", seen)
    assert limits == [True] * 4  # 11 runs, 3 a query (the last query returns 2)
    assert _summaries(registry) == whole
    _finish(registry, waiting, 0.9)  # a waiting run, examined again later, is counted once
    assert runstats.refresh(registry, {tid: 28}) == 1
    assert runstats.refresh(registry, {tid: 28}) == 0
    assert sum(n for _, _, n, *_ in _summaries(registry)) == 11
