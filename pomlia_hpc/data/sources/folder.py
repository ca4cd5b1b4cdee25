"""Image-folder sources: one sub-folder per class; PNG, JPEG or TIFF; 8/16-bit; gray or RGB.

Each file is decoded by :mod:`.pixels` (the server's rule for uploads too): one image per
file (a TIFF stack is refused), palette / CMYK / MinIsWhite as rendered, alpha dropped.

Layouts (told apart by :mod:`.folder_layout`)::

    root/<class>/<image>                  split per class, files picked by path hashes
    root/{train,val,test}/<class>/<image> splits given by the folders
    root/<class>/{train,val,test}/<image> the same, class folders holding split folders

Split folders may also be named ``training``; ``valid``, ``validation``, ``dev``; ``testing``
(any case, :data:`SPLIT_FOLDER_NAMES`). A top level is a split layout only when it has a
train folder (``train`` or ``training``): then any other top-level folder or file that is not
a split folder is refused as a mix, as is a file directly inside a split folder. Without a
train folder the top-level folders are classes, whatever their names (``Control``/``Test``);
those named like a split are recorded as ``meta["source"]["split_named_classes"]`` and
``data add`` notes them. When a class folder holds a train folder, the class folders hold
split folders (layout ``class folders of split folders``): every class folder with images
must then hold only split folders (images or other folders beside them, or a class folder of
images beside one of split folders, are refused as a mix, naming the first such folder), with
one name per split across the class folders. Such a folder is read exactly as the same files
under ``root/<split>/<class>/`` (each file's path is hashed as that layout names it), so it
gives the same rows, split and version; the rules below for split folders apply alike (a
missing or empty val / test is carved with the fraction).

Without split folders the files of each class are split into train/val/test stratified by
class (``val_fraction``, ``test_fraction``; default 0.1 each), as a split layout's missing
val / test is carved from its train folder (:func:`_carve`): each class gives each split its
share (rounded half up, at least one image), a class of 3 or more images has at least one
image in each of train, val and test, a class of 2 gives one to val, a class of 1 stays in train;
which files go is decided by the hashes of their paths, so the same files give the same
split. Adding or removing files of a class can move a few others of that class (its counts
change, or a new file's hash ranks among those carved); other classes are untouched. Ingest
then carries the split of the version a new one grows from forward
(:meth:`FolderSource.carry_splits`, :mod:`pomlia_hpc.data.carry`): files whose pixels that
version held keep its split, so no former val/test image moves into train. With
split folders, ``val_fraction`` / ``test_fraction`` carve a missing val / test split out of
the train folder the same way. A split that has its folder refuses the fraction. A val /
test folder without any file counts as missing (recorded, by split, as
``meta["source"]["empty_split_folders"]``), so the fraction carves it.
A class folder without images is skipped (not made a class) and recorded as
``meta["source"]["skipped_empty_folders"]``. A single class is recorded with its folder and
sub-folders as ``meta["source"]["one_class_folder"]`` (``train/images/<class>/`` reads as one
class ``images``: ``data add`` says where the class folders belong).

Within a split, rows are ordered by another hash of that path (deterministic, and not class by
class). Files under a class folder may sit in nested folders; hidden and system files are
skipped, other files that are no image are skipped and recorded
(``meta["source"]["skipped_other_files"]``), symlinks are followed when they point inside
the image folder and skipped and recorded when they point outside it, are broken or loop
(``meta["source"]["skipped_symlinks"]``), images of formats not read are refused, and
class folder names that differ only in case or hold a control character are refused
(:mod:`.folder_files`). An image that does not decode refuses the folder, unless
``skip_unreadable``: then each file is decoded in full first and those that fail are skipped
and recorded (``meta["source"]["skipped_unreadable"]``). Every image must have the size of
the first one; EXIF orientation is not applied (the server does not either). A dataset is
RGB if any of its images is colour (gray ones are then replicated to 3 channels; their count
is kept as ``meta["source"]["gray_to_rgb"]`` and ``data add`` reports it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from pomlia_hpc.data.sources.base import (
    Held,
    IngestLimits,
    LabelDecl,
    LabelInfo,
    Source,
    carried_codes,
    check_binary,
    check_side,
    check_split_fractions,
    keep_copies_together,
    stratified_split,
)
from pomlia_hpc.data.sources.folder_files import (
    IMAGE_SUFFIXES,
    NAMED_SKIPPED,
    check_class_names,
    check_image_suffix,
    is_other_file,
    other_files,
    skipped_symlinks,
    walk_files,
)
from pomlia_hpc.data.sources.folder_layout import (
    CLASS_FOLDERS,
    CLASS_SPLIT_FOLDERS,
    SPLIT_FOLDER_NAMES,
    Layout,
    read_layout,
    split_folders,
    visible,
)
from pomlia_hpc.data.sources.intensity import PixelConverter, StoredAs, convert_as
from pomlia_hpc.data.sources.label_forms import nfc
from pomlia_hpc.data.sources.pixels import (
    FrameHeader,
    PixelFormatError,
    file_header,
    file_pixels,
    is_unreadable_file_error,
)
from pomlia_hpc.data.sources.segments import DecompressionLimitError
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLIT_FOLDER_NAMES",
    "FolderSource",
    "UnreadableImageError",
    "read_header",
    "read_image",
    "split_folders",
]


class UnreadableImageError(InputError):
    """An image file that cannot be decoded (damaged, truncated, empty)."""


def _unreadable(path: Path, exc: Exception) -> InputError:
    return UnreadableImageError(
        f"image file '{path}' cannot be read ({type(exc).__name__}: {exc}): expected a valid "
        "PNG, JPEG or TIFF image (`data add --skip-unreadable` skips such files, naming them)"
    )


def decodes(path: Path, limits: IngestLimits | None = None) -> str | None:
    """None when image file ``path`` decodes in full, else why not (one line): the check of
    ``--skip-unreadable``, which also finds files whose header reads but whose pixels are cut
    off. A header of a size past ``limits`` (default :class:`IngestLimits`) is not decoded:
    the scan of the headers refuses it, naming its size."""
    try:
        if path.stat().st_size == 0:
            return "empty file, 0 bytes"
        header = read_header(path)
        # Before any pixel: a damaged 30-byte header may claim 16 million rows, which would
        # take seconds and gigabytes to decode before this check runs.
        check_side(f"image file '{path}'", header.height, header.width, limits or IngestLimits())
        file_pixels(path, header.channels)
    except UnreadableImageError as exc:
        cause = exc.__cause__ or exc
        return f"{type(cause).__name__}: {cause}"
    except InputError:
        return None  # readable, but refused for its shape or type: the scan says so
    except Exception as exc:
        if not is_unreadable_file_error(exc):
            raise  # a bug, not a bad file: never skipped as unreadable
        return f"{type(exc).__name__}: {exc}"
    return None


def read_header(path: Path) -> FrameHeader:
    """Size, channels and bit depth of one image file, without decoding its pixels
    (:func:`~pomlia_hpc.data.sources.pixels.file_header`: one image per file)."""
    try:
        return file_header(path)
    except PixelFormatError as exc:
        raise InputError(f"image file '{path}' {exc}") from None
    except InputError:
        raise
    except Exception as exc:
        if not is_unreadable_file_error(exc):
            raise  # a bug, not a bad file: a traceback, never "cannot be read"
        raise _unreadable(path, exc) from exc


def read_image(path: Path, channels: int, depth: str) -> np.ndarray:
    """Pixels of one file as (H, W, channels) in dtype ``depth``, decoded by
    :func:`~pomlia_hpc.data.sources.pixels.file_pixels`, the server's own rule for uploads."""
    try:
        x = file_pixels(path, channels)
    except (PixelFormatError, DecompressionLimitError) as exc:
        raise InputError(f"image file '{path}' {exc}") from None
    except Exception as exc:
        if not is_unreadable_file_error(exc):
            raise  # a bug, not a bad file: a traceback, never "cannot be read"
        raise _unreadable(path, exc) from exc
    if depth == "uint16" and x.dtype != np.uint16:
        if x.size and (x.min() < 0 or x.max() > 65535):
            raise InputError(f"image file '{path}' has values outside 0..65535: expected 16-bit")
        x = x.astype(np.uint16)
    return x.astype(depth, copy=False)


