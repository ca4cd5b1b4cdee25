"""Feedback latency at a server beside a busy replica of its deployment (serve/peers.py).

A real server (``pomlia serve`` on the demo bundle, 127.0.0.1) takes no feedback while a
replica of its deployment logs ``--lines`` predictions into the same folder over ``--quiet``
seconds (written here, each a copy of the server's own first record with a new id, so every
line is one the server would write). Then one feedback for the replica's last id is timed, and
one for an id the server answered itself. Two settings in the same run: the baseline,
``peer_read_interval_s: 0`` (the replica's lines are read inside that feedback, as before),
and the reader thread (``peer_read_interval_s: 1``, the default).

    python scripts/bench/peer_feedback.py --lines 200000 --out bench-results
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer

TOKEN = "bench-peer-feedback-0123456789ab"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHUNKS = 20  # the replica's lines are appended in this many writes over the quiet time


def npy(images: np.ndarray) -> bytes:
    """``images`` as an NPY body."""
    import io

    buf = io.BytesIO()
    np.save(buf, images)
    return buf.getvalue()


def replica_lines(template: dict[str, Any], n: int) -> list[bytes]:
    """``n`` copies of ``template`` (a prediction record) with fresh ids, as JSON lines."""
    out = []
    for _ in range(n):
        template["id"] = uuid.uuid4().hex
        out.append(orjson.dumps(template, option=orjson.OPT_APPEND_NEWLINE))
    return out


def feedback_s(client: httpx.Client, pid: str) -> float:
    """Seconds one /v1/feedback for ``pid`` took (wall, at the client); it must be taken."""
    t0 = time.perf_counter()
    resp = client.post("/v1/feedback", json={"prediction_id": pid, "label": 1}, headers=AUTH)
    took = time.perf_counter() - t0
    if resp.status_code != 200:
        raise SystemExit(f"feedback for {pid}: {resp.status_code} {resp.text}")
    return took


def one_setting(bundle: Path, work: Path, interval_s: float, lines: int, quiet_s: float) -> dict:
    """Run the scenario once with ``peer_read_interval_s: interval_s``."""
    logs = work / f"logs-{interval_s:g}"
    config = work / f"serve-{interval_s:g}.yaml"
    # A window that holds the replica's ids and the server's own (the default 200,000 would
    # forget the server's own ids behind 200,000 of the replica's: a 404, not a timing).
    config.write_text(f"peer_read_interval_s: {interval_s}\nfeedback_window: {lines + 1000}\n")
    env = {"POMLIA_SERVE_TOKEN": TOKEN}
    with (
        LocalServer(bundle, logs, args=["--config", str(config)], env=env) as srv,
        httpx.Client(base_url=srv.url, timeout=600) as client,
    ):
        images = np.zeros((2, 28, 28, 3), dtype=np.uint8)
        resp = client.post(
            "/v1/predict", content=npy(images), headers={"content-type": "application/x-npy"}
        )
        own = [p["id"] for p in resp.json()["predictions"]]
        first = next(logs.glob("*.jsonl")).read_bytes().splitlines()[0]
        data = replica_lines(orjson.loads(first), lines)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        replica = logs / f"{stamp}-bench-replica-{os.getpid()}-0000.jsonl"
        start = time.monotonic()
        step = max(1, len(data) // CHUNKS)
        with replica.open("ab") as f:
            for i in range(0, len(data), step):
                f.write(b"".join(data[i : i + step]))
                f.flush()
                time.sleep(max(0.0, start + quiet_s * (i + step) / len(data) - time.monotonic()))
        time.sleep(max(0.0, start + quiet_s - time.monotonic()) + 2 * interval_s)
        last = orjson.loads(data[-1])["id"]
        peer_s = feedback_s(client, last)
        own_s = feedback_s(client, own[0])
    return {
        "peer_read_interval_s": interval_s,
        "replica_lines": lines,
        "replica_mb": round(sum(map(len, data)) / 2**20, 1),
        "quiet_s": quiet_s,
        "feedback_for_replica_id_s": round(peer_s, 3),
        "feedback_for_own_id_s": round(own_s, 3),
    }


def table(rows: list[dict]) -> str:
    head = "| setting | replica lines (MiB) | feedback, replica's id, s | feedback, own id, s |"
    out = [head, "| --- | --- | --- | --- |"]
    for r in rows:
        what = (
            "read in the feedback (baseline)"
            if r["peer_read_interval_s"] == 0
            else f"reader thread every {r['peer_read_interval_s']:g} s"
        )
        out.append(
            f"| {what} | {r['replica_lines']:,} ({r['replica_mb']}) | "
            f"{r['feedback_for_replica_id_s']} | {r['feedback_for_own_id_s']} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=200_000, help="predictions the replica logs")
    ap.add_argument("--quiet", type=float, default=30.0, help="s over which it logs them")
    ap.add_argument("--out", type=Path, default=None, help="folder for peer_feedback.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pomlia-bench-peers-") as tmp:
        work = Path(tmp)
        bundle = cached_demo_bundle(work / "demo", num_classes=4)
        rows = [one_setting(bundle, work, s, args.lines, args.quiet) for s in (0.0, 1.0)]
    result = {"load_average": os.getloadavg(), "rows": rows}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "peer_feedback.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
