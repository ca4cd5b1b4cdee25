"""Similar datasets at scale: ``similar_datasets`` over N synthetic fingerprint sets.

N dataset versions (default 1,000) are registered with one encoder; each has an embeddings
group of ``--vectors`` random d-dim vectors (a Gaussian with its own mean and scale) and the
summary written when extraction completes (:mod:`pomlia_hpc.fingerprint.summary`). Timed, best
of ``--repeat`` (wall clock, in this process):

* ``similar_datasets(..., distance)`` for the default ``combined`` and the other summary
  distances: reads only the per-version summaries;
* the baseline it replaces: reading an embedding sample of every set (``sample_rows``, up to
  5,000 vectors, as ``similar`` did before summaries) and computing the Fréchet distance.

Target (issue 11): ``combined`` over 1,000 versions in under 2 s.

    nice -n 10 python scripts/bench/similar_scale.py --out bench-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_version
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.data.versioning import record_version
from pomlia_hpc.files import write_npz
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
from pomlia_hpc.fingerprint.distances import frechet_distance
from pomlia_hpc.fingerprint.markers import checkpoint_digest
from pomlia_hpc.fingerprint.sample import sample_rows
from pomlia_hpc.fingerprint.similar import similar_datasets
from pomlia_hpc.fingerprint.summary import compute_summary, write_summary
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    register_encoder,
    write_checkpoint,
)
from pomlia_hpc.registry import FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace

TARGET_S = 2.0


def setup(ws: Workspace, reg: Registry, n: int, vectors: int, d: int) -> list[str]:
    """One tiny real store shared by N registered versions, each with embeddings + summary."""
    x, y = make_split("bloodmnist", 40)
    npz = write_npz(ws.tmp / "seed.npz", {"train_images": x, "train_labels": y})
    ingest(ws, reg, "seed", npz, class_names=[str(i) for i in range(8)])
    store = open_version(reg, "seed")
    cfg = TrainConfig.model_validate({"encoder": {"latent_dim": d}, "objective": "mse"})
    path = write_checkpoint(
        encoder_dir(ws, "enc") / "encoder.pt", Autoencoder(EncoderConfig(latent_dim=d)), cfg, []
    )
    enc = register_encoder(reg, "enc", cfg, [], [], path)
    digest = checkpoint_digest(path)
    rng = np.random.default_rng(0)
    refs = []
    for i in range(n):
        rec = record_version(
            reg,
            f"ds{i:04d}",
            f"v{i:04d}",
            store.path,
            store.n_images,
            store.meta,
            store.fingerprint,
        )
        out = ws.path("embeddings", "enc", f"ds{i:04d}", f"v{i:04d}.zarr")
        g = zarr.open_group(str(out), mode="w")
        z = (rng.normal(size=(vectors, d)) * rng.uniform(0.5, 2.0) + rng.normal(size=d)).astype(
            np.float32
        )
        g.create_array("z", shape=z.shape, chunks=(1024, d), dtype="float32")[:] = z
        # Readers use only sets made with the encoder's current weights: say these were.
        g.attrs["pomlia"] = {"encoder_sha256": digest, "shards": [[0, vectors]]}
        write_summary(out, compute_summary(out, store.fingerprint))
        with reg.session() as s:
            s.add(
                FingerprintSet(
                    encoder_id=enc.id,
                    dataset_version_id=rec.id,
                    embeddings_path=str(out),
                    n_vectors=vectors,
                    mean=z.mean(0).tolist(),
                    status="complete",
                )
            )
        refs.append(f"ds{i:04d}")
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{n} sets", flush=True)
    return refs


@dataclass
class Made:
    """A bench's temporary workspace with the sets of :func:`setup` registered in it."""

    workspace: Workspace
    registry: Registry
    refs: list[str]
    setup_s: float  # wall seconds :func:`setup` took


@contextmanager
def set_up_workspace(prefix: str, n: int, vectors: int, d: int) -> Iterator[Made]:
    """A workspace in a temporary folder (name starting ``prefix``, removed on exit) with a
    SQLite registry and ``n`` sets of ``vectors`` d-dimensional embeddings (:func:`setup`),
    timed; the registry is disposed of on exit. Both similar benches start from it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        ws = Workspace(
            home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local"
        )
        ws.create()
        reg = Registry.open(ws.db_url)
        try:
            t0 = time.perf_counter()
            refs = setup(ws, reg, n, vectors, d)
            yield Made(ws, reg, refs, time.perf_counter() - t0)
        finally:
            reg.dispose()


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--sets", type=int, default=1000)
    p.add_argument("--vectors", type=int, default=2000)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    load = [os.getloadavg()[0]]
    with set_up_workspace("pomlia-sim-", args.sets, args.vectors, args.latent_dim) as made:
        reg, refs, setup_s = made.registry, made.refs, made.setup_s
        rows: dict[str, float] = {}
        for dist in ("combined", "trimmed", "frechet", "mean", "explicit"):
            rows[f"similar_datasets {dist}"] = _best(
                lambda dist=dist: similar_datasets(reg, "enc", refs[0], k=5, distance=dist),
                args.repeat,
            )
            print(f"  {dist}: {rows[f'similar_datasets {dist}']:.3f} s", flush=True)
        with reg.session() as s:
            paths = [
                fs.embeddings_path for fs in s.query(FingerprintSet).order_by(FingerprintSet.id)
            ]

        def from_embeddings() -> None:
            q = sample_rows(paths[0], 0, args.vectors, 5000)
            for path in paths[1:]:
                frechet_distance(q, sample_rows(path, 0, args.vectors, 5000))

        rows["baseline: read embeddings + frechet"] = _best(from_embeddings, 1)
        load.append(os.getloadavg()[0])
    base = rows["baseline: read embeddings + frechet"]
    res = {
        "benchmark": "similar_scale",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "args": vars(args) | {"out": str(args.out)},
        "setup_s": setup_s,
        "seconds": rows,
        "speedup_vs_embeddings": {k: base / v for k, v in rows.items()},
        "target_s": TARGET_S,
        "target_met": rows["similar_datasets combined"] < TARGET_S,
        "load_avg": load,
    }
    lines = [
        f"similar over {args.sets} dataset versions ({args.vectors} vectors of "
        f"d = {args.latent_dim} each; {res['date']}, {res['machine']}, "
        f"load average {load[0]:.1f} → {load[-1]:.1f})",
        "",
        "| what | seconds | vs reading embeddings |",
        "| --- | --- | --- |",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.3f} | {base / v:.1f}x |")
    lines += ["", f"Target: combined < {TARGET_S} s — {'met' if res['target_met'] else 'NOT met'}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "similar_scale.json").write_text(json.dumps(res, indent=1))
    (args.out / "similar_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
