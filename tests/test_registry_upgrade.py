"""Upgrading a registry an older pomlia made: the schema change is said and can be undone, a
user who may only read gets one line, an older process's run summaries are built again.

The older state is built here (Alembic to revision 0007, rows as the older code wrote them),
not with an older checkout."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    KbRunSeen,
    KbRunStats,
    Registry,
    RegistryReadOnlyError,
    Run,
    Task,
)
from pomlia_hpc.registry.db import head_revision, upgrade
from pomlia_hpc.strategy import kb
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.services import PG_URL

OLD = "0007"  # the schema of release 511a219


def _pomlia(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[Any, str, str]:
    """Run ``pomlia ARGS`` as the console script does: (exit code, stdout with its runs of
    white space made one space, stderr)."""
    code, out, err = pomlia_main(monkeypatch, capsys, *args)
    return code, " ".join(out.split()), err


def _old_registry(url: str) -> None:
    """A registry at revision 0007 with a task and two finished runs of one strategy: a 1-epoch
    test run with the higher value and a full 60-epoch run."""
    reg = Registry(url)
    upgrade(reg.engine, OLD)
    with reg.session() as s:
        ds = Dataset(name="t")
        s.add(ds)
        s.flush()
        fp = {"counts": {"train": 100}, "image_size": [28, 28], "channels": 1, "n_classes": 2}
        ver = DatasetVersion(dataset_id=ds.id, version="v1", store_path="-", fingerprint=fp)
        s.add(ver)
        s.flush()
        task = Task(name="t", dataset_version_id=ver.id, metric="acc", task_type="binary")
        s.add(task)
        s.flush()
        for run_id, epochs, value in ((1, 1, 0.95), (2, 60, 0.7)):
            metrics = {"objective": value, "test": {"acc": value}, "epochs": epochs}
            s.add(
                Run(
                    id=run_id,
                    task_id=task.id,
                    config={"arch": "small_cnn"},
                    status="ok",
                    metrics=metrics,
                    cost_s=10.0,
                )
            )
    reg.dispose()


def _old_process_refills(reg: Registry) -> None:
    """What release 511a219's refresh writes after migration 0008 emptied the tables: its
    own columns only (n_short, timed_n, epoch_s from their server defaults), the 1-epoch run
    as the strategy's best, both runs marked seen."""
    with reg.session() as s:
        task_id = s.scalar(select(Task.id))
        s.execute(
            text(
                "INSERT INTO kb_run_stats (task_id, strategy_key, strategy, n_runs, n_failed, "
                "best_run_id, best_objective, best_value, cost_sum, n_cost, timed_s, "
                "timed_epochs) VALUES (:t, :k, :st, 2, 0, 1, 0.95, 0.95, 20.0, 2, 0, 0)"
            ),
            {"t": task_id, "k": _strategy_key(), "st": '{"arch": "small_cnn"}'},
        )
        s.execute(
            text("INSERT INTO kb_run_seen (run_id, done) VALUES (1, :d), (2, :d)"), {"d": True}
        )


def _strategy_key() -> str:
    from pomlia_hpc.strategy.longformat import strategy_key
    from pomlia_hpc.strategy.runstats import run_strategy

    return strategy_key(run_strategy({"arch": "small_cnn"}, 28))


def test_summaries_an_older_process_writes_after_the_upgrade_are_built_again(db_url: str) -> None:
    _old_registry(db_url)
    reg = Registry.open(db_url)  # the new release migrates ...
    assert reg.upgraded == (OLD, head_revision())
    _old_process_refills(reg)  # ... and an old `loop watch` still running refills the tables
    (obs,), _ = kb.registry_observations(reg, "acc")  # what `pomlia recommend` reads
    # counted as this release counts: the 1-epoch run is a short run, not the value
    assert (obs.n_runs, obs.value, obs.evidence) == (2, 0.7, (2,))
    with reg.session() as s:
        (st,) = s.scalars(select(KbRunStats)).all()
        assert (st.n_short, st.short_value, st.short_epochs) == (1, 0.95, 1.0)
        assert st.summary_format is not None
        seen = s.scalars(select(KbRunSeen)).all()
        assert len(seen) == 2 and all(r.summary_format == st.summary_format for r in seen)
    (again,), _ = kb.registry_observations(reg, "acc")
    assert (again.n_runs, again.value) == (2, 0.7)  # read again: nothing counted twice
    reg.dispose()


