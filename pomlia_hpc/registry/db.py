"""Connecting to the registry: SQLite (WAL, busy timeout, immediate transactions) or PostgreSQL.

Why ``BEGIN IMMEDIATE`` on SQLite: a deferred transaction that reads and then writes cannot be
upgraded while another process writes, and SQLite then fails at once with "database is locked"
instead of waiting. Taking the write lock at BEGIN makes every writer wait in the busy handler,
so many job processes can record rows at the same time without errors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pomlia_hpc.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, busy_timeout_s: float = 60.0) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL mode and a busy timeout (seconds)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"registry URL '{url}' is not a valid database URL") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # NullPool: a connection per session, so forked job processes never share one.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": busy_timeout_s})
        _sqlite_setup(engine, busy_timeout_s)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_setup(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates "%": escape it (URL-encoded options contain it).
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (creates it on an empty database)."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


class Registry:
    """A handle on the registry database: sessions plus schema management."""

    def __init__(self, url: str, *, busy_timeout_s: float = 60.0) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, busy_timeout_s: float = 60.0, migrate: bool = True) -> Registry:
        """Open the registry at ``url``, upgrading its schema to the newest revision if needed."""
        reg = cls(url, busy_timeout_s=busy_timeout_s)
        if migrate and current_revision(reg.engine) != head_revision():
            upgrade(reg.engine)
        return reg

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as sess, sess.begin():
            yield sess

    def display_url(self) -> str:
        """The URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()
