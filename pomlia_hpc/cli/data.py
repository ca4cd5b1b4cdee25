"""``pomlia data add/synth/list/show/verify``: datasets in, as versioned Zarr stores."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.data_notes import print_ingested
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.cli.pathopts import nonempty_path, path_argument, path_option
from pomlia_hpc.cli.tables import ListTable, shown, stack, when
from pomlia_hpc.data.medmnist_info import FLAGS_2D
from pomlia_hpc.progress import Reporter, progress
from pomlia_hpc.vocab import task_type_choices

if TYPE_CHECKING:  # imported inside the commands (below)
    from pomlia_hpc.data.grid import GridPlan
    from pomlia_hpc.data.store import DatasetStore

# The library (zarr, dask, h5py) is imported inside the commands, so `pomlia --help` and other
# command groups do not pay for it.

data_app = typer.Typer(
    help="Datasets in: MedMNIST, npz, image folders, HDF5 -> versioned Zarr stores.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


class _PlainStages:
    """Off a terminal (a Slurm output file, a pipe): time-stamped progress lines per stage
    (:func:`pomlia_hpc.progress.progress`), where rich's transient bar printed nothing at all.
    Each stage (``ingest``, ``fingerprint``, ``verify <version>``) is one report."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._open = ExitStack()  # the current stage's report
        self._reporter: Reporter | None = None
        self._done = 0

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if stage != self._stage or self._reporter is None:
            self.close()
            self._reporter = self._open.enter_context(
                progress(stage, total, unit="images", console=err_console, min_interval_s=10)
            )
            self._stage, self._done = stage, 0
        self._done += advance
        self._reporter.update(self._done, total)

    def close(self) -> None:
        self._open.close()
        self._reporter = None


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per stage, driven by the library's progress callback; plain lines
    when the output is not a terminal. Both on stderr: stdout is the command's result."""
    if not err_console.is_terminal:
        plain = _PlainStages()
        try:
            yield plain
        finally:
            plain.close()
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, advance: int, total: int) -> None:
            if stage not in tasks:  # each stage once (verify's carry their version)
                tasks[stage] = bar.add_task(f"{stage:12s}", total=total)
            bar.advance(tasks[stage], advance)

        yield report


# `data add`'s longer help texts, kept here so the command's signature stays readable.
_SOURCE_HELP = "An .npz, an HDF5 file, an image folder, or medmnist:FLAG."
_TASK_TYPE_HELP = (
    f"One of {task_type_choices()}. Kept in MedMNIST's spelling. A single-label type reads "
    "one-hot (N, L) labels as class indices."
)
_CLASS_NAMES_HELP = (
    "Comma-separated class names, in label order (npz, HDF5); image folder: the class "
    "folders' names in the order wanted (without it: by value when all are integers, else "
    "alphabetical)."
)
_FRACTION_HELP = (
    "Folder/HDF5 without splits: share of {split}, of each class. Split folders "
    "without {split}/ (or an empty one): share of each class of train/ carved out as {split} "
    "(rounded half up, at least one image; one stays in train)."
)
# `data add`'s options with the longest declarations, so that its signature stays short.
_RootOpt = Annotated[
    Path | None,
    path_option(
        help="Folder holding MedMNIST npz files (env POMLIA_MEDMNIST_ROOT).",
        show_default="~/.medmnist",
    ),
]
_TaskTypeOpt = Annotated[
    str | None,
    typer.Option(
        help=_TASK_TYPE_HELP, show_default="the source's (binary for 2 classes, else multi-class)"
    ),
]
_ValFractionOpt = Annotated[
    float | None, typer.Option(help=_FRACTION_HELP.format(split="val"), show_default="0.1")
]
_TestFractionOpt = Annotated[
    float | None, typer.Option(help=_FRACTION_HELP.format(split="test"), show_default="0.1")
]
_SKIP_HELP = (
    "Image folder: skip image files that do not decode (damaged, truncated, empty), naming "
    "each, instead of refusing the folder."
)

#: `data add --json`: the result as one JSON object (stdout stays that object alone).
_RecordFlag = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the version's record as one JSON object (name, version, ref, created, "
        "parent, n_images, splits, n_classes, task_type, store, repaired, store_path: the "
        "store's path, as data list and data show name it; store is the same, kept for "
        "older scripts).",
    ),
]


