"""Benchmark dataset ingest: throughput and store size against plain ``np.load``, peak memory.

Input: synthetic PathMNIST look-alike npz files, compressed like MedMNIST's
(``np.savez_compressed``, keys ``train_images`` (N, 28, 28, 3) uint8 and ``train_labels``):
``--n`` images (default 100,000) for speed and size, and ``--big-n`` images (default
1,000,000 = 2.35 GB of pixels; 10 copies of the first 100,000, each XOR-ed with its copy index
so no two are equal) for memory.

Every measurement runs in its own child process. Its peak RSS is the child's ``VmHWM`` from
``/proc/self/status`` read just before it exits (the high-water mark of the process after
``exec``), cross-checked by sampling the child's RSS with psutil every 20 ms from here.
(``os.wait4``/``RUSAGE_CHILDREN`` ``ru_maxrss`` is not used: Linux carries the parent's
pre-``exec`` footprint into it.) Input files are also written by a child, so this process
stays small. Timings exclude interpreter start and imports.

- baseline: ``np.load(f)["train_images"]`` and labels into memory (images/s, MB/s of pixels)
- ingest: :func:`pomlia_hpc.data.api.ingest` into a fresh workspace (streaming read, Zarr
  write with Blosc-zstd, chunk hashes, explicit fingerprint, registry record); the fingerprint
  is also timed alone on the finished store, for information
- size: the store's bytes on disk against the npz file's

Targets (issue 3): ingest >= 0.5x the speed of ``np.load``; store <= the npz; peak RSS of the
1M-image ingest < 1 GiB.

    python scripts/bench/ingest.py --out bench-results             # full run (~10 min)
    python scripts/bench/ingest.py --quick --out /tmp/bench        # smoke run (~1 min)

Writes ``ingest.json`` (every number) and ``ingest.md`` (the table) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
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

TARGETS = {"ingest_vs_np_load": 0.5, "store_vs_npz": 1.0, "big_ingest_peak_rss_gib": 1.0}
H, W, C = 28, 28, 3


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_npz(path: Path, n: int) -> Path:
    """Write a compressed npz of ``n`` look-alike images (reused if it exists), in a child."""
    if not path.exists():
        run_child("make", path, n=n)
    return path


def child_make(path: Path, n: int) -> dict[str, Any]:
    from pomlia_hpc.data.synth import make_split

    base = path.with_name("path-100000.npz")

    if n > 100_000 and n % 100_000 == 0 and base.exists():
        with np.load(base) as d:
            x0, y0 = d["train_images"], d["train_labels"]
        copies = n // len(x0)
        x = np.empty((n, H, W, C), np.uint8)
        for k in range(copies):
            np.bitwise_xor(x0, np.uint8(k), out=x[k * len(x0) : (k + 1) * len(x0)])
        y = np.tile(y0, (copies, 1))
    else:
        x, y = make_split("pathmnist", n, seed=0, split="train")
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, train_images=x, train_labels=y)
    tmp.replace(path)
    return {"n": n}


# ----------------------------------------------------------------------------- children


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def child_load(npz: Path) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    with np.load(npz) as d:
        x, y = d["train_images"], d["train_labels"]
    dt = time.perf_counter() - t0
    checksum = int(x[:: max(1, len(x) // 97)].sum()) + int(y.sum())  # touch the data
    return {
        "seconds": dt,
        "cpu_seconds": time.process_time() - c0,
        "n": len(x),
        "checksum": checksum,
    }


def child_ingest(npz: Path, home: Path) -> dict[str, Any]:
    from pomlia_hpc.data.api import ingest
    from pomlia_hpc.data.explicit_fingerprint import compute_fingerprint
    from pomlia_hpc.data.store import open_store
    from pomlia_hpc.registry import Registry
    from pomlia_hpc.workspace import Workspace

    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    reg = Registry.open(ws.db_url)
    t0, c0 = time.perf_counter(), time.process_time()
    rec = ingest(ws, reg, "bench", npz)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    compute_fingerprint(open_store(rec.store_path))
    fp_dt = time.perf_counter() - t1
    return {
        "seconds": dt,
        "cpu_seconds": cpu,
        "fingerprint_seconds": fp_dt,
        "n": rec.n_images,
        "store_bytes": _dir_bytes(rec.store_path),
        "chunk_rows": rec.meta["chunk_rows"],
    }


def run_child(kind: str, npz: Path, home: Path | None = None, n: int = 0) -> dict[str, Any]:
    """Run one step in a child; add its peak RSS (bytes): VmHWM and psutil's sampled max."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        result_path = Path(tf.name)
    argv = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--npz",
        str(npz),
        "--result",
        str(result_path),
        "--n",
        str(n),
    ]
    if home is not None:
        argv += ["--home", str(home)]
    proc = subprocess.Popen(argv)
    sampled = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            sampled = max(sampled, ps.memory_info().rss)
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed with exit code {proc.returncode}")
    out: dict[str, Any] = json.loads(result_path.read_text())
    result_path.unlink()
    out["peak_rss_bytes"] = out.pop("vm_hwm_bytes")
    out["sampled_peak_rss_bytes"] = sampled
    return out


# ----------------------------------------------------------------------------- main


