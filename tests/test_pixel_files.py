"""Image files are decoded by one rule at ingest and in the server (a tester's findings):
palette, CMYK and MinIsWhite TIFFs are their rendering, not raw samples; 16-bit RGB (TIFF and
PNG) keeps its depth; float TIFFs are served as trained; a training file is served exactly as
it was stored; a hot pixel that squashes a 16-bit data set is warned of; a bad value names its
own file; a TIFF stack is named as one; bilevel TIFFs and RGBA arrays are read like bilevel
and RGBA PNGs; float sources record their conversion."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_version
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

SIDE = 12
RNG = np.random.default_rng(7)


def rgb8(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def png_16_bit_rgb(path: Path, x: np.ndarray) -> None:
    """A 48-bit PNG written by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    h, w, _ = x.shape
    raw = b"".join(b"\x00" + x[i].astype(">u2").tobytes() for i in range(h))
    head = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    data = chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)


def rgb16(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (SIDE, SIDE, 3), dtype=np.uint16)


def palette(seed: int) -> Image.Image:
    return Image.fromarray(rgb8(seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)


WRITERS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "palette tiff": (".tif", lambda p, s: palette(s).save(p)),
    "palette png": (".png", lambda p, s: palette(s).save(p)),
    "cmyk tiff": (".tif", lambda p, s: Image.fromarray(rgb8(s)).convert("CMYK").save(p)),
    "cmyk jpeg": (".jpg", lambda p, s: Image.fromarray(rgb8(s)).convert("CMYK").save(p)),
    "miniswhite tiff": (
        ".tif",
        lambda p, s: tifffile.imwrite(p, rgb8(s)[..., 0], photometric="miniswhite"),
    ),
    "grey png": (".png", lambda p, s: Image.fromarray(rgb8(s)[..., 0]).save(p)),
    "16-bit rgb tiff": (".tif", lambda p, s: tifffile.imwrite(p, rgb16(s), photometric="rgb")),
    "16-bit rgb png": (".png", lambda p, s: png_16_bit_rgb(p, rgb16(s))),
    "16-bit grey png": (".png", lambda p, s: Image.fromarray(rgb16(s)[..., 0]).save(p)),
    "float tiff": (
        ".tif",
        lambda p, s: tifffile.imwrite(p, np.random.default_rng(s).random((SIDE, SIDE))),
    ),
    "float rgb tiff": (
        ".tif",
        lambda p, s: tifffile.imwrite(
            p,
            np.random.default_rng(s).random((SIDE, SIDE, 3)).astype(np.float32),
            photometric="rgb",
        ),
    ),
    "bilevel tiff": (".tif", lambda p, s: Image.fromarray(rgb8(s)[..., 0] > 127).save(p)),
    "bilevel png": (".png", lambda p, s: Image.fromarray(rgb8(s)[..., 0] > 127).save(p)),
}


