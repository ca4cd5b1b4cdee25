"""Which of a prediction's labels holds does not depend on the servers' clocks: the servers of
a deployment count a prediction's labels under the feedback lock (``revision``), and every
reader keeps the highest; a log written before revisions keeps the old rule (later by time)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.labelled import labelled_inputs
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import LabelOrder, later_label, read_records
from pomlia_hpc.serve.records import FeedbackLine, parse_line
from tests.test_serve_restart import AUTH, TOKEN, predict_ids


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def peer_label(logs: Path, pid: str, when: datetime, index: int) -> None:
    """A label of ``pid`` logged by another server of the deployment (no deployment: None)
    whose clock reads ``when``."""
    rec = {
        "type": "feedback",
        "id": "cd" * 16,
        "time": when.isoformat(timespec="microseconds"),
        "prediction_id": pid,
        "model": "x",
        "model_version": "1",
        "deployment": None,
        "label": str(index),
        "label_index": index,
    }
    name = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-ahead-1-0000.jsonl"
    (logs / name).write_bytes(orjson.dumps(rec) + b"\n")


def test_a_replacement_taken_by_a_server_whose_clock_is_behind_wins(
    bundle: Path, tmp_path: Path
) -> None:
    """A server whose clock runs an hour ahead took a label; the replacement came later, to a
    server with the right clock, which accepted it (it knew the first label). The harvest
    (and the monitor) kept the label with the later time: the one it replaced. The accepting
    server now logs the replacement as revision 2, and the readers keep it."""
    logs = tmp_path / "logs"
    server = LocalServer(bundle, logs, args=["--keep-inputs"], env={"POMLIA_SERVE_TOKEN": TOKEN})
    with server as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        (pid,) = predict_ids(client, 1)
        peer_label(logs, pid, datetime.now(UTC) + timedelta(hours=1), 0)
        body = {"prediction_id": pid, "label": 2}
        again = client.post("/v1/feedback", json=body, headers=AUTH)
        assert again.status_code == 409, again.text  # it knows the first label
        fixed = client.post("/v1/feedback", json={**body, "replaces": True}, headers=AUTH)
        assert fixed.status_code == 200, fixed.text
        third = client.post(
            "/v1/feedback", json={**body, "label": 3, "replaces": True}, headers=AUTH
        )
        assert third.status_code == 200, third.text
    revisions = sorted(r.revision for r in read_records(logs, FeedbackLine))
    assert revisions == [1, 2, 3]
    got = labelled_inputs(logs, since=datetime.now(UTC) - timedelta(hours=1))
    assert dict(zip(got.ids, got.labels, strict=True)) == {pid: [3]}


def test_a_log_without_revisions_keeps_the_later_label_by_time() -> None:
    """Replacements logged before revisions carry none: of two, the later by time holds, as
    before, in either reading order; a first label (revision 1, known) and a counted
    replacement are ordered by revision whatever their times."""
    now = datetime.now(UTC)

    def rec(minutes: int, **more: object) -> LabelOrder:
        when = (now + timedelta(minutes=minutes)).isoformat()
        line = {
            "type": "feedback",
            "id": "01" * 16,
            "time": when,
            "prediction_id": "ab" * 16,
            "model": "x",
            "model_version": "1",
            "deployment": None,
            "label": "1",
            "label_index": 1,
            **more,
        }
        got = parse_line(orjson.dumps(line))
        assert isinstance(got, FeedbackLine)
        return LabelOrder.of(got)

    old_early, old_late = rec(0, replaces=True), rec(5, replaces=True)
    assert later_label(old_late, old_early) and not later_label(old_early, old_late)
    first_ahead, fix_behind = rec(60), rec(0, replaces=True, revision=2)
    assert later_label(fix_behind, first_ahead) and not later_label(first_ahead, fix_behind)
