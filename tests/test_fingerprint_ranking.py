"""Summary statistics, the trim, and the distances over summaries (combined, trimmed, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.distances import frechet_distance
from pomlia_hpc.fingerprint.ranking import (
    DISTANCE_NAMES,
    LATENT_DISTANCES,
    explicit_many,
    frechet_many,
    score,
)
from pomlia_hpc.fingerprint.summary import (
    SAMPLE_SIZE,
    Summary,
    compute_summary,
    explicit_features,
    read_summary,
    stats_of,
    typical_rows,
    write_summary,
)


def _group(path: Path, z: np.ndarray, patches: np.ndarray | None = None) -> Path:
    g = zarr.open_group(str(path), mode="w")
    g.create_array("z", shape=z.shape, chunks=(64, z.shape[1]), dtype="float32")[:] = z
    if patches is not None:
        arr = g.create_array(
            "patches", shape=patches.shape, chunks=(64, *patches.shape[1:]), dtype="float32"
        )
        arr[:] = patches
    return path


def _fp(mean: float, channels: int = 1) -> dict[str, object]:
    c = {"mean": mean, "std": 20.0, "percentiles": {str(q): mean for q in (0.5, 1, 50, 99)}}
    return {
        "channels": channels,
        "intensity": [c] * channels,
        "image_size": [28, 28],
        "n_classes": 2,
    }


def _summary(
    rng: np.random.Generator, shift: float, n: int = 400, fp_mean: float = 100.0
) -> Summary:
    z = rng.normal(size=(n, 4)) + shift
    return Summary(stats_of(z.astype(np.float32)), explicit_features(_fp(fp_mean)))


def test_summary_is_exact_where_it_claims_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 5)).astype(np.float32) * [1, 2, 3, 4, 5]
    p = rng.normal(size=(3000, 4, 5)).astype(np.float32)
    path = _group(tmp_path / "v.zarr", z, p)
    s = compute_summary(path, _fp(80.0, 3))
    np.testing.assert_allclose(s.images.mean, z.astype(np.float64).mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(s.images.cov, np.cov(z.astype(np.float64), rowvar=False), rtol=1e-6)
    assert s.images.n == 3000 and len(s.images.sample) == SAMPLE_SIZE
    assert s.images.quantiles.shape == (21, 5)
    assert s.patches is not None and s.patches.n == 12000
    assert s.explicit.shape == (37,) and s.explicit[-4] == 1.0  # RGB
    write_summary(path, s)
    back = read_summary(path)
    assert back is not None and back.patches is not None
    np.testing.assert_array_equal(back.images.trim_cov, s.images.trim_cov)
    np.testing.assert_array_equal(back.patches.sample, s.patches.sample)
    assert read_summary(tmp_path / "none.zarr") is None
    assert compute_summary(path, _fp(80.0, 3)).images.typical.tolist() == s.images.typical.tolist()


def test_trim_drops_a_small_foreign_group() -> None:
    rng = np.random.default_rng(1)
    main = rng.normal(size=(475, 4))
    foreign = rng.normal(size=(25, 4)) * 0.1 + 6.0  # 5 %, a tight group of its own
    keep = typical_rows(np.concatenate([main, foreign]))
    assert not keep[475:].any()
    assert keep[:475].mean() > 0.85
    assert typical_rows(main[:5]).all()  # too few rows to trim


def test_frechet_many_matches_the_scipy_version() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 4))
    bs = [rng.normal(size=(200, 4)) * s + s for s in (0.5, 1.0, 2.0)]
    got = frechet_many(
        a.mean(0),
        np.cov(a, rowvar=False),
        np.stack([b.mean(0) for b in bs]),
        np.stack([np.cov(b, rowvar=False) for b in bs]),
    )
    want = [frechet_distance(a, b) for b in bs]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
def test_every_distance_ranks_and_reports_components(distance: str) -> None:
    rng = np.random.default_rng(3)
    q = _summary(rng, 0.0)
    cands = [
        _summary(rng, 0.05),
        _summary(rng, 1.0, fp_mean=140.0),
        _summary(rng, 3.0, fp_mean=200.0),
    ]
    scored = score(q, cands, distance)
    d = [s.distance for s in scored]
    assert d[0] < d[1] < d[2], (distance, d)
    assert all(s.components for s in scored)
    self_score = score(q, [q], distance)[0].distance
    assert self_score == pytest.approx(0.0, abs=1e-6)


def test_combined_mixes_both_parts_and_trimmed_resists_outliers() -> None:
    rng = np.random.default_rng(4)
    q = _summary(rng, 0.0)
    # Latent twin with another intensity signature vs a latent stranger with the same one.
    twin = _summary(rng, 0.0, fp_mean=180.0)
    stranger = _summary(rng, 2.0)
    only_latent = score(q, [twin, stranger], "combined", weight=1.0)
    only_explicit = score(q, [twin, stranger], "combined", weight=0.0)
    assert only_latent[0].distance < only_latent[1].distance
    assert only_explicit[0].distance > only_explicit[1].distance
    c = score(q, [twin, stranger], "combined", weight=0.5)[0].components
    assert c["weight"] == 0.5 and c["explicit"] > 0 and c["trimmed"] >= 0
    # The Fréchet-type latent enters in W2 units: its square root over the median.
    three = score(q, [twin, stranger, q], "combined")
    roots = np.sqrt([t.components["trimmed"] for t in three])
    scaled = [t.components["trimmed_scaled"] for t in three]
    assert scaled == pytest.approx(list(roots / np.median(roots)))
    with pytest.raises(InputError, match="weight"):
        score(q, [twin], "combined", weight=1.5)
    with pytest.raises(InputError, match="no patch embeddings"):
        score(q, [twin], "frechet", patches=True)
    # 5 % of a far-away dataset mixed in moves the Fréchet distance much more than the trimmed.
    z = rng.normal(size=(500, 4))
    clean = Summary(stats_of(z), q.explicit)
    mixed = np.concatenate([z[:475], rng.normal(size=(25, 4)) * 0.2 + 8.0])
    dirty = Summary(stats_of(mixed), q.explicit)
    for name in LATENT_DISTANCES:
        assert score(clean, [dirty], name)[0].distance >= 0
    fr = score(clean, [dirty], "frechet")[0].distance
    tr = score(clean, [dirty], "trimmed")[0].distance
    assert tr < 0.2 * fr


def test_robust_explicit_part_ignores_the_mean_and_the_tails() -> None:
    def fp(mean: float, lo: float, hi: float) -> dict[str, object]:
        pct = dict(
            zip(
                ("0.5", "1", "5", "25", "50", "75", "95", "99", "99.5"),
                (lo, lo, 60, 80, 100, 120, 140, hi, hi),
                strict=True,
            )
        )
        c = {"mean": mean, "std": 20.0, "percentiles": pct}
        return {"channels": 1, "intensity": [c], "image_size": [28, 28], "n_classes": 2}

    clean = explicit_features(fp(100.0, 40.0, 160.0))
    # A few foreign images move the mean and the extreme percentiles, not std and quartiles.
    mixed = explicit_features(fp(110.0, 0.0, 255.0))
    assert explicit_many(clean, mixed[None], "all")[0] > 0.01
    assert explicit_many(clean, mixed[None], "robust")[0] == pytest.approx(0.0)
    assert explicit_many(clean, mixed[None])[0] == pytest.approx(0.0)  # robust is the default
    q = _summary(np.random.default_rng(5), 0.0)
    with pytest.raises(InputError, match="explicit statistics"):
        score(q, [q], "explicit", explicit="nope")
