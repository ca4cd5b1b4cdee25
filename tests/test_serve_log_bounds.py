"""What the prediction log costs over time: the log file appears with the first record."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.issued import IssuedIds
from pomlia_hpc.serve.labelled import labelled_inputs
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.predlog import PredictionLog, read_records
from tests.fixtures.factories import log_line


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
