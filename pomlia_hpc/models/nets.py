"""Classifier networks shared by training (AutoML) and serving (names: :mod:`.archs`).

One entry point, :func:`build_classifier`, builds a fresh (untrained) network from an
architecture name; a checkpoint stores that name plus the arguments, so serving rebuilds the very
same network before loading the weights.

Small inputs. MedMNIST images are 28 or 64 px; torchvision's ImageNet stem (7x7 stride-2 conv +
3x3 stride-2 max-pool) divides the resolution by 4 before the first residual stage, so a 28 px
image reaches ``layer4`` as a single pixel. ``resnet18`` therefore uses a 3x3 stride-1 stem conv
and drops the max-pool for inputs up to 32 px (``layer1`` sees 28x28, like the ResNet-18 (28) of
the MedMNIST v2 paper), and keeps the max-pool above 32 px (a 64 px image reaches ``layer1`` at
32x32). The price is compute: at 28 px that is about 16x the multiply-adds of the ImageNet stem,
so ``resnet18_imagenet`` (the stem unchanged) is offered as the cheap alternative for CPU serving.

torchvision is imported only to build its networks: importing it pulls in its detection ops and
``torch._dynamo`` (seconds per process), which a trial job of the small CNN never uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from pomlia_hpc.errors import InputError
from pomlia_hpc.models.archs import ARCHITECTURES, SMALL_INPUT_PX, check_arch

if TYPE_CHECKING:
    import torchvision

__all__ = ["ARCHITECTURES", "SMALL_INPUT_PX", "SmallCNN", "build_classifier"]


def _resnet(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    small_stem: bool,
) -> nn.Module:
    import torchvision

    factory: Callable[..., torchvision.models.ResNet] = getattr(torchvision.models, name)
    model = factory(weights=None, num_classes=num_classes)
    if small_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if image_size <= SMALL_INPUT_PX:
            model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _mobilenet_v3_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = model.features[0][0]
    assert isinstance(first, nn.Conv2d)
    # Stride 1 in the first conv for small inputs, for the same reason as the ResNet stem.
    stride = 1 if image_size <= SMALL_INPUT_PX else 2
    model.features[0][0] = nn.Conv2d(
        in_channels, first.out_channels, kernel_size=3, stride=stride, padding=1, bias=False
    )
    return model


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (32, 64, 128 channels, each halving the size), global average
    pooling and a linear head: about 0.1 M parameters, a fast baseline and test model."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (width, width * 2, width * 4):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for images of shape (N, C, H, W)."""
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet18": lambda n, c, s: _resnet("resnet18", n, c, s, small_stem=True),
    "resnet18_imagenet": lambda n, c, s: _resnet("resnet18", n, c, s, small_stem=False),
    "resnet34": lambda n, c, s: _resnet("resnet34", n, c, s, small_stem=True),
    "mobilenet_v3_small": _mobilenet_v3_small,
    "small_cnn": lambda n, c, s: SmallCNN(n, c),
}

# The torch-free name list must name exactly these builders.
if tuple(sorted(_BUILDERS)) != ARCHITECTURES:
    raise RuntimeError("pomlia_hpc.models.archs.ARCHITECTURES does not match the builders")


def build_classifier(
    arch: str, num_classes: int, in_channels: int = 3, *, image_size: int = 28
) -> nn.Module:
    """Build an untrained classifier that maps (N, in_channels, image_size, image_size) float
    images to (N, num_classes) logits.

    ``image_size`` (px, square) only changes the stem of the small-input architectures (see the
    module docstring); pass the size the model will be trained and served at.
    Raises :class:`InputError` for an unknown ``arch`` or a non-positive size.
    """
    check_arch(arch)
    if num_classes < 1 or in_channels < 1 or image_size < 8:
        raise InputError(
            f"architecture '{arch}': expected num_classes >= 1, in_channels >= 1 and "
            f"image_size >= 8, got {num_classes}, {in_channels}, {image_size}"
        )
    return _BUILDERS[arch](num_classes, in_channels, image_size)
