"""The loop end to end, over real HTTP and real ``pomlia`` commands: a served look-alike
model, no alarm on in-distribution requests, an alarm on corrupted ones with feedback labels,
``pomlia loop watch`` killed once in the middle (SIGKILL after the AutoML stage) and run again,
the gate passes, the running server swaps, and the new model is more accurate on the shifted
stream than the old one. Small sizes, the trials in the watcher's process; see
``scripts/bench/loop.py`` for the measured run (trials as jobs).

The server and the killed watcher are processes of their own (a hot swap in a running server,
a SIGKILL); every other ``pomlia`` command runs through the console script's entry point in
the test's process (``pomlia_main``): a process each would cost a start that imports torch
(~5 s of CPU) and check nothing more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pomlia_hpc.automl.study import load_spec
from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.loop.driver import KILL_ENV
from pomlia_hpc.loop.promote import champion, history
from pomlia_hpc.loop.showcase import LoopShowcase, ShowcaseError, default_cli, loop_showcase
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.models.checkpoint import save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import (
    GateDecision,
    LoopRun,
    Model,
    MonitorReport,
    Registry,
    RetrainRequest,
)
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main

FLAG = "pneumoniamnist"


def _champion(tmp_path: Path, ws: Workspace, reg: Registry) -> str:
    """A small CNN trained for a few epochs on a look-alike (the stand-in for a study's best)."""
    arrays = {}
    for split, n, seed in (("train", 600, 0), ("val", 100, 1), ("test", 150, 2)):
        x, y = make_split(FLAG, n, seed=seed, split=split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    np.savez(tmp_path / "pneumo.npz", **arrays)
    version = ingest(
        ws, reg, "pneumo", tmp_path / "pneumo.npz", class_names=["normal", "pneumonia"]
    )
    task = add_task(reg, "pneumo-task", version.ref, "acc")
    torch.manual_seed(0)
    net = build_classifier("small_cnn", 2, 1, image_size=28)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    xt = (torch.from_numpy(arrays["train_images"][:, None]).float() / 255 - 0.5) / 0.5
    yt = torch.from_numpy(arrays["train_labels"][:, 0].astype(np.int64))
    for _ in range(6):
        for i in range(0, len(xt), 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i : i + 50]), yt[i : i + 50]).backward()
            opt.step()
    ckpt = tmp_path / "champ.pt"
    save_classifier(
        ckpt,
        net.eval(),
        arch="small_cnn",
        num_classes=2,
        in_channels=1,
        image_size=28,
        task_type="binary",
        label_names=["normal", "pneumonia"],
    )
    register_model(
        reg,
        "pneumo-champ",
        ckpt,
        task_id=task.id,
        lineage={"dataset_version_id": version.id, "task": task.name},
    )
    export_model(reg, ws, "pneumo-champ")
    return "pneumo-champ"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a minute or two on 2 idle cores; much longer on a loaded machine
def test_loop_end_to_end_with_a_kill_in_the_middle(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _champion(tmp_path, workspace, reg)
    killed = {"n": 0}

    def cli(*args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> int:
        env = dict(env or {})
        if args[:2] == ("loop", "watch"):
            # The trials in the watcher's process (the debug executor): the watcher's kill and
            # resume are what this test checks, not the trials' job processes (~10 s of CPU
            # each; a watcher stopped with its job out: tests/test_loop_stop.py).
            env.update(POMLIA_CLUSTER="debug", PYTHONBREAKPOINT="0")
            if not killed["n"]:
                killed["n"] += 1  # the first watcher dies right after AutoML, before recording it
                rc = default_cli(*args, ok=(-9,), env={**env, KILL_ENV: "automl:after"})
                assert rc == -9
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            code, out, err = pomlia_main(m, capsys, *args)
        if code not in ok:
            raise ShowcaseError(f"`pomlia {' '.join(args)}` exited with {code}: {out}{err}")
        return int(code)

    # The showcase's loop budget but 4 epochs a trial, not 8 (2 trials, the first fine-tunes
    # the champion's small_cnn): the gate's margin and the accuracy checks need no more.
    loop_args = (
        *("--trials", "2", "--max-epochs", "4", "--min-epochs", "4", "--parallel", "2"),
        *("--margin", "0.05"),
    )
    cfg = LoopShowcase(flag=FLAG, normal=60, shifted=300, after=200, loop_args=loop_args)
    try:
        figures = loop_showcase(workspace, reg, model, cfg, cli=cli, say=lambda _l: None)
    except ShowcaseError as exc:
        pytest.fail(str(exc))
    assert figures["accuracy_after"] > figures["accuracy_before"]
    assert figures["accuracy_after"] > figures["old_on_after_stream"]
    assert figures["accuracy_after"] > figures["majority_on_after_stream"]
    entry = champion(reg, model)
    assert entry is not None and entry.model == figures["new_model"] != model
    with reg.session() as s:
        runs = s.query(LoopRun).all()
        assert len(runs) == 1 and runs[0].status == "done" and runs[0].trigger == "monitor"
        request = s.get(RetrainRequest, runs[0].request_id)
        assert request is not None and request.status == "done"
        assert runs[0].report_id == request.monitor_report_id
        assert s.query(GateDecision).count() == 1
        # The retrain defaults: the champion's weights fine-tuned first, harvested rows weighted.
        automl = runs[0].stages["automl"]
        assert automl["fine_tune"] is True
        spec = load_spec(workspace, automl["study"])
        assert spec.initial_configs[0]["init"] == "model"  # the first trial fine-tunes
        assert automl["recent_share"] == 0.5 and automl["recent_rows"] > 0
        # After the swap the server logs the new model under the slot's name; its monitor run
        # found those records.
        new_id = s.query(Model.id).filter(Model.name == figures["new_model"]).scalar()
        last = s.query(MonitorReport).order_by(MonitorReport.id.desc()).first()
        assert last is not None and last.model_id == new_id
        assert last.metrics["predictions"] == cfg.after
    # Nothing twice: one study (resumed, not redone), one promotion after the first.
    assert [h.kind for h in history(reg, model)] == ["initial", "promoted"]
    assert runs[0].stages["automl"]["resumed"] is True
    studies = list(workspace.path("runs").glob("*/study.json"))
    assert len(studies) == 1
