"""A PostgreSQL registry URL whose database does not exist on the server.

The server answers such a connection with ``FATAL:  database "x" does not exist`` (SQLSTATE
3D000, which libpq gives only in words at connection time). For a script that is the same
case as a workspace without its SQLite file: no registry there (exit 4, ``docs/guide``'s
exit-status table), not bad input (2). ``pomlia init`` makes the registry's tables but not
the database, which needs the server's ``CREATE DATABASE`` right, so the hint says how to
make it first.
"""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import make_url

#: How the server says the URL's database is not there (the first line of its message).
_NO_DATABASE = re.compile(r'FATAL:\s+database "(?P<name>[^"]*)" does not exist')


def missing_database(url: str, said: str, shown: str) -> tuple[str, str] | None:
    """(error line, hint: what to do) when ``said``, the first line of the server's answer to
    a connection to the PostgreSQL registry at ``url`` (``shown``: the URL as errors show it,
    without its password), is that its database does not exist; None for any other answer
    or database."""
    parsed = make_url(url)
    found = _NO_DATABASE.search(said)
    if parsed.get_backend_name() != "postgresql" or found is None:
        return None
    # the server's name for it: a URL that names none (`.../` or no path) connects to libpq's
    # default, $PGDATABASE where it is set, else the database named as the user
    name = found["name"]
    named = parsed.database or parsed.query.get("dbname")
    took = "$PGDATABASE" if os.environ.get("PGDATABASE") else "the user's name"
    default = "" if named else f" (the URL names no database: libpq took {took})"
    options = (("-h", parsed.host), ("-p", parsed.port), ("-U", parsed.username))
    where = "".join(f"{flag} {value} " for flag, value in options if value)
    return (
        f"no registry at {shown}: the server has no database '{name}'{default}",
        f"create it (`createdb {where}{name}`, or ask the server's administrator), then run "
        "`pomlia init`; or correct the database name in the URL",
    )
