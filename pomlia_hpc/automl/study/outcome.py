"""The outcome of a study: the best trial's model registered with its lineage, ``summary.json``."""

from __future__ import annotations

from dataclasses import asdict

from pomlia_hpc.automl import records
from pomlia_hpc.automl.study.spec import SUMMARY_FILE, write_json
from pomlia_hpc.automl.study.trials import TrialRunner
from pomlia_hpc.automl.study.view import StudyResult
from pomlia_hpc.models.catalog import promote_checkpoint
from pomlia_hpc.registry import Run


def elapsed_s(runs: list[Run]) -> float | None:
    """Seconds from the first run's start to the last run's end (start + its cost), or None
    when no run recorded a cost. A resumed study's real length, drivers and gaps included."""
    ends = [r.created_at.timestamp() + r.cost_s for r in runs if r.cost_s is not None]
    if not ends:
        return None
    return max(ends) - min(r.created_at.timestamp() for r in runs)


def finish(runner: TrialRunner, wall_s: float) -> StudyResult:
    """Register the best trial's model (with its lineage) and write ``summary.json``."""
    best = runner.best()
    n_ok = sum(v.status == records.OK for v in runner.views.values())
    n_crashed = sum(v.status == records.CRASHED for v in runner.views.values())
    model_name = config = metrics = None
    runs = records.study_runs(runner.registry, runner.spec.name)
    if best is not None:
        run = next(r for r in runs if r.id == best.run_id)
        config = {
            k: v
            for k, v in run.config.items()
            if k not in ("config_key", "origin", "smac_budget", "engine")
        }
        metrics = {k: run.metrics[k] for k in ("val", "test", "objective", "epochs")}
        model_name = register_best(runner, run)
    summary = StudyResult(
        runner.spec.name,
        best.run_id if best else None,
        config,
        metrics,
        model_name,
        n_ok,
        n_crashed,
        runner.spent(),
        wall_s,
        elapsed_s(runs),
    )
    write_json(runner.folder / SUMMARY_FILE, asdict(summary))
    return summary


def register_best(runner: TrialRunner, run: Run) -> str:
    """Promote ``run``'s checkpoint to the model ``<study>-best``; returns its name."""
    name = f"{runner.spec.name}-best"
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
        "code_version": records.code_version(),
    }
    if run.encoder_id is not None:
        lineage["encoder_id"] = run.encoder_id
    # exist_ok: a resumed study that had already finished keeps its model.
    promote_checkpoint(
        runner.registry,
        runner.workspace,
        name,
        run.metrics["model_path"],
        task_id=runner.spec.task_id,
        run_id=run.id,
        lineage=lineage,
        exist_ok=True,
    )
    return name
