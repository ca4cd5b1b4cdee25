"""``scripts/bench/fingerprint_quality.py``: the held-out real sources take no part in the
tuning sets, not even as candidates, so nothing chosen on those sets depends on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.factories import bench_script

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"


def test_held_out_sources_are_no_candidates_of_a_tuning_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its sibling fingerprint_sets
    fq = bench_script("fingerprint_quality")
    real = {s: (f"{s}_1", f"{s}_2") for s in (*fq.TUNING_SOURCES, *fq.HELDOUT_SOURCES)}
    sets = fq.real_sets(real)
    held = {n for s in fq.HELDOUT_SOURCES for n in real[s]}
    tuning = sets["c_tuning"]
    assert not held & (set(tuning["members"]) | set(tuning["queries"]) | set(tuning["pairs"]))
    assert set(tuning["pairs"].values()) <= set(tuning["members"])
    heldout = sets["c_heldout"]
    assert set(heldout["queries"]) == held and held < set(heldout["members"])
    assert all(heldout["pairs"][q] in heldout["members"] for q in heldout["queries"])
