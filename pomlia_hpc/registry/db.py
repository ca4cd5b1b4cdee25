"""Connecting to the registry: SQLite (WAL, busy timeout, immediate transactions) or PostgreSQL.

Why ``BEGIN IMMEDIATE`` on SQLite: a deferred transaction that reads and then writes cannot be
upgraded while another process writes, and SQLite then fails at once with "database is locked"
instead of waiting. Taking the write lock at BEGIN makes every writer wait in the busy handler,
so many job processes can record rows at the same time without errors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DatabaseError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pomlia_hpc.errors import (
    BusyError,
    ConfigError,
    InputError,
    NotFoundError,
    UnavailableError,
)
from pomlia_hpc.files import current_umask
from pomlia_hpc.registry.hostcheck import host_unknown, refused_setting
from pomlia_hpc.registry.pgmissing import missing_database
from pomlia_hpc.registry.sqliteconn import sqlite_setup
from pomlia_hpc.registry.sqliteurl import check_sqlite_url, sqlite_refused
from pomlia_hpc.storage import free_space

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: ``Config.attributes`` key under which the migrations' ``env.py`` leaves the revision it found
#: under the migration lock, before migrating (another process may have migrated meanwhile).
FOUND_REVISION = "pomlia_found_revision"


#: What a registry URL should look like, for error messages.
EXPECTED_URLS = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


#: Query parameters of a URL that carry a secret (libpq takes the password as ``?password=``
#: too, not only as ``user:password@``): shown as ``***`` like the password.
SECRET_QUERY_KEYS: tuple[str, ...] = ("password", "sslpassword")
_SECRET_QUERY = re.compile(
    r"([?&](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&#]*", flags=re.IGNORECASE
)


#: ``://user:`` up to the authority's last ``@``: the password, even one with an unencoded
#: ``@`` in it, or in a URL that does not parse (a bad port), which SQLAlchemy cannot redact.
_USER_PASSWORD = re.compile(r"(://[^:/?#@]*:)[^/?#]*@")


def shown_url(url: str | URL) -> str:
    """``url`` as it may be shown, logged or stored: the password of ``user:password@`` and
    of any ``password=`` query parameter replaced by ``***``. The one redaction of registry
    URLs; a string that does not parse as a URL is redacted the same way."""
    try:
        text = (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)
    except Exception:  # shown in the message that refuses it: hide what can be hidden
        text = str(url)
    return _SECRET_QUERY.sub(r"\1***", _USER_PASSWORD.sub(r"\1***@", text))


def lock_name(session: Session, name: str) -> None:
    """Hold a write lock named ``name`` until ``session``'s transaction ends, for writers that
    check a row and then replace or create it (a row that may not exist yet cannot be locked
    with ``SELECT ... FOR UPDATE``). PostgreSQL: a transaction-scoped advisory lock keyed by
    the name; SQLite: the registry's ``BEGIN IMMEDIATE`` already admits one writer at a time."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"pomlia:{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)  # a bigint, as the lock wants
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        # The first statement takes SQLite's write lock (BEGIN IMMEDIATE) if nothing did yet.
        session.execute(text("SELECT 1"))


def make_engine(url: str, *, busy_timeout_s: float = 60.0) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL mode and a busy timeout (seconds)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(
            f"registry URL '{shown_url(url)}' is not a valid database URL; expected {EXPECTED_URLS}"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        check_sqlite_url(url, parsed)
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # NullPool: a connection per session, so forked job processes never share one.
            engine = create_engine(
                parsed, poolclass=NullPool, connect_args={"timeout": busy_timeout_s}
            )
            sqlite_setup(engine, busy_timeout_s)
            return engine
        engine = create_engine(parsed, pool_pre_ping=True)
        if parsed.get_backend_name() == "postgresql":
            _postgres_setup(engine, parsed, busy_timeout_s)
        return engine
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"registry URL '{shown_url(parsed)}': unknown database driver '{parsed.drivername}'; "
            f"expected {EXPECTED_URLS}"
        ) from exc
    except ImportError as exc:
        raise ConfigError(
            f"registry URL '{shown_url(parsed)}': the Python driver for '{parsed.drivername}' is "
            f"not installed ({exc}); expected {EXPECTED_URLS}"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"registry URL '{shown_url(parsed)}': cannot create the folder of the SQLite file "
            f"({exc.strerror})"
        ) from exc


