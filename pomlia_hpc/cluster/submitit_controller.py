"""The local backend's job controller: submitit's own, started as ``python -m
pomlia_hpc.cluster.submitit_local FOLDER`` instead of ``python -m submitit.local._local``.

submitit's entry point lets a SIGINT through as a traceback: ``pomlia jobs cancel`` (which
sends SIGINT) or Ctrl-C on a command whose jobs run locally printed the controller's
``KeyboardInterrupt`` traceback into the submitting command's terminal. Ours
(:mod:`pomlia_hpc.cluster.submitit_local`) ends with exit status 130 and no traceback once
submitit's controller has stopped its tasks; the submitting process says what happened in one
line.

Only pomlia's own local executors start it (:func:`scope`, :class:`ControlledLocalExecutor`):
other code in the process that uses submitit's local executor keeps submitit's controller.

The module's name keeps "submitit" on the controller's command line: that is how
:func:`pomlia_hpc.cluster.records.is_local_job_process` recognises a job's controller.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from submitit import AutoExecutor
from submitit.local.local import LocalExecutor, LocalJob

from pomlia_hpc.cluster.jobenv import missing_job_defaults
from pomlia_hpc.processes import process_start_id

#: The controller's entry point (a module the package does not import, so ``-m`` runs it clean).
MODULE = "pomlia_hpc.cluster.submitit_local"

#: The start id of each controller started here, by job id (its pid), until it is recorded.
_started: dict[str, str | None] = {}


def started_id(job_id: str) -> str | None:
    """The start id (:func:`~pomlia_hpc.processes.process_start_id`) of the job process this
    process started as local job ``job_id``, once (it is forgotten then); None if unknown."""
    return _started.pop(str(job_id), None)


def start_controller(
    folder: Path,
    command: str,
    tasks_per_node: int = 1,
    cuda_devices: str = "",
    timeout_min: float = 5.0,
    signal_delay_s: int = 30,
    stderr_to_stdout: bool = False,
    setup: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """submitit 1.5's ``submitit.local.local.start_controller`` (same arguments and
    environment) running this module's controller; ``timeout_min`` in minutes,
    ``signal_delay_s`` in seconds; the job's environment also gets
    :data:`~pomlia_hpc.cluster.jobenv.JOB_ENV_DEFAULTS` where this process sets none."""
    env = {**os.environ, **missing_job_defaults(os.environ)}
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    cmd = [sys.executable, "-m", MODULE, str(folder)]
    if setup:
        proc = subprocess.Popen(" && ".join([*setup, shlex.join(cmd)]), shell=True, env=env)
    else:
        proc = subprocess.Popen(cmd, env=env)
    # Read now: our child, not reaped yet, so its pid cannot name another process already.
    _started[str(proc.pid)] = process_start_id(proc.pid)
    return proc


class ControlledLocalExecutor(LocalExecutor):
    """submitit's local executor whose jobs start this module's controller
    (:func:`start_controller`). Only pomlia's own executors are made one (:func:`scope`): a
    plain ``submitit.LocalExecutor`` elsewhere in the process keeps submitit's controller
    (``install()`` replaced submitit's module function, for every local executor in the
    process, another library's included)."""

    def _submit_command(self, command: str) -> LocalJob[Any]:
        """submitit 1.5's ``LocalExecutor._submit_command``, starting our controller."""
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        return LocalJob(
            folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks))
        )


def scope(executor: AutoExecutor) -> None:
    """Make the local ``executor`` (pomlia's own) start this module's controller; any other
    executor is left as it is. Its class changes, not submitit's module: nothing else in the
    process is touched."""
    inner = executor._executor
    if type(inner) is LocalExecutor:
        inner.__class__ = ControlledLocalExecutor  # adds behaviour only, no state
