"""Two servers of one deployment on one log folder, over real HTTP on 127.0.0.1: a restart or a
Slurm switch starts the new server while the old one still answers, and the old one is
stopped only once the new one is ready (docs/loop.md)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.issued import IssuedIds
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.peers import PeerLogs, PeerReader
from pomlia_hpc.serve.records import FeedbackLine
from tests.fixtures.factories import log_line, npy

TOKEN = "restart-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def serve(bundle: Path, logs: Path) -> LocalServer:
    return LocalServer(bundle, logs, env={"POMLIA_SERVE_TOKEN": TOKEN})


def predict_ids(client: httpx.Client, n: int) -> list[str]:
    images = np.random.default_rng(n).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    resp = client.post(
        "/v1/predict", content=npy(images), headers={"content-type": "application/x-npy"}
    )
    assert resp.status_code == 200, resp.text
    return [p["id"] for p in resp.json()["predictions"]]


def label(client: httpx.Client, pid: str, value: int = 1) -> int:
    resp = client.post("/v1/feedback", json={"prediction_id": pid, "label": value}, headers=AUTH)
    return resp.status_code


def test_the_new_server_takes_feedback_for_what_the_old_one_answered_after_it_started(
    bundle: Path, tmp_path: Path
) -> None:
    """The new server learned its ids from the log once, at start-up: what the old server
    answered after that got 404 "not issued by this deployment" at the new one for good (21 of
    449 answers in a restart under load), and a label the old server took then could be given
    again without "replaces" (logged as a first label)."""
    logs = tmp_path / "logs"
    with serve(bundle, logs) as old, httpx.Client(base_url=old.url, timeout=60) as a:
        before = predict_ids(a, 2)
        assert label(a, before[0]) == 200
        with serve(bundle, logs) as new, httpx.Client(base_url=new.url, timeout=60) as b:
            after = predict_ids(a, 3)
            assert label(a, after[0], 0) == 200
            assert [label(b, pid) for pid in after[1:]] == [200, 200]
            assert label(b, after[0]) == 409  # the old server's label is known
            assert label(b, before[0]) == 409  # read at start-up
            assert label(a, before[1]) == 200  # known at start-up, labelled by the old one since
            assert label(b, before[1]) == 409
            assert label(b, "ab" * 16) == 404  # an id no server issued still is not taken
            assert label(b, after[1]) == 409  # and the new server's own labels count
    logged = sorted(r.prediction_id for r in read_records(logs, FeedbackLine))
    assert logged == sorted([*before, *after])


def test_another_servers_file_is_read_once_in_whole_lines_and_only_for_its_deployment(
    tmp_path: Path,
) -> None:
    """A record the other server is writing (no newline yet) is read once it is whole; the
    lines of another deployment and of this server's own files are not taken."""
    old = tmp_path / "20260101T000000-node-1-0000.jsonl"
    old.write_bytes(b"")
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    (tmp_path / "20260101T000001-node-2-0000.jsonl").write_bytes(line(deployment=7))
    mine, theirs, other = (line(deployment=d) for d in (7, 7, 8))
    with old.open("ab") as f:
        f.write(mine + other + theirs[:40])
    issued = IssuedIds()
    assert peers.catch_up(issued) == 1
    with old.open("ab") as f:
        f.write(theirs[40:])
    assert peers.catch_up(issued) == 1
    assert peers.catch_up(issued) == 0
    assert len(issued) == 2


def line(deployment: int) -> bytes:
    return orjson.dumps(log_line("prediction", deployment=deployment)) + b"\n"


def test_a_record_being_written_when_the_server_started_is_taken_once_whole(
    tmp_path: Path,
) -> None:
    """Start-up took each file as read up to its size, which may end inside a record the other
    server was writing: the rest of that record was read as a bad line (a warning) and its id
    refused with 404 for good."""
    old = tmp_path / "20260101T000000-node-1-0000.jsonl"
    first, second = line(deployment=7), line(deployment=7)
    old.write_bytes(first + second[:40])
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    with old.open("ab") as f:
        f.write(second[40:])
    issued = IssuedIds()
    assert peers.catch_up(issued) == 1
    assert len(issued) == 1


