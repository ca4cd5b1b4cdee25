"""``pomlia fingerprint train|extract|show|refresh`` and ``pomlia index build``: parse, call
:mod:`pomlia_hpc.fingerprint`, render. (``pomlia similar``: :mod:`pomlia_hpc.cli.similar`;
``pomlia plot latent``: :mod:`pomlia_hpc.cli.plot`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console, log_line
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.notes import note, set_notes
from pomlia_hpc.errors import InputError
from pomlia_hpc.progress import Reporter, progress

fingerprint_app = typer.Typer(
    help="Train the fingerprint autoencoder and embed datasets with it.", no_args_is_help=True
)
index_app = typer.Typer(help="FAISS indexes over an encoder's embeddings.", no_args_is_help=True)
app.add_typer(fingerprint_app, name="fingerprint")
app.add_typer(index_app, name="index")

ENCODER_DEFAULT = (
    "the current one after a refresh, else the only one (never one a refresh has not finished)"
)
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        "-e",
        help="Encoder name or id.",
        show_default=ENCODER_DEFAULT,
    ),
]


def encoder_name(name: str | None) -> str:
    """The encoder an ``--encoder`` value names: itself, else the workspace's default one."""
    if name is not None:
        return name
    from pomlia_hpc.fingerprint.current import default_encoder

    # How an older release's unfinished refresh settled the default is said on stderr: the
    # default changes nothing on disk, and a command's output may be captured.
    return default_encoder(
        STATE.registry(), STATE.workspace, lambda n: note(f"note: {n}", stderr=True)
    )


class _LazyProgress:
    """A progress report that starts at the first update: a command whose input is refused
    before any work (nothing submitted yet) prints the error alone, not "0 array tasks"."""

    def __init__(self, stack: ExitStack, description: str, total: int | None = None, **kw: Any):
        self._stack, self._args, self._kw = stack, (description, total), kw
        self._bar: Reporter | None = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._bar is None:  # the first line already shows the total, once known
            first = (self._args[0], total if total is not None else self._args[1])
            # progress is for people: on stderr, so `> out` keeps only the result table
            report = progress(*first, console=err_console, **self._kw)
            self._bar = self._stack.enter_context(report)
        self._bar.update(done, total)


@contextmanager
def _step_progress(description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """The progress report of one step of a longer command (``fingerprint refresh``), as the
    command of that step reports it; vectors (``index build``) at most one line per 10 s."""
    with ExitStack() as stack:
        yield _LazyProgress(
            stack, description, unit=unit, min_interval_s=10 if unit == "vectors" else 0
        )


#: ``fingerprint train``'s flag for each field of its training config (as pydantic names it).
_TRAIN_FLAGS = {
    "encoder.latent_dim": "--latent-dim",
    "encoder.image_size": "--size",
    "encoder.stem": "--stem",
    "max_images_per_dataset": "--max-images",
    "num_workers": "--workers",
}


def _resources(cpus: int | None, gpus: int | None) -> dict[str, Any] | None:
    # "is not None": --gpus 0 asks for no GPU (not the profile's), --cpus 0 is refused
    res = {"cpus_per_task": cpus, "gpus_per_node": gpus}
    res = {k: v for k, v in res.items() if v is not None}
    return res or None


TrainCpusOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="CPUs for the job.", show_default="the cluster profile's cpus_per_task"
    ),
]
TrainGpusOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="GPUs for the job (0: none; local profile: refused if this machine lacks them).",
        show_default="the cluster profile's gpus_per_node",
    ),
]


