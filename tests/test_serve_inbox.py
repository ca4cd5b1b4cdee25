"""Kept inputs: the inbox's record format, torn tails, quota and retention, and the commit it
shares with the prediction log (inputs on disk before the log line, before the answer)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from pomlia_hpc.serve.inbox import Inbox, encode_image, read_inputs
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predlog import PredictionLog
from tests.fixtures.factories import log_line


def _u8(seed: int, shape: tuple[int, ...] = (8, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_round_trip_keeps_8_bit_inputs_exactly_and_floats_as_floats(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    u8 = _u8(0)
    f32 = np.random.default_rng(1).random((8, 8, 1), dtype=np.float32)
    inbox.write(encode_image("a" * 32, "t0", u8.astype(np.float32) / np.float32(255)))
    inbox.write(encode_image("b" * 32, "t1", f32))
    inbox.close()
    got = {k.id: k for k in read_inputs(tmp_path)}
    assert got["a" * 32].image.dtype == np.uint8
    np.testing.assert_array_equal(got["a" * 32].image, u8)
    assert got["b" * 32].image.dtype == np.float32
    np.testing.assert_array_equal(got["b" * 32].image, f32)
    assert [k.id for k in read_inputs(tmp_path, ids=["b" * 32])] == ["b" * 32]


def test_torn_tail_is_skipped_and_a_damaged_last_record_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox(tmp_path)
    records = [encode_image(f"{i:032x}", "t", _u8(i).astype(np.float32) / 255) for i in range(3)]
    for record in records:
        inbox.write(record)
    inbox.close()
    path = inbox.path
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])  # power loss in the middle of the last record
    with caplog.at_level("WARNING", logger="pomlia.serve"):
        assert [k.id for k in read_inputs(tmp_path)] == [f"{i:032x}" for i in range(2)]
    assert not caplog.records  # a torn tail is a write that was never answered: no word
    damaged = bytearray(whole)
    damaged[-20] ^= 0xFF  # a flipped byte in the last payload: its CRC fails
    path.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING", logger="pomlia.serve"):
        assert len(list(read_inputs(tmp_path))) == 2
    # Whole but failing its CRC: it may have been answered, so it is not dropped silently.
    start = len(whole) - len(records[2])
    assert [r.getMessage() for r in caplog.records] == [
        f"kept inputs {path}: the last record, at byte {start} ({len(records[2])} bytes), "
        "fails its checksum and was skipped (damaged on disk, or its write was cut short by a "
        "crash)"
    ]


def test_a_damaged_record_before_the_end_loses_only_itself_and_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading stopped at the first record that failed its check, so a flipped byte in the
    middle of a chunk lost every later input of the file without a word."""
    inbox = Inbox(tmp_path)
    records = [encode_image(f"{i:032x}", "t", _u8(i).astype(np.float32) / 255) for i in range(4)]
    for record in records:
        inbox.write(record)
    inbox.close()
    path, whole = inbox.path, inbox.path.read_bytes()
    second = len(records[0])
    # the payload length of record 1 (u64 after its header) made 64 bytes longer: it still
    # ends inside the file, past the start of record 2, which must not be skipped with it
    plen_at = second + 8 + int.from_bytes(whole[second + 4 : second + 8], "little")
    longer = int.from_bytes(whole[plen_at : plen_at + 8], "little") + 64
    for where, what in (
        (second + len(records[1]) - 20, "payload"),
        (second + 1, "magic"),
        (plen_at, "length"),
    ):
        damaged = bytearray(whole)
        if what == "length":
            damaged[where : where + 8] = longer.to_bytes(8, "little")
        else:
            damaged[where] ^= 0xFF
        path.write_bytes(bytes(damaged))
        caplog.clear()
        with caplog.at_level("WARNING", logger="pomlia.serve"):
            ids = [k.id for k in read_inputs(tmp_path)]
        assert ids == [f"{i:032x}" for i in (0, 2, 3)], what
        said = [r.getMessage() for r in caplog.records]
        assert said == [
            f"kept inputs {path}: a damaged record at byte {second} ({len(records[1])} bytes) "
            "was skipped; the records after it are read"
        ], (what, said)


