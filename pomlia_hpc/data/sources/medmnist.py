"""Finding a MedMNIST npz: the local root first, then an md5-checked download.

Root, in order: the ``root`` option, ``$POMLIA_MEDMNIST_ROOT``, medmnist's default
(``~/.medmnist``). Offline, with no file, the error says exactly which file to place where.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from pomlia_hpc.data.medmnist_info import FlagInfo, check_size, default_root, flag_info
from pomlia_hpc.data.sources.base import IngestLimits
from pomlia_hpc.data.sources.npz import NpzSource
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import atomic_target

ROOT_ENV = "POMLIA_MEDMNIST_ROOT"
_BLOCK = 1 << 20


def medmnist_root(root: str | Path | None = None) -> Path:
    """The folder searched for MedMNIST npz files."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser() if env else default_root()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str, *, timeout_s: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` via a temp name in the same folder; check its md5 first."""
    with atomic_target(dest) as part:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, part.open("wb") as out:
            while block := resp.read(_BLOCK):
                out.write(block)
        got = _md5(part)
        if got != md5:
            raise InputError(
                f"download of '{dest.name}' from {url} has md5 {got}: expected {md5} "
                "(file damaged or changed upstream); nothing was kept"
            )
    return dest


def medmnist_file(
    flag: str,
    size: int = 28,
    root: str | Path | None = None,
    *,
    download_ok: bool = True,
    mirror: str | None = None,
    md5: str | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Path of ``{flag}.npz`` / ``{flag}_{size}.npz`` in the root, downloading it if missing.

    ``mirror`` replaces MedMNIST's download URL by ``{mirror}/{file name}``; ``md5`` replaces the
    checksum from INFO (for mirrors that serve other files, e.g. in tests).
    """
    info = flag_info(flag)
    check_size(size)
    base = medmnist_root(root)
    name = info.file_name(size)
    path = base / name
    if path.is_file():
        return path
    url = f"{mirror.rstrip('/')}/{name}" if mirror else info.url(size)
    expected = md5 or info.md5(size)
    place = (
        f"place '{name}' (md5 {expected}, from {info.url(size)}) in '{base}', or pass "
        "--root DIR pointing to the folder that holds it"
    )
    if not download_ok:
        raise InputError(
            f"MedMNIST file '{name}' is not in '{base}' and downloads are off: {place}"
        )
    try:
        return download(url, path, expected, timeout_s=timeout_s)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(
            f"MedMNIST file '{name}' is not in '{base}' and the download from {url} failed "
            f"({reason}): {place}"
        ) from exc


def medmnist_source(
    flag: str,
    size: int = 28,
    root: str | Path | None = None,
    *,
    download_ok: bool = True,
    mirror: str | None = None,
    limits: IngestLimits | None = None,
) -> NpzSource:
    """A source for MedMNIST ``flag`` at ``size`` px (checked against INFO)."""
    info: FlagInfo = flag_info(flag)
    path = medmnist_file(flag, size, root, download_ok=download_ok, mirror=mirror)
    return NpzSource(path, flag=info, size=size, limits=limits)
