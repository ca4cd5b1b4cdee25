"""Which encoder a ``fingerprint refresh`` made from which.

A refresh records it when it registers its encoder (``Encoder.origin`` = ``"refresh"`` and
``Encoder.refresh_of_id``, migration 0010); an encoder trained any other way is recorded as
``"trained"``, whatever its name. So an encoder named ``ae-r1`` by hand is no refresh of
``ae``: it never stands for ``ae``'s family as the default encoder, and no refresh of ``ae``
takes it over as its own.

Rows registered before the lineage was recorded (before migration 0010) have no record
(``origin`` NULL; an older pomlia registers no new ones: it refuses the newer schema). For
those the rule of the releases that made them stands: an encoder named ``<root>-r<k>``
registered beside ``<root>`` and trained with its settings (epochs aside) is a refresh of it.
Nothing else tells an older release's refresh apart, and its unfinished refreshes must still
be found (:func:`pomlia_hpc.fingerprint.current.default_encoder`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pomlia_hpc.registry import Encoder

#: The name an older release gave a refresh of ``<root>``: ``<root>-r<k>``.
SUFFIX = re.compile(r"-r(\d+)$")


def same_settings(root: Encoder, enc: Encoder) -> bool:
    """Whether ``enc`` was trained with ``root``'s settings, as a refresh trains (the number
    of epochs may differ: ``fingerprint refresh --epochs``)."""

    def settings(e: Encoder) -> dict[str, Any]:
        return {k: v for k, v in (e.config or {}).items() if k != "epochs"}

    return settings(root) == settings(enc)


def refresh_parent(
    enc: Encoder, by_name: dict[str, Encoder], by_id: dict[int, Encoder]
) -> Encoder | None:
    """The encoder ``enc`` is a refresh of (among ``by_name``/``by_id``, all the registered
    ones), or None when it is no refresh (or its parent is not registered)."""
    if enc.origin is not None:  # recorded: the record decides, never the name
        if enc.origin != "refresh" or enc.refresh_of_id is None:
            return None
        return by_id.get(enc.refresh_of_id)
    # No record (module docstring): the name rule of the release that registered it.
    if SUFFIX.search(enc.name) is None:
        return None
    base = by_name.get(SUFFIX.sub("", enc.name))
    if base is None or base.id == enc.id or not same_settings(base, enc):
        return None
    return base


def refresh_roots(encoders: Iterable[Encoder]) -> dict[str, str]:
    """Each encoder's name → the name of the root of its refresh family: the encoder its chain
    of refreshes started from (its own name when it is no refresh). ``encoders``: all the
    registered ones."""
    rows = list(encoders)
    by_name = {e.name: e for e in rows}
    by_id = {e.id: e for e in rows}
    out: dict[str, str] = {}
    for enc in rows:
        seen = {enc.id}
        node = enc
        while (up := refresh_parent(node, by_name, by_id)) is not None and up.id not in seen:
            seen.add(up.id)  # a cycle cannot be recorded, but must not hang a command
            node = up
        out[enc.name] = node.name
    return out


def refresh_number(root: str, name: str) -> int | None:
    """``k`` of a name ``<root>-r<k>`` (the name a refresh of ``root`` gets), else None."""
    m = re.fullmatch(rf"{re.escape(root)}-r(\d+)", name)
    return int(m.group(1)) if m else None
