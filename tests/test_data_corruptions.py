"""Acquisition-like corruptions: shape, determinism, direction of each change, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pomlia_hpc.data.corruptions import FAMILIES, RGB_ONLY, corrupt, parameter
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.errors import InputError


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return make_split("pathmnist", 24, seed=1)[0]


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return make_split("octmnist", 24, seed=1)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_keeps_shape_changes_pixels_and_repeats(
    family: str, rgb: np.ndarray, gray: np.ndarray
) -> None:
    for x in (rgb, gray, gray[..., None]):
        if family in RGB_ONLY and x.shape[-1] != 3:
            continue
        y = corrupt(x, family, 3, np.random.default_rng(0))
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert np.abs(y.astype(int) - x).mean() > 1.0, family
        assert np.array_equal(y, corrupt(x, family, 3, np.random.default_rng(0)))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "noise"])
def test_systematic_families_do_not_depend_on_chunking(family: str, rgb: np.ndarray) -> None:
    whole = corrupt(rgb, family, 2, np.random.default_rng(0))
    parts = [corrupt(rgb[i : i + 5], family, 2, np.random.default_rng(i)) for i in range(0, 24, 5)]
    assert np.array_equal(whole, np.concatenate(parts))


def test_directions_and_severity(rgb: np.ndarray, gray: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    assert corrupt(gray, "brightness", 3, rng).mean() > gray.mean() + 20
    assert corrupt(gray, "gamma", 3, rng).mean() < gray.mean() - 10
    assert corrupt(gray, "contrast", 3, rng).std() < 0.7 * gray.std()

    def roughness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=2)).mean())

    assert roughness(corrupt(gray, "blur", 3, rng)) < 0.7 * roughness(gray)
    assert roughness(corrupt(gray, "pixelate", 3, rng)) < roughness(gray)
    mild = np.abs(corrupt(rgb, "stain", 1, rng).astype(int) - rgb).mean()
    strong = np.abs(corrupt(rgb, "stain", 5, rng).astype(int) - rgb).mean()
    assert strong > mild > 0
    assert parameter("jpeg", 5) < parameter("jpeg", 1)


def test_bad_input_is_refused(rgb: np.ndarray, gray: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="not known"):
        corrupt(rgb, "fog", 3, rng)
    for bad in (0, 6, 2.5):
        with pytest.raises(InputError, match="severity"):
            corrupt(rgb, "blur", bad, rng)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="needs RGB"):
        corrupt(gray, "stain", 3, rng)
    with pytest.raises(InputError, match="expected uint8"):
        corrupt(rgb.astype(np.float32), "blur", 3, rng)
