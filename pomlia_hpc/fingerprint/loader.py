"""Training batches streamed from Zarr dataset stores, whole chunks at a time.

Random access to single images of a chunked store would decompress a whole chunk per image, so
the stream reads whole chunks in a shuffled order and shuffles rows inside a buffer of several
chunks (like WebDataset's shuffle buffer). Every process of a data-parallel job gets exactly the
same number of batches (DeepSpeed's all-reduce would hang otherwise): the shuffled row stream of
an epoch is cut into ``world`` equal parts of whole batches, and each DataLoader worker takes a
contiguous run of batches of its process's part. Decoding and conversion to float happen in the
workers, so the training loop only runs forward/backward.

A plain stream yields float batches (B, 3, S, S). With ``with_sources=True`` it yields
:class:`dict` batches instead: ``x`` (the same floats), ``source`` (int64 (B,), the index of
each row's source, i.e. its dataset) and, with ``views=2``, ``views`` (float (2, B, 3, S, S):
two :func:`~pomlia_hpc.fingerprint.augment.acquisition_view` s of every image), which the
encoder objectives of :mod:`pomlia_hpc.fingerprint.objectives` read.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pomlia_hpc.data.store import open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.augment import acquisition_view
from pomlia_hpc.fingerprint.autoencoder import to_input


@dataclass(frozen=True)
class Source:
    """Rows [start, stop) of the store at ``path``."""

    path: str
    start: int
    stop: int


@dataclass(frozen=True)
class _Segment:
    source: int
    start: int
    stop: int


def _segments(sources: Sequence[Source]) -> list[_Segment]:
    out: list[_Segment] = []
    for i, src in enumerate(sources):
        store = open_store(src.path)
        out.extend(_Segment(i, a, b) for a, b in store.chunk_ranges(src.start, src.stop))
    return out


def steps_per_epoch(n_rows: int, batch_size: int, world: int) -> int:
    """Batches each of ``world`` processes runs per epoch (the remainder rows are skipped)."""
    return n_rows // (batch_size * world)


def check_one_batch(n_rows: int, batch_size: int, world: int, held_out: int = 0) -> None:
    """One :class:`InputError` when the ``n_rows`` training images give none of the ``world``
    processes a full batch (an epoch would train nothing); it names the CLI's options and the
    ``held_out`` rows kept for early stopping (a 2-image data set keeps 1 for training)."""
    if steps_per_epoch(n_rows, batch_size, world) == 0:
        kept = f" ({held_out} more held out for early stopping: --holdout)" if held_out else ""
        raise InputError(
            f"training set has {n_rows} images{kept}, fewer than one batch of {batch_size} per "
            f"process ({world} processes): expected at least {batch_size * world}; lower "
            f"--batch-size (or --processes{', --holdout' if held_out else ''})"
        )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Encoder input floats (N, 3, S, S) in [0, 1] back to uint8 images (N, S, S, 3)."""
    return (x * 255.0).round_().byte().permute(0, 2, 3, 1).numpy()


Batch = torch.Tensor | dict[str, torch.Tensor]
"""What a stream yields: float images, or a dict (see the module docstring)."""

_Block = tuple[torch.Tensor, np.ndarray, np.ndarray | None]


