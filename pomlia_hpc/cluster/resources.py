"""Resource profiles → submitit parameters, in one place.

A :class:`~pomlia_hpc.config.ClusterProfile` says what a cluster offers and what a job gets by
default; a job may override single keys (``cpus_per_task=4``). Unknown keys are rejected with
the list of valid ones, so ``gpu=1`` instead of ``gpus_per_node=1`` never silently runs on CPU.
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.config import ClusterProfile, validate_model
from pomlia_hpc.errors import ConfigError, InputError

#: Keys a single job may override.
JOB_RESOURCE_KEYS = ("cpus_per_task", "gpus_per_node", "mem_gb", "time_min", "partition", "qos")


def with_overrides(profile: ClusterProfile, overrides: dict[str, Any] | None) -> ClusterProfile:
    """Return ``profile`` with per-job ``overrides`` applied (validated)."""
    if not overrides:
        return profile
    unknown = sorted(set(overrides) - set(JOB_RESOURCE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown resource key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(JOB_RESOURCE_KEYS)}"
        )
    data = profile.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_model(ClusterProfile, data, "job resources")


def submitit_parameters(profile: ClusterProfile, *, name: str) -> dict[str, Any]:
    """Parameters for ``submitit.AutoExecutor.update_parameters`` from a profile."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": profile.time_min,
        "cpus_per_task": profile.cpus_per_task,
        "gpus_per_node": profile.gpus_per_node,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if profile.backend == "slurm":
        params["mem_gb"] = profile.mem_gb
        params["slurm_signal_delay_s"] = profile.signal_delay_s
        params["slurm_array_parallelism"] = profile.max_parallel
        if profile.partition:
            params["slurm_partition"] = profile.partition
        if profile.account:
            params["slurm_account"] = profile.account
        if profile.qos:
            params["slurm_qos"] = profile.qos
        if profile.setup:
            params["slurm_setup"] = list(profile.setup)
        # The job's srun gets the batch step's whole environment too, whatever the
        # SLURM_EXPORT_ENV that reached the batch step (see cluster.submitenv).
        params["slurm_srun_args"] = ["--export=ALL"]
        params.update(additional_parameters())
    return params


def additional_parameters(**options: str) -> dict[str, Any]:
    """submitit's ``slurm_additional_parameters`` (``#SBATCH`` lines it has no name for):
    ``--export=ALL`` and ``options``. One place builds them, as each update of that
    parameter replaces the previous one whole. ``--export=ALL``: a pomlia job needs the
    submitter's environment (venv, workspace, registry URL), also where a site sets
    ``SBATCH_EXPORT=NONE`` (which ``cluster.submitenv`` keeps from overriding this line)."""
    return {"slurm_additional_parameters": {"export": "ALL", **options}}


def after_ok_parameters(profile: ClusterProfile, job_ids: list[str]) -> dict[str, Any]:
    """submitit parameters that start a job only after ``job_ids`` all COMPLETED, and make
    Slurm cancel it if one of them fails (instead of leaving it pending forever)."""
    if profile.backend != "slurm":
        raise ConfigError(f"job dependencies need the slurm backend, not '{profile.backend}'")
    deps = {"dependency": f"afterok:{':'.join(job_ids)}", "kill-on-invalid-dep": "yes"}
    return additional_parameters(**deps)


def check_local_gpus(profile: ClusterProfile, *, cuda: bool = False, what: str = "the job") -> None:
    """Refuse, before anything is submitted, GPUs that a job of a ``local`` or ``debug``
    profile would not get: ``profile.gpus_per_node`` (overrides applied) more than this
    machine has, or ``cuda`` (the job will ask torch for a CUDA device) while the job gets
    none. Such a job ran on the CPU without a word, or crashed and was recorded as a failed
    run. A Slurm profile's GPUs are on the compute node, not here: only ``cuda`` for a job
    that asks Slurm for no GPU is refused (every such job crashed seconds after it started).
    ``what``: names the job in the message (e.g. ``--device cuda``)."""
    if profile.backend == "slurm":
        if cuda and profile.gpus_per_node == 0:
            raise InputError(
                f"{what}: the job asks Slurm for no GPU (the profile's gpus_per_node is 0), "
                "so it would see no CUDA device: add --gpus 1, use a profile with GPUs "
                "(--executor/--cluster PROFILE), or use --device cpu or auto"
            )
        return
    if not cuda and profile.gpus_per_node == 0:
        return
    import torch  # only here: a job that asks for no GPU must not pay for loading torch

    here = torch.cuda.device_count()
    wanted = max(profile.gpus_per_node, 1)
    if here < wanted:
        no_gpu = "--device cpu or auto" if cuda else "--gpus 0"
        raise InputError(
            f"{what}: {wanted} GPU(s) asked for, but torch sees {here} on this machine, where "
            f"the '{profile.backend}' executor runs its jobs; ask for no GPU ({no_gpu}), or "
            "run on a Slurm profile (--cluster PROFILE)"
        )
    if cuda and profile.backend == "local" and profile.gpus_per_node == 0:
        # submitit's local executor sets CUDA_VISIBLE_DEVICES to the GPUs a job asked for.
        raise InputError(
            f"{what}: a job of the local executor sees only the GPUs it asks for, and it "
            "asks for none: add --gpus 1, or use --device cpu or auto"
        )
