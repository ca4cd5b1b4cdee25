"""SQLite connections of the registry: WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` (see
:mod:`pomlia_hpc.registry.db`)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, event


def _wal_mode(cur: sqlite3.Cursor, busy_timeout_s: float) -> None:
    """Switch the database to WAL, waiting up to ``busy_timeout_s`` seconds for the lock.
    Switching needs an exclusive lock and SQLite answers "database is locked" at once, without
    its busy handler, while another process creates or migrates a fresh registry; once the file
    is in WAL mode (it stays so) there is nothing to switch."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sqlite_setup(engine: Engine, busy_timeout_s: float) -> None:
    """Set up each SQLite connection of ``engine``: a busy timeout of ``busy_timeout_s``
    seconds, WAL, foreign keys, and ``BEGIN IMMEDIATE`` (the module docstring of
    :mod:`pomlia_hpc.registry.db` says why)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        _wal_mode(cur, busy_timeout_s)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
