"""Reading an exported bundle (what ``pomlia model export`` writes and the server loads).

Layout of a bundle directory::

    card.json      the model card, plus "model_version" and "files" (name -> sha256)
    card.sha256    the SHA-256 of card.json (``sha256sum`` format): the card's own checksum,
                   which an edit of the card cannot fix up in the card itself
    model.onnx     the classifier for onnxruntime (CPU serving)
    model.pt2      the same classifier as a ``torch.export`` program (GPU serving)
    encoder.onnx   optional: the task's fingerprint encoder (or encoder.pt2)

Bundles written before torch.export replaced TorchScript have ``model.ts`` (and perhaps
``encoder.ts``) instead. Their ONNX classifier still serves; the TorchScript files are not
loaded any more (``torch.jit`` is deprecated): using them is one error that says to re-export.

This module imports neither torch nor onnxruntime, so a CPU server starts fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pomlia_hpc.config import read_record
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.models.card import ModelCard
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.serve.programs import check_program

if TYPE_CHECKING:
    from pomlia_hpc.registry import Registry

CARD = "card.json"
#: The card's own checksum (``<hex>  card.json``, as ``sha256sum`` writes it): ``files`` in the
#: card cannot hold it, and an edited card (its metric, class names, SHA-256 list) must not pass.
CARD_SUM = "card.sha256"
ONNX = "model.onnx"
TORCH_PROGRAM = "model.pt2"
ENCODER_FILES = ("encoder.onnx", "encoder.pt2")
#: Files of bundles exported with TorchScript (before version 0.2): recognised, not loaded.
LEGACY_TORCHSCRIPT = "model.ts"
LEGACY_ENCODER = "encoder.ts"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_damage(root: Path, card_sha256: str | None = None) -> str | None:
    """What is wrong with the files of bundle ``root`` against the SHA-256 its card records
    (``'model.onnx is missing'``, ``'model.onnx does not match its SHA-256 in card.json'``),
    and with the card against its own (:data:`CARD_SUM`; ``card_sha256``: the one the
    registry recorded at the export, when known), or None when every file is intact. Reads
    every file (about 1 s per GB). A bundle exported before the card had a checksum, and not
    recorded with one, has its files checked only."""
    card_damage = _card_damage(root, card_sha256)
    if card_damage is not None:
        return card_damage
    try:
        files = json.loads((root / CARD).read_text()).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        return f"{CARD} cannot be read ({exc})"
    if not isinstance(files, dict):
        return f"{CARD} has no 'files' record"
    for name, digest in sorted(files.items()):
        path = root / str(name)
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its SHA-256 in {CARD}"
    return None


def _card_damage(root: Path, recorded: str | None) -> str | None:
    """Why ``root``'s card is not the card its export wrote (see :func:`bundle_damage`)."""
    try:
        actual = sha256_file(root / CARD)
        written = (root / CARD_SUM).read_text().split()[:1] if (root / CARD_SUM).exists() else None
    except OSError as exc:
        return f"{CARD} cannot be read ({exc})"
    if written is not None and written != [actual]:
        return f"{CARD} does not match its SHA-256 in {CARD_SUM} (edited since the export)"
    if recorded is not None and recorded != actual:
        if written is None:
            return f"{CARD_SUM} is missing"
        return f"{CARD} is not the card the export recorded in the registry (edited since)"
    return None


def card_sum_text(card: Path) -> str:
    """The :data:`CARD_SUM` file's text for the card file ``card``."""
    return f"{sha256_file(card)}  {CARD}\n"


def reexport_hint(root: Path, what: str) -> str:
    """The message for a TorchScript file of an old bundle: what, where, how to fix it."""
    return (
        f"{root}: {what} is TorchScript, which pomlia-hpc no longer loads (torch.jit is "
        "deprecated); re-export the model to get a torch.export program (.pt2): "
        "pomlia model export MODEL"
    )


