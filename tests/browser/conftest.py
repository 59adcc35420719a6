"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against a live server.

Playwright never downloads a browser here: it drives the system's Chromium. `make services` (.ci/services)
installs it on a fresh machine.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT

CHROMIUM = Path(os.environ.get("KAHN_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = PROJECT / "test-artifacts"
# The flags this machine needs: no sandbox as root, and no background calls to a network it lacks.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(monkeypatch, tmp_path) -> Iterator:
    """A fresh page in a fresh profile; fails the test, loudly, if the page had a script error."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make services` (apt-get install chromium) first")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # synchronous and safe, which Django cannot tell without being told.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1360, "height": 900},
        )
        page = context.new_page()
        errors: list[str] = []
        # A test that makes errors on purpose (a server stopped under the page) checks and clears them.
        page.console_errors = errors
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        try:
            yield page
        finally:
            context.close()
        assert errors == [], errors
