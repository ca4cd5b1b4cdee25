"""The strategy knowledge base: long-format import (all or nothing), the shipped tables, LOO."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.sources.base import MAX_CLASSES, MAX_SIDE_PX
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.registry import KbResult, KbSource, Registry
from pomlia_hpc.strategy import evaluate, kb, learner, longformat
from pomlia_hpc.strategy.kb import KnowledgeBase, Observation

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"
HEADER = "dataset,arch,init,mode,img_size,metric,value,std\n"
META = "dataset,task_type,n_channels,n_classes,n_train\na,multi-class,3,8,1000\nb,binary,1,2,500\n"
GOOD = HEADER + "a,resnet18,scratch,full,28,acc,0.91,0.01\nb,resnet18,scratch,full,28,acc,0.8,\n"


def _write(tmp_path: Path, text: str, name: str = "r.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _n_results(reg: Registry) -> int:
    with reg.session() as s:
        return int(s.scalar(select(func.count()).select_from(KbResult)) or 0)


def test_import_good_file(registry: Registry, tmp_path: Path) -> None:
    rep = kb.import_table(
        registry, _write(tmp_path, GOOD), "t", meta_path=_write(tmp_path, META, "m.csv")
    )
    assert (rep.n_results, rep.n_datasets) == (2, 2)
    got = kb.load(registry, "acc", ["t"])
    assert sorted(o.value for o in got.observations) == [0.8, 0.91]
    assert got.meta["b"]["task_type"] == "binary"


def test_a_table_with_gpu_hours_only_gives_its_costs(registry: Registry, tmp_path: Path) -> None:
    text = "dataset,arch,init,mode,img_size,metric,value,cost_s,gpu_hours\n"
    text += "a,r,s,full,28,acc,0.9,,2.0\na,r,s,full,64,acc,0.9,100,2.0\na,r,s,full,128,acc,0.9,,\n"
    kb.import_table(
        registry, _write(tmp_path, text), "t", meta_path=_write(tmp_path, META, "m.csv")
    )
    got = {o.strategy["img_size"]: o.cost_s for o in kb.load(registry, "acc", ["t"]).observations}
    assert got == {28: 7200.0, 64: 100.0, 128: None}  # wall seconds win where both are given


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEADER.replace(",metric", "") + "a,r,s,full,28,0.9,\n", "missing column(s) metric"),
        (GOOD + "a,vgg,scratch,full,28,top5,0.9,\n", "line 4, column 'metric'"),
        (GOOD + "a,vgg,scratch,full,28,acc,high,\n", "line 4, column 'value'"),
        (GOOD + "a,vgg,scratch,full,28,acc,nan,\n", "line 4, column 'value'"),
        (GOOD + "a,vgg,scratch,full,28,acc,91.0,\n", "line 4, column 'value'"),
        (GOOD + "a,resnet18,scratch,full,28,acc,0.5,\n", "line 4: duplicates line 2"),
        (GOOD + "c,vgg,scratch,full,28,acc,0.5,\n", "line 4, column 'dataset': data set 'c'"),
        (GOOD + "a,vgg,scratch,full,big,acc,0.5,\n", "line 4, column 'img_size'"),
        (HEADER.replace("std", "sdt") + "a,r,s,full,28,acc,0.9,\n", "unknown column(s) sdt"),
        (GOOD + "a,vgg,scratch,full,28\n", "line 4: 5 cells, fewer than the header's 8 columns"),
        (GOOD + "a,vgg,scratch,full,28,acc,1.5,\n", "expected a number in [0, 1];"),
        (GOOD + "a,vgg,scratch,full,28,acc,0.5,-1\n", "column 'std': '-1' is not valid"),
        # scaled by size and epochs, 1e308 overflowed to infinity, which JSON cannot hold
        (
            HEADER.replace("std", "cost_s") + "a,r,s,full,28,acc,0.9,1e308\n",
            "column 'cost_s': '1e308' is not valid; expected a number in [0, 1e+09]",
        ),
        (
            HEADER.replace("std", "gpu_hours") + "a,r,s,full,28,acc,0.9,-1\n",
            "column 'gpu_hours': '-1' is not valid; expected a number in [0, 277778]",
        ),
        # Python reads both as numbers (1000, 32); a table does not mean them so
        (GOOD + "a,vgg,scratch,full,1_000,acc,0.5,\n", "column 'img_size': '1_000' is not"),
        (GOOD + "a,vgg,scratch,full,\u0663\u0662,acc,0.5,\n", "line 4, column 'img_size'"),
        (GOOD + "a,vgg,scratch,full,28,acc,0.9_1,\n", "column 'value': '0.9_1' is not valid"),
        ("\n" + GOOD, "line 1 is blank; expected the CSV header line there"),  # not "empty"
        (
            HEADER.replace("\n", ",\n") + "a,r,s,full,28,acc,0.9,,\n",
            "line 1: column(s) 9 of 9 have no name (a trailing comma?)",  # was "unknown ;"
        ),
        # the registry's integer column cannot hold it: an OverflowError, exit 70
        (
            HEADER.replace("std", "n_seeds") + "a,r,s,full,28,acc,0.9," + "1" + "0" * 30 + "\n",
            "column 'n_seeds': '1" + "0" * 30 + "' is not valid; expected an integer in [1, ",
        ),
    ],
)
def test_bad_file_is_one_error_and_nothing_imported(
    registry: Registry, tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=_write(tmp_path, META, "m.csv"))
    assert expected in str(err.value)
    assert str(path) in str(err.value)
    assert _n_results(registry) == 0
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(KbSource)) == 0


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (META.replace("b,binary,1,2,", "b,binary,1,3,"), "'3' is not valid; expected 2 for"),
        (META.replace("b,binary,1,2,", "b,binary,1,1,"), "'1' is not valid; expected 2 for"),
        (META.replace("a,multi-class,3,8,", "a,multi-class,3,1,"), "an integer >= 2 for"),
    ],
)
def test_meta_features_the_task_type_contradicts_are_refused(
    registry: Registry, tmp_path: Path, meta: str, expected: str
) -> None:
    """`strategy import --meta` took `task_type binary` with `n_classes 3` (which `data add`
    refuses): the file, line and column are named, and nothing is imported."""
    path = _write(tmp_path, meta, "m.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, _write(tmp_path, GOOD), "t", meta_path=path)
    assert f"{path}: line " in str(err.value) and "column 'n_classes'" in str(err.value)
    assert expected in str(err.value) and "nothing was imported" in str(err.value)
    assert _n_results(registry) == 0
    head = "dataset,arch,init,mode,img_size,metric,value,meta_task_type,meta_n_channels,"
    cols = head + "meta_n_classes,meta_n_train\nz,r,s,full,28,acc,0.9,binary,1,3,100\n"
    with pytest.raises(InputError, match="line 2, column 'meta_n_classes': '3' is not valid"):
        kb.import_table(registry, _write(tmp_path, cols, "c.csv"), "cols")
    assert _n_results(registry) == 0


def test_meta_as_columns_and_conflicts(registry: Registry, tmp_path: Path) -> None:
    head = "dataset,arch,init,mode,img_size,metric,value,meta_task_type,meta_n_channels,"
    head += "meta_n_classes,meta_n_train\n"
    ok = head + "a,r,s,full,28,acc,0.9,binary,1,2,100\na,r,s,full,64,acc,0.9,binary,1,2,100\n"
    assert kb.import_table(registry, _write(tmp_path, ok), "cols").n_results == 2
    bad = head + "z,r,s,full,28,acc,0.9,binary,1,2,100\nz,r,s,full,64,acc,0.9,binary,1,2,999\n"
    with pytest.raises(InputError, match="line 3: meta-features of 'z' differ from line 2"):
        kb.import_table(registry, _write(tmp_path, bad, "b.csv"), "cols2")
    with pytest.raises(InputError, match="already imported"):
        kb.import_table(registry, _write(tmp_path, ok), "cols")
    # said first, before the new file's own problems (here: meta-features it does not carry)
    plain = "dataset,arch,init,mode,img_size,metric,value\nq,r,s,full,28,acc,0.9\n"
    with pytest.raises(InputError, match="already imported"):
        kb.import_table(registry, _write(tmp_path, plain, "c.csv"), "cols")
    assert kb.import_table(registry, _write(tmp_path, ok), "cols", replace=True).replaced == 2
    assert _n_results(registry) == 2


def test_shipped_tables_import(reg: Registry) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    plus = kb.import_table(reg, DATA / "medmnist_plus_doerrich2025.csv", "plus", meta_path=meta)
    v2 = kb.import_table(reg, DATA / "medmnist_v2_yang2023.csv", "v2", meta_path=meta)
    assert (plus.n_results, plus.n_datasets) == (2400, 12)
    assert (v2.n_results, v2.n_datasets) == (264, 18)
    m = learner.build_matrix(kb.load(reg, "acc", ["plus"]))
    assert m.values.shape == (12, 120) and np.isfinite(m.values).all()


def _matrix(values: np.ndarray, fail: np.ndarray) -> learner.Matrix:
    """Data sets alike in meta-features, one strategy per column."""
    n, k = values.shape
    strategies = [
        {"arch": f"a{j}", "init": "scratch", "mode": "full", "img_size": 28} for j in range(k)
    ]
    nan = np.full(values.shape, np.nan)
    return learner.Matrix(
        [f"d{i}" for i in range(n)],
        [f"{j:04d}" for j in range(k)],
        strategies,
        values,
        fail,
        nan,
        nan,
        np.zeros((n, len(learner.FEATURES))),
    )


def _synthetic(n_groups: int = 3, per_group: int = 4, n_strat: int = 30) -> learner.Matrix:
    """Data sets in groups with different meta-features; each group has its own best
    strategies, so a learner that uses the meta-features must beat random and best-mean."""
    rng = np.random.default_rng(0)
    group_pref = rng.normal(0, 0.05, (n_groups, n_strat))
    obs, meta = [], {}
    for g in range(n_groups):
        for i in range(per_group):
            name = f"g{g}d{i}"
            meta[name] = {
                "task_type": "multi-class",
                "n_channels": 3 if g % 2 else 1,
                "n_classes": 2 + 4 * g,
                "n_train": 10 ** (3 + g),
            }
            vals = 0.7 + group_pref[g] + rng.normal(0, 0.005, n_strat)
            for s in range(n_strat):
                strat = {"arch": f"a{s}", "init": "scratch", "mode": "full", "img_size": 28}
                key = f"{s:04d}"
                obs.append(Observation("syn", name, strat, key, float(vals[s])))
    return learner.build_matrix(KnowledgeBase("acc", obs, meta))


def test_loo_learner_beats_random_and_best_mean_on_synthetic() -> None:
    res = evaluate.loo(_synthetic()).to_dict()["summary"]
    ours = res["kernel-regret"]
    assert ours["top1_mean"] < 0.5 * res["random"]["top1_mean"]
    assert ours["top1_mean"] < res["best_mean"]["top1_mean"]
    assert ours["topk_mean"] <= res["best_mean"]["topk_mean"]


def test_loo_needs_three_datasets() -> None:
    m = _synthetic(1, 2)
    with pytest.raises(InputError, match="at least 3 data sets"):
        evaluate.loo(m)


def test_loo_of_cheap_strategies_without_any_says_so() -> None:
    """With no strategy of <= 64 px or frozen features, the error blamed the data sets'
    dimensionality (every data set was skipped for want of a cheap result)."""
    m = _synthetic(1, 3, n_strat=4)
    m.strategies = [{**s, "img_size": 224} for s in m.strategies]
    with pytest.raises(InputError) as err:
        evaluate.loo(m, cheap=True)
    said = str(err.value)
    assert said.startswith("--cheap: leave-one-dataset-out needs at least 3 data sets with "), said
    assert "inputs <= 64 px or frozen features; this selection has 0 (none);" in said, said
    assert evaluate.loo(m).datasets == m.datasets  # all strategies: the same data sets do


def test_random_baseline_is_exact() -> None:
    v = np.array([0.9, 0.8, 0.7])
    cand = np.ones(3, bool)
    # top-1: mean regret (0 + 10 + 20) / 3; best of 2 distinct: pairs (0,10,0) -> 10/3
    assert evaluate.random_regret(v, cand, 1) == pytest.approx(10.0)
    assert evaluate.random_regret(v, cand, 2) == pytest.approx(10.0 / 3)


def test_cli_import_and_eval_json(workspace: object, tmp_path: Path) -> None:
    runner = CliRunner()
    meta = str(DATA / "medmnist_meta_features.csv")
    table = str(DATA / "medmnist_plus_doerrich2025.csv")
    out = runner.invoke(app, ["strategy", "import", table, "--source", "p", "--meta", meta])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["strategy", "eval", "--source", "p", "--metric", "acc", "--json"])
    assert out.exit_code == 0, out.output
    import json

    data = json.loads(out.output)
    assert len(data["datasets"]) == 12
    assert data["summary"]["best_mean"]["top1_mean"] == pytest.approx(1.7675, abs=1e-3)
    assert data["summary"]["kernel-regret"]["top1_mean"] < data["summary"]["best_mean"]["top1_mean"]
    text = runner.invoke(app, ["strategy", "eval", "--source", "p", "--metric", "acc"]).output
    assert "top-1 regret (pts)" in text and "best-of-top-3 regret (pts)" in text
    assert "regret: metric points (x 100)" in " ".join(text.split())
    bad = runner.invoke(app, ["strategy", "eval", "--source", "nope", "--metric", "acc"])
    assert isinstance(bad.exception, NotFoundError) and "'nope' is not imported" in str(
        bad.exception
    )
    chart = tmp_path / "charts" / "regrets.png"
    out = runner.invoke(
        app, ["strategy", "eval", "--source", "p", "--metric", "acc", "--png", str(chart)]
    )
    assert out.exit_code == 0 and f"drawn in {chart}" in out.output, out.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", chart.read_bytes()[16:24])
    assert width > 900 and height > 500  # 12 data sets x 5 methods, two panels
    bad = runner.invoke(
        app, ["strategy", "eval", "--source", "p", "--metric", "acc", "--png", str(tmp_path)]
    )
    assert isinstance(bad.exception, InputError) and "is a folder; expected a file name" in str(
        bad.exception
    )
    # a PNG chart was written under a .jpg name: refused before the evaluation, as for a grid
    jpg = tmp_path / "regrets.jpg"
    bad = runner.invoke(
        app, ["strategy", "eval", "--source", "p", "--metric", "acc", "--png", str(jpg)]
    )
    assert isinstance(bad.exception, InputError) and not jpg.exists()
    assert f"--png '{jpg}' has suffix '.jpg': expected a .png path" in str(bad.exception)
    # --k 0 reached math.comb in the random baseline: a ValueError traceback
    bad = runner.invoke(app, ["strategy", "eval", "--source", "p", "--metric", "acc", "--k", "0"])
    assert isinstance(bad.exception, InputError) and "--k 0: expected an integer >= 1" in str(
        bad.exception
    )


def test_strategy_package_does_not_import_torch() -> None:
    code = (
        "import sys, pomlia_hpc.strategy.kb, pomlia_hpc.strategy.learner, "
        "pomlia_hpc.strategy.evaluate, pomlia_hpc.strategy.service, pomlia_hpc.strategy.recommend;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _fingerprint_groups(
    n_groups: int = 3, per_group: int = 4, n_strat: int = 8
) -> tuple[learner.Matrix, np.ndarray]:
    """Data sets whose best strategies depend on a group that only their fingerprints show
    (meta-features: random, unrelated to the group), and the fingerprint distances between
    them (0.1 within a group, 1.0 across, with a little noise)."""
    rng = np.random.default_rng(1)
    group_pref = rng.normal(0, 0.05, (n_groups, n_strat))
    obs, meta, group = [], {}, []
    for g in range(n_groups):
        for i in range(per_group):
            name = f"g{g}d{i}"
            group.append(g)
            meta[name] = {
                "task_type": "multi-class",
                "n_channels": int(rng.choice([1, 3])),
                "n_classes": int(rng.integers(2, 12)),
                "n_train": int(10 ** rng.uniform(2, 5)),
            }
            vals = 0.7 + group_pref[g] + rng.normal(0, 0.005, n_strat)
            vals[g] += 0.1  # each group has its own clear winner
            for s in range(n_strat):
                strat = {"arch": f"a{s}", "init": "scratch", "mode": "full", "img_size": 28}
                obs.append(Observation("syn", name, strat, f"{s:04d}", float(vals[s])))
    m = learner.build_matrix(KnowledgeBase("acc", obs, meta))
    gi = np.array(
        [
            group[[f"g{g}d{i}" for g in range(n_groups) for i in range(per_group)].index(d)]
            for d in m.datasets
        ]
    )
    fp = np.where(gi[:, None] == gi[None, :], 0.1, 1.0) + rng.uniform(0, 0.02, (len(gi),) * 2)
    fp = (fp + fp.T) / 2
    np.fill_diagonal(fp, 0.0)
    return m, fp


def test_loo_compares_data_sets_by_their_fingerprints_when_given() -> None:
    """The evaluation measures the learner as ``recommend`` answers: with the fingerprint
    distances between the data sets (the bandwidth chosen on those between the other data
    sets), it finds the group that the meta-features do not show."""
    m, fp = _fingerprint_groups()
    plain = evaluate.loo(m).to_dict()["summary"]
    res = evaluate.loo(m, fingerprints=fp, encoder="enc")
    with_fp = res.to_dict()["summary"]
    assert res.similarity == "meta-features + fingerprint (enc)"
    assert with_fp["kernel-regret"]["top1_mean"] < 0.5 * plain["kernel-regret"]["top1_mean"]
    assert with_fp["kernel-regret"]["top1_mean"] < 0.5 * with_fp["best_mean"]["top1_mean"]
    assert all(math.isfinite(h) for h in res.bandwidths)  # a local kernel, not the mean
    assert evaluate.loo(m).similarity == "meta-features"


def test_fingerprints_that_rank_worse_than_the_meta_features_are_not_used() -> None:
    """Fingerprints that put each data set near the *other* groups (an encoder that does not
    see what matters for the strategies) rank the known data sets worse than the
    meta-features alone: the learner falls back on metadata alone, and says so."""
    m, fp = _fingerprint_groups()
    off = ~np.eye(len(fp), dtype=bool)
    wrong = np.where(off, 1.1 - fp, 0.0)  # near becomes far and far near
    fitted = learner.KernelRegret().fit(m, fingerprints=wrong)
    assert fitted.fingerprints_offered and not fitted.uses_fingerprints
    plain = learner.KernelRegret().fit(m)
    assert fitted.h == plain.h
    np.testing.assert_array_equal(
        fitted.rank(m.features[0], fingerprints=wrong[0]).order, plain.rank(m.features[0]).order
    )
    res = evaluate.loo(m, fingerprints=wrong, encoder="enc")
    assert res.similarity == "meta-features (fingerprints of enc not used)"
    assert res.to_dict()["summary"] == evaluate.loo(m).to_dict()["summary"]
    assert learner.KernelRegret().fit(m, fingerprints=fp).uses_fingerprints  # the right ones


def test_the_similarity_label_says_how_many_fits_kept_the_fingerprints() -> None:
    label = learner.similarity_label
    assert label(None, 0, 0) == label("enc", 0, 0) == "meta-features"
    assert label("enc", 9, 9) == "meta-features + fingerprint (enc)"
    assert label("enc", 9, 0) == "meta-features (fingerprints of enc not used)"
    assert label("enc", 9, 3) == "meta-features + fingerprint (enc) in 3 of 9 fits"


def test_fewer_than_3_known_data_sets_cannot_judge_fingerprints() -> None:
    """With 2 known data sets there is no leave-one-out to judge the fingerprints by, and the
    learner takes the plain mean: it says it compares by metadata alone, as it does."""
    m, fp = _fingerprint_groups()
    two = m.subset([0, 1])
    fitted = learner.KernelRegret().fit(two, fingerprints=fp[:2, :2])
    assert fitted.fingerprints_offered and not fitted.uses_fingerprints
    assert math.isinf(fitted.h)
    one_h = learner.KernelRegret(bandwidths=(0.5,)).fit(m, fingerprints=1.1 - fp)
    assert one_h.fingerprints_offered and not one_h.uses_fingerprints  # judged with one h too
    assert learner.KernelRegret(bandwidths=(0.5,)).fit(m, fingerprints=fp).uses_fingerprints


def test_fingerprints_count_as_much_as_the_meta_features_and_unknown_ones_as_typical() -> None:
    m, fp = _fingerprint_groups()
    fitted = learner.KernelRegret().fit(m, fingerprints=fp)
    assert fitted.uses_fingerprints
    std = learner.Standardizer(m.features)
    d_meta = std.distances(m.features[:1], m.features)[0]
    off = ~np.eye(len(fp), dtype=bool)
    scale = np.median(std.distances(m.features, m.features)[off]) / np.median(fp[off])
    combined = fitted.distances(m.features[0], fp[0])
    np.testing.assert_allclose(combined, np.sqrt(d_meta**2 + (scale * fp[0]) ** 2))
    # a data set without fingerprints: every fingerprint distance typical (the median)
    typical = np.median(std.distances(m.features, m.features)[off])
    np.testing.assert_allclose(fitted.distances(m.features[0]), np.sqrt(d_meta**2 + typical**2))
    # no known pair between the training data sets: metadata alone
    unknown = learner.KernelRegret().fit(m, fingerprints=np.full(fp.shape, np.nan))
    assert not unknown.uses_fingerprints
    np.testing.assert_allclose(unknown.distances(m.features[0], fp[0]), d_meta)


def test_a_data_set_where_every_run_failed_does_not_rank_its_failures_first() -> None:
    # Its row has no best to measure regret from: it used to give the failed strategies a
    # regret of -inf, which ranked them first wherever that data set had any weight.
    values = np.array([[0.9, 0.8, np.nan], [0.7, 0.9, 0.6], [np.nan, np.nan, np.nan]])
    fail = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    r = learner.regrets(values, fail)
    assert np.isfinite(r).all()
    np.testing.assert_allclose(r[2], 0.0)
    # the failed cell: the row's worst (10), raised to the typical worst over the rows where
    # two or more strategies ran (median of 10 and 30)
    np.testing.assert_allclose(r[0], [0.0, 10.0, 20.0])


def test_failing_costs_something_where_only_one_strategy_ran() -> None:
    # One value per data set: the row's worst regret is 0, so a strategy that crashed on
    # every run cost nothing and could be recommended first.
    values = np.array([[0.8, np.nan], [0.7, np.nan]])
    fail = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(learner.regrets(values, fail), [[0.0, 80.0], [0.0, 70.0]])
    ranking = learner.KernelRegret().fit(_matrix(values, fail)).rank(np.zeros(11))
    assert list(ranking.order) == [0, 1]


def test_evaluation_scores_a_pick_that_failed_on_the_held_out_set_not_the_next_one() -> None:
    good, bad = [0.85, 0.9, 0.5], [0.85, np.nan, 0.5]
    values = np.array([good, good, good, bad])
    fail = np.zeros_like(values)
    fail[3, 1] = 1.0  # strategy 1, first everywhere else, crashed on every run of data set 3
    res = evaluate.loo(_matrix(values, fail), k=1)
    # its cost there: the typical worst regret (40 points), not the 0 of the next pick
    assert res.methods["best_mean"].top1[3] == pytest.approx(40.0)
    assert res.methods["random"].top1[3] == pytest.approx((0 + 35 + 40) / 3)
    fail[3, 1] = 0.0  # never tried there: not known, skipped
    assert evaluate.loo(_matrix(values, fail), k=1).methods["best_mean"].top1[3] == 0.0


def test_two_imports_of_one_source_at_once_both_finish(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `strategy import --replace` of one source at once on PostgreSQL: both deleted the
    old source's rows, and the loser failed with a raw "duplicate key value violates unique
    constraint kb_sources_name_key". The second now waits for the first and replaces it."""
    meta = _write(tmp_path, META, "m.csv")
    kb.import_table(registry, _write(tmp_path, GOOD), "t", meta_path=meta)
    both_read = threading.Barrier(2, timeout=30)
    read = kb.check_file

    def read_then_wait(*args: Any, **kwargs: Any) -> Any:
        table = read(*args, **kwargs)
        both_read.wait()  # both have checked the old source and read the file
        return table

    monkeypatch.setattr(kb, "check_file", read_then_wait)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            kb.import_table(registry, tmp_path / "r.csv", "t", meta_path=meta, replace=True)
        except BaseException as exc:  # reported below, with the test's failure
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SQLAlchemy's "expected to delete 1 row(s)" too
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert _n_results(registry) == 2
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(KbSource)) == 1


