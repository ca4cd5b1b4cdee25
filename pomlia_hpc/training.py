"""One DeepSpeed training harness, shared by the fingerprint encoder
(:mod:`pomlia_hpc.fingerprint.train`) and the AutoML classifier (:mod:`pomlia_hpc.automl.engine`).

What both trainings need, and what they differ in:

- :func:`initialize`: the DeepSpeed engine from a model and an optimizer (ZeRO stage, bf16),
  with the bf16 cast of floating-point buffers that DeepSpeed leaves out (BatchNorm's running
  statistics: batch norm refuses bf16 weights with fp32 statistics, on CPU and CUDA alike).
- :class:`EpochCheckpoints`: after every epoch, every rank saves its DeepSpeed checkpoint under
  a tag, and then rank 0 points a small state record (an :class:`EpochState`: the epoch, the
  tag, and what the training wants to carry over) at it by atomic rename, and removes older
  tags. A restarted job (Slurm requeue after preemption or a time limit, or the same command run
  again) restores the engine from the tag the record names and continues with the next epoch;
  a crash between the two steps leaves the previous record, which still names a whole
  checkpoint.

The epoch loop itself stays with each training (the encoder streams from stores and stops
early; the classifier freezes and unfreezes parts); each runs
``for epoch in range(state.epoch, epochs)`` between :meth:`EpochCheckpoints.restore` and
:meth:`EpochCheckpoints.save` / :meth:`EpochCheckpoints.commit`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from pomlia_hpc.config import Record, read_record
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic, write_json_atomic
from pomlia_hpc.progress import say
from pomlia_hpc.storage import storage_error


class EpochState(Record):
    """The record that names the last complete epoch checkpoint (``epoch`` epochs done, saved
    under ``tag``). Trainings subclass it with what they carry across a restart."""

    epoch: int
    tag: str


_S = TypeVar("_S", bound=EpochState)


def deepspeed_config(
    batch_size: int, *, zero_stage: int, bf16: bool, world: int = 1
) -> dict[str, Any]:
    """The DeepSpeed configuration of one training process: ``batch_size`` images per step
    and process, ZeRO ``zero_stage`` (any optimizer), bf16 or fp32, no periodic prints."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": batch_size * world,
        "zero_optimization": {"stage": zero_stage},
        # ZeRO only "tests" Adam-family optimisers; others partition the same way.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def cast_buffers(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module``'s floating-point buffers to ``dtype`` (DeepSpeed casts parameters only)."""
    for buf in module.buffers():
        if buf.is_floating_point():
            buf.data = buf.data.to(dtype)


def use_interpreter_extension_cache(environ: MutableMapping[str, str] | None = None) -> Path:
    """Point torch's JIT extension cache (``TORCH_EXTENSIONS_DIR`` in ``environ``, by default
    ``os.environ``, which the jobs this process starts inherit) at a folder of this Python
    environment's own, unless it is already set; returns the folder in use.

    DeepSpeed compiles its CPU communication op into the cache on first use (~30 s). The default
    cache is one folder per op for the whole user, and the build depends on the environment's
    path, so jobs started from two environments (two checkouts' venvs, a symlinked venv) rebuild
    the op in turn on every start: 75-95 s instead of 8-10 s for a one-epoch trial, measured
    (docs/BENCHMARKS.md, the registry grid). One folder per ``sys.prefix`` builds once each.
    """
    env = os.environ if environ is None else environ
    if "TORCH_EXTENSIONS_DIR" not in env:
        cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
        env["TORCH_EXTENSIONS_DIR"] = str(cache / "torch_extensions" / f"env-{tag}")
    return Path(env["TORCH_EXTENSIONS_DIR"])


