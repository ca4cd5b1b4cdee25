"""``pomlia automl run`` and ``pomlia runs list``."""

from __future__ import annotations

import contextlib
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console, profile_for
from pomlia_hpc.cli.pathopts import path_option
from pomlia_hpc.cli.studytable import epochs_word, study_table, with_n
from pomlia_hpc.cli.tables import fit_columns, pick_form
from pomlia_hpc.errors import InputError
from pomlia_hpc.processes import Hangup, hangup_as_interrupt
from pomlia_hpc.progress import Reporter, drop_output, progress, reader_gone

automl_app = typer.Typer(
    help="AutoML studies: SMAC-Hyperband over training strategies.", no_args_is_help=True
)
app.add_typer(automl_app, name="automl")


def study_reporter(bar: Reporter) -> Callable[[Any], None]:
    """``on_update`` for a study: the live table in a terminal; otherwise a status line per
    finished trial count and a line each time a trial changes status (for a Slurm log)."""
    from pomlia_hpc.automl.study import ENDED, TrialLog  # imports torch: not at the top

    lines = TrialLog(bar.line, counts=False)  # the bar's own line counts the ended trials
    announced: set[int] = set()

    def update(view: Any) -> None:
        # The final training is a stage of its own, never "3/2 trials (150%)".
        ended = min(sum(t.status in ENDED for t in view.search), view.n_trials)
        best = view.best
        stage = view.final_stage()
        final = view.final_trial
        if final is not None and final.run_id not in announced:
            announced.add(final.run_id)  # its start on a line of its own, once
            bar.line(f"study {view.name}: {ended}/{view.n_trials} trials; {stage}")
        if bar.plain:
            lines(view)
        else:  # above the live table: the table has no room to say a trial was requeued
            for line in lines.requeues(view):
                bar.line(line)
        notes = [stage]
        if best is not None:
            val = with_n(best.objective, getattr(best, "val_n", None))
            notes.append(f"best run {best.run_id} val {view.metric} {val}")
        note = "; ".join(n for n in notes if n)
        table: Table = study_table(view, bar.elapsed_s)
        if bar.console is not None and not bar.plain:
            # A live view is drawn without the console's print, which picks the form and
            # keeps words whole: picked here, or rich folds `configuration` mid-word.
            table = pick_form(table, bar.console)
            fit_columns(table, bar.console)
        bar.update(ended, view.n_trials, note=note, view=table)

    return update


#: ``automl run`` parameters that still apply with ``--resume`` (the rest are the study's own).
_RESUME_PARAMS = frozenset({"task", "study", "resume"})


def _ignored_on_resume(ctx: typer.Context) -> list[str]:
    """The options given on the command line that ``--resume`` ignores, as ``--name``."""
    given: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        # By name: typer bundles its own copy of click, whose enum is not click's.
        if name not in _RESUME_PARAMS and getattr(source, "name", "") in (
            "COMMANDLINE",
            "ENVIRONMENT",
        ):
            given.append(max(param.opts, key=len) if param.opts else name)
    return given


