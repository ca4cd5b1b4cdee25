"""The shared vocabulary: task types, task metrics, run statuses and job states (no torch, no
registry).

Every room that stores, compares or prints one of these words takes it from here, so there is
one list of each. The enums are :class:`~enum.StrEnum`: a member compares equal to its string,
but the functions that produce values for files and database rows return plain ``str`` (YAML's
safe dumper and some database drivers refuse ``str`` subclasses).

Task types have two spellings: ours (``multi-class``, ``binary``, ``multi-label``, ``ordinal``)
and MedMNIST's (``binary-class``, ``multi-label, binary-class``, ``ordinal-regression``), which
dataset stores keep in their metadata and MedMNIST's evaluator expects. Both are accepted.
"""

from __future__ import annotations

from enum import StrEnum

from pomlia_hpc.errors import InputError


class TaskType(StrEnum):
    """What a classifier predicts, in our spelling."""

    MULTI_CLASS = "multi-class"
    BINARY = "binary"
    MULTI_LABEL = "multi-label"  # one sigmoid per label (e.g. ChestMNIST)
    ORDINAL = "ordinal"  # served and evaluated like multi-class

    @property
    def medmnist(self) -> str:
        """MedMNIST's spelling of this task type."""
        return _MEDMNIST[self]


_MEDMNIST = {
    TaskType.MULTI_CLASS: "multi-class",
    TaskType.BINARY: "binary-class",
    TaskType.MULTI_LABEL: "multi-label, binary-class",
    TaskType.ORDINAL: "ordinal-regression",
}

#: Our task type names, in a fixed order (for messages and ``--help``).
TASK_TYPES: tuple[str, ...] = tuple(t.value for t in TaskType)
#: MedMNIST's task type names, the spelling dataset stores keep.
MEDMNIST_TASK_TYPES: tuple[str, ...] = tuple(_MEDMNIST[t] for t in TaskType)

_ALIASES = {
    "multiclass": TaskType.MULTI_CLASS,
    "binary-class": TaskType.BINARY,
    "multi-label, binary-class": TaskType.MULTI_LABEL,
    "multilabel": TaskType.MULTI_LABEL,
    "ordinal-regression": TaskType.ORDINAL,
}


#: Every spelling :func:`normalize_task_type` takes (in any case): ours, then the aliases.
TASK_TYPE_SPELLINGS: tuple[str, ...] = (*TASK_TYPES, *_ALIASES)


def task_type_choices() -> str:
    """:data:`TASK_TYPE_SPELLINGS` for ``--help`` and messages, one that holds a comma quoted:
    ``multi-class, binary, ..., 'multi-label, binary-class', ... (any case)``."""
    shown = (f"'{t}'" if "," in t else t for t in TASK_TYPE_SPELLINGS)
    return f"{', '.join(shown)} (any case)"


def normalize_task_type(task_type: str) -> str:
    """Map a task type (ours or MedMNIST's spelling, any case) to one of :data:`TASK_TYPES`;
    :class:`InputError` for anything else."""
    key = task_type.strip().lower()
    found = _ALIASES.get(key)
    if found is None and key in TASK_TYPES:
        found = TaskType(key)
    if found is None:
        raise InputError(
            f"task type '{task_type}' is not supported; expected one of: {task_type_choices()}"
        )
    return found.value


def medmnist_task(task_type: str) -> str:
    """MedMNIST's spelling of ``task_type`` (any spelling :func:`normalize_task_type` knows)."""
    return TaskType(normalize_task_type(task_type)).medmnist


#: Metric names a task may optimise (all: higher is better, in [0, 1]); computed by
#: :mod:`pomlia_hpc.automl.metrics`.
METRICS: tuple[str, ...] = ("acc", "auc", "f1_macro")

#: A multi-label model predicts a label when its sigmoid is strictly above this (MedMNIST's
#: ACC; a logit > 0): the task's metrics, the gate, the server's answer and the monitoring
#: reference all use it, so an output of exactly 0.5 is "absent" everywhere.
MULTI_LABEL_THRESHOLD = 0.5


def check_metric(metric: str) -> str:
    """``metric`` as :data:`METRICS` spells it, in any case (``ACC``, as the published tables
    write it, is ``acc``: `strategy import` read it so, and `task add` refused it), else an
    :class:`InputError`."""
    key = metric.strip().lower()
    if key not in METRICS:
        raise InputError(
            f"metric '{metric}' is not known: expected one of {', '.join(METRICS)} (any case)"
        )
    return key


class RunStatus(StrEnum):
    """The ``status`` of a registry ``Run`` (an AutoML trial)."""

    PENDING = "pending"  # created, not yet submitted
    RUNNING = "running"  # submitted to the scheduler
    OK = "ok"  # finished with a result
    CRASHED = "crashed"  # ended without a result; the run's ``metrics.cause`` says why
    SUBMIT_FAILED = "submit_failed"  # the scheduler refused the job; a resumed study retries
    # Its job was cancelled (scancel, `pomlia jobs cancel`, or with its study's driver): not a
    # failure of its configuration; ``metrics.cause`` says how. A resumed study whose optimiser
    # was not told yet submits it again (it continues from its last checkpoint).
    CANCELLED = "cancelled"


class JobState(StrEnum):
    """A job's scheduler state as the registry's ``Job.state`` stores it (Slurm's names; the
    local backend maps its states onto these)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    INTERRUPTED = "INTERRUPTED"
    PREEMPTED = "PREEMPTED"
    # Not Slurm's: neither squeue nor sacct knows the job any more (purged from accounting);
    # it ran at some point and cannot be running now, so it counts as ended.
    LOST = "LOST"
    UNKNOWN = "UNKNOWN"


#: States after which a job will not run again (unless Slurm requeues it, see below).
FINAL_STATES: frozenset[str] = frozenset(
    s.value
    for s in (
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.INTERRUPTED,
        # The last attempt: a requeued job shows a later PENDING/RUNNING attempt.
        JobState.PREEMPTED,
        JobState.LOST,
    )
)

#: Final states after which Slurm may still requeue the job (``--requeue`` after a node failure
#: or a preemption).
REQUEUABLE_STATES: frozenset[str] = frozenset({JobState.NODE_FAIL.value, JobState.PREEMPTED.value})
