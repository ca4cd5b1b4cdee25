#!/bin/bash
# Screenshots of the main pages of a workspace report (for docs/), with Debian's headless
# Chromium. Usage: bash scripts/report_screenshots.sh REPORT_DIR OUT_DIR [WIDTHxHEIGHT]
#   POMLIA_HOME=/tmp/ws pomlia report --out /tmp/report
#   bash scripts/report_screenshots.sh /tmp/report docs/report
set -euo pipefail
REPORT=${1:?report folder (pomlia report --out DIR)}
OUT=${2:?folder for the PNG files}
SIZE=${3:-1280,1700}
mkdir -p "$OUT"
for page in index datasets fingerprints recommendations studies models monitor pipelines; do
  [ -f "$REPORT/$page.html" ] || continue
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --disable-background-networking --window-size="$SIZE" \
    --screenshot="$OUT/report-$page.png" "file://$(realpath "$REPORT/$page.html")" 2>/dev/null
  echo "wrote $OUT/report-$page.png"
done
