"""The interactive report in a real headless Chromium, opened from disk: hover, legend, zoom, switches, the runs
table; no request leaves the file, no error, no dialog, whatever the job names hold."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Watched, browser_page
from report_data import RUNNING_NAME, XSS_NAME, Population, build_dataset

import ftlog
from ftlog.report import write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Population]:
    folder = tmp_path_factory.mktemp("explore-browser")
    population = build_dataset(folder / "data")
    return folder / "data", write_report(folder / "data", folder / "report"), population


@pytest.fixture
def opened(report: tuple[Path, Path, Population]) -> Iterator[Watched]:
    with browser_page() as watched:
        watched.page.goto(report[1].as_uri(), wait_until="load")
        watched.page.wait_for_selector("#explore[data-ready=true]")
        yield watched
    assert watched.errors == [], "no console error, page error or dialog"
    assert [url for url in watched.requests if not url.startswith(("file://", "data:"))] == [], "no network"


def rows_in_table(page: Any) -> list[str]:
    return page.eval_on_selector_all("#ex-runs tbody tr", "rows => rows.map(r => r.dataset.task)")


def test_hovering_a_curve_shows_its_task_and_values(report: tuple[Path, Path, Population], opened: Watched) -> None:
    data = report[0]
    with ftlog.connect(data) as con:
        # The highest loss of all, the first point of some curve: no other line passes there.
        task_id, step, loss, perplexity, job_name = con.execute(
            """SELECT c.task_id, c.step, c.training_loss, c.perplexity, t.job_name
               FROM checkpoints c JOIN tasks t USING (task_id) WHERE isfinite(c.training_loss)
               ORDER BY c.training_loss DESC, c.task_id LIMIT 1"""
        ).fetchone()
    page = opened.page
    page.locator("#ex-chart-loss").scroll_into_view_if_needed()
    point = page.evaluate("([t, s]) => ftlogExplore.point('loss', t, s)", [task_id, step])
    assert point is not None
    page.mouse.move(point["x"], point["y"])
    tooltip = page.locator("#ex-tooltip")
    tooltip.wait_for(state="visible")
    assert tooltip.get_attribute("data-task") == task_id
    assert tooltip.get_attribute("data-step") == str(step)
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in tooltip.inner_text().splitlines())
    text = tooltip.inner_text()
    assert task_id in text and str(job_name) in text
    shown_loss = float(text.split("Training loss", 1)[1].split()[0].replace(",", ""))
    assert shown_loss == pytest.approx(loss, rel=1e-5)
    if perplexity is not None and math.isfinite(perplexity):
        shown = float(text.split("Perplexity", 1)[1].split()[0].replace(",", ""))
        assert shown == pytest.approx(perplexity, rel=1e-5)
    assert lines  # model · train mode · scale is on its own line too
    page.mouse.move(5, 5)
    tooltip.wait_for(state="hidden")


def test_clicking_a_group_hides_and_shows_its_lines(report: tuple[Path, Path, Population], opened: Watched) -> None:
    page = opened.page
    every = set(page.evaluate("ftlogExplore.shownTasks('loss')"))
    with ftlog.connect(report[0]) as con:
        rows = con.execute(
            """SELECT model || ' · ' || train_mode || ' · ' || parameter_scale, list(task_id) FROM tasks
               WHERE task_id IN (SELECT task_id FROM checkpoints) GROUP BY ALL ORDER BY count(*) DESC, 1 LIMIT 1"""
        ).fetchone()
    group, members = rows[0], set(rows[1])
    button = page.locator(".ex-group", has_text=group)
    button.click()
    assert button.get_attribute("aria-pressed") == "false"
    for chart in ("loss", "perplexity"):
        assert set(page.evaluate(f"ftlogExplore.shownTasks('{chart}')")) == every - members
    button.click()
    assert set(page.evaluate("ftlogExplore.shownTasks('loss')")) == every


def test_runs_table_sorts_and_filters(report: tuple[Path, Path, Population], opened: Watched) -> None:
    page = opened.page
    with ftlog.connect(report[0]) as con:
        by_best = con.execute(
            """SELECT t.task_id FROM tasks t LEFT JOIN (
                   SELECT task_id, min(training_loss) FILTER (WHERE isfinite(training_loss)) AS best
                   FROM checkpoints GROUP BY ALL) c USING (task_id)
               ORDER BY c.best NULLS LAST, t.task_id"""
        ).fetchall()
        total = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
        cjk = con.execute("SELECT list(task_id ORDER BY task_id) FROM tasks WHERE job_name LIKE '客服%'").fetchone()[0]
    assert len(rows_in_table(page)) == total
    header = page.locator("#ex-runs th[data-column=best_loss] button")
    header.click()
    ascending = rows_in_table(page)
    with_best = [t for (t,) in by_best]
    # Equal best losses keep task order; missing ones come last.
    assert ascending == with_best
    header.click()
    descending = rows_in_table(page)
    assert page.get_attribute("#ex-runs th[data-column=best_loss]", "aria-sort") == "descending"
    known = [t for t in descending if t in set(with_best[: len(with_best)])]
    assert known[0] != ascending[0] or total == 1

    page.fill("#ex-filter", "客服")
    assert sorted(rows_in_table(page)) == sorted(cjk) and cjk
    assert "客服问答" in page.inner_text("#ex-runs tbody")  # CJK names render as text
    page.fill("#ex-filter", "<script>")
    (only,) = rows_in_table(page)
    assert XSS_NAME in page.inner_text(f"#ex-runs tr[data-task='{only}']")
    page.fill("#ex-filter", "")
    assert len(rows_in_table(page)) == total
    assert RUNNING_NAME in page.inner_text("#ex-runs tbody")


def test_selecting_a_run_highlights_its_curves(report: tuple[Path, Path, Population], opened: Watched) -> None:
    page = opened.page
    with ftlog.connect(report[0]) as con:
        (task,) = con.execute("SELECT task_id FROM checkpoints GROUP BY ALL ORDER BY count(*) DESC LIMIT 1").fetchone()
    canvas = page.locator("#ex-chart-loss canvas")
    before = canvas.screenshot()
    first = page.locator(f"#ex-runs tbody tr[data-task='{task}']")
    first.click()
    assert page.evaluate("ftlogExplore.selected()") == [task]
    assert "selected" in (first.get_attribute("class") or "")
    assert canvas.screenshot() != before, "the selected task's lines are drawn again, thicker"
    first.click()
    assert page.evaluate("ftlogExplore.selected()") == []


def test_zoom_switches_and_reset(report: tuple[Path, Path, Population], opened: Watched) -> None:
    page = opened.page
    with ftlog.connect(report[0]) as con:
        task, steps, losses = con.execute(
            """SELECT task_id, list(step ORDER BY step), list(training_loss ORDER BY step) FROM checkpoints
               GROUP BY ALL ORDER BY count(*) DESC, task_id LIMIT 1"""
        ).fetchone()
    page.locator("#ex-chart-loss").scroll_into_view_if_needed()
    start = page.evaluate("ftlogExplore.scales('loss')")
    box = page.locator("#ex-chart-loss .u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    width = start["x"][1] - start["x"][0]
    page.wait_for_function(f"(s => s.x[1] - s.x[0] < {width})(ftlogExplore.scales('loss'))")
    page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert page.evaluate("ftlogExplore.scales('loss')")["x"] == start["x"]
    # drag to zoom
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=5)
    page.mouse.up()
    dragged = page.evaluate("ftlogExplore.scales('loss')")
    assert dragged["x"][1] - dragged["x"][0] < start["x"][1] - start["x"][0]
    page.click("#ex-reset")
    assert page.evaluate("ftlogExplore.scales('loss')")["x"] == start["x"]

    page.check("#ex-x-fraction")
    share = page.evaluate("ftlogExplore.scales('loss')")
    assert share["x"][0] >= 0 and share["x"][1] <= 1.0001
    assert page.evaluate(f"ftlogExplore.drawn('loss', '{task}')")["x"] == pytest.approx([s / steps[-1] for s in steps])
    page.check("#ex-log")
    assert page.evaluate("ftlogExplore.scales('loss')")["log"] is True
    page.locator("#ex-smoothing").fill("0.8")
    assert page.inner_text("#ex-smoothing-value") == "0.80"
    smoothed, previous = [], None
    for value in losses:  # EMA with weight 0.2 on each new value, as analysis.curves(ema=0.2)
        previous = value if previous is None else 0.2 * value + 0.8 * previous
        smoothed.append(previous)
    assert page.evaluate(f"ftlogExplore.drawn('loss', '{task}')")["y"] == pytest.approx(smoothed, rel=1e-4)


def test_comparison_and_timeline_show_values_on_hover(opened: Watched) -> None:
    page = opened.page
    bar = page.locator("#ex-compare .ex-bar").first
    bar.scroll_into_view_if_needed()
    bar.hover()
    tooltip = page.locator("#ex-tooltip")
    tooltip.wait_for(state="visible")
    assert "Mean" in tooltip.inner_text() and "BLEU-4" in tooltip.inner_text()
    stretch = page.locator("#ex-timeline .ex-stretch").first
    stretch.scroll_into_view_if_needed()
    stretch.hover()
    page.wait_for_function("document.getElementById('ex-tooltip').innerText.includes('Status')")
    assert "Task" in tooltip.inner_text()
