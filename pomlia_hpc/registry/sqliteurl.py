"""SQLite registry URLs the registry refuses, each with the form it expects.

The registry takes SQLite as ``sqlite:///PATH`` of a file and nothing else: a URI or query
argument would be read wrongly (see :func:`sqlite_uri`), an in-memory database or a host
names no file, and a ``~`` is not expanded in a URL.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL

from pomlia_hpc.errors import ConfigError

#: The forms of a SQLite registry URL, for error messages.
EXPECTED = (
    "expected sqlite:///PATH (relative to the workspace folder) or sqlite:////ABSOLUTE/PATH, a "
    "file that keeps the registry"
)


def sqlite_uri(parsed: URL) -> bool:
    """Whether a SQLite URL names its database as a URI (``sqlite:///file:PATH?mode=ro&uri=true``)
    or has any query argument: the registry's checks would take ``file:PATH`` for a path (a
    missing file, a folder named ``file:``), a read-only connection cannot take the write lock
    every session starts with, and without ``uri=true`` SQLAlchemy ignores ``?mode=ro`` with
    a warning and opens (and migrates) the file read-write."""
    return bool(parsed.query) or str(parsed.database or "").startswith("file:")


def _no_file(parsed: URL) -> str | None:
    """Why a SQLite URL names no usable file, or None. ``sqlite://`` and ``sqlite:///:memory:``
    are an in-memory database, which the registry's connection per session (NullPool) would
    make anew, empty, each time: `pomlia init` and `registry recover` said they were done and
    nothing was kept. ``sqlite://registry.db`` (two slashes) names a host, which SQLAlchemy
    refused with a traceback. ``sqlite:///~/ws/registry.db``: `pomlia init` made a folder
    named ``~`` in the current folder and the registry in it."""
    if parsed.host:
        return f"names a host ('{parsed.host}', the part after sqlite://), not a file"
    if parsed.database in (None, "", ":memory:"):
        return "is an in-memory database, empty again in each session: nothing would be kept"
    if str(parsed.database).startswith("~"):
        first = str(parsed.database).split("/", 1)[0]
        try:
            home = f"write {first} as {Path(first).expanduser()}"
        except RuntimeError:  # `~name` of no user known here: expanduser cannot tell
            home = f"no user '{first[1:]}' is known here"
        return (
            f"starts with '~', which a URL does not expand (it would be a folder named "
            f"'{first}' in the current folder; {home})"
        )
    return None


def sqlite_refused(parsed: URL) -> bool:
    """Whether :func:`check_sqlite_url` refuses the SQLite URL ``parsed`` (it names no file's
    path to look at before)."""
    return sqlite_uri(parsed) or _no_file(parsed) is not None


def check_sqlite_url(url: str, parsed: URL) -> None:
    """Raise :class:`ConfigError`, one line with the form expected, when the SQLite registry URL
    ``url`` (``parsed``) is one the registry refuses (module docstring)."""
    if sqlite_uri(parsed):
        path = str(parsed.database or "").removeprefix("file:")
        path = "/" + path.lstrip("/") if path.startswith("//") else path  # file:///abs
        raise ConfigError(
            f"registry URL '{url}': SQLite URI filenames and query arguments (file:..., "
            f"?uri=true, ?mode=ro) are not supported; expected sqlite:///PATH, here "
            f"sqlite:///{path} (it opens the file "
            "read-write; for users who may only read, use PostgreSQL with a read-only role)"
        )
    if (no_file := _no_file(parsed)) is not None:
        raise ConfigError(f"registry URL '{url}' {no_file}; {EXPECTED}")