def test_a_server_whose_name_starts_like_this_ones_is_still_a_peer(tmp_path: Path) -> None:
    """Files were told to be this server's own by the start of their name: a server on the
    same node, started in the same second, whose pid starts with this one's (12 and 123),
    was never read."""
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000000-node-12"
    (tmp_path / "20260101T000000-node-123-0000.jsonl").write_bytes(line(deployment=7))
    (tmp_path / "20260101T000000-node-12-0000.jsonl").write_bytes(line(deployment=7))
    issued = IssuedIds()
    assert peers.catch_up(issued) == 1


def test_only_files_that_can_still_grow_are_looked_at(tmp_path: Path) -> None:
    """Each feedback looked at every file of the folder (a stat each, and a read of any that
    had grown): a month of rotated files and of other deployments' servers. A file its writer
    rotated away from is read to its end once and not looked at again, and a file whose writer
    started before the deployment existed (with the clock margin) is not looked at at all."""
    created = 1_767_225_600.0 + 2 * 86400  # 2026-01-03T00:00:00Z
    rotated = tmp_path / "20260103T000000-node-1-0000.jsonl"
    current = tmp_path / "20260103T000000-node-1-0001.jsonl"
    older = tmp_path / "20260101T000000-node-9-0000.jsonl"  # two days before the deployment
    for path in (rotated, current, older):
        path.write_bytes(b"")
    peers = PeerLogs.snapshot(tmp_path, deployment=7, created=created)
    peers.own = "20260103T000001-node-2"
    for path in (rotated, current, older):
        with path.open("ab") as f:
            f.write(line(deployment=7))
    issued = IssuedIds()
    assert peers.catch_up(issued) == 1  # the current file's only
    # The current file is rotated too: what it gained before is read, then never again.
    with current.open("ab") as f:
        f.write(line(deployment=7))
    newest = tmp_path / "20260103T000000-node-1-0002.jsonl"
    newest.write_bytes(line(deployment=7))
    assert peers.catch_up(issued) == 2
    with current.open("ab") as f:
        f.write(line(deployment=7))
    assert peers.catch_up(issued) == 0
    assert len(issued) == 3


def test_a_prediction_id_no_server_issues_is_skipped_not_a_failed_feedback(
    tmp_path: Path,
) -> None:
    """An id that is not 32 hex digits (a file copied in from another tool) made the index's
    add raise: that feedback failed with a 500, and the ids and labels after it in the same
    read were lost for good."""
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    odd = orjson.dumps(log_line("prediction", deployment=7, id="not-an-id")) + b"\n"
    (tmp_path / "20260101T000000-node-1-0000.jsonl").write_bytes(odd + line(deployment=7))
    issued = IssuedIds()
    assert peers.catch_up(issued) == 1
    assert len(issued) == 1


def test_what_a_busy_peer_logs_is_read_between_feedbacks_not_in_the_next_one(
    tmp_path: Path,
) -> None:
    """A feedback read everything the other servers logged since the previous feedback: a
    server that took none for hours beside a busy replica parsed its hours of predictions in
    one request (about 19 s per million lines). The reader thread reads them as they come, so
    the next feedback finds nothing left to read."""
    peers = PeerLogs.snapshot(tmp_path, deployment=7)
    peers.own = "20260101T000001-node-2"
    issued = IssuedIds()
    reader = PeerReader(peers, issued, interval_s=0.05)
    reader.start()
    try:
        busy = tmp_path / "20260101T000000-node-1-0000.jsonl"
        busy.write_bytes(b"".join(line(deployment=7) for _ in range(500)))
        deadline = time.monotonic() + 120  # a bound for a loaded machine, not a timing check
        while len(issued) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop()
    assert len(issued) == 500
    assert peers.catch_up(issued) == 0  # what the next feedback reads first