def _postgres_setup(engine: Engine, parsed: URL, lock_timeout_s: float) -> None:
    """Give each PostgreSQL session a ``lock_timeout`` of ``lock_timeout_s`` seconds (the
    ``sqlite_busy_timeout_s`` that bounds SQLite's wait for its write lock): without one, a
    process hung while it held a row, table or advisory lock made every other pomlia command
    wait for ever; now the wait ends in :class:`RegistryBusyError` (exit 3), as on SQLite. A
    ``lock_timeout`` the URL's ``options`` set is left as it is."""
    if "lock_timeout" in str(parsed.query.get("options", "")):
        return
    ms = max(1, round(lock_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {ms}")
        dbapi_conn.commit()  # a SET in a transaction rolled back would be undone


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates "%": escape it (URL-encoded options contain it).
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` with Alembic (creates it on an empty database), all
    migrations in one transaction; returns the revision the schema was at when this process
    took the migration lock (None: no schema yet). Equal to ``revision``: nothing ran here."""
    cfg = alembic_config(engine)
    command.upgrade(cfg, revision)
    found = cfg.attributes.get(FOUND_REVISION)
    return str(found) if found is not None else None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _scripts() -> ScriptDirectory:
    """The shipped migration scripts, read once per process: alembic parses every script file
    to find the head, most of a registry's open (~6 of ~9 ms), and the files are this
    package's own, unchanged while it runs."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str | None:
    return _scripts().get_current_head()


def known_revisions() -> list[str]:
    """The schema revisions this pomlia knows, oldest first."""
    return [sc.revision for sc in reversed(list(_scripts().walk_revisions()))]


def _known_revision(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


class RegistryMissingError(NotFoundError):
    """There is no registry where the settings point (only ``pomlia init`` creates one)."""


class RegistryReadOnlyError(ConfigError):
    """The registry's schema needs an upgrade that this database user may not make."""


class RegistryDamagedError(ConfigError):
    """The registry database is damaged (a corrupt SQLite page, not a database file)."""


class RegistryNewerError(ConfigError):
    """The registry's schema is newer than this pomlia: another install upgraded it."""


class RegistryBusyError(BusyError):
    """SQLite's write lock, or a PostgreSQL lock, stayed with another process for longer than
    the busy timeout (PostgreSQL's ``lock_timeout``)."""


def server_unreachable(url: str, exc: BaseException) -> bool:
    """Whether ``exc``, raised talking to the registry at ``url``, is a database server out of
    reach (refused, timed out, gone mid-command) rather than a refusal by a server that
    answered (bad credentials, no such database) or a SQLite file's problem."""
    if url.startswith("sqlite") or not isinstance(exc, OperationalError):
        return False
    if exc.connection_invalidated:  # SQLAlchemy's own test of a dropped connection
        return True
    # libpq prefixes what the server said with its severity; psycopg gives no SQLSTATE for a
    # refusal at connection time (a wrong password), so the words are all there is to go by
    said = str(exc.orig or exc)
    if getattr(exc.orig, "sqlstate", None) is not None:
        return False
    if host_unknown(url, said):  # a typo, not an outage (a name server down, EAI_AGAIN, is one)
        return False
    if refused_setting(said):  # `?sslmode=bogus`, a port out of range: a typo too
        return False
    # A server that answered but cannot take a connection now (starting up, shutting down,
    # in recovery, out of connection slots: SQLSTATE 57P03 and 53300) is out of reach too.
    return "FATAL:" not in said or any(words in said for words in _NOT_NOW)


#: What PostgreSQL says at connection time when it cannot take one now (57P03, 53300).
_NOT_NOW = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "too many clients already",
    "remaining connection slots are reserved",
)


def write_lock_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" or PostgreSQL's lock timeout (SQLSTATE
    55P03): the busy timeout ran out while another process held the lock this one waited for
    (not a server out of reach, not bad credentials)."""
    if getattr(getattr(exc, "orig", None), "sqlstate", None) == "55P03":  # lock_not_available
        return True
    return "database is locked" in str(getattr(exc, "orig", None) or exc).lower()


def busy_error(url: str, busy_timeout_s: float, settings_file: Path | None) -> RegistryBusyError:
    """The one-line error for a write lock held longer than ``busy_timeout_s`` seconds, naming
    where to raise it (``settings_file``: the workspace's ``pomlia.yaml``)."""
    where = settings_file if settings_file is not None else "the workspace's pomlia.yaml"
    held = (
        "the registry's write lock"
        if url.startswith("sqlite")
        else "a lock this command waited for (PostgreSQL's lock_timeout)"
    )
    return RegistryBusyError(
        f"registry {shown_url(url)}: another process held {held} longer than "
        f"sqlite_busy_timeout_s ({busy_timeout_s:g} s); retry, or raise it in {where} "
        "(registry: sqlite_busy_timeout_s: SECONDS)"
    )


#: Below this many bytes free, a SQLite "disk I/O error" is taken for a full disk: SQLite
#: cannot grow its WAL or shared-memory file then, and says no more than that.
NEARLY_FULL_BYTES = 1 << 20


def sqlite_storage_problem(url: str, exc: BaseException) -> str | None:
    """What the file system under a SQLite registry refused, for an error from it (``exc``),
    and what to do: ``no space left on device at <folder> (0.1 MB free there); free space
    ...`` or ``read-only file system at <folder>: ...``; None for other databases and errors.
    SQLite says only "database or disk is full" or "disk I/O error", naming no file."""
    path = _sqlite_file(url)
    text = str(getattr(exc, "orig", None) or exc).lower()
    words = ("disk is full", "disk i/o error", "readonly", "unable to open")
    if path is None or not any(w in text for w in words):
        return None
    folder = path.parent
    try:
        flags = os.statvfs(folder).f_flag
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if flags & os.ST_RDONLY:
        return (
            f"read-only file system at {folder}: SQLite writes beside the file even to read "
            "(its WAL); remount it writable, or copy the workspace to a writable one"
        )
    if "disk is full" in text or free < NEARLY_FULL_BYTES:
        return (
            f"no space left on device at {folder} ({free_space(folder)} free there); free "
            "space there and run the same command again"
        )
    return None


#: Words of a write refused for lack of rights: PostgreSQL's "permission denied for table ..."
#: (SQLSTATE 42501), "must be owner of table ..." (42501 too), SQLite's "attempt to write a
#: readonly database".
_NO_WRITE_WORDS = ("permission denied", "must be owner", "readonly database")


def write_refused(exc: DBAPIError) -> bool:
    """Whether ``exc`` is a write the database refused this user (not a failure of the write)."""
    if getattr(exc.orig, "sqlstate", None) == "42501":  # psycopg: insufficient_privilege
        return True
    return any(w in str(exc.orig or exc).lower() for w in _NO_WRITE_WORDS)


def refused_right(url: str, exc: DBAPIError) -> str:
    """The one-line error for a statement the registry at ``url`` refused this database user
    (:func:`write_refused`): a read (a ``SELECT``: a table the user may not read, such as one
    a schema upgrade added after the user's grants) is said as such, not as a write."""
    first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else ""
    statement = str(exc.statement or "").lstrip().upper()
    if statement.startswith("SELECT") and "FOR UPDATE" not in statement:
        return (
            f"registry {shown_url(url)}: this database user may not read it ({first}); "
            "expected the SELECT right on every table of the registry (a table that a schema "
            "upgrade added needs its own GRANT)"
        )
    return (
        f"registry {shown_url(url)}: this database user may not write it ({first}); expected "
        "a user with write access for this command (commands that only read work as this one)"
    )


#: Words SQLite uses for a damaged file (sqlite3.DatabaseError, SQLITE_CORRUPT / SQLITE_NOTADB).
_DAMAGE_WORDS = ("malformed", "not a database", "database corruption")


def _damage(exc: BaseException) -> str | None:
    """SQLite's first line if ``exc`` reports a damaged database file, else None."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else ""
    return first if any(w in first.lower() for w in _DAMAGE_WORDS) else None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory ones)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite" or sqlite_refused(parsed):
        return None  # no file's path: refused by make_engine, with the form expected
    return Path(str(parsed.database))


class Registry:
    """A handle on the registry database: sessions plus schema management."""

    def __init__(self, url: str, *, busy_timeout_s: float = 60.0) -> None:
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        #: (from, to) when :meth:`open` upgraded an existing schema; None otherwise (a fresh
        #: registry's creation is no upgrade).
        self.upgraded: tuple[str, str] | None = None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        busy_timeout_s: float = 60.0,
        migrate: bool = True,
        create: bool = True,
        settings_file: Path | None = None,
    ) -> Registry:
        """Open the registry at ``url``, upgrading its schema to the newest revision if needed.

        ``create=False`` (every CLI command but ``pomlia init``): a missing SQLite file, an
        empty one or a database without the registry's schema raises
        :class:`RegistryMissingError` instead of becoming a new, empty registry (which would
        hide the datasets and models of the real one). A damaged SQLite file raises
        :class:`RegistryDamagedError`; a write lock another process held longer than
        ``busy_timeout_s`` (seconds) :class:`RegistryBusyError`, naming ``settings_file``
        (where the timeout is set) if given."""
        path = _sqlite_file(url)
        fresh = create and path is not None and not path.exists()
        if not create and path is not None and (not path.is_file() or path.stat().st_size == 0):
            what = "does not exist" if not path.is_file() else "is empty"
            raise RegistryMissingError(f"no registry at {url}: the file {path} {what}")
        reg = cls(url, busy_timeout_s=busy_timeout_s)
        if not migrate:
            return reg
        try:
            current = current_revision(reg.engine)
            if current is None and not create:
                tables = inspect(reg.engine).get_table_names()
                raise RegistryMissingError(
                    f"no registry at {reg.display_url()}: the database holds no registry "
                    f"schema ({len(tables)} other table(s))"
                )
        except DBAPIError as exc:
            reg.dispose()
            raise reg.open_error(exc, settings_file) from exc
        except RegistryMissingError:
            reg.dispose()
            raise
        if fresh and path is not None and path.is_file():
            # SQLite makes its file 0644 less the umask: a group's umask (002) would leave the
            # registry read-only to the group that shares the workspace
            for file in (path, *(path.with_name(path.name + x) for x in ("-wal", "-shm"))):
                with contextlib.suppress(OSError):  # -wal and -shm may be gone already
                    file.chmod(0o666 & ~current_umask())
        head = head_revision()
        if current == head:
            return reg
        if current is not None and not _known_revision(current):
            reg.dispose()
            raise RegistryNewerError(
                f"registry {reg.display_url()}: schema revision {current} is newer than this "
                f"pomlia (head {head}); upgrade pomlia-hpc to use this registry (if no "
                "pomlia made that revision, its table alembic_version is another "
                "application's: give pomlia a database or schema of its own)"
            )
        try:
            found = upgrade(reg.engine)
        except DBAPIError as exc:
            reg.dispose()
            if not write_refused(exc):
                raise
            reason = str(exc.orig or exc).strip().splitlines()[0]
            if current is None:  # `pomlia init` without the right to create tables: not a bug
                raise RegistryReadOnlyError(
                    f"registry {reg.display_url()}: this database user may not create the "
                    f"registry's tables ({reason}); expected a user with the CREATE right "
                    "there (ask the server's administrator) to run `pomlia init` once"
                ) from exc
            raise RegistryReadOnlyError(
                f"registry {reg.display_url()}: its schema is at revision {current} and this "
                f"pomlia needs {head}, an upgrade this database user may not make ({reason}); "
                "a user with write access must run `pomlia registry upgrade` (or any other "
                "pomlia command) on it once"
            ) from exc
        except BaseException:
            reg.dispose()
            raise
        if found is not None and head is not None and found != head:
            # ``found``, not ``current``: a process that opened the old schema at the same
            # time may have migrated it first, and then this one changed nothing to report.
            reg.upgraded = (found, head)
        return reg

    def open_error(self, exc: DBAPIError, settings_file: Path | None) -> Exception:
        """The one-line error for ``exc``, raised reading the schema's revision on opening:
        a damaged file, a write lock held too long, a server out of reach (69), no such
        database (4), a full or read-only file system, a setting libpq refuses, or another
        refusal (bad credentials)."""
        url, reason = self.url, str(exc.orig or exc).strip().splitlines()[0]
        if _damage(exc):
            return self.damaged(reason)
        if write_lock_timed_out(exc):  # waited for the lock: the file is reachable
            return busy_error(url, self.busy_timeout_s, settings_file)
        if server_unreachable(url, exc):
            return UnavailableError(
                f"registry {self.display_url()}: the database server did not answer "
                f"({reason}); expected it running and reachable at the URL's host and port "
                "(the same command works once it is)"
            )
        if missing := missing_database(url, reason, self.display_url()):  # exit 4, as SQLite
            return RegistryMissingError(missing[0], hint=missing[1])
        storage = sqlite_storage_problem(url, exc)
        if storage is not None:  # SQLite's "disk I/O error" alone says nothing of it
            return ConfigError(
                f"registry {self.display_url()}: cannot open the database ({reason}): {storage}"
            )
        expected = (
            "expected connection settings that libpq and the server take (PostgreSQL's "
            "'Parameter Key Words')"
            if refused_setting(reason)
            else "expected a reachable server (or writable SQLite file) and correct credentials"
        )
        return ConfigError(
            f"registry {self.display_url()}: cannot open the database ({reason}); {expected}"
        )

    def upgrade_note(self) -> str | None:
        """The one line saying that :meth:`open` upgraded the schema, None if it did not."""
        if self.upgraded is None:
            return None
        was, now = self.upgraded
        return f"registry {self.display_url()}: schema upgraded {was} -> {now}"

    def schema_revision(self) -> str | None:
        """The revision the database's schema is at (None: no registry schema)."""
        return current_revision(self.engine)

    def check_downgrade(self, revision: str) -> str:
        """The current revision, if the schema can go down to ``revision``; else one-line
        errors: a revision this pomlia does not know or not below the current one, a
        migration on the way without a downgrade (or with a module-level
        ``IRREVERSIBLE = "why"``)."""
        current = self.schema_revision()
        known = known_revisions()
        where = f"registry {self.display_url()}"
        if current is None:
            raise RegistryMissingError(f"{where} holds no registry schema: nothing to downgrade")
        if current not in known:
            raise ConfigError(
                f"{where}: schema revision {current} is newer than this pomlia (head "
                f"{head_revision()}): downgrade it with the pomlia that upgraded it"
            )
        below = known[: known.index(current)]
        if revision not in below:
            expected = (
                f"one of {', '.join(below)} (below the current {current})"
                if below
                else f"nothing: {current} is the first revision"
            )
            raise InputError(
                f"{where}: cannot downgrade to revision '{revision}'; expected {expected}"
            )
        for sc in _scripts().iterate_revisions(current, revision):
            why = getattr(sc.module, "IRREVERSIBLE", None)
            if why or not callable(getattr(sc.module, "downgrade", None)):
                raise ConfigError(
                    f"{where}: migration {sc.revision} ({sc.doc}) has no downgrade"
                    f"{f' ({why})' if why else ''}; restore the backup taken before the upgrade"
                )
        return current

    def downgrade(self, revision: str) -> str:
        """Take the schema down to ``revision`` (Alembic downgrade, each migration's own
        ``downgrade()`` in turn); returns the revision it was at. Refused, changing nothing,
        as :meth:`check_downgrade` says."""
        current = self.check_downgrade(revision)
        command.downgrade(alembic_config(self.engine), revision)
        return current

    def damaged(self, reason: str) -> RegistryDamagedError:
        """The one-line error for a damaged registry database."""
        return RegistryDamagedError(
            f"registry {self.display_url()} is damaged ({reason}): restore the file from a "
            "backup, or move it aside, run `pomlia init` and `pomlia registry recover` to "
            "register the dataset stores again"
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error. A damaged
        database file (a corrupt page) raises :class:`RegistryDamagedError`, one line."""
        try:
            with self._sessions() as sess, sess.begin():
                yield sess
        except DatabaseError as exc:
            reason = _damage(exc)
            if reason is None:
                raise
            raise self.damaged(reason) from exc

    def display_url(self) -> str:
        """The URL with any password hidden (:func:`shown_url`)."""
        return shown_url(self.engine.url)

    def dispose(self) -> None:
        self.engine.dispose()
