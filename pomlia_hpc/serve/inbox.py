"""Kept inputs: every decoded input image, stored durably next to the prediction log.

Opt-in (``pomlia serve --keep-inputs``). Layout::

    <log dir>/inputs/<start time>-<host>-<pid>-<seq>.pin

Each server process appends to its own chunk files (rotated after ``chunk_bytes``), one
record per image, keyed by the prediction id the client got back::

    b"PIN1" | u32 header length | header JSON {"id", "time", "shape", "dtype"}
            | u64 payload length | payload (C-order pixels) | u32 CRC-32 of header + payload

Pixels are stored as decoded (float32 in [0, 1]), or as uint8 when every value is an exact
multiple of 1/255 (what PNG/JPEG uploads decode to), a quarter of the size and lossless.

Durability: the prediction log's writer thread writes a group's images here, fsyncs, and only
then writes and fsyncs the group's log lines and answers (:class:`~.predlog.PredictionLog`
``sidecar``). So an answered prediction has its record and its input on disk, and every logged
prediction with ``"input_kept": true`` has its image. A torn last record (power loss) fails its
length or CRC check and is skipped by :func:`read_inputs` (with a warning where the record is
whole and only its CRC fails: that can also be damage to an answered input).

Quota and retention: at start, after each rotation and whenever a write would take the folder
over the byte quota, chunk files older than the retention period are removed, then the oldest
files until the folder fits the quota. The file being written is never removed (a chunk is at
most a quarter of the quota). Removals are logged with what they dropped. The byte count is
this process's view: several servers sharing one folder each keep to the quota only roughly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pomlia_hpc.files import PRIVATE_FILE, fsync_path, make_private_dirs

log = logging.getLogger("pomlia.serve")

MAGIC = b"PIN1"
SUFFIX = ".pin"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def inputs_dir(log_dir: Path) -> Path:
    """Where a server logging to ``log_dir`` keeps its inputs."""
    return Path(log_dir) / "inputs"


def encode_image(prediction_id: str, when: str, image: np.ndarray) -> bytes:
    """One inbox record for ``image`` (float32 HWC in [0, 1], as the server decoded it)."""
    scaled = image * np.float32(255)
    as_u8 = np.rint(scaled)
    if np.array_equal(as_u8, scaled):  # an 8-bit upload: lossless as uint8
        pixels = as_u8.astype(np.uint8)
    else:
        pixels = np.ascontiguousarray(image, dtype=np.float32)
    header = json.dumps(
        {"id": prediction_id, "time": when, "shape": list(pixels.shape), "dtype": pixels.dtype.str},
        separators=(",", ":"),
    ).encode()
    payload = pixels.tobytes()
    crc = zlib.crc32(payload, zlib.crc32(header))
    return b"".join(
        (MAGIC, _U32.pack(len(header)), header, _U64.pack(len(payload)), payload, _U32.pack(crc))
    )


@dataclass(frozen=True)
class KeptInput:
    """One stored input: its prediction id, the time it was predicted (ISO, UTC), the pixels
    (uint8 0..255 or float32 in [0, 1], HWC) and where it came from."""

    id: str
    time: str
    image: np.ndarray
    path: Path

    def as_uint8(self) -> np.ndarray:
        """The pixels as uint8 HWC (float inputs rounded to the nearest 1/255)."""
        if self.image.dtype == np.uint8:
            return self.image
        return np.clip(np.rint(self.image * 255.0), 0, 255).astype(np.uint8)


def _record_at(data: bytes, pos: int, path: Path) -> tuple[KeptInput | None, int] | None:
    """The record that starts at byte ``pos`` of chunk file ``path``'s ``data`` (None for one
    whose CRC check fails) and where the next one starts; None where no whole record starts
    there (a torn tail, or framing that is damaged)."""
    end = len(data)
    if data[pos : pos + 4] != MAGIC or pos + 8 > end:
        return None
    (hlen,) = _U32.unpack_from(data, pos + 4)
    hstart = pos + 8
    if hstart + hlen + 8 > end:
        return None
    header = data[hstart : hstart + hlen]
    (plen,) = _U64.unpack_from(data, hstart + hlen)
    pstart = hstart + hlen + 8
    if pstart + plen + 4 > end:
        return None
    payload = data[pstart : pstart + plen]
    (crc,) = _U32.unpack_from(data, pstart + plen)
    after = pstart + plen + 4
    if zlib.crc32(payload, zlib.crc32(header)) != crc:
        return None, after
    meta = json.loads(header)
    image = np.frombuffer(payload, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
    return KeptInput(str(meta["id"]), str(meta["time"]), image, path), after


def _read_file(path: Path) -> Iterator[KeptInput]:
    """The records of one chunk file. A short or inconsistent last record is the torn tail of
    a crashed writer (its prediction was never answered: the input is flushed before the
    answer), skipped without a word. A damaged record (a flipped byte on disk) is skipped with
    a warning naming the file and byte, the last one too where it is whole but fails its CRC
    (a crash can also leave that, but an answered input may have been lost); before the end,
    reading goes on at the next record (found by its magic where the damage hit the framing):
    the records after it are kept."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        found = _record_at(data, pos, path)
        if found is not None and found[0] is not None:
            yield found[0]
            pos = found[1]
            continue
        # The next record: after this one's end where its lengths lead to a record (or the
        # end), else by its magic (a damaged length may point past whole records).
        after = found[1] if found is not None else -1
        held = after == len(data) or data[after : after + 4] == MAGIC
        nxt = after if after > pos and held else data.find(MAGIC, pos + 1)
        if nxt < 0 or nxt >= len(data):
            if found is not None:  # whole, but its CRC fails: damage, not a write cut short
                log.warning(
                    "kept inputs %s: the last record, at byte %d (%d bytes), fails its "
                    "checksum and was skipped (damaged on disk, or its write was cut short "
                    "by a crash)",
                    path,
                    pos,
                    found[1] - pos,
                )
            return  # nothing whole after it
        log.warning(
            "kept inputs %s: a damaged record at byte %d (%d bytes) was skipped; the records "
            "after it are read",
            path,
            pos,
            nxt - pos,
        )
        pos = nxt


