"""torch.distributed / DeepSpeed environment derived from Slurm's variables.

DeepSpeed on CPU (gloo) needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without
them it goes looking for MPI. Under Slurm they follow from SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID and the first host of SLURM_JOB_NODELIST; outside Slurm we run one process.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

_PORT_BASE = 20000
_PORT_SPAN = 20000


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,07],cpu5`` into host names."""
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist):
        m = re.fullmatch(r"(.*?)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            lo, _, hi = rng.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    return hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distributed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT a process should use.

    Under torchrun (``TORCHELASTIC_RUN_ID`` set) the launcher's values win. Otherwise values
    merely inherited from a parent process are ignored: a submitting process that trained
    in-process may still listen on its MASTER_PORT, and every job it starts would collide on it.
    Under Slurm the port is derived from the job id so that all tasks of a job agree on it.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    # A local submitit job started inside a Slurm allocation (salloc, an interactive job)
    # inherits SLURM_* from the shell, though it is one process of its own: all such jobs would
    # take the same rank and port. submitit marks its local jobs with SUBMITIT_EXECUTOR=local.
    in_slurm_task = env.get("SUBMITIT_EXECUTOR") != "local"
    if in_slurm_task and "SLURM_JOB_ID" in env and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        out = {
            "RANK": env["SLURM_PROCID"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
            "MASTER_ADDR": expand_hostlist(nodelist)[0],
            "MASTER_PORT": str(_PORT_BASE + int(env["SLURM_JOB_ID"]) % _PORT_SPAN),
        }
    else:
        out = {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
        }
    if "TORCHELASTIC_RUN_ID" in env:
        for key in out:
            if key in env:
                out[key] = env[key]
    return out


def apply_distributed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the variables of :func:`distributed_env` in ``os.environ`` (or ``environ``)."""
    target = os.environ if environ is None else environ
    values = distributed_env(target)
    target.update(values)
    return values
