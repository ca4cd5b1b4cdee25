"""Training curves as TensorBoard event files, beside each training's checkpoints.

Every training writes one scalar per metric and epoch (loss, learning rate, validation
metrics, seconds) through :class:`Curves`, used by the encoder training
(``<home>/models/encoders/<name>/tensorboard/``) and by every AutoML trial
(``<home>/runs/<study>/configs/<config>/tensorboard/``). TensorBoard finds every event file
below the folder it is given, so one command shows a whole study (each trial one run)::

    tensorboard --logdir <home>/runs/<study>
    tensorboard --logdir <home>                 # everything: encoders and studies

A resumed training appends a new event file to the same folder, which starts with a restart
mark at the first epoch it writes (``first_step``): TensorBoard then hides what the earlier
files hold from that epoch on (an epoch logged, then preempted before its checkpoint, is
trained and logged again), so it shows each epoch once, the newest value. Writing is best
effort: a failure to write curves (full disk, read-only folder) is logged and never fails the
training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("pomlia.curves")

#: Sub-folder of a training's folder that holds its event files.
CURVES_DIR = "tensorboard"


class Curves:
    """An event-file writer for one training run (``with Curves(folder) as c: c.epoch(...)``).

    ``enabled=False`` (e.g. on ranks other than 0) makes every call a no-op. ``first_step``:
    the first epoch (1-based) this writer writes; a training passes it at every start, the
    first included (TensorBoard takes the first restart mark it reads for the start itself).
    """

    def __init__(
        self, folder: str | Path, *, enabled: bool = True, first_step: int | None = None
    ) -> None:
        self.folder = Path(folder)
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            # purge_step: a SessionLog START at that step, which TensorBoard reads as a
            # restart that drops the values of steps >= it that earlier files logged. Without
            # it a resumed training's repeated epoch showed twice (two values at one step).
            self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=first_step)
        except Exception as exc:  # missing package, unwritable folder: curves are optional
            log.warning("training curves not written to %s: %s", self.folder, exc)

    @property
    def active(self) -> bool:
        """Whether anything is written (enabled, and the writer could be created)."""
        return self._writer is not None

    def epoch(self, epoch: int, scalars: Mapping[str, float | None]) -> None:
        """Record ``scalars`` (name -> value; None and NaN are skipped) at step ``epoch``
        (1-based) and flush, so the curves are readable while training runs."""
        if self._writer is None:
            return
        try:
            for name, value in scalars.items():
                if value is not None and math.isfinite(float(value)):
                    self._writer.add_scalar(name, float(value), global_step=epoch)
            self._writer.flush()
        except Exception as exc:
            log.warning("training curves not written to %s: %s", self.folder, exc)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                log.warning("training curves not closed in %s: %s", self.folder, exc)
            self._writer = None

    def __enter__(self) -> Curves:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_curves(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``: tag -> [(step, value)] by step, the
    newest value of a repeated step kept (for tests and reports)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, tuple[float, float]]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                old = out.setdefault(tag, {}).get(ev.step)
                if old is None or ev.wall_time >= old[0]:
                    out[tag][ev.step] = (ev.wall_time, ev.value)
    return {tag: [(s, v) for s, (_t, v) in sorted(steps.items())] for tag, steps in out.items()}