class StoreStream(IterableDataset[Batch]):
    """One epoch of shuffled batches (float32 (B, 3, S, S) in [0, 1]) for process ``rank``
    (dict batches with ``with_sources`` / ``views``, see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        batch_size: int,
        image_size: int,
        epoch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        buffer_chunks: int = 4,
        with_sources: bool = False,
        views: int = 0,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.segments = _segments(self.sources)
        self.batch_size = batch_size
        self.image_size = image_size
        self.epoch = epoch
        self.seed = seed
        self.rank = rank
        self.world = world
        self.buffer_chunks = buffer_chunks
        self.with_sources = with_sources or views > 0
        self.views = views
        self.n_rows = sum(s.stop - s.start for s in self.segments)
        self.steps = steps_per_epoch(self.n_rows, batch_size, world)

    def __len__(self) -> int:
        return self.steps

    def _order(self) -> list[_Segment]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return [self.segments[i] for i in rng.permutation(len(self.segments))]

    def _rows(self, order: list[_Segment], lo: int, hi: int) -> Iterator[_Block]:
        """Images of stream positions [lo, hi) (floats; with views also uint8 (n, S, S, 3) at
        the encoder's size) and their source indices, one whole-chunk read at a time."""
        stores = {}
        pos = 0
        for seg in order:
            n = seg.stop - seg.start
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                if seg.source not in stores:
                    stores[seg.source] = open_store(self.sources[seg.source].path)
                images = stores[seg.source].read_rows(seg.start, seg.stop)[a - pos : b - pos]
                x = to_input(images, self.image_size)
                # Views are drawn from uint8 images of one shape (3 channels, the encoder's
                # size), so chunks of gray and RGB datasets can share a batch.
                u8 = to_uint8(x) if self.views else None
                yield x, np.full(len(images), seg.source, np.int64), u8
            pos += n
            if pos >= hi:
                return

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        n_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        per_worker = -(-self.steps // n_workers)
        first = min(self.steps, worker * per_worker)
        last = min(self.steps, first + per_worker)
        base = self.rank * self.steps * self.batch_size
        lo = base + first * self.batch_size
        hi = base + last * self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        bs = self.batch_size
        buffer: list[_Block] = []
        held = 0
        want = max(
            bs, self.buffer_chunks * max((s.stop - s.start for s in self.segments), default=1)
        )
        for block in self._rows(self._order(), lo, hi):
            buffer.append(block)
            held += len(block[0])
            if held >= want:
                yield from self._drain(buffer, rng, keep_tail=True)
                held = sum(len(b[0]) for b in buffer)
        yield from self._drain(buffer, rng, keep_tail=False)

    def _batch(
        self, x: torch.Tensor, source: np.ndarray, u8: np.ndarray | None, rng: np.random.Generator
    ) -> Batch:
        if not self.with_sources:
            return x
        out: dict[str, Any] = {"x": x, "source": torch.from_numpy(source)}
        if self.views and u8 is not None:
            out["views"] = torch.stack(
                [to_input(acquisition_view(u8, rng), self.image_size) for _ in range(self.views)]
            )
        return out

    def _drain(
        self, buffer: list[_Block], rng: np.random.Generator, *, keep_tail: bool
    ) -> Iterator[Batch]:
        if not buffer:
            return
        perm = rng.permutation(sum(len(b[0]) for b in buffer))
        x = torch.cat([b[0] for b in buffer])[torch.from_numpy(perm)]
        src = np.concatenate([b[1] for b in buffer])[perm]
        u8 = (
            np.concatenate([b[2] for b in buffer if b[2] is not None])[perm] if self.views else None
        )
        bs = self.batch_size
        n_full = len(x) // bs
        # Keep half the buffer back while streaming, so rows of consecutive chunks mix.
        n_out = max(0, n_full - (n_full // 2 if keep_tail else 0))
        for i in range(n_out):
            part = slice(i * bs, (i + 1) * bs)
            yield self._batch(x[part], src[part], None if u8 is None else u8[part], rng)
        buffer.clear()
        if n_out * bs < len(x):
            rest = slice(n_out * bs, len(x))
            buffer.append((x[rest], src[rest], None if u8 is None else u8[rest]))


def _worker_init(_worker_id: int) -> None:
    # Slurm signals every process of the job step. USR2 (checkpoint before preemption or the
    # time limit) is for the training process: in a worker, submitit's inherited handler would
    # requeue the job a second time (and fail), the default action would kill the worker.
    # The worker starts with USR2 blocked (see iterate); ignore it, then unblock.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    torch.set_num_threads(1)  # workers only decode; leave the cores to the model


def iterate(loader: DataLoader[Batch]) -> Iterator[Batch]:
    """Iterate ``loader`` with its workers started while USR2 is blocked, so a checkpoint
    signal that arrives while they start is handled by this process, not by a worker."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        it = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    yield from it


def make_loader(stream: StoreStream, num_workers: int) -> DataLoader[Batch]:
    """A DataLoader over ``stream`` that decodes in ``num_workers`` processes and prefetches."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
