"""The one rule for user-chosen names that become parts of paths and ids: models
(``models/<name>/``, ``logs/predictions/<name>/``) and tasks.

Letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit: no ``/``, no ``..``
path, no leading dot (hidden files), no spaces or control characters. At most 64 characters
unless the caller allows more (model names: a study's best model is ``<study>-best``, and
study names may have 96).
"""

from __future__ import annotations

import re

from pomlia_hpc.errors import InputError

_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_name(kind: str, name: str, max_len: int = 64) -> str:
    """Return ``name`` if it follows the rule above with at most ``max_len`` characters; else
    :class:`InputError` saying so, with ``kind`` (e.g. ``"model"``) naming what it is for."""
    if len(name) > max_len or not _CHARS.fullmatch(name):
        raise InputError(
            f"{kind} name {name!r} is not valid: expected letters, digits, '_', '.', "
            f"'-' (at most {max_len}, starting with a letter or digit)"
        )
    return name
