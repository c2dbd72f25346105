"""Take the README's picture of the interactive report: ``make screenshot`` (after ``make demo``).

Opens the demo report in headless Chromium (Debian's, driven by Playwright), hovers the first checkpoint of the
task with the highest loss so the tooltip shows, and saves the charts part of the page as a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HIGHEST_START = """() => {
    let best = null;
    for (const task of ftlogExplore.tasks()) {
        const drawn = ftlogExplore.drawn("loss", task);
        if (drawn.x.length && (best === null || drawn.y[0] > best.y)) best = {task, step: drawn.x[0], y: drawn.y[0]};
    }
    return best && ftlogExplore.point("loss", best.task, best.step);
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path, help="the report's index.html, e.g. reports/demo/index.html")
    parser.add_argument("out", type=Path, help="the PNG to write, e.g. docs/report.png")
    args = parser.parse_args()
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None or not args.report.is_file():
        print("needs Chromium (apt-get install chromium) and a report (make demo)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
            page.goto(args.report.resolve().as_uri(), wait_until="load")
            page.wait_for_selector("#explore[data-drawn-ms]", state="attached")
            top = page.evaluate("document.getElementById('explore').getBoundingClientRect().top + window.scrollY")
            page.evaluate(f"window.scrollTo(0, {top} - 10)")
            # The tooltip over the first point of the run that starts highest: no other line is near it.
            point = page.evaluate(HIGHEST_START)
            if point:
                page.mouse.move(point["x"], point["y"])
                page.wait_for_selector("#ex-tooltip", state="visible")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
