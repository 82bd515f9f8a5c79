"""Debian's `chromium`, driven by Playwright for Python (one headless browser per module).

Playwright is launched with `executable_path`: `playwright install` downloads browser
builds, which this project never does. Without chromium a test using `chromium` is skipped
locally with the reason, but fails under CI (CI set), where a missing browser is a broken
install (`make test` installs it: tests/support/install_chromium.sh).
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")  # Debian's package installs /usr/bin/chromium


def chromium_path() -> str | None:
    """$CHROMIUM if set, else Debian's chromium on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium():
    path = chromium_path()
    missing = None
    install = "install Debian's chromium (sh tests/support/install_chromium.sh)"
    if os.environ.get("CHROMIUM") and not os.access(path, os.X_OK):
        missing = f"CHROMIUM={path!r} is not an executable file: expected the path of a chromium binary"
    elif path is None:
        missing = f"no chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): {install}"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed: pip install -e '.[test]'"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need chromium and playwright under CI: {missing}", pytrace=False)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()
