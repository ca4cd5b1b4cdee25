"""``--json`` of the list commands (``data list``, ``task list``, ``runs list``, ``model list``,
``jobs list``, ``monitor history``): one shared option and printer, so every list prints the
same way.

The output is one JSON array on stdout, one object per row, in the table's order; each command
documents its keys (``docs/guide/README.md``), which stay stable: a key is only ever added.
Times are ISO 8601 in UTC, a missing value is ``null``. Notes meant for people (a Slurm poll
that failed) go to stderr, so stdout stays one JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pomlia_hpc.errors import InputError

#: The ``--json`` option of every list command.
JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the rows as one JSON array of objects (stable keys; see --help)."
    ),
]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Print ``rows`` as one indented JSON array on stdout (times ISO 8601, paths as text)."""
    typer.echo(json.dumps(list(rows), indent=2, default=_plain))


def check_limit(limit: int) -> None:
    """Refuse a ``--limit`` below 1 (a list of nothing said nothing about why)."""
    if limit < 1:
        raise InputError(f"--limit {limit}: expected an integer >= 1")
