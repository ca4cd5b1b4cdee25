"""What the prediction log costs over time: start-up reads only what can belong to the
deployment, the log file appears with the first record, and the opt-in retention deletes old
files (logged) but never the feedback window's."""

from __future__ import annotations

import logging
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pomlia_hpc.serve import predlog
from pomlia_hpc.serve.config import load_serve_config
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.issued import Claim, IssuedIds
from pomlia_hpc.serve.labelled import labelled_inputs, retention_warning
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predlog import PredictionLog, prune_log
from pomlia_hpc.serve.retention import deleted_through
from tests.fixtures.factories import log_line

DAY = 86400.0


def write_log(path: Path, records: list[dict[str, Any]], mtime: float | None = None) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def stem(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the log files opened while the test runs."""
    names: list[str] = []
    real = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.suffix == ".jsonl":
            names.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    yield names


def test_start_up_skips_files_older_than_the_deployment(tmp_path: Path, opened: list[str]) -> None:
    """A new deployment read every file of the folder (other deployments' history: 20 s for
    0.9 GB) looking for predictions it cannot have made. Files started or last written before
    it was created (less the clock margin) are not opened, by name or by modification time."""
    now = time.time()
    created = now - 3 * DAY
    own = log_line("prediction", deployment=3)
    # Named long before the deployment, written recently: another deployment's long run.
    write_log(tmp_path / f"{stem(now - 30 * DAY)}-h-1-0000.jsonl", [log_line("prediction")])
    # Not in the server's form, last written before the deployment: skipped by mtime.
    write_log(tmp_path / "copied.jsonl", [log_line("prediction")], mtime=now - 10 * DAY)
    # Within the clock margin of the creation: read (its clock may be behind the registry's).
    near = f"{stem(created - predlog.CLOCK_SKEW_S / 2)}-h-2-0000.jsonl"
    write_log(tmp_path / near, [own])
    opened.clear()
    issued = IssuedIds.from_log(tmp_path, 3, created=created)
    assert opened == [near]
    assert issued.claim(own["id"], replaces=False) is Claim.OK
    opened.clear()
    IssuedIds.from_log(tmp_path, 3)  # no creation time known: every file, as before
    assert sorted(opened) == sorted(p.name for p in tmp_path.glob("*.jsonl"))


def test_start_up_memory_follows_the_window_not_the_feedback(tmp_path: Path) -> None:
    """Every feedback id met was kept in a set (400,000 labels: 50 MB more) though only the
    window's ids can use them; labels are held for the window only (or read again)."""
    window = [log_line("prediction") for _ in range(5)]
    older = [log_line("feedback", prediction_id=os.urandom(16).hex()) for _ in range(20_000)]
    mine = log_line("feedback", prediction_id=window[1]["id"])
    write_log(tmp_path / "20260101T000000-h-1-0000.jsonl", window)
    write_log(tmp_path / "20260102T000000-h-1-0000.jsonl", [*older, mine, *older[:100]])
    IssuedIds.from_log(tmp_path, None, capacity=5)  # first-use caches are not the log's
    tracemalloc.start()
    try:
        issued = IssuedIds.from_log(tmp_path, None, capacity=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert issued.labelled(window[1]["id"]) and not issued.labelled(window[0]["id"])
    assert peak < 2_000_000, peak  # 20,000 ids as strings in a set: 4.4 MB; now 0.9 MB


def test_a_server_that_answered_nothing_leaves_no_file(tmp_path: Path) -> None:
    """Each start left an empty *.jsonl: the file is created with the first record."""
    log = PredictionLog(tmp_path)
    log.close()
    assert list(tmp_path.glob("*.jsonl")) == []
    log = PredictionLog(tmp_path)
    log.append([log_line("prediction", id="a" * 32)])
    log.close()
    assert [r.id for r in read_records(tmp_path)] == ["a" * 32]
    # The readers take a folder with no file (the harvest's join, the server's index).
    assert len(labelled_inputs(tmp_path / "none-yet")) == 0
    assert len(IssuedIds.from_log(tmp_path / "none-yet", None)) == 0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def test_serve_start_and_stop_without_requests_writes_no_file(bundle: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with LocalServer(bundle, logs) as srv:
        assert httpx.get(srv.url + "/ready").status_code == 200
    assert logs.is_dir() and list(logs.glob("*.jsonl")) == []


def test_retention_is_off_unless_set(tmp_path: Path) -> None:
    old = tmp_path / "20200101T000000-h-1-0000.jsonl"
    write_log(old, [log_line("prediction")], mtime=time.time() - 1000 * DAY)
    log = PredictionLog(tmp_path, max_bytes=1)  # every commit after the first rotates
    for _ in range(3):
        done = threading.Event()
        log.append([log_line("prediction")], lambda _, d=done: d.set())
        assert done.wait(30)
    log.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 4
    assert old.exists() and log.pruned == 0


def test_retention_deletes_old_files_at_rotation_but_not_the_feedback_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    expired = tmp_path / "20200101T000000-h-1-0000.jsonl"
    window = tmp_path / "20200102T000000-h-1-0000.jsonl"  # holds the oldest id remembered
    recent = tmp_path / "20200103T000000-h-1-0000.jsonl"
    write_log(expired, [log_line("prediction")], mtime=now - 40 * DAY)
    write_log(window, [log_line("prediction")], mtime=now - 20 * DAY)
    write_log(recent, [log_line("prediction")], mtime=now - 2 * DAY)
    oldest = now - 20 * DAY - predlog.CLOCK_SKEW_S / 2  # within the margin of its last write
    log = PredictionLog(tmp_path, max_bytes=1, retention_s=7 * DAY, keep_after=lambda: oldest)
    first = threading.Event()
    with caplog.at_level(logging.INFO, logger="pomlia.serve"):
        log.append([log_line("prediction")], lambda _: first.set())
        assert first.wait(30)  # written alone: the next record rotates
        log.append([log_line("prediction")])
        log.close()
    assert not expired.exists() and window.exists() and recent.exists()
    assert log.pruned == 1 and len(list(read_records(tmp_path))) == 4
    (said,) = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert str(expired) in said and "last written" in said


def test_retention_leaves_a_trace_the_harvest_reports(tmp_path: Path) -> None:
    """Retention deleted files without a trace: a harvest whose ``--since`` reached back past
    them saw fewer labels and said nothing. The deletion leaves a marker with the latest last
    write it deleted; the join says what may be missing from its window, and only then."""
    now = time.time()
    pred = log_line("prediction", input_kept=True)
    label = log_line("feedback", prediction_id=pred["id"], time="2026-01-02T00:00:00+00:00")
    write_log(first := tmp_path / "20260101T000000-h-1-0000.jsonl", [pred], mtime=now - 9 * DAY)
    write_log(second := tmp_path / "20260102T000000-h-1-0000.jsonl", [label], mtime=now - 8 * DAY)
    assert deleted_through(tmp_path) is None
    assert prune_log(tmp_path, older_than=now - 8.5 * DAY) == [first]
    assert prune_log(tmp_path, older_than=now - 7 * DAY) == [second]
    gone = deleted_through(tmp_path)
    assert gone is not None and abs(gone.timestamp() - (now - 8 * DAY)) <= 1
    assert len(list(tmp_path.glob(".*"))) == 1  # the earlier marker is superseded
    assert list(read_records(tmp_path)) == []
    got = labelled_inputs(tmp_path, since=datetime.fromtimestamp(now - 10 * DAY, UTC))
    warning = retention_warning(got)
    assert warning is not None and "log retention" in warning and "may be missing" in warning
    # Half an hour after the deletion's time, within the clock margin: records of a node
    # whose clock runs ahead of the file server's may be among the deleted.
    near = labelled_inputs(tmp_path, since=datetime.fromtimestamp(now - 8 * DAY + 1800, UTC))
    assert near.deleted_through == gone
    after = labelled_inputs(tmp_path, since=datetime.fromtimestamp(now - 7 * DAY, UTC))
    assert after.deleted_through is None and retention_warning(after) is None


def test_retention_marks_what_it_deleted_before_a_file_it_could_not_delete(
    tmp_path: Path,
) -> None:
    """A file retention could not delete ended the pass before the marker was made: the files
    deleted before it were gone without a trace, and readers of their window said nothing."""
    now = time.time()
    write_log(first := tmp_path / "20260101T000000-h-1-0000.jsonl", [], mtime=now - 9 * DAY)
    stuck = tmp_path / "20260102T000000-h-1-0000.jsonl"
    stuck.mkdir()  # unlink(2) refuses a folder, as it would a file on a failing disk
    os.utime(stuck, (now - 9 * DAY, now - 9 * DAY))
    with pytest.raises(OSError):
        prune_log(tmp_path, older_than=now - 8 * DAY)
    assert not first.exists()
    gone = deleted_through(tmp_path)
    assert gone is not None and abs(gone.timestamp() - (now - 9 * DAY)) <= 1


def test_prune_log_leaves_kept_inputs_and_named_files(tmp_path: Path) -> None:
    old = time.time() - 100 * DAY
    write_log(a := tmp_path / "a.jsonl", [], mtime=old)
    write_log(b := tmp_path / "b.jsonl", [], mtime=old)
    (tmp_path / "inputs").mkdir()
    assert prune_log(tmp_path, older_than=time.time() - DAY, keep={b}) == [a]
    assert b.exists() and (tmp_path / "inputs").is_dir()


def test_a_file_deleted_while_open_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle server's file pruned by another server (or by hand) would swallow records
    into a deleted file: the writer notices and goes on in a new one."""
    monkeypatch.setattr(predlog, "CLOCK_SKEW_S", 0.0)  # check on every commit
    log = PredictionLog(tmp_path)
    log.append([log_line("prediction", id="1" * 32)])
    time.sleep(0.01)
    for path in tmp_path.glob("*.jsonl"):
        path.unlink()
    log.append([log_line("prediction", id="2" * 32)])
    log.close()
    assert [r.id for r in read_records(tmp_path)] == ["2" * 32]


def test_retention_settings() -> None:
    assert load_serve_config().log_retention_days is None
    assert load_serve_config(overrides={"log_retention_days": 30}).log_retention_s == 30 * DAY
    with pytest.raises(Exception, match="at least inputs_retention_days"):
        load_serve_config(overrides={"log_retention_days": 10, "keep_inputs": True})
    with pytest.raises(Exception, match="log_retention_days"):
        load_serve_config(overrides={"log_retention_days": 0.5})


def test_start_up_validates_only_its_own_deployments_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Start-up parsed every line of the folder, other deployments' too (a month of them:
    6.9 s of CPU for a new deployment); their lines are now skipped unread, so even a bad one
    of theirs is not reported, while a bad line of its own still is."""
    theirs = log_line("prediction", deployment=4)
    bad_theirs = orjson.dumps({**theirs, "id": "x", "extra": 1}).decode()
    mine = log_line("prediction", deployment=3)
    bad_mine = orjson.dumps({**mine, "extra": 1}).decode()
    path = tmp_path / f"{stem(time.time())}-h-1-0000.jsonl"
    path.write_text("\n".join([bad_theirs, orjson.dumps(theirs).decode(), bad_mine, ""]))
    write_log(tmp_path / f"{stem(time.time() - DAY)}-h-1-0000.jsonl", [mine])
    with caplog.at_level(logging.WARNING):
        issued = IssuedIds.from_log(tmp_path, 3)
    (said,) = [r.getMessage() for r in caplog.records if "bad line" in r.getMessage()]
    assert said.startswith("1 bad line(s)") and f"{path}:3:" in said
    assert issued.claim(mine["id"], replaces=False) is Claim.OK
    assert issued.claim(theirs["id"], replaces=False) is Claim.UNKNOWN
    # A writer that spaces its keys cannot be told apart by bytes: parsed, and kept if its own.
    spaced = log_line("prediction", deployment=3)
    write_log(tmp_path / "copied.jsonl", [])
    (tmp_path / "copied.jsonl").write_text(
        orjson.dumps(spaced).decode().replace('"deployment":3', '"deployment": 3') + "\n"
    )
    again = IssuedIds.from_log(tmp_path, 3)
    assert again.claim(spaced["id"], replaces=False) is Claim.OK


def test_a_bundle_served_without_a_registry_skips_files_older_than_its_checkpoint(
    bundle: Path, tmp_path: Path
) -> None:
    """A bundle directory served with a deployment id but no registry (``serve.sbatch`` in
    the image) knew no creation time and read back through every file of the folder while
    its window was not full (a new deployment beside a month of another one's log: 22 s to
    ready). No deployment of a bundle predates its checkpoint (the card's ``created_at``):
    files last written or started before it, less the clock margin, are not opened."""
    logs = tmp_path / "logs"
    logs.mkdir()
    old, new = log_line("prediction", deployment=3), log_line("prediction", deployment=3)
    month_ago = time.time() - 30 * DAY
    write_log(logs / f"{stem(month_ago)}-h-1-0000.jsonl", [old], mtime=month_ago + DAY)
    write_log(logs / f"{stem(time.time())}-h-2-0000.jsonl", [new])
    token = "test-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    with (
        LocalServer(
            bundle, logs, env={"POMLIA_SERVE_TOKEN": token}, args=["--deployment-id", "3"]
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        got = c.post("/v1/feedback", json={"prediction_id": new["id"], "label": 0}, headers=auth)
        assert got.status_code == 200
        older = c.post("/v1/feedback", json={"prediction_id": old["id"], "label": 0}, headers=auth)
        assert older.status_code == 404


def test_start_up_fills_its_window_from_the_files_written_last(tmp_path: Path) -> None:
    """Files were read newest name first, a name being its writer's start: a server that ran
    for weeks beside a newer one (two replicas of one deployment) wrote its latest records to
    a file whose name sorts first, and a restart filled the window from the newer server's
    older file, forgetting the ids answered last."""
    now = time.time()
    long_running = log_line("prediction")
    write_log(tmp_path / f"{stem(now - 30 * DAY)}-h-1-0009.jsonl", [long_running], mtime=now)
    newer_start = log_line("prediction")
    write_log(tmp_path / f"{stem(now - 5 * DAY)}-h-2-0000.jsonl", [newer_start], mtime=now - DAY)
    issued = IssuedIds.from_log(tmp_path, None, capacity=1)
    assert issued.claim(long_running["id"], replaces=False) is Claim.OK
    assert issued.claim(newer_start["id"], replaces=False) is Claim.UNKNOWN
