"""``pomlia data harvest``, ``pomlia deploy promote/rollback``, ``pomlia loop
run/watch/show/dismiss`` and ``pomlia lineage``: production feedback back into development."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from pomlia_hpc.cli.app import STATE, app, console, err_console, log_line, profile_for
from pomlia_hpc.cli.data import data_app
from pomlia_hpc.cli.pathopts import path_option
from pomlia_hpc.cli.serve import deploy_app
from pomlia_hpc.cli.usage_errors import registry_id
from pomlia_hpc.errors import InputError

if TYPE_CHECKING:
    from pomlia_hpc.loop.stages import LoopSettings

loop_app = typer.Typer(
    help="The loop: harvest labelled production data, retrain, gate, hot-swap the server.",
    no_args_is_help=True,
)
app.add_typer(loop_app, name="loop")

SlotArg = Annotated[
    str, typer.Argument(help="Deployment slot (the name `pomlia serve SLOT` follows).")
]
MARGIN_HELP = (
    "Non-inferiority margin on the fixed test split: points of the task's metric as a fraction "
    "in [0, 1) (0.02 = 2 points; for accuracy, label-wise on a multi-label task)."
)
ALPHA_HELP = "Significance level of both gate tests."


def _row_span(span: list[int]) -> str:
    """A recorded row range ``[start, end)`` as a reader counts it: ``171-182 (12 rows)``,
    or ``none``. Printed as the list, ``[171, 183]`` read as 13 rows, the last one too many."""
    start, end = span
    return f"{start}-{end - 1} ({end - start} rows)" if end > start else "none"


def _time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(
            f"{what} '{text}': expected an ISO date or time, e.g. 2026-12-01 or "
            "2026-12-01T08:00:00+00:00"
        ) from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@data_app.command("harvest")
def harvest_cmd(
    model: Annotated[
        str, typer.Argument(help="Deployment slot or model whose labelled inputs to harvest.")
    ],
    since: Annotated[
        str | None,
        typer.Option(
            help="Feedback from this time, ISO 8601 (UTC if no zone).",
            show_default="end of the last harvest",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Feedback before this time, ISO 8601 (UTC if no zone).", show_default="now"
        ),
    ] = None,
    log_dir: Annotated[
        Path | None,
        path_option(help="Prediction log folder.", show_default="the model's/slot's"),
    ] = None,
) -> None:
    """Labelled production images (kept inputs + feedback) → a new version of the model's
    training dataset (parent = that version; new images split by hash, an image whose pixels
    the parent holds put in its copy's split; production test rows kept for the gate). Warns,
    as `data add` does, of val/test images that are copies of training images."""
    from pomlia_hpc.data.leakage import harvest_warning
    from pomlia_hpc.data.store import find_version
    from pomlia_hpc.loop.harvest import harvest

    ws = STATE.workspace
    with console.status(f"harvesting labelled inputs of {model}"):
        out = harvest(
            STATE.registry(),
            ws,
            model,
            since=_time(since, "--since"),
            until=_time(until, "--until"),
            log_dir=log_dir,
        )
    rec = out.record
    info = rec.meta["source"]["harvest"]
    what = "new version" if rec.created else "existing version (same content)"
    console.print(
        f"{what} [bold]{rec.ref}[/] (parent {rec.parent}): {info['n_new']} labelled production "
        f"images added, per split {info['new_per_split']}; production test rows "
        f"{_row_span(info['production_test_rows'])}, fixed test rows "
        f"{_row_span(info['fixed_test_rows'])}",
        highlight=False,
    )
    console.print(f"feedback counts: {out.counts}", highlight=False)
    if out.retention_warning:
        err_console.print(f"[yellow]warning:[/] {escape(out.retention_warning)}", highlight=False)
    if info.get("skipped_in_parent"):
        console.print(
            f"skipped {info['skipped_in_parent']} image(s) already in the parent with the same "
            "label",
            highlight=False,
        )
    if info.get("replaced"):
        ids = ", ".join(info.get("replaced_ids", [])[:10])
        console.print(
            f"replaced {info['replaced']} image(s) of the parent with a corrected label "
            f"(the parent's row left out): {ids}",
            highlight=False,
        )
    if info.get("placed_with_copy"):
        console.print(
            f"put {info['placed_with_copy']} image(s) into the split of their pixel copy (in the "
            "parent, or among the harvested images) rather than their hash's: a copy in another "
            "split would leak between train, val and test",
            highlight=False,
        )
    parent = find_version(STATE.registry(), f"{rec.name}@{rec.parent}")
    warning = harvest_warning(rec.fingerprint, parent.fingerprint or {}, f"{rec.name}@{rec.parent}")
    if warning:  # as `data add` and `task add` warn, with a harvest's own advice
        err_console.print(
            f"[yellow]warning:[/] dataset {rec.ref}: {escape(warning)}", highlight=False
        )
    if info.get("lineage_ids_unknown"):
        console.print(
            "[yellow]warning:[/] the parent was harvested before prediction ids were recorded: "
            "images it already holds could not be recognised and may be added again",
            highlight=False,
        )


@deploy_app.command("promote")
def promote_cmd(
    slot: SlotArg,
    model: Annotated[str, typer.Argument(help="Registry model to put on the slot.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate fails (recorded as forced).")
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(
            help="Harvested dataset version to gate on.", show_default="MODEL's training data"
        ),
    ] = None,
    margin: Annotated[float, typer.Option(help=MARGIN_HELP)] = 0.02,
    alpha: Annotated[float, typer.Option(help=ALPHA_HELP)] = 0.05,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric the gate compares: acc, auc or f1_macro.",
            show_default="the task's (MODEL's, else the champion's; acc when neither has one)",
        ),
    ] = None,
) -> None:
    """Put MODEL on deployment SLOT: the first model goes on directly; later ones must pass
    the champion/challenger gate on the task's metric (or --force). Servers following the
    slot swap to it."""
    from pomlia_hpc.loop.gate import promote_with_gate

    with console.status(f"gating and promoting {model} on {slot}"):
        gate, entry = promote_with_gate(
            STATE.registry(),
            STATE.workspace,
            slot,
            model,
            force=force,
            data_ref=data,
            margin=margin,
            alpha=alpha,
            metric=metric,
        )
    if gate is not None:
        verdict = "[green]passed[/]" if gate.result.passed else "[red]failed[/]"
        console.print(f"gate {gate.id}: {verdict}{' (forced)' if gate.forced else ''}")
        console.print(f"  {escape(gate.result.reason)}", highlight=False)
        if gate.metric_note is not None:
            err_console.print(
                f"[yellow]warning:[/] {escape(gate.metric_note)}", soft_wrap=True, highlight=False
            )
        for gap in gate.lineage_unknown:
            err_console.print(
                f"[yellow]warning:[/] lineage unknown, {escape(str(gap))}: images it trained on "
                "may be among those scored (not left out)",
                soft_wrap=True,
                highlight=False,
            )
    if entry is None:
        console.print(f"{model} was [bold]not[/] promoted; the slot keeps its champion")
        raise typer.Exit(1)
    console.print(f"slot [bold]{slot}[/] now serves {entry.model} ({entry.kind})")
    if gate is None and data is not None:
        console.print(f"the first model on {slot} needs no gate: --data {data} was not read")


@deploy_app.command("rollback")
def rollback_cmd(slot: SlotArg) -> None:
    """Return SLOT to its previous champion (recorded; servers following it swap back).
    Repeated rollbacks walk back the history (C → B → A), not between the last two models;
    to serve a later model again, promote it."""
    from pomlia_hpc.loop.promote import rollback

    entry = rollback(STATE.registry(), STATE.workspace, slot)
    console.print(f"slot [bold]{slot}[/] rolled back to {entry.model}")


# The retrain options of `loop run` and `loop watch`, defined once.
TrialsOpt = Annotated[int, typer.Option(help="AutoML trials at most.")]
MaxEpochsOpt = Annotated[int, typer.Option(help="Largest training budget, epochs.")]
MinEpochsOpt = Annotated[
    int,
    typer.Option(
        help="Smallest budget, epochs (Hyperband's lowest rung; set it to --max-epochs to train "
        "every trial fully)."
    ),
]
ParallelOpt = Annotated[int, typer.Option(help="Trials running at once.")]
ArchsOpt = Annotated[
    str | None, typer.Option(help="Architectures to search.", show_default="the champion's")
]
OptimizerOpt = Annotated[str, typer.Option(help="smac (Hyperband) or random.")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        help="local, slurm (the --cluster profile) or a cluster profile name.",
        show_default="the --cluster profile (POMLIA_CLUSTER; local if none)",
    ),
]
MarginOpt = Annotated[float, typer.Option(help=MARGIN_HELP)]
AlphaOpt = Annotated[float, typer.Option(help=ALPHA_HELP)]
MinLabelsOpt = Annotated[int, typer.Option(help="Fewest labelled production images to go on.")]
FineTuneOpt = Annotated[
    bool,
    typer.Option(
        "--fine-tune/--no-fine-tune",
        help="Offer the champion's weights as a starting point (the first trial fine-tunes it).",
    ),
]
RecentShareOpt = Annotated[
    float,
    typer.Option(
        help="Share of every training epoch drawn from the harvested production images "
        "(0 <= share < 1; 0: plain shuffling of old and new images together).",
    ),
]


def _settings(options: dict[str, Any], **more: Any) -> LoopSettings:
    """The loop's :class:`~pomlia_hpc.loop.stages.LoopSettings` from a command's options (its
    ``locals()``: the settings' fields are taken, the others left) and ``more``."""
    from pomlia_hpc.automl.space import parse_archs
    from pomlia_hpc.loop.stages import LoopSettings, check_settings

    names = {f.name for f in fields(LoopSettings)}
    values = {k: v for k, v in options.items() if k in names} | more
    archs, recent_share = values.pop("archs"), values.pop("recent_share")
    values["executor"] = profile_for(values["executor"])  # `slurm`: the --cluster profile
    if not 0 <= recent_share < 1:
        raise InputError(f"--recent-share {recent_share}: expected 0 <= share < 1")
    cfg = LoopSettings(
        archs=parse_archs(archs) if archs else None,  # an unknown name refused naming --archs
        recent_share=recent_share or None,
        **values,
    )
    check_settings(cfg)  # all of them, before anything runs or is recorded
    return cfg


@loop_app.command("run")
def loop_run(
    slot: SlotArg,
    trials: TrialsOpt = 6,
    max_epochs: MaxEpochsOpt = 6,
    min_epochs: MinEpochsOpt = 1,
    parallel: ParallelOpt = 2,
    archs: ArchsOpt = None,
    optimizer: OptimizerOpt = "smac",
    executor: ExecutorOpt = None,
    margin: MarginOpt = 0.02,
    alpha: AlphaOpt = 0.05,
    force: Annotated[
        bool, typer.Option("--force", help="Redeploy even if the gate fails (recorded).")
    ] = False,
    min_labels: MinLabelsOpt = 20,
    fine_tune: FineTuneOpt = True,
    recent_share: RecentShareOpt = 0.5,
    since: Annotated[
        str | None,
        typer.Option(
            help="Harvest feedback from this time, ISO 8601 (UTC if no zone).",
            show_default="the last harvest",
        ),
    ] = None,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new run even if one is unfinished.")
    ] = False,
    no_recommend: Annotated[
        bool, typer.Option("--no-recommend", help="Plain AutoML, no recommender warm start.")
    ] = False,
) -> None:
    """One pass of the loop for SLOT: harvest → ingest → fingerprints → recommend → AutoML →
    challenger → gate → export → redeploy. Rerun after a crash: finished stages are skipped.

    Exit status: 0 done or stopped by the gate; 1 the loop run failed (the reason is printed);
    2 bad options or input; 3 the slot's unfinished run is held by another live driver (a
    watcher); 4 no model was ever put on SLOT (a typo, or a new slot); 130 (Ctrl-C) or 143
    (SIGTERM): stopped, the run recorded interrupted and the local jobs it started stopped;
    the same command resumes it."""
    cfg = _settings(locals(), recommend=not no_recommend)
    from pomlia_hpc.loop.api import run_loop

    with _stoppable():
        res = run_loop(
            STATE.prepared(),
            STATE.workspace,
            slot,
            cfg,
            since=_time(since, "--since"),
            new=new,
            progress=log_line,
        )
    _render_result(res)


def _render_result(res: object) -> None:
    from pomlia_hpc.loop.driver import LoopResult

    assert isinstance(res, LoopResult)
    style = {"done": "green", "stopped": "yellow", "failed": "red"}[res.status]
    console.print(f"loop run {res.run_id}: [{style}]{res.status}[/] {escape(res.message)}")
    if res.status == "failed":
        raise typer.Exit(1)


@loop_app.command("watch")
def loop_watch(
    interval: Annotated[
        float, typer.Option(help="Seconds between looks at the registry (> 0; unused with --once).")
    ] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="Look once and exit.")] = False,
    trials: TrialsOpt = 6,
    max_epochs: MaxEpochsOpt = 6,
    min_epochs: MinEpochsOpt = 1,
    parallel: ParallelOpt = 2,
    archs: ArchsOpt = None,
    optimizer: OptimizerOpt = "smac",
    executor: ExecutorOpt = None,
    margin: MarginOpt = 0.02,
    alpha: AlphaOpt = 0.05,
    min_labels: MinLabelsOpt = 20,
    fine_tune: FineTuneOpt = True,
    recent_share: RecentShareOpt = 0.5,
) -> None:
    """Run the loop for every retrain request the monitor records (its alarm), for the slot
    that serves the model, one loop per slot per pass; a request whose driver was killed is
    resumed, one whose loop run another live watcher holds is skipped (one line names it).

    Exit status: 0 nothing failed (also: nothing to do, or requests held by another
    watcher); 1 a loop run it ran failed (its reason is printed); 2 bad options; 130 (Ctrl-C)
    or 143 (SIGTERM): stopped, the loop run recorded interrupted, its request left taken and
    the local jobs it started stopped; the next watch resumes it."""
    from pomlia_hpc.loop.watch import check_interval, watch

    check_interval(interval, once=once)
    cfg = _settings(locals())

    with _stoppable():
        handled = watch(
            STATE.prepared(),
            STATE.workspace,
            cfg,
            interval_s=interval,
            once=once,
            progress=log_line,
        )
    for h in handled:
        style = "red" if h.failed else "green"
        console.print(
            f"request {h.request_id} → slot {h.slot}: [{style}]{escape(h.message)}[/]",
            highlight=False,
        )
    if not handled:
        console.print("no retrain requests to act on")
    if any(h.failed for h in handled):
        raise typer.Exit(1)


