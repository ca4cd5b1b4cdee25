"""Registry on SQLite and on a real PostgreSQL: schema from migrations, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import func, inspect, select

from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.registry import Dataset, DatasetVersion, Job, Registry
from pomlia_hpc.registry.db import current_revision, head_revision

TABLES = {
    "datasets",
    "dataset_versions",
    "tasks",
    "encoders",
    "fingerprint_sets",
    "runs",
    "models",
    "deployments",
    "monitor_reports",
    "jobs",
    "alembic_version",
}


def test_migrations_create_schema(registry: Registry) -> None:
    names = set(inspect(registry.engine).get_table_names())
    assert names >= TABLES
    assert current_revision(registry.engine) == head_revision()


def test_reopen_is_idempotent(db_url: str) -> None:
    Registry.open(db_url).dispose()
    reg = Registry.open(db_url)
    assert current_revision(reg.engine) == head_revision()
    reg.dispose()


def test_rows_round_trip(registry: Registry) -> None:
    with registry.session() as s:
        ds = Dataset(name="pathmnist")
        s.add(ds)
        s.flush()
        s.add(
            DatasetVersion(
                dataset_id=ds.id,
                version="abc",
                store_path="/x",
                meta={"classes": ["a", "b"]},
                fingerprint={"n": 3},
            )
        )
    with registry.session() as s:
        v = s.scalars(select(DatasetVersion)).one()
        assert v.meta == {"classes": ["a", "b"]} and v.fingerprint == {"n": 3}


def test_failed_transaction_rolls_back(registry: Registry) -> None:
    try:
        with registry.session() as s:
            s.add(Dataset(name="x"))
            s.flush()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def _writer(url: str, worker: int, n: int, barrier: mp.synchronize.Barrier) -> None:
    reg = Registry(url)
    barrier.wait()  # all writers start together
    for i in range(n):
        record_submission(
            reg, backend="local", scheduler_ids=[f"{worker}-{i}"], name=f"w{worker}", folder="/tmp"
        )
    reg.dispose()


def test_16_concurrent_writers_lose_nothing(registry: Registry) -> None:
    workers, rows = 16, 50
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_writer, args=(registry.url, w, rows, barrier)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers  # no error surfaced in any writer
    with registry.session() as s:
        ids = set(s.scalars(select(Job.scheduler_id)))
    assert ids == {f"{w}-{i}" for w in range(workers) for i in range(rows)}
