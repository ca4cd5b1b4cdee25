"""Dataset sources: MedMNIST flags, npz files with MedMNIST's keys, image folders, HDF5 files.

:func:`open_source` picks the kind from what ``source`` is and checks everything it can before
a single pixel is written (keys, shapes, dtypes, label counts and ranges, sizes in a folder).

=============================  ============================================================
``source``                     options
=============================  ============================================================
``"medmnist:pathmnist"`` or a  ``size`` (28/64/128/224), ``root``, ``download`` (bool),
MedMNIST flag (no such path)   ``mirror`` (base URL)
``x.npz``                      ``class_names``, ``n_classes``, ``task_type``
a folder                       ``class_names`` (the folders' names, in label order),
                               ``task_type``, ``val_fraction``, ``test_fraction``,
                               ``skip_unreadable`` (bool)
``x.h5`` / ``x.hdf5``          ``images``, ``labels``, ``split``, ``class_names``,
                               ``n_classes``, ``task_type``, ``val_fraction``, ``test_fraction``
=============================  ============================================================

Every kind also takes ``max_classes`` and ``max_side_px`` (:class:`~pomlia_hpc.data.sources.
base.IngestLimits`): caps checked from declared shapes before anything is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pomlia_hpc.data.medmnist_info import is_flag
from pomlia_hpc.data.sources.base import IngestLimits, LabelDecl, Source, take_options
from pomlia_hpc.errors import InputError, NotFoundError

HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")
# A command line gives every value as text, which the source converts to these types.
_LABEL_OPTS: dict[str, type] = {"class_names": list, "n_classes": int, "task_type": str}
_FRACTIONS: dict[str, type] = {"val_fraction": float, "test_fraction": float}

#: The options of each kind of source (the kinds of the module docstring) and the type of
#: value each expects; a None value counts as not given. The one list of what a kind takes:
#: :func:`open_source` refuses anything else, and a pipeline file's check reads it too.
SOURCE_OPTIONS: dict[str, dict[str, type]] = {
    "MedMNIST": {"size": int, "root": str, "download": bool, "mirror": str},
    "npz": _LABEL_OPTS,
    "folder": {"class_names": list, "task_type": str, **_FRACTIONS, "skip_unreadable": bool},
    "HDF5": {"images": str, "labels": str, "split": str, **_LABEL_OPTS, **_FRACTIONS},
}
#: Options every kind takes: the caps of :class:`IngestLimits` (whole numbers >= 1).
LIMIT_OPTIONS: dict[str, type] = {"max_classes": int, "max_side_px": int}


def file_kind(path: str | Path) -> str | None:
    """The kind of source (a key of :data:`SOURCE_OPTIONS`) a file is by its suffix: ``npz``
    or ``HDF5``; None for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return "npz"
    return "HDF5" if suffix in HDF5_SUFFIXES else None


def open_source(source: str | Path | Source, **options: Any) -> Source:
    """Open and validate ``source`` (see the module docstring for kinds and options)."""
    if isinstance(source, Source):
        take_options("prepared", options, ())
        return source
    text = str(source)
    opts = {k: v for k, v in options.items() if v is not None}
    limits = IngestLimits.from_options(opts)
    if text.startswith("medmnist:") or (not Path(text).exists() and is_flag(text)):
        from pomlia_hpc.data.sources.medmnist import medmnist_source

        take_options("MedMNIST", opts, tuple(SOURCE_OPTIONS["MedMNIST"]))
        return medmnist_source(
            text.removeprefix("medmnist:"),
            int(opts.get("size", 28)),
            opts.get("root"),
            download_ok=bool(opts.get("download", True)),
            mirror=opts.get("mirror"),
            limits=limits,
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise NotFoundError(
            f"source '{path}' does not exist: expected an .npz file, an HDF5 file, "
            "an image folder or a MedMNIST flag"
        )
    if path.is_dir():
        from pomlia_hpc.data.sources.folder import FolderSource

        take_options("folder", opts, tuple(SOURCE_OPTIONS["folder"]))
        decl = LabelDecl.from_options(opts)
        skip = opts.pop("skip_unreadable", False)
        if not isinstance(skip, bool):
            raise InputError(f"--skip-unreadable {skip!r}: expected true or false")
        fractions = {k: float(v) for k, v in opts.items()}
        return FolderSource(path, decl, limits=limits, skip_unreadable=skip, **fractions)
    kind = file_kind(path)
    if kind == "npz":
        from pomlia_hpc.data.sources.npz import NpzSource

        take_options(kind, opts, tuple(SOURCE_OPTIONS[kind]))
        return NpzSource(path, LabelDecl.from_options(opts), limits=limits)
    if kind == "HDF5":
        from pomlia_hpc.data.sources.hdf5 import Hdf5Source

        take_options(kind, opts, tuple(SOURCE_OPTIONS[kind]))
        decl = LabelDecl.from_options(opts)
        return Hdf5Source(path, decl, limits=limits, **opts)
    raise InputError(
        f"source file '{path}' has suffix '{path.suffix.lower()}': expected .npz, "
        f"{', '.join(HDF5_SUFFIXES)} or a folder"
    )


__all__ = [
    "LIMIT_OPTIONS",
    "SOURCE_OPTIONS",
    "IngestLimits",
    "LabelDecl",
    "Source",
    "file_kind",
    "open_source",
]
