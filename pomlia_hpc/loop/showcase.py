"""The loop end to end on a served look-alike model, as a user drives it with ``pomlia``.

Used by ``scripts/bench/loop.py`` (and meant for ``make demo`` and an end-to-end test):

1. ``pomlia deploy promote MODEL MODEL``: the model goes on a deployment slot of its own name;
   ``pomlia serve MODEL --keep-inputs`` follows the slot (hot swap) and keeps every input;
2. an in-distribution stream (fresh look-alike images of the model's dataset) with feedback
   labels; ``pomlia monitor run`` on that window must not alarm;
3. a shifted stream: the same generator's images through a MedMNIST-C-style corruption
   (:mod:`pomlia_hpc.data.corruptions`), with feedback labels; the monitor must alarm and
   record a retrain request;
4. ``pomlia loop watch --once``: harvest → ... → gate → redeploy; the running server swaps;
5. a second shifted stream: the new model's accuracy (from the server's answers) against the
   old model's on the same images (computed offline), the majority class of the champion's
   training labels (the trivial baseline) and the first shifted stream; ``pomlia monitor run
   NEW_MODEL`` on that window (it finds the records the server logged under the slot's name).

The figures (accuracies, timings, ids) come back as a dict; any step that does not behave
raises :class:`ShowcaseError`.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np

from pomlia_hpc.data.corruptions import corrupt
from pomlia_hpc.data.store import open_store
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.loop.gate import correct
from pomlia_hpc.loop.harvest import training_version
from pomlia_hpc.loop.promote import champion
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.smoke import wait_ready
from pomlia_hpc.workspace import Workspace

RunCli = Callable[..., int]


class ShowcaseError(PomliaError):
    """A step of the showcase did not behave as the loop promises."""


@dataclass(frozen=True)
class LoopShowcase:
    """Sizes and settings: images per stream, the corruption, the loop's options."""

    flag: str = "pneumoniamnist"
    normal: int = 200
    shifted: int = 300
    after: int = 200
    family: str = "contrast"
    severity: int = 5
    batch: int = 20
    # Two fully trained trials (the first fine-tunes the champion; its architecture);
    # margin 0.05: a test split of about a hundred images cannot show less.
    loop_args: tuple[str, ...] = (
        *("--trials", "2", "--max-epochs", "8", "--min-epochs", "8", "--parallel", "2"),
        *("--margin", "0.05"),
    )
    token: str = "showcase-token-0123456789abcdef"
    extra_env: dict[str, str] = field(default_factory=dict)


def default_cli(*args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> int:
    """Run ``pomlia ARGS`` in a child process; a status not in ``ok`` is an error."""
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", *args], check=False, env={**os.environ, **(env or {})}
    )
    if proc.returncode not in ok:
        raise ShowcaseError(f"`pomlia {' '.join(args)}` exited with {proc.returncode}")
    return proc.returncode


