"""The CLI's two consoles (results on stdout, messages on stderr) and how wide they print:
one line per message off a terminal, tables fitted to the width (:mod:`.tables`)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import typer
import typer.rich_utils
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pomlia_hpc.cli.tables import caption_apart, fit_columns, pick_form, title_apart
from pomlia_hpc.progress import drop_output, stamped

#: Width of output that goes to a file or a pipe (a Slurm output file, ``| grep``), where rich
#: would fold every table row and message at 80 columns; the ``COLUMNS`` variable still wins.
FILE_WIDTH = 200


class MessageConsole(Console):
    """A rich console whose messages off a terminal are never wrapped.

    Printed to a file or a pipe, a message or hint longer than the console's width was
    hard-wrapped (a newline in the middle of the ``pomlia ...`` command it suggests); there a
    :meth:`print` of only text (``str``, :class:`rich.text.Text`) now stays one line per line
    of its text, as with ``soft_wrap=True``. Tables and other renderables keep the width, and a
    terminal keeps rich's wrapping (it re-wraps for the eye anyway)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """:meth:`rich.console.Console.print`, with ``soft_wrap`` True by default for text
        printed off a terminal (see the class), and tables laid out without a word broken and
        with their titles and captions on one line, a list's narrow form on a narrow console
        (:mod:`pomlia_hpc.cli.tables`)."""
        if (
            kwargs.get("soft_wrap") is None
            and not self.is_terminal
            and objects
            and all(isinstance(o, str | Text) for o in objects)
        ):
            kwargs["soft_wrap"] = True
        objects = tuple(pick_form(o, self) if isinstance(o, Table) else o for o in objects)
        captions = []
        for table in (o for o in objects if isinstance(o, Table)):  # one per call, in practice
            if fit_columns(table, self):
                kwargs["crop"] = False  # wider than the console rather than words cut
            title = title_apart(table, self)
            if title is not None:
                super().print(title, soft_wrap=True)
            captions.append(caption_apart(table, self))
        super().print(*objects, **kwargs)
        for caption in (c for c in captions if c is not None):
            super().print(caption, soft_wrap=True)


def env_columns() -> int | None:
    """The width the ``COLUMNS`` variable asks for, in characters, or None when it is unset or
    not a whole number >= 1 (``abc``, ``0``, ``-5``: ignored, so the usual width applies)."""
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _console(*, stderr: bool = False) -> Console:
    out = MessageConsole(stderr=stderr)
    if not out.is_terminal and env_columns() is None:
        # a terminal keeps following its own width; an invalid COLUMNS gave rich's 80
        out.width = FILE_WIDTH
    elif env_columns() is None and os.environ.get("COLUMNS") is not None:
        out.width = shutil.get_terminal_size().columns  # rich took COLUMNS=0 as width 0
    return out


console = _console()
err_console = _console(stderr=True)
if not console.is_terminal and env_columns() is None and not os.environ.get("TERMINAL_WIDTH"):
    # --help to a file or a pipe: as wide as the other output (typer's own console folded
    # option help at 80 columns mid-word)
    typer.rich_utils.MAX_WIDTH = FILE_WIDTH


def log_line(text: str) -> None:
    """One line of a long command's log (pipeline, loop), time-stamped like the progress
    lines, on stderr: its output is often a Slurm job's output file, read hours later."""
    # soft_wrap: one line whatever the width (a crashed trial's cause makes it long), for grep.
    # On stderr: it is progress for people; stdout keeps the command's results.
    try:
        err_console.print(stamped(text), highlight=False, markup=False, soft_wrap=True)
    except BrokenPipeError:  # `pomlia pipeline run ... | head`: the work goes on unread
        drop_output(err_console.file)


class _LibraryWarnings(logging.Handler):
    """A library's log warning (``pomlia.serve`` reading a damaged kept input during ``monitor
    run``) as one ``warning: ...`` line on stderr, as the CLI's own warnings print: without
    it Python's fallback printed the bare message, which read like output."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname.lower()}: {record.getMessage()}"
            err_console.print(text, markup=False, highlight=False, soft_wrap=True)
        except OSError:  # stderr gone (a closed pipe): the command goes on unheard
            pass


def library_warnings_as_lines() -> None:
    """Print library log records of WARNING and above as :class:`_LibraryWarnings` lines
    while no logging is configured. It is Python's handler of last resort, so a command that
    sets up its own logging (``serve``) keeps its format and nothing prints twice."""
    if not isinstance(logging.lastResort, _LibraryWarnings):
        logging.lastResort = _LibraryWarnings()
