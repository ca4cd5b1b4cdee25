"""Torch-free option records shared by the study specification, the engine and trial jobs:
how a trial runs (:class:`EngineOptions`) and where initial weights come from
(:class:`WeightSource`). Both are stored in ``study.json`` and read back strictly."""

from __future__ import annotations

from pomlia_hpc.config import Record
from pomlia_hpc.errors import InputError


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
    study checks them when it is created, so they are not found only as each trial crashes."""
    if opt.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device '{opt.device}' is not known: expected auto, cpu or cuda")
    if opt.zero_stage not in (0, 1, 2, 3):
        raise InputError(f"zero_stage={opt.zero_stage}: expected 0, 1, 2 or 3")


class WeightSource(Record):
    """Initial weights saved for trial jobs: the file, the architecture they fit, the registry
    id and name of where they came from."""

    path: str
    arch: str
    id: int
    name: str
