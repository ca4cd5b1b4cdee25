"""Classifier architecture names, without importing torch.

The AutoML search space, the CLI's ``--help`` and the coming strategy room need the names; only
:mod:`pomlia_hpc.models.nets` builds the networks (and a test checks the two lists agree).
"""

from __future__ import annotations

from pomlia_hpc.errors import InputError

#: Architecture names :func:`pomlia_hpc.models.nets.build_classifier` accepts, sorted.
ARCHITECTURES: tuple[str, ...] = (
    "mobilenet_v3_small",
    "resnet18",
    "resnet18_imagenet",
    "resnet34",
    "small_cnn",
)

#: Architectures built without torchvision (:mod:`pomlia_hpc.models.nets` imports it for the
#: others only).
WITHOUT_TORCHVISION: tuple[str, ...] = ("small_cnn",)

#: Largest input (px) for which the small-input stems skip every early down-sampling.
SMALL_INPUT_PX = 32


def check_arch(arch: str) -> str:
    """Return ``arch`` if it is one of :data:`ARCHITECTURES`, else :class:`InputError`."""
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture '{arch}'; expected one of: {', '.join(ARCHITECTURES)}"
        )
    return arch
