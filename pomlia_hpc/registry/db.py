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
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pomlia_hpc.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


#: What a registry URL should look like, for error messages.
EXPECTED_URLS = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def make_engine(url: str, *, busy_timeout_s: float = 60.0) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL mode and a busy timeout (seconds)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(
            f"registry URL '{url}' is not a valid database URL; expected {EXPECTED_URLS}"
        ) from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # NullPool: a connection per session, so forked job processes never share one.
            engine = create_engine(
                parsed, poolclass=NullPool, connect_args={"timeout": busy_timeout_s}
            )
            _sqlite_setup(engine, busy_timeout_s)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"registry URL '{_shown(parsed)}': unknown database driver '{parsed.drivername}'; "
            f"expected {EXPECTED_URLS}"
        ) from exc
    except ImportError as exc:
        raise ConfigError(
            f"registry URL '{_shown(parsed)}': the Python driver for '{parsed.drivername}' is "
            f"not installed ({exc}); expected {EXPECTED_URLS}"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"registry URL '{_shown(parsed)}': cannot create the folder of the SQLite file "
            f"({exc.strerror})"
        ) from exc


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


def _scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str | None:
    return _scripts().get_current_head()


def _known_revision(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


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
        if not migrate:
            return reg
        try:
            current = current_revision(reg.engine)
        except DBAPIError as exc:
            reg.dispose()
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise ConfigError(
                f"registry {reg.display_url()}: cannot open the database ({reason}); "
                "expected a reachable server (or writable SQLite file) and correct credentials"
            ) from exc
        head = head_revision()
        if current == head:
            return reg
        if current is not None and not _known_revision(current):
            reg.dispose()
            raise ConfigError(
                f"registry {reg.display_url()}: schema revision {current} is newer than this "
                f"pomlia (head {head}); upgrade pomlia-hpc to use this registry"
            )
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