def read_inputs(directory: Path, ids: Iterable[str] | None = None) -> Iterator[KeptInput]:
    """Every kept input under ``directory`` (files in name order), or only those whose
    prediction id is in ``ids``. A torn or damaged tail of a file is skipped."""
    wanted = set(ids) if ids is not None else None
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        for item in _read_file(path):
            if wanted is None or item.id in wanted:
                yield item


class Inbox:
    """Append-only chunk files of kept inputs; written only from the prediction log's writer
    thread (through :meth:`write`), so it needs no lock of its own."""

    def __init__(
        self,
        directory: Path,
        *,
        quota_bytes: int = 1 << 30,
        retention_s: float = 30 * 86400.0,
        chunk_bytes: int = 64 << 20,
        fsync: bool = True,
    ) -> None:
        if quota_bytes < 1 or retention_s <= 0 or chunk_bytes < 1:
            raise ValueError("quota_bytes, retention_s and chunk_bytes must be positive")
        self.directory = Path(directory)
        make_private_dirs(self.directory)  # clinical data: the owner's alone
        self.quota_bytes = quota_bytes
        self.retention_s = retention_s
        # A chunk never exceeds the quota, or pruning could never bring the folder under it.
        self.chunk_bytes = min(chunk_bytes, max(1, quota_bytes // 4))
        self.fsync = fsync
        self.written_bytes = 0
        self.removed_files = 0
        host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
        self._stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{host[:64]}-{os.getpid()}"
        self._seq = 0
        self._fd = -1
        self._size = 0
        self._total = 0  # bytes in the folder as of the last prune, plus what was written since
        self._open_next()
        self.prune()

    @property
    def path(self) -> Path:
        """The chunk file being written now."""
        return self.directory / f"{self._stem}-{self._seq:04d}{SUFFIX}"

    def _open_next(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._seq += 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        self._size = 0
        fsync_path(self.directory)

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole records) and fsync; raises ``OSError`` if it cannot. A failed
        write is cut back, so the file never holds a torn record before a good one."""
        if not data:
            return
        # no file: the last one's successor could not be created (a full disk); try again
        if self._fd < 0 or (self._size and self._size + len(data) > self.chunk_bytes):
            self._open_next()
            self.prune()
        if self._total + len(data) > self.quota_bytes:
            self.prune(incoming=len(data))
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self._total += len(data)
        self.written_bytes += len(data)

    def prune(self, now: float | None = None, incoming: int = 0) -> list[Path]:
        """Remove chunk files past the retention period, then the oldest ones until the
        folder plus ``incoming`` bytes fits the quota (never the file being written).
        Returns what was removed."""
        now = time.time() if now is None else now
        files = []
        for p in self.directory.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, p.name, p, st.st_size))
        files.sort()
        total = sum(f[3] for f in files)
        removed: list[Path] = []
        for mtime, _name, p, size in files:
            if p == self.path:
                continue
            expired = now - mtime > self.retention_s
            if not expired and total + incoming <= self.quota_bytes:
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            total -= size
            removed.append(p)
            log.warning(
                "kept inputs: removed %s (%d bytes, %s)",
                p.name,
                size,
                "past the retention period" if expired else "over the byte quota",
            )
        self.removed_files += len(removed)
        self._total = total
        return removed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
