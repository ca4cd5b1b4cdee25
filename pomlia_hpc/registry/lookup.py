"""The one "by name or id" lookup of registry rows, and its one message when nothing matches.

Every command that takes a dataset, encoder, task or model accepts its name or its id. Names
are looked up first; an all-digit reference is then tried as an id (the name rule of
:mod:`pomlia_hpc.names` forbids all-digit names, so the two never collide). When nothing
matches, the error is ``<what> '<ref>' not found; known: a, b, c`` (the oldest first, at most
:data:`KNOWN_SHOWN` of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from pomlia_hpc.errors import InputError, NotFoundError

_Row = TypeVar("_Row")

#: How many known names a "not found" message lists.
KNOWN_SHOWN = 20


#: The largest id a registry row can have (SQLite's INTEGER, PostgreSQL's bigint): a longer
#: run of digits names no row, and SQLite cannot even take it as a parameter.
MAX_ID = 2**63 - 1
#: The largest ``--limit`` of a listing: more rows than any registry holds, and far below a
#: database's LIMIT (a signed 64-bit integer: ``--limit 10**20`` was an OverflowError).
MAX_LIMIT = 10**9


def check_limit(limit: int) -> None:
    """Refuse a listing's ``--limit`` below 1 (0 listed nothing without saying why, -1 listed
    everything) or above :data:`MAX_LIMIT`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"--limit {limit}: expected an integer from 1 to {MAX_LIMIT:,}")


#: How to make what was not found, where one command does it.
HINTS = {
    "task": "pomlia task add NAME --dataset D --metric M",
    "slot": "a slot is made by putting a model on it: pomlia deploy promote SLOT MODEL",
}


def not_found(what: str, ref: object, known: Sequence[str]) -> NotFoundError:
    """The error for ``ref`` matching no ``what``, listing the ``known`` names."""
    shown = ", ".join(known[:KNOWN_SHOWN]) + (", ..." if len(known) > KNOWN_SHOWN else "")
    return NotFoundError(
        f"{what} '{ref}' not found; known: {shown or 'none'}", hint=HINTS.get(what)
    )


def by_name_or_id(session: Session, table: type[_Row], ref: str | int, what: str) -> _Row:
    """The row of ``table`` (a registry table with ``name`` and ``id``) named ``ref``, or with
    id ``ref``; :func:`not_found` otherwise."""
    t: Any = table
    row = session.scalar(select(t).where(t.name == str(ref)))
    # ASCII digits only: "²" is a digit to str.isdigit() but no number to int()
    if row is None and str(ref).isascii() and str(ref).isdigit() and int(ref) <= MAX_ID:
        row = session.get(t, int(ref))
    if row is None:
        raise not_found(what, ref, list(session.scalars(select(t.name).order_by(t.id))))
    return row