def test_a_command_that_upgrades_the_schema_says_so_and_status_shows_the_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "w"
    home.mkdir()
    url = f"sqlite:///{home / 'registry.db'}"
    _old_registry(url)
    code, out, err = _pomlia(monkeypatch, capsys, "--home", str(home), "data", "list")
    assert code == 0, err
    head = head_revision()
    assert err == f"registry {url}: schema upgraded {OLD} -> {head}\n"
    code, out, err = _pomlia(monkeypatch, capsys, "--home", str(home), "status")
    assert code == 0 and err == ""  # upgraded once: not said again
    assert f"schema : revision {head}" in out


def test_downgrade_round_trip_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "w"
    url = f"sqlite:///{home / 'registry.db'}"
    assert _pomlia(monkeypatch, capsys, "--home", str(home), "init")[0] == 0
    reg = Registry.open(url)
    with reg.session() as s:
        s.add(Dataset(name="kept"))
    kb.registry_observations(reg, "acc")
    head = reg.schema_revision()
    # asked first: "n" changes nothing
    monkeypatch.setattr(sys, "stdin", _Answer("n\n"))
    code, out, _ = _pomlia(monkeypatch, capsys, "--home", str(home), "registry", "downgrade", OLD)
    assert code == 1 and "nothing changed" in out and reg.schema_revision() == head
    code, out, err = _pomlia(
        monkeypatch, capsys, "--home", str(home), "registry", "downgrade", OLD, "--yes"
    )
    assert code == 0, err
    assert f"schema downgraded {head} -> {OLD}" in out
    assert reg.schema_revision() == OLD
    columns = {c["name"] for c in inspect(reg.engine).get_columns("kb_run_stats")}
    assert "n_short" not in columns and "summary_format" not in columns
    assert "origin" not in {c["name"] for c in inspect(reg.engine).get_columns("encoders")}
    with reg.session() as s:
        assert s.scalars(select(Dataset.name)).all() == ["kept"]
    # and up again, said on stderr, the data still there
    code, out, err = _pomlia(monkeypatch, capsys, "--home", str(home), "registry", "upgrade")
    assert code == 0 and f"schema upgraded {OLD} -> {head}" in err
    assert f"schema at revision {head}" in out and reg.schema_revision() == head
    reg.dispose()


class _Answer:
    """A stdin that answers a question (``typer.confirm``) with ``text``."""

    def __init__(self, answer: str) -> None:
        self.lines = [answer]

    def readline(self, *_: Any) -> str:
        return self.lines.pop(0) if self.lines else ""

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("revision", "expected"),
    [("0009x", "cannot downgrade to revision '0009x'; expected one of 0001"), ("9999", "below")],
)
def test_downgrade_to_a_revision_not_below_the_current_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    revision: str,
    expected: str,
) -> None:
    home = tmp_path / "w"
    assert _pomlia(monkeypatch, capsys, "--home", str(home), "init")[0] == 0
    code, _, err = _pomlia(
        monkeypatch, capsys, "--home", str(home), "registry", "downgrade", revision, "--yes"
    )
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err and "Traceback" not in err


