"""Benchmark the decode of compressed TIFF pages: assembled from one bounded decode per strip
(:func:`pomlia_hpc.data.sources.tiffpage.page_array`, what ingest and the server run) against
the path that bilevel (1-bit) pages took before, in the same run: every strip decoded with
the bound and dropped (:func:`~pomlia_hpc.data.sources.segments.decoded_segments`), then the
page decoded again by tifffile; and tifffile alone (no bound), for reference.

- input: generated pages written by tifffile (bilevel deflate and LZMA, FillOrder 2 8-bit
  deflate, 16-bit grey deflate with the horizontal predictor, 16-bit grey uncompressed, which
  tifffile alone read before), ``--side`` px square, ``--rows`` rows per strip;
- each way decodes the page from its bytes in memory (the file opened each time, as an
  upload is), ``--repeat`` times, the ways alternated so machine noise hits all alike;
- reported: median milliseconds per page and the speed-up of the assembly over the old
  path; a check that all three give the same array.

    python scripts/bench/tiff_decode.py --out bench-results            # ~1 min on 2 cores
    python scripts/bench/tiff_decode.py --side 256 --repeat 3 --out /tmp/bench   # smoke run

Writes ``tiff_decode.json`` and ``tiff_decode.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile


def layouts(side: int, rows: int) -> dict[str, bytes]:
    """Each benchmarked layout's file, by name."""
    from tests.fixtures.bad_tiffs import fill_order_2

    rng = np.random.default_rng(0)
    # Smooth-ish content (blobs), so that the compressors have something to do.
    blobs = np.cumsum(np.cumsum(rng.normal(size=(side, side)), 0), 1)
    bits = blobs > np.median(blobs)
    grey = ((blobs - blobs.min()) / np.ptp(blobs) * 65535).astype(np.uint16)

    def tiff(x: np.ndarray, **kw: Any) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, x, rowsperstrip=rows, **kw)
        return buf.getvalue()

    return {
        "bilevel, deflate": tiff(bits, compression="zlib"),
        "bilevel, LZMA": tiff(bits, compression="lzma"),
        "8-bit FillOrder 2, deflate": fill_order_2(
            (grey >> 8).astype(np.uint8), compression="zlib", rowsperstrip=rows
        ),
        "16-bit, deflate + predictor": tiff(grey, compression="zlib", predictor=True),
        "16-bit, uncompressed": tiff(grey),
    }


def assembled(data: bytes) -> np.ndarray:
    """The page as ingest and the server decode it now."""
    from pomlia_hpc.data.sources.tiffpage import page_array

    view = memoryview(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        x = page_array(tif.pages[0], lambda at, n: view[at : at + n])
        assert x is not None
        return x


def checked_then_tifffile(data: bytes) -> np.ndarray:
    """The old path of a page not assembled: the bounded check, then tifffile's decode."""
    from pomlia_hpc.data.sources.segments import decoded_segments

    view = memoryview(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for _ in decoded_segments(tif.pages[0], lambda at, n: view[at : at + n]):
            pass
        return np.asarray(tif.pages[0].asarray())


def tifffile_alone(data: bytes) -> np.ndarray:
    """tifffile's decode, without any bound (reference)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return np.asarray(tif.pages[0].asarray())


WAYS: dict[str, Callable[[bytes], np.ndarray]] = {
    "assembled (now)": assembled,
    "check + tifffile (before)": checked_then_tifffile,
    "tifffile alone": tifffile_alone,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=2048, help="page side in px")
    ap.add_argument("--rows", type=int, default=64, help="rows per strip")
    ap.add_argument("--repeat", type=int, default=7, help="decodes per way and layout")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    # This checkout's code (not an installed copy's), and its test fixtures.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    load_before = os.getloadavg()
    files = layouts(args.side, args.rows)
    results: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        arrays = {way: fn(data) for way, fn in WAYS.items()}  # warm-up, and the check
        same = all(np.array_equal(a, arrays["tifffile alone"]) for a in arrays.values())
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.repeat):
            for way, fn in WAYS.items():
                t0 = time.perf_counter()
                fn(data)
                times[way].append((time.perf_counter() - t0) * 1000)
        ms = {way: statistics.median(v) for way, v in times.items()}
        results[name] = {
            "file_bytes": len(data),
            "same_array": same,
            "median_ms": {k: round(v, 2) for k, v in ms.items()},
            "all_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "speedup": round(ms["check + tifffile (before)"] / ms["assembled (now)"], 2),
        }
    report = {
        "side_px": args.side,
        "rows_per_strip": args.rows,
        "repeat": args.repeat,
        "layouts": results,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiff_decode.json").write_text(json.dumps(report, indent=1))
    table = [
        f"TIFF page decode, {args.side} px square, {args.rows} rows per strip, median ms of "
        f"{args.repeat}",
        "",
        "| layout | assembled (now) | check + tifffile (before) | tifffile alone | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        ms = r["median_ms"]
        table.append(
            f"| {name} | {ms['assembled (now)']:.1f} | {ms['check + tifffile (before)']:.1f} "
            f"| {ms['tifffile alone']:.1f} | {r['speedup']:.2f}x |"
        )
    table += ["", f"load {load_before[0]:.1f} -> {report['load_after'][0]:.1f}"]
    (args.out / "tiff_decode.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if not all(r["same_array"] for r in results.values()):
        print("the ways gave different arrays", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
