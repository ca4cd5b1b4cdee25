"""What a finished study keeps on disk: each trial's model and records, not the epoch
checkpoints its configurations resumed from.

While a study runs, every configuration keeps one DeepSpeed checkpoint (``configs/<key>/ckpt/``:
the weights and the optimizer's state, 85 MiB for a ResNet18 with SGD's momentum, 128 MiB with
Adam's two moments), from which Hyperband's promotion to a larger budget, the final training
of the best configuration and a requeued or resumed trial continue. Once the study has finished
(``summary.json`` written) none of them will, and they were most of the study's folder, on a
cluster's disk quota. The trials' models (``model-e<E>.pt``, named by the registry's runs and
promoted or registered from there), the records (``state.json`` with the per-epoch history,
``result.json``) and the curves stay.
"""

from __future__ import annotations

from pathlib import Path

from pomlia_hpc.automl.engine import CKPT_DIR
from pomlia_hpc.files import remove_counted, sweep_stale_temps

__all__ = ["drop_resume_checkpoints"]


def drop_resume_checkpoints(folder: Path) -> int:
    """Remove the epoch checkpoints of every configuration of the finished study in ``folder``
    (``configs/<key>/ckpt/``), and the temporary files of its trials' writes that a killed
    trial left (a cut ``model-e<E>.pt`` under a temporary name, as big as the model); returns
    the bytes of the checkpoints freed. The caller has written the study's ``summary.json``: a
    study resumed after it only reports its outcome again."""
    for config in sorted((folder / "configs").glob("*/")):
        sweep_stale_temps(config)  # only those of writers on this host that are gone
    return remove_counted(sorted((folder / "configs").glob(f"*/{CKPT_DIR}")))