def resume_note(epoch: int, checkpoint: str | Path, attempt: int) -> str:
    """What a training job's log says of where it starts, for the encoder and a trial alike:
    ``resumed from epoch 4 (checkpoint PATH, attempt 2)``; after a requeue that came before
    any epoch was saved ``attempt 2, no epoch checkpointed yet: from epoch 0``; ``""`` for a
    first attempt from scratch. ``attempt``: 1 + Slurm's restart count of the job."""
    if epoch > 0:
        return f"resumed from epoch {epoch} (checkpoint {checkpoint}, attempt {attempt})"
    if attempt > 1:
        return f"attempt {attempt}, no epoch checkpointed yet: from epoch 0"
    return ""


#: Seconds between two lines of a DeepSpeed op build (or a wait for another job's build).
BUILD_NOTE_EVERY_S = 30.0


def build_communication_op() -> Path:
    """Build DeepSpeed's CPU communication op (``deepspeed_shm_comm``) into this environment's
    extension cache (:func:`use_interpreter_extension_cache`) now, as the first training job
    would; returns the cache folder. Quick when it is built already; nothing is built where
    DeepSpeed does not use the op (an accelerator without it).

    The build takes about a minute of CPU, once per environment, and every other DeepSpeed job
    started meanwhile waits on its lock: ``.ci/run`` builds it beside the lint, so that the test
    suite's first training job does not (measured: 61 s of CPU, 157 s at a load of 5)."""
    folder = use_interpreter_extension_cache()
    import deepspeed  # heavy import: only where a training or this build is asked for
    from deepspeed.accelerator import get_accelerator

    announce_op_builds()
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)
    return folder


def announce_op_builds() -> None:
    """Make DeepSpeed's JIT op builds say so in the job's log (idempotent): a time-stamped line
    before an op is built into this environment's cache (first use), and every
    :data:`BUILD_NOTE_EVERY_S` seconds while the build, or the wait for another job's build
    of it (torch's ``lock`` file in the op's folder), goes on. A trial spent minutes with no
    line between its start and DeepSpeed's "built successfully", another >4 min waiting on
    the same folder's lock, silently."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    original = OpBuilder.jit_load
    if getattr(original, "announced", False):
        return

    def jit_load(self: Any, verbose: bool = True) -> Any:
        folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "")) / str(self.name)
        if not os.environ.get("TORCH_EXTENSIONS_DIR") or any(folder.glob("*.so")):
            return original(self, verbose)  # built already (or not our cache): quick
        say(
            f"building DeepSpeed op {self.name} (first use in this environment, may take "
            f"minutes) in {folder}"
        )
        done, t0 = threading.Event(), time.monotonic()

        def beat() -> None:
            while not done.wait(BUILD_NOTE_EVERY_S):
                lock = folder / "lock"
                what = f"waiting for the build lock {lock}" if lock.exists() else "building"
                say(f"DeepSpeed op {self.name}: still {what}, {time.monotonic() - t0:.0f} s")

        thread = threading.Thread(target=beat, name="op-build-note", daemon=True)
        thread.start()
        try:
            return original(self, verbose)
        finally:
            done.set()
            thread.join()

    jit_load.announced = True  # type: ignore[attr-defined]
    OpBuilder.jit_load = jit_load


def initialize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    zero_stage: int,
    bf16: bool,
    world: int = 1,
) -> Any:
    """The DeepSpeed engine of ``model`` trained with ``optimizer`` (the environment's RANK,
    WORLD_SIZE, ... already set). With ``bf16`` the floating-point buffers are cast to bf16
    too: DeepSpeed casts only the parameters, and batch norm refuses bf16 weights with fp32
    running statistics on the CPU and on CUDA alike (every AutoML trial crashed with
    "Expected running_mean to have type BFloat16" on an H200 while only the CPU cast them)."""
    use_interpreter_extension_cache()
    import deepspeed  # heavy import: only inside training jobs

    announce_op_builds()
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(batch_size, zero_stage=zero_stage, bf16=bf16, world=world),
    )
    if bf16:
        cast_buffers(engine.module, torch.bfloat16)
    return engine


def write_through_python(engine: Any) -> None:
    """Make ``engine``'s DeepSpeed checkpoint files be written through a Python file object,
    each whole or not at all (:func:`pomlia_hpc.files.write_atomic`); idempotent. DeepSpeed
    hands torch a path, and torch's C++ writer then reports a full disk or quota as "unexpected
    pos 61990464 vs 61990352", without the errno, and leaves the cut file: a training stopped
    with "internal error" and no word of the disk. Python's own write raises the ``OSError``
    that :func:`pomlia_hpc.storage.storage_error` names. DeepSpeed's own save still serialises
    (its format settings), given the open file instead of the path."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    writer: Any = getattr(engine, "checkpoint_engine", None)
    if type(writer) is not TorchCheckpointEngine or getattr(writer, "python_writes", False):
        return  # another engine (Nebula, decoupled): its own writes
    serialise = writer.save

    def save(state_dict: Any, path: str) -> None:
        write_atomic(path, lambda fh: serialise(state_dict, fh))

    writer.save = save
    writer.python_writes = True


