"""What every job pomlia starts as a process gets in its environment unless the submitter's
environment sets it: local jobs (:func:`~pomlia_hpc.cluster.submitit_controller.start_controller`),
Slurm jobs submitted through submitit (:class:`~pomlia_hpc.cluster.executor.Executor`) and batch
scripts (:func:`~pomlia_hpc.cluster.batch.submission_environ`: the monitor's chain, a served
deployment). A debug job runs in the submitter's own process and gets nothing from here.
"""

from __future__ import annotations

from collections.abc import Mapping

#: torch's CPU threads (OpenMP) spin after each parallel region by default, holding their
#: cores: jobs on the same cores (local trials or extraction shards side by side, a node shared
#: by jobs) each spend most of their time spinning against the others. With passive waiting,
#: two small-CNN trainings at once on 2 cores took 13.5-14.0 s each instead of 33.5-35.5 s, and
#: one alone 7.5 s instead of 7.3 s (docs/BENCHMARKS.md, "Job threads that wait").
JOB_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def missing_job_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of :data:`JOB_ENV_DEFAULTS` that ``environ`` does not set (a value of its
    own, even an empty one, is kept), with their defaults."""
    return {k: v for k, v in JOB_ENV_DEFAULTS.items() if k not in environ}