@automl_app.command("run")
def automl_run(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Registered task name or id.")],
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            help="Trials (jobs) at most, promotions and a warm start's first training "
            "included; the final training of the best configuration to the full budget "
            "(see --final) comes on top.",
        ),
    ] = 20,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            "--max-epochs",
            help="Largest budget, epochs.",
            show_default="about 1,500 optimizer steps at batch 64, 9 to 60 epochs, so smaller "
            "data sets get more epochs",
        ),
    ] = None,
    min_epochs: Annotated[
        int | None,
        typer.Option(
            "--min-epochs",
            help="Smallest budget, epochs.",
            show_default="at least 60 optimizer steps, so the lowest Hyperband rung ranks "
            "configurations rather than noise",
        ),
    ] = None,
    eta: Annotated[int, typer.Option(help="Hyperband's eta: keep 1/eta per rung.")] = 3,
    parallel: Annotated[int, typer.Option("--parallel", help="Trials running at once.")] = 2,
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor",
            help="local, slurm (the --cluster profile) or a cluster profile name.",
            show_default="the --cluster profile (POMLIA_CLUSTER; local if none)",
        ),
    ] = None,
    optimizer: Annotated[str, typer.Option(help="smac (Hyperband) or random.")] = "smac",
    study: Annotated[str | None, typer.Option(help="Study name.", show_default="TASK-time")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the study (--study, or the task's newest that has not finished).",
        ),
    ] = False,
    initial: Annotated[
        Path | None,
        path_option(
            "--initial",
            help="Warm start: YAML/JSON list of configurations (initial design); a file of "
            "`pomlia recommend OTHER --write-initial` (another task) is refused.",
        ),
    ] = None,
    from_recommendation: Annotated[
        bool,
        typer.Option(
            "--from-recommendation",
            help="Warm-start from `pomlia recommend TASK`'s top-k strategies and search only "
            "their architectures and weight sources.",
        ),
    ] = False,
    recommend_k: Annotated[
        int, typer.Option("--recommend-k", help="Strategies taken from the recommendation.")
    ] = 5,
    final: Annotated[
        bool,
        typer.Option(
            "--final/--no-final",
            help="After the search, train the best configuration on to --max-epochs.",
        ),
    ] = True,
    budget_epochs: Annotated[
        int | None,
        typer.Option("--budget-epochs", help="Stop asking once this many epochs were given out."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Optimiser and training seed.")] = 0,
    archs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated architectures to search, at least one (with "
            "--from-recommendation it must include the recommended ones).",
            show_default="small_cnn,resnet18,mobilenet_v3_small; with --from-recommendation: "
            "the recommended ones",
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder", "-e", help="Fingerprint encoder whose weights become init=encoder."
        ),
    ] = None,
    init_model: Annotated[
        str | None,
        typer.Option("--init-model", help="Registered model whose weights become init=model."),
    ] = None,
    extra_data: Annotated[
        bool,
        typer.Option(
            "--extra-data", help="Offer the nearest images from similar datasets (needs --encoder)."
        ),
    ] = False,
    zero_stage: Annotated[int, typer.Option("--zero-stage", help="DeepSpeed ZeRO stage, 0-3.")] = 0,
    bf16: Annotated[
        bool | None,
        typer.Option("--bf16/--no-bf16", help="bf16 training.", show_default="on CUDA only"),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="auto (cuda if the trial has a GPU), cpu or cuda (needs a trial with a GPU: "
            "--gpus 1 or a profile with gpus_per_node >= 1, and on the local executor a GPU "
            "on this machine; else refused before the study)."
        ),
    ] = "auto",
    mem_gb: Annotated[
        float | None,
        typer.Option(
            "--mem-gb",
            help="Memory per trial job, GB.",
            show_default="the cluster profile's mem_gb",
        ),
    ] = None,
    time_min: Annotated[
        int | None,
        typer.Option(
            "--time-min",
            help="Time limit per trial job, minutes.",
            show_default="the cluster profile's time_min",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            help="GPUs per trial job (0 or 1: a trial is one process).",
            show_default="the cluster profile's gpus_per_node",
        ),
    ] = None,
) -> None:
    """Run an AutoML study on TASK: SMAC-Hyperband (budget = epochs), trials as cluster jobs.

    Each trial's log is <home>/jobs/automl/<study>/<scheduler id>_0_log.out and .err
    (`pomlia jobs show ID`, ID the `job` of `runs list`, names them)."""
    from pomlia_hpc.automl.engine import EngineOptions
    from pomlia_hpc.automl.records import ended_runs
    from pomlia_hpc.automl.space import DEFAULT_ARCHS, SpaceOptions, parse_archs, read_initial_file
    from pomlia_hpc.automl.study import create_study, load_spec, run_study, study_to_resume

    ws = STATE.workspace
    reg = STATE.prepared()
    defaulted: int | None = None  # the training images the epoch budgets were chosen for
    chosen: list[str] = []  # the epoch options left to that default
    if resume:
        from pomlia_hpc.automl.liveness import refuse_if_driven
        from pomlia_hpc.automl.study.spec import STUDY_NAME_MAX
        from pomlia_hpc.names import validate_name

        name, why = (study, "") if study is not None else study_to_resume(ws, task)
        validate_name("study", name, max_len=STUDY_NAME_MAX)  # a name, never a path
        refuse_if_driven(ws, name)  # before anything is printed: a refusal is all it says
        if why:
            err_console.print(f"[yellow]note:[/] {escape(why)}", soft_wrap=True, highlight=False)
        spec = load_spec(ws, name, task=task)
        ignored = _ignored_on_resume(ctx)
        if ignored:
            # Same command line with --resume is the natural way to restart: warn, not refuse.
            err_console.print(
                f"[yellow]note:[/] --resume continues study {spec.name} with the options it "
                f"was created with (see its study.json); ignored: {', '.join(ignored)}"
            )
    else:
        from pomlia_hpc.automl.budget import default_budget, task_train_size
        from pomlia_hpc.automl.seen_init import seen_start_problems
        from pomlia_hpc.strategy.warmstart import check_archs, withdraw
        from pomlia_hpc.strategy.warmstart import from_recommendation as recommended_start

        if from_recommendation and initial is not None:
            raise InputError(
                "--from-recommendation and --initial both give a warm start: choose one"
            )
        warm_file = read_initial_file(initial) if initial is not None else None
        warm = warm_file.configs if warm_file is not None else []
        warm_source = warm_file.source if warm_file is not None else "initial configurations"
        arch_list = parse_archs(archs) if archs is not None else None
        if from_recommendation and recommend_k < 1:
            # Here, not in the recommender: its own message names `pomlia recommend`'s --k.
            raise InputError(f"--recommend-k {recommend_k}: expected an integer >= 1")
        if min_epochs is None or max_epochs is None:
            chosen = [
                f
                for f, v in (("--min-epochs", min_epochs), ("--max-epochs", max_epochs))
                if v is None
            ]
            defaulted = task_train_size(reg, task)
            low, high = default_budget(defaulted, eta)
            min_epochs = min_epochs if min_epochs is not None else min(low, max_epochs or low)
            max_epochs = max_epochs if max_epochs is not None else max(high, min_epochs)
        # Here, not in the job resources' own check, whose message names the profile's field.
        if mem_gb is not None and not (math.isfinite(mem_gb) and mem_gb > 0):
            raise InputError(f"--mem-gb {mem_gb:g}: expected a memory per trial job above 0 GB")
        if time_min is not None and time_min < 1:
            raise InputError(f"--time-min {time_min}: expected a time limit of at least 1 minute")
        if gpus is not None and not 0 <= gpus <= 1:
            # One process per trial (tasks_per_node=1) trains on one GPU: more would sit idle.
            raise InputError(
                f"--gpus {gpus}: expected 0 or 1; a trial trains on one GPU (multi-GPU trials "
                "need one process per GPU, tasks_per_node=N, which is not supported yet)"
            )
        # The recommendation is recorded when it is made; a study refused after it (too few
        # --trials for its configurations, a name taken, ...) never used it: withdrawn, so
        # that `strategy outcomes` does not score one answer per refused attempt.
        rec_id: int | None = None
        try:
            if from_recommendation:
                given = {"encoder": encoder, "model": init_model}
                ws_rec = recommended_start(
                    reg,
                    task,
                    k=recommend_k,
                    seen=seen_start_problems,
                    own_weights=frozenset(k for k, v in given.items() if v is not None),
                )
                rec_id = ws_rec.recommendation_id
                warm = ws_rec.configs
                warm_source = f"recommendation {rec_id}'s configurations"
                if arch_list is not None:
                    check_archs(ws_rec, arch_list)
                arch_list = arch_list or ws_rec.archs
                encoder = encoder or ws_rec.encoder
                init_model = init_model or ws_rec.init_model
                extra_data = extra_data or ws_rec.extra_data
            if extra_data and encoder is None:
                raise InputError("--extra-data needs --encoder (the fingerprint index to search)")
            resources = {
                k: v
                for k, v in (("mem_gb", mem_gb), ("time_min", time_min), ("gpus_per_node", gpus))
                if v is not None
            }
            spec = create_study(
                reg,
                ws,
                task,
                name=study,
                n_trials=trials,
                max_epochs=max_epochs,
                min_epochs=min_epochs,
                eta=eta,
                parallel=parallel,
                executor=profile_for(executor),
                optimizer=optimizer,
                seed=seed,
                budget_epochs=budget_epochs,
                engine=EngineOptions(zero_stage=zero_stage, bf16=bf16, device=device),
                space=SpaceOptions(archs=arch_list or DEFAULT_ARCHS),
                resources=resources,
                encoder=encoder,
                init_model=init_model,
                extra_data=extra_data,
                initial_configs=warm,
                initial_source=warm_source,
                initial_task=warm_file.task if warm_file is not None else None,
                final_full_budget=final,
            )
        except BaseException:
            # the refusal is what the user must see, not a failed clean-up
            with contextlib.suppress(Exception):
                withdraw(reg, rec_id)
            raise
        if from_recommendation:
            console.print(
                f"warm start: {len(warm)} configuration(s) from recommendation {rec_id}; "
                f"architectures {', '.join(ws_rec.archs)}"
            )
            for note in ws_rec.notes:
                err_console.print(
                    f"[yellow]warning:[/] {escape(note)}", soft_wrap=True, highlight=False
                )
        _note_added_archs(spec)
        for warning in spec.lineage_warnings:
            err_console.print(
                f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False
            )
    console.print(
        f"study [bold]{spec.name}[/] on task {spec.task} ({spec.dataset}, metric "
        f"{spec.metric}), {spec.options.optimizer}, executor '{spec.options.executor}'"
    )
    console.print(_budgets(spec.options, defaulted, chosen), highlight=False)
    try:
        # A hung-up terminal (SIGHUP) stops the study as Ctrl-C does, its driver's end
        # recorded, rather than killing it between a trial's end and the best model's record.
        with (
            hangup_as_interrupt(),
            progress(
                f"study {spec.name}",
                spec.options.n_trials,
                unit="trials",
                # progress for people on stderr; the study's final table stays on stdout
                console=err_console,
                result_console=console,
                live_view=True,
                # not 0/N before adopting; a final training that ended is not one more trial
                start=min(ended_runs(reg, spec.name), spec.options.n_trials) if resume else 0,
            ) as bar,
        ):
            result = run_study(reg, ws, spec, resume=resume, on_update=study_reporter(bar))
    except KeyboardInterrupt as exc:
        # Not a traceback: the study is consistent (its state is saved after every ask and
        # tell), and its unfinished trials stay 'running' until a resume takes them up.
        hangup = isinstance(exc, Hangup)
        err_console.print(
            f"[yellow]{'hung up (SIGHUP)' if hangup else 'interrupted'}:[/] study {spec.name} "
            "stopped before its end (best model, summary); its unfinished trials stay "
            f"'running' until `pomlia automl run {shlex.quote(spec.task)} --study "
            f"{shlex.quote(spec.name)} --resume` takes them up and records the rest (jobs: "
            "`pomlia jobs list`)",
            soft_wrap=True,
        )
        raise typer.Exit(129 if hangup else 130) from None
    try:
        code = _report(spec, result, resume=resume)
    except OSError as exc:  # `| head`: the study is done and recorded; nobody reads on
        if not reader_gone(exc):
            raise
        drop_output(console.file)
        code = 0 if result.best_run_id is not None else 1
    if code:
        raise typer.Exit(code)


