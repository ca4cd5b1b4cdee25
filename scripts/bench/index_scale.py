"""How far does the index path scale? A synthetic run through it, measured.

The path is the one pomlia uses for large stores: an IVF-PQ index is *trained* on a sample,
written empty, then every shard of vectors is *added* by its own array task (the local
executor here, Slurm array tasks on a cluster), each writing a shard index; the shards are
*merged* into one index (inverted lists moved, not re-encoded). Quality is recall@10 against
exact search (brute force over all vectors) for a query sample; the trivial baseline is the
recall of 10 random ids (about 10/N), and nprobe=1 is the weak setting of the same index.

Vectors are 64-d, a mixture of Gaussian clusters (embeddings are clustered), generated
deterministically in blocks, so a shard task and the exact search regenerate the same rows
without ever holding all of them.

    nice -n 10 python scripts/bench/index_scale.py --n 10000000 --out bench-results
    python scripts/bench/index_scale.py --n 200000 --shards 4 --out /tmp/x      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 64
BLOCK = 100_000  # rows generated per random block (shards are whole blocks)
N_CENTERS = 1000
INTRINSIC = 16  # dimensions of the variation around each centre


def block(seed: int, b: int) -> np.ndarray:
    """Rows [b*BLOCK, (b+1)*BLOCK) of the synthetic collection (float32, (BLOCK, DIM)):
    cluster centres plus variation in a 16-d subspace plus a little isotropic noise (learned
    embeddings lie near low-dimensional structure; isotropic 64-d noise would make every
    neighbour equally far and no index meaningful)."""
    base = np.random.default_rng(seed)
    centers = base.normal(size=(N_CENTERS, DIM)).astype(np.float32)
    basis = base.normal(size=(INTRINSIC, DIM)).astype(np.float32) / np.float32(INTRINSIC**0.5)
    rng = np.random.default_rng([seed, b])
    which = rng.integers(0, N_CENTERS, BLOCK)
    local = rng.standard_normal((BLOCK, INTRINSIC), dtype=np.float32) @ basis
    iso = rng.standard_normal((BLOCK, DIM), dtype=np.float32)
    return centers[which] + np.float32(0.5) * local + np.float32(0.05) * iso


def rows(seed: int, start: int, stop: int) -> np.ndarray:
    out = [block(seed, b) for b in range(start // BLOCK, -(-stop // BLOCK))]
    x = np.concatenate(out)
    off = (start // BLOCK) * BLOCK
    return x[start - off : stop - off]


def add_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Array task: read the trained empty index, add rows [start, stop), write the shard."""
    import faiss

    faiss.omp_set_num_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    index = faiss.read_index(task["trained"])
    x = rows(task["seed"], task["start"], task["stop"])
    index.add_with_ids(x, np.arange(task["start"], task["stop"], dtype=np.int64))
    tmp = Path(task["out"] + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(task["out"])
    return {
        "shard": task["out"],
        "n": task["stop"] - task["start"],
        "s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,  # CPU seconds: comparable across machine loads
    }


def exact_topk(seed: int, n: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest ids (L2) of ``queries`` over all n rows, block by block."""
    best_d = np.full((len(queries), k), np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    qn = (queries**2).sum(1)[:, None]
    for b in range(-(-n // BLOCK)):
        lo = b * BLOCK
        x = block(seed, b)[: n - lo]
        d = qn - 2 * queries @ x.T + (x**2).sum(1)[None, :]
        cand_d = np.concatenate([best_d, d], axis=1)
        cand_i = np.concatenate(
            [best_i, np.arange(lo, lo + len(x))[None, :].repeat(len(queries), 0)], 1
        )
        sel = np.argpartition(cand_d, k, axis=1)[:, :k]
        best_d = np.take_along_axis(cand_d, sel, 1)
        best_i = np.take_along_axis(cand_i, sel, 1)
    return best_i


def training_sample(seed: int, n: int, size: int, max_blocks: int = 20) -> np.ndarray:
    """``size`` rows (at most ``n``) drawn from up to ``max_blocks`` blocks spread over the
    collection's ``n`` rows (the sample a real build would read from a few shards)."""
    n_blocks = -(-n // BLOCK)
    picked = np.unique(np.linspace(0, n_blocks - 1, min(max_blocks, n_blocks)).astype(int))
    per = -(-min(size, n) // len(picked))
    parts = [block(seed, int(b))[: min(per, n - int(b) * BLOCK)] for b in picked]
    x = np.concatenate(parts)[:size]
    if len(x) < min(size, n):  # the last block is short: top up from the first
        x = np.concatenate([x, rows(seed, 0, min(size, n) - len(x))])
    return x


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """Rows [start, stop) of each array task: ``n`` vectors in all, in up to ``shards`` tasks
    of whole blocks (the last one shorter when ``n`` is not a multiple of :data:`BLOCK`)."""
    blocks = -(-n // BLOCK)
    per = -(-blocks // shards) * BLOCK
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what the run cannot do, before any work (argparse's one-line error, exit 2)."""
    if args.n < 1:
        ap.error(f"--n {args.n}: expected a number of vectors >= 1")
    if args.n < args.nlist or args.train < args.nlist:
        ap.error(
            f"--n {args.n} / --train {args.train}: IVF training needs at least --nlist "
            f"({args.nlist}) vectors: expected a larger --n and --train or a smaller --nlist"
        )
    if args.queries > args.n:
        ap.error(f"--queries {args.queries}: expected at most --n ({args.n}) queries")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=10_000_000, help="vectors in all (any number >= --nlist)"
    )
    ap.add_argument("--shards", type=int, default=0, help="array tasks (default: 1 per million)")
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--pq", type=int, default=32, help="PQ sub-quantisers (bytes per vector)")
    ap.add_argument("--train", type=int, default=200_000, help="training sample size")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2, help="array tasks at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    check_args(ap, args)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import faiss

    faiss.omp_set_num_threads(1)  # OpenMP spinning on an oversubscribed 2-core machine stalls

    from pomlia_hpc.cluster import Executor, wait_all
    from pomlia_hpc.config import load_cluster_profile

    n, seed = args.n, args.seed
    shards = args.shards or max(1, n // 1_000_000)
    work = args.out / "index_scale"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    sample_rows = training_sample(seed, n, args.train)
    quantizer = faiss.IndexFlatL2(DIM)
    index = faiss.IndexIVFPQ(quantizer, DIM, args.nlist, args.pq, 8)
    index.train(sample_rows)
    trained = str(work / "trained.faiss")
    faiss.write_index(index, trained)
    timings["train_s"] = time.perf_counter() - t0
    print(
        f"trained IVF{args.nlist},PQ{args.pq} on {len(sample_rows)} vectors "
        f"in {timings['train_s']:.1f} s",
        flush=True,
    )

    tasks = [
        {
            "trained": trained,
            "seed": seed,
            "start": lo,
            "stop": hi,
            "out": str(work / f"shard{i:04d}.faiss"),
        }
        for i, (lo, hi) in enumerate(shard_ranges(n, shards))
    ]
    profile = load_cluster_profile("local", max_parallel=args.parallel, mem_gb=4.0)
    ex = Executor(profile, work / "jobs")
    t0 = time.perf_counter()
    handles = ex.map_array(add_shard, tasks, name="index-shard")
    done = wait_all(handles, poll_s=2.0)
    failed = [d for d in done if isinstance(d, Exception)]
    if failed:
        print(f"{len(failed)} shard tasks failed: {failed[0]}", file=sys.stderr)
        return 1
    timings["add_s"] = time.perf_counter() - t0
    task_s = [d["s"] for d in done]
    print(
        f"added {n} vectors in {len(tasks)} array tasks in {timings['add_s']:.1f} s "
        f"(task mean {np.mean(task_s):.1f} s)",
        flush=True,
    )

    t0 = time.perf_counter()
    merged = faiss.read_index(trained)
    for t in tasks:
        merged.merge_from(faiss.read_index(t["out"]), 0)
    faiss.write_index(merged, str(work / "merged.faiss"))
    timings["merge_s"] = time.perf_counter() - t0
    size_bytes = (work / "merged.faiss").stat().st_size
    print(
        f"merged {merged.ntotal} vectors in {timings['merge_s']:.1f} s ({size_bytes / 1e6:.0f} MB)",
        flush=True,
    )

    rng = np.random.default_rng(seed + 1)
    qids = np.sort(rng.choice(n, args.queries, replace=False))
    queries = np.stack([rows(seed, int(i), int(i) + 1)[0] for i in qids])
    queries += np.float32(0.1) * rng.standard_normal(queries.shape, dtype=np.float32)
    t0 = time.perf_counter()
    truth = exact_topk(seed, n, queries, 10)
    timings["exact_s"] = time.perf_counter() - t0
    results: dict[str, Any] = {"recall@10": {}, "recall10@100": {}, "query_ms": {}}
    for nprobe in (1, 8, 32, 128):
        merged.nprobe = nprobe
        t0 = time.perf_counter()
        _d, found = merged.search(queries, 100)
        results["query_ms"][str(nprobe)] = (time.perf_counter() - t0) * 1000 / len(queries)
        results["recall@10"][str(nprobe)] = recall(found[:, :10], truth)
        # The true top 10 among 100 candidates: what a re-rank by exact distance recovers.
        results["recall10@100"][str(nprobe)] = recall(found, truth)
    random_ids = rng.integers(0, n, truth.shape)
    baseline = recall(random_ids, truth)
    build_s = timings["train_s"] + timings["add_s"] + timings["merge_s"]
    report = {
        "n": n,
        "dim": DIM,
        "factory": f"IVF{args.nlist},PQ{args.pq}",
        "shards": len(tasks),
        "parallel": args.parallel,
        "train_sample": len(sample_rows),
        "queries": args.queries,
        **timings,
        "build_s": build_s,
        "vectors_per_s_per_task": float(np.mean([d["n"] / d["s"] for d in done])),
        "vectors_per_cpu_s": float(sum(d["n"] for d in done) / sum(d["cpu_s"] for d in done)),
        "index_bytes": size_bytes,
        "baseline_random_recall@10": baseline,
        **results,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    (args.out / "index_scale.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nindex scale: {n:,} x {DIM}-d, {report['factory']}, {len(tasks)} shards, "
        f"{args.parallel} at once"
    )
    print(f"{'step':<10}{'seconds':>10}")
    for k in ("train_s", "add_s", "merge_s", "exact_s"):
        print(f"{k[:-2]:<10}{timings[k]:>10.1f}")
    print(f"{'nprobe':<10}{'recall@10':>10}{'10@100':>10}{'ms/query':>10}")
    for k, v in results["recall@10"].items():
        r100, ms = results["recall10@100"][k], results["query_ms"][k]
        print(f"{k:<10}{v:>10.3f}{r100:>10.3f}{ms:>10.2f}")
    print(
        f"random ids: recall@10 {baseline:.2e}; "
        f"load {load_before[0]:.1f} -> {report['load_after'][0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
