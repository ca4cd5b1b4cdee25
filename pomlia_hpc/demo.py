"""``make demo``: the main job end to end on the embedded default.

Local executor, SQLite registry, local Zarr stores and generated data, in ``./pomlia-home``
(or ``POMLIA_HOME``). The demo is the user's journey through the ``pomlia`` command, one stage
after the other, each recorded in the registry:

1. generate MedMNIST look-alikes (no download needed) and ingest six of them;
2. train the fingerprint autoencoder, extract embeddings as an array job, build the index;
3. ask which known datasets are most similar to the new task's dataset;
4. register the task, import the shipped MedMNIST+ results and ask the recommender for the
   top strategies (published results and the workspace's own runs);
5. run a small SMAC-Hyperband AutoML study (trials are jobs);
6. export the best model and serve it over HTTP on 127.0.0.1; send one image;
7. the loop: serve it on a deployment slot keeping inputs; in-distribution requests raise no
   alarm; corrupted images with feedback labels make the monitor alarm; `pomlia loop watch`
   harvests them, retrains, gates and swaps the running server to the new model, whose
   accuracy on the corrupted stream is then measured (:func:`loop_showcase`).

Re-running is cheap: finished stages are reused (same dataset versions, same encoder,
complete embeddings) and a new study is run. ``pomlia status`` shows the jobs afterwards.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
from rich.console import Console
from sqlalchemy import select

from pomlia_hpc.data.store import open_version
from pomlia_hpc.loop.showcase import LoopShowcase, loop_showcase
from pomlia_hpc.registry import Encoder, Registry, Task
from pomlia_hpc.serve.smoke import wait_ready
from pomlia_hpc.strategy.kb import SHIPPED_DATA, SHIPPED_META, SHIPPED_TABLES
from pomlia_hpc.workspace import Workspace

console = Console()

#: Known datasets (the "past") and the new task's dataset.
KNOWN = ("pathmnist", "bloodmnist", "dermamnist", "organamnist", "breastmnist")
NEW = "pneumoniamnist"
ENCODER = "demo-ae"
TASK = "demo-pneumonia"


def pomlia(*args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> int:
    """Run one ``pomlia`` command as a user would; stop the demo if its exit status is not
    in ``ok``. Returns the exit status."""
    console.print(f"[bold cyan]$ pomlia {' '.join(args)}[/]")
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", *args], check=False, env={**os.environ, **(env or {})}
    )
    if proc.returncode not in ok:
        raise SystemExit(f"demo: `pomlia {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.returncode


def _exists(reg: Registry, model: type[Encoder] | type[Task], name: str) -> bool:
    with reg.session() as s:
        return s.scalar(select(model.id).where(model.name == name)) is not None


def serve_and_ask(ws: Workspace, reg: Registry, model: str) -> None:
    """Start ``pomlia serve`` on a free loopback port, classify one test image, stop it."""
    addr = ws.tmp / "demo-serve.addr"
    addr.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pomlia_hpc",
        "serve",
        model,
        "--port",
        "0",
        "--address-file",
        str(addr),
    ]
    console.print(f"[bold cyan]$ pomlia serve {model} --port 0 --address-file {addr}[/]")
    server = subprocess.Popen(cmd)
    try:
        url = wait_ready(None, addr, timeout_s=120)
        store = open_version(reg, NEW)
        lo, _ = store.split_range("test")
        image = store.read_rows(lo, lo + 1)[0]
        truth = store.class_names[int(store.read_labels(lo, lo + 1)[0, 0])]
        buf = io.BytesIO()
        np.save(buf, image)
        answer = httpx.post(
            f"{url}/v1/predict",
            content=buf.getvalue(),
            headers={"content-type": "application/x-npy"},
            timeout=30,
        )
        answer.raise_for_status()
        pred = answer.json()["predictions"][0]
        console.print(
            f"POST {url}/v1/predict → label [bold]{pred['label']}[/] "
            f"(true: {truth}), probabilities {pred['probabilities']}"
        )
    finally:
        server.send_signal(signal.SIGTERM)  # drains in-flight requests, flushes the log
        server.wait(60)


def main() -> int:
    ws = Workspace.from_settings()
    t0 = time.perf_counter()
    raw = ws.home / "raw-lookalikes"
    pomlia("init")
    reg = Registry.open(ws.db_url, busy_timeout_s=ws.sqlite_busy_timeout_s)

    console.rule("[bold]1. data: MedMNIST look-alikes → versioned Zarr stores")
    if not (raw / f"{NEW}.npz").is_file():
        pomlia("data", "synth", "--scale", "0.02", str(raw))
        # The new task's data larger: the loop's gate (step 7) compares models on its test
        # split, and 12 images (scale 0.02) cannot show that a new model is not worse.
        pomlia("data", "synth", "--scale", "0.2", "--flags", NEW, str(raw))
    for flag in (*KNOWN, NEW):
        pomlia("data", "add", flag, "--root", str(raw))
    pomlia("data", "list")

    console.rule("[bold]2. fingerprints: autoencoder, sharded extraction, FAISS index")
    if not _exists(reg, Encoder, ENCODER):
        pomlia(
            "fingerprint",
            "train",
            *KNOWN,
            "--name",
            ENCODER,
            "--latent-dim",
            "16",
            "--epochs",
            "2",
            "--max-images",
            "400",
        )
    pomlia("fingerprint", "extract", *KNOWN, NEW, "--encoder", ENCODER, "--shards", "1")
    pomlia("index", "build", "--encoder", ENCODER)

    console.rule(f"[bold]3. which known datasets resemble {NEW}?")
    pomlia("similar", NEW, "--encoder", ENCODER, "--k", "3")
    pomlia("similar", NEW, "--encoder", ENCODER, "--images", "5")

    console.rule("[bold]4. strategy: published results and past runs → recommendation")
    if not _exists(reg, Task, TASK):
        pomlia("task", "add", TASK, "--dataset", NEW, "--metric", "auc")
    source, table = SHIPPED_TABLES[0]  # MedMNIST+, enough to rank strategies for the task
    table_path, meta_path = SHIPPED_DATA / table, SHIPPED_DATA / SHIPPED_META
    pomlia(
        "strategy",
        "import",
        str(table_path),
        "--source",
        source,
        "--meta",
        str(meta_path),
        "--replace",
    )
    pomlia("recommend", TASK, "--k", "3")

    console.rule("[bold]5. AutoML: SMAC-Hyperband, every trial a job")
    study = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    pomlia(
        "automl",
        "run",
        TASK,
        "--study",
        study,
        "--trials",
        "4",
        "--max-epochs",
        "3",
        "--parallel",
        "2",
        "--archs",
        "small_cnn",
        "--encoder",
        ENCODER,
    )
    pomlia("runs", "list", "--task", TASK)

    console.rule("[bold]6. deploy: export, serve over HTTP, one request")
    model = f"{study}-best"
    pomlia("model", "export", model)
    serve_and_ask(ws, reg, model)

    console.rule("[bold]7. the loop: feedback → alarm → retrain → gate → hot swap")
    figures = loop_showcase(ws, reg, model, LoopShowcase(flag=NEW), cli=pomlia, say=console.print)
    console.print(
        f"shifted stream accuracy: before {figures['accuracy_before']:.3f} (old model), after "
        f"{figures['accuracy_after']:.3f} (new model; on the same images the old model "
        f"{figures['old_on_after_stream']:.3f}, the majority class "
        f"{figures['majority_on_after_stream']:.3f}); alarm → new model serving "
        f"{figures['alarm_to_serving_s']:.0f} s"
    )

    # How the recommender's answers (step 4's and the loop's) did against the runs since.
    pomlia("strategy", "outcomes", "--limit", "2")
    pomlia("status", "--limit", "5")
    console.print(
        f"[green]demo finished in {time.perf_counter() - t0:.0f} s[/]; workspace {ws.home}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    sys.exit(main())
