"""A Slurm command that could not reach its daemon, told apart from one that was refused.

``sbatch``, ``squeue`` and ``scancel`` talk to the controller (slurmctld), ``sacct`` to the
accounting daemon (slurmdbd). When that daemon is down, restarting or out of reach they fail
with words of their own (``Unable to contact slurm controller (connect failure)``, ``Problem
talking to the database: Connection refused``), after retrying for some seconds. That is not
bad input: :func:`slurm_failure` makes it a
:class:`~pomlia_hpc.errors.SlurmUnavailableError` (exit 69, "service unavailable",
``docs/guide/README.md``) whose one line names the daemon and its address from
``slurm.conf``, so a script or a cron line retries on the status alone. Any other failure
stays the caller's :class:`~pomlia_hpc.errors.ClusterError` (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from pomlia_hpc.errors import ClusterError, SlurmUnavailableError

#: Words (lower case) of Slurm's client commands when the daemon did not answer: refused,
#: timed out, or a connection that broke. A refusal by a daemon that answered (a bad option,
#: an unknown partition, an invalid job id) says none of them.
OUT_OF_REACH_WORDS = (
    "unable to contact slurm controller",
    "problem talking to the database",
    "slurm_persist_conn_open",
    "connection refused",
    "connection timed out",
    "socket timed out",
    "no route to host",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "transport endpoint is not connected",
)

#: Where the client commands read the cluster's configuration when ``SLURM_CONF`` is unset
#: (the Debian and Slurm build default).
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")

#: The daemons' ports when ``slurm.conf`` names none (Slurm's built-in values).
CONTROLLER_PORT, ACCOUNTING_PORT = "6817", "6819"


def out_of_reach(text: str) -> bool:
    """Whether a Slurm command's message ``text`` (its stderr) says its daemon did not
    answer, rather than that it refused the request."""
    low = text.lower()
    return any(words in low for words in OUT_OF_REACH_WORDS)


def _conf_values(path: Path) -> dict[str, str]:
    """The first value of each key of ``slurm.conf`` at ``path`` (keys lower-cased; comments
    and ``Include`` lines skipped); empty when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        words = value.split()
        if sep and key.strip():
            values.setdefault(key.strip().lower(), words[0] if words else "")
    return values


def daemon_address(command: str) -> str:
    """The daemon ``command`` talks to, in words with its address as ``slurm.conf`` gives it:
    ``the Slurm controller (slurmctld at vm(127.0.0.1):6817)``, or for ``sacct`` ``Slurm's
    accounting daemon (slurmdbd at 127.0.0.1:6819)``; without the address when the file
    cannot be read (then its path is named)."""
    path = Path(os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    conf = _conf_values(path)
    if command == "sacct" and "slurmdbd" in conf.get("accountingstoragetype", "slurmdbd"):
        host = conf.get("accountingstoragehost")
        port = conf.get("accountingstorageport") or ACCOUNTING_PORT
        where = f" at {host}:{port}" if host else ""
        return f"Slurm's accounting daemon (slurmdbd{where}, from {path})"
    # SlurmctldHost (ControlMachine before Slurm 18.08): the first is the primary controller
    host = conf.get("slurmctldhost") or conf.get("controlmachine")
    port = conf.get("slurmctldport") or CONTROLLER_PORT
    where = f" at {host}:{port}" if host else ""
    return f"the Slurm controller (slurmctld{where}, from {path})"


#: How :func:`unreachable_error` ends: advice for a command that failed, not for one that went
#: on without the daemon (which drops it: ``str.removesuffix``).
RETRY = "; the same command works once it answers again"


def unreachable_error(command: str, text: str) -> SlurmUnavailableError:
    """The one-line error for ``command`` (``sbatch``, ``squeue``, ``sacct``, ``scancel``)
    whose daemon did not answer; ``text``: what the command said (its stderr, of which the
    last line is quoted: the earlier ones are the retries that led to it) or how long it was
    waited for."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    said = lines[-1] if lines else "no message"
    return SlurmUnavailableError(
        f"{command}: {daemon_address(command)} did not answer ({said}){RETRY}"
    )


def timed_out(command: str, seconds: float) -> SlurmUnavailableError:
    """The one-line error for ``command`` that gave no answer within ``seconds`` (an
    overloaded or restarting daemon): a service that did not answer, as a refused connection
    is, named with its address as :func:`unreachable_error` names it (``sacct: Slurm's
    accounting daemon (slurmdbd at 127.0.0.1:6819, from /etc/slurm/slurm.conf) did not
    answer within 15 s``), so that the line says where to look."""
    return SlurmUnavailableError(
        f"{command}: {daemon_address(command)} did not answer within {seconds:g} s"
    )


def slurm_failure(command: str, text: str, refused: str, then: str = "") -> ClusterError:
    """The error of ``command`` failing with message ``text`` (its stderr):
    :func:`unreachable_error` when its daemon did not answer, else a
    :class:`~pomlia_hpc.errors.ClusterError` ``<refused>: <text in one line><then>``."""
    if out_of_reach(text):
        return unreachable_error(command, text)
    return ClusterError(f"{refused}: {' '.join(text.split())}{then}")


def failure_kind(cause: BaseException) -> type[ClusterError]:
    """The class of an error that a failure ``cause`` leads to: a daemon out of reach stays
    one (:class:`~pomlia_hpc.errors.SlurmUnavailableError`, exit 69: the same command works
    later), anything else is a :class:`~pomlia_hpc.errors.ClusterError`."""
    return SlurmUnavailableError if isinstance(cause, SlurmUnavailableError) else ClusterError