@fingerprint_app.command("train")
def train(
    datasets: Annotated[list[str], typer.Argument(help="Dataset versions: name or name@version.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the new encoder.")],
    latent_dim: Annotated[int, typer.Option("--latent-dim", "-d", help="Latent size d.")] = 16,
    size: Annotated[int, typer.Option(help="Input size in px: 28 or 64.")] = 28,
    stem: Annotated[str, typer.Option(help="ResNet stem: imagenet (paper) or small.")] = "imagenet",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per process per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    split: Annotated[
        str, typer.Option(help="Rows to train on: train, val, test or all.")
    ] = "train",
    max_images: Annotated[
        int | None, typer.Option(help="At most this many images per dataset.")
    ] = None,
    processes: Annotated[int, typer.Option(help="Data-parallel ranks (gloo on CPU).")] = 1,
    workers: Annotated[int, typer.Option(help="DataLoader workers per rank.")] = 1,
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    zero_stage: Annotated[int, typer.Option(help="DeepSpeed ZeRO stage 0-2.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    objective: Annotated[
        str | None,
        typer.Option(
            help="Loss: mse (the paper's autoencoder), style (MSE + Gram-matrix texture loss) "
            "or contrastive (acquisition-invariant views + dataset membership).",
            show_default="contrastive",
        ),
    ] = None,
    holdout: Annotated[
        float, typer.Option(help="Fraction of each dataset held out for early stopping (0: off).")
    ] = 0.1,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better held-out loss.")
    ] = 3,
    lr_schedule: Annotated[str, typer.Option(help="cosine or constant.")] = "cosine",
    cpus: TrainCpusOpt = None,
    gpus: TrainGpusOpt = None,
) -> None:
    """Train the ResNet-18 encoder on DATASETS as a cluster job and register it.

    Writes loss_curves.json and loss_curves.png (train and held-out loss per epoch) beside
    the checkpoint; the weights kept are those of the best held-out epoch. The job's own log
    is <home>/jobs/<scheduler id>_0_log.out and .err (`pomlia jobs show ID` names them)."""
    from pomlia_hpc.fingerprint.objectives import DEFAULT_OBJECTIVE
    from pomlia_hpc.fingerprint.train import TrainConfig, train_encoder
    from pomlia_hpc.fingerprint.validation import CURVES_PNG, read_curves

    try:
        config = TrainConfig.model_validate(
            {
                "encoder": {"latent_dim": latent_dim, "image_size": size, "stem": stem},
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "split": split,
                "max_images_per_dataset": max_images,
                "processes": processes,
                "num_workers": workers,
                "precision": precision,
                "zero_stage": zero_stage,
                "seed": seed,
                "objective": objective or DEFAULT_OBJECTIVE,
                "holdout": holdout,
                "patience": patience,
                "lr_schedule": lr_schedule,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        flag = _TRAIN_FLAGS.get(field, "--" + field.replace("_", "-"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InputError(f"option '{flag}': {msg} (got {err.get('input')!r})") from exc
    ws = STATE.workspace
    reg = STATE.prepared()
    with ExitStack() as stack:
        bar = _LazyProgress(stack, f"training '{name}'", epochs, unit="epochs")
        enc = train_encoder(
            reg, ws, name, datasets, config, resources=_resources(cpus, gpus), progress=bar
        )
    curves = read_curves(Path(enc.checkpoint_path).parent) or {}
    val = list(curves.get("val") or [])
    table = Table(title=f"encoder {enc.name} (id {enc.id}, objective {config.objective})")
    table.add_column("epoch", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("held-out loss", justify="right")
    for i, loss in enumerate(enc.loss_curve, 1):
        mark = " (kept)" if curves.get("best_epoch") == i else ""
        held = f"{val[i - 1]:.6f}{mark}" if i <= len(val) else "—"
        table.add_row(str(i), f"{loss:.6f}", held)
    console.print(table)
    if curves.get("stopped_early"):
        console.print(f"stopped early after epoch {len(enc.loss_curve)}")
    console.print(f"checkpoint {enc.checkpoint_path}")
    png = Path(enc.checkpoint_path).parent / CURVES_PNG
    if png.is_file():  # the figure of the table above; say where it is, not only the weights
        console.print(f"loss curves {png}", markup=False, highlight=False, soft_wrap=True)


@fingerprint_app.command("extract")
def extract(
    datasets: Annotated[list[str], typer.Argument(help="Dataset versions: name or name@version.")],
    encoder: EncoderOpt = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Shards per dataset (array tasks).",
            show_default="as many as --shard-rows gives",
        ),
    ] = None,
    shard_rows: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Or: about this many images per shard (small datasets are packed into one).",
            show_default="200,000",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    patch_grid: Annotated[
        int,
        typer.Option(
            help="Also embed g x g tiles of each image (patch fingerprints; tiles of at "
            "least 4 px)."
        ),
    ] = 1,
    force: Annotated[bool, typer.Option(help="Recompute even complete embeddings.")] = False,
    cpus: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPUs per shard.", show_default="the cluster profile's cpus_per_task"
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            min=0,
            help=(
                "GPUs per shard (0: none; local profile: refused if this machine lacks them "
                "and a shard will run)."
            ),
            show_default="the cluster profile's gpus_per_node",
        ),
    ] = None,
) -> None:
    """Embed DATASETS with an encoder as an array job (complete shards are skipped).

    Each shard's log is <home>/jobs/<array id>_<task>_0_log.out and .err (`pomlia jobs show
    ID` of one of its tasks names them and the pattern).

    A dataset given twice is embedded once. A shard holds whole chunks of the dataset's store,
    so a small dataset gets fewer shards than --shards asks for (the table says why). Shard
    jobs of an earlier, killed run that still write into the same embeddings are waited for,
    not submitted again."""
    from pomlia_hpc.fingerprint.extract import extract as run_extract

    ws = STATE.workspace
    reg = STATE.prepared()
    with ExitStack() as stack:
        bar = _LazyProgress(stack, "extracting", unit="array tasks")
        results = run_extract(
            reg,
            ws,
            encoder_name(encoder),
            datasets,
            shards=shards,
            shard_rows=shard_rows,
            batch_size=batch_size,
            patch_grid=patch_grid,
            force=force,
            resources=_resources(cpus, gpus),
            progress=bar,
            say=lambda line: err_console.print(f"warning: {line}", markup=False, highlight=False),
        )
    table = Table(title="embeddings")
    for col in ("dataset", "vectors", "shards", "run now", "status"):
        table.add_column(col)
    for r in results:
        table.add_row(r.ref, str(r.n_vectors), str(r.shards), str(r.shards_run), r.status)
    console.print(table)
    for r in results:
        if r.note:
            console.print(f"{r.ref}: {r.note}", markup=False, highlight=False)


@fingerprint_app.command("show")
def show(
    dataset: Annotated[str, typer.Argument(help="Dataset: name or name@version.")],
    encoder: EncoderOpt = None,
) -> None:
    """Print a dataset's fingerprint as JSON: mean embedding and the explicit fingerprint.

    Embeddings whose extraction finished unrecorded are read as found, and a note on stderr
    names the command that records them; nothing is written."""
    from pomlia_hpc.fingerprint.similar import dataset_fingerprint

    unrec: list[Any] = []
    fp = dataset_fingerprint(STATE.registry(), encoder_name(encoder), dataset, unrecorded_out=unrec)
    print_json(fp)
    set_notes([], unrec, stderr=True)


@index_app.command("build")
def build(
    encoder: EncoderOpt = None,
    factory: Annotated[
        str | None, typer.Option(help="faiss index_factory string.", show_default="Flat up to 1M")
    ] = None,
    metric: Annotated[str, typer.Option(help="l2 or ip (cosine).")] = "l2",
    nprobe: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Lists an IVF search visits (unused by exact indexes); given for an index "
            "that is up to date, it is recorded alone.",
            show_default="the index's, 16 when it was built without",
        ),
    ] = None,
    patches: Annotated[bool, typer.Option(help="Index the patch embeddings instead.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Rebuild from scratch.")] = False,
) -> None:
    """Build (or extend with newly extracted datasets) the FAISS index of an encoder.

    An index whose files cannot be read (deleted, truncated) is rebuilt from the embeddings,
    and a note says so."""
    from pomlia_hpc.fingerprint.index import build_index

    if metric not in ("l2", "ip"):
        raise InputError(f"option '--metric': expected 'l2' or 'ip', got '{metric}'")
    # Vectors arrive in blocks of a few thousand: one plain line per 10 s is plenty.
    with ExitStack() as stack:
        bar = _LazyProgress(stack, "adding vectors", unit="vectors", min_interval_s=10)
        res = build_index(
            STATE.registry(),
            STATE.workspace,
            encoder_name(encoder),
            factory=factory,
            metric="ip" if metric == "ip" else "l2",
            kind="patches" if patches else "images",
            nprobe=nprobe,
            rebuild=rebuild,
            progress=bar,
        )
    built = "built" if res.first else "rebuilt"
    kept = f"nprobe set to {nprobe}" if res.nprobe_set else "up to date"
    what = built if res.rebuilt else ("extended" if res.added_sets else kept)
    console.print(
        f"index {what}: {res.factory}, {res.ntotal} vectors, generation {res.generation} "
        f"({res.path})"
    )
    for ref in res.added_sets:
        console.print(f"  added {ref}")
    note(f"{res.damaged}: rebuilt from the embeddings" if res.damaged else "")
    set_notes(res.left_out, res.unrecorded)


