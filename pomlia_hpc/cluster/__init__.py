"""The cluster layer: the only code in pomlia-hpc that knows about Slurm.

Everything that runs on the cluster is a plain Python callable submitted through an
:class:`Executor` (``local``, ``debug`` or ``slurm`` backend, chosen by a cluster profile).
"""

from pomlia_hpc.cluster.attach import AttachedJob, poll_attached
from pomlia_hpc.cluster.checkpoint import Checkpointable, requeue_exit
from pomlia_hpc.cluster.distributed import apply_distributed_env, distributed_env, expand_hostlist
from pomlia_hpc.cluster.executor import Executor, JobFailedError, JobHandle, wait_all
from pomlia_hpc.cluster.records import refresh_slurm_jobs, sacct_states

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
