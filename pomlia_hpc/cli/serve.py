"""``pomlia model register/export/list/demo``, ``pomlia serve`` and ``pomlia deploy``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from typer.core import TyperGroup

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.cli.pathopts import path_argument, path_option
from pomlia_hpc.cli.reference import warn_few_images
from pomlia_hpc.cli.runs import UNDEFINED, fmt
from pomlia_hpc.cli.tables import MISSING, ListTable, shown, stack, when
from pomlia_hpc.cli.usage_errors import registry_id
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.models.archs import ARCHITECTURES
from pomlia_hpc.registry.lookup import check_limit

if TYPE_CHECKING:
    from pomlia_hpc.serve.config import ServeConfig
    from pomlia_hpc.serve.exported import ExportedBundle

model_app = typer.Typer(help="Register, export and list trained classifiers.", no_args_is_help=True)
app.add_typer(model_app, name="model")

ModelArg = Annotated[str, typer.Argument(help="Registry model name or id.")]


@model_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Name for the model (unique).")],
    checkpoint: Annotated[Path, path_argument(help="Classifier checkpoint (save_classifier).")],
    task_id: Annotated[
        int | None, typer.Option(help="Registry id of its task.", callback=registry_id)
    ] = None,
    run_id: Annotated[
        int | None,
        typer.Option(help="Registry id of the run that trained it.", callback=registry_id),
    ] = None,
) -> None:
    """Register a classifier checkpoint as a model. The checkpoint is copied into the
    workspace (models/NAME.pt): the model does not depend on the file it came from.

    Refused, nothing written: a file that does not load as a classifier (its architecture
    unknown, its weights not that architecture's), a different file already at models/NAME.pt
    (another registry's model), a --run-id of another task than --task-id, a checkpoint whose
    class count is not its task's."""
    from pomlia_hpc.models.catalog import promote_checkpoint
    from pomlia_hpc.models.checkpoint import load_classifier

    # A file that is not a classifier checkpoint, of an unknown architecture or with weights
    # that do not fit it: refused, nothing copied (each failed only at export or a warm start).
    load_classifier(checkpoint)
    row = promote_checkpoint(
        STATE.registry(), STATE.workspace, name, checkpoint, task_id=task_id, run_id=run_id
    )
    console.print(f"model [bold]{row.name}[/] registered (id {row.id}): copied to {row.path}")


@model_app.command("export")
def export(
    model: ModelArg,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Fingerprint encoder to ship: a file (ONNX .onnx or torch.export .pt2: float32 "
            "NCHW in [0,1] → vector) or a registry encoder name/id.",
            show_default="the task's encoder, if any",
        ),
    ] = None,
    rtol: Annotated[
        float,
        typer.Option(
            help="Allowed relative difference of each exported probability from PyTorch's, on "
            "inputs as the server preprocesses them; the predicted class must match too (a finite "
            "number >= 0)."
        ),
    ] = 1e-3,
    atol: Annotated[
        float,
        typer.Option(
            help="Absolute allowance added for probabilities near 0 (a finite number >= 0)."
        ),
    ] = 1e-5,
) -> None:
    """Export MODEL to ONNX + a torch.export program + model card (checked against PyTorch)."""
    from pomlia_hpc.serve.export import export_model

    with console.status(f"exporting {model} (ONNX, torch.export, parity check)"):
        res = export_model(
            STATE.registry(), STATE.workspace, model, encoder=encoder, rtol=rtol, atol=atol
        )
    if res.rebuilt is not None:
        console.print(f"rebuilt the existing bundle of this version: {res.rebuilt}")
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in res.max_abs_diff.items()) or "not recorded"
    again = "; exported before, as recorded then" if res.reused else ""
    console.print(
        f"bundle [bold]{res.bundle.root}[/] version {res.bundle.version} "
        f"(max |probability diff| vs PyTorch: {diffs}{again})"
    )
    if res.reference is not None:
        console.print(f"monitoring reference: {res.reference}")
        warn_few_images(res.reference, model)
    else:
        console.print(
            "no monitoring reference (no training dataset recorded for the model); create one "
            f"with: pomlia monitor reference {shlex.quote(model)} --data DATASET[@VERSION]"
        )