@pytest.mark.postgres
def test_a_read_only_user_on_a_registry_that_needs_an_upgrade_gets_one_line(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    _old_registry(pg_url)
    schema = pg_url.rsplit("%3D", 1)[1]
    role = f"ro_{uuid.uuid4().hex[:10]}"
    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'ro'")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    user = PG_URL.split("://", 1)[1].split("@", 1)[0]
    ro_url = pg_url.replace(f"{user}@", f"{role}:ro@", 1)
    try:
        with pytest.raises(RegistryReadOnlyError) as exc:
            Registry.open(ro_url, create=False)
        head = head_revision()
        assert f"its schema is at revision {OLD} and this pomlia needs {head}" in str(exc.value)
        assert "permission denied" in str(exc.value) and "pomlia registry upgrade" in str(exc.value)
        code, _, err = _pomlia(monkeypatch, capsys, "--db-url", ro_url, "data", "list")
        assert code == 2 and err.count("\n") == 1 and "this pomlia needs" in err, err
        assert "registry database error" not in err and ":ro@" not in err  # password hidden
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
            conn.execute(f"REVOKE USAGE ON SCHEMA {schema} FROM {role}")
            conn.execute(f"DROP ROLE {role}")
    reg = Registry.open(pg_url)  # a user with write access upgrades it
    assert reg.schema_revision() == head_revision()
    reg.dispose()


def test_a_sqlite_uri_is_refused_with_the_url_form_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "w"
    assert _pomlia(monkeypatch, capsys, "--home", str(home), "init")[0] == 0
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///file:{home}/registry.db?mode=ro&uri=true"
    for command in (["data", "list"], ["init"]):
        code, _, err = _pomlia(monkeypatch, capsys, "--home", str(home), "--db-url", uri, *command)
        assert code == 2 and err.count("\n") == 1, err
        assert f"registry URL '{uri}': SQLite URI filenames and query arguments" in err
        assert f"expected sqlite:///PATH, here sqlite:///{home}/registry.db" in err
        assert "recover" not in err and "does not exist" not in err
    assert not (tmp_path / "file:").exists()  # no folder made from the URI taken for a path


def test_downgrade_below_0007_with_a_dataset_version_and_back_up(db_url: str) -> None:
    """0007's downgrade rebuilds ``datasets`` (copy, DROP, rename on SQLite), which versions,
    tasks and runs refer to: the references must survive it, and the way up again."""
    _old_registry(db_url)  # a dataset with a version, a task and two runs ...
    reg = Registry.open(db_url)  # ... at the newest schema
    kb.registry_observations(reg, "acc")  # run summaries filled
    head = reg.schema_revision()
    assert reg.downgrade("0006") == head
    assert reg.schema_revision() == "0006"
    assert "current_version_id" not in {
        c["name"] for c in inspect(reg.engine).get_columns("datasets")
    }
    upgrade(reg.engine)
    assert reg.schema_revision() == head
    with reg.session() as s:
        ds = s.scalars(select(Dataset)).one()
        ver = s.scalars(select(DatasetVersion)).one()
        task = s.scalars(select(Task)).one()
        assert (ver.dataset_id, task.dataset_version_id) == (ds.id, ver.id)
        assert sorted(s.scalars(select(Run.id)).all()) == [1, 2]
    (obs,), _ = kb.registry_observations(reg, "acc")
    assert obs.n_runs == 2
    reg.dispose()


def test_a_downgrade_that_fails_half_way_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All the migrations of a downgrade run in one transaction: a reference that would not
    hold after them (the foreign key check at the end) refuses the whole downgrade, one line,
    and the schema stays at the newest revision (not at one of the steps on the way)."""
    home = tmp_path / "w"
    url = f"sqlite:///{home / 'registry.db'}"
    assert _pomlia(monkeypatch, capsys, "--home", str(home), "init")[0] == 0
    head = head_revision()
    import sqlite3

    with sqlite3.connect(home / "registry.db") as raw:  # foreign keys off: a dangling version
        raw.execute(
            "INSERT INTO dataset_versions (dataset_id, version, store_path, n_images, meta, "
            "fingerprint, created_at) VALUES (999, 'v1', '-', 0, '{}', '{}', '2026-01-01')"
        )
    code, _, err = _pomlia(
        monkeypatch, capsys, "--home", str(home), "registry", "downgrade", "0006", "--yes"
    )
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "nothing changed" in err and "dataset_versions" in err
    reg = Registry.open(url, migrate=False)
    assert reg.schema_revision() == head  # 0009 and 0008 were not left undone
    columns = {c["name"] for c in inspect(reg.engine).get_columns("kb_run_stats")}
    assert "summary_format" in columns and "n_short" in columns
    reg.dispose()


def test_only_the_process_that_migrated_says_it_upgraded(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes open an old schema at once: both read the old revision, one migrates,
    the other finds the schema current under the migration lock and says nothing."""
    from pomlia_hpc.registry import db

    _old_registry(db_url)
    first = Registry.open(db_url)
    assert first.upgraded == (OLD, head_revision())
    first.dispose()
    # the second read the revision before the first migrated
    monkeypatch.setattr(db, "current_revision", lambda engine: OLD)
    second = Registry.open(db_url)
    assert second.upgraded is None and second.upgrade_note() is None
    second.dispose()


@pytest.mark.parametrize("query", ["mode=ro", "cache=shared", "timeout=5"])
def test_a_sqlite_url_with_a_query_argument_is_refused_and_the_file_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], query: str
) -> None:
    """``?mode=ro`` without ``uri=true``: SQLAlchemy ignored it with a warning, opened the file
    read-write and migrated it, though the message and the README said it was refused."""
    home = tmp_path / "w"
    home.mkdir()
    db = home / "registry.db"
    _old_registry(f"sqlite:///{db}")
    before = db.read_bytes()
    url = f"sqlite:///{db}?{query}"
    code, _, err = _pomlia(
        monkeypatch, capsys, "--home", str(home), "--db-url", url, "data", "list"
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"registry URL '{url}': SQLite URI filenames and query arguments" in err
    assert f"expected sqlite:///PATH, here sqlite:///{db}" in err
    assert db.read_bytes() == before  # not migrated


def test_an_older_release_s_encoders_keep_the_refresh_name_rule_after_the_upgrade(
    db_url: str, tmp_path: Path
) -> None:
    """Encoders registered before 0010 record no lineage: an older release's refresh `ae-r1`
    (ae's settings, no marker, no pointer, not yet embedded) is still found as ae's unfinished
    refresh by its name, and ae stays the default encoder, as before the upgrade."""
    import sqlalchemy as sa

    from pomlia_hpc.fingerprint.current import default_encoder
    from pomlia_hpc.workspace import Workspace

    reg = Registry(db_url)
    upgrade(reg.engine, "0009")
    encoders = sa.Table("encoders", sa.MetaData(), autoload_with=reg.engine)
    config = {"encoder": {"latent_dim": 2}, "epochs": 1}
    with reg.engine.begin() as conn:
        for name in ("ae", "ae-r1"):  # the columns of 0009, as the older release wrote them
            conn.execute(
                sa.insert(encoders).values(
                    name=name,
                    config=config,
                    dataset_version_ids=[],
                    loss_curve=[],
                    checkpoint_path="",
                    created_at=sa.func.now(),
                )
            )
    reg.dispose()
    reg = Registry.open(db_url)
    ws = Workspace(home=tmp_path / "w", db_url=db_url, cluster_profile="local")
    said: list[str] = []
    assert default_encoder(reg, ws, said.append) == "ae"
    assert said and "the refresh an older release left unfinished (ae-r1)" in said[0], said
    reg.dispose()


@contextmanager
def _role(pg_url: str, *grants: str) -> Iterator[str]:
    """A login role with ``grants`` on the test schema (``{schema}`` in them is its name);
    yields ``pg_url`` as that role, and drops the role afterwards."""
    import psycopg

    schema = pg_url.rsplit("%3D", 1)[1]
    role = f"ro_{uuid.uuid4().hex[:10]}"
    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'ro'")
        for grant in grants:
            conn.execute(grant.format(schema=schema, role=role))
    user = PG_URL.split("://", 1)[1].split("@", 1)[0]
    try:
        yield pg_url.replace(f"{user}@", f"{role}:ro@", 1)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
            conn.execute(f"REVOKE USAGE ON SCHEMA {schema} FROM {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_init_by_a_user_who_may_not_create_tables_is_one_line_not_a_bug(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pomlia init` on a database where the user may not create tables was exit 70, "registry
    database error: permission denied for schema ...": the status of a bug in pomlia."""
    home = str(tmp_path / "w")
    with _role(pg_url, "GRANT USAGE ON SCHEMA {schema} TO {role}") as ro_url:  # no CREATE
        code, out, err = _pomlia(monkeypatch, capsys, "--home", home, "--db-url", ro_url, "init")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "this database user may not create the registry's tables (permission denied" in err
    assert "expected a user with the CREATE right there" in err and ":ro@" not in err
    assert not (tmp_path / "w").exists()  # no workspace skeleton left


@pytest.mark.postgres
def test_a_write_by_a_read_only_user_is_one_line_not_a_bug(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only role (what the README offers for users who may only read) running `data
    add` got exit 70, "registry database error: permission denied for table datasets", the
    status of a bug; the store it had published is removed again."""
    from tests.fixtures.factories import nothing_visible, tiny_npz

    Registry.open(pg_url).dispose()  # a registry at the newest schema
    home = tmp_path / "w"
    npz = str(tiny_npz(tmp_path / "b.npz"))
    grants = (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
    )
    with _role(pg_url, *grants) as ro_url:
        common = ("--home", str(home), "--db-url", ro_url)
        assert _pomlia(monkeypatch, capsys, *common, "data", "list")[0] == 0  # reading works
        code, _, err = _pomlia(monkeypatch, capsys, *common, "data", "add", "blood", npz)
    error = err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: registry postgresql+psycopg://"), err
    assert "this database user may not write it (permission denied for table" in error
    assert "expected a user with write access for this command" in error
    assert "Traceback" not in err and ":ro@" not in err
    ws = Workspace(home=home, db_url=pg_url, cluster_profile="local")
    assert nothing_visible(ws, "blood")


@pytest.mark.postgres
def test_a_read_refused_to_a_database_user_is_said_as_a_read(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role without SELECT on a table (one a schema upgrade added after its grants) running
    `data list` was told "this database user may not write it ... (commands that only read
    work as this one)": the command was one that only reads."""
    Registry.open(pg_url).dispose()
    grants = (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "REVOKE SELECT ON {schema}.datasets FROM {role}",
    )
    with _role(pg_url, *grants) as ro_url:
        common = ("--home", str(tmp_path / "w"), "--db-url", ro_url)
        code, out, err = _pomlia(monkeypatch, capsys, *common, "data", "list")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "this database user may not read it (permission denied for table datasets)" in err
    assert "expected the SELECT right on every table of the registry" in err
    assert "may not write" not in err and ":ro@" not in err
