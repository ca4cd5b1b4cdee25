"""Alembic environment: runs migrations on the engine handed over by pomlia_hpc.registry.db.

All the migrations of one command (an upgrade over several revisions, a downgrade) run in one
transaction, on SQLite too (Alembic's default there is one transaction per migration, which a
failing step would leave half done): a failure leaves the schema where it was.
"""

from alembic import context
from sqlalchemy import Connection, create_engine, text

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.registry.db import FOUND_REVISION
from pomlia_hpc.registry.schema import Base

#: Key of the PostgreSQL advisory lock that serialises migrations (any constant; "pomlia" in hex).
MIGRATION_LOCK_KEY = 0x706F6D6C6961


def _foreign_keys(connection: Connection, on: bool) -> None:
    """Switch SQLite's foreign key enforcement on the raw connection, outside any transaction
    (inside one the pragma does nothing)."""
    raw = connection.connection.driver_connection
    if raw is not None:
        raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


config = context.config
engine = config.attributes.get("engine") or create_engine(
    config.get_main_option("sqlalchemy.url", "")
)

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration rebuilds a table (copy, DROP, rename), and with foreign keys on the
        # DROP of a referenced table (datasets) fails. The pragma is a no-op inside a
        # transaction, so it is set on the raw connection before ours begins; the keys are
        # checked at the end instead (PRAGMA foreign_key_check), as SQLite's docs prescribe.
        _foreign_keys(connection, on=False)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
        # SQLite's DDL is transactional (we BEGIN IMMEDIATE ourselves): one transaction for all.
        transactional_ddl=True,
        transaction_per_migration=False,
    )
    try:
        with context.begin_transaction():
            if not sqlite:
                # Several processes opening a fresh registry at once would all create the tables
                # (and fail on each other's types). The lock is held to the end of the transaction;
                # the others then find the schema current and run nothing. SQLite needs no lock:
                # its BEGIN IMMEDIATE already lets one writer in at a time.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            # Read under the lock: another process may have migrated since the caller looked.
            config.attributes[FOUND_REVISION] = context.get_context().get_current_revision()
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:  # raised inside the transaction: rolled back, nothing changed
                    tables = sorted({str(row[0]) for row in broken})
                    raise ConfigError(
                        f"registry migration refused, nothing changed: {len(broken)} row(s) of "
                        f"{', '.join(tables)} would point to rows that do not exist (foreign key "
                        "check); expected every reference to hold"
                    )
        connection.commit()
    finally:
        if sqlite and not connection.invalidated:  # the next user of the connection
            _foreign_keys(connection, on=True)