_Row = tuple[bytes, Path, str]  # (SHA-256 of the path relative to the root, file, class)


#: Files hashed at once by :func:`_content_groups` (reads of a network file system overlap).
_HASH_THREADS = 8
_HASH_BATCH = 4096


def _file_digest(f: Path) -> bytes:
    """SHA-256 of ``f``'s bytes, read a block at a time: the file is never held whole (two
    copies of a 4 GB scan, which the header check refuses later, took 4 GB here)."""
    with f.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def _content_groups(files: list[Path]) -> np.ndarray:
    """One group id (int64) per file, equal for byte-identical files: only files that share
    their size with another are read (SHA-256 of their bytes, streamed, several files at
    once), so a folder without copies costs one ``stat`` per file."""
    sizes = [f.stat().st_size for f in files]
    shared = {n for n, k in Counter(sizes).items() if k > 1}
    todo = [i for i, n in enumerate(sizes) if n in shared]
    ids: dict[bytes, int] = {}
    out = np.arange(len(files), dtype=np.int64)  # a file of its own size: its own group
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        # A batch of futures at a time (not one per file of a 700k-file folder), each batch
        # in file order: a group's id is its first file's index, whatever finishes first.
        for lo in range(0, len(todo), _HASH_BATCH):
            batch = todo[lo : lo + _HASH_BATCH]
            for i, digest in zip(
                batch, pool.map(_file_digest, [files[i] for i in batch]), strict=True
            ):
                out[i] = ids.setdefault(digest, i)
    return out


