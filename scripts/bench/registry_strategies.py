"""The strategy recommender's leave-one-dataset-out evaluation on the registry's own runs, over
a designed grid of strategies on look-alike tasks (issue 12, point 5).

Every task runs the same grid (:func:`grid`), each strategy once at ``--epochs`` with fixed
hyperparameters (:data:`COMMON` plus one learning-rate setting per training mode), through the
real stack (studies of the random optimizer whose configurations are the grid's, the local
executor, one trial at a time, DeepSpeed on CPU, registry records):

- from scratch: ``small_cnn``, ``mobilenet_v3_small``, ``resnet18_imagenet``;
- ``resnet18_imagenet`` from the fingerprint encoder (``init=encoder``): full fine-tuning,
  linear probe, freeze-then-unfreeze;
- ``resnet18_imagenet`` from a registered model of a similar task (``init=model``: the source
  task with the same number of channels) in the same three modes;
- ``small_cnn`` from scratch plus ``--extra`` nearest images of other data sets
  (``extra_data=nearest``, found with the encoder's index, labelled by 1-NN).

Set-up (worker 0, before its own studies): ``--tasks`` look-alikes of
:mod:`pomlia_hpc.data.synth` (28 px, ``--sizes`` images) and two source look-alikes
(:data:`SOURCES`: RGB and gray, ``--source-sizes``) are ingested; the encoder is trained on the
sources only (``--encoder-epochs``), every data set is embedded and indexed; a ``resnet18_imagenet``
is trained from scratch on each source (``--source-epochs``) and registered. The source tasks
are scored by AUC, so the registry's ACC evaluation holds the evaluated tasks only.

Evaluation: ``pomlia strategy eval --source registry --metric acc`` on the work folder's
registry (the same call: :func:`pomlia_hpc.strategy.service.evaluate_source`, k = 3): for each
task, the learner and the baselines (random, best mean, best mean rank, nearest by metadata)
rank the strategies from the other tasks' runs only; regret of the first pick and of the best
of the first 3, in test ACC points. Every input is 28 px, so the "cheap" restriction (inputs <=
64 px or frozen features) keeps every strategy; it is computed and reported all the same.

Two workers share one work folder (SQLite registry, WAL): each claims the next study not taken
(per task: ``scratch``, ``encoder``, ``model``); worker 0 prepares the set-up first while the
other runs scratch studies. A stopped run resumes (a study whose worker died is taken over and
continued). The worker that finishes last writes the report (one that ends while the other still
runs a study writes none); ``--report-only`` writes it again.

Training seeds: ``--seeds`` runs every cell once per seed, seed by seed, in the same work folder
and registry, on the same set-up (made with ``--seed``, the folder's first seed, whose studies'
names carry no seed; another seed's are ``<task>-<kind>-seed<S>``), so seeds can be added to a
finished folder. The knowledge base keeps, of a cell's runs, the test ACC of the one with the
best validation ACC; the report gives that evaluation and, from the bench's own run records,
the same leave-one-task-out on each seed's runs alone and on the mean over seeds. A finished
study's trial checkpoints (0.4 GB a study with ResNet-18s) are deleted once it is recorded,
unless ``--keep-checkpoints``: the registry's rows and the registered best models stay.

    W="--out bench-results/registry-strategies --work bench-results/registry-strategies/work"
    python scripts/bench/registry_strategies.py $W --worker 0 &
    python scripts/bench/registry_strategies.py $W --worker 1
    python scripts/bench/registry_strategies.py $W --report-only
    python scripts/bench/registry_strategies.py $W --seeds 2 3 --worker 0 &   # two more seeds
    python scripts/bench/registry_strategies.py $W --seeds 2 3 --worker 1

Time with the defaults (9 tasks x 10 strategies, 9 epochs, 300 / 100 / 500 images), measured
on two single-thread job slots at load 2-4 (docs/BENCHMARKS.md): set-up 17 min (the encoder
12 of it), 34-47 s of wall time per trial, 38 min in all. Tasks are taken in ``--tasks``
order, so a run stopped early holds whole tasks. DeepSpeed compiles its CPU communication op
into one cache per user (``~/.cache/torch_extensions``) whose build depends on the venv's path
(a symlinked copy counts as another), so trials of processes started from two venv paths
rebuild it each time, 40-50 s a trial; the workers here use their own cache under ``--work``
(``TORCH_EXTENSIONS_DIR``, unless set). Writes ``registry_strategies.json`` and
``registry_strategies.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl import trials_of  # noqa: E402
from automl_warm import COMMIT  # noqa: E402

from pomlia_hpc.automl.engine import EngineOptions  # noqa: E402
from pomlia_hpc.automl.space import SpaceOptions  # noqa: E402
from pomlia_hpc.automl.study import create_study, load_spec, run_study, study_dir  # noqa: E402
from pomlia_hpc.automl.tasks import add_task, get_task  # noqa: E402
from pomlia_hpc.data.api import ingest  # noqa: E402
from pomlia_hpc.data.medmnist_info import flag_info  # noqa: E402
from pomlia_hpc.data.synth import make_split  # noqa: E402
from pomlia_hpc.errors import NotFoundError  # noqa: E402
from pomlia_hpc.files import write_npz  # noqa: E402
from pomlia_hpc.processes import pid_alive  # noqa: E402
from pomlia_hpc.registry import Registry  # noqa: E402
from pomlia_hpc.strategy.kb import load  # noqa: E402
from pomlia_hpc.strategy.longformat import strategy_key  # noqa: E402
from pomlia_hpc.strategy.runstats import run_strategy  # noqa: E402
from pomlia_hpc.strategy.service import evaluate_kb, evaluate_source  # noqa: E402
from pomlia_hpc.workspace import Workspace  # noqa: E402

ARCH = "resnet18_imagenet"  # the encoder's and the source models' architecture
ENCODER = "grid-encoder"
#: Source look-alikes by channel count: the similar task whose model ``init=model`` starts from.
SOURCES: dict[int, str] = {3: "pathmnist", 1: "organamnist"}
COMMON: dict[str, Any] = {
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "batch_size": 32,
    "augmentation": "none",
}
#: Learning rates per training mode (the same for every task and architecture).
SCRATCH = {"mode": "full", "lr": 3e-3}
FINE_TUNE = {"mode": "full", "lr": 1e-3}
PROBE = {"mode": "linear_probe", "lr_head": 3e-2}
FREEZE = {"mode": "freeze_unfreeze", "lr": 1e-3, "lr_head": 3e-2, "unfreeze_epoch": 2}
#: Which study of a task runs each strategy, and the study's weight sources.
KINDS = ("scratch", "encoder", "model")


@dataclass(frozen=True)
class Strategy:
    label: str
    kind: str  # the study it runs in
    values: dict[str, Any]


def grid(extra: int) -> list[Strategy]:
    """The strategies every task runs (see the module docstring). A study without initial
    weights has no ``init`` / ``mode`` in its space (from scratch, full training is implied)."""
    lr = {"lr": SCRATCH["lr"]}
    out = [
        Strategy("small_cnn scratch", "scratch", {"arch": "small_cnn", **lr}),
        Strategy("mobilenet scratch", "scratch", {"arch": "mobilenet_v3_small", **lr}),
        Strategy("resnet18 scratch", "scratch", {"arch": ARCH, **lr}),
    ]
    for init in ("encoder", "model"):
        for mode, hp in (("full", FINE_TUNE), ("linear_probe", PROBE), ("freeze", FREEZE)):
            values = {"arch": ARCH, "init": init, **hp}
            out.append(Strategy(f"resnet18 {init} {mode}", init, values))
    nearest = {"extra_data": "nearest", "extra_n": extra}
    values = {"arch": "small_cnn", "init": "scratch", **SCRATCH, **nearest}
    out.append(Strategy(f"small_cnn scratch + {extra} nearest", "encoder", values))
    for s in out:
        s.values.update(COMMON)
        if s.kind == "encoder":
            s.values.setdefault("extra_data", "none")
    return out


# ----------------------------------------------------------------------------- work folder


@dataclass(frozen=True)
class Work:
    """The shared work folder: workspace, registry, claims, finished studies, set-up."""

    root: Path

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def setup(self) -> Path:
        return self.root / "setup.json"

    @property
    def args(self) -> Path:
        return self.root / "args.json"

    def workspace(self) -> Workspace:
        return Workspace(
            home=self.root / "home",
            db_url=f"sqlite:///{self.root / 'home' / 'registry.db'}",
            cluster_profile="local",
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive between the workers (ingestion, claims)."""
        with open(self.root / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def running_elsewhere(work: Work) -> list[str]:
    """The studies another live worker holds and has not finished."""
    with work.lock():
        held = []
        for path in sorted(work.claims.iterdir()):
            pid = int(path.read_text() or 0)
            done = (work.done / f"{path.name}.json").is_file()
            if not done and pid != os.getpid() and pid_alive(pid):
                held.append(path.name)
        return held


def claim(work: Work, study: str) -> bool:
    """Take ``study`` unless it is finished or another live worker holds it."""
    with work.lock():
        if (work.done / f"{study}.json").is_file():
            return False
        path = work.claims / study
        if path.is_file():
            pid = int(path.read_text() or 0)
            if pid != os.getpid() and pid_alive(pid):
                return False
        path.write_text(str(os.getpid()))
        return True


# ----------------------------------------------------------------------------- data and set-up


def lookalike(flag: str, sizes: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=28, split=split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    return arrays


def ensure_task(
    ws: Workspace, reg: Registry, name: str, flag: str, sizes: tuple[int, int, int], metric: str
) -> None:
    """Task ``name`` on a new look-alike data set ``<name>_data`` (kept when it exists)."""
    try:
        get_task(reg, name)
        return
    except NotFoundError:
        pass
    ws.tmp.mkdir(parents=True, exist_ok=True)
    path = ws.tmp / f"{name}.npz"
    write_npz(path, lookalike(flag, sizes, seed=sum(map(ord, flag))), compress=False)
    info = flag_info(flag)
    rec = ingest(
        ws,
        reg,
        f"{name}_data",
        path,
        class_names=list(info.class_names),
        task_type=info.task_type,
        workers=1,
    )
    add_task(reg, name, f"{name}_data@{rec.version}", metric)
    path.unlink()


def source_task(channels: int) -> str:
    return f"src_{SOURCES[channels]}"


def prepare(ws: Workspace, reg: Registry, tasks: list[str], a: Any) -> dict[str, Any]:
    """Encoder, embeddings and index, source models (worker 0); returns the set-up record."""
    from pomlia_hpc.data.store import open_version
    from pomlia_hpc.fingerprint.autoencoder import EncoderConfig
    from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
    from pomlia_hpc.fingerprint.index import build_index
    from pomlia_hpc.fingerprint.shards import run_shard
    from pomlia_hpc.fingerprint.train import TrainConfig, train_encoder

    t0 = time.perf_counter()
    sources = [f"{source_task(c)}_data" for c in SOURCES]
    config = TrainConfig(
        encoder=EncoderConfig(latent_dim=16, image_size=28, stem="imagenet"),
        epochs=a.encoder_epochs,
        batch_size=64,
        num_workers=0,
    )
    enc = train_encoder(reg, ws, ENCODER, sources, config, resources={"cpus_per_task": 1})
    t_enc = time.perf_counter() - t0
    refs = [open_version(reg, d).ref for d in [*sources, *(f"{t}_data" for t in tasks)]]
    plan = plan_extraction(reg, ws, ENCODER, refs, shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, ws, ENCODER)
    t_index = time.perf_counter() - t0 - t_enc
    models: dict[str, str] = {}
    source_results: dict[str, Any] = {}
    for channels in SOURCES:
        task = source_task(channels)
        name = f"{task}-model"
        values = {"arch": ARCH, "lr": SCRATCH["lr"], **COMMON}
        spec = _study_spec(ws, reg, task, name, [values], a.source_epochs, a.seed)
        result = run_study(reg, ws, spec, resume=name in _started, poll_s=0.5)
        models[str(channels)] = f"{name}-best"
        trials = trials_of(reg, name, "auc")
        source_results[task] = {"test_auc": trials[-1]["test"] if trials else None}
        source_results[task]["wall_s"] = result.wall_s
    return {
        "encoder": ENCODER,
        "encoder_loss": list(enc.loss_curve),
        "models": models,
        "sources": source_results,
        "wall_s": {"encoder": t_enc, "index": t_index, "all": time.perf_counter() - t0},
    }


_started: set[str] = set()  # studies this process found already created (resumed)


def _study_spec(
    ws: Workspace,
    reg: Registry,
    task: str,
    name: str,
    configs: list[dict[str, Any]],
    epochs: int,
    seed: int,
    **weights: Any,
) -> Any:
    """The study ``name`` (created, or the existing one to resume) running ``configs`` once
    each at ``epochs``, trials seeded with ``seed``."""
    try:
        spec = load_spec(ws, name)
        _started.add(name)
        return spec
    except NotFoundError:
        pass
    plain = [c["arch"] for c in configs if c.get("init", "scratch") == "scratch"]
    archs = tuple(dict.fromkeys(plain))
    return create_study(
        reg,
        ws,
        task,
        name=name,
        n_trials=len(configs),
        max_epochs=epochs,
        min_epochs=epochs,
        parallel=1,
        optimizer="random",
        seed=seed,
        engine=EngineOptions(threads=1, seed=seed),
        space=SpaceOptions(archs=archs or (ARCH,)),
        initial_configs=configs,
        n_initial=len(configs),
        **weights,
    )


# ----------------------------------------------------------------------------- the studies


def chosen(a: Any) -> list[Strategy]:
    """The grid, or the strategies named by ``--only``."""
    g = grid(a.extra)
    unknown = set(a.only or []) - {s.label for s in g}
    if unknown:
        sys.exit(f"--only: unknown strategies {sorted(unknown)}; known: {[s.label for s in g]}")
    return [s for s in g if not a.only or s.label in a.only]


def study_name(task: str, kind: str, seed: int, first: int) -> str:
    """The study of ``kind`` on ``task`` with training seed ``seed``; those of the work
    folder's first seed (``--seed``) have no seed in their name."""
    return f"{task}-{kind}" if seed == first else f"{task}-{kind}-seed{seed}"


def studies(tasks: list[str], a: Any, seeds: list[int] | None = None) -> list[tuple[int, str, str]]:
    """(seed, task, kind) in the order they are taken: seed by seed, task by task, so a run
    stopped early holds whole seeds and tasks."""
    kinds = [k for k in KINDS if any(s.kind == k for s in chosen(a))]
    return [(s, t, k) for s in (seeds or a.seeds) for t in tasks for k in kinds]


def prune(ws: Workspace, study: str) -> int:
    """Delete the checkpoints of a finished study's trials and its copies of initial weights
    (the registry's rows and the registered best model stay); returns the bytes freed."""
    folder = study_dir(ws, study)
    files = [
        *folder.glob("configs/*/ckpt/**/*"),
        *folder.glob("configs/*/model-e*.pt"),
        *folder.glob("init/*.pt"),
    ]
    freed = 0
    for f in files:
        if f.is_file():
            freed += f.stat().st_size
            f.unlink()
    for d in sorted(folder.glob("configs/*/ckpt/**/"), key=lambda p: -len(p.parts)):
        d.rmdir()
    return freed


def run_one(
    ws: Workspace, reg: Registry, work: Work, seed: int, task: str, kind: str, a: Any
) -> None:
    setup = json.loads(work.setup.read_text()) if kind != "scratch" else {}
    weights: dict[str, Any] = {}
    if kind == "encoder":
        weights = {"encoder": setup["encoder"], "extra_data": True}
    elif kind == "model":
        channels = 3 if flag_info(task.removeprefix("t_")).channels == 3 else 1
        weights = {"init_model": setup["models"][str(channels)]}
    configs = [dict(s.values) for s in chosen(a) if s.kind == kind]
    name = study_name(task, kind, seed, a.seed)
    t0 = time.perf_counter()
    spec = _study_spec(ws, reg, task, name, configs, a.epochs, seed, **weights)
    run_study(reg, ws, spec, resume=name in _started, poll_s=0.5)
    record = {
        "study": name,
        "task": task,
        "kind": kind,
        "seed": seed,
        "worker": a.worker,
        "wall_s": time.perf_counter() - t0,
        "load_end": os.getloadavg(),
        "trials": trials_of(reg, name, "acc"),
    }
    tmp = work.done / f"{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(work.done / f"{name}.json")
    freed = 0 if a.keep_checkpoints else prune(ws, name)
    ok = sum(t["status"] == "ok" for t in record["trials"])
    print(
        f"{name}: {ok}/{len(configs)} ok, {record['wall_s']:.0f} s, "
        f"{freed / 2**20:.0f} MiB of checkpoints deleted",
        flush=True,
    )


def worker(ws: Workspace, reg: Registry, work: Work, tasks: list[str], a: Any) -> None:
    """Claim and run studies until none is left; worker 0 prepares the set-up first."""
    if a.worker == 0 and not work.setup.is_file():
        record = prepare(ws, reg, tasks, a)
        tmp = work.setup.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(work.setup)
        print(f"set-up: {record['wall_s']['all']:.0f} s", flush=True)
    while True:
        waiting = False
        for seed, task, kind in studies(tasks, a):
            if kind != "scratch" and not work.setup.is_file():
                waiting = True
                continue
            if claim(work, study_name(task, kind, seed, a.seed)):
                run_one(ws, reg, work, seed, task, kind, a)
                break
        else:
            if not waiting:
                return
            time.sleep(10)


# ----------------------------------------------------------------------------- the report


#: One grid cell's summary over its runs: (test ACC or None when every run failed, standard
#: deviation over seeds, runs, failed runs).
Cell = tuple[float | None, float | None, int, int]


def evaluate(reg: Registry, work: Work, tasks: list[str], a: Any) -> dict[str, Any]:
    """The results. From the bench's own run records: per seed, task and strategy the test ACC
    (``matrix``), their mean over seeds (``mean``) and how much a cell moves between seeds
    (``seed_spread``). The registry's leave-one-task-out (``loo``, ``loo_cheap``: the knowledge
    base's summary of a cell's runs, the test ACC of the one with the best validation ACC); with
    several seeds the same evaluation on each seed's runs alone (``loo_seed``) and on the mean
    over seeds (``loo_mean``). The seeds: ``a.report_seeds`` (``--report-only --seeds``, a
    seed stopped early left out, say), else every seed with a finished study; the registry's
    evaluation counts the registry's runs, the other seeds' too (``other_seeds``)."""
    labels = {strategy_key(run_strategy(s.values, 28)): s.label for s in grid(a.extra)}
    everything = [json.loads(p.read_text()) for p in sorted(work.done.glob("*.json"))]
    for rec in everything:
        rec["seed"] = int(rec.get("seed", a.seed))  # the first seed's records had none
    run_seed = {int(t["run_id"]): r["seed"] for r in everything for t in r["trials"]}
    seeds = sorted(getattr(a, "report_seeds", None) or {r["seed"] for r in everything})
    others: dict[str, list[str]] = {}
    for rec in everything:
        if rec["seed"] not in seeds:
            others.setdefault(str(rec["seed"]), []).append(rec["task"])
    done = {
        study_name(r["task"], r["kind"], r["seed"], a.seed): r
        for r in everything
        if r["seed"] in seeds
    }
    matrix: dict[int, dict[str, dict[str, float | None]]] = {s: {} for s in seeds}
    keys: dict[str, str] = {}  # label -> the knowledge base's strategy key
    failed: list[str] = []
    cost: dict[str, list[float]] = {}
    for rec in done.values():
        seed = rec["seed"]
        for t in rec["trials"]:
            key = strategy_key(run_strategy(t["config"], 28))
            label = labels.get(key, key)
            keys[label] = key
            ok = t["status"] == "ok"
            matrix[seed].setdefault(rec["task"], {})[label] = t["test"] if ok else None
            if not ok:
                failed.append(f"seed {seed} {rec['task']} {label} ({t['status']})")
            elif t["cost_s"] is not None:
                cost.setdefault(label, []).append(float(t["cost_s"]))
    names = [study_name(t, k, seed, a.seed) for seed, t, k in studies(tasks, a, seeds)]
    missing = [n for n in names if n not in done]
    started = {rec["task"] for rec in done.values()}
    complete = [
        t for t in tasks if t in started and not any(m.startswith(f"{t}-") for m in missing)
    ]
    per_seed = {s: cells_of(matrix[s], keys) for s in seeds}
    mean = mean_cells(per_seed)
    label_of = {k: lb for lb, k in keys.items()}
    mean_table: dict[str, dict[str, dict[str, Any]]] = {}
    for (task, key), c in mean.items():
        fields = ("mean", "std", "n_runs", "n_failed")
        mean_table.setdefault(task, {})[label_of[key]] = dict(zip(fields, c, strict=True))
    out: dict[str, Any] = {
        "seeds": seeds,
        "other_seeds": {s: sorted(set(ts)) for s, ts in others.items()},
        "matrix": {str(s): m for s, m in matrix.items()},
        "mean": mean_table,
        "seed_spread": seed_spread(matrix),
        "failed": failed,
        "missing_studies": missing,
        "complete_tasks": complete,
        "trial_cost_s": {k: float(np.mean(v)) for k, v in cost.items()},
        "study_wall_s": {k: v["wall_s"] for k, v in done.items()},
        "wall_per_trial_s": {
            kind: sum(v["wall_s"] for v in recs) / max(sum(len(v["trials"]) for v in recs), 1)
            for kind in KINDS
            if (recs := [v for v in done.values() if v["kind"] == kind])
        },
    }
    picks: dict[str, int] = {}  # the seed of the run the knowledge base keeps, per cell
    for o in load(reg, "acc", ["registry"]).observations:
        if o.dataset in complete and o.evidence:
            s = str(run_seed.get(o.evidence[0], "?"))
            picks[s] = picks.get(s, 0) + 1
    out["registry_pick_seed"] = picks

    def run(values: dict[tuple[str, str], Cell] | None, cheap: bool = False) -> dict[str, Any]:
        try:
            if values is None and len(complete) == len(started):
                return evaluate_source(reg, "registry", "acc", k=3, cheap=cheap).to_dict()
            # a stopped run: tasks with part of the grid would skew the comparison
            return loo_of(reg, complete, cheap, values).to_dict()
        except Exception as exc:  # reported: too few tasks finished, for example
            return {"error": str(exc)}

    out["loo"], out["loo_cheap"] = run(None), run(None, cheap=True)
    if len(seeds) > 1:
        out["loo_seed"] = {str(s): run(per_seed[s]) for s in seeds}
        out["loo_mean"] = run(mean)
    return out


def cells_of(
    matrix: dict[str, dict[str, float | None]], keys: dict[str, str]
) -> dict[tuple[str, str], Cell]:
    """One seed's test ACC per (task, strategy key) as knowledge-base cells."""
    return {
        (task, keys[label]): (v, None, 1, int(v is None))
        for task, row in matrix.items()
        for label, v in row.items()
    }


def mean_cells(per_seed: dict[int, dict[tuple[str, str], Cell]]) -> dict[tuple[str, str], Cell]:
    """Per cell the mean test ACC over the seeds whose run succeeded, its standard deviation
    (ddof 1; None from one run), the runs and the failed runs."""
    out: dict[tuple[str, str], Cell] = {}
    for cell in sorted({c for cells in per_seed.values() for c in cells}):
        runs = [cells[cell] for cells in per_seed.values() if cell in cells]
        ok = [r[0] for r in runs if r[0] is not None]
        out[cell] = (
            float(np.mean(ok)) if ok else None,
            float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
            len(runs),
            len(runs) - len(ok),
        )
    return out


def seed_spread(matrix: dict[int, dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """How much a cell's test ACC moves between seeds, in points: over every pair of seeds and
    every cell both ran, the mean, median and largest absolute difference; per pair of seeds
    the mean; on how many tasks every seed has the same best strategy (ties: any shared); and
    the regret, in seed ``u``'s test ACC, of the strategy best on the same task under another
    seed ``s`` (ties averaged), mean over tasks and ordered pairs: a floor for any ranking of
    one training per cell."""
    seeds = sorted(matrix)
    diffs: dict[str, list[float]] = {}
    for i, s in enumerate(seeds):
        for u in seeds[i + 1 :]:
            d = [
                100 * abs(v - w)
                for task, row in matrix[s].items()
                for label, v in row.items()
                if v is not None and (w := matrix[u].get(task, {}).get(label)) is not None
            ]
            if d:
                diffs[f"{s}-{u}"] = d
    every = [x for d in diffs.values() for x in d]
    same = 0
    tasks = set.intersection(*(set(m) for m in matrix.values())) if matrix else set()
    for task in tasks:
        bests = []
        for s in seeds:
            row = {lb: v for lb, v in matrix[s][task].items() if v is not None}
            top = max(row.values(), default=None)
            bests.append({lb for lb, v in row.items() if v == top})
        same += bool(set.intersection(*bests))
    again = []
    for task in tasks:
        ok = {x: {lb: v for lb, v in matrix[x][task].items() if v is not None} for x in seeds}
        for s in seeds:
            top = max(ok[s].values(), default=None)
            picks = [lb for lb, v in ok[s].items() if v == top]
            for u in seeds:
                if u != s and ok[u] and all(lb in ok[u] for lb in picks):
                    best = max(ok[u].values())
                    again.append(100 * float(np.mean([best - ok[u][lb] for lb in picks])))
    return {
        "mean": float(np.mean(every)) if every else None,
        "median": float(np.median(every)) if every else None,
        "max": float(np.max(every)) if every else None,
        "n_cells": len(every),
        "pairs": {p: float(np.mean(d)) for p, d in diffs.items()},
        "same_best_tasks": same,
        "n_tasks": len(tasks),
        "other_seed_regret": float(np.mean(again)) if again else None,
    }


def loo_of(
    reg: Registry,
    tasks: list[str],
    cheap: bool,
    values: dict[tuple[str, str], Cell] | None = None,
) -> Any:
    """:func:`~pomlia_hpc.strategy.service.evaluate_source` over the registry's runs of
    ``tasks`` only; with ``values``, per (task, strategy key) in place of the knowledge base's
    summary of the runs (the tasks' meta-features and the runs' costs stay the registry's)."""
    kb = load(reg, "acc", ["registry"])
    obs = [o for o in kb.observations if o.dataset in tasks]
    if values is not None:
        obs = [
            replace(o, value=c[0], std=c[1], n_runs=c[2], n_failed=c[3], evidence=())
            for o in obs
            if (c := values.get((o.dataset, o.key))) is not None
        ]
    kb.observations = obs
    return evaluate_kb(reg, kb, k=3, cheap=cheap)


def acc_table(
    rows: dict[str, dict[str, float | None]], labels: list[str], a: Any
) -> tuple[list[str], dict[str, list[str]]]:
    """A markdown table of test ACC per task (rows) and strategy, and the tasks each strategy
    is best on."""
    n_test = a.sizes[2]
    lines = [
        "| task | channels, classes | " + " | ".join(labels) + " | s.e. |",
        "| --- | --- |" + " ---: |" * (len(labels) + 1),
    ]
    wins: dict[str, list[str]] = {}
    for flag in a.tasks:
        row = rows.get(f"t_{flag}")
        if not row:
            continue
        vals = [v for v in row.values() if v is not None]
        best = max(vals) if vals else None
        cells = [
            "-" if row.get(lb) is None else f"{row[lb]:.3f}{'*' if row[lb] == best else ''}"
            for lb in labels
        ]
        for lb in labels:
            if best is not None and row.get(lb) == best:
                wins.setdefault(lb, []).append(flag)
        info = flag_info(flag)
        se = "-" if best is None else f"{np.sqrt(best * (1 - best) / n_test):.3f}"
        lines.append(
            f"| {flag} | {info.channels}, {info.n_classes} | " + " | ".join(cells) + f" | {se} |"
        )
    return lines, wins


def loo_tables(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Mean top-1 / best-of-3 regret per method (rows) and evaluation (columns)."""
    ok = {name: e for name, e in evals.items() if "summary" in e}
    lines = [
        f"Leave-one-task-out ({name}): {e.get('error', 'not run')}"
        for name, e in evals.items()
        if name not in ok
    ]
    if not ok:
        return lines
    methods = list(next(iter(ok.values()))["summary"])
    head = " | ".join(f"{name} top-1 | {name} best of 3" for name in ok)
    lines += [
        "| method | " + head + " |",
        "| --- |" + " ---: | ---: |" * len(ok),
    ]
    for m in methods:
        cells = " | ".join(
            f"{e['summary'][m]['top1_mean']:.2f} | {e['summary'][m]['topk_mean']:.2f}"
            for e in ok.values()
        )
        lines.append(f"| {m} | {cells} |")
    return lines


def per_task_regrets(e: dict[str, Any]) -> list[str]:
    """Top-1 / best-of-3 regret per task (rows) and method."""
    methods = list(e["summary"])
    lines = ["| task | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for i, task in enumerate(e["datasets"]):
        cells = [
            f"{e['methods'][m]['top1'][i]:.1f} / {e['methods'][m]['topk'][i]:.1f}" for m in methods
        ]
        lines.append(f"| {task.removeprefix('t_')} | " + " | ".join(cells) + " |")
    return lines


def summarize(res: dict[str, Any], a: Any) -> str:
    """The markdown report of the module docstring."""
    ev = res["results"]
    labels = [s.label for s in chosen(a)]
    seeds = ev["seeds"]
    pieces = "; ".join(
        f"worker {p['worker']} (commit {p.get('commit', '?')}, "
        f"seeds {' '.join(str(s) for s in p.get('seeds', [res['args']['seed']]))}) "
        f"{p['started']} -> {p.get('ended', '?')}, load "
        f"{' '.join(f'{x:.1f}' for x in p['load_start'])} -> "
        f"{' '.join(f'{x:.1f}' for x in p.get('load_end', []))}"
        for p in res["pieces"]
    )
    several = len(seeds) > 1
    if several:
        rows = {t: {lb: c["mean"] for lb, c in r.items()} for t, r in ev["mean"].items()}
        what = f"mean over training seeds {', '.join(map(str, seeds))} of the runs that succeeded"
    else:
        rows, what = ev["matrix"][str(seeds[0])], f"training seed {seeds[0]}"
    table, wins = acc_table(rows, labels, a)
    lines = [
        f"Report at commit {res['commit']}; {pieces}.",
        "",
        f"Test ACC per task and strategy, {what} ({a.epochs} epoch(s) each, "
        f"{'/'.join(map(str, a.sizes))} images; * best of the task; - not run or failed; "
        f"s.e.: binomial standard error of the best value on {a.sizes[2]} test images):",
        "",
        *table,
        "",
        "Best on (ties counted for each): "
        + "; ".join(f"{lb}: {', '.join(ts)}" for lb, ts in wins.items())
        + ".",
    ]
    if several:
        sp = ev["seed_spread"]
        picks = ", ".join(f"seed {s}: {n}" for s, n in sorted(ev["registry_pick_seed"].items()))
        lines += [
            "",
            f"Between two seeds a cell's test ACC moves {sp['mean']:.1f} points on average "
            f"(median {sp['median']:.1f}, at most {sp['max']:.1f}; {sp['n_cells']} cell pairs; "
            "per pair of seeds "
            + ", ".join(f"{p} {v:.1f}" for p, v in sp["pairs"].items())
            + f"); every seed has the same best strategy on {sp['same_best_tasks']} of "
            f"{sp['n_tasks']} tasks; picking on a task the strategy best there under another "
            f"seed costs {sp['other_seed_regret']:.2f} points of top-1 regret on average. The "
            f"knowledge base's value of a cell (the run with the best validation ACC) came from "
            f"{picks}.",
        ]
    cost = ev.get("trial_cost_s", {})
    lines += [
        "",
        "Mean run cost (the registry's cost_s, seconds): "
        + ", ".join(f"{lb} {cost[lb]:.0f}" for lb in labels if lb in cost)
        + ". Wall seconds per trial, job start-up included, by study: "
        + ", ".join(f"{k} {v:.0f}" for k, v in ev.get("wall_per_trial_s", {}).items())
        + ".",
    ]
    loo_all = ev.get("loo", {})
    if len(ev.get("complete_tasks", [])) < len({t for m in ev["matrix"].values() for t in m}):
        lines += [
            "",
            f"Stopped run: the leave-one-task-out below is over the "
            f"{len(ev['complete_tasks'])} tasks whose grid is complete for every seed only.",
        ]
    for s, ts in ev.get("other_seeds", {}).items():
        lines += [
            "",
            f"The registry also holds runs of seed {s} (tasks {', '.join(ts)}), which its "
            "evaluation (registry) counts and the others do not.",
        ]
    evals = {"registry": loo_all}
    if several:
        evals.update({f"seed {s}": e for s, e in ev.get("loo_seed", {}).items()})
        evals["mean of seeds"] = ev.get("loo_mean", {})
    n_tasks = len(loo_all.get("datasets", []))
    lines += [
        "",
        f"Leave-one-task-out ({loo_all.get('restriction', '?')}; {n_tasks} tasks, "
        f"{loo_all.get('n_strategies', '?')} strategies; the learner's similarity: "
        f"{loo_all.get('similarity', 'meta-features')}), regret in test ACC points, mean over "
        "tasks. registry: the registry's knowledge base (`pomlia strategy eval --source "
        "registry`), a cell's value the test ACC of its run with the best validation ACC"
        + (
            "; seed S: the same evaluation on that seed's runs alone; mean of seeds: on the "
            "mean over seeds (the bench's run records in place of the knowledge base's values)"
            if several
            else ""
        )
        + ":",
        "",
        *loo_tables(evals),
    ]
    cheap = ev.get("loo_cheap", {})
    if "summary" in cheap and cheap["n_strategies"] == loo_all.get("n_strategies"):
        lines += [
            "",
            f"Cheap strategies ({cheap['restriction']}): all {cheap['n_strategies']} are (28 px "
            "inputs), so the restricted evaluation is the one above.",
        ]
    elif cheap:
        lines += ["", "Cheap strategies:", "", *loo_tables({"registry": cheap})]
    for name, e in (("registry", loo_all), ("mean of seeds", ev.get("loo_mean", {}))):
        if "summary" in e:
            lines += ["", f"Per task, top-1 / best-of-3 regret ({name}):", "", *per_task_regrets(e)]
    setup = res.get("setup") or {}
    if setup:
        srcs = ", ".join(
            f"{t} test AUC {v['test_auc']:.3f}"
            for t, v in setup["sources"].items()
            if v["test_auc"] is not None
        )
        lines += [
            "",
            f"Set-up {setup['wall_s']['all']:.0f} s (encoder {setup['wall_s']['encoder']:.0f} s, "
            f"{len(setup['encoder_loss'])} epochs; embeddings and index "
            f"{setup['wall_s']['index']:.0f} s); source models: {srcs}.",
        ]
    if ev["missing_studies"] or ev["failed"]:
        lines += [
            "",
            f"Missing studies: {', '.join(ev['missing_studies']) or 'none'}; failed trials: "
            f"{', '.join(ev['failed']) or 'none'}.",
        ]
    return "\n".join(lines) + "\n"


def report(reg: Registry, work: Work, tasks: list[str], a: Any) -> None:
    res: dict[str, Any] = {
        "commit": COMMIT,
        "args": json.loads(work.args.read_text()),
        "pieces": [json.loads(p.read_text()) for p in sorted(work.root.glob("piece-*.json"))],
        "setup": json.loads(work.setup.read_text()) if work.setup.is_file() else None,
        "results": evaluate(reg, work, tasks, a),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "registry_strategies.json").write_text(json.dumps(res, indent=1, default=str))
    md = summarize(res, a)
    (a.out / "registry_strategies.md").write_text(md)
    print(md)


#: Arguments every worker of one run must share.
FIXED = (
    "tasks",
    "sizes",
    "source_sizes",
    "epochs",
    "source_epochs",
    "encoder_epochs",
    "extra",
    "seed",
    "only",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/registry-strategies"))
    ap.add_argument("--work", type=Path, default=Path("bench-results/registry-strategies/work"))
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=[
            "bloodmnist",
            "organcmnist",
            "dermamnist",
            "octmnist",
            "pneumoniamnist",
            "retinamnist",
            "tissuemnist",
            "organsmnist",
            "breastmnist",
        ],
        help="evaluated look-alikes, run in this order (at least 3; issue 12 asks for 6)",
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=[300, 100, 500],
        help="train / val / test images per task (a larger test split: less noise in regrets)",
    )
    ap.add_argument("--source-sizes", type=int, nargs=3, default=[1000, 100, 200])
    ap.add_argument("--epochs", type=int, default=9, help="every strategy's epochs")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the work folder's first training seed (the set-up's; its studies' names have none)",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="the training seeds to run, every grid cell once per seed (default: --seed); with "
        "--report-only, those to report (default: every seed with a finished study)",
    )
    ap.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep a finished study's trial checkpoints (deleted by default: 0.4 GB a study)",
    )
    ap.add_argument("--source-epochs", type=int, default=8)
    ap.add_argument("--encoder-epochs", type=int, default=4)
    ap.add_argument("--extra", type=int, default=300, help="nearest images added")
    ap.add_argument("--only", nargs="+", help="run only these strategies (labels; quick checks)")
    ap.add_argument("--worker", type=int, default=0, help="0 prepares the set-up")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    a.report_seeds = a.seeds if a.report_only else None
    a.seeds = list(dict.fromkeys(a.seeds or [a.seed]))
    work = Work(a.work)
    for d in (work.root, work.claims, work.done):
        d.mkdir(parents=True, exist_ok=True)
    # The trial jobs inherit it: their DeepSpeed op is built once, not again after every job
    # that another checkout's venv started (see the module docstring).
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(work.root.resolve() / "torch_extensions"))
    now = {k: getattr(a, k) for k in FIXED}
    with work.lock():
        if not work.args.is_file():
            work.args.write_text(json.dumps(now))
        elif json.loads(work.args.read_text()) != now:
            sys.exit(f"{work.args}: this work folder was started with other arguments")
    ws = work.workspace()
    ws.create()
    reg = Registry.open(ws.db_url)
    tasks = [f"t_{f}" for f in a.tasks]
    if not a.report_only:
        piece: dict[str, Any] = {
            "worker": a.worker,
            "commit": COMMIT,
            "argv": sys.argv[1:],
            "seeds": a.seeds,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_start": os.getloadavg(),
        }
        with work.lock():  # ingestion: once, by whichever worker comes first
            for c, flag in SOURCES.items():
                ensure_task(ws, reg, source_task(c), flag, tuple(a.source_sizes), "auc")
            for flag in a.tasks:
                ensure_task(ws, reg, f"t_{flag}", flag, tuple(a.sizes), "acc")
        worker(ws, reg, work, tasks, a)
        piece["ended"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        piece["load_end"] = os.getloadavg()
        (work.root / f"piece-{a.worker}-{int(time.time())}.json").write_text(json.dumps(piece))
        running = running_elsewhere(work)
        if running:  # a report now would name them "missing"; the last worker writes it
            print(
                f"worker {a.worker} done; the other worker still runs {', '.join(running)} "
                "and writes the report when it ends"
            )
            return
    report(reg, work, tasks, a)


if __name__ == "__main__":
    main()