def measure(npz: Path, work: Path, repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` for np.load and for ingest, alternating, on one file."""
    loads, ingests = [], []
    for i in range(repeat):
        loads.append(run_child("load", npz))
        home = work / f"ws-{npz.stem}-{i}"
        shutil.rmtree(home, ignore_errors=True)
        ingests.append(run_child("ingest", npz, home))
        shutil.rmtree(home, ignore_errors=True)
    load = min(loads, key=lambda r: r["seconds"])
    ing = min(ingests, key=lambda r: r["seconds"])
    n = ing["n"]
    pixel_mb = n * H * W * C / 1e6
    npz_bytes = npz.stat().st_size
    return {
        "n_images": n,
        "pixel_mb": round(pixel_mb, 1),
        "npz_bytes": npz_bytes,
        "np_load": {
            "seconds": round(load["seconds"], 3),
            "cpu_seconds": round(load["cpu_seconds"], 3),
            "images_per_s": round(n / load["seconds"]),
            "mb_per_s": round(pixel_mb / load["seconds"], 1),
            "peak_rss_gib": round(load["peak_rss_bytes"] / 2**30, 3),
            "sampled_peak_rss_gib": round(load["sampled_peak_rss_bytes"] / 2**30, 3),
            "all_seconds": [round(r["seconds"], 3) for r in loads],
        },
        "ingest": {
            "seconds": round(ing["seconds"], 3),
            "cpu_seconds": round(ing["cpu_seconds"], 3),
            "images_per_s": round(n / ing["seconds"]),
            "mb_per_s": round(pixel_mb / ing["seconds"], 1),
            "fingerprint_alone_seconds": round(ing["fingerprint_seconds"], 3),
            "peak_rss_gib": round(ing["peak_rss_bytes"] / 2**30, 3),
            "sampled_peak_rss_gib": round(ing["sampled_peak_rss_bytes"] / 2**30, 3),
            "store_bytes": ing["store_bytes"],
            "chunk_rows": ing["chunk_rows"],
            "all_seconds": [round(r["seconds"], 3) for r in ingests],
        },
        "ingest_vs_np_load": round(load["seconds"] / ing["seconds"], 3),
        # CPU seconds (all threads) of ingest per CPU second of np.load: the work done, which
        # depends much less on what else runs on the machine than the wall-clock ratio.
        "ingest_cpu_per_np_load_cpu": round(ing["cpu_seconds"] / load["cpu_seconds"], 3),
        "store_vs_npz": round(ing["store_bytes"] / npz_bytes, 3),
    }


def table(res: dict[str, Any]) -> str:
    rows = [
        "| set | images | npz MB | np.load img/s (MB/s) | ingest img/s (MB/s) | ingest / "
        "np.load (speed) | CPU s ingest / np.load | store MB | store / npz | "
        "peak RSS np.load | peak RSS ingest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("main", "big"):
        r = res.get(key)
        if not r:
            continue
        rows.append(
            f"| {key} | {r['n_images']:,} | {r['npz_bytes'] / 1e6:.0f} | "
            f"{r['np_load']['images_per_s']:,} ({r['np_load']['mb_per_s']}) | "
            f"{r['ingest']['images_per_s']:,} ({r['ingest']['mb_per_s']}) | "
            f"{r['ingest_vs_np_load']:.2f}x | {r['ingest_cpu_per_np_load_cpu']:.2f} | "
            f"{r['ingest']['store_bytes'] / 1e6:.0f} | "
            f"{r['store_vs_npz']:.3f} | {r['np_load']['peak_rss_gib']:.2f} GiB | "
            f"{r['ingest']['peak_rss_gib']:.2f} GiB |"
        )
    t = res["targets_met"]
    rows.append("")
    rows.append(
        f"Load average (1, 5, 15 min) before {res['load_average_before']}, after "
        f"{res['load_average_after']} on {res['machine']}."
    )
    rows.append("Targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in t.items()))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pomlia-bench")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--big-n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="n=20,000, big-n=100,000, repeat 1")
    ap.add_argument("--child", choices=["make", "load", "ingest"], help=argparse.SUPPRESS)
    ap.add_argument("--npz", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child == "make":
            out = child_make(args.npz, args.n)
        elif args.child == "load":
            out = child_load(args.npz)
        else:
            out = child_ingest(args.npz, args.home)
        out["vm_hwm_bytes"] = _vm_hwm_bytes()
        args.result.write_text(json.dumps(out))
        return
    if args.quick:
        args.n, args.big_n, args.repeat = 20_000, 100_000, 1
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = make_npz(args.work / f"path-{args.n}.npz", args.n)
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "main": measure(base, args.work, args.repeat),
    }
    if args.big_n:
        seed100k = make_npz(args.work / "path-100000.npz", 100_000)
        assert seed100k.exists()
        big = make_npz(args.work / f"path-{args.big_n}.npz", args.big_n)
        res["big"] = measure(big, args.work, 1)
    res["targets"] = TARGETS
    res["targets_met"] = {
        "ingest_vs_np_load": res["main"]["ingest_vs_np_load"] >= TARGETS["ingest_vs_np_load"],
        "store_vs_npz": res["main"]["store_vs_npz"] <= TARGETS["store_vs_npz"],
    }
    if "big" in res:
        res["targets_met"]["big_ingest_peak_rss_gib"] = (
            res["big"]["ingest"]["peak_rss_gib"] < TARGETS["big_ingest_peak_rss_gib"]
        )
    res["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    res["wall_seconds"] = round(time.time() - t0, 1)
    (args.out / "ingest.json").write_text(json.dumps(res, indent=2))
    (args.out / "ingest.md").write_text(table(res) + "\n")
    print(json.dumps(res, indent=2))
    print(table(res))


if __name__ == "__main__":
    main()
