"""An HDF5 file whose image or label dataset lies in another file (an external link, a
group reached through one, a virtual dataset mapping another file, raw external storage) is
refused in one line naming the link and that file: the version would name only this file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from pomlia_hpc.data.api import ingest
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

N = 12


def _private(tmp_path: Path) -> Path:
    path = tmp_path / "other" / "private.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f["imgs"] = np.random.default_rng(0).integers(0, 255, (N, 8, 8), dtype=np.uint8)
        f.create_group("g")["imgs"] = f["imgs"][()]
    return path


def _main(tmp_path: Path, build: Callable[[h5py.File, Path], None]) -> Path:
    private = _private(tmp_path)
    path = tmp_path / "main.h5"
    with h5py.File(path, "w") as f:
        f["labels"] = np.arange(N) % 2
        build(f, private)
    return path


def _external(f: h5py.File, private: Path) -> None:
    f["images"] = h5py.ExternalLink(str(private), "/imgs")


def _external_group(f: h5py.File, private: Path) -> None:
    f["grp"] = h5py.ExternalLink(str(private), "/g")


def _soft_to_external(f: h5py.File, private: Path) -> None:
    f["ext"] = h5py.ExternalLink(str(private), "/g")
    f["images"] = h5py.SoftLink("/ext/imgs")


def _virtual(f: h5py.File, private: Path) -> None:
    layout = h5py.VirtualLayout(shape=(N, 8, 8), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(private), "imgs", shape=(N, 8, 8))
    f.create_virtual_dataset("images", layout)


def _raw_external(f: h5py.File, private: Path) -> None:
    raw = private.with_name("raw.bin")
    raw.write_bytes(bytes(N * 64))
    f.create_dataset("images", (N, 8, 8), np.uint8, external=[(str(raw), 0, N * 64)])


@pytest.mark.parametrize(
    ("build", "images", "expected"),
    [
        (_external, "images", "'images' (--images images) is an external link to '/imgs' in "),
        (_external_group, "grp/imgs", "'grp' on the way to 'grp/imgs' (--images grp/imgs) is an "),
        (_soft_to_external, "images", "'ext' on the way to 'images' (--images images) is an "),
        (_virtual, "images", "dataset 'images' (--images images) has its data in file "),
        (_raw_external, "images", "dataset 'images' (--images images) has its data in file "),
    ],
)
def test_data_in_another_file_is_refused(
    data_add: Callable[..., str],
    tmp_path: Path,
    build: Callable[[h5py.File, Path], None],
    images: str,
    expected: str,
) -> None:
    main = _main(tmp_path, build)
    err = data_add(main, "--images", images, "--labels", "labels")
    assert f"HDF5 file '{main}': " in err and expected in err, err
    assert str(tmp_path / "other") in err, err  # the other file is named
    assert "expected a dataset stored in this file" in err, err


def test_links_inside_the_file_are_followed(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    def build(f: h5py.File, _private: Path) -> None:
        f["data/x"] = np.random.default_rng(1).integers(0, 255, (N, 8, 8), dtype=np.uint8)
        f["images"] = h5py.SoftLink("/data/x")
        layout = h5py.VirtualLayout(shape=(N, 8, 8), dtype=np.uint8)
        layout[:] = h5py.VirtualSource(f["data/x"])
        f.create_virtual_dataset("virtual", layout)

    main = _main(tmp_path, build)
    for name, images in (("soft", "images"), ("virt", "virtual")):
        rec = ingest(workspace, reg, name, main, images=images, labels="labels")
        assert sum(rec.meta["split_sizes"].values()) == N
