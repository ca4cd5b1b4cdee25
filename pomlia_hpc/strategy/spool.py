"""The validated rows of a ``strategy import``, kept on disk between its reading and its insert.

The import reads and validates its file before it takes the registry's write lock, and inserts
what it validated inside one transaction; holding the rows in memory in between would take
about 3 KB a row (1.5 GB for 500,000), and reading the file a second time inside the
transaction held SQLite's write lock for as long as the parsing took (every other command
waited, or timed out). The rows go instead, chunk by chunk as they are validated, into an
anonymous temporary file (``tempfile.TemporaryFile``: no name, so nothing is left behind
whatever ends the process, and no other process can open it), pickled and compressed, and are
read back one chunk at a time for the insert. Only this process writes and reads the file.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from pomlia_hpc.errors import StorageError
from pomlia_hpc.storage import storage_errno
from pomlia_hpc.strategy.longformat import ResultRow

#: zlib's level for the chunks: the fastest (the table's repeated words compress well at any).
LEVEL = 1
_SIZE = 8  # bytes of a chunk's length before it
#: A row is kept as the tuple of its fields: rebuilt from it 2.5 times faster than a pickled
#: dataclass is (the rebuilding happens in the transaction).
_FIELDS = tuple(f.name for f in dataclasses.fields(ResultRow))


class RowSpool:
    """Chunks of rows written with :meth:`add`, read back in order with :meth:`chunks`. A
    context manager: the file is closed (and so gone) when the block ends."""

    def __init__(self, source: Path) -> None:
        self.source = source  # the file the rows were read from, for the messages
        self.n_rows = 0
        self._file: IO[bytes] | None = None

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, rows: list[ResultRow]) -> None:
        """Keep ``rows`` (one chunk) after those added before."""
        values = [tuple(getattr(r, f) for f in _FIELDS) for r in rows]
        data = zlib.compress(pickle.dumps(values, pickle.HIGHEST_PROTOCOL), LEVEL)
        try:
            if self._file is None:
                # closed (and so gone) by __exit__, which the import's block calls
                self._file = tempfile.TemporaryFile(prefix="pomlia-kb-import-")  # noqa: SIM115
            self._file.write(len(data).to_bytes(_SIZE, "little") + data)
        except OSError as exc:
            raise self._full(exc) from exc
        self.n_rows += len(rows)

    def chunks(self) -> Iterator[list[ResultRow]]:
        """The chunks added, in their order, one at a time."""
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            raise self._full(exc) from exc
        self._file.seek(0)
        while header := self._file.read(_SIZE):
            size = int.from_bytes(header, "little")
            values = pickle.loads(zlib.decompress(self._file.read(size)))
            yield [ResultRow(*v) for v in values]

    def _full(self, exc: OSError) -> Exception:
        """The error of a temporary folder that would not take the rows: one line naming it
        and what to do when it is full or read-only (``exc`` itself otherwise)."""
        number = storage_errno(exc)
        if number is None:
            return exc
        folder = tempfile.gettempdir()
        return StorageError(
            f"{self.source}: its validated rows cannot be kept in the temporary folder "
            f"{folder} until they are inserted ({exc.strerror or exc}); free space there or "
            "set TMPDIR to a folder with room, and import it again; nothing was imported",
            number,
            exc.strerror or "",
            folder,
        )