def _budgets(options: Any, defaulted: int | None, chosen: list[str]) -> str:
    """The study's budgets for its header: ``budgets: 20 to 60 epochs per trial (eta 3), 20
    trials, 2 at once`` and, when epochs were left to the default (``chosen``: the options not
    given), the data size they were chosen for."""
    text = (
        f"budgets: {options.min_epochs} to {options.max_epochs} epochs per trial (eta "
        f"{options.eta}), {options.n_trials} trial{'s' if options.n_trials != 1 else ''}, "
        f"{options.parallel} at once"
    )
    if options.budget_epochs is not None:
        text += f", at most {options.budget_epochs} epochs in all"
    if defaulted is not None and chosen:
        # Only what was defaulted: "epochs: default" after an explicit --max-epochs misled.
        what = {"--min-epochs": "minimum epochs", "--max-epochs": "maximum epochs"}
        said = "epochs" if len(chosen) == 2 else what[chosen[0]]
        text += (
            f"; {said}: default for {defaulted:,} training images ({', '.join(chosen)} to choose)"
        )
    return text


def _note_added_archs(spec: Any) -> None:
    """Say when --encoder or --init-model brought an architecture that --archs did not name:
    the space holds it too (weights only fit their own architecture), so trials, even all of
    a short study's, may train it rather than what --archs asked for."""
    for flag, source in (("--encoder", spec.encoder), ("--init-model", spec.init_model)):
        if source is not None and source.arch not in spec.space.archs:
            err_console.print(
                f"[yellow]note:[/] {flag} {source.name} is a {source.arch}, not among --archs "
                f"({', '.join(spec.space.archs)}): the study searches {source.arch} too (its "
                f"trials starting from those weights); --archs {', '.join(spec.space.archs)} "
                "trials start from scratch. Add "
                f"{source.arch} to --archs to silence this, or leave out {flag} to search only "
                "--archs",
                soft_wrap=True,
                highlight=False,
            )


