"""HDF5 sources: image and label datasets named by their paths inside the file.

Options: ``images`` (path of an (N, H, W) or (N, H, W, C) dataset), ``labels`` (path of (N,) or (N,
L)), optional ``split`` (path of an (N,) dataset holding 0/1/2 or the strings "train"/"val"/"test",
or the other names an image folder's split folders may have: "training", "valid", "validation",
"dev", "testing"; any case). Without ``split``, the rows are split into train/val/test stratified by
class (``val_fraction``, ``test_fraction``, default 0.1 each), by the rule an image folder's split
follows (:func:`~pomlia_hpc.data.sources.base.stratified_split`): each class gives val and test
their share (rounded half up, at least one row each), a class of 3 or more rows is in every split, a
class of 2 gives one to val, a class of 1 stays in train; which rows go is decided by a hash of
their index, so the same file gives the same split. Adding rows to a class can move a few others of
that class; other classes are untouched (ingest then carries the split of the version a new one
grows from forward: rows whose pixels it held keep their split, :mod:`pomlia_hpc.data.carry`).
Multi-label rows (no one class) go to a split by that hash alone. Images are read in batches
(one pass), so the file can be larger than memory.

The datasets must be stored in the file: one reached through an external link (or a group
that is one), a virtual dataset mapping another file, and raw external storage are refused,
naming the link and the other file (the version would name only this file). Soft links and
virtual datasets within the file are followed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pomlia_hpc.data.sources.base import (
    Held,
    IngestLimits,
    LabelDecl,
    Source,
    carried_codes,
    check_label_shape,
    check_split_fractions,
    has_alpha,
    image_shape,
    keep_copies_together,
    normalize_labels,
    read_one_hot,
    resolve_labels,
    stratified_split,
)
from pomlia_hpc.data.sources.folder_layout import SPLIT_FOLDER_NAMES, split_aliases
from pomlia_hpc.data.sources.intensity import (
    PixelConverter,
    StoredAs,
    convert_as,
    first_pass_rows,
)
from pomlia_hpc.data.sources.label_forms import check_marker_cap
from pomlia_hpc.data.store import SPLIT_CODE, SPLITS
from pomlia_hpc.errors import InputError


def _dataset_paths(f: h5py.File) -> list[str]:
    out: list[str] = []
    f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def _row_ranks(n: int) -> np.ndarray:
    """A deterministic hash of each row index 0..n-1 (uint64; independent of n, so appending
    rows keeps the others' ranks)."""
    idx = np.arange(n, dtype=np.uint64)
    # splitmix64: a good 64-bit mix, vectorised; uint64 arithmetic wraps as intended.
    with np.errstate(over="ignore"):
        z = idx + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _row_content(img: h5py.Dataset) -> np.ndarray:
    """One uint64 hash of each row's stored pixels (equal rows, equal hash), read a block of
    rows at a time: copies of an image within the file."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes

    n, step = int(img.shape[0]), first_pass_rows(img.shape, img.dtype.itemsize)
    blocks = [image_hashes(np.asarray(img[lo : lo + step])) for lo in range(0, n, step)]
    return np.concatenate(blocks or [np.zeros(0, np.uint64)])


def _hash_splits(
    y: np.ndarray, val_fraction: float, test_fraction: float, content: np.ndarray
) -> np.ndarray:
    """Split codes for rows with labels ``y`` (n, L): with one label column, stratified by
    class as an image folder's (:func:`~pomlia_hpc.data.sources.base.stratified_split`, rows
    ranked by a hash of their index); multi-label rows (no one class to stratify by) go to a
    split by that hash alone, each with the fractions' chance. Rows of equal ``content``
    (copies of one image) then go to one split, the first-ranked copy's
    (:func:`~pomlia_hpc.data.sources.base.keep_copies_together`)."""
    ranks = _row_ranks(len(y))
    if y.shape[1] == 1:
        codes = stratified_split(ranks, y[:, 0], val_fraction, test_fraction)
    else:
        u = (ranks >> np.uint64(11)).astype(np.float64) / 2.0**53
        codes = np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))
    return keep_copies_together(codes, ranks, content)


class Hdf5Source(Source):
    """Images, labels (and optionally split codes) from datasets inside one HDF5 file."""

    def __init__(
        self,
        path: Path,
        decl: LabelDecl | None = None,
        *,
        images: str | None = None,
        labels: str | None = None,
        split: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        limits: IngestLimits | None = None,
    ) -> None:
        super().__init__(path=path, kind="hdf5")
        self._limits = limits or IngestLimits()
        check_split_fractions(f"HDF5 file '{path}'", val_fraction, test_fraction)
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(
                f"HDF5 file '{path}' cannot be opened ({exc}): expected an HDF5 file"
            ) from exc
        try:
            if not images or not labels:
                given = (("--images", images), ("--labels", labels))
                missing = " and ".join(flag for flag, value in given if not value)
                raise InputError(
                    f"HDF5 file '{path}' needs --images PATH and --labels PATH, the paths of "
                    f"its image and label datasets; {missing} not given (datasets in the "
                    f"file: {', '.join(_dataset_paths(self._file)) or 'none'})"
                )
            self._validate(images, labels, split, decl, val_fraction, test_fraction)
        except BaseException:
            self._file.close()
            raise

    def _validate(
        self,
        images: str,
        labels: str,
        split: str | None,
        decl: LabelDecl | None,
        val_fraction: float,
        test_fraction: float,
    ) -> None:
        path = self.path
        self._img = self._dataset(images, "images")
        lab = self._dataset(labels, "labels")
        where = f"HDF5 file '{path}', dataset '{images}'"
        self.height, self.width, self.channels = image_shape(where, self._img.shape, self._limits)
        alpha = has_alpha(self._img.shape)
        self._convert = PixelConverter(where, self._img.dtype, drop_alpha=alpha)
        n = int(self._img.shape[0])
        if n == 0:
            raise InputError(f"{where} has zero images: expected at least one")
        lab_where = f"HDF5 file '{path}', dataset '{labels}'"
        check_label_shape(lab_where, lab.shape, n, self._limits)  # before reading it
        y = normalize_labels(lab_where, np.asarray(lab[()]), n)
        # One-hot classes become indices before the split, so that it is stratified by class.
        decl, one, notes = read_one_hot(decl or LabelDecl(), {"all": (lab_where, y)})
        y = one["all"][1]
        if split:
            codes = self._split_codes(split, n)
        else:
            codes = _hash_splits(y, val_fraction, test_fraction, _row_content(self._img))
        self._carved = not split
        self._y_rows = y
        self._set_codes(codes)
        parts = {
            s: (f"HDF5 file '{path}', dataset '{labels}'", self._y[codes[self._order] == i])
            for i, s in enumerate(SPLITS)
        }
        # A 999 marker would be refused as "1000 classes" below without saying why.
        guessed = decl.class_names is None and decl.n_classes is None and not decl.one_hot_columns
        guessed = guessed and not (decl.task_type or "").startswith("multi-label")
        check_marker_cap(parts, self._limits.max_classes, inferred=guessed)
        self.label_info = resolve_labels(decl, parts, self._limits, one_hot_notes=notes)
        self.extra = {"images": images, "labels": labels, "split": split}
        if alpha:  # dropped, as an RGBA PNG's is; `data add` notes it
            self.extra["alpha_dropped"] = True
        if not split:  # kept so that a re-add split another way can say why (data.splits)
            self.extra.update(val_fraction=val_fraction, test_fraction=test_fraction)
        if self.label_info.notes:
            self.extra["label_notes"] = self.label_info.notes
        if self._convert.needs_max:
            step = first_pass_rows(self._img.shape, self._img.dtype.itemsize)
            for lo in range(0, n, step):
                self._convert.observe(np.asarray(self._img[lo : lo + step]), first_row=lo)
            outlier = self._convert.outlier()
            if outlier:  # `data add` warns: one hot pixel darkens every image
                self.extra["intensity_outlier"] = outlier
        # Recorded for floats too (scaled by 255): how the stored pixels were made.
        self.extra["intensity_scaling"] = self._convert.scaling()

    def _set_codes(self, codes: np.ndarray) -> None:
        """Split codes of the file's rows: the store's order (train, val, test; file order
        within a split) and sizes follow."""
        self._codes = codes
        self._order = np.argsort(codes, kind="stable")
        self.split_sizes = {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)}
        self._y = self._y_rows[self._order]

    @property
    def carves_split(self) -> bool:
        return self._carved

    def carry_splits(
        self,
        held: Held,
        apply: bool = True,
        like: StoredAs | None = None,
        tick: Callable[[int, int], None] | None = None,
    ) -> dict[str, int] | None:
        """See :meth:`~pomlia_hpc.data.sources.base.Source.carry_splits`: every row is carved
        (no split dataset), read again and hashed as the parent's store made its pixels."""
        if not self._carved:
            return None
        from pomlia_hpc.data.explicit_fingerprint import image_hashes

        n, step = (
            int(self._img.shape[0]),
            first_pass_rows(self._img.shape, self._img.dtype.itemsize),
        )
        hashes, ok = [], []
        for lo in range(0, n, step):
            px, can = convert_as(self._convert, np.asarray(self._img[lo : lo + step]), like, lo)
            hashes.append(image_hashes(px))
            ok.append(can)
            if tick is not None:
                tick(len(px), n)
        codes, counts = carried_codes(
            self._codes, np.concatenate(hashes), held, apply=apply, matchable=np.concatenate(ok)
        )
        if apply:
            self._set_codes(codes)
        return counts

    def _dataset(self, name: str, option: str) -> h5py.Dataset:
        # Before `get`: h5py opens the file an external link names as it follows it.
        self._refuse_external_link(name, option)
        obj = self._file.get(name)
        if obj is None:
            self._refuse_broken_link(name, option)
        if not isinstance(obj, h5py.Dataset):
            found = ", ".join(_dataset_paths(self._file)) or "none"
            raise InputError(
                f"HDF5 file '{self.path}' has no dataset at path '{name}' (--{option} "
                f"{name}): expected one of: {found}"
            )
        self._refuse_data_elsewhere(obj, name, option)
        return obj

    def _external_link(self, name: str, hops: int = 0) -> tuple[str, h5py.ExternalLink] | None:
        """The first external link on the way to ``name`` (soft links followed, at most 32),
        with its path; ``None`` when the way stays in this file (or breaks off)."""
        parts = [p for p in name.split("/") if p]
        here = ""
        for i, part in enumerate(parts):
            here = f"{here}/{part}"
            try:
                link = self._file.get(here, getlink=True)
            except (KeyError, ValueError, OSError):  # missing: `_dataset` says so
                return None
            if isinstance(link, h5py.ExternalLink):
                return here.lstrip("/"), link
            if isinstance(link, h5py.SoftLink) and hops < 32:
                base = link.path if link.path.startswith("/") else f"{here}/../{link.path}"
                return self._external_link("/".join([base, *parts[i + 1 :]]), hops + 1)
        return None

    def _refuse_external_link(self, name: str, option: str) -> None:
        """Refuse a dataset reached through an external link: its rows would come from
        another file while the version names only this one (and who may read this file may
        not be meant to read that one)."""
        found = self._external_link(name)
        if found is None:
            return
        at, link = found
        way = "" if at == name.strip("/") else f" on the way to '{name}'"
        raise InputError(
            f"HDF5 file '{self.path}': '{at}'{way} (--{option} {name}) is an external link to "
            f"'{link.path}' in file '{link.filename}': expected a dataset stored in this file "
            "(external links are not followed: copy the data in, or add that file itself)"
        )

    def _refuse_data_elsewhere(self, obj: h5py.Dataset, name: str, option: str) -> None:
        """Refuse a dataset whose data lie in other files (a virtual dataset mapping another
        file, raw external storage, or a backstop: reached into another file), as
        :meth:`_refuse_external_link` does a link."""
        others: list[str] = []
        if obj.file.filename != self._file.filename:
            others.append(obj.file.filename)
        if obj.is_virtual:
            others += [m.file_name for m in obj.virtual_sources() if m.file_name != "."]
        others += [str(entry[0]) for entry in obj.external or ()]
        if others:
            raise InputError(
                f"HDF5 file '{self.path}': dataset '{name}' (--{option} {name}) has its data "
                f"in file '{others[0]}': expected a dataset stored in this file (virtual and "
                "external datasets are not followed: copy the data in, or add that file itself)"
            )

    def _refuse_broken_link(self, name: str, option: str) -> None:
        """Say so when ``name`` is a link whose target is missing (h5py reads it as nothing,
        which read as a missing name beside the names listed)."""
        try:
            link = self._file.get(name, getlink=True)
        except (KeyError, ValueError, OSError):  # a missing group on the way: not a link
            return
        if isinstance(link, h5py.ExternalLink):
            target = f"'{link.path}' in file '{link.filename}'"
        elif isinstance(link, h5py.SoftLink):
            target = f"'{link.path}'"
        else:
            return
        raise InputError(
            f"HDF5 file '{self.path}': '{name}' (--{option} {name}) is a link to {target}, "
            "which does not exist: expected a link to an existing dataset (or the dataset "
            "itself)"
        )

    def _split_codes(self, name: str, n: int) -> np.ndarray:
        raw = np.asarray(self._dataset(name, "split")[()])
        where = f"HDF5 file '{self.path}', dataset '{name}'"
        if raw.shape != (n,):
            raise InputError(f"{where} has shape {raw.shape}: expected ({n},), one code per image")
        if raw.dtype.kind in "SUO":
            # The names an image folder's split folders may have, in any case (the same rule).
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
            split_of = [SPLIT_FOLDER_NAMES.get(t.strip().lower()) for t in text]
            if None in split_of:
                raise InputError(
                    f"{where} has value '{text[split_of.index(None)]}' (row "
                    f"{split_of.index(None)}): expected a split name, {split_aliases()} "
                    "(any case), or the codes 0, 1, 2"
                )
            return np.asarray([SPLIT_CODE[str(t)] for t in split_of], np.int8)
        if not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0 or raw.max() > 2:
            raise InputError(
                f"{where} has values outside 0..2: expected 0 (train), 1 (val), 2 (test)"
            )
        return raw.astype(np.int8)

    def labels(self) -> np.ndarray:
        return self._y.astype(np.int32)

    def iter_rows(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """One pass in file order; rows are scattered to their split's range (runs per split)."""
        n = int(self._img.shape[0])
        offsets = self.split_offsets()
        cursor = {i: offsets[s] for i, s in enumerate(SPLITS)}
        for lo in range(0, n, batch_rows):
            raw = np.asarray(self._img[lo : lo + batch_rows])
            x = self._convert(raw, first_row=lo)
            codes = self._codes[lo : lo + len(x)]
            for code in np.unique(codes):
                sel = x[codes == code]
                yield cursor[int(code)], sel
                cursor[int(code)] += len(sel)

    def describe(self) -> dict[str, Any]:
        varies = {"alpha_varies": True} if self._convert.alpha_varies else {}
        return {**super().describe(), **self.extra, **varies}

    def close(self) -> None:
        self._file.close()
