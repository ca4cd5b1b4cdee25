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
continued). The worker that finishes last writes the report; ``--report-only`` writes it again.

    W="--out bench-results/registry-strategies --work bench-results/registry-strategies/work"
    python scripts/bench/registry_strategies.py $W --worker 0 &
    python scripts/bench/registry_strategies.py $W --worker 1
    python scripts/bench/registry_strategies.py $W --report-only

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
from dataclasses import dataclass
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
from pomlia_hpc.automl.study import create_study, load_spec, run_study  # noqa: E402
from pomlia_hpc.automl.tasks import add_task, get_task  # noqa: E402
from pomlia_hpc.data.api import ingest  # noqa: E402
from pomlia_hpc.data.medmnist_info import flag_info  # noqa: E402
from pomlia_hpc.data.synth import make_split  # noqa: E402
from pomlia_hpc.errors import NotFoundError  # noqa: E402
from pomlia_hpc.files import write_npz  # noqa: E402
from pomlia_hpc.processes import pid_alive  # noqa: E402
from pomlia_hpc.registry import Registry  # noqa: E402
from pomlia_hpc.strategy.longformat import strategy_key  # noqa: E402
from pomlia_hpc.strategy.runstats import run_strategy  # noqa: E402
from pomlia_hpc.strategy.service import evaluate_source  # noqa: E402
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


def studies(tasks: list[str], a: Any) -> list[tuple[str, str]]:
    """(task, kind) in the order they are taken: task by task, so a run stopped early holds
    whole tasks."""
    kinds = [k for k in KINDS if any(s.kind == k for s in chosen(a))]
    return [(t, k) for t in tasks for k in kinds]


def run_one(ws: Workspace, reg: Registry, work: Work, task: str, kind: str, a: Any) -> None:
    setup = json.loads(work.setup.read_text()) if kind != "scratch" else {}
    weights: dict[str, Any] = {}
    if kind == "encoder":
        weights = {"encoder": setup["encoder"], "extra_data": True}
    elif kind == "model":
        channels = 3 if flag_info(task.removeprefix("t_")).channels == 3 else 1
        weights = {"init_model": setup["models"][str(channels)]}
    configs = [dict(s.values) for s in chosen(a) if s.kind == kind]
    name = f"{task}-{kind}"
    t0 = time.perf_counter()
    spec = _study_spec(ws, reg, task, name, configs, a.epochs, a.seed, **weights)
    run_study(reg, ws, spec, resume=name in _started, poll_s=0.5)
    record = {
        "study": name,
        "task": task,
        "kind": kind,
        "worker": a.worker,
        "wall_s": time.perf_counter() - t0,
        "load_end": os.getloadavg(),
        "trials": trials_of(reg, name, "acc"),
    }
    tmp = work.done / f"{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(work.done / f"{name}.json")
    ok = sum(t["status"] == "ok" for t in record["trials"])
    print(f"{name}: {ok}/{len(configs)} ok, {record['wall_s']:.0f} s", flush=True)


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
        for task, kind in studies(tasks, a):
            if kind != "scratch" and not work.setup.is_file():
                waiting = True
                continue
            if claim(work, f"{task}-{kind}"):
                run_one(ws, reg, work, task, kind, a)
                break
        else:
            if not waiting:
                return
            time.sleep(10)


# ----------------------------------------------------------------------------- the report


def strategy_label(config: dict[str, Any], labels: dict[str, str]) -> str:
    """The grid's label of a run's strategy (its key in the knowledge base otherwise)."""
    key = strategy_key(run_strategy(config, 28))
    return labels.get(key, key)


def evaluate(reg: Registry, work: Work, tasks: list[str], a: Any) -> dict[str, Any]:
    """The results: per task and strategy the test ACC, and the registry's leave-one-out."""
    labels = {strategy_key(run_strategy(s.values, 28)): s.label for s in grid(a.extra)}
    done = {p.stem: json.loads(p.read_text()) for p in sorted(work.done.glob("*.json"))}
    matrix: dict[str, dict[str, float | None]] = {}
    failed: list[str] = []
    cost: dict[str, list[float]] = {}
    for rec in done.values():
        for t in rec["trials"]:
            label = strategy_label(t["config"], labels)
            ok = t["status"] == "ok"
            matrix.setdefault(rec["task"], {})[label] = t["test"] if ok else None
            if not ok:
                failed.append(f"{rec['task']} {label} ({t['status']})")
            elif t["cost_s"] is not None:
                cost.setdefault(label, []).append(float(t["cost_s"]))
    missing = [f"{t}-{k}" for t, k in studies(tasks, a) if f"{t}-{k}" not in done]
    out: dict[str, Any] = {
        "matrix": matrix,
        "failed": failed,
        "missing_studies": missing,
        "trial_cost_s": {k: float(np.mean(v)) for k, v in cost.items()},
        "study_wall_s": {k: v["wall_s"] for k, v in done.items()},
        "wall_per_trial_s": {
            kind: sum(v["wall_s"] for v in recs) / max(sum(len(v["trials"]) for v in recs), 1)
            for kind in KINDS
            if (recs := [v for v in done.values() if v["kind"] == kind])
        },
    }
    started = {rec["task"] for rec in done.values()}
    complete = [
        t for t in tasks if t in started and not any(m.startswith(f"{t}-") for m in missing)
    ]
    out["complete_tasks"] = complete
    for name, cheap in (("loo", False), ("loo_cheap", True)):
        try:
            if len(complete) == len(started):
                result = evaluate_source(reg, "registry", "acc", k=3, cheap=cheap)
            else:  # a stopped run: tasks with part of the grid would skew the comparison
                result = loo_of(reg, complete, cheap)
            out[name] = result.to_dict()
        except Exception as exc:  # reported: too few tasks finished, for example
            out[name] = {"error": str(exc)}
    return out


