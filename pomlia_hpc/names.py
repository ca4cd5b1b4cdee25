"""The one rule for user-chosen names that become parts of paths and ids: datasets
(``stores/<name>/``), encoders, models (``models/<name>/``, ``logs/predictions/<name>/``),
tasks, studies (``runs/<name>/``), serving slots and knowledge-base sources.

Letters, digits, ``_``, ``.`` and ``-``, starting with a letter, digit or ``_``: no ``/``, no
``..`` path, no leading dot (hidden files), no spaces or control characters; not all digits
(commands take "a name or an id", and a name like ``12`` would be read as an id). At most 64
characters unless the caller allows more (a study's best model is ``<study>-best``, and study
names may have 96; data set names :data:`DATASET_NAME_MAX`).
"""

from __future__ import annotations

import re

from pomlia_hpc.errors import InputError

#: Longest data set name (``data add``, the strategy tables' ``dataset`` column, a pipeline's
#: ``datasets``).
DATASET_NAME_MAX = 128

_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def validate_name(kind: str, name: str, max_len: int = 64) -> str:
    """Return ``name`` if it follows the rule above with at most ``max_len`` characters; else
    :class:`InputError` saying so, with ``kind`` (e.g. ``"model"``) naming what it is for."""
    if len(name) > max_len or not _CHARS.fullmatch(name) or name.isdigit():
        raise InputError(
            f"{kind} name {name!r} is not valid: expected letters, digits, '_', '.', "
            f"'-' (at most {max_len}, starting with a letter, digit or '_', not all digits)"
        )
    return name
