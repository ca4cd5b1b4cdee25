"""Registry on SQLite and on a real PostgreSQL: schema from migrations, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import queue
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.errors import ConfigError, NotFoundError, UnavailableError
from pomlia_hpc.registry import Base, Dataset, DatasetVersion, Job, Registry, shown_url
from pomlia_hpc.registry.db import current_revision, head_revision
from pomlia_hpc.registry.lookup import by_name_or_id
from tests.fixtures.cli import pomlia_main

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
    with registry.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(ctx, Base.metadata) == []  # models and migrations agree


def test_times_come_back_aware_utc(registry: Registry) -> None:
    berlin = timezone(timedelta(hours=2))
    started = datetime(2026, 7, 1, 12, 0, tzinfo=berlin)
    (rid,) = record_submission(registry, backend="slurm", scheduler_ids=["1"], name="x", folder="/")
    with registry.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        row.started_at = started
    with registry.session() as s:
        row = s.get(Job, rid)
        assert row is not None
        assert row.started_at == started and row.started_at.tzinfo == UTC
        assert row.submitted_at.tzinfo == UTC


def _opener(url: str, barrier: mp.synchronize.Barrier, out: mp.Queue[str]) -> None:
    barrier.wait()
    try:
        Registry.open(url).dispose()
        out.put("ok")
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def test_fresh_registry_opened_by_several_processes_at_once(db_url: str) -> None:
    # Forked, as the concurrent writers below: a spawned process imported this module, so the
    # CLI and the registry, again (seconds of CPU each); the race is in the database.
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    out: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(db_url, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    except queue.Empty:
        results = ["no answer"]
    for p in procs:
        p.join(30)
    assert results == ["ok"] * 4


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://pomlia:s3cret@127.0.0.1/x", "unknown database driver 'postgres'"),
        ("mysql://pomlia:s3cret@127.0.0.1/x", "driver for 'mysql' is not installed"),
        # No server on the port: unavailable (a script may retry), not a wrong setting.
        ("postgresql+psycopg://pomlia:s3cret@127.0.0.1:1/x", "the database server did not answer"),
    ],
)
def test_bad_registry_url_is_one_clear_error(url: str, expected: str) -> None:
    with pytest.raises((ConfigError, UnavailableError)) as exc:
        Registry.open(url)
    msg = str(exc.value)
    assert expected in msg and "pomlia:***@127.0.0.1" in msg and "s3cret" not in msg


def test_schema_newer_than_code_is_one_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry.open(url)
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    reg.dispose()
    with pytest.raises(ConfigError, match=r"schema revision f00dfeed is newer than this pomlia"):
        Registry.open(url)


def test_another_applications_alembic_table_is_named_as_a_possibility(db_url: str) -> None:
    """A database (or schema) another Alembic application uses holds its `alembic_version`:
    `pomlia init` there said only "newer than this pomlia ...; upgrade pomlia-hpc", which no
    upgrade could mend."""
    reg = Registry(db_url)
    with reg.engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('1975e0c5b2ad')"))
    reg.dispose()
    with pytest.raises(ConfigError) as exc:
        Registry.open(db_url)
    assert "schema revision 1975e0c5b2ad is newer than this pomlia" in str(exc.value)
    assert "if no pomlia made that revision, its table alembic_version is another " in str(
        exc.value
    )
    assert "give pomlia a database or schema of its own" in str(exc.value)


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
    with pytest.raises(RuntimeError, match="boom"), registry.session() as s:  # not swallowed
        s.add(Dataset(name="x"))
        s.flush()
        raise RuntimeError("boom")
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
    # 16 writers released together by a barrier contend from their first row on: 20 rows each
    # (320 commits in all) collide plenty, at less than half the cost of 50 each
    workers, rows = 16, 20
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


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://pomlia@127.0.0.1:1/x?password=s3cret",
        "postgresql+psycopg://pomlia@127.0.0.1:1/x?sslmode=disable&PASSWORD=s3cret",
        "postgresql+psycopg://pomlia:s3cret@127.0.0.1:1/x?sslpassword=s3cret",
    ],
)
def test_a_password_given_as_a_query_parameter_is_hidden_too(url: str) -> None:
    """libpq takes the password as `?password=` as well: only `user:password@` was hidden, so
    `status`, the report and every error line showed the query's password in clear."""
    assert "s3cret" not in shown_url(url) and "=***" in shown_url(url)
    # No server on port 1 (unavailable), or an option libpq does not know (bad setting).
    with pytest.raises((ConfigError, UnavailableError)) as exc:
        Registry.open(url)
    msg = str(exc.value)
    assert "s3cret" not in msg and "=***" in msg


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret@h:bad/db",  # does not parse: SQLAlchemy cannot redact it
        "postgresql+psycopg://u:s3@cret@h:5432/db",  # an unencoded @ in the password
    ],
)
def test_a_password_is_hidden_in_a_url_that_does_not_parse_cleanly(url: str) -> None:
    """The review's case: a bad port sent the URL through the fallback that hid only query
    passwords, and an unencoded `@` left the password's tail after `***@`."""
    assert "s3" not in shown_url(url) and "cret" not in shown_url(url), shown_url(url)
    assert shown_url(url).startswith("postgresql+psycopg://u:***@h")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", "is an in-memory database, empty again in each session"),
        ("sqlite:///", "is an in-memory database"),
        ("sqlite:///:memory:", "is an in-memory database"),
        ("sqlite://registry.db", "names a host ('registry.db', the part after sqlite://)"),
        (
            "sqlite:///~/ws/registry.db",
            "starts with '~', which a URL does not expand (it would be a folder named '~' in "
            f"the current folder; write ~ as {Path.home()})",
        ),
        (
            "sqlite:///~no-such-user-r28a/r.db",
            "starts with '~', which a URL does not expand (it would be a folder named "
            "'~no-such-user-r28a' in the current folder; no user 'no-such-user-r28a' is known "
            "here)",
        ),
    ],
)
def test_a_sqlite_url_that_names_no_file_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    expected: str,
) -> None:
    """`sqlite://` (a path forgotten) made `pomlia init` and `registry recover` say they were
    done while each session opened a new, empty in-memory database: nothing was kept. Two
    slashes (`sqlite://registry.db`, a host) ended in a traceback, exit 70, and `~` (not
    expanded in a URL) made a folder named `~` in the current folder, the registry in it; `~name`
    of no user known here ended in a traceback, exit 70 (expanduser's RuntimeError)."""
    home = tmp_path / "w"
    monkeypatch.chdir(tmp_path)
    for command in (["init"], ["registry", "recover"], ["data", "list"]):
        code, out, err = pomlia_main(
            monkeypatch, capsys, "--home", str(home), "--db-url", url, *command
        )
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"error: registry URL '{url}' {expected}" in err and "Traceback" not in err
        assert "expected sqlite:///PATH (relative to the workspace folder) or sqlite:////" in err
    assert not home.exists()  # no workspace skeleton left by the refused command
    assert not [p.name for p in tmp_path.glob("~*")]


