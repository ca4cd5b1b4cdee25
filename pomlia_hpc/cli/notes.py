"""The notes under a fingerprint reader's results (``similar``, ``index build``, ``plot
latent``, ``fingerprint show``): the data sets it left out, those it used as their unrecorded
extraction left them, and other versions it did not compare. Printed whole, never wrapped, so
a command a note names can be copied."""

from __future__ import annotations

from typing import Any

from pomlia_hpc.cli.app import console, err_console
from pomlia_hpc.registry import Registry


def note(text: str, *, stderr: bool = False) -> None:
    """A note under the results (if any text); on stderr beside --json, whose output stays
    one JSON document."""
    if text:
        out = err_console if stderr else console
        out.print(text, markup=False, highlight=False, soft_wrap=True)


def set_notes(left: list[Any], unrecorded: list[Any], *, stderr: bool = False) -> None:
    """One line naming the data sets left out (``left``, of
    :class:`~pomlia_hpc.fingerprint.usable.LeftOut`) and one naming those used unrecorded
    (``unrecorded``, of :class:`~pomlia_hpc.fingerprint.usable.Unrecorded`), where any."""
    from pomlia_hpc.fingerprint.usable import left_out_note, unrecorded_note

    note(left_out_note(left), stderr=stderr)
    note(unrecorded_note(unrecorded), stderr=stderr)


def older_versions_note(reg: Registry, enc: str, query: str | None = None) -> None:
    """The footnote naming the versions of datasets (other than ``query``'s) that the command
    left out for not being the current one (which may be older or newer), if any."""
    from pomlia_hpc.fingerprint.candidates import superseded_refs

    older = [r for r in superseded_refs(reg, enc) if r.split("@")[0] != query]
    if older:
        console.print(
            f"other versions left out: {', '.join(older)} (the current version of each dataset "
            "only; --all-versions to include them)",
            highlight=False,
            soft_wrap=True,
        )
