"""Export a classifier checkpoint to a servable bundle: ONNX + a torch.export program + card.

Both graphs come from one ``torch.export`` trace with a dynamic batch axis: ``model.onnx``
(``torch.onnx.export(dynamo=True)``) for onnxruntime on CPU, and ``model.pt2``
(``torch.export.save``) for PyTorch on a GPU. TorchScript, the former GPU format, is deprecated
in torch 2.x and no longer written. AOTInductor packages are not built: they are compiled for
one device (so belong on the GPU node), and compiling even the small CNN took minutes on CPU
here. Every export is checked before it becomes visible (:mod:`pomlia_hpc.serve.parity`):
onnxruntime's and the program's probabilities on inputs in the model's real range (batch 1 and
7) must equal eager PyTorch's within a relative tolerance ``rtol`` (default 1e-3, plus ``atol``
1e-5 for probabilities near 0), with the same predicted class. The bundle is
written under a temporary name in the same directory and renamed into place; its directory name
is the model version (a hash of the checkpoint), so re-exporting the same weights is a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.files import (
    make_dirs,
    probe_writable,
    staged_dir,
    sweep_stale_temps,
    temp_name,
    write_atomic,
)
from pomlia_hpc.models.card import model_card
from pomlia_hpc.models.catalog import resolve_model, update_card
from pomlia_hpc.models.checkpoint import LoadedClassifier, load_classifier
from pomlia_hpc.registry import FingerprintSet, Model, Registry, Task
from pomlia_hpc.serve.exported import (
    CARD,
    CARD_SUM,
    ENCODER_FILES,
    ONNX,
    TORCH_PROGRAM,
    ExportedBundle,
    bundle_damage,
    card_sum_text,
    data_scaling,
    sha256_file,
)
from pomlia_hpc.serve.fingerprint import STATS_KIND, stats_dim
from pomlia_hpc.serve.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_exports
from pomlia_hpc.serve.reference import REFERENCE_FILE, model_dataset_meta, reference_for_model
from pomlia_hpc.serve.runtime import load_program
from pomlia_hpc.workspace import Workspace


class ExportError(PomliaError):
    """An export failed its checks (e.g. ONNX and PyTorch disagree)."""


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle is and how closely the exported graphs match eager PyTorch."""

    bundle: ExportedBundle
    #: Per exported graph, the largest |probability - PyTorch's| on the parity inputs (of a
    #: reused bundle: as its card records them).
    max_abs_diff: dict[str, float]
    reused: bool
    #: The monitoring reference (``monitor-reference.npz``), when the model's validation data
    #: is known (see :mod:`pomlia_hpc.serve.reference`).
    reference: Path | None = None
    #: Why an existing bundle of this version was rebuilt (damaged files, an old card), or None.
    rebuilt: str | None = None


def _reuse_problem(
    final: Path, intensity_scaling: Mapping[str, Any] | None, card_sha256: str | None = None
) -> str | None:
    """Why the existing bundle ``final`` of this version cannot be reused: damaged files, a
    card edited since (``card_sha256``: its SHA-256 the registry recorded), a card without its
    checksum, or one that lacks the training data's intensity scaling; None when it can.
    A folder without its card (an export's clean-up, or a copy, cut short) is rebuilt too:
    it was refused as "exists without card.json; remove it", a re-run that could not finish."""
    if not (final / CARD).is_file():
        return f"it has no {CARD} (a removal or copy of it was cut short)"
    damage = bundle_damage(final, card_sha256)
    if damage is not None:
        return damage
    if not (final / CARD_SUM).is_file():
        return f"its {CARD} has no checksum ({CARD_SUM}; exported by an older version)"
    if intensity_scaling:
        card = json.loads((final / CARD).read_text())
        if card.get("input", {}).get("intensity_scaling") != dict(intensity_scaling):
            return f"its {CARD} does not record the training data's intensity scaling"
    return None


def _batch_dim() -> Any:
    """The dynamic batch axis of every exported graph (1 to 65,536 images)."""
    return torch.export.Dim("batch", min=1, max=65536)


