"""``pomlia report``: parse, call :func:`pomlia_hpc.report.build_report`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.pathopts import path_option

#: As :data:`pomlia_hpc.report.pages_learn.MAX_STUDIES` (not imported: matplotlib, the
#: registry would load for every command's --help).
MAX_STUDIES = 20


@app.command("report")
def report(
    out: Annotated[
        Path | None,
        path_option("--out", help="Folder for the HTML pages.", show_default="<home>/reports/html"),
    ] = None,
    studies: Annotated[
        int,
        typer.Option(
            "--studies",
            min=0,
            help="How many studies (the newest, by their newest trial) the Studies page shows "
            "in full, with a best-so-far figure and a trial table each; the others get one row "
            "in its overview table (the newest 500 studies, or N if more).",
        ),
    ] = MAX_STUDIES,
) -> None:
    """Write a static, self-contained HTML report of the workspace (opens without a server):
    an overview with counts, then datasets (the current version of each marked), fingerprints
    (figures of each dataset's current version), recommendations, studies, models and
    deployments, monitor history, pipelines (each page only when there is something on it).
    Undefined metrics read n/a. The page sizes are bounded: the newest 30 recommendations, each
    dataset's newest 3 versions, the newest --studies studies in full, the newest 200 models and
    100 deployments, each model's newest 100 monitor reports, the newest 50 pipelines."""
    from pomlia_hpc.report import build_report

    res = build_report(
        STATE.registry(),
        STATE.workspace,
        out,
        progress=lambda title: console.print(f"  {title}", highlight=False),
        max_studies=studies,
    )
    others = len(res.pages) - 1  # besides index.html, the overview
    console.print(
        f"report: {res.folder / 'index.html'} (the overview"
        + (f" and the {others} page(s) above)" if others else "; nothing else recorded yet)"),
        highlight=False,
    )
