#!/bin/sh
# Installs the browser tests/test_browser.py drives (Debian's `chromium` package; Playwright
# launches it by path and never downloads a browser of its own), unless one is on PATH.
# Called by `make test`. Needs root and apt (about 20 s); quiet unless it fails, then it
# prints apt's output.
set -eu

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found on PATH; tests/test_browser.py needs it. Install Debian's chromium" \
         "package (apt-get install -y chromium) as root, or skip the browser tests with" \
         "-m 'not browser'." >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's chromium package (for tests/test_browser.py)"
# The package lists an image ships are usually enough; refresh them only if that fails.
if ! apt-get install -y -q --no-install-recommends chromium >"$log" 2>&1; then
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "apt-get install chromium failed (output above)" >&2
        exit 1
    fi
fi