class EpochCheckpoints(Generic[_S]):
    """The epoch checkpoints of one training in ``folder``: DeepSpeed tags under
    ``folder/subdir``, the state record ``folder/record`` (an ``state_type``)."""

    def __init__(
        self,
        folder: str | Path,
        state_type: type[_S],
        *,
        record: str,
        subdir: str,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.folder = Path(folder)
        self.state_type = state_type
        self.record = self.folder / record
        self.dir = self.folder / subdir
        self.rank, self.world = rank, world

    def read(self) -> _S | None:
        """The state record (None: no epoch finished yet); a damaged one is one error line."""
        return read_record(self.state_type, self.record) if self.record.is_file() else None

    def resume_point(self) -> _S | None:
        """The state record when the checkpoint it names is on disk: where the training goes
        on. None when no epoch finished, or when the checkpoint was removed since (a finished
        study or a registered encoder drops them): the training then starts from scratch,
        its record rewritten from epoch 1, rather than fail in DeepSpeed's loader on a
        missing file or count the dropped epochs as trained."""
        state = self.read()
        if state is None or not (self.dir / state.tag).is_dir():
            return None
        return state

    def restore(self, engine: Any) -> _S | None:
        """Load the engine (weights and optimizer) from the checkpoint of
        :meth:`resume_point`; that record, or None when training starts from scratch."""
        state = self.resume_point()
        if state is not None:
            path, _client = engine.load_checkpoint(
                str(self.dir),
                tag=state.tag,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if path is None:
                raise InputError(f"checkpoint '{self.dir / state.tag}' could not be loaded")
        return state

    def save(self, engine: Any, epoch: int, tag: str) -> None:
        """Every rank: save the engine after ``epoch`` epochs under ``tag`` and wait for the
        others (the record is written only once every rank's part is on disk)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_through_python(engine)
        try:
            engine.save_checkpoint(
                str(self.dir), tag=tag, client_state={"epoch": epoch}, save_latest=False
            )
        except BaseException as exc:
            # Part of this epoch's checkpoint may be written (a full disk, a signal): removed,
            # so that no folder looks like a checkpoint that is not whole; the record still
            # names the previous epoch's, which stays.
            shutil.rmtree(self.dir / tag, ignore_errors=True)
            full = storage_error(self.dir / tag, exc, kept=False)
            if full is not None and full is not exc:
                raise full from exc
            raise
        if self.world > 1:
            torch.distributed.barrier()

    def commit(self, state: _S, keep: Iterable[str] = ()) -> None:
        """Rank 0: point the record at ``state.tag`` (atomic rename), then remove the tags
        other than it and ``keep``."""
        if self.rank != 0:
            return
        write_json_atomic(self.record, state.to_dict(), indent=None)
        kept = {state.tag, *keep}
        for old in self.dir.glob("epoch-*"):
            if old.is_dir() and old.name not in kept:
                shutil.rmtree(old, ignore_errors=True)
