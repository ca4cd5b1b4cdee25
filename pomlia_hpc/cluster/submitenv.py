"""The environment ``sbatch`` runs with when pomlia submits one of its own jobs.

A pomlia job is a Python process of the submitting venv that needs the submitter's environment
(``PATH``, ``POMLIA_HOME``, the registry URL, which is never pickled): it asks for
``--export=ALL`` in its script and on its ``srun`` line. Three things of a site or of an
enclosing job would otherwise change what it gets, without a word:

- ``SBATCH_*`` variables override a script's ``#SBATCH`` lines (sbatch(1), INPUT ENVIRONMENT
  VARIABLES). ``SBATCH_EXPORT=NONE`` started every job without its environment (it failed
  with submitit's "Could not figure out which environment the job is running in"), and
  ``SBATCH_TIMELIMIT`` replaced the time limit the job's row records. For the options a job's
  script names (:func:`overridden_vars`) the site's variable is left out of the submission;
  the others (``SBATCH_PARTITION`` or ``SBATCH_ACCOUNT`` under a profile that names none)
  apply as the site meant, and so does ``SBATCH_WCKEY``: the ``--wckey=submitit`` every
  script carries is submitit's placeholder, not pomlia's choice, and a site that charges or
  enforces workload keys would refuse it (or book every job under "submitit").
- ``SLURM_EXPORT_ENV`` (srun's ``--export``) reached the job's ``srun`` line the same way.
- A command run inside a Slurm job (``salloc``, a driver job) passes that job's own
  ``SLURM_*`` variables to every job it submits, and srun reads them as options:
  ``SLURM_MEM_PER_CPU`` beside the new job's ``SLURM_MEM_PER_NODE`` is fatal ("mutually
  exclusive"), so every trial of a driver started with ``--mem-per-cpu`` failed at once.
  They are left out (:func:`inherited_job_vars`); the site's configuration (``SLURM_CONF``
  and the other names of :data:`KEPT_SLURM_VARS`) stays, and so does ``SLURM_JWT``, the
  token by which sbatch authenticates on a site that uses ``auth/jwt``: without it every
  submission failed ("Protocol authentication error"), and a driver job could submit none.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.progress import say

#: sbatch's input variables for the options every pomlia job's script names (submitit writes
#: them from :func:`~pomlia_hpc.cluster.resources.submitit_parameters`): its environment,
#: name, time limit, memory and GPUs, checkpoint signal, log files, array throttle. Not
#: ``SBATCH_WCKEY``: submitit's ``--wckey=submitit`` is a placeholder the site's key replaces.
ALWAYS_SET = (
    "SBATCH_EXPORT",
    "SBATCH_JOB_NAME",
    "SBATCH_TIMELIMIT",
    "SBATCH_MEM_PER_CPU",
    "SBATCH_MEM_PER_GPU",
    "SBATCH_MEM_PER_NODE",
    "SBATCH_GPUS_PER_NODE",
    "SBATCH_SIGNAL",
    "SBATCH_OUTPUT",
    "SBATCH_ERROR",
    "SBATCH_OPEN_MODE",
    "SBATCH_ARRAY_INX",
)

#: Profile fields that are named in a job's script only when set → sbatch's variable.
SET_BY_PROFILE = {"partition": "SBATCH_PARTITION", "account": "SBATCH_ACCOUNT", "qos": "SBATCH_QOS"}

#: ``SLURM_*`` variables that configure the Slurm commands themselves, not a job: kept.
#: ``SLURM_JWT`` is the user's token where the site authenticates with ``auth/jwt``.
KEPT_SLURM_VARS = frozenset({"SLURM_CONF", "SLURM_CLUSTERS", "SLURM_TIME_FORMAT", "SLURM_JWT"})

_noted: set[str] = set()


def overridden_vars(profile: ClusterProfile, environ: Mapping[str, str]) -> list[str]:
    """The ``SBATCH_*`` variables of ``environ`` that would override an option a job of
    ``profile`` names in its script (its own time limit, partition ...), sorted."""
    names = set(ALWAYS_SET)
    names |= {var for field, var in SET_BY_PROFILE.items() if getattr(profile, field)}
    return sorted(k for k in environ if k in names)


def inherited_job_vars(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` that srun and sbatch would read as options of a new job:
    ``SLURM_*`` (an enclosing job's allocation, or a site's ``SLURM_EXPORT_ENV``),
    ``SLURMD_*`` and ``SRUN_*``, except :data:`KEPT_SLURM_VARS`; sorted."""
    prefixes = ("SLURM_", "SLURMD_", "SRUN_")
    return sorted(k for k in environ if k.startswith(prefixes) and k not in KEPT_SLURM_VARS)


def dropped_for_submission(profile: ClusterProfile, environ: Mapping[str, str]) -> list[str]:
    """What to leave out of ``environ`` while a job of ``profile`` is submitted (nothing off
    Slurm: a local job inside an allocation keeps it). Says once per process which site
    settings (``SBATCH_*``) the job's own options replace, as a note on stderr."""
    if profile.backend != "slurm":
        return []
    site = overridden_vars(profile, environ)
    new = [f"{k}={environ[k]}" for k in site if f"{k}={environ[k]}" not in _noted]
    if new:
        _noted.update(new)
        say(
            f"note: {', '.join(new)} (set in this environment) not applied to pomlia's jobs, "
            "which name these options in their own scripts: --export=ALL (a job needs this "
            "environment), the rest from the cluster profile or the command's options",
            sys.stderr,
        )
    return [*site, *inherited_job_vars(environ)]
