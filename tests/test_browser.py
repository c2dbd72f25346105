"""The report in a real headless Chromium: opened from disk, every image decodes, no errors, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import browser_page
from report_data import XSS_NAME, build_dataset

from ftlog.report import write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.parametrize("interactive", [True, False], ids=["interactive", "static"])
def test_report_renders_offline_in_chromium(tmp_path: Path, interactive: bool) -> None:
    build_dataset(tmp_path / "data", jobs=2, tasks_per_job=3, speed=2000)
    index = write_report(tmp_path / "data", tmp_path / "report", interactive=interactive)
    with browser_page() as watched:
        page = watched.page
        page.goto(index.as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "images => images.map(i => ({complete: i.complete, width: i.naturalWidth, shown: i.width}))"
        )
        title = page.title()
        text = page.inner_text("body")
        ready = page.get_attribute("#explore", "data-ready") if interactive else None
    assert len(images) == 4
    assert all(image["complete"] and image["width"] > 0 and image["shown"] > 0 for image in images), images
    assert watched.errors == []
    assert [url for url in watched.requests if not url.startswith(("file://", "data:"))] == []
    assert "tasks in" in title
    assert XSS_NAME in text, "the payload shows as text, and never ran (no dialog, no errors)"
    assert ready == ("true" if interactive else None)
