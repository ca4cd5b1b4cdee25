"""The one atomic artifact layer (``pomlia_hpc.files``): files, folders and links appear whole
or not at all, and what dead writers of this host left is swept."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.files import (
    atomic_target,
    held_lock,
    make_dirs,
    poll_lock,
    remove_made_dirs,
    replace_link,
    staged_dir,
    sweep_stale_temps,
    temp_name,
    write_atomic,
)
from pomlia_hpc.temps import CLOCK_SKEW_S


def _dead_pid() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def _as_dead(path: Path) -> Path:
    """``path``'s temporary name as a writer that has died would have left it."""
    tmp = temp_name(path)
    return tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{_dead_pid()}."))


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out" / "bundle"
    with pytest.raises(RuntimeError), staged_dir(target) as staged:
        (staged.path / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with staged_dir(target) as staged:
        (staged.path / "a.txt").write_text("one")
    assert staged.published and (target / "a.txt").read_text() == "one"
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)
    # Without replace an existing folder is kept and the new one dropped; with it, replaced.
    with staged_dir(target) as staged:
        (staged.path / "a.txt").write_text("two")
    assert not staged.published and (target / "a.txt").read_text() == "one"
    with staged_dir(target, replace=True) as staged:
        (staged.path / "a.txt").write_text("three")
    assert staged.published and (target / "a.txt").read_text() == "three"
    assert [p.name for p in target.parent.iterdir()] == ["bundle"]


def test_a_staged_folder_that_cannot_be_made_is_one_input_error(tmp_path: Path) -> None:
    """`staged_dir` under a file or in /proc raised FileExistsError / FileNotFoundError, a
    traceback for every command that took the path from the user: an InputError naming the
    folder now, with no folder of its own left behind."""
    afile = tmp_path / "f"
    afile.write_text("mine")
    for target, cause in (
        (afile / "sub" / "bundle", f"{afile} is a file, not a folder"),
        (afile / "bundle", f"{afile} is a file, not a folder"),
        (Path("/proc/pomlia-staged"), ""),
    ):
        expected = re.escape(f"folder {target} cannot be created: {cause}")
        with pytest.raises(InputError, match=expected), staged_dir(target):
            raise AssertionError("the block must not run")
    assert afile.read_text() == "mine" and sorted(tmp_path.iterdir()) == [afile]
    # The staging name (longer than the target's) is too long: the parents made go again.
    long = tmp_path / "new" / "deeper" / ("b" * 250)
    with pytest.raises(InputError, match="File name too long"), staged_dir(long):
        raise AssertionError("the block must not run")
    assert sorted(tmp_path.iterdir()) == [afile]


def test_a_link_is_replaced_never_missing(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "current"
    replace_link(link, "v1")
    assert str(link.readlink()) == "v1"
    replace_link(link, "v2")
    assert str(link.readlink()) == "v2" and link.resolve() == tmp_path / "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1", "v2"]


