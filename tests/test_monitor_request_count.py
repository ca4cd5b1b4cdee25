"""Answered requests are counted from the log's records: a batch once, at its first record
(the one with ``request_images``), a single image once. Counting ``predictions - sum(k - 1)``
went negative when a torn or corrupt line cut a batch short: 3 refusals and the first 3
records of a 100-image batch gave -93 requests and a refused share of -3.2%."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fixtures.factories import log_line, log_window

T = "2026-01-01T00:00:00.000000+00:00"
T2 = "2026-01-01T00:00:01.000000+00:00"


def write(path: Path, *lines: dict | bytes, torn: bool = False) -> None:
    data = b"".join(x if isinstance(x, bytes) else orjson.dumps(x) + b"\n" for x in lines)
    path.write_bytes(data + (b'{"type":"predic' if torn else b""))


def test_a_torn_batch_is_one_request(tmp_path: Path) -> None:
    rejections = [log_line("rejection", time=T) for _ in range(3)]
    batch = [log_line("prediction", time=T, request_images=100)]
    batch += [log_line("prediction", time=T) for _ in range(2)]
    write(tmp_path / "a.jsonl", *rejections, *batch, torn=True)
    win = log_window(tmp_path)
    assert win.n_predictions == 3 and win.torn_lines == 1
    assert win.n_requests == 1 and win.short_batches == 1
    assert sum(win.rejections.values()) == 3  # refused share: 3 of 4


def test_a_corrupt_line_inside_a_batch_does_not_hide_the_next_request(tmp_path: Path) -> None:
    batch = [log_line("prediction", time=T, request_images=3), b"{not json\n"]
    batch += [log_line("prediction", time=T)]
    # Single images of the same commit (same time) right after it.
    single = [log_line("prediction", time=T), log_line("prediction", time=T)]
    # A batch cut short in the first file, a whole one of 2 and a single image in the second.
    short = [log_line("prediction", time=T, request_images=5), log_line("prediction", time=T)]
    whole = [log_line("prediction", time=T2, request_images=2), log_line("prediction", time=T2)]
    write(tmp_path / "a.jsonl", *batch, *single, *short)
    write(tmp_path / "b.jsonl", *whole, log_line("prediction", time=T2))
    win = log_window(tmp_path)
    assert win.corrupt_lines == 1 and win.n_predictions == 9
    # 3-image batch, 2 singles, the short batch, the whole batch, 1 single.
    assert win.n_requests == 6 and win.short_batches == 1
