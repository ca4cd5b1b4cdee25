"""The root typer app, its global options, and the entry point that turns every error into
one line and an exit status. The consoles (:mod:`.console`), the shared state
(:mod:`.context`), the help renderers (:mod:`.typer_help`) and the one-line usage errors
(:mod:`.usage_errors`) live beside it; the names command modules take from here are
re-exported."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from pomlia_hpc import __version__
from pomlia_hpc.cli import repeated as _repeated  # noqa: F401  (warns of a repeated option)
from pomlia_hpc.cli import usage_errors as _usage_errors  # noqa: F401  (patches typer's printer)
from pomlia_hpc.cli.console import (
    MessageConsole,
    console,
    err_console,
    library_warnings_as_lines,
    log_line,
)
from pomlia_hpc.cli.context import STATE, Context, profile_for
from pomlia_hpc.cli.failures import internal_error
from pomlia_hpc.cli.pathopts import path_option
from pomlia_hpc.cli.typer_help import one_line_summaries
from pomlia_hpc.errors import INTERNAL_EXIT, UNAVAILABLE_EXIT, PomliaError
from pomlia_hpc.progress import guard_std_streams, output_failure
from pomlia_hpc.registry import (
    busy_error,
    refused_right,
    server_unreachable,
    sqlite_storage_problem,
    write_lock_timed_out,
    write_refused,
)
from pomlia_hpc.storage import storage_error

__all__ = [
    "STATE",
    "Context",
    "MessageConsole",
    "app",
    "console",
    "err_console",
    "log_line",
    "main",
    "one_line_summaries",
    "profile_for",
]

app = typer.Typer(
    name="pomlia",
    help=(
        "pomlia-hpc: fingerprint biomedical image datasets, find similar ones, run AutoML as "
        "cluster jobs, serve and monitor the best model."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"pomlia-hpc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    home: Annotated[
        Path | None,
        path_option(
            "--home", help="Workspace directory (env POMLIA_HOME).", show_default="./pomlia-home"
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url",
            help="Registry database URL (env POMLIA_DB_URL); a relative SQLite path "
            "(sqlite:///registry.db) is read against the workspace folder.",
            show_default="SQLite, <home>/registry.db",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Cluster profile from configs/cluster/ (env POMLIA_CLUSTER).",
            show_default="the workspace's pomlia.yaml, else local",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    library_warnings_as_lines()
    if STATE._registry is not None:  # a previous invocation in the same process (tests)
        STATE._registry.dispose()
    STATE.home, STATE.db_url, STATE.cluster, STATE._registry = home, db_url, cluster, None


def _interrupted(exc: SystemExit) -> bool:
    """Whether ``exc`` is typer's exit for a KeyboardInterrupt that no command handled (a
    command that says something itself raises its exit ``from None``)."""
    ctx = exc.__context__
    return ctx is not None and isinstance(ctx.__cause__, KeyboardInterrupt)


#: Exit status of a command whose output could not be written (sysexits' EX_IOERR).
OUTPUT_ERROR_EXIT = 74


def main() -> None:
    """Console-script entry point: run the app; a :class:`PomliaError` is one line, exit with its
    ``exit_code`` (2 for bad input); any other exception, a bug, its traceback and exit
    :data:`~pomlia_hpc.errors.INTERNAL_EXIT`. Output that could not be written (``>
    /dev/full``, a closed stdout) is one line on stderr when the command ends, exit
    :data:`OUTPUT_ERROR_EXIT` (a failed command keeps its own). The table of exit statuses:
    ``docs/guide/README.md``, "Exit status"."""
    guard_std_streams()  # `| head`: no write (a job's say(), a library's print) kills the command
    try:
        _run()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except Exception:  # a bug: its traceback, and an exit status of its own
        code = internal_error(err_console)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    failure = output_failure()
    if failure is not None:
        with contextlib.suppress(OSError, ValueError):
            err_console.print(
                f"[bold red]error:[/] cannot write output: {escape(failure)}",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(code if code not in (0, None) else OUTPUT_ERROR_EXIT)
    sys.exit(code)


def _run() -> None:
    """The app, with the project's errors as one line each (see :func:`main`)."""
    try:
        app()
    except PomliaError as exc:
        # soft_wrap: one line whatever the width (a terminal wraps it for the eye), for grep
        # escape: a message quoting "[val]" or a user's "[red]x" is text, not rich markup
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == 130 and _interrupted(exc):
            # typer turns Ctrl-C into a silent exit 130: say it, once (`automl run` says more).
            # Imported here: it pulls submitit, which no other command needs at start-up.
            from pomlia_hpc.cluster.terminate import cancelled_with_this_process

            cancelled = cancelled_with_this_process()  # a driver (pipeline run --in-process)
            jobs = (
                f"the {len(cancelled)} job(s) it submitted were cancelled with it"
                if cancelled
                else "jobs it started locally were stopped with it, Slurm jobs run on"
            )
            err_console.print(
                f"[yellow]interrupted[/] (Ctrl-C): stopped; {jobs} (`pomlia jobs list`); "
                "the same command resumes",
                highlight=False,
                soft_wrap=True,
            )
        raise
    except DBAPIError as exc:  # a database failure the library did not name: still one line
        if write_lock_timed_out(exc):  # not "registry database error": say what to change
            ws = STATE.workspace
            busy = busy_error(ws.db_url, ws.sqlite_busy_timeout_s, ws.home / "pomlia.yaml")
            err_console.print(
                f"[bold red]error:[/] {escape(str(busy))}", highlight=False, soft_wrap=True
            )
            sys.exit(busy.exit_code)
        first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else ""
        storage = sqlite_storage_problem(STATE.workspace.db_url, exc)
        if storage is not None:  # SQLite names neither the file nor the cause
            first += f": {storage}"
        elif write_refused(exc):  # a read-only role's write: the user's to fix, not a bug (70)
            err_console.print(
                f"[bold red]error:[/] {escape(refused_right(STATE.workspace.db_url, exc))}",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        # Not 1, which `monitor run` (an alarm) and `data verify` (damage) answer with: a
        # nightly job read a registry failure as an alarm and ended COMPLETED.
        gone = server_unreachable(STATE.workspace.db_url, exc)
        err_console.print(
            f"[bold red]error:[/] registry database "
            f"{'server did not answer' if gone else 'error'}: {escape(first)}",
            highlight=False,
            soft_wrap=True,
        )
        # a full disk is a StorageError's status (2), as for any other write that did not fit
        sys.exit(UNAVAILABLE_EXIT if gone else 2 if storage is not None else INTERNAL_EXIT)
    except (OSError, RuntimeError) as exc:
        # A full disk (or quota, size limit, read-only mount) that no writer named: still one
        # line, never a traceback; without a path, as an OSError's filename may be the source
        # of a copy, not the file that did not fit.
        full = storage_error(None, exc, kept=True)
        if full is None:
            raise
        err_console.print(
            f"[bold red]error:[/] {escape(str(full))}", highlight=False, soft_wrap=True
        )
        sys.exit(full.exit_code)
