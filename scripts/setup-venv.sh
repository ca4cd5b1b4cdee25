#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned stack into it. Fast when nothing changed:
# a stamp holds the hash of requirements.lock + pyproject.toml, and a matching stamp skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.pomlia-installed

hash_inputs() { cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
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
pip install -q -r requirements.lock
pip install -q --no-deps --no-build-isolation -e .
pip check
echo "$want" > "$STAMP"
echo "[setup] done"
