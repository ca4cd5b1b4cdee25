"""``scripts/bench/registry_strategies.py``: its grid is what the knowledge base sees as distinct
strategies, each fits its study's space, and two workers never run the same study."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pomlia_hpc.automl.space import SpaceOptions, build_space, configs_from_values
from pomlia_hpc.strategy.longformat import strategy_key
from pomlia_hpc.strategy.runstats import run_strategy

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
    finally:
        other.kill()
        other.wait()
    assert bench.claim(work, "b-scratch")  # its worker is gone: taken over
    (work.done / "c-model.json").write_text("{}")
    assert not bench.claim(work, "c-model")  # finished
