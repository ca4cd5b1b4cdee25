"""``scripts/bench/index_scale.py``: ``--n`` is the number of vectors indexed, whatever it is
(20000 ran 100,000: n was rounded up to whole blocks of 100,000), and a run it cannot do is
refused in one line before any work."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from tests.fixtures.factories import bench_script

bench = bench_script("index_scale")


def test_shards_cover_exactly_n_vectors() -> None:
    assert bench.shard_ranges(20_000, 1) == [(0, 20_000)]
    assert bench.shard_ranges(250_000, 2) == [(0, 200_000), (200_000, 250_000)]
    for n, shards in ((1, 4), (99_999, 3), (1_000_001, 4)):
        ranges = bench.shard_ranges(n, shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) <= shards
        assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert bench.training_sample(0, 20_000, 5_000).shape == (5_000, bench.DIM)
    assert bench.training_sample(0, 3_000, 5_000).shape == (3_000, bench.DIM)  # at most n


def test_a_small_run_indexes_n_vectors(tmp_path: Path) -> None:
    import cloudpickle

    # The shard tasks get add_shard by value, as from the script run as __main__.
    cloudpickle.register_pickle_by_value(bench)
    args = ["--n", "20000", "--nlist", "64", "--pq", "8", "--train", "4000", "--queries", "20"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "index_scale.json").read_text())
    assert report["n"] == 20_000 and report["shards"] == 1
    assert sum(1 for _ in (tmp_path / "index_scale").glob("shard*.faiss")) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--n", "0"], "--n 0: expected a number of vectors >= 1"),
        (["--n", "1000"], "IVF training needs at least --nlist (4096) vectors"),
        (["--n", "5000", "--nlist", "64", "--queries", "6000"], "expected at most --n"),
    ],
)
def test_a_run_it_cannot_do_is_refused(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as ex:
        bench.main([*args, "--out", str(tmp_path)])
    assert ex.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