def test_a_writer_that_wants_a_file_name_and_an_ending(tmp_path: Path) -> None:
    target = tmp_path / "runhistory.json"
    with atomic_target(target, suffix=".json") as tmp:
        assert tmp.name.endswith(".tmp.json") and tmp.parent == tmp_path
        tmp.write_text("{}")
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_pipe_or_a_link_to_one_is_never_replaced_by_a_written_file(tmp_path: Path) -> None:
    """A file written whole is renamed over its path: over a device or a pipe that replaced
    it with a regular file (as root, `recommend --write-initial /dev/full` did). Tested on a
    pipe of the test's own, never on a device."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "link.json"
    link.symlink_to(pipe)
    for path in (pipe, link):
        with pytest.raises(InputError) as err:
            write_atomic(path, "{}")
        assert str(err.value) == (
            f"{path} is not a regular file (a device, pipe or socket): expected the path of a "
            "file to write; it was left as it is"
        )
    assert stat.S_ISFIFO(pipe.lstat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe"]  # no temporary
    target = tmp_path / "file.json"
    write_atomic(target, "{}")  # a regular file, new or old, as before
    write_atomic(target, "[]")
    assert target.read_text() == "[]"


def test_the_sweep_removes_dead_writers_files_folders_and_links(tmp_path: Path) -> None:
    stale_file = _as_dead(tmp_path / "x.json")
    stale_file.write_text("half")
    stale_dir = _as_dead(tmp_path / "bundle")
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half")
    stale_link = _as_dead(tmp_path / "current")
    stale_link.symlink_to("nowhere")
    stale_json = temp_name(tmp_path / "r.json", ".json")
    stale_json = stale_json.with_name(
        stale_json.name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    )
    stale_json.write_text("{}")  # SMAC's kind, with an ending after .tmp
    live = temp_name(tmp_path / "y.json")
    live.write_text("being written")
    other_host = tmp_path / f".z.json.another-node.{_dead_pid()}.tmp"
    other_host.write_text("maybe still being written there")
    removed = sweep_stale_temps(tmp_path)
    assert set(removed) == {stale_file, stale_dir, stale_link, stale_json}
    assert not stale_dir.exists() and not stale_link.is_symlink() and not stale_file.exists()
    assert live.exists() and other_host.exists()


def test_a_temporary_whose_pid_a_later_process_took_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid is reused once its process is gone: judged by the pid alone, a dead writer's
    temporary was kept for as long as an unrelated process with its pid ran."""
    tmp = temp_name(tmp_path / "x.json")  # this process's pid: a live writer
    tmp.write_text("half")
    assert sweep_stale_temps(tmp_path) == [] and tmp.exists()
    skewed = time.time() + CLOCK_SKEW_S / 2  # within what two clocks may differ: still its writer
    monkeypatch.setattr("pomlia_hpc.temps.process_started_s", lambda pid: skewed)
    assert sweep_stale_temps(tmp_path) == [] and tmp.exists()
    later = time.time() + 2 * CLOCK_SKEW_S  # the process with the pid started after the write
    monkeypatch.setattr("pomlia_hpc.temps.process_started_s", lambda pid: later)
    assert sweep_stale_temps(tmp_path) == [tmp]


def test_the_sweep_matches_the_host_field_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pomlia_hpc.temps.socket.gethostname", lambda: "node1")
    dead = _dead_pid()
    mine = tmp_path / f".x.json.node1.{dead}.tmp"
    # node7 writing a file whose own name holds ".node1.": not this host's, kept.
    named_like_me = tmp_path / f".x.node1.json.node7.{dead}.tmp"
    longer_host = tmp_path / f".x.json.node10.{dead}.tmp"
    for path in (mine, named_like_me, longer_host):
        path.write_text("half")
    assert sweep_stale_temps(tmp_path) == [mine]
    assert named_like_me.exists() and longer_host.exists()


def test_a_dotted_host_name_is_not_taken_for_its_last_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = _dead_pid()
    monkeypatch.setattr("pomlia_hpc.temps.socket.gethostname", lambda: "sub.node1")
    theirs = temp_name(tmp_path / "x.json")
    theirs = theirs.with_name(theirs.name.replace(str(os.getpid()), str(dead)))
    theirs.write_text("half")
    assert theirs.name == f".x.json.sub_node1.{dead}.tmp"
    monkeypatch.setattr("pomlia_hpc.temps.socket.gethostname", lambda: "node1")
    assert sweep_stale_temps(tmp_path) == [] and theirs.exists()  # sub.node1's, kept
    monkeypatch.setattr("pomlia_hpc.temps.socket.gethostname", lambda: "sub.node1")
    assert sweep_stale_temps(tmp_path) == [theirs]


