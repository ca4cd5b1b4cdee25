"""Finding, registering and loading trained encoders: registry rows by id or name,
``encoder.pt`` files.

Re-exported by :mod:`pomlia_hpc.fingerprint.train`, where they used to live.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from pomlia_hpc.errors import NotFoundError, PomliaError
from pomlia_hpc.registry import Encoder, Registry
from pomlia_hpc.registry.lookup import by_name_or_id

if TYPE_CHECKING:
    from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
    from pomlia_hpc.fingerprint.train import TrainConfig


def get_encoder(registry: Registry, encoder: int | str | Encoder) -> Encoder:
    """The registry row of an encoder given by id, name (or the row itself)."""
    if isinstance(encoder, Encoder):
        return encoder
    with registry.session() as s:
        row = by_name_or_id(s, Encoder, encoder, "encoder")
        s.expunge(row)
        return row


def load_checkpoint(path: str | Path) -> tuple[Autoencoder, EncoderConfig]:
    """Load ``encoder.pt`` written by the training job: (model in eval mode, its config)."""
    # torch only here: finding an encoder's row (:func:`get_encoder`) must stay light.
    import torch

    from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig

    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
        cfg = EncoderConfig.model_validate(payload["config"])
        model = Autoencoder(cfg)
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError as exc:
        raise NotFoundError(f"encoder checkpoint '{p}' does not exist") from exc
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        raise PomliaError(
            f"encoder checkpoint '{p}' cannot be read: expected a file written by "
            f"`pomlia fingerprint train` ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    return model.eval(), cfg


def load_encoder(
    registry: Registry, encoder: int | str | Encoder
) -> tuple[Autoencoder, EncoderConfig]:
    """The trained autoencoder (eval mode, CPU) and its config, by encoder id or name."""
    row = get_encoder(registry, encoder)
    if not row.checkpoint_path:
        raise NotFoundError(f"encoder '{row.name}' has no checkpoint yet (training unfinished)")
    return load_checkpoint(row.checkpoint_path)


def register_encoder(
    registry: Registry,
    name: str,
    config: TrainConfig,
    dataset_version_ids: list[int],
    loss_curve: list[float],
    checkpoint_path: str | Path,
    *,
    job_id: int | None = None,
    refresh_of: int | None = None,
) -> Encoder:
    """Insert (or update) the registry row of encoder ``name``; returns it (detached).
    ``refresh_of``: the id of the encoder a refresh trained it from; the row records it as a
    refresh of that one, else as trained on its own (the lineage is recorded, never read back
    from the name: :mod:`pomlia_hpc.fingerprint.lineage`)."""
    with registry.session() as s:
        row = s.scalar(select(Encoder).where(Encoder.name == name)) or Encoder(name=name)
        row.config = config.model_dump()
        row.dataset_version_ids = list(dataset_version_ids)
        row.loss_curve = list(loss_curve)
        row.checkpoint_path = str(checkpoint_path)
        row.job_id = job_id
        row.origin = "refresh" if refresh_of is not None else "trained"
        row.refresh_of_id = refresh_of
        s.add(row)
        s.flush()
        s.expunge(row)
    return row