def _carve(train: list[_Row], val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) for the rows of a train folder, stratified by class
    (:func:`~pomlia_hpc.data.sources.base.stratified_split`), each class's files ranked by
    bytes 0..8 of their path hashes: deterministic given the files. Byte-identical files
    (copies under other names, in any class folder) then go to one split, that of the copy
    whose path ranks first (:func:`~pomlia_hpc.data.sources.base.keep_copies_together`)."""
    ranks = np.asarray([int.from_bytes(r[0][:8], "big") for r in train], np.uint64)
    codes = stratified_split(ranks, np.asarray([r[2] for r in train]), val_fraction, test_fraction)
    return keep_copies_together(codes, ranks, _content_groups([r[1] for r in train]))


def _lend(
    given: dict[str, list[_Row]], pool: list[_Row], codes: np.ndarray
) -> dict[str, list[_Row]]:
    """The rows of each split: those ``given`` by split folders, and the carved ``pool``'s
    by their ``codes``."""
    out: dict[str, list[_Row]] = {s: list(given.get(s, [])) for s in SPLITS}
    for row, code in zip(pool, codes, strict=True):
        out[SPLITS[code]].append(row)
    return out


def _fractions(
    path: Path, splits: dict[str, str], val: float | None, test: float | None
) -> tuple[float, float]:
    """(val, test) shares of the rows that are split by hash: all rows of a class-folder
    layout (default 0.1 each); with split folders (``splits``: their names by split), the
    train folder's rows, and only for a split that has no folder (default 0, so nothing is
    carved unless asked)."""
    if not splits:
        return (0.1 if val is None else val, 0.1 if test is None else test)
    for split, value in (("val", val), ("test", test)):
        if value is not None and split in splits:
            raise InputError(
                f"--{split}-fraction {value} does not apply: image folder '{path}' has a "
                f"{split} split folder ('{splits[split]}'): expected no --{split}-fraction "
                f"(it carves a {split} split from train only where the folder is missing "
                "or holds no file)"
            )
    return (val or 0.0, test or 0.0)


def _is_integer(name: str) -> bool:
    return name.isascii() and name.lstrip("-").isdigit() and name.count("-") <= 1


def _class_order(path: Path, classes: set[str], decl: LabelDecl) -> tuple[list[str], str]:
    """The class folders' names in label order, and how it was decided: as ``--class-names``
    lists them (``declared``; they must be exactly the class folders with images), by value
    when every name is an integer (``numeric``: ``2`` before ``10``, which text order put
    after ``1``: the order is an ordinal task's rank), else alphabetically."""
    if decl.class_names is not None:
        declared = list(decl.class_names)
        missing = sorted(classes - set(declared))
        extra = [c for c in declared if c not in classes]
        if missing or extra:
            problems = [f"no class folder with images named {c!r}" for c in extra[:3]]
            problems += [f"class folder {c!r} not named" for c in missing[:3]]
            what = "; ".join(problems)
            raise InputError(
                f"--class-names for image folder '{path}' ({what}): expected the class folders' "
                f"names ({', '.join(sorted(classes))}), each once, in the order wanted"
            )
        return declared, "declared"
    if classes and all(_is_integer(c) for c in classes):
        return sorted(classes, key=lambda c: (int(c), c)), "numeric"
    return sorted(classes), "alphabetical"


def _images(cdir: Path, root: Path) -> list[Path]:
    """Image files under class folder ``cdir`` of image folder ``root`` (nested folders too;
    hidden, system and other files and symlinks out of the folder skipped:
    :mod:`.folder_files`)."""
    out = []
    for f in walk_files(cdir, root):
        if is_other_file(f):
            continue
        check_image_suffix(f)
        out.append(f)
    return out


class FolderSource(Source):
    """Class sub-folders of images (see the module docstring for layouts and rules)."""

    def __init__(
        self,
        path: Path,
        decl: LabelDecl | None = None,
        *,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        limits: IngestLimits | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(path=path, kind="folder")
        self._limits = limits or IngestLimits()
        layout = read_layout(path)
        by_split = layout.kind != CLASS_FOLDERS
        fractions = _fractions(path, layout.splits, val_fraction, test_fraction)
        check_split_fractions(f"image folder '{path}'", *fractions)
        files, class_dirs = self._collect(layout, skip_unreadable)
        self._pool: list[_Row] = []
        if not by_split or any(fractions):
            # train lends rows to val/test, stratified by class (a split layout's fractions
            # are 0 unless asked, for a split without its folder).
            self._pool = files.pop("train")
            self._pool_codes = _carve(self._pool, *fractions)
            self._fractions = fractions
            self._given = files
            files = _lend(files, self._pool, self._pool_codes)
        classes = {c for rows in files.values() for _k, _f, c in rows}
        # A class folder without images is most likely a mistake: not made a class (a model
        # could never predict it), and `data add` names it.
        skipped = sorted(
            d.relative_to(path).as_posix() for d in class_dirs if nfc(d.name) not in classes
        )
        decl = decl or LabelDecl()
        self.class_names, self.extra["class_order"] = _class_order(path, classes, decl)
        if len(classes) == 1 and layout.kind != CLASS_SPLIT_FOLDERS:
            # One class whose images sit in sub-folders is most likely a layout one level too
            # deep (train/images/<class>/...): `data add` names the folder and its sub-folders.
            # (A class folder of split folders has its splits as sub-folders: not that.)
            only = next(d for d in class_dirs if nfc(d.name) in classes)
            self.extra["one_class_folder"] = {
                "folder": only.relative_to(path).as_posix(),
                "subfolders": [p.name for p in visible(only, path) if p.is_dir()],
            }
        self._limits.check_classes(f"image folder '{path}'", len(classes), "class folders")
        self._place(files)
        if not self._files:
            links = self.extra.get("skipped_symlinks")
            raise InputError(
                f"image folder '{path}' has zero images: expected class sub-folders "
                f"holding {', '.join(IMAGE_SUFFIXES)} files"
                + (
                    f" (skipped {links['count']} symlink(s): {links['files'][0]}...)"
                    if links
                    else ""
                )
            )
        self._scan()
        n = len(self.class_names)
        if (decl.task_type or "").startswith("multi-label"):
            raise InputError(
                f"image folder '{path}': --task-type multi-label does not apply (each image "
                "has one class, its folder): expected multi-class, binary or ordinal"
            )
        task = decl.task_type or ("binary-class" if n == 2 else "multi-class")
        check_binary(task, n, f"image folder '{path}' has {n} class folder(s) with images")
        self.label_info = LabelInfo(task, self.class_names, 1)
        carved = by_split and any(fractions)
        self.extra.update(
            {
                "layout": layout.kind,
                "split_folders": layout.splits if by_split else None,
                "val_fraction": fractions[0] if not by_split or carved else None,
                "test_fraction": fractions[1] if not by_split or carved else None,
            }
        )
        if skipped:
            self.extra["skipped_empty_folders"] = skipped
        if layout.empty_splits:
            self.extra["empty_split_folders"] = layout.empty_splits
        # Classes named like a split (no train folder at the top): kept as classes, but
        # `data add` notes them in case a split layout was meant.
        split_named = [
            c for c in self.class_names if not by_split and c.lower() in SPLIT_FOLDER_NAMES
        ]
        if split_named:
            self.extra["split_named_classes"] = split_named

    def _collect(
        self, layout: Layout, skip_unreadable: bool
    ) -> tuple[dict[str, list[_Row]], list[Path]]:
        """The rows of each split (a class-folder layout's all in train, to be carved) and
        the folders named as classes; records the files skipped (no image; unreadable with
        ``skip_unreadable``) in :attr:`extra`."""
        path = self.path
        # Per split: (SHA-256 of the path as the split layout names it, file, class); bytes
        # 0..8 of the digest rank a class's files for the carve, bytes 8..16 order the rows.
        files: dict[str, list[_Row]] = {s: [] for s in SPLITS}
        unreadable: list[str] = []
        check_class_names(path, layout.named)
        for cf in layout.class_folders:
            for f in _images(cf.folder, path):
                if skip_unreadable and (why := decodes(f, self._limits)) is not None:
                    unreadable.append(f"{f.relative_to(path).as_posix()} ({why})")
                    continue
                # The key, not the file's own path: root/<class>/<split>/ hashes as
                # root/<split>/<class>/ does, so both give the same rows and version.
                # NFC: a Mac's copy (NFD names) hashes, splits and versions as the original;
                # NFC and plain ASCII paths hash as before, so old versions keep their ids.
                rel = nfc(f"{cf.key}/{f.relative_to(cf.folder).as_posix()}")
                digest = hashlib.sha256(rel.encode()).digest()
                # A split folder fixes the split; a class-folder layout's rows all start in
                # train, and are carved like a split layout's train folder.
                files[cf.split or "train"].append((digest, f, nfc(cf.name)))
        others = other_files(path)
        if others:  # notes.txt, labels.csv: skipped, and `data add` names them
            self.extra["skipped_other_files"] = {
                "count": len(others),
                "files": others[:NAMED_SKIPPED],
            }
        links = skipped_symlinks(path)
        if links:  # out of the folder, broken, loops: skipped, and `data add` names them
            self.extra["skipped_symlinks"] = {"count": len(links), "files": links[:NAMED_SKIPPED]}
        if unreadable:
            self.extra["skipped_unreadable"] = {"count": len(unreadable), "files": unreadable}
        return files, layout.named

    def _place(self, files: dict[str, list[_Row]]) -> None:
        """Set the store's rows from the rows of each split (``files``)."""
        # Rows in hash order, not class by class: any run of rows (a chunk, a shuffle buffer,
        # the first N) then holds a mix of classes; adding files keeps the others' order.
        self._files = [
            (f, c) for s in SPLITS for _d, f, c in sorted(files[s], key=lambda r: r[0][8:16])
        ]
        self.split_sizes = {s: len(files[s]) for s in SPLITS if files[s]}

    @property
    def carves_split(self) -> bool:
        return bool(self._pool)

    def carry_splits(
        self,
        held: Held,
        apply: bool = True,
        like: StoredAs | None = None,
        tick: Callable[[int, int], None] | None = None,
    ) -> dict[str, int] | None:
        """See :meth:`~pomlia_hpc.data.sources.base.Source.carry_splits`: the carved files'
        pixels are decoded and hashed as the parent's store made its pixels."""
        if not self._pool:
            return None
        from pomlia_hpc.data.explicit_fingerprint import image_hashes

        hashes, ok = [], []
        for lo in range(0, len(self._pool), 64):  # 64 decoded images held at a time
            files = [f for _d, f, _c in self._pool[lo : lo + 64]]
            raw = np.stack([read_image(f, self.channels, self._depth) for f in files])
            try:
                px, can = convert_as(self._convert, raw, like, first_row=None)
            except InputError:
                self._pixels(files)  # names the file with the bad value
                raise
            hashes.append(image_hashes(px))
            ok.append(can)
            if tick is not None:
                tick(len(files), len(self._pool))
        # Only the splits without a folder of files are carved: a given one is never added to.
        asked = dict(zip(("val", "test"), self._fractions, strict=True))
        carved = frozenset(
            i for i, s in enumerate(SPLITS) if i and asked[s] > 0 and not self._given.get(s)
        )
        codes, counts = carried_codes(
            self._pool_codes, np.concatenate(hashes), held, carved, apply, np.concatenate(ok)
        )
        if apply:
            self._place(_lend(self._given, self._pool, codes))
        return counts

    def _scan(self) -> None:
        """First pass over headers: one size, one bit depth; any colour image makes it RGB."""
        first_path, first = self._files[0][0], read_header(self._files[0][0])
        check_side(f"image file '{first_path}'", first.height, first.width, self._limits)
        channels = first.channels
        gray = int(first.channels == 1)
        for f, _ in self._files[1:]:
            h = read_header(f)
            if (h.height, h.width) != (first.height, first.width):
                raise InputError(
                    f"image file '{f}' is {h.height}x{h.width} px: expected "
                    f"{first.height}x{first.width} like '{first_path}' (all images of a "
                    "dataset must have one size)"
                )
            if h.depth != first.depth:
                raise InputError(
                    f"image file '{f}' has pixel type {h.depth}: expected "
                    f"{first.depth} like '{first_path}'"
                )
            channels = max(channels, h.channels)
            gray += h.channels == 1
        self.height, self.width, self.channels = first.height, first.width, channels
        if channels == 3 and gray:
            # Kept with the version (meta["source"]) and shown by `data add`: not silent.
            self.extra["gray_to_rgb"] = gray
        self._depth = first.depth
        self._convert = PixelConverter(f"image folder '{self.path}'", np.dtype(first.depth))
        if self._convert.needs_max:
            for f, _ in self._files:
                self._convert.observe(read_image(f, channels, self._depth), name=f"file '{f}'")
            outlier = self._convert.outlier()
            if outlier:  # `data add` warns: one hot pixel darkens every image
                self.extra["intensity_outlier"] = outlier
        # Recorded for floats too (scaled by 255): how the stored pixels were made.
        self.extra["intensity_scaling"] = self._convert.scaling()

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.asarray([[index[c]] for _, c in self._files], np.int32).reshape(-1, 1)

    def _pixels(self, files: list[Path]) -> np.ndarray:
        """The stored uint8 pixels of ``files`` (decoded and converted); a value out of range
        names the file that holds it, not the batch's."""
        raw = np.stack([read_image(f, self.channels, self._depth) for f in files])
        try:
            return self._convert(raw)
        except InputError:
            for i, f in enumerate(files):
                one = replace(self._convert, where=f"image file '{f}'")
                one(raw[i : i + 1], first_row=None)
            raise

    def iter_rows(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, len(self._files), batch_rows):
            yield lo, self._pixels([f for f, _ in self._files[lo : lo + batch_rows]])
