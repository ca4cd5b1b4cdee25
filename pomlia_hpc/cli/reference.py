"""The CLI's word on a model's monitoring reference, shared by every command that writes one
(``monitor reference``, ``model export``, ``deploy``), so they all say it the same way."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from pomlia_hpc.cli.app import console


def warn_few_images(reference: Path | None, model: str) -> None:
    """Print a warning when the monitoring reference at ``reference`` (None: there is none)
    holds too few images for MODEL's drift tests to mean much; print nothing otherwise."""
    # Imported here: serve.reference loads numpy and the registry, which list commands and
    # --help do not need.
    from pomlia_hpc.serve.reference import few_images_warning

    warning = few_images_warning(reference, model)
    if warning is not None:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