@data_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Dataset name (an identifier, e.g. pathmnist).")],
    source: Annotated[
        str | None,
        typer.Argument(help=_SOURCE_HELP, show_default="NAME as a MedMNIST flag"),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(help="MedMNIST image size, px: 28, 64, 128 or 224.", show_default="28"),
    ] = None,
    root: _RootOpt = None,
    download: Annotated[
        bool | None,
        typer.Option(
            "--download/--no-download",
            help="Download missing MedMNIST files (md5-checked).",
            show_default="download",
        ),
    ] = None,
    mirror: Annotated[str | None, typer.Option(help="Base URL replacing MedMNIST's.")] = None,
    images: Annotated[str | None, typer.Option(help="HDF5: path of the image dataset.")] = None,
    labels: Annotated[str | None, typer.Option(help="HDF5: path of the label dataset.")] = None,
    split: Annotated[
        str | None,
        typer.Option(help="HDF5: path of the split dataset (0/1/2, or split folder names)."),
    ] = None,
    class_names: Annotated[str | None, typer.Option(help=_CLASS_NAMES_HELP)] = None,
    n_classes: Annotated[
        # >= 1, checked by the source options (one error line, as every option; typer's
        # own range check printed a box)
        int | None,
        typer.Option(help="Declared number of classes (a whole number >= 1)."),
    ] = None,
    task_type: _TaskTypeOpt = None,
    val_fraction: _ValFractionOpt = None,
    test_fraction: _TestFractionOpt = None,
    max_classes: Annotated[
        int | None,
        typer.Option(help="Refuse more classes or label columns than this.", show_default="500"),
    ] = None,
    max_side_px: Annotated[
        int | None,
        typer.Option(help="Refuse images with a side longer than this, px.", show_default="4096"),
    ] = None,
    skip_unreadable: Annotated[
        bool,
        typer.Option("--skip-unreadable", help=_SKIP_HELP),
    ] = False,
    as_json: _RecordFlag = False,
) -> None:
    """Ingest a dataset as a new version (or find the identical existing one).

    The result goes to stdout; progress, notes and warnings to stderr."""
    from pomlia_hpc.data.api import ingest

    if source is not None:  # an empty one (an unset variable) is not "the MedMNIST flag"
        nonempty_path(source, param_hint="SOURCE")
    src = source or (f"medmnist:{name}" if name in FLAGS_2D else None)
    if src is None:
        raise typer.BadParameter(
            f"'{name}' is not a MedMNIST flag: give a SOURCE", param_hint="SOURCE"
        )
    opts: dict[str, Any] = dict(
        size=size,
        root=root,
        download=download,
        mirror=mirror,
        images=images,
        labels=labels,
        split=split,
        class_names=class_names,
        n_classes=n_classes,
        task_type=task_type,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_classes=max_classes,
        max_side_px=max_side_px,
        skip_unreadable=True if skip_unreadable else None,
    )
    ws = STATE.workspace
    with _progress() as report:
        rec = ingest(
            ws,
            STATE.registry(),
            name,
            src,
            progress=report,
            **{k: v for k, v in opts.items() if v is not None},
        )
    print_ingested(name, rec, as_json)


