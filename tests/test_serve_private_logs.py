"""A server's prediction log and kept inputs (patient images) are clinical data: their files
are created 0600 and the folders the server makes 0700, whatever the umask (they were 0644
and 0755, readable by every user of a shared file system)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pomlia_hpc.serve.inbox import Inbox, encode_image, inputs_dir
from pomlia_hpc.serve.predlog import PredictionLog, log_dir


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets others read new files (the common default, 022)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_log_and_kept_inputs_are_the_owners_alone(tmp_path: Path) -> None:
    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)  # the workspace's own folder (`pomlia init`): left as it is
    directory = log_dir(logs, "pneumo")
    inbox = Inbox(inputs_dir(directory), fsync=False)
    log = PredictionLog(directory, fsync=False, sidecar=inbox)
    image = np.zeros((4, 4, 1), np.float32)
    log.append([{"type": "prediction", "id": "a1"}], inputs=encode_image("a1", "t", image))
    log.close()
    (jsonl,) = directory.glob("*.jsonl")
    (kept,) = inputs_dir(directory).glob("*.pin")
    assert mode(jsonl) == 0o600 and mode(kept) == 0o600
    # Every folder the server made: logs/predictions, the model's, its inputs.
    assert [mode(p) for p in (logs / "predictions", directory, inputs_dir(directory))] == [
        0o700
    ] * 3
    assert mode(logs) == 0o755


@pytest.mark.usefixtures("open_umask")
def test_the_servers_start_up_check_makes_the_log_folders_private(tmp_path: Path) -> None:
    """`pomlia serve` checks (and so creates) the log folder before the log opens it: that
    check made logs/predictions and logs/predictions/<model> with the umask (0755), and the
    log's private mkdir then found them existing."""
    from pomlia_hpc.serve.server import check_log_dir

    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)
    directory = log_dir(logs, "gb")
    check_log_dir(directory)
    log = PredictionLog(directory, fsync=False, sidecar=Inbox(inputs_dir(directory), fsync=False))
    log.close()
    made = (logs / "predictions", directory, inputs_dir(directory))
    assert [mode(p) for p in made] == [0o700] * 3
    assert mode(logs) == 0o755  # not the server's: left as it is


def test_folders_that_exist_keep_their_mode(tmp_path: Path) -> None:
    """A log folder someone opened to a group on purpose stays so; only new ones are 0700."""
    from pomlia_hpc.serve.server import check_log_dir

    shared = tmp_path / "logs" / "predictions"
    shared.mkdir(parents=True)
    shared.chmod(0o750)
    check_log_dir(shared / "gb")
    assert (mode(shared), mode(shared / "gb")) == (0o750, 0o700)


def test_private_folders_are_0700_under_a_umask_without_owner_bits(tmp_path: Path) -> None:
    """mkdir's mode passes through the umask: 0o277 made a folder its owner could not enter."""
    from pomlia_hpc.serve.server import check_log_dir

    old = os.umask(0o277)
    try:
        check_log_dir(tmp_path / "predictions" / "gb")
    finally:
        os.umask(old)
    assert [mode(tmp_path / "predictions"), mode(tmp_path / "predictions" / "gb")] == [0o700] * 2
