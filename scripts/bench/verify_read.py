"""Benchmark the cost of checking every chunk against its ingest hash on read (issue 16).

A store written by ``pomlia data add`` records the SHA-256 of every image chunk; readers
(:meth:`pomlia_hpc.data.store.DatasetStore.read_rows`) hash each chunk the first time they
touch it, so damaged data stops a training or extraction job with one clear line instead of
training on garbage. This script measures what that costs against the same reads without the
check, in the same run, alternating the two so machine noise hits both alike:

- input: ``--n`` PathMNIST look-alike images (28 x 28 x 3 uint8), ingested into a fresh
  temporary workspace;
- read: the whole store in batches of ``--batch`` rows (what the training loaders do), with
  ``verify=False`` (baseline) and ``verify=True``, ``--repeat`` times each, fresh store objects
  every time (so every chunk is hashed once per verified pass);
- reported: median seconds and MB/s of pixels per mode, the overhead (verified / plain - 1)
  and the hashing rate; a check that the verified pass did hash every chunk.

    python scripts/bench/verify_read.py --out bench-results          # ~1 min on 2 cores
    python scripts/bench/verify_read.py --n 20000 --out /tmp/bench   # smoke run

Writes ``verify_read.json`` and ``verify_read.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def read_all(store_path: Path, *, verify: bool, batch: int) -> tuple[float, int]:
    """Seconds to read every image of the store in batches, and the chunks verified."""
    from pomlia_hpc.data.store import open_store

    store = open_store(store_path, verify=verify)
    t0 = time.perf_counter()
    checksum = 0
    for lo in range(0, store.n_images, batch):
        block = store.read_rows(lo, min(store.n_images, lo + batch))
        checksum += int(block[:, 0, 0, 0].sum())  # touch the data
    seconds = time.perf_counter() - t0
    return seconds, len(store.verified_chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the store")
    ap.add_argument("--batch", type=int, default=1024, help="rows per read (as a loader)")
    ap.add_argument("--repeat", type=int, default=5, help="passes per mode")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pomlia_hpc.data.api import ingest
    from pomlia_hpc.data.synth import make_split
    from pomlia_hpc.files import write_npz
    from pomlia_hpc.registry import Registry
    from pomlia_hpc.workspace import Workspace

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pomlia-verify-") as tmp:
        home = Path(tmp)
        x, y = make_split("pathmnist", args.n, seed=0, split="train")
        npz = write_npz(home / "path.npz", {"train_images": x, "train_labels": y})
        ws = Workspace(
            home=home / "ws", db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local"
        )
        rec = ingest(ws, Registry.open(ws.db_url), "bench", npz)
        n_chunks = -(-rec.n_images // int(rec.meta["chunk_rows"]))
        read_all(rec.store_path, verify=False, batch=args.batch)  # warm the page cache
        plain: list[float] = []
        checked: list[float] = []
        verified_chunks = 0
        for _ in range(args.repeat):
            plain.append(read_all(rec.store_path, verify=False, batch=args.batch)[0])
            s, verified_chunks = read_all(rec.store_path, verify=True, batch=args.batch)
            checked.append(s)
        n_images = rec.n_images

    pixel_mb = n_images * x[0].size / 1e6
    t_plain, t_checked = statistics.median(plain), statistics.median(checked)
    report: dict[str, Any] = {
        "n_images": n_images,
        "pixel_mb": round(pixel_mb, 1),
        "chunks": n_chunks,
        "chunks_verified_per_pass": verified_chunks,
        "batch": args.batch,
        "repeat": args.repeat,
        "plain_s": round(t_plain, 3),
        "verified_s": round(t_checked, 3),
        "plain_mb_per_s": round(pixel_mb / t_plain, 1),
        "verified_mb_per_s": round(pixel_mb / t_checked, 1),
        "overhead": round(t_checked / t_plain - 1, 3),
        "hash_s_per_gb": round((t_checked - t_plain) / pixel_mb * 1000, 2),
        "all_plain_s": [round(v, 3) for v in plain],
        "all_verified_s": [round(v, 3) for v in checked],
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    if verified_chunks != n_chunks:
        print(
            f"verified {verified_chunks} of {n_chunks} chunks: the check did not run",
            file=sys.stderr,
        )
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verify_read.json").write_text(json.dumps(report, indent=1))
    table = [
        f"Chunk hash check on read: {n_images:,} images ({pixel_mb:.0f} MB of pixels, "
        f"{n_chunks} chunks), batches of {args.batch}, median of {args.repeat}",
        "",
        "| read | seconds | MB/s |",
        "| --- | ---: | ---: |",
        f"| plain (baseline) | {t_plain:.3f} | {pixel_mb / t_plain:.0f} |",
        f"| every chunk checked | {t_checked:.3f} | {pixel_mb / t_checked:.0f} |",
        "",
        f"overhead {report['overhead']:+.1%}; hashing {report['hash_s_per_gb']:.2f} s per GB; "
        f"load {load_before[0]:.1f} -> {report['load_after'][0]:.1f}",
    ]
    (args.out / "verify_read.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