@data_app.command("synth")
def synth(
    out: Annotated[Path, path_argument(help="Output folder for the 12 npz files.")],
    scale: Annotated[float, typer.Option(help="Split sizes = MedMNIST's times this.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic).")] = 0,
    size: Annotated[int, typer.Option(help="Image size: 28, 64, 128 or 224.")] = 28,
    flags: Annotated[
        str | None, typer.Option(help="Comma-separated MedMNIST flags.", show_default="all 12")
    ] = None,
) -> None:
    """Write MedMNIST look-alike npz files (exact layouts, synthetic pixels).

    Each file is written a batch of images at a time, so memory stays at a few hundred MB
    whatever --scale and --size (the files themselves take the disk space: PathMNIST at
    --scale 1 --size 224 holds 16 GB of pixels before compression)."""
    from pomlia_hpc.data.synth import STYLES, write_lookalikes
    from pomlia_hpc.errors import InputError

    chosen = [f.strip() for f in flags.split(",") if f.strip()] if flags else list(FLAGS_2D)
    unknown = [f for f in chosen if f not in FLAGS_2D]
    if unknown or not chosen:
        raise InputError(
            f"--flags {flags!r}: unknown flag(s) {', '.join(unknown) or '(none given)'}; "
            f"expected some of {', '.join(FLAGS_2D)}"
        )
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("look-alikes", total=len(chosen))
        paths = write_lookalikes(
            out,
            scale=scale,
            seed=seed,
            size=size,
            flags=chosen,
            progress=lambda _f: bar.advance(task),
        )
    table = Table(title=f"look-alikes in {out} (scale {scale}, seed {seed}, {size} px)")
    for col in ("file", "MiB", "style"):
        table.add_column(col, overflow="fold")
    for p, flag in zip(paths, chosen, strict=True):
        table.add_row(p.name, f"{p.stat().st_size / 2**20:.2f}", STYLES[flag])
    console.print(table)


