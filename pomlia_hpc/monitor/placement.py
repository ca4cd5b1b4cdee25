"""Where a monitoring chain's jobs run: the partition, account and QOS of the cluster profile
the chain was scheduled with. Its jobs are plain batch scripts, not executor jobs, so these
went nowhere: on a site that needs an account, or whose profile names another partition than
the cluster's default, the chain ran where the profile said it must not (or was refused).
They are recorded in the chain's settings (:data:`SETTING`), so that every later run, which a
job of the chain submits (where another profile may be in effect), asks for the same.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from pomlia_hpc.config import ClusterProfile, load_cluster_profile

#: The chain's setting (``schedule.env``) with the sbatch options of its jobs, shell-quoted.
SETTING = "POMLIA_MONITOR_SBATCH_ARGS"
#: The batch script every job of a chain runs (``monitor schedule`` copies it beside the
#: chain's settings): its ``#SBATCH`` lines, not the cluster profile, size those jobs.
CHAIN_SCRIPT = Path(__file__).resolve().parents[2] / "jobs" / "monitor.sbatch"


def profile_args(profile_name: str) -> list[str]:
    """``--partition=P``, ``--account=A``, ``--qos=Q`` for the options that the cluster profile
    ``profile_name`` (a name or a YAML path) sets; none for those it leaves to the site."""
    profile = load_cluster_profile(profile_name)
    values = (("partition", profile.partition), ("account", profile.account))
    return [f"--{k}={v}" for k, v in (*values, ("qos", profile.qos)) if v]


def recorded_args(conf: Path) -> list[str]:
    """The sbatch options :data:`SETTING` of the chain's settings file ``conf`` records; none
    for settings written before it existed (their runs keep asking for nothing)."""
    try:
        text = conf.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    for line in text.splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and sep and name == SETTING:
            words = shlex.split(value)
            return shlex.split(words[0]) if words else []
    return []


def chain_sbatch() -> dict[str, str]:
    """The ``#SBATCH --key=value`` lines of :data:`CHAIN_SCRIPT`, by key (``time``: ``01:00:00``):
    what each job of a monitoring chain asks for, which its scrontab line asks for too."""
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", CHAIN_SCRIPT.read_text(), re.M))


def chain_job_resources(profile: ClusterProfile) -> ClusterProfile:
    """``profile`` as one job of a monitoring chain gets it: the CPUs, memory (GB) and time
    limit (minutes) of :data:`CHAIN_SCRIPT`'s ``#SBATCH`` lines and no GPU, where only the
    partition, account and QOS come from the profile (:func:`profile_args`). A pipeline's dry
    run showed the profile's own resources for the nightly job (8 CPUs, 1 GPU, 64 GB and
    240 min on haicore), which its script never asks for."""
    asked = chain_sbatch()
    update: dict[str, float] = {"gpus_per_node": 0, "cpus_per_task": int(asked["cpus-per-task"])}
    update |= {"mem_gb": _gigabytes(asked["mem"]), "time_min": _minutes(asked["time"])}
    return profile.model_copy(update=update)


def _gigabytes(mem: str) -> float:
    """Slurm's ``--mem`` value (``4G``, ``512M``, ``512``: megabytes without a unit) in GB."""
    units = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    unit = mem[-1].upper() if mem[-1].isalpha() else "M"
    return float(mem.rstrip("KMGTkmgt")) * units[unit]


def _minutes(limit: str) -> int:
    """Slurm's ``--time`` value (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in
    whole minutes, rounded up."""
    days, _, clock = limit.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts = [int(days) * 24 + parts[0], *parts[1:], 0, 0][:3]
    elif len(parts) < 3:  # MM or MM:SS
        parts = [0, *parts, 0][:3]
    hours, minutes, seconds = parts
    return hours * 60 + minutes + (1 if seconds else 0)
