"""The cluster layer: the only code in pomlia-hpc that knows about Slurm.

Everything that runs on the cluster is a plain Python callable submitted through an
:class:`Executor` (``local``, ``debug`` or ``slurm`` backend, chosen by a cluster profile).

The names below are imported on first use (PEP 562): ``python -m
pomlia_hpc.cluster.submitit_local``, started for every local job, imports this package first,
and importing the executor (submitit, sqlalchemy, the registry) cost it a second.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pomlia_hpc.cluster.attach import AttachedJob, poll_attached
    from pomlia_hpc.cluster.checkpoint import Checkpointable, requeue_exit
    from pomlia_hpc.cluster.distributed import (
        apply_distributed_env,
        distributed_env,
        expand_hostlist,
    )
    from pomlia_hpc.cluster.executor import Executor
    from pomlia_hpc.cluster.handle import JobFailedError, JobHandle
    from pomlia_hpc.cluster.records import refresh_slurm_jobs, sacct_states
    from pomlia_hpc.cluster.waiting import wait_all

#: Public name → the module that defines it.
_WHERE = {
    "AttachedJob": "attach",
    "poll_attached": "attach",
    "Checkpointable": "checkpoint",
    "requeue_exit": "checkpoint",
    "apply_distributed_env": "distributed",
    "distributed_env": "distributed",
    "expand_hostlist": "distributed",
    "Executor": "executor",
    "JobFailedError": "handle",
    "JobHandle": "handle",
    "wait_all": "waiting",
    "refresh_slurm_jobs": "records",
    "sacct_states": "records",
}

__all__ = [
    "AttachedJob",
    "Checkpointable",
    "Executor",
    "JobFailedError",
    "JobHandle",
    "apply_distributed_env",
    "distributed_env",
    "expand_hostlist",
    "poll_attached",
    "refresh_slurm_jobs",
    "requeue_exit",
    "sacct_states",
    "wait_all",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once: later look-ups are plain
    return value
