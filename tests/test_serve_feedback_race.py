"""Two servers of one deployment on one log folder given the same prediction id at the same
moment, over real HTTP on 127.0.0.1: exactly one label is accepted (serve/feedgate.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.feedgate import ANSWER_WAIT_S, lock_path
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import FeedbackLine
from tests.test_serve_restart import AUTH, predict_ids, serve

SENDERS = 6  # per id: three at each server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def test_two_servers_given_one_id_at_once_accept_exactly_one_label(
    bundle: Path, tmp_path: Path
) -> None:
    """Each server judged a feedback against what it had read of the other's file, so both
    found the id unlabelled and both logged a label (4 of 40 ids labelled twice with four
    senders per id): the monitor and the harvest saw two labels. Now one sender per id gets
    200, every other a 409 that says the id has a label, and the log holds one label per id."""
    logs = tmp_path / "logs"
    with (
        serve(bundle, logs) as a,
        serve(bundle, logs) as b,
        httpx.Client(base_url=a.url, timeout=60) as ca,
        httpx.Client(base_url=b.url, timeout=60) as cb,
    ):
        ids = predict_ids(ca, 12) + predict_ids(cb, 12)
        clients = [ca, cb] * (SENDERS // 2)
        barrier = threading.Barrier(SENDERS)

        def send(pid: str, client: httpx.Client) -> tuple[int, str]:
            barrier.wait()  # the senders of one id go at the same moment
            resp = client.post(
                "/v1/feedback", json={"prediction_id": pid, "label": 1}, headers=AUTH
            )
            return resp.status_code, resp.text

        with ThreadPoolExecutor(SENDERS) as pool:
            answers = [list(pool.map(send, [pid] * SENDERS, clients)) for pid in ids]
    for pid, got in zip(ids, answers, strict=True):
        codes = Counter(code for code, _ in got)
        assert codes == {200: 1, 409: SENDERS - 1}, (pid, got)
        assert all("already has a label" in text for code, text in got if code == 409)
    labels = Counter(r.prediction_id for r in read_records(logs, FeedbackLine))
    assert labels == dict.fromkeys(ids, 1)


def test_a_feedback_that_cannot_have_the_turn_is_a_503_that_says_why(
    bundle: Path, tmp_path: Path
) -> None:
    """Another process of the deployment holds the feedback lock (a server stuck on a hung
    file server): the feedback waits LOCK_WAIT_S, then is refused with a 503 that says so,
    and nothing is logged; once the holder is gone (killed: the kernel lets its lock go) the
    same feedback is taken."""
    logs = tmp_path / "logs"
    with serve(bundle, logs) as a, httpx.Client(base_url=a.url, timeout=60) as client:
        pid = predict_ids(client, 1)[0]
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "time.sleep(600)\n",
                str(lock_path(logs, None)),
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            body = {"prediction_id": pid, "label": 1}
            resp = client.post("/v1/feedback", json=body, headers=AUTH)
            assert resp.status_code == 503
            assert "another server of this deployment held the feedback lock" in resp.text
        finally:
            holder.kill()
            holder.wait()
        assert client.post("/v1/feedback", json=body, headers=AUTH).status_code == 200
    assert [r.prediction_id for r in read_records(logs, FeedbackLine)] == [pid]


def test_a_feedback_whose_turn_hangs_on_the_file_server_is_answered(
    bundle: Path, tmp_path: Path
) -> None:
    """A log file whose open does not return (a hung file server; here a FIFO no one writes)
    stopped the server's feedback turn as it read the other servers' files: the others got
    their 503 after LOCK_WAIT_S, the lock holder's request waited without limit. It is now a
    503 after ANSWER_WAIT_S that says the label may still be recorded, and it is once the
    file answers."""
    logs = tmp_path / "logs"
    with serve(bundle, logs) as a, httpx.Client(base_url=a.url, timeout=60) as client:
        pid = predict_ids(client, 1)[0]
        hung = logs / time.strftime("%Y%m%dT%H%M%S-nfs-1-0000.jsonl", time.gmtime())
        os.mkfifo(hung)
        body = {"prediction_id": pid, "label": 1}
        try:
            resp = client.post("/v1/feedback", json=body, headers=AUTH)
        finally:
            # Let the open return (a writer appears), then take the file away for good.
            try:
                writer = os.open(hung, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader waits in its open
                writer = -1
            hung.unlink()
            if writer >= 0:
                os.close(writer)
        assert resp.status_code == 503, resp.text
        assert f"not confirmed within {ANSWER_WAIT_S:g} s" in resp.text
        assert "may still be recorded" in resp.text
        again = client.post("/v1/feedback", json=body, headers=AUTH)
        assert again.status_code == 409, again.text  # the section went on: it was recorded
    assert [r.prediction_id for r in read_records(logs, FeedbackLine)] == [pid]
