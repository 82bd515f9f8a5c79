#!/bin/sh
# Installs the browser tests/test_browser.py drives (Debian's `chromium` package; Playwright
# launches it by path and never downloads a browser of its own), unless one is on PATH.
# Called by `make test`. Needs root and apt (about 20 s); without them, skip the browser
# tests with -m 'not browser'.
set -eu

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
exec sh "$(dirname "$0")/apt_install.sh" chromium tests/test_browser.py \
    "chromium not found on PATH (skip the browser tests with -m 'not browser')"