def stream(
    flag: str, n: int, seed: int, corruption: tuple[str, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fresh look-alike images of ``flag`` (uint8 NHWC) and their class indices."""
    x, y = make_split(flag, n, seed=seed, split="test")
    if x.ndim == 3:
        x = x[..., None]
    if corruption is not None:
        x = corrupt(x, corruption[0], corruption[1], np.random.default_rng(seed))
    return x, y[:, 0].astype(np.int64)


def _npy(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, images[..., 0] if images.shape[-1] == 1 else images)
    return buf.getvalue()


def send(
    url: str, images: np.ndarray, labels: np.ndarray, token: str, batch: int
) -> tuple[float, list[str], set[str]]:
    """Classify ``images`` in batches, send each true label as feedback; returns (accuracy of
    the answers, prediction ids, model versions that answered)."""
    hits, ids, versions = 0, [], set()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=60) as c:
        for lo in range(0, len(images), batch):
            r = c.post(
                "/v1/predict",
                content=_npy(images[lo : lo + batch]),
                headers={"content-type": "application/x-npy"},
            )
            r.raise_for_status()
            answer = r.json()
            versions.add(answer["model_version"])
            for pred, truth in zip(answer["predictions"], labels[lo : lo + batch], strict=True):
                hits += int(pred["label_index"] == int(truth))
                ids.append(pred["id"])
                fb = c.post(
                    "/v1/feedback",
                    json={"prediction_id": pred["id"], "label": int(truth)},
                    headers=auth,
                )
                fb.raise_for_status()
    return hits / max(1, len(images)), ids, versions


def majority_class(reg: Registry, model: str) -> int:
    """The most frequent class of ``model``'s training labels (the trivial baseline's answer)."""
    parent, _ = training_version(reg, resolve_model(reg, model))
    store = open_store(parent.store_path)
    lo, hi = store.split_range("train")
    return int(np.bincount(store.read_labels(lo, hi)[:, 0]).argmax())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _version(url: str) -> str:
    return str(httpx.get(f"{url}/ready", timeout=10).json()["model_version"])


def loop_showcase(
    ws: Workspace,
    reg: Registry,
    model: str,
    cfg: LoopShowcase,
    *,
    cli: RunCli = default_cli,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the showcase for registered, exported ``model`` (module docstring)."""
    env = {"POMLIA_SERVE_TOKEN": cfg.token, **cfg.extra_env}
    cli("deploy", "promote", model, model, env=env)
    addr = ws.tmp / f"showcase-{model}.addr"
    addr.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pomlia_hpc", "serve", model, "--keep-inputs", "--port", "0"]
    say(f"$ pomlia serve {model} --keep-inputs --port 0 --address-file {addr}")
    server = subprocess.Popen([*cmd, "--address-file", str(addr)], env={**os.environ, **env})
    figures: dict[str, Any] = {"model": model}
    try:
        url = wait_ready(None, addr, timeout_s=180)
        old_version = _version(url)
        shift = (cfg.family, cfg.severity)

        def monitored(n: int, seed: int, what: str, on: tuple[str, int] | None) -> int:
            """Send ``n`` images (shifted by ``on``), then run the monitor over them: its rc."""
            since = _now()
            x, y = stream(cfg.flag, n, seed, on)
            acc, _, _ = send(url, x, y, cfg.token, cfg.batch)
            say(f"{what}: {n} images, accuracy {acc:.3f}")
            figures["accuracy_normal" if on is None else "accuracy_before"] = acc
            return cli("monitor", "run", model, "--since", since, ok=(0, 1), env=env)

        if monitored(cfg.normal, 101, "in-distribution stream", None) != 0:
            raise ShowcaseError("the monitor alarmed on in-distribution requests")
        what = f"shifted stream ({cfg.family} severity {cfg.severity})"
        if monitored(cfg.shifted, 202, what, shift) != 1:
            raise ShowcaseError("the monitor did not alarm on the shifted stream")
        t_alarm = time.monotonic()

        cli("loop", "watch", "--once", *cfg.loop_args, env=env)
        deadline = time.monotonic() + 60
        while _version(url) == old_version:
            if time.monotonic() > deadline:
                raise ShowcaseError("the server did not swap to the new model within 60 s")
            time.sleep(0.2)
        figures["alarm_to_serving_s"] = time.monotonic() - t_alarm
        new_version = _version(url)

        t2 = _now()
        xa, ya = stream(cfg.flag, cfg.after, 303, shift)
        figures["accuracy_after"], _, versions = send(url, xa, ya, cfg.token, cfg.batch)
        if versions != {new_version}:
            raise ShowcaseError(f"answers came from {versions}, expected {new_version}")
        old = correct(resolve_model(reg, model), xa, ya[:, None])  # labels (n, 1), as stored
        figures["old_on_after_stream"] = float(old.mean())
        figures["majority_on_after_stream"] = float((ya == majority_class(reg, model)).mean())
        figures.update(old_version=old_version, new_version=new_version)
        say(
            f"after the swap: new model {figures['accuracy_after']:.3f} on a fresh shifted "
            f"stream; on the same images the old model {figures['old_on_after_stream']:.3f}, "
            f"the majority class {figures['majority_on_after_stream']:.3f}"
        )
        cli("deploy", "history", model, env=env)
        entry = champion(reg, model)
        if entry is not None:
            figures["new_model"] = entry.model
            cli("lineage", entry.model, env=env)
            # The new model's records are in the slot's log folder: the monitor finds them.
            cli("monitor", "run", entry.model, "--since", t2, ok=(0, 1), env=env)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return figures
