#!/usr/bin/env bash
# A real headless browser for the HTML tests: Debian's Chromium and its WebDriver.
#
#   scripts/browser-local.sh install   # apt-get install chromium chromium-driver if missing
#   scripts/browser-local.sh status    # print the versions; exit 0 iff both are usable
#
# Needs root for the install (Debian 12). Playwright's own browser download is not used: it
# needs the internet, while Debian's packages come through the ordinary package mirror.
set -euo pipefail

PACKAGES=(chromium chromium-driver)

log() { echo "browser-local: $*"; }

status() {
    local ok=0
    if command -v chromium >/dev/null; then log "$(chromium --version 2>/dev/null)"; else ok=1; log "chromium missing"; fi
    if command -v chromedriver >/dev/null; then log "$(chromedriver --version | head -1)"; else ok=1; log "chromedriver missing"; fi
    return $ok
}

install() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] ||
            missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "already installed"
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        log "cannot install ${missing[*]}: not root; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        return 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    status
}

case "${1:-}" in
    install) install ;;
    status) status ;;
    *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
