"""One AutoML trial as a cluster job: train, then write ``result.json`` next to the checkpoints.

The job never touches the registry (SQLite on a shared file system is fragile): it returns its
result to the submitting process through the cluster layer and also writes it, atomically, to
``result_path``, so a driver that was killed and restarted finds the results of trials that
finished while it was away. :class:`TrialJob` is checkpointable: when Slurm preempts it or its
time runs out it is requeued and :func:`~pomlia_hpc.automl.engine.train` resumes from the last
epoch's checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pomlia_hpc.automl.engine import TrainRequest, train
from pomlia_hpc.cluster import Checkpointable

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def read_result(path: str | Path) -> dict[str, Any] | None:
    """The result a trial job wrote to ``path`` (``None`` if it has not finished)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


class TrialJob(Checkpointable):
    """``TrialJob(request, result_path)()`` trains and returns the result dict."""

    def __init__(self, request: TrainRequest, result_path: str) -> None:
        self.request = request
        self.result_path = result_path

    def __call__(self) -> dict[str, Any]:
        # A trial is one process launched by the cluster layer, never by torchrun: rank/port
        # variables inherited from the submitting process (which may itself have trained with
        # DeepSpeed and still listen on its MASTER_PORT) must not win over this job's own.
        for key in DIST_VARS:
            os.environ.pop(key, None)

        def log(epoch: int, epochs: int, rec: dict[str, float]) -> None:
            print(
                f"epoch {epoch}/{epochs} loss {rec['train_loss']:.4f} ({rec['seconds']:.1f} s)",
                flush=True,
            )

        result = train(self.request, progress=log).to_dict()
        path = Path(self.result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        sys.stdout.flush()
        return result
