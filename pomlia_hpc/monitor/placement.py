"""Where a monitoring chain's jobs run: the partition, account and QOS of the cluster profile
the chain was scheduled with. Its jobs are plain batch scripts, not executor jobs, so these
went nowhere: on a site that needs an account, or whose profile names another partition than
the cluster's default, the chain ran where the profile said it must not (or was refused).
They are recorded in the chain's settings (:data:`SETTING`), so that every later run, which a
job of the chain submits (where another profile may be in effect), asks for the same.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pomlia_hpc.config import load_cluster_profile

#: The chain's setting (``schedule.env``) with the sbatch options of its jobs, shell-quoted.
SETTING = "POMLIA_MONITOR_SBATCH_ARGS"


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
