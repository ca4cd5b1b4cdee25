"""Options and arguments that take a path: an empty value is refused (exit 2, naming the
option). ``Path("")`` is the current folder, so ``--log-dir "$LOGDIR"`` with the variable
unset served with its prediction log in whatever folder the server started in, where neither
``monitor run`` nor ``data harvest`` looks; and a folder argument read the current folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

#: As typer shows a path parameter's type in ``--help``.
PATH_METAVAR = "<path>"


def nonempty_path(value: str, param_hint: str | None = None) -> Path:
    """The parser of every path parameter: ``value`` as a :class:`Path`, refused when empty
    or only blanks (``param_hint`` names a parameter typer does not name itself)."""
    if not value.strip():
        raise typer.BadParameter(
            "an empty path: expected a file or folder (an unset shell variable gives one)",
            param_hint=param_hint,
        )
    return Path(value)


def path_option(*decls: str, **kw: Any) -> Any:
    """``typer.Option`` for a path (:func:`nonempty_path`)."""
    return typer.Option(*decls, parser=nonempty_path, metavar=PATH_METAVAR, **kw)


def path_argument(**kw: Any) -> Any:
    """``typer.Argument`` for a path (:func:`nonempty_path`); named by its own name in the
    usage line and errors, as every argument is."""
    return typer.Argument(parser=nonempty_path, **kw)