def folder(root: Path, kind: str, n: int = 3) -> list[Path]:
    """An image folder of 2 classes of ``n`` files of ``kind``; the files, in order."""
    suffix, write = WRITERS[kind]
    files = []
    for c, cls in enumerate("ab"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            files.append(root / cls / f"{i}{suffix}")
            write(files[-1], 10 * c + i)
    return files


def stored(workspace: Workspace, name: str) -> tuple[np.ndarray, dict]:
    ds = open_version(workspace, name)
    return np.asarray(ds.images[:]), ds.meta


def rows(x: np.ndarray) -> list[bytes]:
    return sorted(r.tobytes() for r in x)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_the_server_decodes_a_training_file_as_its_stored_row(
    workspace: Workspace, reg: Registry, tmp_path: Path, kind: str
) -> None:
    files = folder(tmp_path / "f", kind)
    ingest(workspace, reg, "d", tmp_path / "f")
    images, meta = stored(workspace, "d")
    scaling = meta["source"].get("intensity_scaling") or {}
    top = scaling.get("max") if scaling.get("from") == "uint16" else None
    spec = InputSpec(SIDE, images.shape[-1], top)  # as the server builds it from the card
    served = np.concatenate([decode(f.read_bytes(), None, spec, Limits()) for f in files])
    # Exactly the stored 8-bit rows over 255, not rounded here: float files too are served at
    # the 8-bit steps ingest stores them at (unrounded floats were served before).
    as_stored = np.multiply(images, np.float32(1 / 255), dtype=np.float32)
    assert rows(served) == rows(as_stored), kind
    if kind.startswith(("16-bit", "float")):
        assert scaling, meta["source"]  # how the pixels were converted is recorded


def test_tiffs_are_stored_as_they_render(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    def ingested(kind: str) -> np.ndarray:
        folder(tmp_path / kind, kind)
        ingest(workspace, reg, kind.replace(" ", "-"), tmp_path / kind)
        return stored(workspace, kind.replace(" ", "-"))[0]

    seeds = [0, 1, 2, 10, 11, 12]
    # Palette TIFF: its RGB rendering, as a palette PNG's (was 1 channel of palette indices).
    assert rows(ingested("palette tiff")) == rows(ingested("palette png"))
    # CMYK TIFF: Pillow's RGB rendering (was C, M, Y stored as R, G, B and K dropped).
    cmyk = [np.asarray(Image.fromarray(rgb8(s)).convert("CMYK").convert("RGB")) for s in seeds]
    assert rows(ingested("cmyk tiff")) == rows(np.stack(cmyk))
    # MinIsWhite: inverted to what it looks like (was stored inverted).
    assert rows(ingested("miniswhite tiff")) == rows(
        np.stack([255 - rgb8(s)[..., :1] for s in seeds])
    )
    # 16-bit RGB PNG: read at full depth (was cut to its high byte, max 15), as the TIFF.
    png16 = ingested("16-bit rgb png")
    assert png16.max() == 255
    assert rows(png16) == rows(ingested("16-bit rgb tiff"))
    # A 1-bit TIFF is grey 0/255, as a 1-bit PNG (was refused: "pixel type bool").
    assert rows(ingested("bilevel tiff")) == rows(ingested("bilevel png"))


def test_a_hot_pixel_that_squashes_a_16_bit_data_set_is_warned_of(
    workspace: Workspace, tmp_path: Path
) -> None:
    files = folder(tmp_path / "hot", "16-bit grey png", n=8)  # 2304 px: a percentile
    hot = rgb16(11)[..., 0]
    hot[3, 4] = 65535
    Image.fromarray(hot).save(files[4])
    text = " ".join(cli_ok("data", "add", "hot", str(tmp_path / "hot")).split())
    assert f"warning: the largest 16-bit value, 65535 (file '{files[4]}')" in text, text
    assert "99.9th percentile" in text and "clip the values" in text, text
    calm = folder(tmp_path / "calm", "16-bit grey png", n=8)
    assert calm and "largest 16-bit value" not in cli_ok(
        "data", "add", "calm", str(tmp_path / "calm")
    )


@pytest.mark.parametrize("bad", [1.5, np.nan])
def test_a_bad_float_value_names_its_own_file(
    tmp_path: Path, data_add: Callable[..., str], bad: float
) -> None:
    files = folder(tmp_path / "f", "float tiff", n=8)
    wrong = tmp_path / "f" / "b" / "7.tif"
    tifffile.imwrite(wrong, np.random.default_rng(3).random((SIDE, SIDE)) * bad)
    err = " ".join(data_add(tmp_path / "f").split())
    assert f"image file '{wrong}' has" in err, err
    assert "onwards" not in err and str(files[0]) not in err, err


def test_a_multi_page_tiff_is_named_as_a_stack(
    tmp_path: Path, data_add: Callable[..., str]
) -> None:
    folder(tmp_path / "f", "grey png")
    stack = tmp_path / "f" / "a" / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, SIDE, SIDE), np.uint8))
    err = " ".join(data_add(tmp_path / "f").split())
    assert f"image file '{stack}' is a 5-page TIFF stack: expected one image per file" in err


@pytest.mark.parametrize("fourth", ["opaque", "data"])
def test_rgba_arrays_drop_alpha_as_rgba_pngs_do(
    workspace: Workspace, reg: Registry, tmp_path: Path, fourth: str
) -> None:
    # A 4th channel that varies may be a 4th fluorescence channel, not alpha: it is dropped
    # all the same (an array has no word for what it is), and `data add` warns it was lost.
    x = RNG.integers(0, 256, (20, SIDE, SIDE, 4), dtype=np.uint8)
    if fourth == "opaque":
        x[..., 3] = 255
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(20) % 2
    text = " ".join(
        cli_ok(
            "data", "add", "rgba", str(tmp_path / "d.h5"), "--images", "x", "--labels", "y"
        ).split()
    )
    warned = "If it is a 4th channel of data (a fluorescence channel), it was lost" in text
    assert warned == (fourth == "data"), text
    assert ("alpha channel was dropped" in text) == (fourth == "opaque"), text
    images, meta = stored(workspace, "rgba")
    assert rows(images) == rows(x[..., :3]) and meta["source"]["alpha_dropped"] is True
    assert meta["source"].get("alpha_varies", False) == (fourth == "data")


