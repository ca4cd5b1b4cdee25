"""Classifier checkpoints, registry rows and the export to ONNX + torch.export + model card."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import pomlia_hpc.serve.export as export_mod
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.files import host_field
from pomlia_hpc.models.archs import ARCHITECTURES
from pomlia_hpc.models.card import model_card
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.models.checkpoint import load_classifier, save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.demo import cached_demo_bundle, save_demo_checkpoint
from pomlia_hpc.serve.export import ExportError, export_checkpoint, export_model
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.runtime import load_program, load_runtime
from pomlia_hpc.vocab import normalize_task_type
from pomlia_hpc.workspace import Workspace


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_maps_images_to_logits(arch: str) -> None:
    for size in (28, 64) if arch == "resnet18" else (28,):
        model = build_classifier(arch, 5, in_channels=1, image_size=size).eval()
        with torch.inference_mode():
            out = model(torch.rand(2, 1, size, size))
        assert out.shape == (2, 5)


def test_resnet18_small_input_stem_keeps_resolution() -> None:
    small = build_classifier("resnet18", 3, image_size=28)
    big = build_classifier("resnet18", 3, image_size=64)
    imagenet = build_classifier("resnet18_imagenet", 3, image_size=28)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert big.conv1.stride == (1, 1) and isinstance(big.maxpool, torch.nn.MaxPool2d)
    assert imagenet.conv1.stride == (2, 2)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="small_cnn"):
        build_classifier("resnet999", 3)


def test_task_types_accept_medmnist_spellings() -> None:
    assert normalize_task_type("multi-label, binary-class") == "multi-label"
    assert normalize_task_type("ordinal-regression") == "ordinal"
    with pytest.raises(InputError, match="segmentation"):
        normalize_task_type("segmentation")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4, 1, image_size=28).eval()
    meta = save_classifier(
        tmp_path / "m.pt",
        model,
        arch="small_cnn",
        num_classes=4,
        in_channels=1,
        image_size=28,
        task_type="binary-class",
        label_names=list("abcd"),
        metrics={"auc": 0.9},
        lineage={"run_id": 7},
    )
    assert meta.task_type == "binary"
    loaded = load_classifier(tmp_path / "m.pt")
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.meta.label_names == ("a", "b", "c", "d")
    assert loaded.meta.metrics == {"auc": 0.9}
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    # The card says how the server scales pixels, and nothing it does not apply.
    pre = model_card(loaded.meta, name="m")["preprocessing"]
    assert "scale" not in pre and pre["input_scaling"]["uint8"] == "x / 255"
    assert "x / 65535" in pre["input_scaling"]["uint16"]
    assert "[0, 1]" in pre["input_scaling"]["float"]


def test_save_rejects_weights_that_do_not_fit_the_arch(tmp_path: Path) -> None:
    model = build_classifier("small_cnn", 4, 3)
    with pytest.raises(InputError, match="do not fit arch 'small_cnn'"):
        save_classifier(
            tmp_path / "m.pt",
            model,
            arch="small_cnn",
            num_classes=5,
            in_channels=3,
            image_size=28,
            task_type="multi-class",
            label_names=list("abcde"),
        )
    assert not (tmp_path / "m.pt").exists()


def test_save_rejects_wrong_number_of_label_names(tmp_path: Path) -> None:
    model = build_classifier("small_cnn", 4, 3)
    with pytest.raises(InputError, match="'label_names' has 2 names, expected num_classes=4"):
        save_classifier(
            tmp_path / "m.pt",
            model,
            arch="small_cnn",
            num_classes=4,
            in_channels=3,
            image_size=28,
            task_type="multi-class",
            label_names=["a", "b"],
        )


def test_load_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(InputError, match="'format'"):
        load_classifier(bad)
    with pytest.raises(NotFoundError):
        load_classifier(tmp_path / "missing.pt")


def test_register_model_creates_a_row_and_refuses_a_taken_name(
    tmp_path: Path, workspace: Workspace
) -> None:
    reg = Registry.open(workspace.db_url)
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", num_classes=3)
    row = register_model(reg, "m1", ckpt, lineage={"dataset": "pathmnist"})
    with reg.session() as s:
        stored = s.get(Model, row.id)
        assert stored is not None
        assert stored.card["label_names"] == ["class_0", "class_1", "class_2"]
        assert stored.lineage["dataset"] == "pathmnist"
        assert stored.path == str(ckpt.resolve())
    with pytest.raises(PomliaError, match="already registered"):
        register_model(reg, "m1", ckpt)
    # The name becomes part of paths (models/<name>/, logs/predictions/<name>/).
    for bad in ("../escape", "a/b", ".hidden", "with space", "tail\n", "x" * 129, ""):
        with pytest.raises(InputError, match=r"model name .* is not valid: expected letters"):
            register_model(reg, bad, ckpt)
    assert register_model(reg, "study-7.v2_best", ckpt).name == "study-7.v2_best"


def test_model_register_copies_the_checkpoint_and_refuses_unknown_ids(
    tmp_path: Path, workspace: Workspace
) -> None:
    """`model register` kept only the path it was given: deleting that file lost the model.
    An unknown --task-id failed with the database's FOREIGN KEY message (exit 1)."""
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", num_classes=3)
    runner = CliRunner()
    bad = runner.invoke(app, ["model", "register", "m", str(ckpt), "--task-id", "9999"])
    assert isinstance(bad.exception, NotFoundError), bad.output
    assert "task id 9999 is not in the registry" in str(bad.exception)
    assert not workspace.path("models", "m.pt").exists()
    res = runner.invoke(app, ["model", "register", "m", str(ckpt)])
    assert res.exit_code == 0, res.output
    ckpt.unlink()  # the file it came from is gone: the model is not
    with Registry.open(workspace.db_url).session() as s:
        (row,) = s.query(Model).filter(Model.name == "m").all()
        assert Path(row.path) == workspace.path("models", "m.pt") and Path(row.path).is_file()
    not_a_model = tmp_path / "x.pt"
    not_a_model.write_text("hello")
    res = runner.invoke(app, ["model", "register", "x", str(not_a_model)])
    assert isinstance(res.exception, InputError) and not workspace.path("models", "x.pt").exists()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, bundle dir) of a small_cnn multi-label model (1 channel, 28 px), exported
    once for this module."""
    # Shared with test_serve_predlog.py through the session's cache (one export).
    root = cached_demo_bundle(
        tmp_path_factory.getbasetemp() / "serve-ml",
        task_type="multi-label",
        num_classes=5,
        channels=1,
    )
    return root.parents[1] / "demo.pt", root


@pytest.fixture
def small_bundle(small_export: tuple[Path, Path]) -> Path:
    return small_export[1]


def _assert_parity(ckpt: Path, root: Path, channels: int, size: int) -> None:
    """ONNX (onnxruntime) and torch.export outputs equal eager PyTorch within 1e-4 on fresh
    random inputs, at a batch size the export's own check did not try."""
    model = load_classifier(ckpt).model
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(11, channels, size, size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    program = load_program(str(root / "model.pt2"))
    with torch.inference_mode():
        assert np.abs(program(x).numpy() - ref).max() <= 1e-4


def test_small_cnn_export_matches_pytorch(small_export: tuple[Path, Path]) -> None:
    ckpt, root = small_export
    bundle = ExportedBundle.open(root)
    assert set(bundle.card["files"]) == {"model.onnx", "model.pt2"}
    assert bundle.task_type == "multi-label"
    assert (bundle.channels, bundle.image_size) == (1, 28)
    assert bundle.card["export"]["max_prob_diff"]["onnx"] <= 1e-4
    assert bundle.card["fingerprint"] == {
        **bundle.card["fingerprint"],
        "kind": "stats-thumb-v1",
        "dim": 66,
    }
    _assert_parity(ckpt, root, 1, 28)
    # Same weights again: same version, nothing rewritten.
    again = export_checkpoint(ckpt, root.parent, name="demo")
    assert again.reused and again.bundle.root == root


def test_resnet18_export_matches_pytorch(tmp_path: Path) -> None:
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", arch="resnet18", channels=3, image_size=28)
    res = export_checkpoint(ckpt, tmp_path / "bundles", name="r18")
    assert res.max_abs_diff["onnx"] <= 1e-4 and res.max_abs_diff["torch_export"] <= 1e-4
    _assert_parity(ckpt, res.bundle.root, 3, 28)


def test_a_concurrent_export_of_the_same_version_reuses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = save_demo_checkpoint(tmp_path / "c.pt")
    winner = export_checkpoint(ckpt, tmp_path / "first", name="m").bundle.root
    racing_root = tmp_path / "bundles"
    real_check = export_mod.check_parity

    def other_export_finishes_meanwhile(*args: Any, **kwargs: Any) -> dict[str, float]:
        out = real_check(*args, **kwargs)
        shutil.copytree(winner, racing_root / winner.name)
        return out

    monkeypatch.setattr(export_mod, "check_parity", other_export_finishes_meanwhile)
    res = export_checkpoint(ckpt, racing_root, name="m")
    assert res.reused and res.bundle.root == racing_root / winner.name
    assert [p.name for p in racing_root.iterdir()] == [winner.name]  # our temp copy is gone


def test_export_refuses_when_outputs_disagree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    import pomlia_hpc.serve.export as export_mod

    real = export_mod.export_onnx

    def perturbed(program: torch.export.ExportedProgram, path: Path) -> None:
        other = copy.deepcopy(program)  # an ONNX graph of slightly different weights
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real(other, path)

    monkeypatch.setattr(export_mod, "export_onnx", perturbed)
    ckpt = save_demo_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ExportError, match=r"the onnx export('s probabilities differ| predicts)"):
        export_checkpoint(ckpt, tmp_path / "bundles", name="m")
    assert not any((tmp_path / "bundles").iterdir())  # nothing half-written visible


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_the_onnx_graph_is_the_file_torch_onnx_export_writes(arch: str, tmp_path: Path) -> None:
    """``export_onnx`` translates through the exporter's core with a translation table built
    once per process (``torch.onnx.export`` builds it for every graph): its file must stay the
    one the public exporter writes, byte for byte, also when the table is reused."""
    import warnings

    net = build_classifier(arch, 3, 3, image_size=28).eval()
    program = export_mod.save_program(net, torch.zeros(2, 3, 28, 28), tmp_path / "m.pt2")
    for name in ("ours.onnx", "again.onnx"):
        export_mod.export_onnx(program, tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            program,
            (),
            str(tmp_path / "torch.onnx"),
            input_names=["images"],
            output_names=["logits"],
            dynamo=True,
            verbose=False,
            external_data=False,
        )
    public = (tmp_path / "torch.onnx").read_bytes()
    assert (tmp_path / "ours.onnx").read_bytes() == public
    assert (tmp_path / "again.onnx").read_bytes() == public