def test_quota_removes_oldest_chunks_and_retention_removes_expired(tmp_path: Path) -> None:
    record = encode_image("c" * 32, "t", _u8(0, (32, 32, 3)).astype(np.float32) / 255)
    inbox = Inbox(tmp_path, quota_bytes=len(record) * 8, chunk_bytes=len(record) * 2)
    for _ in range(20):
        inbox.write(record)
    files = sorted(tmp_path.glob("*.pin"))
    assert sum(p.stat().st_size for p in files) <= inbox.quota_bytes
    assert inbox.removed_files > 0 and inbox.path in files  # the open chunk is never removed
    old = files[0]
    os.utime(old, (time.time() - 10 * 86400, time.time() - 10 * 86400))
    assert old not in inbox.prune()  # 10 days old, 30 days kept
    short = Inbox(tmp_path, retention_s=86400.0)  # a new server with a 1-day retention
    assert not old.exists() and short.path.exists()


def test_inputs_are_durable_before_the_log_line_and_the_answer(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inputs")
    plog = PredictionLog(tmp_path, sidecar=inbox)
    answered = threading.Event()
    seen: dict[str, object] = {}

    def done(err: BaseException | None) -> None:
        # Runs after the commit: both the input and its record must already be readable.
        seen["inputs"] = [k.id for k in read_inputs(tmp_path / "inputs")]
        seen["records"] = [r.id for r in read_records(tmp_path)]
        seen["err"] = err
        answered.set()

    pid = "d" * 32
    plog.append(
        [log_line("prediction", id=pid, input_kept=True)],
        done,
        inputs=encode_image(pid, "t", _u8(3).astype(np.float32) / 255),
    )
    assert answered.wait(10)
    plog.close()
    assert seen == {"inputs": [pid], "records": [pid], "err": None}


def test_inbox_refuses_nonsense_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Inbox(tmp_path, quota_bytes=0)


def test_feedback_joins_kept_inputs_by_prediction_id_within_the_window(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pomlia_hpc.serve.labelled import labelled_inputs

    plog = PredictionLog(tmp_path, sidecar=Inbox(tmp_path / "inputs"))
    ids = [f"{i:032x}" for i in range(4)]
    for i, pid in enumerate(ids[:3]):  # the fourth prediction's input was not kept
        img = _u8(i).astype(np.float32) / 255
        plog.append(
            [log_line("prediction", id=pid, model_version="v1")],
            inputs=encode_image(pid, "t", img),
        )
    fb = [
        (ids[0], 1, "2026-01-01T00:00:00+00:00"),  # before the window
        (ids[1], 2, "2026-02-01T00:00:00+00:00"),
        (ids[3], 0, "2026-02-01T00:00:00+00:00"),  # no kept input
        (ids[1], 3, "2026-02-02T00:00:00+00:00"),  # a second label: the last one wins
    ]
    plog.append([log_line("feedback", prediction_id=p, label_index=y, time=t) for p, y, t in fb])
    plog.close()
    got = labelled_inputs(tmp_path, since=datetime(2026, 1, 15, tzinfo=UTC))
    assert got.ids == [ids[1]] and got.labels == [[3]] and got.versions == ["v1"]
    np.testing.assert_array_equal(got.image_array()[0], _u8(1))
    assert got.counts == {
        "feedback": 4,
        "outside_window": 1,
        "no_input": 1,
        "used": 1,
    }


def test_the_join_reads_the_files_its_window_needs_not_the_whole_log(tmp_path: Path) -> None:
    """A day's harvest read every file of a month's log, twice (58 s for 1 GB): files last
    written before the window are not opened for feedback (here an old one with a line this
    version cannot read, which stopped the join), and the answering versions are looked up
    newest file first."""
    from datetime import UTC, datetime, timedelta

    from pomlia_hpc.serve.labelled import labelled_inputs

    old = tmp_path / "20261001T000000-h-1-0000.jsonl"
    old.write_bytes(b'{"type": "prediction", "colour": 1}\n')
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    plog = PredictionLog(tmp_path, sidecar=Inbox(tmp_path / "inputs"))
    pid = "a" * 32
    img = _u8(7).astype(np.float32) / 255
    plog.append(
        [log_line("prediction", id=pid, model_version="v9")], inputs=encode_image(pid, "t", img)
    )
    plog.append([log_line("feedback", prediction_id=pid, label_index=2, time=_now())])
    plog.close()
    got = labelled_inputs(tmp_path, since=datetime.now(UTC) - timedelta(days=1))
    assert got.ids == [pid] and got.labels == [[2]] and got.versions == ["v9"]
    assert got.counts["log_files_before_window"] == 1 and got.counts["used"] == 1


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="microseconds")


def test_a_mistyped_feedback_line_stops_the_join_with_one_error_naming_file_and_key(
    tmp_path: Path,
) -> None:
    from pomlia_hpc.errors import InputError
    from pomlia_hpc.serve.labelled import labelled_inputs

    plog = PredictionLog(tmp_path)
    plog.append([log_line("feedback"), log_line("feedback")])
    plog.close()
    (path,) = tmp_path.glob("*.jsonl")
    with path.open("ab") as f:  # a label that is not an index
        f.write(b'{"type": "feedback", "id": "x", "time": "t", "prediction_id": "p", ')
        f.write(b'"model": "m", "model_version": "v", "deployment": null, "label": "a", ')
        f.write(b'"label_index": "x"}\n')
    with pytest.raises(InputError, match=rf"^{path}:3: bad value for 'label_index'"):
        labelled_inputs(tmp_path)


def test_a_chunk_that_could_not_be_opened_is_opened_at_the_next_write(tmp_path: Path) -> None:
    """A new chunk file that could not be created (a full disk or inode quota) left the inbox
    without a file: every later write smaller than the old chunk's room failed (EBADF), so a
    server whose prediction log tried the disk again and recovered kept refusing requests."""
    folder = tmp_path / "inputs"
    big = encode_image("a" * 32, "t", _u8(0, (32, 32, 3)).astype(np.float32) / 255)
    small = encode_image("b" * 32, "t", _u8(1, (4, 4, 3)).astype(np.float32) / 255)
    inbox = Inbox(folder, chunk_bytes=len(big) + len(small))
    inbox.write(big)
    folder.rename(tmp_path / "aside")  # the next chunk cannot be created
    with pytest.raises(OSError):
        inbox.write(big)
    (tmp_path / "aside").rename(folder)  # space again
    inbox.write(small)
    inbox.close()
    assert sorted(k.id for k in read_inputs(folder)) == ["a" * 32, "b" * 32]


def test_the_harvest_keeps_the_label_sent_last_whichever_servers_file_holds_it(
    tmp_path: Path,
) -> None:
    """Two servers of one deployment on one folder (a restart overlap, replicas): a label
    taken by the newer server and its replacement (``"replaces": true``) taken later by the
    older one. The join kept the label read last, in file-name order (the writer's start):
    the replaced one, so the retrained model learnt the label the user had corrected."""
    from datetime import UTC, datetime

    from pomlia_hpc.serve.labelled import labelled_inputs

    pid = "b" * 32
    plog = PredictionLog(tmp_path, sidecar=Inbox(tmp_path / "inputs"))
    plog.append(
        [log_line("prediction", id=pid)], inputs=encode_image(pid, "t", _u8(3) / np.float32(255))
    )
    plog.close()
    older, newer = "20260201T000000-node-1-0000.jsonl", "20260201T010000-node-2-0000.jsonl"
    feedback = {
        newer: log_line("feedback", prediction_id=pid, label_index=2, time=_now()),
        older: log_line("feedback", prediction_id=pid, label_index=3, time=_now(), replaces=True),
    }
    for name, rec in feedback.items():
        (tmp_path / name).write_bytes(orjson.dumps(rec) + b"\n")
    got = labelled_inputs(tmp_path, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert got.ids == [pid] and got.labels == [[3]]
