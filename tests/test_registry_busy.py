"""SQLite's write lock held by another process past ``sqlite_busy_timeout_s``: said as such, with
where to raise the timeout, not as an unreachable server or bad credentials."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from pomlia_hpc.cli import main
from pomlia_hpc.errors import BUSY_EXIT
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_process
from tests.fixtures.registries import write_lock_held


def _expected(home: Path) -> str:
    return (
        "another process held the registry's write lock longer than sqlite_busy_timeout_s "
        f"(1 s); retry, or raise it in {home / 'pomlia.yaml'}"
    )


def test_a_lock_held_past_the_busy_timeout_is_named(workspace: Workspace) -> None:
    """Was: "cannot open the database (database is locked); expected a reachable server (or
    writable SQLite file) and correct credentials"."""
    (workspace.home / "pomlia.yaml").write_text("registry:\n  sqlite_busy_timeout_s: 1\n")
    with write_lock_held(workspace.home / "registry.db"):
        res = pomlia_process("--home", str(workspace.home), "task", "list")
    err = " ".join(res.stderr.split())
    assert res.returncode == BUSY_EXIT, res.stderr  # busy, as every lock held elsewhere
    assert err.startswith("error: registry sqlite:///") and _expected(workspace.home) in err
    assert "credentials" not in err and "Traceback" not in err


def test_a_lock_timeout_after_opening_is_named_too(
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A write that waited out the timeout after the registry opened was a bare "registry
    database error: database is locked"."""
    (workspace.home / "pomlia.yaml").write_text("registry:\n  sqlite_busy_timeout_s: 1\n")

    def locked(self: Registry) -> Any:
        locked = sqlite3.OperationalError("database is locked")
        raise OperationalError("BEGIN IMMEDIATE", {}, locked)

    Registry.open(workspace.db_url).dispose()
    monkeypatch.setattr(Registry, "session", locked)
    monkeypatch.setattr(sys, "argv", ["pomlia", "--home", str(workspace.home), "task", "list"])
    with pytest.raises(SystemExit) as ex:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert ex.value.code == BUSY_EXIT
    assert err.startswith("error: registry sqlite:///") and _expected(workspace.home) in err


@pytest.mark.postgres
def test_a_postgresql_lock_held_past_the_timeout_is_busy(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL sessions had no lock timeout: a process hung while it held a table lock made
    every other pomlia command wait for ever, where SQLite's gives up after
    sqlite_busy_timeout_s. The same timeout is now PostgreSQL's lock_timeout: exit 3, named."""
    import psycopg

    from tests.fixtures.services import PG_URL

    Registry.open(pg_url).dispose()
    home = tmp_path / "w"
    home.mkdir()
    (home / "pomlia.yaml").write_text("registry:\n  sqlite_busy_timeout_s: 1\n")
    schema = pg_url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://")) as holder:
        holder.execute(f"LOCK TABLE {schema}.datasets IN ACCESS EXCLUSIVE MODE")  # held
        res = pomlia_process("--home", str(home), "--db-url", pg_url, "data", "list", timeout=60)
        holder.rollback()
    err = " ".join(res.stderr.split())
    assert res.returncode == BUSY_EXIT, res.stderr
    assert "another process held a lock this command waited for (PostgreSQL's lock_timeout)" in err
    assert "longer than sqlite_busy_timeout_s (1 s); retry, or raise it in" in err
    assert "Traceback" not in err and res.stderr.count("\n") == 1


@pytest.mark.postgres
def test_a_postgresql_lock_timeout_set_in_the_url_is_kept(pg_url: str) -> None:
    """A URL whose options set lock_timeout keeps it (pomlia's own is for URLs without)."""
    from sqlalchemy import text

    reg = Registry.open(pg_url.replace("?options=", "?options=-clock_timeout%3D7s%20"))
    try:
        with reg.session() as s:
            assert s.scalar(text("SHOW lock_timeout")) == "7s"
    finally:
        reg.dispose()
    reg = Registry.open(pg_url, busy_timeout_s=2.5)
    try:
        with reg.session() as s:
            assert s.scalar(text("SHOW lock_timeout")) == "2500ms"
    finally:
        reg.dispose()