def test_float_sources_record_their_conversion(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = RNG.random((20, SIDE, SIDE)).astype(np.float32), np.arange(20) % 2
    ingest(workspace, reg, "h", tmp_path / "d.h5", images="x", labels="y")
    folder(tmp_path / "f", "float tiff")
    ingest(workspace, reg, "t", tmp_path / "f")
    for name in ("h", "t"):
        scaling = stored(workspace, name)[1]["source"]["intensity_scaling"]
        assert scaling == {"from": "float32", "range": [0, 1], "to": "uint8 0..255 linear"}


def test_a_16_bit_rgb_png_upload_keeps_its_depth(tmp_path: Path) -> None:
    x = rgb16(5)
    png_16_bit_rgb(tmp_path / "x.png", x)
    out = decode((tmp_path / "x.png").read_bytes(), None, InputSpec(SIDE, 3, None), Limits())
    np.testing.assert_allclose(out[0], x / 65535, atol=1e-6)  # not its high byte / 255


def png_16_bit_grey_alpha(path: Path, grey: np.ndarray) -> None:
    """A 16-bit grey + alpha PNG (colour type 4, written by hand: Pillow cannot write one),
    opaque."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    h, w = grey.shape
    x = np.stack([grey, np.full_like(grey, 65535)], axis=-1)
    raw = b"".join(b"\x00" + x[i].astype(">u2").tobytes() for i in range(h))
    head = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    data = chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)


def test_a_16_bit_grey_alpha_png_is_grey_at_full_depth(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # Pillow opens these as 8-bit RGBA (each sample's high byte): 12-bit data became a colour
    # data set of values 0..15, and a grey model refused the upload as colour.
    greys = {}
    for c, cls in enumerate("ab"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(3):
            greys[tmp_path / "f" / cls / f"{i}.png"] = rgb16(10 * c + i)[..., 0]
    for path, grey in greys.items():
        png_16_bit_grey_alpha(path, grey)
    ingest(workspace, reg, "la", tmp_path / "f")
    images, meta = stored(workspace, "la")
    top = max(float(g.max()) for g in greys.values())
    assert images.shape[-1] == 1 and meta["source"]["intensity_scaling"]["max"] == top
    expected = [(g.astype(np.float32) * (255 / top) + 0.5).astype(np.uint8) for g in greys.values()]
    assert rows(images[..., 0]) == rows(np.stack(expected))
    path, grey = next(iter(greys.items()))
    out = decode(path.read_bytes(), None, InputSpec(SIDE, 1, None), Limits())
    np.testing.assert_allclose(out[0, ..., 0], grey / 65535, atol=1e-6)


@pytest.mark.parametrize("writer", ["imagej", "ome"])
def test_a_tiff_of_channels_stored_as_pages_is_one_image_refused(
    tmp_path: Path, data_add: Callable[..., str], writer: str
) -> None:
    # ImageJ, Fiji and OME writers keep each fluorescence channel as a grey page: the server
    # answered one prediction per channel, and ingest called it a stack to save page by page.
    path = tmp_path / "f" / "a" / "cells.tif"
    folder(tmp_path / "f", "grey png")
    x = np.random.default_rng(3).integers(0, 4096, (4, SIDE, SIDE), dtype=np.uint16)
    kind = {"imagej": "an ImageJ hyperstack", "ome": "an OME-TIFF"}[writer]
    tifffile.imwrite(path, x, metadata={"axes": "CYX"}, **{writer: True})
    said = f"is {kind} of 4 channels stored as 4 grey pages: expected one grey or RGB image"
    with pytest.raises(RequestError) as info:
        decode(path.read_bytes(), "image/tiff", InputSpec(SIDE, 3, 4095.0), Limits())
    assert info.value.status == 400 and said in info.value.message
    err = " ".join(data_add(tmp_path / "f").split())
    assert f"image file '{path}' {said}" in err
    if writer == "imagej":  # tifffile calls a grey stack's pages channels unless told
        assert "metadata={'axes': 'ZYX'}), which without axes calls every page a" in err, err
    # A stack of slices (not channels) is still one image per page in the server.
    tifffile.imwrite(path, x, imagej=True, metadata={"axes": "ZYX"})
    slices = decode(path.read_bytes(), "image/tiff", InputSpec(SIDE, 1, 4095.0), Limits())
    assert slices.shape == (4, SIDE, SIDE, 1)
