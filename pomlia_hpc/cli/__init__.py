"""The ``pomlia`` command. Each command group lives in its own module and only parses
arguments, calls the library and renders the result."""

from __future__ import annotations

# Command groups register themselves on import.
from pomlia_hpc.cli import automl as _automl  # noqa: F401
from pomlia_hpc.cli import core as _core  # noqa: F401  (init, status)
from pomlia_hpc.cli import data as _data  # noqa: F401
from pomlia_hpc.cli import fingerprint as _fingerprint  # noqa: F401  (index)
from pomlia_hpc.cli import jobs as _jobs  # noqa: F401
from pomlia_hpc.cli import loop as _loop  # noqa: F401  (data harvest, deploy promote, loop)
from pomlia_hpc.cli import monitor as _monitor  # noqa: F401  (monitor run/show/history/...)
from pomlia_hpc.cli import pipeline as _pipeline  # noqa: F401
from pomlia_hpc.cli import plot as _plot  # noqa: F401  (plot latent)
from pomlia_hpc.cli import registry as _registry  # noqa: F401  (registry recover)
from pomlia_hpc.cli import report as _report  # noqa: F401
from pomlia_hpc.cli import runs as _runs  # noqa: F401  (after automl: its place in --help)
from pomlia_hpc.cli import serve as _serve  # noqa: F401  (model, serve, deploy)
from pomlia_hpc.cli import similar as _similar  # noqa: F401
from pomlia_hpc.cli import slot_history as _slot_history  # noqa: F401  (deploy history)
from pomlia_hpc.cli import strategy as _strategy  # noqa: F401  (strategy, recommend)
from pomlia_hpc.cli import task as _task  # noqa: F401
from pomlia_hpc.cli.app import app, main, one_line_summaries
from pomlia_hpc.cli.examples import add_help_extras

one_line_summaries(app)
add_help_extras(app)

__all__ = ["app", "main"]
