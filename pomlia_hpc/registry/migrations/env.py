"""Alembic environment: runs migrations on the engine handed over by pomlia_hpc.registry.db."""

from alembic import context
from sqlalchemy import create_engine, text

from pomlia_hpc.registry.schema import Base

#: Key of the PostgreSQL advisory lock that serialises migrations (any constant; "pomlia" in hex).
MIGRATION_LOCK_KEY = 0x706F6D6C6961

config = context.config
engine = config.attributes.get("engine") or create_engine(
    config.get_main_option("sqlalchemy.url", "")
)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several processes opening a fresh registry at once would all create the tables
            # (and fail on each other's types). The lock is held to the end of the transaction;
            # the others then find the schema current and run nothing. SQLite needs no lock:
            # its BEGIN IMMEDIATE already lets one writer in at a time.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()
    connection.commit()
