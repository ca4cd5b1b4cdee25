"""The bearer token that guards ``/v1/feedback`` (and any admin route).

The token comes from ``token_file`` (config or ``--token-file``) or else the environment variable
``POMLIA_SERVE_TOKEN``. Without one, guarded routes answer 403: feedback changes what the
monitor concludes, so it is never open by default.
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.serve.decode import RequestError

TOKEN_ENV = "POMLIA_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


def load_token(token_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The configured token, or None. A token shorter than 16 characters is a config error, and
    so is a token file that group or others may read (as ssh refuses such a private key)."""
    env = os.environ if env is None else env
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token file {path}: cannot read it ({exc.strerror})") from exc
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            # Whoever can read the token can send feedback, which steers the monitor and the
            # retraining loop: the file must be private, like an ssh key.
            raise ConfigError(
                f"token file {path}: readable by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); expected a private file: run `chmod 600 {path}`"
            )
        source = str(path)
    else:
        token = env.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source}: the token has {len(token)} characters, expected at least "
            f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
        )
    return token


class BearerGuard:
    """Checks ``Authorization: Bearer <token>`` in constant time."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        """Return if the header carries the token; raise :class:`RequestError` 401/403 if not."""
        if self._token is None:
            raise RequestError(
                403,
                "this route is disabled: the server was started without a "
                f"token (set {TOKEN_ENV} or token_file)",
            )
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise RequestError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(value.strip().encode(), self._token):
            raise RequestError(401, "invalid bearer token")
