"""Stages ``tasks``, ``automl``, ``export`` and ``deploy``: from a task to a served model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster.records import refresh_jobs_within
from pomlia_hpc.cluster.sacct import squeue_ids
from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.errors import ConfigError, InputError
from pomlia_hpc.models.archs import check_arch
from pomlia_hpc.pipeline.spec import AutoMLSpec, PipelineSpec
from pomlia_hpc.pipeline.stage import (
    PlannedJob,
    Stage,
    StageContext,
    StageFailedError,
    resources_of,
    section_stage,
)
from pomlia_hpc.pipeline.stages_data import estimated_images
from pomlia_hpc.registry import Deployment, Job, Model, Task
from pomlia_hpc.vocab import FINAL_STATES


def _run_tasks(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.automl.tasks import add_task
    from pomlia_hpc.data.store import find_version

    versions = ctx.outputs("data")["versions"]
    out: dict[str, Any] = {}
    for t in ctx.spec.tasks:
        name, ds = t.dataset.split("@")[0], t.dataset
        ref = ds if "@" in ds else versions[name]
        version = find_version(ctx.registry, ref)
        registered = _task_name(ctx, t.name, version.id, t.metric, version.version)
        with ctx.registry.session() as s:
            exists = s.scalar(select(Task.id).where(Task.name == registered)) is not None
        if not exists:
            add_task(ctx.registry, registered, ref, t.metric)
        out[t.name] = {"task": registered, "dataset": ref, "metric": t.metric}
        ctx.log(f"  task {registered}: {ref}, metric {t.metric}")
    return out


#: The longest task name (:func:`pomlia_hpc.names.validate_name`'s default).
MAX_TASK_NAME = 64


def _task_name(ctx: StageContext, name: str, version_id: int, metric: str, version: str) -> str:
    """``name``, unless a task of that name exists for another dataset version or metric:
    then ``name-<version>`` (a new dataset version is a new task; its runs stay apart), and
    ``name-<version>-<metric>`` when that one is another metric's. The first that is free or
    is this task already; a name that was never this pipeline's may be taken by a task of the
    user's own: then an error, rather than runs of the wrong metric or data."""
    # A long name is cut short before its suffix: each candidate stays a valid task name.
    suffixes = ("", f"-{version[:8]}", f"-{version[:8]}-{metric}")
    tried = [name[: MAX_TASK_NAME - len(sfx)] + sfx for sfx in suffixes]
    with ctx.registry.session() as s:
        for candidate in tried:
            row = s.scalar(select(Task).where(Task.name == candidate))
            if row is None or (row.dataset_version_id == version_id and row.metric == metric):
                return candidate
    raise ConfigError(
        f"{ctx.spec.source}: task '{name}': the names {', '.join(repr(t) for t in tried)} are "
        f"all tasks of another dataset version or metric (this one: {version[:8]}, {metric}); "
        "rename the task in the file"
    )


def _automl(spec: PipelineSpec) -> AutoMLSpec:
    assert spec.automl is not None
    return spec.automl


def _check_automl(spec: PipelineSpec) -> None:
    """Before anything runs: every name in ``automl.archs`` is an architecture of the
    catalogue (the study refuses others, but only after the stages before it ran)."""
    for i, arch in enumerate(_automl(spec).archs or ()):
        try:
            check_arch(arch)
        except InputError as exc:
            raise ConfigError(f"{spec.source}: bad value for 'automl.archs.{i}': {exc}") from exc