def _cancelled(result: Any) -> str:
    """``, 2 cancelled`` when trials of ``result`` were cancelled, else the empty text."""
    n = getattr(result, "n_cancelled", 0)
    return f", {n} cancelled" if n else ""


def _registered(result: Any) -> str:
    """``registered``, or what a resume of a finished study did: it kept the model an earlier
    driver registered (the same row; a resume registers nothing)."""
    if result.kept_model_id is None:
        return "registered"
    run = result.kept_model_run_id
    source = "" if run in (None, result.best_run_id) else f", from run {run}"
    return f"already registered (model id {result.kept_model_id}{source}, unchanged)"


def _report(spec: Any, result: Any, *, resume: bool) -> int:
    """Print a finished study's outcome; returns the exit status (1: no best model)."""
    if result.best_run_id is None:
        if result.n_ok:
            # They trained, but the metric cannot be computed on this validation split.
            console.print(
                f"[red]no best model[/]: {result.n_ok} trial(s) finished ok but their validation "
                f"{spec.metric} is undefined (e.g. only one class in the validation split), "
                f"{result.n_crashed} crashed; see "
                f"`pomlia runs list --study {shlex.quote(spec.name)}`"
            )
        else:
            console.print(
                f"[red]no trial finished[/] ({result.n_crashed} crashed"
                f"{_cancelled(result)}); see "
                f"`pomlia runs list --task {shlex.quote(spec.task)}`"
            )
        return 1
    m = result.best_metrics or {}
    val = with_n(m.get("objective"), (m.get("val") or {}).get("n"))
    if result.model_name is None:
        # the study found a best, but its model's name belonged to another model
        console.print(
            f"best: run {result.best_run_id}, val {spec.metric} {val}; "
            f"[red]model not registered[/]: {result.model_refused}",
            soft_wrap=True,
            highlight=False,
        )
        return 1
    # A resumed study ran partly (or wholly) in earlier drivers: this driver's time would
    # say "0 s" for a finished one, so the study's own span is given, or nothing.
    took = result.elapsed_s if resume else result.wall_s
    console.print(
        f"best: run {result.best_run_id}, val {spec.metric} {val}, test "
        f"{with_n((m.get('test') or {}).get(spec.metric), (m.get('test') or {}).get('n'))}; "
        f"model [bold]{result.model_name}[/] "
        f"{_registered(result)}; {result.n_ok} ok, {result.n_crashed} crashed{_cancelled(result)}, "
        f"{result.spent_epochs} {epochs_word(result.spent_epochs)}"
        + ("" if took is None else f", {took:.0f} s")
        + (" (the study's trials, first start to last end)" if resume and took is not None else "")
    )
    return 0
