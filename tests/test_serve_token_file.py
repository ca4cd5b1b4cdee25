"""The bearer token file is a secret: one that group or others can read is refused, as ssh
refuses such a private key, with one line that says how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.security import load_token
from tests.fixtures.cli import pomlia_process

TOKEN = "file-token-0123456789abcdef"


def _token_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "tok"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, mode)
    with pytest.raises(ConfigError, match=rf"mode {mode:04o}.*run `chmod 600 {path}`"):
        load_token(path, env={})


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_token_file_is_read(tmp_path: Path, mode: int) -> None:
    assert load_token(_token_file(tmp_path, mode), env={}) == TOKEN


def test_serve_refuses_a_readable_token_file_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    path = _token_file(tmp_path, 0o644)
    argv = ["serve", str(bundle), "--token-file", str(path), "--port", "0"]
    res = pomlia_process(*argv, "--log-dir", str(tmp_path / "logs"))
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert f"run `chmod 600 {path}`" in err