def test_a_file_with_a_byte_order_mark_is_read(registry: Registry, tmp_path: Path) -> None:
    """A CSV saved by a spreadsheet starts with a UTF-8 byte-order mark: both files were
    refused with "line 1: missing column(s) dataset"."""
    results = tmp_path / "bom.csv"
    results.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    meta = tmp_path / "bom-meta.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + META.encode())
    assert kb.import_table(registry, results, "t", meta_path=meta).n_results == 2


COLS = "dataset,arch,init,mode,img_size,metric,value,meta_task_type,meta_n_channels,"
COLS += "meta_n_classes,meta_n_train,meta_dims,meta_image_size,meta_n_test\n"
ROW = "a,r,s,full,28,acc,0.9,multi-class,3,8,1000,2,28,100\n"


@pytest.mark.parametrize(
    ("row", "column", "expected"),
    [
        (ROW.replace(",28,acc", ",99999999999999999999,acc"), "img_size", "[1, 4096]"),
        (ROW.replace(",2,28,", ",7,28,"), "meta_dims", "2 or 3"),
        (ROW.replace(",3,8,", ",7,8,"), "meta_n_channels", "1 or 3"),
        (ROW.replace(",2,28,", ",2,99999999,"), "meta_image_size", "[1, 4096]"),
        (ROW.replace(",1000,", ",100000000000000000000,"), "meta_n_train", "[1, 1000000000]"),
        (ROW.replace(",3,8,", ",3,100000,"), "meta_n_classes", "[1, 500]"),
        (ROW.replace(",100\n", ",0\n"), "meta_n_test", "[1, 1000000000]"),
    ],
)
def test_values_data_add_would_refuse_are_refused(
    registry: Registry, tmp_path: Path, row: str, column: str, expected: str
) -> None:
    """`strategy import` took a 1e20-px input size (recommend then expected 3.9e+35 s), 7
    channels, 7 dims, 100000 classes: the limits are now those of `data add`."""
    path = _write(tmp_path, COLS + row)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t")
    msg = str(err.value)
    assert f"{path}: line 2, column '{column}'" in msg and expected in msg, msg
    assert _n_results(registry) == 0
    assert kb.import_table(registry, _write(tmp_path, COLS + ROW, "ok.csv"), "t").n_results == 1