def _run_automl(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.automl.study import TrialLog, run_study

    tasks = ctx.outputs("tasks")
    encoder = ctx.outputs("encoder")["encoder"] if ctx.spec.encoder is not None else None
    warm = ctx.outputs("recommend") if ctx.spec.recommend is not None else {}
    out: dict[str, Any] = {}
    for key, t in tasks.items():
        # A study per task and stage key: the same inputs resume the same study.
        name = f"{ctx.spec.name}-{key}-{ctx.key[:8]}"
        spec, resume = open_study(
            ctx, name, t["task"], list(warm.get(key, {}).get("configs", [])), encoder
        )
        res = run_study(
            ctx.registry,
            ctx.workspace,
            spec,
            resume=resume,
            on_update=TrialLog(ctx.log, prefix="  "),
        )
        ctx.log(
            f"  study {name}: {res.n_ok} ok, {res.n_crashed} crashed"
            + (f", {res.n_cancelled} cancelled" if res.n_cancelled else "")
            + f", best model {res.model_name}"
        )
        if res.model_name is None:
            # Not a bug (a traceback and exit 70 in a local run): what the trials did.
            why = res.model_refused or (
                f"no trial produced a model ({res.n_ok} ok, {res.n_crashed} crashed); see "
                f"`pomlia runs list --study {name}`"
            )
            raise StageFailedError(f"study {name} produced no model: {why}")
        out[key] = {
            "study": name,
            "model": res.model_name,
            "best_run": res.best_run_id,
            "metrics": res.best_metrics,
        }
    return out


def open_study(
    ctx: StageContext,
    name: str,
    task: str,
    warm: list[dict[str, Any]],
    encoder: str | None,
) -> tuple[Any, bool]:
    """The study ``name`` of the automl stage for ``task``: (its spec, whether it resumes).

    A new study gets the recommendation's configurations ``warm`` as its warm start, as
    ``automl run --from-recommendation`` does: with ``automl.archs`` left out, its space is
    the recommended architectures; named ``archs`` win, and a configuration the space cannot
    hold (another architecture, weights the study is not given) is left out with its reason,
    logged and kept in ``study.json``'s ``dropped_initial``."""
    from pomlia_hpc.automl.space import DEFAULT_ARCHS, SpaceOptions
    from pomlia_hpc.automl.study import SPEC_FILE, create_study, load_spec, study_dir

    if (study_dir(ctx.workspace, name) / SPEC_FILE).exists():
        ctx.log(f"  resuming study {name}")
        return load_spec(ctx.workspace, name), True
    am = _automl(ctx.spec)
    recommended = tuple(dict.fromkeys(str(c["arch"]) for c in warm if c.get("arch")))
    archs = tuple(am.archs) if am.archs else (recommended or DEFAULT_ARCHS)
    spec = create_study(
        ctx.registry,
        ctx.workspace,
        task,
        name=name,
        n_trials=am.trials,
        max_epochs=am.max_epochs,
        min_epochs=am.min_epochs,
        parallel=am.parallel,
        executor=ctx.workspace.cluster_profile,
        optimizer=am.optimizer,
        seed=am.seed,
        space=SpaceOptions(archs=archs),
        resources=am.resources.as_overrides(),
        encoder=encoder if am.use_encoder else None,
        extra_data=am.extra_data and encoder is not None,
        initial_configs=warm,
        drop_unfit_initial=True,
        pipeline=ctx.spec.name,  # the owner: `runs list` names this pipeline, not --resume
    )
    ctx.log(
        f"  study {name}: {am.trials} trials, {am.min_epochs}-{am.max_epochs} epochs, "
        f"architectures {', '.join(archs)}"
        + (f"; warm start: {len(spec.initial_configs)} configuration(s)" if warm else "")
    )
    for reason in spec.dropped_initial:
        ctx.log(f"  warm start: left out {reason}")
    for warning in spec.lineage_warnings:
        ctx.log(f"  warning: {warning}")
    return spec, False


def _models_there(ctx: StageContext, out: dict[str, Any]) -> bool:
    with ctx.registry.session() as s:
        for v in out.values():
            row = s.scalar(select(Model).where(Model.name == v["model"]))
            if row is None or not Path(row.path).exists():
                return False
    return True


def _automl_jobs(spec: PipelineSpec, profile: ClusterProfile) -> list[PlannedJob]:
    am = _automl(spec)
    res = resources_of(profile, am.resources)
    jobs = []
    by_name = {d.name: d for d in spec.datasets}
    for t in spec.tasks:
        n = estimated_images(spec, by_name[t.dataset.split("@")[0]], "train")
        # Hyperband hands out budgets between min and max epochs; the mean is about halfway.
        mean_epochs = (am.min_epochs + am.max_epochs) / 2
        hours = (
            None if n is None else n * mean_epochs / spec.estimate.classifier_images_per_s / 3600
        )
        jobs.append(PlannedJob(f"AutoML trials of task '{t.name}'", am.trials, res, hours))
    return jobs


def _run_export(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.serve.export import export_model
    from pomlia_hpc.serve.reference import few_images_warning

    out: dict[str, Any] = {}
    for key, v in ctx.outputs("automl").items():
        res = export_model(ctx.registry, ctx.workspace, v["model"])
        out[key] = {
            "model": v["model"],
            "bundle": str(res.bundle.root),
            "version": res.bundle.version,
        }
        ctx.log(f"  exported {v['model']} → {res.bundle.root}")
        warning = few_images_warning(res.reference, v["model"])
        if warning is not None:
            ctx.log(f"  warning: {warning}")
    return out


def _bundles_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return all(Path(v["bundle"]).is_dir() for v in out.values())


def _run_deploy(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.config import load_cluster_profile
    from pomlia_hpc.serve.deploy import submit_deployment, write_deployment

    assert ctx.spec.deploy is not None
    profile = load_cluster_profile(ctx.workspace.cluster_profile)
    out: dict[str, Any] = {}
    for key, v in ctx.outputs("export").items():
        # A directory an earlier run of this stage wrote (for the same bundle and profile) is
        # reused with its deployment id, anything else there refused: taking any existing
        # directory as done recorded no deployment and, after a run that failed at the
        # submission (no image yet), never submitted the server.
        res = write_deployment(
            ctx.registry,
            ctx.workspace,
            v["model"],
            profile,
            profile_label=ctx.workspace.cluster_profile,
        )
        if ctx.spec.deploy.submit:
            live = _serving_job(ctx, res.deployment_id)
            if live is None:
                res = submit_deployment(ctx.registry, res)
                ctx.log(f"  deployment {res.deployment_id}: {res.submission}")
            else:  # submitted by a run whose record was lost: no second server
                ctx.log(f"  deployment {res.deployment_id}: already submitted, {live}")
        out[key] = {
            "model": v["model"],
            "directory": str(res.directory),
            "deployment": res.deployment_id,
        }
        done = "reused" if res.reused else "written"
        ctx.log(f"  deployment {res.deployment_id} ({done}): {res.directory}")
    return out


def _serving_job(ctx: StageContext, deployment_id: int) -> str | None:
    """The server job of deployment ``deployment_id`` in words when one is queued or running
    (its state asked of the scheduler, ``sacct`` and ``squeue`` at most the workspace's
    ``list_sacct_timeout_s`` seconds each), else None. A row neither knows (accounting
    purged) is recorded ``LOST``; with ``sacct`` out of reach, ``squeue``, which lists every
    queued or running job, says; neither answering is a :class:`ClusterError`: the stage
    fails rather than take a server that may have ended for running."""
    with ctx.registry.session() as s:
        dep = s.get(Deployment, deployment_id)
        job_id = dep.job_id if dep is not None else None
    if job_id is None:
        return None
    wait_s = ctx.workspace.list_sacct_timeout_s
    # lost: a row left unfinished whose job Slurm forgot kept every later run from submitting
    problem = refresh_jobs_within(ctx.registry, [job_id], timeout_s=wait_s, lost=True)
    with ctx.registry.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state in FINAL_STATES:
            return None
        said = f"job {job.id} (Slurm {job.scheduler_id}, {job.state})"
        sid = job.scheduler_id
    if problem is not None and sid not in squeue_ids([sid], wait_s):
        return None  # recorded queued or running, but it has ended (sacct did not say how)
    return said


def _deploy_jobs(spec: PipelineSpec, profile: ClusterProfile) -> list[PlannedJob]:
    """With ``deploy.submit``, one serving job per task (a GPU held until its time limit)."""
    from pomlia_hpc.serve.deploy import serving_resources

    if spec.deploy is None or not spec.deploy.submit:
        return []
    res = serving_resources(profile)
    what = "serving job (serve.sbatch, runs until its time limit)"
    return [PlannedJob(what, len(spec.tasks), res, res.time_min / 60)]


def _deploy_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return all(Path(v["directory"]).is_dir() for v in out.values())


TASKS = Stage(
    name="tasks",
    needs=("data",),
    summary="register the learning tasks",
    enabled=lambda s: bool(s.tasks),
    section=lambda s: [t.model_dump(mode="json") for t in s.tasks],
    run=_run_tasks,
)

AUTOML = section_stage(
    "automl",
    needs=("tasks", "encoder", "recommend"),
    summary="an AutoML study per task; every trial a cluster job",
    run=_run_automl,
    jobs=_automl_jobs,
    still_there=_models_there,
    check=_check_automl,
)

EXPORT = section_stage(
    "export",
    needs=("automl",),
    summary="export each task's best model (ONNX + torch.export program + card)",
    run=_run_export,
    still_there=_bundles_there,
)

DEPLOY = section_stage(
    "deploy",
    needs=("export",),
    summary="write the Apptainer deployment (and submit it when asked)",
    run=_run_deploy,
    jobs=_deploy_jobs,
    still_there=_deploy_there,
)
