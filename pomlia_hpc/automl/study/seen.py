"""What a trial learns from besides its training split, as its lineage records it.

The keys :mod:`pomlia_hpc.models.seen` reads: the trial's ``config``, the model
(``init_model_id``) or encoder (``encoder_id``) its weights start from, and its extra images
(``extra_data``: the study's npz, ``extra_n``: how many of its first rows). Written into each
trial's checkpoint (so a copy registered by hand keeps them) and into the study's registered
best model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pomlia_hpc.automl.study.spec import StudySpec


def seen_sources(spec: StudySpec, folder: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """The lineage keys (see the module docstring) of a trial of configuration ``values`` in
    study ``spec``, whose folder is ``folder``."""
    out: dict[str, Any] = {"config": dict(values)}
    if values.get("init") == "model" and spec.init_model is not None:
        out["init_model_id"] = spec.init_model.id
    if values.get("init") == "encoder" and spec.encoder is not None:
        out["encoder_id"] = spec.encoder.id
    n = int(values.get("extra_n") or 0) if values.get("extra_data") == "nearest" else 0
    if n > 0:
        # The file its trials read (its first n rows), not prepared again here.
        out["extra_data"], out["extra_n"] = str(folder / "extra" / "nearest.npz"), n
    return out


def trial_lineage(
    spec: StudySpec, folder: Path, run_id: int, values: Mapping[str, Any]
) -> dict[str, Any]:
    """The lineage a trial (run ``run_id``, configuration ``values``) writes into its
    checkpoint: its task, its training data, its study and run, and what it learns from
    besides (:func:`seen_sources`; a copy of the checkpoint registered by hand with
    ``model register`` must not pass as trained from scratch on its train split alone)."""
    return {
        "task": spec.task,
        "task_id": spec.task_id,
        "dataset": spec.dataset,
        "dataset_version_id": spec.dataset_version_id,
        "study": spec.name,
        "run_id": run_id,
        **seen_sources(spec, folder, values),
    }
