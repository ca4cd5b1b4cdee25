"""Fingerprint quality: is each half-dataset's nearest dataset its own other half?

The 12 MedMNIST look-alikes (``pomlia_hpc.data.synth``, 28 px, each with MedMNIST's size
capped at ``--images``, 1000 by default: BreastMNIST keeps its 780) are each split into two
disjoint halves (every split shuffled with a fixed seed and cut in two), and the 24 halves
are ingested as datasets ``<flag>_a`` / ``<flag>_b`` with :func:`pomlia_hpc.data.api.ingest`.
One encoder is trained on the train splits of all 24 halves
(:func:`train_encoder` as a local job: DeepSpeed, gloo, CPU), every half is embedded
(:func:`extract`), and for each half and each distance :func:`similar_datasets` ranks the other
23 halves. Top-1 sibling accuracy = halves whose nearest dataset is their sibling, out of 24.

Baseline (no learning): channel count + intensity histogram — a different channel count is
infinitely far, otherwise the L1 distance between 32-bin histograms of all pixel values.

Target (issue 4): 24/24 for the best distance.

    python scripts/bench/fingerprint_quality.py --out bench-results          # ~15 min here
    python scripts/bench/fingerprint_quality.py --quick --out /tmp/bench     # ~5 min

Writes ``fingerprint_quality.json`` and ``fingerprint_quality.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.medmnist_info import FLAGS_2D, flag_info
from pomlia_hpc.data.store import open_version
from pomlia_hpc.data.synth import make_lookalike, write_npz
from pomlia_hpc.fingerprint.distances import (
    DISTANCES,
    intensity_baseline,
    intensity_histogram,
)
from pomlia_hpc.fingerprint.extract import extract
from pomlia_hpc.fingerprint.similar import similar_datasets
from pomlia_hpc.fingerprint.train import TrainConfig, train_encoder
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

TARGET = 24


def make_halves(flag: str, images: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """Write ``<flag>_a.npz`` and ``<flag>_b.npz``: disjoint halves of each split of a
    look-alike with min(MedMNIST's size, ``images``) images."""
    real = sum(flag_info(flag).n_samples.values())
    full = make_lookalike(flag, scale=min(1.0, images / real), seed=seed, size=28)
    rng = np.random.default_rng([seed, FLAGS_2D.index(flag)])
    halves: list[dict[str, np.ndarray]] = [{}, {}]
    for split in ("train", "val", "test"):
        x, y = full[f"{split}_images"], full[f"{split}_labels"]
        order = rng.permutation(len(x))
        cut = max(1, len(x) // 2)
        parts = (order[:cut], order[cut:] if len(x) > 1 else order[:cut])
        for half, idx in zip(halves, parts, strict=True):
            half[f"{split}_images"], half[f"{split}_labels"] = x[idx], y[idx]
    return (
        write_npz(folder / f"{flag}_a.npz", halves[0]),
        write_npz(folder / f"{flag}_b.npz", halves[1]),
    )


def baseline_distances(reg: Registry, names: list[str]) -> dict[str, dict[str, float]]:
    """Channel count + intensity histogram distances between all pairs of datasets."""
    stats = {}
    for name in names:
        store = open_version(reg, name)
        stats[name] = (
            store.image_shape[2],
            intensity_histogram(store.read_rows(0, store.n_images)),
        )
    return {
        a: {b: intensity_baseline(*stats[a], *stats[b]) for b in names if b != a} for a in names
    }


def sibling(name: str) -> str:
    return name[:-1] + ("b" if name.endswith("a") else "a")


def score(distances: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Top-1 sibling accuracy, and the separation: per half, the distance to the nearest
    non-sibling over the distance to the sibling (> 1: the sibling is nearer), as the median
    and the minimum over the halves."""
    nearest = {a: min(row, key=lambda b, row=row: row[b]) for a, row in distances.items()}
    misses = {k: v for k, v in nearest.items() if v != sibling(k)}
    ratios = []
    for a, row in distances.items():
        others = [d for b, d in row.items() if b != sibling(a)]
        ratios.append(min(others) / max(row[sibling(a)], 1e-12))
    return {
        "correct": len(nearest) - len(misses),
        "of": len(nearest),
        "misses": misses,
        "separation_median": float(np.median(ratios)),
        "separation_min": float(np.min(ratios)),
    }


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The whole benchmark in a fresh workspace at ``home``."""
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    print(f"workspace {home}", flush=True)
    reg = Registry.open(ws.db_url)
    timings: dict[str, float] = {}
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    names: list[str] = []
    for flag in FLAGS_2D:
        info = flag_info(flag)
        for path in make_halves(flag, args.images, args.seed, ws.tmp):
            name = path.stem
            ingest(
                ws, reg, name, path, class_names=list(info.class_names), task_type=info.task_type
            )
            names.append(name)
    timings["data_s"] = time.perf_counter() - t0
    sizes = {n: open_version(reg, n).n_images for n in names}
    print(
        f"24 halves ingested ({sum(sizes.values())} images) in {timings['data_s']:.0f} s",
        flush=True,
    )

    t0 = time.perf_counter()
    cfg = TrainConfig.model_validate(
        {
            "encoder": {"latent_dim": args.latent_dim, "image_size": 28},
            "epochs": args.epochs,
            "batch_size": 128,
            "max_images_per_dataset": args.max_train,
            "num_workers": 1,
        }
    )
    ex = Executor.from_profile("local", ws.jobs, reg)
    enc = train_encoder(reg, ws, "ae", names, cfg, executor=ex)
    timings["train_s"] = time.perf_counter() - t0
    print(f"encoder trained in {timings['train_s']:.0f} s; loss {enc.loss_curve}", flush=True)

    t0 = time.perf_counter()
    extract(reg, ws, "ae", names, executor=ex)  # small sets are packed into few tasks
    timings["extract_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for dist in DISTANCES:
        rows = {}
        for n in names:
            found = similar_datasets(reg, "ae", n, k=len(names), distance=dist)
            rows[n] = {r.ref.split("@")[0]: r.distance for r in found}
        results[dist] = score(rows)
    results["baseline: channels + histogram"] = score(baseline_distances(reg, names))
    timings["distances_s"] = time.perf_counter() - t0
    best = max(r["correct"] for k, r in results.items() if not k.startswith("baseline"))
    return {
        "benchmark": "fingerprint_quality",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "python": sys.version.split()[0],
        "args": vars(args) | {"out": str(args.out)},
        "images_per_half": sizes,
        "loss_curve": enc.loss_curve,
        "results": results,
        "best_correct": best,
        "target": TARGET,
        "target_met": best >= TARGET,
        "timings_s": timings,
        "load_avg": [load_start, os.getloadavg()[0]],
    }


def table(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        f"Fingerprint quality — 12 look-alikes x 2 halves, min(MedMNIST size, {a['images']}) "
        "images per look-alike, 28 px, "
        f"d = {a['latent_dim']}, {a['epochs']} epochs ({res['date']}, {res['machine']}, "
        f"load average {res['load_avg'][0]:.1f} → {res['load_avg'][1]:.1f})",
        "",
        "| distance | top-1 sibling | separation median / min | misses (half → nearest) |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in res["results"].items():
        miss = ", ".join(f"{k} → {v}" for k, v in r["misses"].items()) or "—"
        sep = f"{r['separation_median']:.2f} / {r['separation_min']:.2f}"
        lines.append(f"| {name} | {r['correct']}/{r['of']} | {sep} | {miss} |")
    lines += [
        "",
        f"Target: {res['target']}/24 for the best distance — "
        f"{'met' if res['target_met'] else 'NOT met'} (best {res['best_correct']}/24).",
        "Separation = distance to the nearest non-sibling / distance to the sibling "
        "(> 1: the sibling is nearer; larger is a safer margin).",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument(
        "--images", type=int, default=1000, help="images per dataset (at most MedMNIST's)"
    )
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=250, help="train images per half")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the workspace (printed path)")
    p.add_argument("--quick", action="store_true", help="400 images per dataset, 1 epoch")
    args = p.parse_args()
    if args.quick:
        args.images, args.epochs, args.max_train = 400, 1, 100
    if args.keep:
        res = run(args, Path(tempfile.mkdtemp(prefix="pomlia-fpq-")))
    else:
        with tempfile.TemporaryDirectory(prefix="pomlia-fpq-") as tmp:
            res = run(args, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fingerprint_quality.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    (args.out / "fingerprint_quality.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
