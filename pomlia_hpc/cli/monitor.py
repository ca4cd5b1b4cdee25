"""``pomlia monitor run/show/history/reference/schedule/unschedule``."""

from __future__ import annotations

import json
import math
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.jsonout import print_json, zoned_local_time
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.cli.reference import warn_few_images
from pomlia_hpc.cli.tables import MISSING, ListTable, shown, stack, when
from pomlia_hpc.cli.usage_errors import registry_id
from pomlia_hpc.errors import InputError

monitor_app = typer.Typer(
    help="Drift and performance checks on a served model's prediction log; reports; nightly "
    "schedules on Slurm.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

TargetArg = Annotated[
    str,
    typer.Argument(
        help="Registry model name or id, deployment:ID (one deployment), or a deployment "
        "slot (the name `pomlia serve SLOT` uses, or slot:SLOT: the model it serves now is "
        "monitored)."
    ),
]


def _say(message: str) -> None:
    # stderr, flushed: progress shows in a Slurm output file too, and stdout stays JSON-able.
    err_console.print(message, highlight=False)


@monitor_app.command("run")
def run(
    target: TargetArg,
    window: Annotated[
        str, typer.Option(help="Window before --until (or now): e.g. 90m, 24h, 7d.")
    ] = "24h",
    since: Annotated[
        str | None,
        typer.Option(help="Window start, ISO 8601 (UTC if no zone); overrides --window."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end, ISO 8601 (UTC if no zone).", show_default="now")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise false-alarm rate of the alarm.")] = 0.05,
    permutations: Annotated[
        int,
        typer.Option(
            help="MMD window resamples (per reference resample); at least 1/alpha - 1 (19 at "
            "alpha 0.05), else the MMD test could never alarm."
        ),
    ] = 1000,
    max_vectors: Annotated[
        int, typer.Option(help="Fingerprints sampled from the window for the input tests.")
    ] = 1000,
    label_lookback: Annotated[
        str,
        typer.Option(
            help="The task's metric (AUC, macro F1, else accuracy) is tested on the labels that "
            "arrived in the window; their predictions are looked up this far before the window "
            "start (e.g. 3d, 7d)."
        ),
    ] = "7d",
    settle: Annotated[
        str | None,
        typer.Option(
            help="Move the window (both ends) this much earlier, e.g. 5m: records timed just "
            "before its end that reach the log late (a replica whose clock is behind, a slow "
            "disk) are then in it, not between two runs. The nightly chain "
            "(jobs/monitor.sbatch) uses 5m.",
            show_default="none",
        ),
    ] = None,
    on_alarm: Annotated[
        str | None,
        typer.Option(
            help="Shell command run on an alarm (env: POMLIA_REPORT_JSON, POMLIA_REPORT_HTML, "
            "POMLIA_MODEL, POMLIA_RETRAIN_REQUEST)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Test the window of TARGET's prediction log against its reference; write a JSON and an
    HTML report. Exit status: 0 no alarm (or an empty window), 1 alarm, 2 or more an error
    (docs/guide/README.md, "Exit status")."""
    from pomlia_hpc.monitor.run import ALARM_EXIT, monitor_run, parse_duration, parse_time

    if max_vectors < 10:
        raise InputError(f"--max-vectors {max_vectors}: expected at least 10")
    res = monitor_run(
        STATE.registry(),
        STATE.workspace,
        target,
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        window=parse_duration(window),
        alpha=alpha,
        n_perm=permutations,
        max_vectors=max_vectors,
        on_alarm=on_alarm,
        label_lookback=parse_duration(label_lookback, "--label-lookback"),
        settle=parse_duration(settle, "--settle") if settle else timedelta(0),
        progress=_say,
    )
    if as_json:  # the file's shape, as `monitor show --json` prints it; not read back
        from pomlia_hpc.monitor.run import report_file_text

        print_json(json.loads(report_file_text(res.report)))
    else:
        rep = res.report
        # An OK or EMPTY window has no reasons: "reasons: none" would only be noise.
        why = f"; reasons: {', '.join(rep['reasons'])}" if rep["reasons"] else ""
        console.print(
            f"[bold]{rep['model']}[/] {rep['status'].upper()}: {rep['volume']['predictions']} "
            f"predictions{why}"
        )
        for note in rep["quality"].get("warnings", []) + rep["notes"]:
            console.print(f"  - {escape(note)}", highlight=False)  # notes quote "[val]"
        console.print(f"report {res.report_id}: {res.html_path}")
        if res.retrain_request_merged:
            console.print(
                f"retrain request {res.retrain_request_id} already open: alarm added to it"
            )
        elif res.retrain_request_id is not None:
            console.print(f"retrain request {res.retrain_request_id} recorded")
    if res.alarm:
        raise typer.Exit(ALARM_EXIT)


@monitor_app.command("show")
def show(
    report: Annotated[
        int, typer.Argument(help="Report id (see `pomlia monitor history`).", callback=registry_id)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Show one report: status, tests, and where its HTML page is."""
    from pomlia_hpc.monitor.history import NOT_TESTED, get_report, is_tested, show_time

    row, data = get_report(STATE.registry(), report)
    if as_json:
        print_json(data)
        return
    slot = f" (champion of slot '{data['slot']}')" if data.get("slot") else ""
    console.print(
        f"report {row.id}: [bold]{data['model']}[/]{slot} {data['status'].upper()} "
        f"window {show_time(data['window']['since'])} → {show_time(data['window']['until'])}, "
        f"{data['volume']['predictions']} predictions{_labels_said(data)}"
    )
    table = Table()
    for col in ("test", "family", "statistic", "p-value", "rejected"):
        table.add_column(col)
    for t in data["tests"]:
        tested = is_tested(t)
        table.add_row(
            t["name"],
            t["family"],
            f"{t['statistic']:.4g}" if t["statistic"] is not None else "",
            NOT_TESTED
            if not tested
            else (f"{t['p_value']:.4g}" if t["p_value"] is not None else ""),
            ("yes" if t["rejected"] else "no") if tested else "-",
        )
    console.print(table)
    for note in data["quality"].get("warnings", []) + data["notes"]:
        console.print(f"  - {escape(note)}", highlight=False)  # notes quote "[val]"
    console.print(f"HTML: {Path(row.report_path).with_name('report.html')}")


def _labels_said(report: dict[str, Any]) -> str:
    """``, 60 labels (auc tested)``: the feedback labels a report tested and the metric its
    performance test compared (the table's statistic has no count beside it); empty without."""
    perf = report.get("performance") or {}
    if not perf.get("labels"):
        return ""
    return f", {perf['labels']} labels ({perf.get('metric') or 'acc'} tested)"


@monitor_app.command("history")
def history_cmd(
    target: TargetArg,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List TARGET's monitoring reports, newest first.

    --json keys (the table's columns): id, created_at, since and until (the window tested,
    ISO 8601), status, predictions, labels (feedback labels in the window), accuracy (on them,
    the task's ACC: label-wise for multi-label; a number in [0, 1], not rounded), metric (the
    one the performance test compared: the task's auc or f1_macro, else acc), metric_value
    (on the labels), reference_value and reference_n (the reference's value and images),
    alarm (true or false), path (the report's JSON file); a missing value is null. The table's
    "tested" column reads e.g. "auc 0.912 (n=60)": the metric on n labels. A multi-label
    model's reports written before report format /2 held exact-match accuracy, not
    comparable: their accuracy is "-" (null), with a note. A console too narrow for the full
    table (80 columns) gets 5 columns: predictions, labels, tested metric and accuracy
    stacked in one, the creation time and the window (MM-DD HH:MM) above the status. Spans
    between the listed windows that none of them tested are named after the table."""
    from pomlia_hpc.monitor.history import (
        comparable_accuracy,
        is_multi_label,
        list_reports,
        report_window,
        tested_metric,
        window_gaps,
    )

    rows = list_reports(STATE.registry(), target, limit)
    multi = bool(rows) and is_multi_label(STATE.registry(), rows[0].model_id)
    if as_json:
        print_rows([_history_row(r, multi) for r in rows])
        return
    title = f"monitor reports ({len(rows)})"
    table = ListTable(title=title)
    columns = ("id", "created", "window", "status", "predictions", "labels", "tested")
    for col in (*columns, "accuracy", "alarm", "path"):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "created"))
    # The narrow form (an 80-column terminal): counts and accuracy stacked, path in full.
    narrow = table.narrow = Table(title=title)
    narrow.add_column("id", no_wrap=True)
    narrow.add_column("created\nwindow\nstatus", no_wrap=True)
    narrow.add_column("predictions\nlabels\ntested\naccuracy")
    narrow.add_column("alarm")
    narrow.add_column("path", overflow="fold")
    old_kind = 0  # reports whose accuracy is of another kind (format /1, multi-label)
    for r in rows:
        perf = (r.metrics or {}).get("performance") or {}
        acc = comparable_accuracy(r.metrics, multi)
        old_kind += acc is None and perf.get("accuracy") is not None
        window = report_window(r.metrics)
        tested = tested_metric(r.metrics, multi)
        cells = (
            str(r.id),
            when(r.created_at),
            shown(window and f"{when(window[0], narrow=True)} → {when(window[1], narrow=True)}"),
            shown((r.metrics or {}).get("status")),
            shown((r.metrics or {}).get("predictions")),
            shown(perf.get("labels")),
            tested.text() if tested is not None else MISSING,
            f"{acc:.3f}" if isinstance(acc, float) and math.isfinite(acc) else MISSING,
            "yes" if r.triggered else "no",
            r.report_path,
        )
        table.add_row(*cells)
        ident, _, span, status, predictions, labels, metric, accuracy, alarm, path = cells
        narrow.add_row(
            ident,
            stack(when(r.created_at, narrow=True), span, status),
            stack(predictions, labels, metric, accuracy),
            alarm,
            path,
        )
    console.print(table)
    gaps = window_gaps(w for r in rows if (w := report_window(r.metrics)) is not None)
    if gaps:
        spans = ", ".join(f"{when(a)} → {when(b)}" for a, b in gaps[:5])
        more = f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""
        console.print(
            f"note: no listed report tested {spans}{more} (UTC; a gap between their windows)",
            highlight=False,
        )
    if old_kind:
        console.print(
            f"note: {old_kind} report(s) written before report format /2 show no accuracy: "
            "theirs was exact match over all labels, not the label-wise accuracy of later ones",
            highlight=False,
        )


def _history_row(report: Any, multi_label: bool) -> dict[str, Any]:
    """One row of ``monitor history --json``: the table's columns, numbers as recorded
    (the comparable accuracy, history.comparable_accuracy; the tested metric,
    history.tested_metric)."""
    from pomlia_hpc.monitor.history import comparable_accuracy, tested_metric

    metrics = report.metrics or {}
    tested = tested_metric(metrics, multi_label)
    perf = metrics.get("performance") or {}
    window = metrics.get("window") or {}
    return {
        "id": report.id,
        "created_at": report.created_at,
        "since": window.get("since"),
        "until": window.get("until"),
        "status": metrics.get("status"),
        "predictions": metrics.get("predictions"),
        "labels": perf.get("labels"),
        "accuracy": comparable_accuracy(metrics, multi_label),
        "metric": tested.name if tested else None,
        "metric_value": tested.value if tested else None,
        "reference_value": tested.reference_value if tested else None,
        "reference_n": tested.reference_n if tested else None,
        "alarm": bool(report.triggered),
        "path": report.report_path,
    }


@monitor_app.command("reference")
def reference(
    model: Annotated[str, typer.Argument(help="Registry model name or id (exported).")],
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset NAME[@VERSION].", show_default="the one the model was trained on"
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the dataset to use.")] = "val",
) -> None:
    """(Re)compute MODEL's monitoring reference: the fingerprints and outputs the server would
    log for the images of --split (written next to the exported bundle). `monitor run` tests
    the task's metric on feedback (AUC, macro F1, else accuracy) against its value on that
    split and names it (reference_split)."""
    from pomlia_hpc.monitor.reference import create_reference

    with console.status(f"computing the monitoring reference of {model}"):
        path = create_reference(STATE.registry(), model, data=data, split=split)
    console.print(f"monitoring reference written: {path}")
    warn_few_images(path, model)


@monitor_app.command("schedule")
def schedule_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="Registry model name or id (exported), or a deployment slot (its name, or "
            "slot:SLOT): each run then monitors the model the slot serves at that time."
        ),
    ],
    at: Annotated[
        str,
        typer.Option(
            help="Time of day of the runs, HH:MM on this machine's clock (its time zone, "
            "summer time included); '' for none: the first run one period from now."
        ),
    ] = "02:00",
    every: Annotated[str, typer.Option(help="Period: 1d (nightly), 12h, 1w, ...")] = "1d",
    window: Annotated[
        str | None, typer.Option(help="Window each run tests.", show_default="the period")
    ] = None,
    on_alarm: Annotated[
        str | None, typer.Option(help="Shell command each run calls on an alarm.")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            help="Replace an existing chain instead of refusing: its queued jobs are cancelled "
            "once the new one is submitted (a failed submission keeps it). For a slot, also "
            "the chain under its champion's name that `schedule SLOT` made before slot chains "
            "(one scheduled for the model by name is left alone)."
        ),
    ] = False,
    chain: Annotated[
        bool,
        typer.Option(help="Internal: resubmission from a running job of the chain.", hidden=True),
    ] = False,
    after: Annotated[
        str | None,
        typer.Option(
            help="Internal (with --chain): the resubmitting run's scheduled start; the next "
            "run begins one period after it.",
            hidden=True,
        ),
    ] = None,
) -> None:
    """Run the monitor of MODEL on Slurm every period (a self-resubmitting job chain,
    jobs/monitor.sbatch); prints equivalent cron and scrontab lines (the registry as a
    POMLIA_DB_URL line, its password as ***). Needs a Slurm profile (--cluster PROFILE): on
    another one it is refused with the crontab lines that run the monitor on this machine
    instead. A chain for a slot follows its promotions; one for a model stays on that model
    (a warning when no slot serves it any more). Each job's log is
    <home>/jobs/monitor/<model or slot:SLOT>/slurm-<scheduler id>.out (`pomlia jobs show ID`
    names it); `pomlia monitor status` says whether the chain still runs."""
    from pomlia_hpc.monitor.run import parse_time
    from pomlia_hpc.monitor.schedule import resubmit, schedule

    if chain:  # the running job of a chain submits its next run (jobs/monitor.sbatch)
        res = resubmit(
            STATE.registry,
            STATE.workspace,
            model,
            every=every,
            at=at or None,
            after=parse_time(after, "--after") if after else None,
            window=window,
            say=lambda line: err_console.print(line, highlight=False, soft_wrap=True),
        )
    else:
        res = schedule(
            STATE.registry(),
            STATE.workspace,
            model,
            every=every,
            at=at or None,
            window=window,
            on_alarm=on_alarm,
            replace=replace,
        )
    _print_scheduled(res, chain=chain, every=every)


def _print_scheduled(res: Any, *, chain: bool, every: str) -> None:
    """What `monitor schedule` did (``res``: its :class:`Scheduled`)."""
    from pomlia_hpc.monitor.schedule import job_labels, job_name

    if res.job_id is None:
        console.print(f"no job submitted: {res.note}")
        return
    job = (
        f"job {res.record_id} (slurm {res.job_id}, "
        if res.record_id
        else f"job (slurm {res.job_id}, "
    )
    # --at is this process's wall clock (TZ, else the system's): name the zone and give UTC,
    # which the lists and reports use
    utc = res.begin.astimezone(UTC)
    console.print(
        f"{job}{job_name(res.key)}) submitted, begins {res.begin:%Y-%m-%d %H:%M:%S %Z} "
        f"({utc:%Y-%m-%d %H:%M} UTC); settings {res.conf}"
    )
    if res.slot is not None and not chain:
        console.print(
            f"slot '{res.slot}' serves model '{res.champion}' now; each run monitors the "
            "model the slot serves at that time (after a promotion, the new one)",
            highlight=False,
            soft_wrap=True,
        )
    if res.replaced:
        replaced = job_labels(STATE.registry(), list(res.replaced))
        console.print(f"replaced (cancelled): {', '.join(replaced)}", highlight=False)
    for warning in res.warnings:  # the new chain stands; the old one may need a hand
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if res.note:  # submitted, not recorded: the chain goes on; `jobs list` will not show it
        err_console.print(
            f"[yellow]warning:[/] slurm job {res.job_id} {res.note}",
            highlight=False,
            soft_wrap=True,
        )
    if not chain:
        _print_cron_lines(res.cron, res.scrontab, every)


def _print_cron_lines(cron: str | None, scrontab: str | None, every: str) -> None:
    """The cron and scrontab lines that `monitor schedule` offers instead of the chain."""
    from pomlia_hpc.monitor.schedule import has_hidden_password

    if cron:
        console.print("or, from cron (one run per line, no chain):", highlight=False)
        console.print(f"  {cron}", highlight=False, soft_wrap=True)
    if scrontab:
        from pomlia_hpc.cluster.batch import scrontab_unavailable

        why = scrontab_unavailable()
        if why is None:
            console.print("or, with scrontab (where the site enables it):", highlight=False)
        else:  # the entry would be refused here: the chain above is the way
            console.print(
                f"scrontab is not enabled on this cluster ({why}): the chain above runs the "
                "monitor; the scrontab entry for a cluster that enables it:",
                highlight=False,
                soft_wrap=True,
            )
        for line in scrontab.splitlines():
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        if has_hidden_password(STATE.workspace):
            console.print(
                "  (the registry password is shown as ***: write it into the "
                "POMLIA_DB_URL line; not as --db-url, which every user sees in ps)",
                highlight=False,
                soft_wrap=True,
            )
    if not cron:
        console.print(f"(no cron line: period {every} has no cron equivalent)")


@monitor_app.command("unschedule")
def unschedule_cmd(
    model: Annotated[
        str,
        typer.Argument(help="Registry model name or id, or a deployment slot (or slot:SLOT)."),
    ],
) -> None:
    """End MODEL's (or a slot's) monitoring chain: cancel its queued and running jobs.

    A slot's also ends the chain under its champion's name that `monitor schedule SLOT` made
    before slot chains; a chain scheduled for the champion by name (`monitor schedule MODEL`)
    is the model's and stays."""
    from pomlia_hpc.monitor.schedule import job_labels, unschedule

    ids = unschedule(STATE.registry(), STATE.workspace, model)
    labels = job_labels(STATE.registry(), ids)
    console.print(f"cancelled: {', '.join(labels)}" if ids else "no monitoring job was queued")


@monitor_app.command("status")
def status_cmd(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Registry model name or id, or a deployment slot (or slot:SLOT); all "
            "chains of the workspace when left out.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Say what each monitoring chain (`monitor schedule`) is doing now: its settings, its
    jobs in Slurm's queue, its newest ended run and its state: scheduled (a next run queued),
    running, ended (settings but no job queued: no run will come, e.g. its queued job was
    cancelled by hand or could not submit the next one; schedule it again) or unscheduled.
    Job states are refreshed with one sacct call first, as in `pomlia jobs list`.

    --json keys: chain, state, every, at, window, queued (the jobs in Slurm's queue, each an
    object: job (registry id, or null), scheduler_id, state, begin: ISO 8601 with the zone),
    last (the newest ended run, an object: job, scheduler_id, state, ended_at, exit_cause; or
    null), advice (a sentence for people, or "")."""
    from pomlia_hpc.cli.polling import refresh_for_listing
    from pomlia_hpc.monitor.chains import chain_keys, chain_state
    from pomlia_hpc.monitor.schedule import chain_key

    reg = STATE.registry()
    keys = chain_keys(STATE.workspace) if model is None else [chain_key(reg, model)]
    problem = refresh_for_listing(reg)
    if problem:
        err_console.print(f"job states as last recorded: {problem}", highlight=False)
    states = [chain_state(reg, STATE.workspace, key) for key in keys]
    if as_json:
        print_rows([_chain_values(st) for st in states])
        return
    if not states:
        console.print("no monitoring chain in this workspace (`pomlia monitor schedule`)")
    for st in states:
        every, at = (st.settings or {}).get("EVERY"), (st.settings or {}).get("AT")
        period = f" (every {every}" + (f" at {at}" if at else "") + ")" if every else ""
        console.print(f"{st.key}: {st.state.upper()}{period}", highlight=False)
        for q in st.queued:
            console.print(
                f"  queued: {q.label} {q.state.lower()}, begins {q.begin}", highlight=False
            )
        console.print(f"  last run: {st.last or '-'}", highlight=False, soft_wrap=True)
        if st.advice:
            console.print(f"  {st.advice}", highlight=False, soft_wrap=True)


def _chain_values(st: Any) -> dict[str, Any]:
    """``monitor status --json``'s object of one chain (a ``ChainState``): values, not the
    table's sentences (see the command's help)."""
    settings = st.settings or {}
    return {
        "chain": st.key,
        "state": st.state,
        **{k.lower(): settings.get(k) for k in ("EVERY", "AT", "WINDOW")},
        # squeue's begin is local wall time without a zone: a script needs the zone to compare
        "queued": [
            {
                "job": q.job,
                "scheduler_id": q.scheduler_id,
                "state": q.state,
                "begin": zoned_local_time(q.begin),
            }
            for q in st.queued
        ],
        "last": st.last_job,
        "advice": st.advice,
    }