@data_app.command("list")
def list_cmd(
    name: Annotated[str | None, typer.Argument(help="Only versions of this dataset.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List registered datasets and their versions.

    A `*` after a version marks the one the plain name means (the one last added). A console
    too narrow for the full table (80 columns) gets 4 columns, two values stacked in each
    (size as HEIGHTxWIDTHxCHANNELS, the creation time as MM-DD HH:MM).

    --json keys: name, version, parent, n_images, task_type, n_classes, image_size (height
    and width, px), channels, created_at, store_path, current."""
    from pomlia_hpc.data.api import list_versions

    rows = list_versions(STATE.registry(), name)
    if as_json:
        print_rows(
            [
                {"name": r.name, "version": r.version, "parent": r.parent}
                | {"n_images": r.n_images, "task_type": r.task_type, "n_classes": r.n_classes}
                | {"image_size": list(r.image_size), "channels": r.channels}
                | {"created_at": r.created_at, "store_path": r.store_path, "current": r.current}
                for r in rows
            ]
        )
        return
    title = f"dataset versions ({len(rows)})"
    table = ListTable(title=title)
    for col in ("name", "version", "parent", "images", "task", "classes", "size", "ch", "created"):
        table.add_column(col, overflow="fold", no_wrap=col == "created")
    # The narrow form (an 80-column terminal): related values stacked, in 4 columns.
    narrow = table.narrow = Table(title=title)
    for col in ("name\ncreated", "version\nparent", "images\nsize", "task\nclasses"):
        narrow.add_column(col, overflow="fold")
    for r in rows:
        version = f"{r.version} *" if r.current else r.version
        size = f"{r.image_size[0]}x{r.image_size[1]}"
        table.add_row(
            r.name,
            version,
            shown(r.parent),
            str(r.n_images),
            r.task_type,
            str(r.n_classes),
            size,
            str(r.channels),
            when(r.created_at),
        )
        narrow.add_row(
            stack(r.name, when(r.created_at, narrow=True)),
            stack(version, r.parent or ""),
            stack(str(r.n_images), f"{size}x{r.channels}"),
            stack(r.task_type, f"{r.n_classes} classes"),
        )
    console.print(table)


def _render(ref: str, parent: str | None, meta: dict[str, Any], fp: dict[str, Any]) -> None:
    from pomlia_hpc.data.classes import classes_without_images, describe_missing

    table = Table(title=ref, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    sizes = meta.get("split_sizes", {})
    rows = [
        ("parent", parent or "-"),
        ("task", str(meta.get("task_type"))),
        ("classes", f"{meta.get('n_classes')}: {', '.join(meta.get('class_names', []))}"),
        # The detail view lists every class without images (warnings cut the list short).
        ("classes without images", describe_missing(classes_without_images(meta), None) or "-"),
        ("images", f"{meta.get('n_images')} ({', '.join(f'{k} {v}' for k, v in sizes.items())})"),
        ("image size", f"{meta.get('height')}x{meta.get('width')} px, {meta.get('channels')} ch"),
        ("chunk rows", str(meta.get("chunk_rows"))),
        ("source", json.dumps(meta.get("source", {}))),
        ("ingested", str(meta.get("ingested_at"))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print("[bold]explicit fingerprint[/]")
    console.print_json(json.dumps(fp))


@data_app.command("show")
def show_cmd(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",  # as `similar DATASET`: the Python name `ref` said less
            help="NAME (its current version: the last added) or NAME@VERSION.",
        ),
    ],
    grid: Annotated[
        Path | None,
        path_option(
            help="Write a sample grid PNG (rows = classes) here; the path must end in .png."
        ),
    ] = None,
    per_class: Annotated[int, typer.Option(help="Images per class in the grid.")] = 8,
    split: Annotated[
        str | None,
        typer.Option(
            help="Draw the grid's images from this split only (train, val, test).",
            show_default="all splits",
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="The grid's classes, comma-separated names or 0-based indices.",
            show_default="all",
        ),
    ] = None,
    max_rows: Annotated[
        int, typer.Option(help="Rows (classes) the grid draws; the rest are named.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Show a version: metadata and its explicit fingerprint."""
    from pomlia_hpc.data.api import show

    if grid is not None:
        from pomlia_hpc.data.grid import check_grid_path

        check_grid_path(grid)  # before printing anything: a bad path is one clear error
    rec = show(STATE.registry(), ref)
    meta = {k: v for k, v in rec.meta.items() if k != "chunk_hashes"}
    # The grid's options checked before anything is printed: a bad --classes, --split or
    # --per-class is then an error with nothing on stdout, with or without --json.
    planned = (
        _plan_grid(rec.store_path, per_class, split, classes, max_rows)
        if grid is not None
        else None
    )
    if as_json:
        if grid is not None and planned is not None:
            _draw_grid(*planned, grid, err_console)
        fields = {"ref": rec.ref, "parent": rec.parent, "store_path": rec.store_path}
        print_json(fields | {"meta": meta, "fingerprint": rec.fingerprint})
        return
    _render(rec.ref, rec.parent, meta, rec.fingerprint)
    if grid is not None and planned is not None:
        _draw_grid(*planned, grid, console)


def _plan_grid(
    store_path: Path, per_class: int, split: str | None, classes: str | None, max_rows: int
) -> tuple[DatasetStore, GridPlan]:
    """The store at ``store_path`` and the plan of ``data show --grid`` (its options checked)."""
    from pomlia_hpc.data.grid import plan_grid
    from pomlia_hpc.data.store import open_store

    store = open_store(store_path)
    # An empty --classes (an unset variable) is refused as the empty name it holds, not
    # read as "every class".
    chosen = [c.strip() for c in classes.split(",")] if classes is not None else None
    return store, plan_grid(
        store, per_class=per_class, split=split, classes=chosen, max_rows=max_rows
    )


def _draw_grid(store: DatasetStore, plan: GridPlan, grid: Path, out: Console) -> None:
    """Draw ``data show --grid`` as ``plan`` says and say where on ``out`` (stderr beside
    --json); the classes left out are named on stderr."""
    from pomlia_hpc.data.grid import draw_grid

    path = draw_grid(store, plan, grid)
    out.print(
        f"sample grid: {path} ({plan.title}, {len(plan.rows)} classes)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if plan.left_out:
        # The grid has room for max_rows classes: name the others, not drop them silently.
        first = len(plan.rows)
        err_console.print(
            f"note: {len(plan.left_out)} more classes not drawn ({', '.join(plan.left_out)}); "
            f"draw them with --classes NAME,... or --max-rows {first + len(plan.left_out)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@data_app.command("verify")
def verify_cmd(
    ref: Annotated[
        str | None,
        typer.Argument(metavar="DATASET", help="NAME or NAME@VERSION.", show_default="all"),
    ] = None,
) -> None:
    """Recompute chunk hashes and report damaged chunks (exit 1 if any version is damaged)."""
    from pomlia_hpc.data.api import verify

    with _progress() as report:
        results = verify(STATE.registry(), ref, progress=report)
    table = Table(title=f"verified {len(results)} version(s)")
    for col in ("version", "status", "damaged chunks", "problems"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r.ref,
            "[green]ok[/]" if r.ok else "[red]DAMAGED[/]",
            ", ".join(map(str, r.damaged_chunks)),
            "; ".join(r.problems),
        )
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
