"""``scripts/bench/registry_strategies.py``: its grid is what the knowledge base sees as distinct
strategies, each fits its study's space, two workers never run the same study, training seeds
add studies of their own, and the report's evaluations go through the product's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pomlia_hpc.automl.space import SpaceOptions, build_space, configs_from_values
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry, Run, Task
from pomlia_hpc.strategy.longformat import strategy_key
from pomlia_hpc.strategy.runstats import run_strategy
from pomlia_hpc.strategy.service import evaluate_source
from pomlia_hpc.workspace import Workspace

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "registry_strategies.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_registry_strategies", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_every_strategy_of_the_grid_is_its_own_strategy_in_the_knowledge_base(
    bench: ModuleType,
) -> None:
    grid = bench.grid(300)
    keys = {strategy_key(run_strategy(s.values, 28)) for s in grid}
    assert len(grid) == len(keys) == 10
    assert len({s.label for s in grid}) == len(grid)


def test_each_strategy_fits_the_space_of_the_study_that_runs_it(bench: ModuleType) -> None:
    spaces = {
        "scratch": SpaceOptions(archs=("small_cnn", "mobilenet_v3_small", bench.ARCH)),
        "encoder": SpaceOptions(archs=("small_cnn",), encoder_arch=bench.ARCH, extra_data=True),
        "model": SpaceOptions(archs=(bench.ARCH,), model_arch=bench.ARCH),
    }
    for kind, options in spaces.items():
        values = [s.values for s in bench.grid(300) if s.kind == kind]
        assert values
        configs = configs_from_values(values, build_space(options), kind)
        assert [dict(c) for c in configs] == values  # nothing added, nothing dropped


def test_a_study_is_run_by_one_worker_and_taken_over_when_its_worker_died(
    bench: ModuleType, tmp_path: Path
) -> None:
    work = bench.Work(tmp_path)
    for d in (work.claims, work.done):
        d.mkdir()
    assert bench.claim(work, "a-scratch")
    assert bench.claim(work, "a-scratch")  # this process again (a resumed run)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (work.claims / "b-scratch").write_text(str(other.pid))
        assert not bench.claim(work, "b-scratch")  # a live worker holds it
        # so a worker ending now leaves the report to it (its own claim does not count)
        assert bench.running_elsewhere(work) == ["b-scratch"]
        (work.done / "b-scratch.json").write_text("{}")
        assert bench.running_elsewhere(work) == []  # finished: the report may be written
        (work.done / "b-scratch.json").unlink()
    finally:
        other.kill()
        other.wait()
    assert bench.running_elsewhere(work) == []  # its worker is gone
    assert bench.claim(work, "b-scratch")  # taken over
    (work.done / "c-model.json").write_text("{}")
    assert not bench.claim(work, "c-model")  # finished


def test_a_seed_other_than_the_first_is_in_the_study_name_and_seeds_run_one_after_another(
    bench: ModuleType,
) -> None:
    assert bench.study_name("t_a", "scratch", 0, 0) == "t_a-scratch"  # the first seed's
    assert bench.study_name("t_a", "model", 2, 0) == "t_a-model-seed2"
    a = Namespace(extra=300, only=None, seeds=[2, 3])
    order = bench.studies(["t_a", "t_b"], a)
    assert order[:4] == [(2, "t_a", k) for k in bench.KINDS] + [(2, "t_b", "scratch")]
    assert [s for s, _, _ in order] == [2] * 6 + [3] * 6


def test_prune_deletes_the_checkpoints_of_a_finished_study_only(
    bench: ModuleType, tmp_path: Path
) -> None:
    ws = Workspace(home=tmp_path, db_url="sqlite://", cluster_profile="local")
    folder = tmp_path / "runs" / "t_a-encoder"
    kept = [folder / "study.json", folder / "configs/k1/state.json", folder / "extra/nearest.npz"]
    gone = [
        folder / "configs/k1/ckpt/epoch-9/mp_rank_00_model_states.pt",
        folder / "configs/k1/model-e9.pt",
        folder / "init/encoder.pt",
    ]
    for f in kept + gone:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 10)
    other = tmp_path / "runs" / "t_a-model" / "configs/k2/model-e9.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    assert bench.prune(ws, "t_a-encoder") == 30
    assert all(f.is_file() for f in kept) and not any(f.exists() for f in gone)
    assert not (folder / "configs/k1/ckpt").exists() and other.is_file()


def test_cells_over_seeds_mean_std_and_how_much_they_move(bench: ModuleType) -> None:
    matrix = {
        0: {"t_a": {"x": 0.5, "y": 0.9}, "t_b": {"x": 0.8, "y": None}},
        2: {"t_a": {"x": 0.85, "y": 0.8}, "t_b": {"x": 0.6, "y": 0.4}},
    }
    keys = {"x": "kx", "y": "ky"}
    per_seed = {s: bench.cells_of(m, keys) for s, m in matrix.items()}
    assert per_seed[0][("t_b", "ky")] == (None, None, 1, 1)  # failed
    mean = bench.mean_cells(per_seed)
    assert mean[("t_a", "kx")] == pytest.approx((0.675, np.std([0.5, 0.85], ddof=1), 2, 0))
    assert mean[("t_b", "ky")] == (0.4, None, 2, 1)  # the run that succeeded
    spread = bench.seed_spread(matrix)
    assert spread["n_cells"] == 3  # t_b y failed on seed 0
    assert spread["mean"] == pytest.approx((35 + 10 + 20) / 3)
    assert spread["max"] == pytest.approx(35)
    assert spread["same_best_tasks"] == 1  # t_a: y, then x; t_b: x both times
    assert spread["n_tasks"] == 2 and spread["pairs"] == {"0-2": pytest.approx(65 / 3)}
    # t_a: y (seed 0's best) costs 5 on seed 2, x (seed 2's) 40 on seed 0; t_b: 0 both ways
    assert spread["other_seed_regret"] == pytest.approx((5 + 40 + 0 + 0) / 4)


FLAGS = ("bloodmnist", "organcmnist", "dermamnist", "octmnist", "pneumoniamnist")


def _task(reg: Registry, flag: str, i: int) -> int:
    with reg.session() as s:
        ds = Dataset(name=f"{flag}_data")
        s.add(ds)
        s.flush()
        fp = {
            "counts": {"train": 100 * (i + 1)},
            "image_size": [28, 28],
            "channels": 3 if i % 2 else 1,
            "n_classes": 2 + i,
        }
        ver = DatasetVersion(dataset_id=ds.id, version="v1", store_path="-", fingerprint=fp)
        s.add(ver)
        s.flush()
        task = Task(name=f"t_{flag}", dataset_version_id=ver.id, metric="acc", task_type="binary")
        s.add(task)
        s.flush()
        return int(task.id)


def _record(reg: Registry, task_id: int, config: dict[str, Any], val: float, test: float) -> int:
    with reg.session() as s:
        metrics = {"objective": val, "val": {"acc": val}, "test": {"acc": test}}
        run = Run(task_id=task_id, config=config, metrics=metrics, status="ok")
        run.cost_s = 10.0
        s.add(run)
        s.flush()
        return int(run.id)


def test_report_evaluates_the_registry_each_seed_and_the_mean_through_the_product_path(
    bench: ModuleType, tmp_path: Path
) -> None:
    """The per-seed leave-one-task-out on the multi-seed registry is that of a registry holding
    that seed's runs only; the registry's is ``pomlia strategy eval --source registry``."""
    both = Registry.open(f"sqlite:///{tmp_path / 'both.db'}")
    only2 = Registry.open(f"sqlite:///{tmp_path / 'only2.db'}")
    work = bench.Work(tmp_path / "work")
    for d in (work.root, work.done):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    a = Namespace(extra=300, only=None, seed=0, seeds=[0, 2], tasks=list(FLAGS), epochs=1)
    a.sizes = [30, 10, 50]
    grid = bench.grid(a.extra)
    for i, flag in enumerate(FLAGS):
        ids = {id(r): _task(r, flag, i) for r in (both, only2)}
        for seed in a.seeds:
            for kind in bench.KINDS:
                trials = []
                for s in (s for s in grid if s.kind == kind):
                    val, test = rng.uniform(0.3, 1.0, 2).round(3)
                    run_id = _record(both, ids[id(both)], s.values, val, test)
                    if seed == 2:
                        _record(only2, ids[id(only2)], s.values, val, test)
                    trials.append(
                        {
                            "run_id": run_id,
                            "status": "ok",
                            "test": test,
                            "cost_s": 10.0,
                            "config": s.values,
                        }
                    )
                name = bench.study_name(f"t_{flag}", kind, seed, a.seed)
                record = {
                    "task": f"t_{flag}",
                    "kind": kind,
                    "seed": seed,
                    "wall_s": 1.0,
                    "trials": trials,
                }
                (work.done / f"{name}.json").write_text(json.dumps(record))
    ev = bench.evaluate(both, work, [f"t_{f}" for f in FLAGS], a)
    assert ev["missing_studies"] == [] and ev["seeds"] == [0, 2]
    summary = {k: ev[k]["summary"] for k in ("loo", "loo_mean")}
    assert summary["loo"] == evaluate_source(both, "registry", "acc", k=3).to_dict()["summary"]
    alone = evaluate_source(only2, "registry", "acc", k=3).to_dict()
    assert ev["loo_seed"]["2"]["summary"] == alone["summary"]
    assert ev["loo_seed"]["0"]["summary"] != alone["summary"]
    assert summary["loo_mean"] not in (summary["loo"], alone["summary"])
    assert sum(ev["registry_pick_seed"].values()) == len(FLAGS) * len(grid)
    res = {"commit": "c", "args": {"seed": 0}, "pieces": [], "setup": None, "results": ev}
    md = bench.summarize(res, a)
    assert "seed 2 top-1" in md and "mean of seeds best of 3" in md
    a.report_seeds = [2]  # --report-only --seeds 2: the registry's evaluation still counts all
    ev = bench.evaluate(both, work, [f"t_{f}" for f in FLAGS], a)
    assert ev["seeds"] == [2] and ev["other_seeds"] == {"0": [f"t_{f}" for f in sorted(FLAGS)]}
    assert ev["loo"]["summary"] == summary["loo"] and "loo_seed" not in ev
    means = {t: {lb: c["mean"] for lb, c in row.items()} for t, row in ev["mean"].items()}
    assert list(ev["matrix"]) == ["2"] and means == ev["matrix"]["2"]
    both.dispose()
    only2.dispose()
