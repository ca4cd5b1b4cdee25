"""``make demo``: the main job end to end on the embedded default.

Local executor, SQLite registry, local Zarr stores and generated data, in ``./pomlia-home``
(or ``POMLIA_HOME``). Each stage is recorded in the registry; ``pomlia status`` shows the jobs.
"""

from __future__ import annotations

import math
import sys
import time

from rich.console import Console

from pomlia_hpc.cluster import Executor, wait_all
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

console = Console()


def _partial_pi(shard: int, n_shards: int = 8, terms: int = 200_000) -> float:
    """One shard of the Leibniz series for pi: a stand-in compute job for the array stage."""
    return sum(4.0 * (-1) ** k / (2 * k + 1) for k in range(shard, terms, n_shards))


def stage_array(ws: Workspace, reg: Registry) -> None:
    ex = Executor(load_cluster_profile(ws.cluster_profile), ws.jobs, reg)
    console.rule(f"[bold]array job ({ex.backend} backend)")
    t0 = time.perf_counter()
    handles = ex.map_array(_partial_pi, list(range(8)), name="demo-array")
    parts = wait_all(handles, poll_s=0.2)
    bad = [p for p in parts if isinstance(p, Exception)]
    if bad:
        raise SystemExit(f"demo: {len(bad)} array task(s) failed: {bad[0]}")
    console.print(
        f"8 tasks done in {time.perf_counter() - t0:.1f} s; "
        f"pi ≈ {sum(parts):.6f} (error {abs(sum(parts) - math.pi):.1e})"
    )


def main() -> int:
    ws = Workspace.from_settings()
    ws.create()
    reg = Registry.open(ws.db_url, busy_timeout_s=ws.sqlite_busy_timeout_s)
    console.print(f"workspace {ws.home}, registry {reg.display_url()}")
    stage_array(ws, reg)
    console.print("[green]demo finished[/]; see `pomlia status`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
