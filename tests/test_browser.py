"""The report in a real headless Chromium: opened from disk, every image decodes, no errors, no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_data import XSS_NAME, build_dataset

from ftlog.report import write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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


def test_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    build_dataset(tmp_path / "data", jobs=2, tasks_per_job=3, speed=2000)
    index = write_report(tmp_path / "data", tmp_path / "report")
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("dialog", lambda dialog: errors.append(f"dialog opened: {dialog.message}"))
            page.goto(index.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "images => images.map(i => ({complete: i.complete, width: i.naturalWidth, shown: i.width}))"
            )
            title = page.title()
            text = page.inner_text("body")
        finally:
            browser.close()
    assert len(images) == 4
    assert all(image["complete"] and image["width"] > 0 and image["shown"] > 0 for image in images), images
    assert errors == []
    assert [url for url in requests if not url.startswith(("file://", "data:"))] == []
    assert "tasks in" in title
    assert XSS_NAME in text, "the payload shows as text, and never ran (no dialog, no errors)"
