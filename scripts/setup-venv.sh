#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned stack into it. Fast when nothing changed:
# a stamp holds the hash of requirements.lock + pyproject.toml, and a matching stamp skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.pomlia-installed

hash_inputs() { cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1; }

# A venv without a working pip (e.g. left by a failed first run on a Debian without
# python3-venv) is rebuilt rather than reused.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "[setup] $VENV has no working pip: recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  if ! "$PY" -m venv "$VENV" || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    echo "[setup] error: '$PY -m venv' could not create a venv with pip; on Debian/Ubuntu" \
      "install python3-venv (apt-get install python3-venv), or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
fi

want=$(hash_inputs)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] $VENV up to date"
  exit 0
fi

export PATH="$PWD/$VENV/bin:$PATH"
# This machine's pip config lists local wheel folders that may be absent; drop that noise only.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}
echo "[setup] installing the pinned stack (first time: ~4 minutes, ~6 GB)"
pip install -q --upgrade pip
# pyrfr (SMAC's random forest) builds from source and needs swig on PATH; pip's isolated build
# environment cannot see the swig we install into the venv, so build it without isolation.
pip install -q "$(grep -E '^swig==' requirements.lock)" setuptools wheel "$(grep -E '^numpy==' requirements.lock)"
pip install -q --no-build-isolation "$(grep -E '^pyrfr==' requirements.lock)"
# pip byte-compiles every file it installs, one at a time (~1 minute of the ~4 here); compiled
# afterwards on every core instead. As with pip's own compiling, a file that does not compile
# under this Python (torch ships a few for newer ones) is left as it is.
pip install -q --no-compile -r requirements.lock
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
pip install -q --no-deps --no-build-isolation -e .
pip check
echo "$want" > "$STAMP"
echo "[setup] done"
