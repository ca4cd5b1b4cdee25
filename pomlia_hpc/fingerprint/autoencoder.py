"""The fingerprint autoencoder of the paper: a torchvision ResNet-18 encoder whose last layer
maps the 512 pooled features to a latent vector of size ``d``, and a decoder of five
``ConvTranspose2d`` layers back to the input size, trained with an MSE loss.

Inputs are uint8 images (N, H, W, C) straight from a dataset store; :func:`to_input` turns them
into float tensors (N, 3, S, S) in [0, 1]: gray images are repeated to 3 channels, and images
whose size differs from the encoder's ``image_size`` are resized (bilinear, antialiased), so one
encoder embeds stores of any resolution. The encoder sees ``(x - 0.5) / 0.5``; the decoder
reconstructs ``x`` itself (sigmoid output).

``stem="imagenet"`` keeps torchvision's stem unchanged (the paper); ``stem="small"`` uses the
3x3 stride-1 stem of :mod:`pomlia_hpc.models.nets` ``resnet18`` for inputs up to 32 px, so the
trained encoder can initialise that classifier (see :func:`backbone_state_dict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional

from pomlia_hpc.errors import InputError

if TYPE_CHECKING:
    import torchvision

#: Input sizes (px) the decoder is built for.
IMAGE_SIZES = (28, 64)


class EncoderConfig(BaseModel):
    """Architecture of one autoencoder. Stored with every checkpoint and in the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent_dim: int = Field(16, ge=1, le=4096, description="d: size of the latent vector")
    image_size: Literal[28, 64] = Field(28, description="input side length, px")
    stem: Literal["imagenet", "small"] = "imagenet"

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v not in IMAGE_SIZES:
            raise ValueError(f"expected one of {IMAGE_SIZES}")
        return v


def _decoder(latent_dim: int, image_size: int) -> nn.Sequential:
    """Five transposed convolutions from (d, 1, 1) to (3, S, S)."""
    if image_size == 28:
        # 1 -> 7 -> 7 -> 14 -> 28 -> 28
        shapes = [(7, 1, 0), (3, 1, 1), (4, 2, 1), (4, 2, 1), (3, 1, 1)]
    else:
        # 1 -> 4 -> 8 -> 16 -> 32 -> 64
        shapes = [(4, 1, 0), (4, 2, 1), (4, 2, 1), (4, 2, 1), (4, 2, 1)]
    widths = [latent_dim, 256, 128, 64, 32, 3]
    layers: list[nn.Module] = []
    for i, (k, s, p) in enumerate(shapes):
        layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], k, stride=s, padding=p))
        if i < len(shapes) - 1:
            layers += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _encoder(cfg: EncoderConfig) -> torchvision.models.ResNet:
    # Imported here: torchvision's package import pulls in torch._dynamo (~1.5 s a process),
    # which the many processes that only read an encoder's configuration do not need.
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=cfg.latent_dim)
    if cfg.stem == "small":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if cfg.image_size <= 32:
            net.maxpool = nn.Identity()
    return net


class Autoencoder(nn.Module):
    """ResNet-18 encoder → latent (N, d) → five-layer transposed-conv decoder → (N, 3, S, S)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _encoder(config)
        self.decoder = _decoder(config.latent_dim, config.image_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors (N, d) of float images (N, 3, S, S) in [0, 1]."""
        return self.encoder((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (N, 3, S, S) in [0, 1] of ``x`` (same shape and range)."""
        z = self.encode(x)
        return self.decoder(z[:, :, None, None])


def to_input(images: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 images (N, H, W, C), C in {1, 3}, → float32 (N, 3, S, S) in [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim == 3:  # (N, H, W) gray without a channel axis
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(f"images of shape {tuple(x.shape)}: expected (N, H, W, C) with C = 1 or 3")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        x = functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.contiguous()


def reconstruction_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``x`` and its reconstruction (scalar)."""
    return functional.mse_loss(model(x), x)


def backbone_state_dict(model: Autoencoder, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """The encoder's ResNet-18 weights without the latent layer (``fc``), for initialising a
    classifier of the same stem (``nets.build_classifier("resnet18_imagenet" | "resnet18")``).

    For ``in_channels=1`` the first convolution's kernels are summed over the RGB axis, which
    gives a gray-input network the same response as the encoder on a gray image repeated to
    three channels. Load with ``classifier.load_state_dict(sd, strict=False)``.
    """
    sd = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    sd.pop("fc.weight", None)
    sd.pop("fc.bias", None)
    if in_channels == 1:
        sd["conv1.weight"] = sd["conv1.weight"].sum(dim=1, keepdim=True)
    elif in_channels != 3:
        raise InputError(f"in_channels={in_channels}: expected 1 or 3")
    return sd
