"""``pomlia similar``: the data sets, or with ``--images`` the images, nearest to a data set
(parse, call :mod:`pomlia_hpc.fingerprint.similar` or :mod:`pomlia_hpc.fingerprint.nearest`,
render; notes under the results)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.fingerprint import EncoderOpt, encoder_name
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.notes import note, older_versions_note, set_notes
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry


def _check_similar_options(
    images: int | None, split: str | None, k: int | None, distance: str | None
) -> None:
    """Refuse the options of the other mode of ``similar`` rather than ignore them, and
    counts below 1, before anything is looked up (a bad option is exit 2 even in a workspace
    without an encoder, which is exit 4)."""
    for option, count, what in (("--k", k, "datasets"), ("--images", images, "images")):
        if count is not None and count < 1:  # the library's wording (similar, nearest)
            raise InputError(f"{option} {count}: expected a number of {what} >= 1")
    if images is None and split is not None:
        raise InputError("option '--split' needs --images N: datasets are compared on all rows")
    for option, value in (("--k", k), ("--distance", distance)):
        if images is not None and value is not None:
            raise InputError(
                f"option '{option}' applies to similar datasets, not to --images (nearest "
                "images are ranked by the index's own metric): expected one or the other"
            )


#: ``--distance``'s help: the names, and the unit of the one ranked by unless told.
_DISTANCE_HELP = (
    "combined (latent + explicit fingerprint, each over its median across the candidates: 1 "
    "is as far as a typical one), trimmed, frechet, mean (the paper), mmd, kl, marginal or "
    "explicit."
)
#: ``--images``' help: the columns, and the distance's unit.
_IMAGES_HELP = (
    "List the N nearest images of other datasets instead: split, row in that split (--json "
    "split_row), row in the whole store (--json row) and distance (Euclidean, in the "
    "encoder's latent units; 1 - cosine for an index built with --metric ip)."
)

#: Table headings of ``similar --images`` columns whose --json key says less.
_HEADINGS = {"split_row": "row in split", "row": "store row"}


def _image_rows(
    reg: Registry,
    enc: str,
    dataset: str,
    n: int,
    split: str | None,
    patches: bool,
    all_versions: bool,
    left: list[Any],
    unrec: list[Any],
    notes: list[str],
) -> tuple[list[list[Any]], list[str]]:
    """The rows and columns of ``similar --images`` (what was left out goes to ``left``, the
    data sets used unrecorded to ``unrec``, why fewer than ``n`` came to ``notes``)."""
    from pomlia_hpc.fingerprint.nearest import nearest_images

    hits = nearest_images(
        reg,
        STATE.workspace,
        enc,
        dataset,
        n,
        split=split,
        patches=patches,
        all_versions=all_versions,
        left_out=left,
        unrecorded_out=unrec,
        notes_out=notes,
    )
    # The row within the split is what a user can look up (the split of 72 test images
    # showed row 1065, the store's); the store row stays beside it, and as --json's "row".
    rows: list[list[Any]] = [[h.ref, h.split, h.split_row, h.row, h.distance] for h in hits]
    cols = ["dataset", "split", "split_row", "row", "distance"]
    if patches:
        cols.append("tile")
        rows = [[*r, h.tile] for r, h in zip(rows, hits, strict=True)]
    return rows, cols


@app.command("similar")
def similar(
    dataset: Annotated[str, typer.Argument(help="Query dataset: name or name@version.")],
    encoder: EncoderOpt = None,
    k: Annotated[
        int | None, typer.Option("--k", help="How many datasets.", show_default="5")
    ] = None,
    distance: Annotated[
        str | None,
        typer.Option(
            help=_DISTANCE_HELP,
            show_default="combined",
        ),
    ] = None,
    images: Annotated[
        int | None,
        typer.Option(
            help=_IMAGES_HELP,
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="With --images: query only this split's images.")
    ] = None,
    patches: Annotated[
        bool,
        typer.Option(
            "--patches", help="Compare patch embeddings (extracted with --patch-grid > 1)."
        ),
    ] = False,
    all_versions: Annotated[
        bool,
        typer.Option(
            "--all-versions",
            help="Compare every version of each dataset with embeddings (without it: its "
            "current version, else its newest with embeddings).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with each distance's components).")
    ] = False,
) -> None:
    """The datasets (or, with --images, the images) most similar to DATASET.

    Each other dataset counts once, as its current version (else its newest with embeddings;
    --all-versions: every version). Embeddings of the encoder's earlier weights, missing or
    unfinished ones are left out and named in a note, as is a current version never embedded
    (its dataset is compared as its older version); a dataset with DATASET's content is
    named too. Embeddings whose extraction finished unrecorded are used as found and named in
    a note with the command that records them; nothing is written."""
    from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE
    from pomlia_hpc.fingerprint.similar import same_content_note, similar_datasets

    _check_similar_options(images, split, k, distance)
    k, distance = 5 if k is None else k, distance or DEFAULT_DISTANCE
    reg, enc = STATE.registry(), encoder_name(encoder)
    left: list[Any] = []  # what was left out, and why: one note under the results
    unrec: list[Any] = []  # what was used unrecorded: another note
    notes: list[str] = []  # the same content, fewer images than asked, few images
    if images is not None:
        rows, cols = _image_rows(
            reg, enc, dataset, images, split, patches, all_versions, left, unrec, notes
        )
        title = f"{len(rows)} nearest images to {dataset} (encoder {enc})"
    else:
        found = similar_datasets(
            reg,
            enc,
            dataset,
            k,
            distance,
            patches=patches,
            all_versions=all_versions,
            left_out=left,
            unrecorded_out=unrec,
            notes_out=notes,
        )
        notes.insert(0, same_content_note(dataset, found))
        if as_json:
            _similar_json(found, distance, notes, left, unrec)
            return
        parts = sorted({c for r in found for c in r.components} - {distance, "weight"})
        rows = [
            [r.ref, r.distance, r.n_vectors] + [r.components.get(c) for c in parts] for r in found
        ]
        cols = ["dataset", f"{distance} distance", "images", *parts]
        title = f"datasets nearest to {dataset} (encoder {enc})"
    _render(title, cols, rows, as_json)
    for text in notes:
        note(text, stderr=as_json)
    set_notes(left, unrec, stderr=as_json)
    if not as_json and not all_versions:
        older_versions_note(reg, enc, dataset.split("@")[0])


def _render(title: str, cols: list[str], rows: list[list[Any]], as_json: bool) -> None:
    """The results of ``similar``: a table, or with ``as_json`` one JSON list on stdout."""
    if as_json:
        print_json([dict(zip(cols, r, strict=True)) for r in rows])
        return
    table = Table(title=title)
    for c in cols:
        table.add_column(_HEADINGS.get(c, c))
    for r in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    console.print(table)


def _similar_json(
    found: list[Any], distance: str, notes: list[str], left: list[Any], unrec: list[Any]
) -> None:
    """``similar --json`` of data sets: one JSON document on stdout, the notes on stderr."""
    out = [
        {"dataset": r.ref, "distance": r.distance, "kind": distance}
        | {"images": r.n_vectors, "components": r.components}
        | {"same_content": r.same_content}
        for r in found
    ]
    print_json(out)
    for text in notes:
        note(text, stderr=True)
    set_notes(left, unrec, stderr=True)