@model_app.command("list")
def list_models(
    task: Annotated[
        str | None, typer.Option("--task", help="Only models of this task (name or id).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List registered models: task, lineage (dataset, run, study), test metric, export state.

    A console too narrow for the full table (80 columns) gets 4 columns, related values
    stacked in each (the creation time as MM-DD HH:MM).

    --json keys: id, name, task, dataset, run_id, study, arch, metric, test_score, test_n
    (the test images it was computed on), exported (the bundle version), code_version,
    created_at."""
    from pomlia_hpc.registry import Model, Task
    from pomlia_hpc.registry.lookup import by_name_or_id

    check_limit(limit)
    with STATE.registry().session() as s:
        q = select(Model, Task.name, Task.metric).join(Task, Model.task_id == Task.id, isouter=True)
        if task is not None:
            # A task that does not exist is an error, as for `runs list --task`: an empty
            # table read as "no models yet".
            q = q.where(Model.task_id == by_name_or_id(s, Task, task, "task").id)
        rows = s.execute(q.order_by(Model.id.desc()).limit(limit)).all()
    if as_json:
        print_rows([_model_row(m, task_name, task_metric) for m, task_name, task_metric in rows])
        return
    title = f"models ({len(rows)})"
    table = ListTable(title=title)
    for col in (
        "id",
        "name",
        "task",
        "dataset",
        "run",
        "study",
        "arch",
        "metric",
        "exported",
        "code",
        "created",
    ):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "run", "created"))
    # The narrow form (an 80-column terminal): 4 columns, related values stacked.
    narrow = table.narrow = Table(title=title)
    narrow.add_column("id", no_wrap=True)
    for col in ("name\ntask\ncreated", "dataset\nstudy\nrun", "arch\nmetric\nexported\ncode"):
        narrow.add_column(col, overflow="fold")
    for m, task_name, task_metric in rows:
        lin, card = m.lineage or {}, m.card or {}
        code = lin.get("code_version") or {}
        cells = (
            str(m.id),
            m.name,
            shown(task_name),  # no task: not its task type, which read as a task name
            shown(lin.get("dataset")),
            shown(m.run_id),
            shown(lin.get("study")),
            shown(card.get("architecture")),
            _score_cell(lin, card, task_metric),
            shown((card.get("export") or {}).get("version")),
            shown(code.get("commit", code.get("version"))),
        )
        table.add_row(*cells, when(m.created_at))
        ident, name, task_cell, dataset, run, study, arch, test, exported, commit = cells
        narrow.add_row(
            ident,
            stack(name, task_cell, when(m.created_at, narrow=True)),
            # NAME @VERSION: two words, so that the version is never cut
            stack(dataset.replace("@", " @"), study, f"run {run}" if m.run_id else MISSING),
            stack(arch, test, exported, commit),
        )
    console.print(table)


def _test_score(
    lineage: dict[str, Any], card: dict[str, Any], task_metric: str | None
) -> tuple[str | None, Any]:
    """The metric a model is judged by and its test value (from its card): the metric its
    study optimised, else its task's (a model registered by hand with ``--task-id`` has no
    study in its lineage, but its card holds the test metrics all the same)."""
    metric = lineage.get("metric") or task_metric
    score = ((card.get("metrics") or {}).get("test") or {}).get(metric) if metric else None
    return metric, score


def _score_cell(lineage: dict[str, Any], card: dict[str, Any], task_metric: str | None) -> str:
    """``test auc 0.912 (n=412)``: the model's test metric with the images it was computed on
    (an AUC of 1.000 from 2 images read like one from 400), as `runs list` shows a run's;
    ``test auc n/a`` where the card records it undefined (AUC on a split of one class)."""
    metric, score = _test_score(lineage, card, task_metric)
    test = (card.get("metrics") or {}).get("test") or {}
    if metric is None or metric not in test:
        return MISSING
    text = f"test {metric} " + ((fmt(score) if isinstance(score, int | float) else "") or UNDEFINED)
    n = test.get("n")
    return text + (f" (n={n})" if isinstance(n, int) and not isinstance(n, bool) else "")


def _model_row(m: Any, task_name: str | None, task_metric: str | None) -> dict[str, Any]:
    """One model of ``model list --json`` (the keys its --help lists)."""
    lin, card = m.lineage or {}, m.card or {}
    metric, score = _test_score(lin, card, task_metric)
    return {
        "id": m.id,
        "name": m.name,
        "task": task_name,
        "dataset": lin.get("dataset"),
        "run_id": m.run_id,
        "study": lin.get("study"),
        "arch": card.get("architecture"),
        "metric": metric,
        "test_score": score if isinstance(score, int | float) else None,
        "test_n": ((card.get("metrics") or {}).get("test") or {}).get("n"),
        "exported": (card.get("export") or {}).get("version"),
        "code_version": lin.get("code_version"),
        "created_at": m.created_at,
    }


@model_app.command("demo")
def demo(
    name: Annotated[str, typer.Argument(help="Name for the demo model.")] = "demo",
    arch: Annotated[
        str, typer.Option(help=f"Architecture: {', '.join(ARCHITECTURES)}.")
    ] = "small_cnn",
    image_size: Annotated[int, typer.Option(help="Input size in px.")] = 28,
    channels: Annotated[int, typer.Option(help="Input channels.")] = 3,
    classes: Annotated[int, typer.Option(help="Number of labels.")] = 9,
    task_type: Annotated[
        str, typer.Option(help="multi-class, binary, multi-label, ordinal.")
    ] = "multi-class",
) -> None:
    """Register and export an untrained demo classifier (to try `pomlia serve`)."""
    from pomlia_hpc.serve.demo import register_demo_model

    ws = STATE.workspace
    reg = STATE.prepared()
    with console.status(f"creating and exporting demo model {name}"):
        res = register_demo_model(
            reg,
            ws,
            name,
            arch=arch,
            image_size=image_size,
            channels=channels,
            num_classes=classes,
            task_type=task_type,
        )
    console.print(
        f"demo model [bold]{name}[/] exported to {res.bundle.root}; "
        f"serve it with: pomlia serve {shlex.quote(name)}"
    )


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(help="Registry model name/id, or the path of an exported bundle directory."),
    ],
    # None for the settings below: a --config file's value then stands (serve/config.py);
    # show_default says the built-in one.
    host: Annotated[str | None, typer.Option(help="Interface.", show_default="127.0.0.1")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (0: a free one).", show_default="8000")
    ] = None,
    config: Annotated[Path | None, path_option(help="Serve settings YAML (see docs).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="auto (torch on GPU, else onnxruntime), onnx or torch.", show_default="auto"
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Inference threads.", show_default="cores")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Images per model call.", show_default="32")
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(help="Longest wait for a batch to fill, ms.", show_default="5"),
    ] = None,
    no_batching: Annotated[
        bool,
        typer.Option("--no-batching", help="One request per model call (max batch 1, no wait)."),
    ] = False,
    max_upload_mb: Annotated[
        float | None, typer.Option(help="Upload limit, MiB.", show_default="16")
    ] = None,
    token_file: Annotated[
        Path | None,
        path_option(
            help="File with the bearer token for /v1/feedback (else env POMLIA_SERVE_TOKEN); "
            "must not be readable by group or others (chmod 600)."
        ),
    ] = None,
    log_dir: Annotated[
        Path | None,
        path_option(
            help="Prediction log directory.", show_default="<home>/logs/predictions/<model>"
        ),
    ] = None,
    address_file: Annotated[
        Path | None, path_option(help="Write http://HOST:PORT here once ready.")
    ] = None,
    deployment_id: Annotated[
        int | None,
        typer.Option(
            help="Deployment id for the log (`pomlia deploy` prints it; with a model name or "
            "slot it must be one the registry records, of that model).",
            callback=registry_id,
        ),
    ] = None,
    keep_inputs: Annotated[
        bool | None,
        typer.Option(
            "--keep-inputs/--no-keep-inputs",
            help="Store every decoded input durably next to the log, keyed by prediction id "
            "(for `pomlia data harvest`).",
            show_default="no-keep-inputs",
        ),
    ] = None,
    inputs_quota_mb: Annotated[
        float | None, typer.Option(help="Kept inputs: byte quota, MiB.", show_default="1024")
    ] = None,
    inputs_retention_days: Annotated[
        float | None,
        typer.Option(help="Kept inputs: retention period, days.", show_default="30"),
    ] = None,
    log_retention_days: Annotated[
        float | None,
        typer.Option(
            help="Delete prediction log files last written longer ago than this, days (at "
            "rotation; never those the feedback window needs; each deletion logged).",
            show_default="none: keep all",
        ),
    ] = None,
) -> None:
    """Serve MODEL over REST until SIGTERM/Ctrl-C (FastAPI + uvicorn, dynamic batching).

    MODEL may be a deployment slot (`pomlia deploy promote`) or its `current` link: the server
    then follows the link and swaps to a new bundle without dropping a request."""
    from pomlia_hpc.serve.config import load_serve_config
    from pomlia_hpc.serve.predlog import log_dir as default_log_dir
    from pomlia_hpc.serve.server import run_server

    overrides = {
        "host": host,
        "port": port,
        "backend": backend,
        "threads": threads,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_upload_mb": max_upload_mb,
        "token_file": token_file,
        "log_dir": log_dir,
        "address_file": address_file,
        "deployment_id": deployment_id,
        "keep_inputs": keep_inputs,
        "inputs_quota_mb": inputs_quota_mb,
        "inputs_retention_days": inputs_retention_days,
        "log_retention_days": log_retention_days,
    }
    if no_batching:
        overrides.update(max_batch=1, max_wait_ms=0.0)
    cfg = load_serve_config(config, overrides)
    bundle, follow, log_name, cfg = _serve_target(model, cfg)
    bundle.check_integrity()  # a damaged file is refused now, not served wrongly
    default = default_log_dir(STATE.workspace.path("logs"), log_name or bundle.name)
    logs = cfg.log_dir or default
    # Only a log the monitor reads (the workspace's, monitor.run.model_log_dirs): retention in
    # a --log-dir elsewhere (a staging server, a scratch folder) takes nothing from a chain.
    monitored = logs.resolve().parent == default.parent.resolve()
    if cfg.log_retention_days is not None and monitored:
        from pomlia_hpc.monitor.keep import check_retention

        days = cfg.log_retention_days
        for warning in check_retention(STATE.workspace, bundle.name, log_name, days):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if follow is not None:
        console.print(f"following {follow}: a new bundle there is swapped in without downtime")
    try:
        run_server(bundle, cfg, logs, follow=follow)
    except KeyboardInterrupt:
        # uvicorn re-raises SIGINT once drained, and the server has said "stopped (SIGINT)":
        # exit here, or the generic Ctrl-C line would speak of jobs, which a server never
        # starts. 130 as for any Ctrl-C.
        raise typer.Exit(130) from None


def _serve_target(
    model: str, cfg: ServeConfig
) -> tuple[ExportedBundle, Path | None, str | None, ServeConfig]:
    """What `pomlia serve MODEL` serves: (bundle, the link to follow or None, the log's name
    when it is not the bundle's, the settings). A ``--deployment-id`` is checked against the
    registry where MODEL is found through the workspace (a slot, a model name); a bundle
    directory is also served where no registry is (in the Apptainer image, started by
    `serve.sbatch` with the id `pomlia deploy` recorded), so there the id is taken as given."""
    from pomlia_hpc.serve.deploy import check_deployment
    from pomlia_hpc.serve.exported import CARD, ExportedBundle

    path = Path(model)
    slot_link = None if "/" in model else _slot_link(model)
    if path.is_symlink() and (path / CARD).is_file():
        return ExportedBundle.open(path), path.absolute(), None, cfg
    if slot_link is not None:
        if cfg.deployment_id is not None:
            created = check_deployment(STATE.registry(), cfg.deployment_id)
            cfg = cfg.model_copy(update={"deployment_created": created})
        if cfg.address_file is None:
            cfg = cfg.model_copy(update={"address_file": slot_link.parent / "address"})
        return ExportedBundle.open(slot_link), slot_link, model, cfg
    if (path / CARD).is_file():
        return ExportedBundle.open(path), None, None, cfg
    if path.exists():
        raise InputError(
            f"{path}: not an exported bundle (no {CARD}); expected a bundle "
            "directory or a registry model name"
        )
    if "/" in model:  # model names hold no '/': a path, which is not there
        raise NotFoundError(
            f"{model} does not exist; expected an exported bundle directory or a registry "
            "model name"
        )
    bundle, cfg = _model_bundle(model, cfg)
    return bundle, None, None, cfg


def _model_bundle(model: str, cfg: ServeConfig) -> tuple[ExportedBundle, ServeConfig]:
    """The bundle of registry model ``model``, exported first if it has none, and the settings
    with its deployment's creation time; its ``--deployment-id`` must be one of its
    deployments (checked before exporting)."""
    from pomlia_hpc.serve.deploy import check_deployment
    from pomlia_hpc.serve.exported import bundle_for_model

    reg = STATE.registry()
    if cfg.deployment_id is not None:
        created = check_deployment(reg, cfg.deployment_id, model)
        cfg = cfg.model_copy(update={"deployment_created": created})
    found = bundle_for_model(reg, model)
    if found is None:
        # Imported only here: exporting loads torch, which a CPU server need not hold.
        from pomlia_hpc.serve.export import export_model

        console.print(f"model {model} has no export yet: exporting it first")
        exported = export_model(reg, STATE.workspace, model)
        warn_few_images(exported.reference, model)
        found = exported.bundle
    return found, cfg


def _slot_link(name: str) -> Path | None:
    """The ``current`` link of deployment slot ``name``, if that slot exists."""
    from pomlia_hpc.serve.slots import current_link

    try:
        link = current_link(STATE.workspace, name)
    except InputError:
        return None
    return link if link.is_symlink() else None


class _DeployGroup(TyperGroup):
    """``pomlia deploy MODEL ...`` keeps working beside ``pomlia deploy promote ...``: a first
    argument that is not a subcommand runs ``deploy write``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line shows the main use, ``deploy MODEL [--profile ...]``, beside the
        subcommands (it showed only ``deploy [OPTIONS] COMMAND [ARGS]...``)."""
        return ["MODEL [--profile PROFILE] [--out DIR] [--submit]", "|", "COMMAND [ARGS]..."]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands and "--help" not in args[:1]:
            args = ["write", *args]
        return super().parse_args(ctx, args)


deploy_app = typer.Typer(
    cls=_DeployGroup,
    help=(
        "Deploy a model: `pomlia deploy MODEL` writes its Slurm/Apptainer directory (the "
        "`write` command: `pomlia deploy write --help` for its options); `promote`, `rollback` "
        "and `history` manage a deployment slot (hot swap, gate)."
    ),
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("write")
def deploy(
    model: ModelArg,
    out: Annotated[
        Path | None,
        path_option(
            help="Deployment directory.", show_default="<home>/models/<name>/deploy/<version>"
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="Cluster profile for the #SBATCH lines.", show_default="the workspace's"),
    ] = None,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit", help="sbatch the job now (needs pomlia-serve.sif built in the directory)."
        ),
    ] = False,
) -> None:
    """Write MODEL's bundle, Apptainer definition and sbatch script (and optionally submit).

    Run again for the same model version and profile, it reuses the directory (and its
    deployment id): write, build the image there, then `pomlia deploy MODEL --submit`."""
    from pomlia_hpc.config import load_cluster_profile
    from pomlia_hpc.serve.deploy import IMAGE, submit_deployment, write_deployment
    from pomlia_hpc.serve.exported import bundle_for_model
    from pomlia_hpc.serve.reference import REFERENCE_FILE

    ws = STATE.workspace
    label = profile or ws.cluster_profile
    prof = load_cluster_profile(label)
    res = write_deployment(
        STATE.registry(),
        ws,
        model,
        prof,
        out_dir=out,
        need_image=submit,
        profile_name=profile,
        profile_label=label,
    )
    done = "reused (written before for this version and profile)" if res.reused else "written"
    console.print(f"deployment {res.deployment_id} {done} in [bold]{res.directory}[/]")
    bundle = bundle_for_model(STATE.registry(), model)
    warn_few_images(bundle.root / REFERENCE_FILE if bundle is not None else None, model)
    cd = f"cd {shlex.quote(str(res.directory))}"  # pasted into a shell: one word
    if not (res.directory / IMAGE).is_file():
        console.print(f"  build : {cd} && apptainer build {IMAGE} apptainer.def", highlight=False)
    console.print(
        f"  serve : {cd} && sbatch serve.sbatch   "
        "(the address is printed in the job output and written to ./address)",
        highlight=False,
    )
    if submit:
        res = submit_deployment(STATE.registry(), res)
        console.print(res.submission, highlight=False)
