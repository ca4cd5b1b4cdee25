"""The peer reader's pass and a feedback's turn read the other servers' files through one
:class:`~pomlia_hpc.serve.peers.PeerLogs`: what a pass has read must be in the index before a
turn can find nothing new (serve/peers.py, serve/feedgate.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from pomlia_hpc.serve.issued import IssuedIds
from pomlia_hpc.serve.peers import PeerLogs
from tests.fixtures.factories import log_line


class PausedIndex(IssuedIds):
    """An index whose first ``mark_labelled`` waits for ``go``: the moment a pass of the peer
    reader has read a label but not yet noted it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def mark_labelled(self, pid: str, revision: int = 1) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.go.wait()
        super().mark_labelled(pid, revision)


def test_a_label_a_pass_has_read_is_seen_by_the_turn_that_comes_meanwhile(
    tmp_path: Path,
) -> None:
    """The pass moved its offsets past the other server's label, let go of the reader's lock,
    then noted the label in the index: a feedback's turn that read the files in between found
    nothing new, judged the id unlabelled and logged a second label (the race the feedback
    lock exists to prevent). Now the turn's read waits for the pass to note what it read."""
    peer = tmp_path / "20260101T000000-node-1-0000.jsonl"
    peer.write_bytes(b"")
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    pred = log_line("prediction", deployment=7)
    issued = PausedIndex()
    issued.add([pred["id"]])
    fb = log_line("feedback", deployment=7, prediction_id=pred["id"])
    peer.write_bytes(orjson.dumps(fb) + b"\n")  # the other server labelled it

    reader_pass = threading.Thread(target=peers.catch_up, args=(issued,))
    reader_pass.start()
    assert issued.entered.wait(60)
    seen: list[bool] = []

    def turn() -> None:  # what FeedbackGate's on_turn does, then the judgement
        peers.catch_up(issued)
        seen.append(issued.labelled(pred["id"]))

    judge = threading.Thread(target=turn)
    judge.start()
    judge.join(2)  # fixed: still waiting for the pass; not fixed: it judged already
    issued.go.set()
    reader_pass.join()
    judge.join()
    assert seen == [True]


def test_a_turn_reads_the_size_of_the_open_file_not_a_cached_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size of the other server's file was taken from a stat of its name, which an NFS
    client answers from its attribute cache (seconds old; 3 to 60 s by default): a label
    that server logged on another node before it let the feedback lock go was not read in
    the next turn, and the id took a second label. An open revalidates the attributes on NFS
    (close-to-open), so the size comes from the open file. The stale cache is played here by
    a stat that answers what the file was before the label."""
    peer = tmp_path / "20260101T000000-node-1-0000.jsonl"
    pred = log_line("prediction", deployment=7)
    peer.write_bytes(orjson.dumps(pred) + b"\n")
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    issued = IssuedIds()
    issued.add([pred["id"]])
    cached = peer.stat()
    fb = log_line("feedback", deployment=7, prediction_id=pred["id"])
    with peer.open("ab") as f:
        f.write(orjson.dumps(fb) + b"\n")  # the other node labelled it, then let the lock go
    real_stat = Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        return cached if self == peer else real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    peers.catch_up(issued)  # the next turn's read
    assert issued.labelled(pred["id"])
