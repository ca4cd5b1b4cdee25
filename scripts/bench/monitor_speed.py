"""Speed of ``pomlia monitor run`` over a large prediction log: wall time, CPU time and peak
memory of the command in a child process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from monitor_setup import fingerprints

from pomlia_hpc.data.synth import make_split
from pomlia_hpc.serve.fingerprint import STATS_KIND

PER_FILE = 200_000


def _workspace(home: Path | None, seed: int) -> tuple[Path, Any, Any, str]:
    """(home, workspace, registry, model version) of a workspace with a demo model "bench"
    and its reference; ``home`` an earlier run's workspace to reuse."""
    from pomlia_hpc.registry import Registry
    from pomlia_hpc.workspace import Workspace

    reuse = home is not None and (home / "registry.db").is_file()
    home = home or Path(tempfile.mkdtemp(prefix="pomlia-bench-monitor-"))
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    if reuse:
        from pomlia_hpc.monitor.reference import resolve_target

        bundle = resolve_target(reg, "bench").bundle
    else:
        from pomlia_hpc.serve.demo import register_demo_model
        from pomlia_hpc.serve.reference import compute_reference, write_reference

        bundle = register_demo_model(reg, ws, "bench", channels=3, num_classes=8).bundle
        x_val, y_val = make_split("bloodmnist", 1000, seed=seed, split="val")
        write_reference(bundle, compute_reference(bundle, x_val, y_val, source="bench"))
    return home, ws, reg, bundle.version


def write_log(folder: Path, records: int, version: str, seed: int) -> None:
    """A log of ``records`` predictions as servers write it (files of 200,000, in the last 23
    hours). Only the first file is generated record by record (orjson, as the server does);
    the others are copies of it with new prediction ids, so every id is unique while
    fingerprints and times repeat (the reading cost is the same)."""
    import orjson

    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "20261201T000000-bench-0-0000.jsonl"
    if not first.is_file():
        x, _ = make_split("bloodmnist", 2000, seed=seed, split="test")
        fps = fingerprints(x)
        now = time.time()
        rng = np.random.default_rng(seed)
        probs = np.round(rng.dirichlet(np.ones(8), size=4096), 6)
        opt = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        lines = []
        for i in range(min(records, PER_FILE)):
            t = datetime.fromtimestamp(now - 82800 + 82800 * i / PER_FILE, UTC)
            p = probs[i % 4096]
            record = {
                "type": "prediction",
                "id": os.urandom(16).hex(),
                "time": t.isoformat(timespec="microseconds"),
                "model": "bench",
                "model_version": version,
                "deployment": None,
                "fingerprint_kind": STATS_KIND,
                "fingerprint": fps[i % len(fps)],
                "output": {
                    "label": f"class_{int(p.argmax())}",
                    "label_index": int(p.argmax()),
                    "probabilities": p.tolist(),
                },
            }
            lines.append(orjson.dumps(record, option=opt))
        first.write_bytes(b"".join(lines))
    base = first.read_bytes().splitlines(keepends=True)
    marker = b'"id":"'
    for f in range(1, math.ceil(records / PER_FILE)):
        out = []
        for line in base[: min(PER_FILE, records - f * PER_FILE)]:
            at = line.index(marker) + len(marker)
            out.append(line[:at] + os.urandom(16).hex().encode() + line[at + 32 :])
        (folder / f"20261201T000000-bench-{f}-0000.jsonl").write_bytes(b"".join(out))


def time_run(home: Path, threads: int | None = None) -> dict[str, Any]:
    """``pomlia monitor run bench --window 24h`` in a child process under ``/usr/bin/time``:
    wall and CPU seconds, peak RSS, exit status and the report's prediction count.

    Not ``wait4`` on a direct child: Linux counts the parent's resident memory at ``fork`` in
    the child's peak RSS (kept across ``exec``), so a child of this big benchmark process would
    report the benchmark's own memory (1.2 GB here, the run itself needing 0.27 GB at 20,000
    predictions). ``time`` forks the command from its own small process."""
    out_file, usage_file = home / "run.json", home / "run.time"
    cmd = [sys.executable, "-m", "pomlia_hpc", "--home", str(home), "monitor", "run"]
    # At most 2 threads (the target is "on 2 cores"); fewer when the caller's environment
    # says so (a shared machine's CPU slot).
    threads = threads or min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    timer = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(usage_file)]
    with out_file.open("w") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            [*timer, *cmd, "bench", "--window", "24h", "--json"], stdout=out, stderr=err, env=env
        )
        err.seek(0)
        stderr = err.read()
    wall, user, system, peak_kb = usage_file.read_text().split()[-4:]
    text = out_file.read_text()
    report = json.loads(text) if text.strip().startswith("{") else {}
    return {
        "run_wall_s": round(float(wall), 1),
        "run_peak_rss_mb": round(int(peak_kb) / 1024, 1),
        "run_cpu_s": round(float(user) + float(system), 1),
        "exit_status": proc.returncode,
        "threads": threads,
        "alarm": report.get("alarm"),
        "predictions_in_report": (report.get("volume") or {}).get("predictions"),
        "stderr_tail": stderr[-800:],
    }


def speed(
    records: int, seed: int, home: Path | None = None, *, keep_log: bool = False
) -> dict[str, Any]:
    """Write a log of ``records`` predictions, then time the monitor on it. Unless
    ``keep_log``, the log (1.7 GB at a million predictions) is deleted afterwards, and so is
    the whole workspace when this call created it."""
    import shutil

    from pomlia_hpc.serve.predlog import log_dir

    created = home is None
    home, ws, reg, version = _workspace(home, seed)
    folder = log_dir(ws.path("logs"), "bench")
    t0 = time.time()
    write_log(folder, records, version, seed)
    write_s = time.time() - t0
    size = sum(p.stat().st_size for p in folder.glob("*.jsonl"))
    result = {"records": records, "log_bytes": size, "write_s": round(write_s, 1)}
    result.update(time_run(home))
    reg.dispose()
    if not keep_log:
        for path in folder.glob("*.jsonl"):
            path.unlink()
        if created:
            shutil.rmtree(home, ignore_errors=True)
    result["home"] = str(home)
    return result
