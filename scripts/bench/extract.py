"""Extraction speed and scaling, and FAISS exact vs IVF search.

1. **Throughput** (28 px, CPU, ``--threads`` torch threads, batch 256): extraction end to end
   from a Zarr store (:func:`run_shard` over the whole store in this process: chunk reads on a
   prefetch thread, uint8 → float conversion, encoder forward, aligned Zarr writes of the
   embeddings, the ``.done`` file) against the encoder's raw forward throughput on the same
   images already in memory as float tensors. Both alternate ``--repeats`` times in the same
   process with the same threads (in alternating order); the best run of each is compared,
   and the median of the per-repeat ratios is reported beside it. Target: >= 0.9x.
2. **Scaling** on the local Slurm (``slurm-local`` profile): the same extraction as 2 shards
   (2 array tasks, 1 CPU each) against 1 shard (1 task, 1 CPU), wall time of
   :func:`extract` from submission to the recorded fingerprint set (job start-up included), and
   the shards' own compute time. Target: >= 1.8x.
3. **FAISS**: 1,000,000 clustered 64-d vectors (``--clusters`` Gaussian clusters), 1,000
   queries from the same distribution. Flat (exact, L2) gives the ground truth; an IVF index
   (``--ivf``) is searched with increasing ``nprobe``; recall@10 and queries/s of each against
   Flat. Target: recall@10 >= 0.95 at >= 10x Flat's queries/s.

The encoder's weights are random (seeded): speed does not depend on what it learned.

    python scripts/bench/extract.py --out bench-results           # ~10 min here
    python scripts/bench/extract.py --quick --out /tmp/bench      # ~3 min, smaller sizes
    python scripts/bench/extract.py --skip-slurm ...               # without a local Slurm
    python scripts/bench/extract.py --parts scaling --out DIR       # rerun one part, keep the rest

Writes ``extract.json`` and ``extract.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_version
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.files import write_npz
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, to_input
from pomlia_hpc.fingerprint.exclusion import search_params
from pomlia_hpc.fingerprint.extract import extract, plan_extraction
from pomlia_hpc.fingerprint.index import new_index, train_index
from pomlia_hpc.fingerprint.shards import marker, run_shard
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    load_encoder,
    register_encoder,
    write_checkpoint,
)
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

TARGETS = {"throughput_ratio": 0.9, "scaling": 1.8, "ivf_recall": 0.95, "ivf_speedup": 10.0}
BATCH = 256


def setup(home: Path, n: int, latent_dim: int) -> tuple[Workspace, Registry, str]:
    """A workspace with one PathMNIST look-alike store of ``n`` images (RGB, 28 px) and a
    random encoder called ``enc``."""
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    base_n = min(n, 20_000)
    x, y = make_split("pathmnist", base_n, seed=0, size=28)
    reps = -(-n // base_n)
    # Copies XOR-ed with their index, so no two images are equal.
    images = np.concatenate([x ^ np.uint8(i) for i in range(reps)])[:n]
    labels = np.concatenate([y] * reps)[:n]
    npz = write_npz(
        ws.tmp / "bench.npz", {"train_images": images, "train_labels": labels}, compress=False
    )
    ingest(ws, reg, "bench", npz, class_names=[str(i) for i in range(9)])
    npz.unlink()
    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({"encoder": {"latent_dim": latent_dim}})
    path = write_checkpoint(
        encoder_dir(ws, "enc") / "encoder.pt", Autoencoder(cfg.encoder).eval(), cfg, []
    )
    register_encoder(reg, "enc", cfg, [], [], path)
    return ws, reg, "bench"


# ----------------------------------------------------------------------------- 1. throughput


def throughput(
    ws: Workspace, reg: Registry, ref: str, threads: int, repeats: int
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    store = open_version(reg, ref)
    n = store.n_images
    model, _cfg = load_encoder(reg, "enc")
    tensors = [to_input(store.read_rows(i, min(n, i + BATCH)), 28) for i in range(0, n, BATCH)]

    @torch.inference_mode()
    def raw() -> float:
        t0 = time.perf_counter()
        for x in tensors:
            model.encode(x)
        return n / (time.perf_counter() - t0)

    def end_to_end() -> float:
        plan = plan_extraction(reg, ws, "enc", [ref], shards=1, threads=threads, force=True)
        t0 = time.perf_counter()
        for spec in plan.specs:
            run_shard(spec)
        return n / (time.perf_counter() - t0)

    raw()  # warm-up: oneDNN primitive caches
    end_to_end()  # warm-up: loads the encoder into the shard's model cache
    runs: dict[str, list[float]] = {"raw": [], "end_to_end": []}
    for i in range(repeats):
        # Alternate the order so neither path always runs right after the other.
        order = ("raw", "end_to_end") if i % 2 == 0 else ("end_to_end", "raw")
        for name in order:
            runs[name].append(raw() if name == "raw" else end_to_end())
    best = {k: max(v) for k, v in runs.items()}
    paired = [e / r for e, r in zip(runs["end_to_end"], runs["raw"], strict=True)]
    return {
        "images": n,
        "threads": threads,
        "batch": BATCH,
        "runs_img_s": runs,
        "raw_img_s": best["raw"],
        "end_to_end_img_s": best["end_to_end"],
        "ratio": best["end_to_end"] / best["raw"],
        "paired_ratio_median": float(np.median(paired)),
    }


# ----------------------------------------------------------------------------- 2. scaling


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed"))


def scaling(ws: Workspace, reg: Registry, ref: str) -> dict[str, Any]:
    ex = Executor.from_profile("slurm-local", ws.jobs, reg)
    out: dict[str, Any] = {}
    for n_shards in (1, 2, 1, 2):  # twice each, interleaved; the faster run of each counts
        t0 = time.perf_counter()
        (res,) = extract(
            reg, ws, "enc", [ref], executor=ex, shards=n_shards, force=True,
            batch_size=BATCH, resources={"cpus_per_task": 1},
        )  # fmt: skip
        wall = time.perf_counter() - t0
        assert res.status == "complete" and res.shards == n_shards
        emb = ws.path("embeddings", "enc", "bench", f"{open_version(reg, ref).version}.zarr")
        compute = max(json.loads(marker(emb, i).read_text())["seconds"] for i in range(n_shards))
        key = f"{n_shards}_shard"
        best = out.get(key)
        if best is None or wall < best["wall_s"]:
            out[key] = {"wall_s": wall, "slowest_shard_s": compute}
        print(
            f"  {n_shards} shard(s): {wall:.1f} s wall, slowest shard {compute:.1f} s", flush=True
        )
    out["speedup_wall"] = out["1_shard"]["wall_s"] / out["2_shard"]["wall_s"]
    out["speedup_compute"] = out["1_shard"]["slowest_shard_s"] / out["2_shard"]["slowest_shard_s"]
    return out


# ----------------------------------------------------------------------------- 3. FAISS


def clustered(n: int, d: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Centres ~2.0 * sqrt(2 d) apart against spreads of 0.5-1.5 * sqrt(d): neighbouring
    # clusters overlap, so an IVF search must visit several lists for a high recall.
    centers = rng.normal(size=(clusters, d)).astype(np.float32) * 2.0
    scales = rng.uniform(0.5, 1.5, clusters).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, clusters, m)
        return centers[c] + rng.normal(size=(m, d)).astype(np.float32) * scales[c, None]

    return np.ascontiguousarray(draw(n)), np.ascontiguousarray(draw(1000))


def faiss_bench(n: int, d: int, clusters: int, ivf: str, threads: int) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(threads)
    xb, xq = clustered(n, d, clusters, seed=0)
    ids = np.arange(n, dtype=np.int64)
    flat = new_index(d, "Flat", "l2")
    flat.add_with_ids(xb, ids)
    t0 = time.perf_counter()
    _, truth = flat.search(xq, 10)
    flat_qps = len(xq) / (time.perf_counter() - t0)
    index = new_index(d, ivf, "l2")
    t0 = time.perf_counter()
    sample = xb[np.random.default_rng(1).choice(n, min(n, 262_144), replace=False)]
    train_index(index, sample, use_gpu=False)
    index.add_with_ids(xb, ids)
    build_s = time.perf_counter() - t0
    rows = []
    for nprobe in (1, 2, 4, 8, 16, 32, 64):
        params, _keep = search_params(index, nprobe, [])
        index.search(xq[:50], 10, params=params)  # warm-up
        t0 = time.perf_counter()
        _, got = index.search(xq, 10, params=params)
        qps = len(xq) / (time.perf_counter() - t0)
        hits = [len(set(g) & set(t)) for g, t in zip(got, truth, strict=True)]
        recall = float(np.mean(hits)) / 10
        rows.append(
            {"nprobe": nprobe, "recall_at_10": recall, "qps": qps, "speedup": qps / flat_qps}
        )
    ok = [r for r in rows if r["recall_at_10"] >= TARGETS["ivf_recall"]]
    chosen = max(ok, key=lambda r: r["qps"]) if ok else None
    return {
        "n": n,
        "d": d,
        "clusters": clusters,
        "queries": len(xq),
        "factory": ivf,
        "flat_qps": flat_qps,
        "ivf_build_s": build_s,
        "ivf_runs": rows,
        "chosen": chosen,
    }


# ----------------------------------------------------------------------------- report


def _when(part: dict[str, Any]) -> str:
    return f"{part['date']}, load average {part['load_avg'][0]:.1f} → {part['load_avg'][1]:.1f}"


def table(res: dict[str, Any]) -> str:
    lines = [f"Extraction and FAISS ({res['machine']})", ""]
    t = res.get("throughput")
    if t:
        lines += [
            f"Throughput, {t['images']} images of 28 px, {t['threads']} threads, batch "
            f"{t['batch']}, best of {len(t['runs_img_s']['raw'])} interleaved runs "
            f"({_when(t)}):",
            "",
            "| path | images/s | ratio |",
            "| --- | --- | --- |",
            f"| raw forward, in-memory tensors | {t['raw_img_s']:.0f} | 1.00 |",
            f"| extraction from the Zarr store | {t['end_to_end_img_s']:.0f} | {t['ratio']:.2f} |",
            "",
            f"Median of the per-repeat ratios (each pair run back to back): "
            f"{t['paired_ratio_median']:.2f}.",
            "",
        ]
    s = res.get("scaling")
    if s:
        lines += [
            f"Scaling on the local Slurm, {s['images']} images, 1 CPU per shard, best of 2 "
            f"interleaved runs each ({_when(s)}):",
            "",
            "| shards | wall s (submit → recorded) | slowest shard s (compute) |",
            "| --- | --- | --- |",
            f"| 1 | {s['1_shard']['wall_s']:.1f} | {s['1_shard']['slowest_shard_s']:.1f} |",
            f"| 2 | {s['2_shard']['wall_s']:.1f} | {s['2_shard']['slowest_shard_s']:.1f} |",
            f"| speed-up | {s['speedup_wall']:.2f}x | {s['speedup_compute']:.2f}x |",
            "",
        ]
    f = res.get("faiss")
    if f:
        lines += [
            f"FAISS, {f['n']:,} clustered {f['d']}-d vectors ({f['clusters']} clusters), "
            f"{f['queries']} queries, k = 10, {f['factory']} built in {f['ivf_build_s']:.0f} s "
            f"({_when(f)}):",
            "",
            "| index | nprobe | recall@10 | queries/s | vs Flat |",
            "| --- | --- | --- | --- | --- |",
            f"| Flat (exact) | — | 1.000 | {f['flat_qps']:.0f} | 1.0x |",
        ]
        for r in f["ivf_runs"]:
            lines.append(
                f"| {f['factory']} | {r['nprobe']} | {r['recall_at_10']:.3f} | {r['qps']:.0f} | "
                f"{r['speedup']:.1f}x |"
            )
        lines.append("")
    lines.append("Targets:")
    for k, v in res["targets_met"].items():
        lines.append(f"- {k}: {'met' if v else 'not met' if v is not None else 'not run'}")
    return "\n".join(lines)


def _timed(fn: Any, *args: Any) -> dict[str, Any]:
    """Run one part; stamp it with the date and the load average before and after."""
    load0 = os.getloadavg()[0]
    out: dict[str, Any] = fn(*args)
    return out | {"date": time.strftime("%Y-%m-%d %H:%M"), "load_avg": [load0, os.getloadavg()[0]]}


def targets_met(res: dict[str, Any]) -> dict[str, bool | None]:
    t, s, f = res.get("throughput"), res.get("scaling"), res.get("faiss")
    return {
        "throughput >= 0.9x raw": None if t is None else t["ratio"] >= TARGETS["throughput_ratio"],
        "2 shards >= 1.8x 1 shard (wall)": (
            None if s is None else s["speedup_wall"] >= TARGETS["scaling"]
        ),
        "IVF recall@10 >= 0.95 at >= 10x Flat": (
            None
            if f is None
            else bool(f["chosen"] and f["chosen"]["speedup"] >= TARGETS["ivf_speedup"])
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--images", type=int, default=8_000, help="store size for throughput")
    p.add_argument("--scaling-images", type=int, default=48_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--ivf", default="IVF1024,Flat")
    p.add_argument("--skip-slurm", action="store_true")
    p.add_argument(
        "--parts", default="throughput,scaling,faiss", help="comma-separated parts to run"
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.images, args.scaling_images, args.vectors, args.repeats = 4_000, 8_000, 200_000, 2
    parts = set(args.parts.split(","))
    out_json = args.out / "extract.json"
    # A partial run (--parts) updates only its parts of an earlier result.
    res: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    res |= {
        "benchmark": "extract",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch "
        f"{torch.__version__}",
        "args": vars(args) | {"out": str(args.out)},
    }
    with tempfile.TemporaryDirectory(prefix="pomlia-bx-") as tmp:
        if "throughput" in parts:
            ws, reg, ref = setup(Path(tmp) / "a", args.images, args.latent_dim)
            res["throughput"] = _timed(throughput, ws, reg, ref, args.threads, args.repeats)
            print(f"throughput: {res['throughput']}", flush=True)
        if "scaling" in parts and not args.skip_slurm and slurm_up():
            ws2, reg2, ref2 = setup(Path(tmp) / "b", args.scaling_images, args.latent_dim)
            res["scaling"] = _timed(scaling, ws2, reg2, ref2) | {"images": args.scaling_images}
        if "faiss" in parts:
            res["faiss"] = _timed(
                faiss_bench, args.vectors, 64, args.clusters, args.ivf, args.threads
            )
    res["targets"] = TARGETS
    res["targets_met"] = targets_met(res)
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    text = table(res)
    (args.out / "extract.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