@fingerprint_app.command("refresh")
def refresh_cmd(
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Encoder to refresh.",
            show_default=ENCODER_DEFAULT,
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs.", show_default="the encoder's")
    ] = None,
    shards: Annotated[int, typer.Option(help="Extraction shards per dataset.")] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be done.")
    ] = False,
) -> None:
    """Retrain the encoder on the current version of every dataset when it was not trained on
    one of them (a version added since, or a dataset left out of its training), embed them all,
    build its index, then make it the current encoder (only when complete).

    The new encoder (<root>-r<k>) is recorded as a refresh of the one refreshed; an encoder
    merely named like that by hand is no refresh."""
    from pomlia_hpc.fingerprint.refresh import plan_refresh, refresh

    # A refresh trains, extracts and indexes for minutes to hours: each step reports as its
    # own command does (time-stamped lines off a terminal, a bar on one).
    if dry_run:
        plan = plan_refresh(STATE.registry(), STATE.workspace, encoder)
        what = f"would train {plan.name}" if plan.needed else "nothing to do"
        # "Not trained on", not "new": a data set registered before the encoder was trained
        # but left out of its training counts too (it was embedded, never trained on).
        untrained = plan.new or "none"
        console.print(f"{plan.base}: versions it was not trained on {untrained}; {what}")
        return
    refresh(
        STATE.registry(),
        STATE.workspace,
        encoder,
        epochs=epochs,
        shards=shards,
        say=log_line,
        report=_step_progress,
    )