def test_a_model_whose_own_outputs_are_not_finite_is_named_as_the_cause(tmp_path: Path) -> None:
    """A diverged model (NaN outputs) was refused as an export that "differs from PyTorch's by
    up to nan": the user looked for an export bug. The message now blames the model."""
    from pomlia_hpc.models.checkpoint import save_classifier
    from pomlia_hpc.models.nets import build_classifier

    net = build_classifier("small_cnn", 2, 1, image_size=28)
    with torch.no_grad():
        net.head.bias[1] = float("nan")
    ckpt = tmp_path / "diverged.pt"
    save_classifier(
        ckpt,
        net,
        arch="small_cnn",
        num_classes=2,
        in_channels=1,
        image_size=28,
        task_type="binary",
        label_names=["a", "b"],
    )
    with pytest.raises(
        ExportError, match=r"the model itself \(PyTorch, before export\) produced non-finite"
    ):
        export_checkpoint(ckpt, tmp_path / "bundles", name="m")
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())


def test_export_ships_an_encoder_for_fingerprints(tmp_path: Path) -> None:
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", channels=3)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(2))
    export_mod.save_program(enc.eval(), torch.rand(2, 3, 28, 28), tmp_path / "enc.pt2")
    res = export_checkpoint(ckpt, tmp_path / "bundles", name="m", encoder=tmp_path / "enc.pt2")
    assert res.bundle.card["fingerprint"]["kind"] == "encoder"
    assert res.bundle.card["fingerprint"]["dim"] == 16
    assert res.bundle.encoder_file == res.bundle.root / "encoder.pt2"
    # A TorchScript file is refused by name, before anything is loaded or written.
    (tmp_path / "enc.ts").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"enc\.ts: expected an ONNX graph .* TorchScript is no"):
        export_checkpoint(ckpt, tmp_path / "more", name="m", encoder=tmp_path / "enc.ts")
    assert not (tmp_path / "more").exists()
    # An encoder whose batch axis is fixed would fail on the server's batches: refused too.
    fixed = torch.export.export(enc, (torch.rand(2, 3, 28, 28),))
    torch.export.save(fixed, str(tmp_path / "fixed.pt2"))
    with pytest.raises(InputError, match=r"fixed\.pt2: cannot run it on a \(1, 3, 28, 28\)"):
        export_checkpoint(ckpt, tmp_path / "more", name="m", encoder=tmp_path / "fixed.pt2")


