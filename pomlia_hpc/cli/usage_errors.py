"""Usage errors in one line: a value that is not the number its parameter takes (a registry
id above all) and a negative number read as an option, said as the project's own errors are;
other usage errors keep typer's panel. Typer's printer is replaced when this module is
imported (:mod:`pomlia_hpc.cli.app` imports it)."""

from __future__ import annotations

from typing import Any

import typer
import typer.rich_utils
from rich.markup import escape

from pomlia_hpc.cli.console import err_console
from pomlia_hpc.cli.typer_help import patch_typer
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.registry.lookup import MAX_ID

#: Integer parameters that are registry ids: the noun and where the ids are listed, for the
#: message when one is not a whole number.
ID_PARAMS = {
    "job_id": ("job", "`pomlia jobs list`"),
    "report": ("report", "`pomlia monitor history MODEL`"),
    "task_id": ("task", "`pomlia task list`"),
    "run_id": ("run", "`pomlia runs list`"),
    "deployment_id": ("deployment", "the id `pomlia deploy MODEL` printed"),
    "request_id": ("retrain request", "`pomlia loop show SLOT`"),
}


def registry_id(param: typer.CallbackParam, value: int | None) -> int | None:
    """Typer callback of an id parameter (one of :data:`ID_PARAMS`): an id no row can have
    (below 1, or more digits than the database's integer holds, which SQLite cannot even take
    as a parameter: a traceback, exit 70) is not found, as any other unknown id."""
    if value is not None and not 1 <= value <= MAX_ID:
        noun, where = ID_PARAMS[str(param.name)]
        raise NotFoundError(f"{noun} {value} is not in the registry (see {where})")
    return value


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _param_label(param: Any) -> str:
    """How the user wrote ``param``: ``--limit`` for an option, ``JOB_ID`` for an argument."""
    opts = getattr(param, "opts", None)
    if not _is_argument(param) and opts:
        return str(max(opts, key=len))
    return str(param.name or "value").upper()


def _number_error(exc: typer.BadParameter) -> str | None:
    """The one line for a value that is not the number its parameter takes, or None for any
    other bad parameter. Typer checks numbers with pydantic, whose wording ("Input should be
    a valid integer, unable to parse string as an integer") names no value and no way on."""
    errors = getattr(exc.__cause__, "errors", None)  # a pydantic ValidationError
    param = exc.param
    if param is None or not callable(errors):
        return None
    first = (errors() or [{}])[0]
    kind, value = str(first.get("type", "")), first.get("input")
    bound = _bound_words(kind, first.get("ctx") or {})
    if bound is not None:  # typer's min=/max=: "Input should be greater than or equal to 1"
        ann = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        number = "a number" if ann is float else "a whole number"
        return f"{_param_label(param)} {value}: expected {number} {bound}"
    if kind.startswith("int_"):
        expected = "a whole number"
    elif kind.startswith("float_"):
        expected = "a number"
    else:
        return None
    if param.name in ID_PARAMS:
        noun, where = ID_PARAMS[param.name]
        what = noun if _is_argument(param) else _param_label(param)
        return f"{what} '{value}': expected a registry {noun} id ({expected}; see {where})"
    return f"{_param_label(param)} '{value}': expected {expected}"


#: Pydantic's bound errors (typer's ``min=``/``max=``), as the signs the one line shows.
_BOUND_SIGNS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _bound_words(kind: str, ctx: dict[str, Any]) -> str | None:
    """``>= 1`` for a value outside its parameter's bound (pydantic error type ``kind`` with
    context ``ctx``), else None."""
    key, sign = _BOUND_SIGNS.get(kind, ("", ""))
    return f"{sign} {ctx[key]}" if key in ctx else None


def _negative_error(exc: Any) -> str | None:
    """The one line for a negative number read as an option (``pomlia jobs cancel -1``:
    "No such option: -1"), or None for a real unknown option (or another usage error)."""
    name = getattr(exc, "option_name", None)
    if type(exc).__name__ != "NoSuchOption" or not isinstance(name, str):
        return None
    try:
        float(name)
    except ValueError:
        return None
    ctx = getattr(exc, "ctx", None)
    for param in ctx.command.params if ctx is not None else []:
        if _is_argument(param) and param.name in ID_PARAMS:
            noun, where = ID_PARAMS[param.name]
            return (
                f"{noun} '{name}': expected a registry {noun} id (a whole number >= 1; see {where})"
            )
    return (
        f"no such option: {name} (a value starting with '-' is read as an option; ids and "
        "counts are whole numbers >= 1)"
    )


def _format_usage_error(exc: Any) -> None:
    """Typer's printer of usage errors, with a value that is not a number (an id above all)
    and a negative number read as an option said in one line, as the project's own errors
    are (``error: job 'abc': expected a registry job id ...``); other usage errors keep
    typer's panel with the command's usage."""
    # Typer carries its own copy of click: its classes, not click's, are raised here.
    line = _number_error(exc) if isinstance(exc, typer.BadParameter) else _negative_error(exc)
    if line is None:
        _typer_format_error(exc)
        return
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


# Typer looks the printer up on its module at each error, so this replaces it everywhere
# (the console entry point and the test runner alike).
_typer_format_error = patch_typer(typer.rich_utils, "rich_format_error", _format_usage_error)
