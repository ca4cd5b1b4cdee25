"""Stage ``monitor``: the nightly monitor of each deployed model.

It computes the model's monitoring reference (the validation images as the server would log
them) and, on a Slurm profile, starts the self-resubmitting nightly chain
(``pomlia monitor schedule``; ``jobs/monitor.sbatch``). On other profiles nothing can be
scheduled: the stage records the crontab lines that run the monitor instead (the registry
as a ``POMLIA_DB_URL`` line, its password, if any, shown as ``***``: outputs and log are
readable files).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pomlia_hpc.config import ClusterProfile, load_cluster_profile
from pomlia_hpc.pipeline.spec import PipelineSpec
from pomlia_hpc.pipeline.stage import PlannedJob, StageContext, section_stage
from pomlia_hpc.pipeline.stages import register_stage


def _run(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.monitor.reference import create_reference
    from pomlia_hpc.monitor.schedule import cron_run_line, has_hidden_password, schedule
    from pomlia_hpc.serve.reference import few_images_warning

    mon = ctx.spec.monitor
    assert mon is not None
    slurm = load_cluster_profile(ctx.workspace.cluster_profile).backend == "slurm"
    out: dict[str, Any] = {}
    for key, v in ctx.outputs("deploy").items():
        model = v["model"]
        ref = create_reference(ctx.registry, model)
        ctx.log(f"  {model}: monitoring reference {ref}")
        warning = few_images_warning(ref, model)
        if warning is not None:
            ctx.log(f"  warning: {warning}")
        # The line `monitor schedule` suggests too: with the registry URL and alarm action.
        # The stage's outputs and log are files others read: the URL's password is hidden
        # there, and the log says how to give it to cron.
        cron = cron_run_line(
            ctx.workspace,
            model,
            at=mon.at,
            every=timedelta(days=1),
            window=mon.window,
            on_alarm=mon.on_alarm,
        )
        entry: dict[str, Any] = {"model": model, "reference": str(ref), "cron": cron}
        if slurm:
            res = schedule(
                ctx.registry,
                ctx.workspace,
                model,
                every="1d",
                at=mon.at,
                window=mon.window,
                on_alarm=mon.on_alarm,
                replace=True,
            )
            entry.update(job=res.job_id, begin=res.begin.isoformat(), scheduled=True)
            entry["record_id"] = res.record_id
            job = (
                f"job {res.record_id} (slurm {res.job_id})"
                if res.record_id is not None
                else f"slurm job {res.job_id}"
            )
            ctx.log(f"  {model}: nightly monitor {job}, first run {res.begin:%Y-%m-%d %H:%M}")
        else:
            entry["scheduled"] = False
            ctx.log(f"  {model}: not a Slurm profile, nothing scheduled; crontab lines:")
            for line in (cron or "(none: the period has no cron form)").splitlines():
                ctx.log(f"    {line}")
            if cron is not None and has_hidden_password(ctx.workspace):
                ctx.log(
                    "  (the registry password is shown as ***: write it into the crontab's "
                    "POMLIA_DB_URL line; not as --db-url, which every user sees in ps)"
                )
        out[key] = entry
    return out


def _jobs(spec: PipelineSpec, profile: ClusterProfile) -> list[PlannedJob]:
    from pomlia_hpc.monitor.placement import chain_job_resources

    if profile.backend != "slurm":
        return []
    resources = chain_job_resources(profile)  # its script's size, not an executor job's
    return [PlannedJob("nightly monitor (self-resubmitting)", len(spec.tasks), resources, None)]


def _still_there(ctx: StageContext, out: dict[str, Any]) -> bool:
    """Whether each model the stage scheduled still has its nightly chain, settings and a
    job queued or running: ``monitor unschedule`` (which deletes the settings) and a chain
    that ended (its queued job cancelled by hand, a run that could not submit the next one,
    a cluster whose state was wiped; ``monitor status`` says ``ended``) make the stage run
    again, which schedules it anew."""
    from pomlia_hpc.monitor.chains import chain_alive

    return all(
        chain_alive(ctx.workspace, str(v.get("model")))
        for v in out.values()
        if isinstance(v, dict) and v.get("scheduled")
    )


MONITOR = section_stage(
    "monitor",
    needs=("deploy",),
    summary="monitoring reference and the nightly monitor schedule",
    run=_run,
    jobs=_jobs,
    still_there=_still_there,
)

register_stage(MONITOR, after="deploy")