@dataclass(frozen=True)
class ExportedBundle:
    """A validated bundle directory and its card."""

    root: Path
    card: dict[str, Any]
    #: The SHA-256 of ``card.json`` the registry recorded at the export (checked with the
    #: bundle's own :data:`CARD_SUM`), or None when the bundle was opened without the registry.
    card_sha256: str | None = None

    @classmethod
    def open(cls, root: str | Path) -> ExportedBundle:
        """Read and check ``root/card.json`` and the files it names; errors name file and field."""
        root = Path(root).resolve()
        card_path = root / CARD
        if not card_path.is_file():
            raise NotFoundError(f"{root} is not an exported model bundle: {CARD} is missing")
        card = read_record(ModelCard, card_path).to_dict()
        bundle = cls(root=root, card=card)
        bundle._check(card_path)
        return bundle

    def _check(self, card_path: Path) -> None:
        """The files the card names are plain names inside the bundle, and present; its
        ``torch.export`` programs hold nothing that runs code when loaded."""
        files = self.card["files"]
        for name in files:
            if Path(name).name != name:
                raise InputError(
                    f"{card_path}: field 'files' names '{name}', expected a bare "
                    "file name inside the bundle"
                )
            if not (self.root / name).is_file():
                raise NotFoundError(
                    f"{card_path}: names file '{name}', which is missing; rebuild the bundle "
                    f"with: pomlia model export {self.card['name']}"
                )
        if ONNX not in files and TORCH_PROGRAM not in files:
            if LEGACY_TORCHSCRIPT in files:
                raise InputError(reexport_hint(self.root, f"its only model, {LEGACY_TORCHSCRIPT},"))
            raise InputError(f"{card_path}: field 'files' names neither {ONNX} nor {TORCH_PROGRAM}")
        if LEGACY_ENCODER in files and not any(name in files for name in ENCODER_FILES):
            # Serving it without its encoder would log another kind of fingerprint than the
            # monitor's reference holds: refuse instead.
            what = f"its fingerprint encoder, {LEGACY_ENCODER},"
            raise InputError(reexport_hint(self.root, what))
        # A program that would run code when torch reads it is refused on opening, so the
        # server neither starts on it nor swaps to it (whatever backend it would use).
        for name in files:
            if name.endswith(".pt2"):
                check_program(self.root / name)

    def check_integrity(self) -> None:
        """Refuse a bundle whose files do not match the SHA-256 its card records, or whose card
        does not match its own (:func:`bundle_damage`): one :class:`InputError` naming the
        file and how to rebuild the bundle."""
        damage = bundle_damage(self.root, self.card_sha256)
        if damage is not None:
            raise InputError(
                f"bundle {self.root}: {damage}; the bundle is damaged: rebuild it with "
                f"`pomlia model export {self.name}` (which replaces a damaged bundle)"
            )

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def version(self) -> str:
        return str(self.card["model_version"])

    @property
    def task_type(self) -> str:
        return str(self.card["task"]["type"])

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.card["label_names"]]

    @property
    def image_size(self) -> int:
        return int(self.card["input"]["image_size"])

    @property
    def channels(self) -> int:
        return int(self.card["input"]["channels"])

    @property
    def scale_max(self) -> float | None:
        """The largest 16-bit value of the training data set, which ingest scaled to 255
        (``input.intensity_scaling``); None when the data were not 16-bit or it is not
        recorded."""
        return scale_max_of(self.card["input"].get("intensity_scaling"))

    @property
    def mean(self) -> list[float]:
        return [float(x) for x in self.card["preprocessing"]["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(x) for x in self.card["preprocessing"]["std"]]

    def file(self, name: str) -> Path | None:
        """Path of bundle file ``name`` if the card lists it."""
        return self.root / name if name in self.card["files"] else None

    @property
    def encoder_file(self) -> Path | None:
        """The fingerprint encoder shipped in the bundle, if any (ONNX preferred)."""
        for name in ENCODER_FILES:
            if (p := self.file(name)) is not None:
                return p
        return None


def scale_max_of(scaling: Any) -> float | None:
    """The 16-bit maximum an ``intensity_scaling`` record (a card's ``input``, a data set's
    ``meta``) scales to 255; None when it records no 16-bit maximum."""
    if not isinstance(scaling, dict) or scaling.get("from") != "uint16":
        return None
    top = scaling.get("max")
    return float(top) if isinstance(top, int | float) and top > 0 else None


def data_scaling(meta: dict[str, Any]) -> dict[str, Any] | None:
    """How ingest made a data set's pixels 8-bit (``intensity_scaling``, in its ``meta`` or its
    source's record there): what an export of a model trained on it writes into the card."""
    scaling = meta.get("intensity_scaling") or (meta.get("source") or {}).get("intensity_scaling")
    return scaling if isinstance(scaling, dict) else None


def bundle_for_model(registry: Registry, ref: str) -> ExportedBundle | None:
    """The bundle recorded for registry model ``ref`` by its last export, if it still exists."""
    row = resolve_model(registry, ref)
    export = row.card.get("export") or {}
    path = export.get("bundle")
    if path and (Path(path) / CARD).is_file():
        recorded = export.get("card_sha256")
        bundle = ExportedBundle.open(path)
        return replace(bundle, card_sha256=recorded if isinstance(recorded, str) else None)
    return None
