"""``--json`` of the list commands (``data list``, ``task list``, ``runs list``, ``model list``,
``jobs list``, ``monitor history``): one shared option and printer, so every list prints the
same way.

The output is one JSON array on stdout, one object per row, in the table's order; each command
documents its keys (``docs/guide/README.md``), which stay stable: a key is only ever added.
Times are ISO 8601 in UTC, a missing value is ``null``. Notes meant for people (a Slurm poll
that failed) go to stderr, so stdout stays one JSON document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from pomlia_hpc.cli.jsonout import print_json

#: The ``--json`` option of every list command.
JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the rows as one JSON array of objects (stable keys; see --help)."
    ),
]


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Print ``rows`` as one indented JSON array on stdout (times ISO 8601, paths as text;
    :mod:`pomlia_hpc.cli.jsonout`)."""
    print_json(list(rows))
