"""A model switch on Slurm, as docs/loop.md describes it, on the real single-node Slurm: the old
model's serve job runs; a new serve job (the new model's deployment directory) starts with the
same address file and log folder; the address file switches to it once it answers; the old job
is cancelled and drains. A client that reads the address file for every request (and reads it
again when a connection is refused) sees no failed request, and every answer is in the shared
log under the version that produced it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pomlia_hpc.cluster.batch import jobs_named, submit_script
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import register_demo_model
from pomlia_hpc.serve.deploy import write_deployment
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import PredictionLine
from pomlia_hpc.workspace import Workspace

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
JOB = "pomlia-test-switch"


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 255, (2, 28, 28), dtype=np.uint8))
    return buf.getvalue()


class Client(threading.Thread):
    """Sends requests without pause, each to the address in the file; a refused connection
    (the server it named has gone) is retried after reading the file again."""

    def __init__(self, address: Path) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.answers: list[tuple[str, str]] = []  # (prediction id, model version)
        self.failures: list[str] = []
        self.retries = 0

    def run(self) -> None:
        body = _npy()
        while not self.stop.is_set():
            for _attempt in range(20):
                url = self.address.read_text().strip()
                try:
                    r = httpx.post(
                        f"{url}/v1/predict",
                        content=body,
                        headers={"content-type": "application/x-npy"},
                        timeout=30,
                    )
                except httpx.ConnectError:
                    self.retries += 1
                    time.sleep(0.05)
                    continue
                except httpx.HTTPError as exc:  # a dropped in-flight request: not drained
                    self.failures.append(repr(exc))
                    break
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    break
                answer = r.json()
                self.answers += [(p["id"], answer["model_version"]) for p in answer["predictions"]]
                break
            else:
                self.failures.append("no server answered after 20 tries")


def _wait(what: str, ok: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ok) and ok():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def test_new_job_takes_the_address_and_the_old_one_drains(
    slurm: None, workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    profile = load_cluster_profile("slurm-local")
    old = register_demo_model(reg, workspace, "old", channels=1, num_classes=2, seed=0)
    new = register_demo_model(reg, workspace, "new", channels=1, num_classes=2, seed=1)
    assert old.bundle.version != new.bundle.version
    dirs = [
        write_deployment(reg, workspace, m, profile, out_dir=tmp_path / m).directory
        for m in ("old", "new")
    ]
    address = workspace.path("serving", "ward", "address")
    logs = workspace.path("logs", "predictions", "ward")
    env = {
        "POMLIA_SERVE_RUNTIME": "native",  # Apptainer cannot run here; the same server runs
        "POMLIA_SERVE_HOST": "127.0.0.1",
        "POMLIA_ADDRESS_FILE": str(address),
        "POMLIA_LOG_DIR": str(logs),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    # A serving job asks for a GPU (`--gres=gpu:1`); this Slurm has none, and the ONNX runtime
    # serves on CPU: the command line drops the request.
    extra = ["--gres=none"]
    jobs: list[str] = []
    client = Client(address)

    def submit(folder: Path) -> str:  # from the folder: the job's output file goes there
        script = folder / "serve.sbatch"
        return submit_script(script, name=JOB, singleton=False, env=env, extra=extra, cwd=folder)

    try:
        jobs.append(submit(dirs[0]))
        _wait("the old job's address", lambda: _read(address).startswith("http://"))
        old_url = _read(address)
        client.start()
        _wait("answers from the old job", lambda: len(client.answers) >= 10)

        jobs.append(submit(dirs[1]))
        _wait("the switch of the address file", lambda: _read(address) not in ("", old_url))
        new_url = _read(address)
        subprocess.run(["scancel", jobs[0]], check=True, timeout=30)  # SIGTERM: drain
        _wait("the old job to end", lambda: jobs[0] not in {j.job_id for j in jobs_named(JOB)})
        n = len(client.answers)
        _wait("answers from the new job", lambda: len(client.answers) >= n + 10)
    finally:
        client.stop.set()
        if client.is_alive():
            client.join(60)
        if jobs:
            subprocess.run(["scancel", *jobs], check=False, timeout=30)
    _wait("both jobs to end", lambda: not jobs_named(JOB))
    outputs = "\n".join(p.read_text() for d in dirs for p in d.glob("pomlia-serve-*.out"))
    assert client.failures == [], (client.failures, outputs)
    assert {v for _, v in client.answers} == {old.bundle.version, new.bundle.version}
    # The old job left the new address in place (it removes the file only if it is its own).
    assert new_url != old_url and _read(address) in ("", new_url)
    # Every answer is in the shared log, under the version that gave it.
    logged = {r.id: r.model_version for r in read_records(logs, PredictionLine)}
    assert all(logged.get(pid) == version for pid, version in client.answers)
