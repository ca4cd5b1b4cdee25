"""Torch-free option records shared by the study specification, the engine and trial jobs:
how a trial runs (:class:`EngineOptions`) and where initial weights come from
(:class:`WeightSource`). Both are stored in ``study.json`` and read back strictly."""

from __future__ import annotations

from pomlia_hpc.config import Record
from pomlia_hpc.errors import InputError

#: The devices a trial can train on (``auto``: CUDA when the trial's job sees a GPU).
DEVICES = ("auto", "cpu", "cuda")
#: DeepSpeed's ZeRO stages.
ZERO_STAGES = (0, 1, 2, 3)


class EngineOptions(Record):
    """How to run (not what to learn). ``device``: ``auto`` (CUDA when present), ``cpu`` or
    ``cuda``; ``bf16``: ``None`` = on for CUDA, off on CPU (3-4x slower there without AMX);
    ``threads``: torch CPU threads (the job's CPUs; ``None`` leaves torch's default)."""

    zero_stage: int = 0
    bf16: bool | None = None
    device: str = "auto"
    threads: int | None = None
    eval_batch_size: int = 256
    seed: int = 0


def check_engine_options(opt: EngineOptions) -> None:
    """One :class:`InputError` for a device or DeepSpeed ZeRO stage no trial can run with: a
    study checks them when it is created, so they are not found only as each trial crashes.
    The message names the option of ``pomlia automl run`` that sets it (the only way to)."""
    if opt.device not in DEVICES:
        raise InputError(
            f"--device {opt.device!r}: not a device; expected {', '.join(DEVICES[:-1])} or "
            f"{DEVICES[-1]}"
        )
    if opt.zero_stage not in ZERO_STAGES:
        raise InputError(
            f"--zero-stage {opt.zero_stage}: not a DeepSpeed ZeRO stage; expected 0, 1, 2 or 3"
        )


class WeightSource(Record):
    """Initial weights saved for trial jobs: the file, the architecture they fit, the registry
    id and name of where they came from."""

    path: str
    arch: str
    id: int
    name: str
