"""``pomlia plot latent``: the paper's latent-space figures (Figures 5 and 6) as PNG files in a
folder; parse, call :mod:`pomlia_hpc.fingerprint.plots`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.fingerprint import EncoderOpt, encoder_name
from pomlia_hpc.cli.notes import note, older_versions_note, set_notes
from pomlia_hpc.cli.pathopts import path_option

plot_app = typer.Typer(help="Figures of the latent space.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")

#: What ``plot latent`` writes into its --out folder (the message of a refused --out says it).
LATENT_FILES = "latent_scatter.png and, for two datasets or more, latent_means.png"


@plot_app.command("latent")
def latent(
    datasets: Annotated[
        list[str] | None, typer.Argument(help="Datasets.", show_default="all extracted")
    ] = None,
    encoder: EncoderOpt = None,
    out: Annotated[
        Path | None,
        path_option(
            help=f"Folder for the PNGs ({LATENT_FILES}); an image file name (x.png) is refused.",
            show_default="<home>/reports/latent/<encoder>",
        ),
    ] = None,
    all_versions: Annotated[
        bool,
        typer.Option(
            "--all-versions",
            help="Without DATASETS: plot every version with embeddings (without it: the "
            "current version of each dataset).",
        ),
    ] = False,
) -> None:
    """Write the latent scatter of test samples (Figure 5) and per-dataset means (Figure 6,
    for two datasets or more) into a folder."""
    from pomlia_hpc.files import check_folder_path
    from pomlia_hpc.fingerprint.plots import latent_figures

    if out is not None:
        # Before anything is read: `--out x.png` made a folder named x.png.
        check_folder_path(out, "--out", LATENT_FILES)
    enc = encoder_name(encoder)
    folder = out or STATE.workspace.path("reports", "latent", enc)
    reg = STATE.registry()
    left: list[Any] = []
    unrec: list[Any] = []
    paths, skipped = latent_figures(
        reg,
        enc,
        datasets or None,
        folder,
        all_versions=all_versions,
        left_out=left,
        unrecorded_out=unrec,
    )
    for p in paths:
        console.print(f"wrote {p}")
    note(skipped)
    if not (datasets or all_versions):
        older_versions_note(reg, enc)
    set_notes(left, unrec)
