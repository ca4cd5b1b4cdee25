"""An option that takes one value, given twice with different values (``strategy eval --source a
--source b``): click keeps the last one without a word, and the user believed both counted. The
command still runs with the last value, as scripts that append an override to fixed options
(``jobs/automl.sbatch``'s ``EXTRA_ARGS``) expect, but a warning names the option and both
values. The root group's options (``pomlia --home a --home b data list``) are checked alike, up to
the command's name. Typer's argument parsing is wrapped when this module is imported
(:mod:`pomlia_hpc.cli.app` imports it)."""

from __future__ import annotations

from typing import Any

import typer.core
from rich.markup import escape

from pomlia_hpc.cli.console import err_console
from pomlia_hpc.cli.typer_help import patch_typer


def _value_options(command: Any) -> tuple[dict[str, Any], set[str]]:
    """The option strings of ``command`` that take one value each (``--source``, ``-k``),
    mapped to their parameter, and every option string that takes a value at all (a repeatable
    one's too): the next word after those is a value, not an option."""
    single: dict[str, Any] = {}
    takes_value: set[str] = set()
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.is_flag or param.count:
            continue
        names = [*param.opts, *param.secondary_opts]
        takes_value.update(names)
        if not param.multiple and param.nargs == 1:
            single.update(dict.fromkeys(names, param))
    return single, takes_value


def repeated_options(command: Any, args: list[str]) -> list[tuple[str, list[str]]]:
    """Each one-value option of ``command`` given more than once with different values in
    ``args`` (the words after the command's name): its longest spelling and its values in the
    order given. Words after ``--`` are arguments, not options; so are, for a group (whose
    options come before its command's name: ``allow_interspersed_args`` off), the words from
    the first argument on, which are the command's and its options'."""
    single, takes_value = _value_options(command)
    interspersed = getattr(command, "allow_interspersed_args", True)
    given: dict[str, tuple[str, list[str]]] = {}
    i = 0
    while i < len(args) and args[i] != "--":
        word = args[i]
        if not interspersed and not word.startswith("-"):
            break  # the command's name: what follows is not the group's
        name, _, inline = word.partition("=")
        if word.startswith("--") and inline and name in single:
            value: str | None = inline
        elif word in takes_value and i + 1 < len(args):
            value, i = args[i + 1], i + 1
            name = word
        else:
            value = None
        if value is not None and name in single:
            param = single[name]
            label = str(max(param.opts, key=len))
            given.setdefault(param.name, (label, []))[1].append(value)
        i += 1
    return [(label, vals) for label, vals in given.values() if len(set(vals)) > 1]


def _warn_repeated(command: Any, args: list[str]) -> None:
    """Warn of each one-value option of ``command`` given twice with different values."""
    for label, values in repeated_options(command, list(args)):
        shown = ", ".join(f"'{v}'" for v in values)
        err_console.print(
            f"[yellow]warning:[/] {escape(label)} given {len(values)} times ({escape(shown)}): "
            f"it takes one value, and the last, '{escape(values[-1])}', is used",
            soft_wrap=True,
            highlight=False,
        )


def _parse_args(self: Any, ctx: Any, args: list[str]) -> Any:
    _warn_repeated(self, args)
    return _typer_parse_args(self, ctx, args)


def _parse_group_args(self: Any, ctx: Any, args: list[str]) -> Any:
    _warn_repeated(self, args)
    return _typer_group_parse_args(self, ctx, args)


_typer_parse_args = patch_typer(typer.core.TyperCommand, "parse_args", _parse_args)
# The root group (``--home``, ``--db-url``, ``--cluster``) and the command groups.
_typer_group_parse_args = patch_typer(typer.core.TyperGroup, "parse_args", _parse_group_args)