def test_the_limits_are_those_of_data_add() -> None:
    assert (longformat.MAX_SIDE_PX, longformat.MAX_CLASSES) == (MAX_SIDE_PX, MAX_CLASSES)


def test_meta_features_another_source_defines_differently_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """Two sources with different meta-features for one data set were merged silently (the
    first source's won in the recommender); the same ones are fine."""
    meta = _write(tmp_path, META, "m.csv")
    kb.import_table(registry, _write(tmp_path, GOOD), "one", meta_path=meta)
    assert kb.import_table(registry, _write(tmp_path, GOOD), "two", meta_path=meta).n_results
    other = META.replace("a,multi-class,3,8,1000", "a,multi-class,3,9,1000")
    other = _write(tmp_path, other, "m2.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, _write(tmp_path, GOOD), "three", meta_path=other)
    msg = str(err.value)
    assert "data set 'a': meta-features differ from those of source 'one'" in msg, msg
    assert "n_classes 9 here, 8 there" in msg and "nothing was imported" in msg
    assert [s.name for s in kb.list_sources(registry)] == ["one", "two"]
    # Free text may differ (a licence written another way, own notes): not a conflict.
    licensed = META.replace("n_train\n", "n_train,license\n").replace("0\n", "0,CC BY 4.0\n")
    worded = licensed.replace("CC BY 4.0", "CC-BY-4.0")
    kb.import_table(
        registry, _write(tmp_path, GOOD), "four", meta_path=_write(tmp_path, licensed, "m3.csv")
    )
    kb.import_table(
        registry, _write(tmp_path, GOOD), "five", meta_path=_write(tmp_path, worded, "m4.csv")
    )


def test_loo_recommends_each_data_set_from_those_of_its_dimensionality_only() -> None:
    """As `pomlia recommend` compares a task with known data sets of its dimensionality only,
    the evaluation does: a 2D data set's regrets, the learner's and every baseline's, are those
    of an evaluation without the 3D ones, and a 3D data set with fewer than 2 others of its
    kind is left out."""
    m = _synthetic(3, 4)  # the third group stands for volumes
    dims = [2] * 8 + [3] * 4
    both = evaluate.loo(m, dims=dims)
    flat = evaluate.loo(m.subset(range(8)))
    for name, method in flat.methods.items():
        assert both.methods[name].top1[:8] == method.top1, name
        assert both.methods[name].topk[:8] == method.topk, name
    assert both.datasets == m.datasets
    lone = evaluate.loo(m.subset(range(9)), dims=dims[:9])
    assert lone.datasets == m.datasets[:8]  # the one volume set has no other of its kind
