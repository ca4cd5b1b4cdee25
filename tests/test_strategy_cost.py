"""The recommender's cost estimate grows with the data set at small inputs, at the measured
per-image rates of one GPU.

At 28 px a ResNet-18's multiply-adds are tiny, and an estimate from them alone said 34 s for
100,000 images x 9 epochs (30 s of it start-up), 30.05 s for 210 images and 30.4 s for 2,100:
the cost hardly depended on size, where the GPU check measured 8,323 img/s for a training
epoch at 28 px (~140 s for that run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pomlia_hpc.strategy import cost

REPO = Path(__file__).resolve().parents[1]
SMALL = {"arch": "ResNet-18", "img_size": 28, "mode": "full"}


def test_a_small_input_trains_no_faster_than_the_measured_rate() -> None:
    n = 100_000
    epochs_s = cost.estimate(SMALL, n).wall_s - cost.OVERHEAD_S
    assert epochs_s == pytest.approx(n * cost.full_epochs(n) / cost.TRAIN_IMG_PER_S)
    assert epochs_s > n * cost.full_epochs(n) / 10_000  # no GPU trains 10,000 img/s here


def test_the_estimate_grows_with_the_data_set() -> None:
    walls = [cost.estimate(SMALL, n).wall_s - cost.OVERHEAD_S for n in (210, 2_100, 21_000)]
    # Ten times the images, fewer epochs each (AutoML's budget shrinks with size: 60, 47, 9):
    # still more seconds each time.
    assert 0 < walls[0] < walls[1] < walls[2]
    assert walls[1] > 5 * walls[0]


def test_frozen_features_pass_forward_at_most_at_the_extraction_rate() -> None:
    probe = {"arch": "ResNet-18", "img_size": 28, "mode": "linear_probe"}
    n = 100_000
    got = cost.estimate(probe, n).wall_s - cost.OVERHEAD_S
    assert got == pytest.approx(n / cost.FORWARD_IMG_PER_S)


def test_large_inputs_are_still_bound_by_their_multiply_adds() -> None:
    """At 224 px a ViT-B/16 (17.6 GMACs forward) is far slower than the per-image floor."""
    vit = {"arch": "ViT-B/16", "img_size": 224, "mode": "full"}
    n = 10_000
    got = cost.estimate(vit, n).wall_s - cost.OVERHEAD_S
    floor = n * cost.full_epochs(n) / cost.TRAIN_IMG_PER_S
    assert got > 10 * floor


def test_the_rates_are_the_gpu_checks_figures() -> None:
    text = (REPO / "docs" / "BENCHMARKS.md").read_text()
    section = text[text.index("## GPU check") : text.index("### AutoML trials on the GPU")]

    def measured(step: str) -> float:
        found = re.search(rf"^\s+{re.escape(step)}\s+(\d+) img/s", section, re.MULTILINE)
        assert found, step
        return float(found.group(1))

    assert measured("DeepSpeed bf16 epoch") == cost.TRAIN_IMG_PER_S
    assert measured("extraction (cuda)") == cost.FORWARD_IMG_PER_S