#: Exit status of a loop command stopped by a signal: 128 + the signal's number.
_STOP_EXIT = {"SIGINT": 130, "SIGTERM": 143}


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """Around a loop command: SIGTERM (systemd, ``scancel``, ``kill``) is handled as Ctrl-C
    is; either stops the local jobs the command started (``cluster.terminate``: the jobs'
    controllers are signalled, whoever got the signal) and ends the command with one line
    and 130 (SIGINT) or 143 (SIGTERM). The loop run is recorded interrupted by the driver."""
    from pomlia_hpc.cluster.terminate import (
        JobStopped,
        cancel_children_on_stop,
        cancelled_with_this_process,
        stop_cause,
    )
    from pomlia_hpc.loop.driver import interrupted_runs

    try:
        with cancel_children_on_stop():
            yield
    except (KeyboardInterrupt, JobStopped) as exc:
        cause = stop_cause(exc) or "stopped"
        runs = interrupted_runs()
        where = (
            "; ".join(
                f"loop run {r.run_id} of slot {r.slot} recorded interrupted"
                + (f" at stage {r.stage}" if r.stage else "")
                for r in runs
            )
            if runs
            else "no loop run was under way"
        )
        jobs = cancelled_with_this_process()
        stopped = f"{len(jobs)} job(s) it started were stopped" if jobs else "no job was running"
        again = "; the same command resumes it" if runs else ""
        err_console.print(
            f"[yellow]stopped[/] ({escape(cause)}): {escape(where)}; {stopped}{again}",
            highlight=False,
            soft_wrap=True,
        )
        signal_name = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        raise typer.Exit(_STOP_EXIT[signal_name]) from None