def _legacy_bundle(bundle: Path, root: Path, files: dict[str, str]) -> Path:
    """A copy of ``bundle`` as an older version wrote it: TorchScript ``files`` instead of the
    torch.export program (the file contents do not matter: they must never be loaded)."""
    shutil.copytree(bundle, root)
    (root / "model.pt2").unlink()
    card = json.loads((root / "card.json").read_text())
    del card["files"]["model.pt2"]
    card["preprocessing"]["scale"] = 1 / 255  # older cards recorded it (never applied)
    for name, content in files.items():
        (root / name).write_text(content)
        card["files"][name] = "0" * 64
    (root / "card.json").write_text(json.dumps(card))
    return root


def test_old_torchscript_bundles_serve_onnx_or_say_to_re_export(
    tmp_path: Path, small_bundle: Path
) -> None:
    old = ExportedBundle.open(_legacy_bundle(small_bundle, tmp_path / "old", {"model.ts": "x"}))
    assert load_runtime(old, "onnx").backend == "onnx"  # the CPU model still serves
    with pytest.raises(InputError, match=r"model\.ts, is TorchScript.*pomlia model export"):
        load_runtime(old, "torch")

    only_ts = _legacy_bundle(small_bundle, tmp_path / "only", {"model.ts": "x"})
    card = json.loads((only_ts / "card.json").read_text())
    del card["files"]["model.onnx"]
    (only_ts / "card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"its only model, model\.ts, is TorchScript"):
        ExportedBundle.open(only_ts)

    enc_ts = _legacy_bundle(small_bundle, tmp_path / "enc", {"model.ts": "x", "encoder.ts": "x"})
    with pytest.raises(InputError, match=r"encoder, encoder\.ts, is TorchScript.*re-export"):
        ExportedBundle.open(enc_ts)


def test_export_and_serving_load_raise_no_future_warning(tmp_path: Path) -> None:
    # In a fresh interpreter with FutureWarning as an error (torch.jit's deprecation is one):
    # export, then load both runtimes and run a batch through each.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from pomlia_hpc.serve.demo import save_demo_checkpoint\n"
        "from pomlia_hpc.serve.export import export_checkpoint\n"
        "from pomlia_hpc.serve.runtime import load_runtime\n"
        "out = Path(sys.argv[1])\n"
        "ckpt = save_demo_checkpoint(out / 'c.pt', num_classes=3)\n"
        "bundle = export_checkpoint(ckpt, out / 'bundles', name='m').bundle\n"
        "x = np.zeros((2, 3, 28, 28), dtype=np.float32)\n"
        "for backend in ('torch', 'onnx'):\n"
        "    assert load_runtime(bundle, backend).logits(x).shape == (2, 3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FutureWarning" not in proc.stderr


def test_bundle_card_errors_name_the_field(tmp_path: Path, small_bundle: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(small_bundle, root)
    card = json.loads((root / "card.json").read_text())
    card["input"]["channels"] = "three"
    (root / "card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"bad value for 'input\.channels'"):
        ExportedBundle.open(root)
    card["input"]["channels"] = 1
    nan = {**card, "preprocessing": {**card["preprocessing"], "std": [float("nan")]}}
    (root / "card.json").write_text(json.dumps(nan))  # a hand-edited card: every answer NaN
    with pytest.raises(InputError, match=r"'preprocessing' needs finite means and positive"):
        ExportedBundle.open(root)
    (root / "card.json").write_text(json.dumps({**card, "lables": ["a"]}))
    with pytest.raises(InputError) as exc:
        ExportedBundle.open(root)
    assert f"{root / 'card.json'}: unknown key 'lables'" in str(exc.value)
    assert "\n" not in str(exc.value)
    card["files"]["../../etc/passwd"] = "x"
    (root / "card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="bare file name"):
        ExportedBundle.open(root)


@pytest.mark.usefixtures("wide_console")
def test_export_command_registers_the_bundle(tmp_path: Path, workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", num_classes=3, task_type="ordinal")
    register_model(reg, "grade", ckpt)
    runner = CliRunner()
    result = runner.invoke(app, ["model", "export", "grade"])
    assert result.exit_code == 0, result.output
    with reg.session() as s:
        row = s.query(Model).filter_by(name="grade").one()
        bundle_dir = Path(row.card["export"]["bundle"])
        assert row.card["model_version"] == bundle_dir.name
    assert bundle_dir.parent == workspace.path("models", "grade", "bundles")
    card = json.loads((bundle_dir / "card.json").read_text())
    for key in ("task", "label_names", "input", "preprocessing", "metrics", "lineage"):
        assert key in card
    listed = runner.invoke(app, ["model", "list"])
    assert "grade" in listed.output and bundle_dir.name in listed.output
    (line,) = [ln for ln in listed.output.splitlines() if " grade " in ln]
    assert line.split("│")[3].strip() == "-"  # no task (its task type was shown there)
    missing = runner.invoke(app, ["model", "export", "nope"])
    assert missing.exit_code != 0
    assert isinstance(missing.exception, NotFoundError)


def test_export_model_unknown_name(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    with pytest.raises(NotFoundError, match="known: none"):
        export_model(reg, workspace, "ghost")


def _registered_encoder(reg: Registry, folder: Path, name: str, seed: int) -> tuple[Any, int]:
    """An untrained autoencoder (latent 8, 28 px; weights from ``seed``) saved as
    ``folder/encoder.pt`` and registered as encoder ``name``: (the autoencoder in eval mode,
    its registry id)."""
    from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
    from pomlia_hpc.registry import Encoder

    cfg = EncoderConfig(latent_dim=8, image_size=28)
    torch.manual_seed(seed)
    autoencoder = Autoencoder(cfg).eval()
    torch.save(
        {"config": cfg.model_dump(), "state_dict": autoencoder.state_dict()},
        folder / "encoder.pt",
    )
    with reg.session() as s:
        row = Encoder(name=name, checkpoint_path=str(folder / "encoder.pt"))
        s.add(row)
        s.flush()
        return autoencoder, row.id


def test_export_ships_the_task_encoder_from_the_registry(
    tmp_path: Path, workspace: Workspace
) -> None:
    from pomlia_hpc.serve.fingerprint import encoder_fingerprint

    reg = Registry.open(workspace.db_url)
    autoencoder, enc_id = _registered_encoder(reg, tmp_path, "ae", seed=1)
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", channels=1, num_classes=3)
    register_model(reg, "grey", ckpt, lineage={"encoder_id": enc_id})
    # The scratch folder of an export killed earlier (its process gone) is swept.
    dead = workspace.tmp / f".export-grey.{host_field()}.{2**22 + 1}.tmp"
    (dead / "encoder.pt2").parent.mkdir(parents=True)
    res = export_model(reg, workspace, "grey")
    assert not dead.exists() and list(workspace.tmp.iterdir()) == []
    fp = res.bundle.card["fingerprint"]
    assert (fp["kind"], fp["encoder_name"], fp["dim"]) == ("encoder", "ae", 8)
    assert res.bundle.encoder_file == res.bundle.root / "encoder.pt2"
    # The shipped encoder gives the autoencoder's latent of the grey image repeated to RGB.
    x = torch.rand(3, 1, 28, 28)
    got = encoder_fingerprint(res.bundle.encoder_file)(x.numpy())
    with torch.inference_mode():
        ref = autoencoder.encode(x.expand(-1, 3, -1, -1)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert export_model(reg, workspace, "grey").reused  # same weights, same encoder: one export


def test_export_resizes_for_an_encoder_of_another_size_as_extraction_does(
    tmp_path: Path, workspace: Workspace
) -> None:
    """A model on 16 px images with an encoder trained at 28 px was refused at export: the
    adapter's antialiased resize is `aten._upsample_bilinear2d_aa`, which the .pt2 check
    refused. The served encoder must compute what fingerprint extraction computes."""
    from pomlia_hpc.fingerprint.autoencoder import to_input
    from pomlia_hpc.serve.fingerprint import encoder_fingerprint

    reg = Registry.open(workspace.db_url)
    autoencoder, enc_id = _registered_encoder(reg, tmp_path, "ae28", seed=2)
    ckpt = save_demo_checkpoint(tmp_path / "c.pt", image_size=16, channels=1, num_classes=3)
    register_model(reg, "small", ckpt, lineage={"encoder_id": enc_id})
    res = export_model(reg, workspace, "small")
    assert res.bundle.encoder_file == res.bundle.root / "encoder.pt2"
    # One 16 px grey image as the store holds it (uint8 NHWC), and as the server feeds it.
    u8 = np.random.default_rng(0).integers(0, 256, size=(1, 16, 16, 1), dtype=np.uint8)
    served = encoder_fingerprint(res.bundle.encoder_file)(
        u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    )
    with torch.inference_mode():
        extracted = autoencoder.encode(to_input(u8, 28)).numpy()
    np.testing.assert_allclose(served, extracted, atol=1e-5)


def test_negative_or_non_finite_tolerances_are_refused_up_front(
    workspace: Workspace, tmp_path: Path
) -> None:
    """`model export --rtol -1 --atol -1` and `--rtol nan` were taken: a negative tolerance
    fails every export after the work, NaN passes every difference. Both are refused before
    the model is looked up or anything is written."""
    for args, flag, shown in (
        (["--rtol", "-1"], "--rtol", "-1.0"),
        (["--atol", "-1"], "--atol", "-1.0"),
        (["--rtol", "nan"], "--rtol", "nan"),
        (["--atol", "inf"], "--atol", "inf"),
    ):
        res = CliRunner().invoke(app, ["model", "export", "nosuch", *args])
        assert isinstance(res.exception, InputError), res.output
        assert str(res.exception) == f"{flag} {shown}: expected a finite number >= 0"
    with pytest.raises(InputError, match="--rtol nan: expected a finite number >= 0"):
        export_checkpoint(tmp_path / "none.pt", tmp_path / "out", name="x", rtol=float("nan"))
    assert not (tmp_path / "out").exists()
    assert not workspace.path("models").exists() or not any(workspace.path("models").iterdir())


def test_a_reused_export_reports_the_differences_it_recorded(
    small_export: tuple[Path, Path],
) -> None:
    """A re-run of `model export` printed "(max |probability diff| vs PyTorch: unchanged)":
    the bundle it reuses says the numbers its export measured."""
    ckpt, root = small_export
    again = export_checkpoint(ckpt, root.parent, name="demo")
    recorded = ExportedBundle.open(root).card["export"]["max_prob_diff"]
    assert again.reused and set(again.max_abs_diff) == {"onnx", "torch_export"}
    assert again.max_abs_diff == recorded