def loo_of(reg: Registry, tasks: list[str], cheap: bool) -> Any:
    """:func:`~pomlia_hpc.strategy.service.evaluate_source` over the registry's runs of
    ``tasks`` only."""
    from pomlia_hpc.strategy.evaluate import loo
    from pomlia_hpc.strategy.kb import load
    from pomlia_hpc.strategy.learner import build_matrix

    kb = load(reg, "acc", ["registry"])
    kb.observations = [o for o in kb.observations if o.dataset in tasks]
    result = loo(build_matrix(kb), k=3, cheap=cheap)
    result.metric = "acc"
    return result


def summarize(res: dict[str, Any], a: Any) -> str:
    """The markdown report of the module docstring."""
    ev = res["results"]
    labels = [s.label for s in chosen(a)]
    pieces = "; ".join(
        f"worker {p['worker']} (commit {p.get('commit', '?')}) {p['started']} -> "
        f"{p.get('ended', '?')}, load "
        f"{' '.join(f'{x:.1f}' for x in p['load_start'])} -> "
        f"{' '.join(f'{x:.1f}' for x in p.get('load_end', []))}"
        for p in res["pieces"]
    )
    n_test = a.sizes[2]
    lines = [
        f"Report at commit {res['commit']}; {pieces}.",
        "",
        f"Test ACC per task and strategy ({a.epochs} epoch(s) each, "
        f"{'/'.join(map(str, a.sizes))} images; * best of the task; - not run or failed; "
        f"s.e.: binomial standard error of the best value on {n_test} test images):",
        "",
        "| task | channels, classes | " + " | ".join(labels) + " | s.e. |",
        "| --- | --- |" + " ---: |" * (len(labels) + 1),
    ]
    wins: dict[str, list[str]] = {}
    for flag in a.tasks:
        row = ev["matrix"].get(f"t_{flag}")
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
    lines += [
        "",
        "Best on (ties counted for each): "
        + "; ".join(f"{lb}: {', '.join(ts)}" for lb, ts in wins.items())
        + ".",
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
    for name in ("loo", "loo_cheap"):
        loo = ev.get(name, {})
        every = ev.get("loo", {}).get("n_strategies")
        if name == "loo_cheap" and "summary" in loo and loo["n_strategies"] == every:
            lines += [
                "",
                f"Cheap strategies ({loo['restriction']}): all {every} are (28 px inputs), so "
                "the restricted evaluation is the one above.",
            ]
            continue
        if "summary" not in loo:
            lines += ["", f"Leave-one-task-out ({name}): {loo.get('error', 'not run')}"]
            continue
        methods = list(loo["summary"])
        if len(ev.get("complete_tasks", [])) < len(ev["matrix"]):
            lines += [
                "",
                f"Stopped run: the leave-one-task-out below is over the "
                f"{len(ev['complete_tasks'])} tasks whose grid is complete only.",
            ]
        lines += [
            "",
            f"Leave-one-task-out ({loo['restriction']}; {len(loo['datasets'])} tasks, "
            f"{loo['n_strategies']} strategies), regret in test ACC points, mean over tasks:",
            "",
            "| method | top-1 regret | best-of-top-3 regret |",
            "| --- | ---: | ---: |",
        ]
        for method, summ in loo["summary"].items():
            lines.append(f"| {method} | {summ['top1_mean']:.2f} | {summ['topk_mean']:.2f} |")
        lines += [
            "",
            "Per task, top-1 / best-of-3 regret:",
            "",
            "| task | " + " | ".join(methods) + " |",
            "| --- |" + " ---: |" * len(methods),
        ]
        for i, task in enumerate(loo["datasets"]):
            cells = [
                f"{loo['methods'][m]['top1'][i]:.1f} / {loo['methods'][m]['topk'][i]:.1f}"
                for m in methods
            ]
            lines.append(f"| {task.removeprefix('t_')} | " + " | ".join(cells) + " |")
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
    ap.add_argument("--seed", type=int, default=0, help="the trials' seed (every study)")
    ap.add_argument("--source-epochs", type=int, default=8)
    ap.add_argument("--encoder-epochs", type=int, default=4)
    ap.add_argument("--extra", type=int, default=300, help="nearest images added")
    ap.add_argument("--only", nargs="+", help="run only these strategies (labels; quick checks)")
    ap.add_argument("--worker", type=int, default=0, help="0 prepares the set-up")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
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
    report(reg, work, tasks, a)


if __name__ == "__main__":
    main()
