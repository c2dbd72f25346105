"""Headless Chromium for the browser tests (Debian's, driven by Playwright): a page that records every request,
console error, page error and dialog, so a test can assert there were none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

# No sandbox (containers), no GPU, and none of Chromium's own background traffic, which would blur the
# "no network requests" check.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "headless Chromium is required for the browser tests: install it (Debian: apt-get install chromium)"
        )
    return path


@dataclass
class Watched:
    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Watched]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            watched = Watched(page)
            page.on("request", lambda request: watched.requests.append(request.url))
            page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: watched.errors.append(str(error)))

            def refuse(dialog: Any) -> None:
                watched.errors.append(f"dialog opened: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", refuse)
            yield watched
        finally:
            browser.close()
