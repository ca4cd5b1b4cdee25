"""Edge cases of one trial's training (:mod:`pomlia_hpc.automl.engine`, its data and its job):
the batch-norm recalibration of a training set that is not a multiple of the batch, labels
outside the task's classes, the curves of a training that failed, a trial that fails before
it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pomlia_hpc.automl.engine import recalibrate_batchnorm


def test_batchnorm_recalibration_weighs_each_image_alike() -> None:
    """10 images in batches of 4: the last batch (2 images) counted as much as each full one
    (torch's cumulative average is per batch), so the recalibrated mean was (-1 - 1 + 1) / 3
    instead of the images' own (8 * -1 + 2 * 1) / 10."""
    images = torch.zeros((10, 1, 4, 4), dtype=torch.uint8)  # normalised to -1
    images[8:] = 255  # normalised to +1
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn)
    recalibrate_batchnorm(model, images, torch.device("cpu"), torch.float32, 4)
    assert bn.running_mean.item() == pytest.approx(-0.6, abs=1e-6)
    assert bn.momentum == 0.1  # put back as it was