@pytest.mark.parametrize("ref", ["9" * 25, "²", "0"])
def test_a_reference_that_can_be_no_id_is_not_found(registry: Registry, ref: str) -> None:
    """`pomlia data show 99999999999999999999` ended in a traceback, exit 70 ("Python int too
    large to convert to SQLite INTEGER"), and so did `data show ²` (a digit to str.isdigit(),
    no number to int()): each is a name that is not there, listed with the known ones."""
    with registry.session() as s:
        s.add(Dataset(name="blood"))
    with registry.session() as s, pytest.raises(NotFoundError) as exc:
        by_name_or_id(s, Dataset, ref, "dataset")
    assert str(exc.value) == f"dataset '{ref}' not found; known: blood"


def test_a_url_without_a_database_says_where_libpq_took_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With $PGDATABASE set, libpq connects to that database, not to the one named as the user:
    the error said "libpq took the user's name" of a name the user had not given."""
    from pomlia_hpc.registry.pgmissing import missing_database

    url = "postgresql+psycopg://pomlia:p@127.0.0.1:5432/"
    said = 'connection failed: FATAL:  database "elsewhere" does not exist'
    monkeypatch.setenv("PGDATABASE", "elsewhere")
    found = missing_database(url, said, "shown")
    assert found is not None
    assert (
        "the server has no database 'elsewhere' (the URL names no database: libpq took "
        in (found[0])
    )
    assert found[0].endswith("took $PGDATABASE)")
    monkeypatch.delenv("PGDATABASE")
    found = missing_database(url, said.replace("elsewhere", "pomlia"), "shown")
    assert found is not None and found[0].endswith("took the user's name)")
