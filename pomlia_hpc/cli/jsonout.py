"""The one printer of every ``--json`` document (and of ``fingerprint show``, whose output is
JSON): strict JSON alone on stdout, the same whatever the terminal.

The rules (``docs/guide/README.md``, "Scripting"): stdout holds one JSON document and nothing
else, notes and progress go to stderr; it is strict JSON (RFC 8259: a NaN or an infinity,
which Python's ``json`` writes as the bare words ``NaN`` and ``Infinity`` that ``jq`` and most
parsers refuse, is ``null``); times are ISO 8601 with their zone (a time without one is UTC,
as the registry stores them); text is ASCII with ``\\u`` escapes, so any stdout encoding takes
it; and there is no colour, as rich's JSON printer gave when stdout was a terminal or
``FORCE_COLOR`` was set (set by many CI systems, which then wrote escape codes into a file).
An error under ``--json`` is the usual one line on stderr with a non-zero exit, stdout empty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer


def strict(value: Any) -> Any:
    """``value`` as plain JSON data: a non-finite float is None, a datetime its ISO 8601 text
    to the second with its zone (UTC when it has none), a date ``YYYY-MM-DD``, a path its
    text, a tuple or a set a list; dicts and lists are walked. Anything else is left to the
    encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [strict(v) for v in value]
    return value


def zoned_local_time(text: str) -> str:
    """A wall time without a zone as Slurm prints it (``2026-12-06T05:00:00``: the local time of
    this host, where squeue runs) as ISO 8601 with this host's zone
    (``2026-12-06T05:00:00+01:00``); any other text (``N/A``, ``Unknown``) as it is."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    zoned = parsed if parsed.tzinfo is not None else parsed.astimezone()
    return zoned.isoformat(timespec="seconds")


def _fallback(value: Any) -> Any:
    # A numpy scalar or array (a metric read from an array) is its number(s); anything else its
    # text, as `recommend --json` always wrote it: a document, never a traceback.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return strict(tolist())
    return str(value)


def dumps(data: Any) -> str:
    """``data`` as the text :func:`print_json` prints (indented by 2, see the module)."""
    return json.dumps(strict(data), indent=2, ensure_ascii=True, allow_nan=False, default=_fallback)


def print_json(data: Any) -> None:
    """Print ``data`` on stdout as one strict JSON document (see the module), plain text."""
    typer.echo(dumps(data))
