"""A bundle made by someone else must not run its code in the server: a ``torch.export``
archive holding a pickled weight (or anything else torch would unpickle or execute) is refused
before torch reads it, at start-up and on a hot swap, with one line and no marker written."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from pomlia_hpc.errors import InputError
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.exported import CARD, ExportedBundle, sha256_file
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.programs import check_program
from pomlia_hpc.serve.runtime import load_program
from pomlia_hpc.serve.slots import point
from tests.fixtures.cli import pomlia_process

TOKEN = "programs-token-0123456789abcdef"
Members = dict[str, bytes]


class Marker:
    """Unpickling this object creates the file ``path`` (what an attacker's payload would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4, seed=1)


def _edit_program(path: Path, edit: Callable[[Members, str], None]) -> None:
    """Rewrite the archive at ``path`` after ``edit(members, top_folder)``."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    top = next(iter(members)).split("/", 1)[0]
    edit(members, top)
    path.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _pickled_weight(marker: Path) -> Callable[[Members, str], None]:
    """The tester's attack: the first weight marked ``use_pickle`` and replaced by a pickle."""

    def edit(members: Members, top: str) -> None:
        config_name = f"{top}/data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[config_name] = json.dumps(config).encode()
        buf = io.BytesIO()
        torch.save(Marker(marker), buf)
        members[f"{top}/data/weights/{entry['path_name']}"] = buf.getvalue()

    return edit


def _tampered(bundle: Path, dest: Path, marker: Path, file: str = "model.pt2") -> Path:
    """A copy of ``bundle`` whose ``file`` carries the pickled weight, with its card's SHA-256
    rewritten to match (as an attacker would)."""
    shutil.copytree(bundle, dest)
    if file != "model.pt2":
        shutil.copy(dest / "model.pt2", dest / file)
    _edit_program(dest / file, _pickled_weight(marker))
    card = json.loads((dest / CARD).read_text())
    card["files"][file] = sha256_file(dest / file)
    (dest / CARD).write_text(json.dumps(card))
    return dest


@pytest.mark.parametrize(("file", "backend"), [("model.pt2", "torch"), ("encoder.pt2", "onnx")])
def test_serve_refuses_a_pickled_weight_without_running_it(
    bundle: Path, tmp_path: Path, file: str, backend: str
) -> None:
    marker = tmp_path / "pwned"
    evil = _tampered(bundle, tmp_path / "evil", marker, file)
    argv = ["serve", str(evil), "--backend", backend, "--port", "0"]
    res = pomlia_process(*argv, "--log-dir", str(tmp_path / "logs"))
    err = res.stderr.strip()
    assert not marker.exists()
    assert res.returncode == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert f"{evil / file}: refused" in err and "use_pickle" in err
    assert "entry 'features.0.weight'" in err


def test_a_hot_swap_to_a_pickled_program_is_refused_and_the_old_model_serves(
    bundle: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    evil = _tampered(bundle, tmp_path / "evil", marker)
    link = tmp_path / "serving" / "slot" / "current"
    point(link, bundle)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("watch_interval_s: 0\n")  # only the endpoint swaps
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = {"POMLIA_SERVE_TOKEN": TOKEN}
    args = ["--backend", "torch", "--config", str(cfg)]
    with (
        LocalServer(link, tmp_path / "logs", env=env, args=args) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        point(link, evil)
        refused = c.post("/v1/admin/reload", headers=auth)
        assert refused.status_code == 409 and "use_pickle" in refused.json()["error"]
        version = c.get("/ready").json()["model_version"]
    assert not marker.exists()
    assert version == ExportedBundle.open(bundle).version


def _set(member: str, value: bytes) -> Callable[[Members, str], None]:
    def edit(members: Members, top: str) -> None:
        members[f"{top}/{member}"] = value

    return edit


def _program_json(change: Callable[[dict[str, object]], None]) -> Callable[[Members, str], None]:
    def edit(members: Members, top: str) -> None:
        name = f"{top}/models/model.json"
        program = json.loads(members[name])
        change(program)
        members[name] = json.dumps(program).encode()

    return edit


def _pickled_constant(members: Members, top: str) -> None:
    name = f"{top}/data/constants/model_constants_config.json"
    members[f"{top}/data/constants/tensor_0"] = b"\x80\x04N."
    config = {"config": {"c": {"path_name": "tensor_0", "use_pickle": True}}}
    members[name] = json.dumps(config).encode()


def _evil_expr(program: dict[str, object]) -> None:
    text = json.dumps(program).replace("Symbol(", "__import__('os').getcwd() or Symbol(")
    program.update(json.loads(text))


def _retarget(target: str) -> Callable[[dict[str, object]], None]:
    def edit(program: dict[str, object]) -> None:
        text = json.dumps(program).replace("torch.ops.aten.relu_.default", target)
        program.update(json.loads(text))

    return edit


_evil_target = _retarget("torch.os.system")


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        # the archive's top folder is torch's name for a program saved to a buffer (export
        # writes it through our atomic layer, not torch's file writer)
        (_pickled_constant, "entry 'c' in 'archive/data/constants/model_constants_config.json'"),
        (_set("data/constants/opaque_obj_0", b"\x80\x04N."), "unexpected member"),
        (_set("data/aotinductor/model/model.so", b"\x7fELF"), "unexpected member"),
        (_set("data/weights/model.pt", b"PK"), "unexpected member"),
        (_program_json(lambda p: p.update(guards_code=["import os"])), "guards_code"),
        (_program_json(_evil_expr), "shape expression"),
        (_program_json(_evil_target), "calls 'torch.os.system'"),
        # Extension operators and private aten ops other than the exporter's own are refused.
        (_program_json(_retarget("torch.ops.mylib.relu_.default")), "calls 'torch.ops.mylib"),
        (_program_json(_retarget("torch.ops.aten._foo.default")), "calls 'torch.ops.aten._foo"),
    ],
)
def test_archives_that_could_run_code_are_refused(
    bundle: Path, tmp_path: Path, edit: Callable[[Members, str], None], said: str
) -> None:
    path = tmp_path / "model.pt2"
    shutil.copy(bundle / "model.pt2", path)
    _edit_program(path, edit)
    with pytest.raises(InputError, match="refused to load") as exc:
        load_program(str(path))
    assert said in str(exc.value) and str(path) in str(exc.value)


def test_an_exported_program_passes_the_check_and_runs(bundle: Path) -> None:
    check_program(bundle / "model.pt2")
    out = load_program(str(bundle / "model.pt2"))(torch.rand(2, 3, 28, 28))
    assert tuple(out.shape) == (2, 4) and bool(np.isfinite(out.detach().numpy()).all())


def test_overlapping_loads_keep_the_weights_only_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two program loads at once (a hot swap beside a reload): the second must still read
    under ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` after the first has finished and lifted it."""
    import os
    import threading

    import pomlia_hpc.serve.runtime as runtime

    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(runtime, "check_program", lambda path: None)
    first_inside, second_started = threading.Event(), threading.Event()
    seen: dict[str, str | None] = {}

    class Program:
        def module(self) -> object:
            return object()

    def fake_load(path: str) -> Program:
        if path.endswith("first.pt2"):
            first_inside.set()
            second_started.wait(1.0)  # loads serialised: the second cannot start, go on
        else:
            second_started.set()
            one.join(5.0)  # the first load has returned and left its guard
            seen["second"] = os.environ.get(key)
        return Program()

    monkeypatch.setattr(torch.export, "load", fake_load)
    one = threading.Thread(target=load_program, args=(str(tmp_path / "first.pt2"),))
    two = threading.Thread(target=load_program, args=(str(tmp_path / "second.pt2"),))
    one.start()
    assert first_inside.wait(5.0)
    two.start()
    two.join(10.0)
    assert seen["second"] == "1"
    assert os.environ.get(key) is None
