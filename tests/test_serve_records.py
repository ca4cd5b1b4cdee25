"""The prediction log's records are strict models: what the server writes parses strictly, and
a bad line is one error naming the file, the line and the key (the monitor's counting of bad
lines is tested in test_monitor_run.py, the harvest's error in test_serve_inbox.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import orjson
import pytest

from pomlia_hpc.errors import InputError
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.issued import Claim, IssuedIds
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predlog import PredictionLog
from pomlia_hpc.serve.records import (
    BadLineError,
    FeedbackLine,
    PredictionLine,
    RejectionLine,
    parse_line,
    to_line,
)
from tests.fixtures.factories import log_line, onnx_predictor


def test_what_the_predictor_logs_is_a_strict_prediction_record(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    log = PredictionLog(tmp_path, fsync=False)
    pred = onnx_predictor(root, log, max_batch=4, deployment_id=7, keep_inputs=True)
    x = np.random.default_rng(0).random((3, 28, 28, 3), dtype=np.float32)
    answers = asyncio.run(pred.predict(x))
    pred.close()
    (path,) = tmp_path.glob("*.jsonl")
    for i, (raw, answer) in enumerate(zip(path.read_bytes().splitlines(), answers, strict=True)):
        rec = PredictionLine.model_validate_json(raw, strict=True)
        assert rec.id == answer["id"] and rec.deployment == 7 and rec.input_kept
        # The request's size only on its first prediction (the monitor counts requests by it).
        assert rec.request_images == (3 if i == 0 else 1)
        # ``format`` only above 1 (a newer major log format): never by this version.
        fields = set(PredictionLine.model_fields) - {"format"}
        fields -= {"request_images"} if i else set()
        assert set(orjson.loads(raw)) == fields


def test_feedback_and_rejection_lines_carry_their_flags_only_when_true() -> None:
    values = log_line("feedback", label=["x", "y"], label_index=[0, 1])
    assert values.pop("type") == "feedback"
    first = to_line(FeedbackLine(**values))
    assert next(iter(first)) == "type" and "replaces" not in first
    assert to_line(FeedbackLine(**values, replaces=True))["replaces"] is True
    assert parse_line(orjson.dumps(first)) == FeedbackLine(**values)
    rejection = log_line("rejection", status=415, reason="unsupported-type")
    assert isinstance(parse_line(orjson.dumps(rejection)), RejectionLine)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'; valid keys: deployment, fingerprint, "),
        ({"deployment": "3"}, "bad value for 'deployment': "),
        (
            {"output": {"label": "a", "label_index": 0, "probabilities": [1.0], "p": 1}},
            "unknown key 'output.p'; valid keys: label, label_index, probabilities",
        ),
        (
            {"output": {"label": "a", "label_index": "0", "probabilities": [1.0]}},
            "bad value for 'output.label_index': ",
        ),
        ({"type": "comment"}, "unknown record type 'comment'; known: feedback, prediction, "),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_line_and_key(
    tmp_path: Path, change: dict[str, object], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = log_line("prediction")
    lines = [good, {**good, **change}, good]
    path = tmp_path / "20260101T000000-h-1-0000.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    with pytest.raises(BadLineError, match="^" + message.replace("(", r"\(")):
        parse_line(orjson.dumps(lines[1]))
    with pytest.raises(InputError) as info:
        list(read_records(tmp_path))
    assert str(info.value).startswith(f"{path}:2: {message}")
    # The server's start-up skips it (and says so) rather than refusing to start.
    with caplog.at_level(logging.WARNING, logger="pomlia_hpc.serve.issued"):
        issued = IssuedIds.from_log(tmp_path, None)
    assert f"{path}:2: {message}" in caplog.text
    assert issued.claim(str(good["id"]), replaces=False) is Claim.OK


def test_a_nan_the_writer_logged_as_null_does_not_stop_the_server_start(tmp_path: Path) -> None:
    good = log_line("prediction")
    nan = {**good, "id": "ab" * 16, "fingerprint": [float("nan")] * 2}
    path = tmp_path / "20260101T000000-h-1-0000.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (nan, good)))  # NaN -> null
    issued = IssuedIds.from_log(tmp_path, None)
    assert issued.claim(str(good["id"]), replaces=False) is Claim.OK


def test_a_missing_key_and_a_torn_last_line(tmp_path: Path) -> None:
    good = log_line("feedback")
    path = tmp_path / "20260101T000000-h-1-0000.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + b'{"type": "feedback", "id": "to')
    assert [r.id for r in read_records(tmp_path, FeedbackLine)] == [good["id"]]
    missing = {k: v for k, v in good.items() if k != "model_version"}
    path.write_bytes(orjson.dumps(missing) + b"\n")
    with pytest.raises(InputError, match=r":1: key 'model_version' is missing$"):
        list(read_records(tmp_path))
