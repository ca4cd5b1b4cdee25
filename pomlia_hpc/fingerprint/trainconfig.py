"""The settings of one encoder training: :class:`TrainConfig` (stored with the encoder in the
registry and in its ``config.json``) and :func:`normalise_config` for configs stored before a
field existed. The training itself: :mod:`pomlia_hpc.fingerprint.train`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pomlia_hpc.fingerprint.autoencoder import EncoderConfig
from pomlia_hpc.fingerprint.objectives import DEFAULT_OBJECTIVE, ObjectiveName

__all__ = ["TrainConfig", "normalise_config"]


#: The most DataLoader workers a rank may start.
MAX_WORKERS = 64


class TrainConfig(BaseModel):
    """Hyper-parameters of one encoder training (stored in the registry with the encoder)."""

    # No inf or NaN: `--lr inf` trained to NaN weights, registered, and broke `similar`.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    encoder: EncoderConfig = EncoderConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, description="images per process per step")
    lr: float = Field(1e-3, gt=0, le=10.0)
    seed: int = 0
    split: Literal["train", "val", "test", "all"] = "train"
    max_images_per_dataset: int | None = Field(None, ge=1)
    processes: int = Field(1, ge=1, description="data-parallel ranks the job spawns")
    # A bound: each worker is a process of ~0.5 GB (`--workers 100000` forked until memory ran out).
    num_workers: int = Field(
        1, ge=0, le=MAX_WORKERS, description="DataLoader worker processes per rank"
    )
    precision: Literal["fp32", "bf16"] = "fp32"
    zero_stage: int = Field(0, ge=0, le=2)
    objective: ObjectiveName = Field(
        DEFAULT_OBJECTIVE, description="loss: mse (paper), style or contrastive"
    )
    holdout: float = Field(
        0.1, ge=0.0, lt=0.5, description="fraction of each dataset held out for early stopping"
    )
    patience: int = Field(3, ge=1, description="epochs without a better held-out loss to stop")
    lr_schedule: Literal["cosine", "constant"] = "cosine"


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored training config with every field: configs written before a field existed get
    the value they were trained with (``objective`` ``mse``, no hold-out, constant LR), not
    today's default."""
    legacy = {"objective": "mse", "holdout": 0.0, "lr_schedule": "constant"}
    return TrainConfig.model_validate(legacy | dict(config)).model_dump(mode="json")
