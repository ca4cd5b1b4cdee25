"""Everything written to disk for another process to read is a strict record: an unknown or
mistyped key in the file is one error line naming the file and the key (as for YAML config)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pomlia_hpc.automl.trial import failure_path, read_failure, read_result
from pomlia_hpc.config import read_record
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.index import Manifest, SetEntry
from pomlia_hpc.fingerprint.shards import done_record, marker

RESULT = {
    "metrics": {"val": {"acc": 0.5, "auc": None}, "test": {"acc": 0.4, "auc": None}},
    "epochs": 2,
    "start_epoch": 0,
    "cost_s": 1.5,
    "gpu_hours": 0.0,
    "device": "cpu",
    "model_path": "m.pt",
    "history": [{"epoch": 1, "train_loss": 0.7}],
}


def _refused(read: Callable[[], object], path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as exc:
        read()
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_trial_result_and_failure_with_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(RESULT))
    # A result written before the trial recorded its software reads as having none.
    expected = {**RESULT, "init_loaded": 0, "n_train": 0, "n_extra": 0, "software": {}}
    assert read_result(path) == expected
    msg = _refused(lambda: read_result(path), path, {**RESULT, "epoch": 2})
    assert "unknown key 'epoch'" in msg
    msg = _refused(lambda: read_result(path), path, {**RESULT, "epochs": "2"})
    assert "bad value for 'epochs'" in msg
    fail = failure_path(path)
    fail.write_text(json.dumps({"error": "ValueError: x", "traceback": "..."}))
    assert read_failure(path) == ("ValueError: x", "...")
    msg = _refused(lambda: read_failure(path), fail, {"error": "x", "trace": "..."})
    assert "unknown key 'trace'" in msg


def test_an_index_manifest_with_a_bad_key(tmp_path: Path) -> None:
    m = Manifest(encoder="e", kind="images", factory="Flat", metric="l2", dim=4, nprobe=None)
    m.sets[3] = SetEntry(fs_id=3, ref="a@1", n_images=5, tiles=1, splits={"train": [0, 5]})
    path = tmp_path / "manifest.json"
    path.write_text(m.to_json())
    assert read_record(Manifest, path) == m
    data = json.loads(m.to_json())
    data["sets"][0]["tile"] = 1
    assert "unknown key 'sets.3.tile'" in _refused(lambda: read_record(Manifest, path), path, data)
    data = json.loads(m.to_json()) | {"dim": 4.5}
    assert "bad value for 'dim'" in _refused(lambda: read_record(Manifest, path), path, data)


def test_a_shard_marker_with_a_bad_key(tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    done = marker(out, 0)
    done.parent.mkdir(parents=True)
    good = {"shard": 0, "start": 0, "stop": 10, "sum": [1.0], "seconds": 0.1, "host": "h"}
    done.write_text(json.dumps(good))
    assert done_record(out, 0, (0, 10)) == good
    assert done_record(out, 0, (0, 20)) is None  # a marker of another plan does not count
    msg = _refused(lambda: done_record(out, 0, (0, 10)), done, {**good, "rows": 10})
    assert "unknown key 'rows'" in msg
    msg = _refused(lambda: done_record(out, 0, (0, 10)), done, {**good, "stop": "10"})
    assert "bad value for 'stop'" in msg


def test_a_checkpoints_metadata_with_a_bad_key() -> None:
    from pomlia_hpc.models.card import ClassifierMeta

    meta = {
        "arch": "small_cnn",
        "num_classes": 2,
        "in_channels": 1,
        "image_size": 28,
        "task_type": "binary",
        "label_names": ["a", "b"],
        "preprocessing": {"mean": [0.5], "std": [0.5], "scale": 1 / 255},  # old: 'scale' kept
    }
    assert ClassifierMeta.from_dict(meta, "c.pt [meta]").pre.mean == (0.5,)
    with pytest.raises(InputError) as exc:
        ClassifierMeta.from_dict({**meta, "labels": ["a", "b"]}, "c.pt [meta]")
    assert str(exc.value).startswith("c.pt [meta]: unknown key 'labels'")
