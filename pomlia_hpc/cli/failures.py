"""How the ``pomlia`` command ends on a bug: the traceback, one line naming it, and an exit
status of its own (``docs/guide/README.md``, "Exit status")."""

from __future__ import annotations

import contextlib
import sys
import traceback

from rich.console import Console
from rich.markup import escape

from pomlia_hpc.errors import INTERNAL_EXIT


def internal_error(err_console: Console) -> int:
    """Print the exception being handled, a bug, as its traceback and then one line naming it
    on ``err_console`` (stderr); return :data:`~pomlia_hpc.errors.INTERNAL_EXIT`.

    Python's own exit status for an uncaught exception is 1, the status `monitor run` answers
    an alarm with (`jobs/monitor.sbatch` then ends the job COMPLETED) and `data verify` damage
    with: a script could not tell a crash from a finding."""
    exc = sys.exc_info()[1]
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    with contextlib.suppress(OSError, ValueError):  # a closed stderr: the status still says it
        traceback.print_exc()
        err_console.print(
            f"[bold red]error:[/] internal error (a bug in pomlia; traceback above): "
            f"{escape(type(exc).__name__)}: {escape(text)}",
            highlight=False,
            soft_wrap=True,
        )
    return INTERNAL_EXIT
