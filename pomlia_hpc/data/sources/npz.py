"""npz sources: any npz with MedMNIST's keys, and MedMNIST itself (by flag and size)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.data.medmnist_info import FlagInfo
from pomlia_hpc.data.npzstream import NpyMember, NpzFile
from pomlia_hpc.data.sources.base import (
    IngestLimits,
    LabelDecl,
    Source,
    check_label_shape,
    has_alpha,
    image_shape,
    normalize_labels,
    read_one_hot,
    resolve_labels,
)
from pomlia_hpc.data.sources.intensity import PixelConverter, first_pass_rows
from pomlia_hpc.data.sources.label_forms import check_marker_cap
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError

PIECE_BYTES = 16 << 20
"""Images larger than this (in the file's dtype) are read in pieces of lines of about this
many bytes, so an image is never held in memory in its source dtype as a whole."""


class NpzSource(Source):
    """An npz with ``{split}_images`` / ``{split}_labels`` for split in train, val, test.

    ``train_*`` is required; ``val_*`` and ``test_*`` are optional but come in pairs. With
    ``flag`` (a MedMNIST :class:`FlagInfo`) all six keys are required and the shapes, channels
    and labels are checked against MedMNIST's INFO.
    """

    def __init__(
        self,
        path: Path,
        decl: LabelDecl | None = None,
        *,
        flag: FlagInfo | None = None,
        size: int | None = None,
        limits: IngestLimits | None = None,
    ) -> None:
        super().__init__(path=path, kind="medmnist" if flag else "npz")
        self._limits = limits or IngestLimits()
        self._npz = NpzFile(path)
        self._members: dict[str, NpyMember] = {}
        self._convert: dict[str, PixelConverter] = {}
        try:
            self._validate(decl, flag, size)
        except BaseException:
            self._npz.close()
            raise

    def _validate(self, decl: LabelDecl | None, flag: FlagInfo | None, size: int | None) -> None:
        path = self.path
        decl = decl or LabelDecl()
        if flag is not None:
            decl = LabelDecl(flag.class_names, None, flag.task_type)
            self.extra = {"flag": flag.flag, "size": size}
        keys = set(self._npz.keys)
        required = {"train"} | (set(SPLITS) if flag else set())
        for split in SPLITS:
            has = {f"{split}_images", f"{split}_labels"} & keys
            if split in required or has:
                self._npz.require(f"{split}_images")
                self._npz.require(f"{split}_labels")
                self._members[split] = self._npz.member(f"{split}_images")
        shapes = {}
        for split, m in self._members.items():
            where = self._where(f"{split}_images")
            shapes[split] = image_shape(where, m.shape, self._limits)
            alpha = has_alpha(m.shape)
            self._convert[split] = PixelConverter(where, m.dtype, drop_alpha=alpha)
            if alpha:  # dropped, as an RGBA PNG's is; `data add` notes it
                self.extra["alpha_dropped"] = True
            if m.n_rows == 0 and split == "train":
                raise InputError(f"{where} has zero images: expected at least one")
            self.split_sizes[split] = m.n_rows
        if len(set(shapes.values())) > 1:
            raise InputError(
                f"npz file '{path}' has images of different sizes across splits "
                f"({', '.join(f'{s}: {v}' for s, v in shapes.items())}): expected one (H, W, C)"
            )
        self._check_one_pixel_rule()
        self.height, self.width, self.channels = shapes["train"]
        for split, m in self._members.items():  # before a single label is read
            key = f"{split}_labels"
            labels_shape = self._npz.member(key).shape
            check_label_shape(self._where(key), labels_shape, m.n_rows, self._limits)
        parts = {
            split: (
                self._where(f"{split}_labels"),
                normalize_labels(
                    self._where(f"{split}_labels"),
                    self._npz.load(f"{split}_labels"),
                    self.split_sizes[split],
                ),
            )
            for split in self._members
        }
        # One-hot classes of a single-label task are kept as the indices they stand for.
        decl, parts, notes = read_one_hot(decl, parts)
        self._labels = parts
        # A 999 marker would be refused as "1000 classes" below without saying why.
        guessed = decl.class_names is None and decl.n_classes is None and not decl.one_hot_columns
        guessed = guessed and not (decl.task_type or "").startswith("multi-label")
        check_marker_cap(parts, self._limits.max_classes, inferred=guessed)
        self.label_info = resolve_labels(decl, parts, self._limits, one_hot_notes=notes)
        if self.label_info.notes:
            self.extra["label_notes"] = self.label_info.notes
        if flag is not None:
            self._check_flag(flag, size)
        self.check_nonempty()
        self._first_pass()

    def _where(self, key: str) -> str:
        return f"npz file '{self.path}', key '{key}'"

    def _check_flag(self, flag: FlagInfo, size: int | None) -> None:
        where = self._where("train_images")
        if self.channels != flag.channels:
            raise InputError(
                f"{where} has {self.channels} channel(s): expected "
                f"{flag.channels} for MedMNIST '{flag.flag}'"
            )
        if size is not None and (self.height, self.width) != (size, size):
            raise InputError(
                f"{where} has images of {self.height}x{self.width} px: expected "
                f"{size}x{size} for '{flag.file_name(size)}'"
            )
        if self.label_info.label_width != flag.label_width:
            raise InputError(
                f"{self._where('train_labels')} has {self.label_info.label_width} "
                f"label column(s): expected {flag.label_width}"
            )

    def _check_one_pixel_rule(self) -> None:
        """Refuse splits whose pixels take different scaling rules (uint8 train, 12-bit uint16
        val): each split would be scaled by its own rule while ``intensity_scaling`` records
        the train split's only, so the server would scale an uploaded val image otherwise
        than ingest stored it (an image folder is refused likewise: one bit depth). A split
        without images has no pixels to scale (``np.zeros((0, H, W))`` is float64)."""
        train = self._convert["train"]
        for split, conv in self._convert.items():
            if conv.rule != train.rule and self._members[split].n_rows:
                raise InputError(
                    f"{conv.where} has dtype {conv.dtype} but key 'train_images' has "
                    f"{train.dtype}: expected one pixel type in every split (uint8, uint16 or "
                    "float: each is scaled by its own rule); convert the splits to one"
                )

    def _first_pass(self) -> None:
        """uint16 images: one pass to find the dataset-wide max (see the pixel rules)."""
        if not any(c.needs_max for c in self._convert.values()):
            return
        top = 0.0
        for split, m in self._members.items():
            conv = self._convert[split]
            if self._large(m):
                for row, _lo, piece in m.iter_image_pieces(PIECE_BYTES):
                    conv.observe(piece, first_row=row, name=f"key '{split}_images', row {row}")
            else:
                done = 0
                for batch in m.iter_rows(first_pass_rows(m.shape, m.dtype.itemsize)):
                    conv.observe(batch, first_row=done)
                    done += len(batch)
            if conv.max_at and conv.max_at.startswith("row"):
                conv.max_at = f"key '{split}_images', {conv.max_at}"
            top = max(top, conv.scale_max or 0.0)
        whole = PixelConverter(self._where("train_images"), np.dtype(np.uint16))
        for conv in self._convert.values():
            if conv.counts is not None:  # the percentile over every split, as the max is
                whole.counts = conv.counts + (0 if whole.counts is None else whole.counts)
                if conv.scale_max == top:
                    whole.scale_max, whole.max_at = top, conv.max_at
            conv.scale_max = top
        outlier = whole.outlier()
        if outlier:  # `data add` warns: one hot pixel darkens every image
            self.extra["intensity_outlier"] = outlier
        self.extra["intensity_scaling"] = self._convert["train"].scaling()

    def labels(self) -> np.ndarray:
        return np.concatenate([self._labels[s][1] for s in self._members]).astype(np.int32)

    def iter_rows(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        offsets = self.split_offsets()
        for split, m in self._members.items():
            pos = offsets[split]
            if self._large(m):
                yield from self._iter_large(m, self._convert[split], pos)
                continue
            done = 0
            for batch in m.iter_rows(batch_rows):
                yield pos + done, self._convert[split](batch, first_row=done)
                done += len(batch)

    @staticmethod
    def _large(m: NpyMember) -> bool:
        return math.prod(m.row_shape) * m.dtype.itemsize > PIECE_BYTES

    def _iter_large(
        self, m: NpyMember, conv: PixelConverter, pos: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """One image per batch, read and converted piece by piece (see :data:`PIECE_BYTES`)."""
        shape = (1, self.height, self.width, self.channels)
        out = np.empty(shape, np.uint8)
        for row, lo, piece in m.iter_image_pieces(PIECE_BYTES):
            h = piece.shape[1]
            out[:, lo : lo + h] = conv(piece, first_row=row)
            if lo + h == self.height:
                yield pos + row, out  # the writer may still hold it: a new one per image
                out = np.empty(shape, np.uint8)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        scaling = self._convert["train"].scaling()
        if scaling:
            out["intensity_scaling"] = scaling
        if any(c.alpha_varies for c in self._convert.values()):
            out["alpha_varies"] = True
        return out

    def close(self) -> None:
        self._npz.close()
