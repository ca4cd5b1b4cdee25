"""Encoder training objectives: pluggable losses over one autoencoder.

An objective is an :class:`torch.nn.Module` that owns the :class:`Autoencoder` (as
``.model``) and any extra trainable parts (a projection head), and maps one training batch to
a scalar loss: ``loss = objective(batch)``. A training loop (DeepSpeed here) wraps the
objective, steps on that loss, and finally saves ``objective.model`` only, so every objective
gives an ordinary encoder checkpoint (extraction, the index and AutoML's encoder
initialisation do not care how it was trained).

=============  ==============================================================================
name           loss
=============  ==============================================================================
mse            the paper's autoencoder: mean squared reconstruction error
style          MSE + ``style_weight`` x Gram-matrix (texture) loss between the encoder's feature
               maps of the image and of its reconstruction, summed over the four ResNet stages
               (the style term of ASAP, Molina-Moreno et al., ISBI 2023)
contrastive    two acquisition-like views of each image (:mod:`.augment`) through the encoder
               and a small projection head: NT-Xent (SimCLR, temperature 0.2) pulls the two views
               together and pushes the other images apart; a supervised-contrastive term on the
               dataset ids (ASAP's dataset-membership idea) pulls images of one dataset together;
               plus the reconstruction MSE of the clean image from the first view
=============  ==============================================================================

Batches: ``mse`` and ``style`` take float images (B, 3, S, S) or a dict with ``x``;
``contrastive`` needs the dict batch of :class:`~pomlia_hpc.fingerprint.loader.StoreStream`
with ``views=2`` (``x``, ``source``, ``views``). :data:`NEEDS` says what each one reads. After a
call, ``objective.parts`` holds the loss terms (floats) for logging.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional

from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.autoencoder import Autoencoder

ObjectiveName = Literal["mse", "style", "contrastive"]
OBJECTIVES: tuple[str, ...] = ("mse", "style", "contrastive")
#: Default objective of ``pomlia fingerprint train`` (chosen by the quality benchmark, see
#: docs/BENCHMARKS.md).
DEFAULT_OBJECTIVE: ObjectiveName = "contrastive"

#: Per objective: (needs dataset ids, number of augmented views).
NEEDS: dict[str, tuple[bool, int]] = {
    "mse": (False, 0),
    "style": (False, 0),
    "contrastive": (True, 2),
}

STYLE_WEIGHT = 10.0
TEMPERATURE = 0.2
MEMBERSHIP_WEIGHT = 0.5
RECONSTRUCTION_WEIGHT = 1.0
PROJECTION_DIM = 64

Batch = torch.Tensor | dict[str, Any]


def _images(batch: Batch) -> torch.Tensor:
    return batch["x"] if isinstance(batch, dict) else batch


class Objective(nn.Module):
    """Base: holds the autoencoder; subclasses implement :meth:`forward` (batch → loss)."""

    name: str = ""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model
        self.parts: dict[str, float] = {}

    def _record(self, **terms: torch.Tensor) -> None:
        self.parts = {k: float(v.detach()) for k, v in terms.items()}


class MSEObjective(Objective):
    """The paper's reconstruction loss."""

    name = "mse"

    def forward(self, batch: Batch) -> torch.Tensor:
        x = _images(batch)
        loss = functional.mse_loss(self.model(x), x)
        self._record(mse=loss)
        return loss