def test_npz_and_torch_files_are_written_whole(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from pomlia_hpc.files import write_npz
    from pomlia_hpc.models.checkpoint import write_torch

    arrays = {"a": np.arange(5), "b": np.eye(2, dtype=np.float32)}
    for compress in (True, False):
        path = write_npz(tmp_path / f"x{compress}.npz", arrays, compress=compress)
        with np.load(path) as got:
            assert set(got) == {"a", "b"} and np.array_equal(got["b"], arrays["b"])
    payload = {"w": torch.ones(3), "meta": {"epoch": 2}}
    got = torch.load(write_torch(tmp_path / "m.pt", payload), weights_only=True)
    assert torch.equal(got["w"], payload["w"]) and got["meta"] == {"epoch": 2}
    with pytest.raises((TypeError, AttributeError)):
        write_torch(tmp_path / "bad.pt", {"f": lambda: 0})  # not picklable: nothing is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "xFalse.npz", "xTrue.npz"]


def test_made_folders_are_reported_and_removed_only_while_empty(tmp_path: Path) -> None:
    """What a failed command made can be taken back without touching what existed or what
    someone else wrote meanwhile."""
    top = tmp_path / "a"
    top.mkdir()
    made = make_dirs(top / "b" / "c")
    assert made == [top / "b", top / "b" / "c"]
    assert make_dirs(top / "b" / "c") == []  # nothing new
    (top / "b" / "other.txt").write_text("not mine")
    remove_made_dirs(made)
    assert not (top / "b" / "c").exists() and (top / "b" / "other.txt").exists()
    (top / "b" / "other.txt").unlink()
    remove_made_dirs(made)
    assert not (top / "b").exists() and top.is_dir()  # it existed before


def test_a_folder_name_too_long_leaves_none_of_the_folders_made_before_it(tmp_path: Path) -> None:
    """make_dirs made the parents of a name too long for the file system and then failed; its
    cleanup stopped at the one never made (rmdir: ENAMETOOLONG) and left the parents."""
    with pytest.raises(OSError, match="too long"):
        make_dirs(tmp_path / "new1" / "new2" / ("x" * 300) / "deeper")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_warns_once_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int
) -> None:
    """NFS without lockd (ENOLCK), Lustre without flock or FUSE (ENOSYS, EOPNOTSUPP): the raw
    OSError stopped every automl run, --resume and fingerprint train that used to work there."""

    def no_locks(fh: object, cmd: int, *args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    lock, ran = tmp_path / "s" / ".lock", []
    for _ in range(2):
        with held_lock(lock, "study 's'"):
            ran.append(1)
    assert ran == [1, 1]
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning:") == 1, err  # once, not at every heartbeat
    assert f"{lock} does not support locks ({errno.errorcode[code]}" in err
    assert "concurrent starts are not excluded" in err


def test_a_lock_that_cannot_be_created_is_one_input_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as refused, held_lock(tmp_path / "file" / ".lock", "study 's'"):
        pass
    assert str(refused.value).startswith(f"study 's': the lock file {tmp_path / 'file'}/.lock")
    assert "expected a writable folder" in str(refused.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_lock_in_a_read_only_folder_is_one_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match="Permission denied"), held_lock(folder / ".l", "x"):
            pass
    finally:
        folder.chmod(0o755)
    assert not (folder / ".l").exists()


def test_poll_lock_gives_up_at_the_deadline_with_the_callers_refusal() -> None:
    tries: list[float] = []

    def held() -> bool:
        tries.append(time.monotonic())
        return False

    start = time.monotonic()
    with pytest.raises(PomliaError) as refused:
        poll_lock(held, "x is held by another process", 0.3)
    waited = time.monotonic() - start
    assert str(refused.value) == "x is held by another process"
    # polled (at least once more after the first try), refused once past the deadline; the
    # upper bound is loose: a loaded CI machine may oversleep each poll many times over
    assert waited >= 0.3 and len(tries) >= 2
    assert waited < 60
    tries.clear()
    with pytest.raises(PomliaError):
        poll_lock(held, "x", 0)
    assert len(tries) == 1  # no wait: one try


def test_poll_lock_takes_the_lock_once_its_holder_lets_go(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with lock.open("a") as holder, lock.open("a") as fh:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: flock excludes it

        def attempt() -> bool:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        release = threading.Timer(0.3, fcntl.flock, (holder, fcntl.LOCK_UN))
        start = time.monotonic()  # before the timer starts: the release comes >= 0.3 s after
        release.start()
        try:
            poll_lock(attempt, "held", 120)  # returns (no refusal): taken before the deadline
        finally:
            release.join()
        assert time.monotonic() - start >= 0.3  # waited for the release
        fcntl.flock(fh, fcntl.LOCK_UN)


def test_two_threads_writing_one_file_do_not_share_a_temporary(tmp_path: Path) -> None:
    """A loop's heartbeat thread and its end() both write driver.json: they shared one
    temporary name, so the second truncated the first's half-written file, renamed it away
    under it (the first then failed, and the target held the mix of both)."""
    from pomlia_hpc.files import write_atomic

    target = tmp_path / "driver.json"
    started, proceed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(f: Any) -> None:
        f.write(b'{"beat": ')
        started.set()
        assert proceed.wait(10)
        f.write(b"1}")

    def first() -> None:
        try:
            write_atomic(target, slow)
        except BaseException as exc:  # recorded for the assertion in the main thread
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(10)
    write_atomic(target, b'{"end": 2}')  # the other thread, while the first is half-way
    assert target.read_bytes() == b'{"end": 2}'
    proceed.set()
    thread.join(10)
    assert errors == [] and target.read_bytes() == b'{"beat": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["driver.json"]


def test_the_folders_made_for_an_atomic_file_are_flushed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file renamed into a folder the writer had just made, and flushed there, could vanish
    after a power cut: the new folder's own entry in its parent was never flushed. Each folder
    made is flushed in its parent now, and only those."""
    from pomlia_hpc import files

    flushed: list[Path] = []
    real = files.fsync_path

    def record(path: Path) -> None:
        flushed.append(Path(path))
        real(path)

    monkeypatch.setattr(files, "fsync_path", record)
    files.write_atomic(tmp_path / "a" / "b" / "x.json", "{}")
    assert {tmp_path, tmp_path / "a", tmp_path / "a" / "b"} <= set(flushed)
    flushed.clear()
    files.write_atomic(tmp_path / "a" / "b" / "y.json", "{}")  # the folders exist: not again
    assert tmp_path not in flushed and tmp_path / "a" not in flushed
    assert tmp_path / "a" / "b" in flushed
    flushed.clear()
    files.write_atomic(tmp_path / "c" / "z.json", "{}", fsync=False)  # cheap files: no flush
    assert flushed == []
    staged = tmp_path / "staged"
    (staged / "f").mkdir(parents=True)
    assert files.publish_dir(staged, tmp_path / "d" / "e" / "bundle")
    assert {tmp_path, tmp_path / "d", tmp_path / "d" / "e"} <= set(flushed)
    flushed.clear()
    with files.staged_dir(tmp_path / "f" / "g" / "bundle") as built:
        (built.path / "card.json").write_text("{}")
    assert {tmp_path, tmp_path / "f", tmp_path / "f" / "g"} <= set(flushed)


def test_the_sweep_knows_the_numbered_temporaries_of_file_writers(tmp_path: Path) -> None:
    """The writer of a file adds a number of its own after the pid: the sweep still reads
    the pid, removing a dead writer's temporary and keeping a live one's."""
    from pomlia_hpc.files import unique_temp_name

    live = unique_temp_name(tmp_path / "x.json")
    assert re.fullmatch(rf"\.x\.json\..+\.{os.getpid()}-\d+\.tmp", live.name), live.name
    dead = live.with_name(live.name.replace(f".{os.getpid()}-", f".{_dead_pid()}-"))
    for path in (live, dead):
        path.write_text("half")
    assert sweep_stale_temps(tmp_path) == [dead] and live.exists()


def test_a_replace_is_not_stopped_by_an_old_folder_an_earlier_one_left(tmp_path: Path) -> None:
    """`publish_dir(replace=True)` moved the old folder aside under one name per process: an
    old folder an earlier replace could not remove (a file in it that could not be deleted)
    made every later replace of that folder in the process fail with "Directory not empty"."""
    from pomlia_hpc.files import publish_dir

    target = tmp_path / "html"
    target.mkdir()
    (target / "a").write_text("one")
    left = temp_name(target.with_name("html.old"))
    (left / "kept").mkdir(parents=True)  # what an earlier replace could not remove
    new = tmp_path / "new"
    new.mkdir()
    (new / "a").write_text("two")
    assert publish_dir(new, target, replace=True)
    assert (target / "a").read_text() == "two" and (left / "kept").is_dir()
