"""Local jobs side by side: torch's threads spinning (OpenMP's active wait) against passive
waiting, the policy pomlia gives its jobs (``cluster.jobenv.JOB_ENV_DEFAULTS``).

Each job trains a small CNN (28 px, batch 64) for ``--steps`` steps on random data with torch's
default threads (the job's CPUs). For each setting, one job alone and then ``--jobs`` at once
through the local executor, as ``pomlia automl run --parallel N`` starts its trials. The
baseline, ``before``, is how jobs ran before pomlia set a policy: libgomp's default (spin a
while, then sleep), with ``JOB_ENV_DEFAULTS`` emptied for the run. ``ACTIVE`` (spin only) is
a user's own setting, which is kept; ``PASSIVE`` is pomlia's default now.

    python scripts/bench/job_threads.py --out bench-results    # ~2 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.jobenv import JOB_ENV_DEFAULTS
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def train(steps: int) -> dict[str, Any]:
    """Train a small CNN for ``steps`` steps in this job; its wall and CPU seconds."""
    import torch

    from pomlia_hpc.models.nets import build_classifier

    torch.manual_seed(0)
    net = build_classifier("small_cnn", 4, 3, image_size=28)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.randn(64, 3, 28, 28), torch.randint(0, 4, (64,))
    w0, c0 = time.monotonic(), time.process_time()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {
        "wall_s": time.monotonic() - w0,
        "cpu_s": time.process_time() - c0,
        "threads": torch.get_num_threads(),
        "policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def side_by_side(ex: Executor, jobs: int, steps: int) -> list[dict[str, Any]]:
    """``jobs`` training jobs submitted at once; each one's figures."""
    handles = [ex.submit(train, steps, name=f"threads-{i}") for i in range(jobs)]
    return [h.result() for h in handles]


def run_settings(ex: Executor, jobs: int, steps: int) -> list[dict[str, Any]]:
    """For each setting (``before``, ``ACTIVE``, ``PASSIVE``), one job alone and ``jobs`` at
    once; the submitter's ``OMP_WAIT_POLICY`` and ``JOB_ENV_DEFAULTS`` restored after."""
    rows: list[dict[str, Any]] = []
    defaults, own = dict(JOB_ENV_DEFAULTS), os.environ.get("OMP_WAIT_POLICY")
    try:
        for setting in ("before", "ACTIVE", "PASSIVE"):
            os.environ.pop("OMP_WAIT_POLICY", None)
            JOB_ENV_DEFAULTS.clear()
            if setting == "ACTIVE":
                os.environ["OMP_WAIT_POLICY"] = setting
            elif setting == "PASSIVE":
                JOB_ENV_DEFAULTS.update(defaults)
            for n in (1, jobs):
                got = side_by_side(ex, n, steps)
                rows.append({"jobs": n, "policy": setting, "runs": got})
                walls = ", ".join(f"{g['wall_s']:.1f}" for g in got)
                print(f"{setting:<8} {n} at once: wall {walls} s", flush=True)
    finally:
        JOB_ENV_DEFAULTS.clear()
        JOB_ENV_DEFAULTS.update(defaults)
        os.environ.pop("OMP_WAIT_POLICY", None)
        if own is not None:
            os.environ["OMP_WAIT_POLICY"] = own
    return rows


def at_least_two(text: str) -> int:
    """argparse type: a whole number >= 2."""
    n = int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be 2 or more (jobs side by side), got {n}")
    return n


def main() -> None:
    """Run the settings, write ``job_threads.json`` and ``job_threads.md`` under ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=at_least_two, default=2, help="jobs at once (default 2)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per job (default 150)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pomlia-bench-threads-") as tmp:
        ws = Workspace(
            home=Path(tmp), db_url=f"sqlite:///{tmp}/registry.db", cluster_profile="local"
        )
        ws.create()
        reg = Registry.open(ws.db_url)
        try:
            rows = run_settings(Executor.from_profile("local", ws.jobs, reg), args.jobs, args.steps)
        finally:
            reg.dispose()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "job_threads.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| policy | jobs at once | wall per job (s) | CPU per job (s) | threads |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        walls = " / ".join(f"{g['wall_s']:.1f}" for g in r["runs"])
        cpus = " / ".join(f"{g['cpu_s']:.1f}" for g in r["runs"])
        lines.append(
            f"| {r['policy']} | {r['jobs']} | {walls} | {cpus} | {r['runs'][0]['threads']} |"
        )
    slowest = {r["policy"]: max(g["wall_s"] for g in r["runs"]) for r in rows if r["jobs"] > 1}
    lines.append(
        f"\n{args.jobs} jobs at once, slowest job: before / PASSIVE = "
        f"{slowest['before'] / slowest['PASSIVE']:.2f}, ACTIVE / PASSIVE = "
        f"{slowest['ACTIVE'] / slowest['PASSIVE']:.2f}"
    )
    (args.out / "job_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
