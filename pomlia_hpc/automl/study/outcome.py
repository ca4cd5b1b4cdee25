"""The outcome of a study: the best trial's model registered with its lineage, ``summary.json``."""

from __future__ import annotations

import shlex
from dataclasses import asdict

from pomlia_hpc.automl import records
from pomlia_hpc.automl.folders import SUMMARY_FILE
from pomlia_hpc.automl.study.footprint import drop_resume_checkpoints
from pomlia_hpc.automl.study.seen import seen_sources
from pomlia_hpc.automl.study.spec import write_json
from pomlia_hpc.automl.study.trials import TrialRunner
from pomlia_hpc.automl.study.view import StudyResult
from pomlia_hpc.models.catalog import ModelNameTakenError, find_model, promote_checkpoint
from pomlia_hpc.provenance import code_version
from pomlia_hpc.registry import Model, Run


def finish(runner: TrialRunner, wall_s: float) -> StudyResult:
    """Register the best trial's model (with its lineage) and write ``summary.json``."""
    best = runner.best()
    n_ok = sum(v.status == records.OK for v in runner.views.values())
    n_crashed = sum(v.status == records.CRASHED for v in runner.views.values())
    n_cancelled = sum(v.status == records.CANCELLED for v in runner.views.values())
    model_name = config = metrics = None
    model_refused = ""
    kept: Model | None = None
    runs = records.study_runs(runner.registry, runner.spec.name)
    if best is not None:
        run = next(r for r in runs if r.id == best.run_id)
        config = {
            k: v
            for k, v in run.config.items()
            if k not in ("config_key", "origin", "smac_budget", "engine")
        }
        metrics = {k: run.metrics[k] for k in ("val", "test", "objective", "epochs")}
        model_name, model_refused, kept = register_best(runner, run, runs)
    summary = StudyResult(
        runner.spec.name,
        best.run_id if best else None,
        config,
        metrics,
        model_name,
        n_ok,
        n_crashed,
        runner.epochs_run(),  # what the trials trained, not the budget they were given
        wall_s,
        records.study_span_s(runner.registry, runs),
        model_refused,
        n_cancelled,
        kept.id if kept is not None else None,
        kept.run_id if kept is not None else None,
    )
    write_json(runner.folder / SUMMARY_FILE, asdict(summary))
    drop_resume_checkpoints(runner.folder)  # finished: no trial continues from them
    return summary


def register_best(
    runner: TrialRunner, run: Run, runs: list[Run]
) -> tuple[str | None, str, Model | None]:
    """Promote ``run``'s checkpoint to the model ``<study>-best``; returns its name, or None and
    why when the name belongs to another model (registered or its file written since the
    study started: refused then, and a resume must not adopt a stranger's model). The third
    item is the study's own model when an earlier driver registered it (a resumed study that
    had finished): kept as it is, nothing registered."""
    name = f"{runner.spec.name}-best"
    existing = find_model(runner.registry, name)
    if existing is not None:
        own = (existing.lineage or {}).get("study") == runner.spec.name and existing.run_id in {
            r.id for r in runs
        }
        if own:  # a resumed study that had already finished keeps its model
            return name, "", existing
        return (
            None,
            _not_registered(
                runner,
                run,
                f"model name '{name}' is taken by model id {existing.id}, not this study's",
            ),
            None,
        )
    lineage = {
        "task": runner.spec.task,
        "task_id": runner.spec.task_id,
        "dataset": runner.spec.dataset,
        "dataset_version_id": runner.spec.dataset_version_id,
        "study": runner.spec.name,
        "run_id": run.id,
        "config": run.config,
        "epochs": int(run.budget or 0),
        "metric": runner.spec.metric,
        "code_version": code_version(),
    }
    if run.encoder_id is not None:
        lineage["encoder_id"] = run.encoder_id
    lineage.update(seen_sources(runner.spec, runner.folder, run.config))
    try:
        promote_checkpoint(
            runner.registry,
            runner.workspace,
            name,
            run.metrics["model_path"],
            task_id=runner.spec.task_id,
            run_id=run.id,
            lineage=lineage,
            link=True,  # the trial's model, which only the atomic writers replace (by rename)
        )
    except ModelNameTakenError as exc:  # taken since the check above, or its file is another's
        return None, _not_registered(runner, run, exc.message), None
    return name, "", None


def _not_registered(runner: TrialRunner, run: Run, why: str) -> str:
    """Why the best model was not registered, and the command that registers it by hand."""
    return (
        f"{why}; the best model was not registered (register it under another name: `pomlia "
        f"model register NAME {shlex.quote(str(run.metrics['model_path']))} --task-id "
        f"{runner.spec.task_id} --run-id {run.id}`)"
    )