def encoder_features(
    model: Autoencoder, x: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Feature maps after each of the four ResNet stages, and the latent vector, of float
    images ``x`` (N, 3, S, S) in [0, 1] (the same computation as ``model.encode``)."""
    net = model.encoder
    h = net.maxpool(net.relu(net.bn1(net.conv1((x - 0.5) / 0.5))))
    maps = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        h = stage(h)
        maps.append(h)
    z = net.fc(torch.flatten(net.avgpool(h), 1))
    return maps, z


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N, C, C) of feature maps (N, C, H, W), normalised by C * H * W."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class StyleObjective(Objective):
    """MSE + Gram-matrix loss on the encoder's feature maps (image vs reconstruction)."""

    name = "style"

    def __init__(self, model: Autoencoder, style_weight: float = STYLE_WEIGHT) -> None:
        super().__init__(model)
        self.style_weight = style_weight

    def forward(self, batch: Batch) -> torch.Tensor:
        x = _images(batch)
        maps, z = encoder_features(self.model, x)
        recon = self.model.decoder(z[:, :, None, None])
        mse = functional.mse_loss(recon, x)
        # The image's Gram matrices are the target (no gradient through them); the
        # reconstruction's flow back through the decoder and the encoder.
        rmaps, _ = encoder_features(self.model, recon)
        style = sum(
            (
                functional.mse_loss(gram(r), gram(m.detach()))
                for r, m in zip(rmaps, maps, strict=True)
            ),
            torch.zeros((), device=x.device, dtype=x.dtype),
        )
        loss = mse + self.style_weight * style
        self._record(mse=mse, style=style)
        return loss


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent (SimCLR) loss of two views' projections a, b (N, k): each row's positive is the
    same row of the other view; the other 2N - 2 rows are negatives."""
    z = functional.normalize(torch.cat([a, b]).float(), dim=1)
    n = len(a)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return functional.cross_entropy(sim, target)


def supervised_contrastive(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) over both views: every other row with
    the same label (dataset id) is a positive. 0 when no row has a positive."""
    z = functional.normalize(torch.cat([a, b]).float(), dim=1)
    y = torch.cat([labels, labels])
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    count = pos.sum(1)
    has = count > 0
    if not bool(has.any()):
        return torch.zeros((), device=z.device)
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / count[has]
    return -mean_pos.mean()


class ContrastiveObjective(Objective):
    """NT-Xent on two acquisition-like views + dataset-membership SupCon + reconstruction."""

    name = "contrastive"

    def __init__(
        self,
        model: Autoencoder,
        *,
        temperature: float = TEMPERATURE,
        membership_weight: float = MEMBERSHIP_WEIGHT,
        reconstruction_weight: float = RECONSTRUCTION_WEIGHT,
    ) -> None:
        super().__init__(model)
        d = model.config.latent_dim
        self.head = nn.Sequential(
            nn.Linear(d, 128), nn.ReLU(inplace=True), nn.Linear(128, PROJECTION_DIM)
        )
        self.temperature = temperature
        self.membership_weight = membership_weight
        self.reconstruction_weight = reconstruction_weight

    def forward(self, batch: Batch) -> torch.Tensor:
        if not isinstance(batch, dict) or "views" not in batch or "source" not in batch:
            raise InputError(
                "the contrastive objective needs batches with 'x', 'source' and 'views' "
                "(StoreStream(..., with_sources=True, views=2))"
            )
        x, views, source = batch["x"], batch["views"], batch["source"]
        z1, z2 = self.model.encode(views[0]), self.model.encode(views[1])
        p1, p2 = self.head(z1), self.head(z2)
        instance = nt_xent(p1, p2, self.temperature)
        membership = supervised_contrastive(p1, p2, source, self.temperature)
        recon = functional.mse_loss(self.model.decoder(z1[:, :, None, None]), x)
        loss = (
            instance
            + self.membership_weight * membership
            + self.reconstruction_weight * recon.float()
        )
        self._record(nt_xent=instance, membership=membership, mse=recon)
        return loss


def build_objective(name: str, model: Autoencoder) -> Objective:
    """The objective called ``name`` (see :data:`OBJECTIVES`) over ``model``."""
    if name == "mse":
        return MSEObjective(model)
    if name == "style":
        return StyleObjective(model)
    if name == "contrastive":
        return ContrastiveObjective(model)
    raise InputError(f"objective '{name}' is not known: expected one of {', '.join(OBJECTIVES)}")


def objective_of(config: dict[str, Any] | None) -> str:
    """The objective recorded in a training config (``TrainConfig`` as a dict); encoders
    trained before objectives existed read as ``mse``."""
    return str((config or {}).get("objective") or "mse")