@loop_app.command("dismiss")
def loop_dismiss(
    request_id: Annotated[
        int,
        typer.Argument(
            help="Retrain request id (`pomlia loop show SLOT` lists them).", callback=registry_id
        ),
    ],
    reason: Annotated[
        str, typer.Option(help="Why it is dismissed (recorded, shown by `loop show`).")
    ] = "by hand",
) -> None:
    """Close a retrain request that should not start a retrain (an open or failed one; a
    request whose loop run a live watcher drives is refused: stop that watcher first). An
    interrupted loop run of the request is recorded stopped, so nothing resumes it."""
    from pomlia_hpc.loop.requests import dismiss

    was = dismiss(STATE.registry(), STATE.workspace, request_id, reason)
    console.print(f"retrain request {request_id} dismissed (was {was}): {reason}", highlight=False)


@loop_app.command("show")
def loop_show(slot: SlotArg) -> None:
    """The slot's loop runs and what each stage produced, then the retrain requests of the
    models it served (open, taken, done, failed, merged, obsolete or dismissed, and why)."""
    from sqlalchemy import select

    from pomlia_hpc.loop.claim import gone_driver
    from pomlia_hpc.loop.promote import slots
    from pomlia_hpc.loop.requests import requests_of_slot
    from pomlia_hpc.registry import LoopRun
    from pomlia_hpc.registry.lookup import not_found

    reg = STATE.registry()
    with reg.session() as s:
        runs = s.scalars(select(LoopRun).where(LoopRun.slot == slot).order_by(LoopRun.id)).all()
    if not runs:
        if slot not in (known := slots(reg)):  # a typo is an error, not "no loop runs"
            raise not_found("slot", slot, known)
        console.print(f"slot {slot} has no loop runs")
    for r in runs:
        console.print(
            f"[bold]loop run {r.id}[/] {r.status} (trigger {r.trigger}, started "
            f"{r.created_at:%Y-%m-%d %H:%M:%S}){' stage ' + r.stage if r.stage else ''}"
        )
        for name, out in r.stages.items():
            if name != "params":
                for line in stage_lines(name, out):
                    console.print(line, highlight=False, markup=False)
        if r.error:
            console.print(f"  [red]{escape(r.error.splitlines()[0])}[/]", highlight=False)
        gone = gone_driver(STATE.workspace, slot, r.id) if r.status == "running" else None
        if gone:  # killed (SIGKILL, a lost node) before it could record how it ended
            console.print(
                f"  [yellow]stale: {escape(gone)}; `pomlia loop watch --once` resumes it[/]",
                highlight=False,
            )
    reqs = requests_of_slot(reg, slot)
    if reqs:
        console.print("[bold]retrain requests[/]")
    for q in reqs:
        console.print(f"  request {q.id} {q.status}: {q.text}", highlight=False, markup=False)


