"""How ``--help`` shows commands, options and arguments: typer's renderers replaced where
they misled (a flag shown as taking a value, an argument in braces, a default said in words
in parentheses), and one-line summaries in the command lists. The replacements are made
when this module is imported (:mod:`pomlia_hpc.cli.app` imports it)."""

from __future__ import annotations

import inspect
from typing import Any

import typer
import typer.core


def one_line_summaries(group: typer.Typer) -> None:
    """Give every command of ``group`` (and its sub-groups) a one-line summary for the command
    lists: the first paragraph of its docstring with the line breaks of the source removed
    (rich markup mode keeps them, which broke the lists mid-sentence)."""
    for cmd in group.registered_commands:
        doc = cmd.help or inspect.getdoc(cmd.callback) or ""
        if cmd.short_help is None and doc:
            cmd.short_help = " ".join(doc.split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            one_line_summaries(sub.typer_instance)


def patch_typer(owner: Any, name: str, new: Any) -> Any:
    """Replace typer's ``owner.name`` (a help or error renderer, some of them typer's private
    ones) with ``new``; returns what it was. A typer without that name (its internals moved:
    pyproject pins the 0.29 line, but an install may not follow it) is left as it is and None
    returned: typer's own rendering then stays, and the CLI still starts."""
    old = getattr(owner, name, None)
    if old is None:
        return None
    setattr(owner, name, new)
    return old


def _option_type_in_help(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """The value placeholder an option shows in ``--help`` (``<int>``, ``<path>``), and none
    for an on/off flag (``--resume``, ``--dry-run``, ``--help``): typer's rich help showed
    ``<bool>`` there, as if the flag took a value (``--resume true`` is then refused)."""
    if self.is_flag or self.count:
        return None
    return _typer_option_type(self, ctx)


# The rich help panels ask each option for this (the plain help already skips flags).
_typer_option_type = patch_typer(typer.core.TyperOption, "display_type_rich", _option_type_in_help)


def _argument_name(self: typer.core.TyperArgument) -> str:
    """An argument's name in ``--help`` and in usage errors: its metavar, else its name
    upper-cased (``TASK``, ``SLOT``), as the docstrings and hints spell it; typer showed the
    Python name (``task``)."""
    return self.metavar if self.metavar is not None else str(self.name).upper()


def _argument_usage(self: typer.core.TyperArgument, ctx: Any) -> list[str]:
    """An argument in the usage line: ``TASK``, ``[NAME]`` when optional, ``DATASETS...``
    when it takes several; typer wrapped a required one in braces (``{task}``), which read as
    a choice list beside a group's ``{run,show}``."""
    name = self.display_name_raw
    name = name if self.required else f"[{name}]"
    return [name + ("..." if self.nargs != 1 else "")]


if patch_typer(typer.core.TyperArgument, "display_name_raw", property(_argument_name)):
    # the usage line reads the name patched above: typer's own where that is missing
    patch_typer(typer.core.TyperArgument, "get_usage_pieces", _argument_usage)

_typer_option_default: Any = getattr(typer.core.TyperOption, "_get_default_string", None)


def _default_text(self: Any, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
    """The text of an option's or argument's ``[default: ...]`` in ``--help``. A default said
    in words (``show_default="the cluster profile's gpus_per_node"``, for an option whose
    value is decided at run time) is shown as written: typer put it in parentheses
    (``[default: (5)]``). Every default in the help thus reads ``[default: X]``."""
    if show_default_is_str:
        return str(self.show_default)
    return str(
        _typer_option_default(self, ctx=ctx, show_default_is_str=False, default_value=default_value)
    )


# Typer's rich help asks each parameter for this text (typer.rich_utils); only where this
# typer has it for both, as the text of a default said in words comes from the option's.
if _typer_option_default is not None:
    patch_typer(typer.core.TyperOption, "_get_default_string", _default_text)
    patch_typer(typer.core.TyperArgument, "_get_default_string", _default_text)
