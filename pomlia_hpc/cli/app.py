"""The root typer app, global options and error handling shared by all command groups."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from pomlia_hpc import __version__
from pomlia_hpc.cli.failures import internal_error
from pomlia_hpc.cli.tables import caption_apart, fit_columns, pick_form, title_apart
from pomlia_hpc.config import load_cluster_profile, load_settings
from pomlia_hpc.errors import INTERNAL_EXIT, UNAVAILABLE_EXIT, InputError, PomliaError
from pomlia_hpc.files import remove_made_dirs
from pomlia_hpc.progress import drop_output, guard_std_streams, output_failure, stamped
from pomlia_hpc.registry import (
    Registry,
    RegistryMissingError,
    busy_error,
    server_unreachable,
    sqlite_storage_problem,
    write_lock_timed_out,
)
from pomlia_hpc.registry.relocate import home_note
from pomlia_hpc.storage import storage_error
from pomlia_hpc.workspace import Workspace, default_db_url

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


@dataclass
class Context:
    """What every command needs: the workspace and (opened lazily) the registry."""

    home: Path | None = None
    db_url: str | None = None
    cluster: str | None = None
    _registry: Registry | None = None

    @property
    def workspace(self) -> Workspace:
        settings = load_settings(
            {
                "workspace": {"home": self.home},
                "registry": {"url": self.db_url},
                "cluster": {"profile": self.cluster},
            }
        )
        ws = Workspace.from_settings(settings)
        if ws.home.exists() and not ws.home.is_dir():
            # Otherwise every command said "no registry at <file>/registry.db" (exit 4) and
            # pointed at `pomlia init`, which cannot make a folder where a file is.
            raise InputError(
                f"workspace {ws.home} is a file, not a folder: point --home (or POMLIA_HOME) "
                "at a workspace folder, or at a path that does not exist yet for `pomlia init`"
            )
        return ws

    def registry(self, *, create: bool = False, check_home: bool = True) -> Registry:
        """The workspace's registry. Only ``create=True`` (``pomlia init``, ``pomlia registry
        recover``) makes a new one; otherwise a missing registry is an error that says where
        it looked and, if dataset stores exist, how to get them back. The workspace's own
        SQLite registry whose paths name another workspace folder is an error when that
        folder is gone (a moved workspace), a warning when it exists (a copy);
        ``check_home=False`` skips that, for ``pomlia registry relocate``, which repairs it."""
        if self._registry is None:
            ws = self.workspace
            try:
                self._registry = Registry.open(
                    ws.db_url,
                    busy_timeout_s=ws.sqlite_busy_timeout_s,
                    create=create,
                    settings_file=ws.home / "pomlia.yaml",
                )
            except RegistryMissingError as exc:
                if exc.hint is not None:  # the registry's own advice (a database to create)
                    raise RegistryMissingError(
                        f"{exc.message} (workspace {ws.home})", hint=exc.hint
                    ) from exc
                raise RegistryMissingError(
                    f"{exc.message} (workspace {ws.home}); {_missing_hint(ws)}"
                ) from exc
            note = self._registry.upgrade_note()
            if note is not None:  # a schema change is never silent (README, "Upgrading")
                err_console.print(note, highlight=False, markup=False, soft_wrap=True)
            # before any reader fails on a path of the old place; only for the workspace's
            # own SQLite file: a PostgreSQL registry (or another --db-url) is often shared by
            # several users' workspaces, whose newest store may name another user's home
            if check_home and ws.db_url == default_db_url(ws.home):
                self._check_home(self._registry, ws.home)
        return self._registry

    def _check_home(self, registry: Registry, home: Path) -> None:
        try:
            warning = home_note(registry, home)
        except BaseException:
            self._registry = None  # the next call checks again
            registry.dispose()
            raise
        if warning is not None:
            err_console.print(warning, highlight=False, markup=False, soft_wrap=True)

    def prepared(self, *, create: bool = False) -> Registry:
        """The workspace's folder layout, then its registry (``create`` as in
        :meth:`registry`), for commands that write into the workspace. If the registry cannot
        be opened (a bad URL, no registry, a server that refuses), the folders this call made
        are removed again, never ones that existed before: a refused command leaves no empty
        workspace skeleton behind."""
        made = self.workspace.create()
        try:
            return self.registry(create=create)
        except BaseException:
            remove_made_dirs(made)
            raise


STATE = Context()


def _missing_hint(ws: Workspace) -> str:
    """What to do when there is no registry at ``ws.db_url``. When the workspace's own
    ``registry.db`` exists, the URL is mistyped or relative (``sqlite:///registy.db``): name
    the right one; `registry recover` would make a second, partial registry. Recover is offered
    only when the workspace has dataset stores and no registry file at all."""
    from pomlia_hpc.data.recover import store_dirs

    default = ws.home / "registry.db"
    if ws.db_url != default_db_url(ws.home) and default.is_file() and default.stat().st_size:
        database = make_url(ws.db_url).database if ws.db_url.startswith("sqlite") else None
        relative = (
            f"that is a relative path, read from the current directory {Path.cwd()}; "
            if database and not Path(database).is_absolute()
            else ""
        )
        return (
            f"{relative}the workspace's registry is {default}; did you mean --db-url "
            f"{default_db_url(ws.home)}? (or unset POMLIA_DB_URL and the workspace file's "
            "registry.url, to use it)"
        )
    n = len(store_dirs(ws))
    if n:
        return (
            f"{n} dataset store(s) exist under {ws.stores}: run `pomlia registry recover` to "
            "create the registry and register them again from their own metadata"
        )
    return "run `pomlia init` to create one (or point --home / --db-url at the right workspace)"


def profile_for(executor: str | None) -> str:
    """An ``--executor`` value as a cluster profile: ``None`` (not given) is the configured
    profile (``--cluster``, ``POMLIA_CLUSTER``, the workspace's ``pomlia.yaml``; ``local`` if
    none), ``local`` and profile names are themselves, and ``slurm`` is the configured profile,
    which must then be a Slurm one."""
    if executor is None:
        # The global --cluster must reach the jobs: a fixed 'local' default silently ran a
        # `pomlia --cluster slurm-local automl run` on this machine.
        return STATE.workspace.cluster_profile
    if executor != "slurm":
        return executor
    configured = STATE.workspace.cluster_profile
    if load_cluster_profile(configured).backend == "slurm":
        return configured
    raise InputError(
        f"--executor slurm: the configured cluster profile '{configured}' is not a Slurm "
        "profile; pass --cluster PROFILE (e.g. haicore, slurm-local) or --executor PROFILE"
    )


def log_line(text: str) -> None:
    """One line of a long command's log (pipeline, loop), time-stamped like the progress
    lines, on stderr: its output is often a Slurm job's output file, read hours later."""
    # soft_wrap: one line whatever the width (a crashed trial's cause makes it long), for grep.
    # On stderr: it is progress for people; stdout keeps the command's results.
    try:
        err_console.print(stamped(text), highlight=False, markup=False, soft_wrap=True)
    except BrokenPipeError:  # `pomlia pipeline run ... | head`: the work goes on unread
        drop_output(err_console.file)


def _version(value: bool) -> None:
    if value:
        console.print(f"pomlia-hpc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="Workspace directory (env POMLIA_HOME).", show_default="./pomlia-home"
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url",
            help="Registry database URL (env POMLIA_DB_URL).",
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
    if STATE._registry is not None:  # a previous invocation in the same process (tests)
        STATE._registry.dispose()
    STATE.home, STATE.db_url, STATE.cluster, STATE._registry = home, db_url, cluster, None


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


#: Integer parameters that are registry ids: the noun and where the ids are listed, for the
#: message when one is not a whole number.
ID_PARAMS = {
    "job_id": ("job", "pomlia jobs list"),
    "report": ("report", "pomlia monitor history MODEL"),
    "task_id": ("task", "pomlia task list"),
    "run_id": ("run", "pomlia runs list"),
    "deployment_id": ("deployment", "what `pomlia deploy MODEL` printed"),
    "request_id": ("retrain request", "pomlia loop show SLOT"),
}


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


# Typer looks the printer up on its module at each error, so this replaces it everywhere
# (the console entry point and the test runner alike).
_typer_format_error = patch_typer(typer.rich_utils, "rich_format_error", _format_usage_error)


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
