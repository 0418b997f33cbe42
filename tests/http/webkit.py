"""What the browser tests share: Debian's headless Chromium (the ``browser`` fixture: a
module imports ``browser_fixture``), a live site (a seeded data dir served by uvicorn on
127.0.0.1), logging in as a user, screenshots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import need, need_module
from conftest_api import PW
from faceledger.core import Faceledger

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    need(
        CHROMIUM.exists(),
        "browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    )
    need_module("playwright.sync_api", "pip install -e '.[dev]' (playwright)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@dataclass
class Site:
    fl: Faceledger
    url: str
    lfw: Path


def open_as(
    browser: Any, site: Any, user: str, width: int = 1280, height: int = 900, **options: Any
) -> Any:
    """A new browser context (``options``: Playwright's, e.g. ``has_touch``) logged in as
    ``user`` on ``site`` (anything with a ``url``), on the page the login leads to."""
    context = browser.new_context(
        base_url=site.url, viewport={"width": width, "height": height}, **options
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PW)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    return page


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (wait_for_function evaluates strings in the page, which the
    app's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.1)


def shot(page: Any, name: str, full: bool = True) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)