def _plain(value: Any) -> str:
    """A recorded value as a user reads it: ``-`` for unset, yes/no, JSON for lists and maps."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def stage_lines(name: str, output: Any) -> list[str]:
    """The lines ``loop show`` prints for one stage's recorded output (a JSON map): its
    ``key value`` pairs after the stage's name, ``-`` for an unset value; a value of several
    lines (a reason with its hint) continues on lines of its own, indented, not as ``\\n``."""
    items = output.items() if isinstance(output, dict) else [("", output)]
    head, rest = [], []
    for key, value in items:
        first, *more = _plain(value).splitlines() or [""]
        head.append(f"{key} {first}".strip())
        rest += [f"      {line.strip()}" for line in more]
    return [f"  {name}: {'; '.join(head)}", *rest]


@app.command("lineage")
def lineage_cmd(
    model: Annotated[str, typer.Argument(help="Registry model name or id.")],
) -> None:
    """How MODEL came to be: promotions, gate, loop run (retrain request, monitor report),
    study, harvested dataset version, and the champion it replaced, back to the start."""
    from pomlia_hpc.loop.lineage import lineage

    for step in lineage(STATE.registry(), model):
        indent = "" if step.kind in ("model", "replaced") else "  "
        # The text names what the step is ("model x", "study s"): the kind is not repeated.
        console.print(f"{indent}{step.text}", highlight=False, markup=False)