def save_program(
    model: torch.nn.Module, example: torch.Tensor, path: Path
) -> torch.export.ExportedProgram:
    """``model`` (in eval mode) as a ``torch.export`` program with a dynamic batch axis, written
    to ``path``; returns the program."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    # Into memory, then written by Python: torch's own file writer, given a path, aborts the
    # whole process (a C++ exception in a destructor) when a write fails on a full disk.
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_atomic(path, buffer.getvalue(), fsync=False)  # the bundle folder is flushed whole
    return program


#: The ONNX operator set of the bundles' graphs (``torch.onnx.export``'s default).
ONNX_OPSET = 20


@functools.cache
def _torchlib_registry() -> Any:
    """torch's table of ONNX translations of ATen operators, built once per process: the
    public ``torch.onnx.export`` builds it again for every graph (~0.8 s of CPU, a third of a
    small model's export). Read-only while a graph is translated, so exports share it."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=ONNX_OPSET)


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """The ONNX graph of ``program`` (:func:`save_program`'s, whose dynamic batch axis it
    keeps) written to ``path``: the same file as ``torch.onnx.export(program, (), path,
    dynamo=True, external_data=False)`` writes, for less CPU. From the program, not the
    module, which the exporter would trace with ``torch.export`` a second time; through the
    exporter's core (torch is pinned), which takes the translation table built once
    (:func:`_torchlib_registry`); tests/test_export.py checks the bytes are the same."""
    from torch.onnx._internal.exporter import _core

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; failures still raise
        graph = _core.export(
            program,
            (),
            None,
            registry=_torchlib_registry(),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            optimize=True,
            verbose=False,
        )
        graph.save(
            str(path),
            include_initializers=True,
            keep_initializers_as_inputs=False,
            external_data=False,
        )


def _onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def check_parity(
    loaded: LoadedClassifier,
    onnx_path: Path,
    program_path: Path,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> dict[str, ParityReport]:
    """Check both exported graphs against eager PyTorch (see :mod:`pomlia_hpc.serve.parity`);
    raise :class:`ExportError` naming the first that fails; return the report per graph."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    program = load_program(str(program_path))

    def run_program(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(program(torch.from_numpy(x)).numpy())

    runners = {
        "onnx": lambda x: np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0]),
        "torch_export": run_program,
    }
    try:
        reports = check_exports(loaded, runners, rtol=rtol, atol=atol, seed=seed)
    except ValueError as exc:  # a wrong output shape
        raise ExportError(f"{loaded.path}: {exc}; the bundle was not written") from exc
    for key, rep in reports.items():
        if rep.class_mismatches:
            raise ExportError(
                f"{loaded.path}: the {key} export predicts another class than PyTorch for "
                f"{rep.class_mismatches} test image(s); the bundle was not written"
            )
        if not rep.ok():
            raise ExportError(
                f"{loaded.path}: the {key} export's probabilities differ from PyTorch's by up "
                f"to {rep.max_abs_diff:.3g} ({rep.max_excess:.3g}x the allowed rtol {rtol:g} "
                f"relative + atol {atol:g}); the bundle was not written"
            )
    return reports


def _encoder_file(encoder: Path) -> str:
    """The bundle's name for a fingerprint encoder file; InputError for other formats."""
    if not encoder.is_file():
        raise NotFoundError(f"encoder file {encoder} does not exist")
    if encoder.suffix not in (".onnx", ".pt2"):
        raise InputError(
            f"encoder file {encoder}: expected an ONNX graph (.onnx) or a torch.export program "
            "(.pt2, torch.export.save) mapping float32 NCHW images in [0, 1] to vectors; "
            "TorchScript is no longer accepted (torch.jit is deprecated)"
        )
    return next(name for name in ENCODER_FILES if name.endswith(encoder.suffix))


def _encoder_dim(path: Path, channels: int, size: int) -> int:
    """The encoder's vector length, checked on batches of 1 and 3 (its batch axis must be
    dynamic: the server sends batches of any size)."""
    dims = set()
    for n in (1, 3):
        x = np.random.default_rng(0).random((n, channels, size, size), dtype=np.float32)
        try:
            if path.suffix == ".onnx":
                out = _onnx_outputs(path, x)
            else:
                with torch.inference_mode():
                    out = load_program(str(path))(torch.from_numpy(x)).numpy()
        except Exception as exc:
            raise InputError(
                f"encoder {path}: cannot run it on a ({n}, {channels}, {size}, {size}) float32 "
                f"batch in [0, 1] ({' '.join(str(exc).split())[:300]}); expected a module "
                "mapping images to vectors with a dynamic batch axis"
            ) from exc
        dims.add(int(np.asarray(out).reshape(n, -1).shape[1]))
    if len(dims) != 1:
        raise InputError(f"encoder {path}: vector length depends on the batch size ({dims})")
    return dims.pop()


def check_tolerances(rtol: float, atol: float) -> None:
    """Refuse a parity tolerance (``--rtol``, ``--atol``: differences of probabilities, unitless)
    that is negative or not finite: a negative one fails every export after minutes of work,
    and NaN or infinity would pass every difference unchecked."""
    for flag, value in (("--rtol", rtol), ("--atol", atol)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{flag} {value}: expected a finite number >= 0")


def _reused(root: Path) -> ExportResult:
    """The bundle exported before at ``root``, with the parity differences its card records
    (what the export that wrote it measured)."""
    bundle = ExportedBundle.open(root)
    recorded = (bundle.card.get("export") or {}).get("max_prob_diff") or {}
    return ExportResult(bundle, {str(k): float(v) for k, v in recorded.items()}, reused=True)


def export_checkpoint(
    checkpoint: str | Path,
    out_root: str | Path,
    *,
    name: str,
    task: Mapping[str, Any] | None = None,
    encoder: str | Path | None = None,
    encoder_info: Mapping[str, Any] | None = None,
    intensity_scaling: Mapping[str, Any] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    recorded_card: tuple[str, str] | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_root/<version>/`` and return the bundle.

    ``encoder``: optional ONNX (``.onnx``) or ``torch.export`` (``.pt2``) fingerprint encoder
    that maps float32 NCHW images in [0, 1] to vectors; without it the server logs the explicit
    statistics fingerprint (see :mod:`pomlia_hpc.serve.fingerprint`). ``encoder_info`` (e.g. the
    registry encoder's id and name) goes into the card; its ``key`` (default: the file's hash)
    is part of the version, so the same weights with the same encoder are exported once;
    an existing bundle of that version whose files do not match their SHA-256 in its card (or
    whose card lacks ``intensity_scaling``, the training data set's ``meta`` record that the
    server applies to 16-bit uploads) is rebuilt, and :attr:`ExportResult.rebuilt` says why.
    ``recorded_card``: (bundle folder, SHA-256 of its card) as the registry recorded them at
    the model's last export: a bundle there whose card was edited since is rebuilt too.
    Raises :class:`ExportError` when an export's probabilities disagree with PyTorch's by more
    than ``rtol`` (relative) + ``atol``, or it predicts another class.
    """
    check_tolerances(rtol, atol)
    ckpt = Path(checkpoint)
    loaded = load_classifier(ckpt)
    meta = loaded.meta
    ckpt_sha = sha256_file(ckpt)
    info = dict(encoder_info or {})
    if encoder is not None:
        _encoder_file(Path(encoder))
        info.setdefault("key", sha256_file(Path(encoder)))
    version = (
        ckpt_sha[:12]
        if encoder is None
        else hashlib.sha256(f"{ckpt_sha}:{info['key']}".encode()).hexdigest()[:12]
    )
    out_root = Path(out_root)
    final = out_root / version
    rebuilt = None
    if final.is_dir() and any(final.iterdir()):
        rebuilt = _reuse_problem(final, intensity_scaling, _card_sha(final, recorded_card))
        if rebuilt is None:
            return _reused(final)
    with staged_dir(final, replace=rebuilt is not None) as staged:
        tmp = staged.path
        example = torch.zeros(2, meta.in_channels, meta.image_size, meta.image_size)
        program = save_program(loaded.model, example, tmp / TORCH_PROGRAM)
        export_onnx(program, tmp / ONNX)
        reports = check_parity(
            loaded, tmp / ONNX, tmp / TORCH_PROGRAM, rtol=rtol, atol=atol, seed=seed
        )
        diffs = {k: r.max_abs_diff for k, r in reports.items()}

        fingerprint: dict[str, Any] = {
            "kind": STATS_KIND,
            "dim": stats_dim(meta.in_channels),
            "input": "images scaled to [0, 1]",
        }
        if encoder is not None:
            enc = Path(encoder)
            target = _encoder_file(enc)
            shutil.copyfile(enc, tmp / target)
            fingerprint = {
                "kind": "encoder",
                "file": target,
                "dim": _encoder_dim(enc, meta.in_channels, meta.image_size),
                "input": "float32 NCHW images scaled to [0, 1]",
                **{k: v for k, v in info.items() if k != "key"},
            }
        card = model_card(meta, name=name, task=task, intensity_scaling=intensity_scaling)
        card.update(
            model_version=version,
            checkpoint_sha256=ckpt_sha,
            fingerprint=fingerprint,
            export={
                "rtol": rtol,
                "atol": atol,
                "max_prob_diff": diffs,
                "tolerance_used": {k: r.max_excess for k, r in reports.items()},
                "torch": torch.__version__,
            },
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        )
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
        (tmp / CARD_SUM).write_text(card_sum_text(tmp / CARD))
        _keep_reference(final, tmp)  # after the card: not one of its files
    if not staged.published:  # the directory appeared since the check above
        if not (final / CARD).is_file():
            raise PomliaError(f"bundle directory {final} exists without {CARD}; remove it")
        # A concurrent export of the same weights (and encoder) finished first; its bundle
        # is this one, so use it and drop ours.
        return _reused(final)
    return ExportResult(ExportedBundle.open(final), diffs, reused=False, rebuilt=rebuilt)


def export_model(
    registry: Registry,
    workspace: Workspace,
    ref: str,
    *,
    encoder: str | Path | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export registry model ``ref`` (name or id) to ``<home>/models/<name>/bundles/<version>/``
    and record the bundle in the model's card (``card["export"]``).

    ``encoder``: a file (ONNX or torch.export ``.pt2``), or a registry encoder name/id. Without
    it, the task's encoder is shipped when there is one: the model's ``lineage["encoder_id"]``,
    else the newest encoder with complete fingerprints of the task's dataset version (see
    :func:`task_encoder`); so the logged fingerprints compare with the training set's.
    """
    check_tolerances(rtol, atol)  # before the model is looked up or anything is exported
    row = resolve_model(registry, ref)
    if not row.path:
        raise InputError(f"model '{row.name}' has no checkpoint path in the registry")
    task: dict[str, Any] = {"id": row.task_id} if row.task_id is not None else {}
    if row.task_id is not None:
        with registry.session() as s:
            task_row = s.get(Task, row.task_id)
            if task_row is not None:
                task["metric"] = task_row.metric
    scaling = data_scaling(model_dataset_meta(registry, row) or {})
    enc_file: Path | None = None
    enc_info: dict[str, Any] | None = None
    tmp_dir = _scratch_dir(workspace, row.name)
    try:
        if encoder is not None and Path(encoder).is_file():
            enc_file = Path(encoder)
        else:
            enc_id = str(encoder) if encoder is not None else task_encoder(registry, row)
            if enc_id is not None:
                meta = load_classifier(row.path).meta
                enc_file, enc_info = export_registry_encoder(
                    registry, enc_id, meta.in_channels, meta.image_size, tmp_dir / "encoder.pt2"
                )
        result = export_checkpoint(
            row.path,
            workspace.path("models", row.name, "bundles"),
            name=row.name,
            task=task,
            encoder=enc_file,
            encoder_info=enc_info,
            intensity_scaling=scaling,
            rtol=rtol,
            atol=atol,
            recorded_card=_recorded_card(row.card),
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    reference = result.bundle.root / REFERENCE_FILE
    if not reference.is_file():
        # The monitor compares the prediction log with this: fingerprints and outputs of the
        # validation images, computed exactly as the server computes what it logs.
        try:
            reference = reference_for_model(registry, result.bundle, row) or reference
        except BaseException:
            if not result.reused:  # the model stays unexported: leave no bundle of it
                shutil.rmtree(result.bundle.root, ignore_errors=True)
            raise
    result = dataclasses.replace(result, reference=reference if reference.is_file() else None)
    update_card(registry, row.id, card_with_bundle(row.card, result))
    return result


def _keep_reference(final: Path, staged: Path) -> None:
    """Carry the monitoring reference of the bundle ``final`` that is being rebuilt into its
    new folder ``staged``: it belongs to the same weights (the version is their hash), and
    one made with `pomlia monitor reference --data` (no training data set recorded, or
    another split) cannot be made again by the export; the rebuild lost it."""
    if (final / REFERENCE_FILE).is_file():
        shutil.copyfile(final / REFERENCE_FILE, staged / REFERENCE_FILE)


def _card_sha(final: Path, recorded: tuple[str, str] | None) -> str | None:
    """The SHA-256 of bundle ``final``'s card that the registry recorded (``recorded``:
    bundle folder and digest of the model's last export), when that export was ``final``."""
    return recorded[1] if recorded is not None and Path(recorded[0]) == final.resolve() else None


def _recorded_card(card: Mapping[str, Any]) -> tuple[str, str] | None:
    """(bundle folder, SHA-256 of its card) of a registry model's last export, if recorded."""
    export = card.get("export") or {}
    folder, digest = export.get("bundle"), export.get("card_sha256")
    return (folder, digest) if isinstance(folder, str) and isinstance(digest, str) else None


def _scratch_dir(workspace: Workspace, name: str) -> Path:
    """A fresh scratch folder for the export of model ``name`` in the workspace's ``tmp``,
    under this process's temporary name: a killed export's folder is swept by the next one
    (the system's temp folder never was). One :class:`InputError` naming the folder when the
    workspace's ``tmp`` cannot be written."""
    try:
        make_dirs(workspace.tmp)
        probe_writable(workspace.tmp)
        sweep_stale_temps(workspace.tmp)
        tmp_dir = temp_name(workspace.tmp / f"export-{name}")
        tmp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"workspace folder {workspace.tmp} cannot be written ({exc.strerror or exc}); "
            "`model export` needs it for scratch files: make it writable (or point the "
            "workspace home elsewhere)"
        ) from exc
    return tmp_dir


def card_with_bundle(card: Mapping[str, Any], result: ExportResult) -> dict[str, Any]:
    """``card`` (a registry model's) with the exported bundle recorded: the bundle card's
    fields, ``card["export"]`` (bundle folder and version) and the monitor reference."""
    out = dict(card)
    out.update({k: v for k, v in result.bundle.card.items() if k not in ("files",)})
    if result.reference is not None:
        out["monitor_reference"] = str(result.reference)
    out["export"] = {
        **dict(result.bundle.card.get("export", {})),
        "bundle": str(result.bundle.root),
        "version": result.bundle.version,
        # Where an edit of the bundle's card cannot fix it up as well (deploy and serve check)
        "card_sha256": sha256_file(result.bundle.root / CARD),
    }
    return out


def task_encoder(registry: Registry, model: Model) -> int | None:
    """The fingerprint encoder of ``model``'s task: ``lineage["encoder_id"]``, else the newest
    encoder with complete fingerprints of the task's dataset version; None if neither."""
    lineage_id = (model.lineage or {}).get("encoder_id")
    if isinstance(lineage_id, int):
        return lineage_id
    if model.task_id is None:
        return None
    with registry.session() as s:
        task = s.get(Task, model.task_id)
        if task is None:
            return None
        return s.scalar(
            select(FingerprintSet.encoder_id)
            .where(FingerprintSet.dataset_version_id == task.dataset_version_id)
            .where(FingerprintSet.status == "complete")
            .order_by(FingerprintSet.id.desc())
            .limit(1)
        )


class _BundleEncoder(torch.nn.Module):
    """Adapts the fingerprint autoencoder to the bundle's encoder contract: float32 NCHW in
    [0, 1] at the classifier's size and channels in; the latent vector out. Grey images are
    repeated to 3 channels and resized to the encoder's size, as the fingerprint extraction
    does (:func:`pomlia_hpc.fingerprint.autoencoder.to_input`)."""

    def __init__(
        self, autoencoder: torch.nn.Module, in_channels: int, size: int, encoder_size: int
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.repeat = in_channels == 1
        self.resize = size != encoder_size
        self.encoder_size = encoder_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = torch.nn.functional.interpolate(
                x,
                size=(self.encoder_size, self.encoder_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.autoencoder.encode(x)  # type: ignore[operator]


def export_registry_encoder(
    registry: Registry, encoder: int | str, in_channels: int, image_size: int, out: Path
) -> tuple[Path, dict[str, Any]]:
    """Registry encoder ``encoder`` adapted to the classifier's input, as a ``torch.export``
    program at ``out``; returns it with the card info (id, name, key = the checkpoint's
    hash)."""
    from pomlia_hpc.fingerprint.train import get_encoder, load_checkpoint

    row = get_encoder(registry, encoder)
    if not row.checkpoint_path:
        raise InputError(f"encoder '{row.name}' has no checkpoint yet (training unfinished)")
    autoencoder, cfg = load_checkpoint(row.checkpoint_path)
    module = _BundleEncoder(autoencoder, in_channels, image_size, cfg.image_size).eval()
    save_program(module, torch.rand(2, in_channels, image_size, image_size), out)
    info = {
        "encoder_id": row.id,
        "encoder_name": row.name,
        "key": sha256_file(Path(row.checkpoint_path)),
    }
    return out, info
