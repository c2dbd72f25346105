"""Figure 18: the interactive report and ``ftlog serve``. The size of ``index.html`` and the time from navigation
to every curve drawn in headless Chromium, at the figure 1 dataset (1,000 x 500); ``/api/tasks`` at 10,000 tasks
against the ``tasks`` view query it wraps."""

from __future__ import annotations

import shutil
import statistics
import threading
from collections.abc import Callable
from pathlib import Path

import requests

from .measure import medians, timed
from .results import Row, megabytes, seconds, times

SIZE_LIMIT_MB = 20
DRAW_LIMIT_S = 3.0
API_LIMIT = 1.5
LOADS = 5  # page loads timed, each in a fresh page
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def figure_18(
    big: Path, scale_data: Path, work: Path, runs: int, log: Callable[[str], None]
) -> tuple[list[Row], list[str]]:
    from ftlog.report import write_report

    log("figure 18: the interactive report in Chromium, and /api/tasks")
    out = work / "fig18-report"
    shutil.rmtree(out, ignore_errors=True)
    took = timed(lambda: write_report(big, out))
    index = out / "index.html"
    size_mb = index.stat().st_size / 1e6
    draws, wall = _draw_times(index, LOADS)
    draw = statistics.median(draws)
    rows = [
        Row("18a", "interactive index.html at 1,000 x 500 (every checkpoint embedded)", megabytes(size_mb),
            f"limit {SIZE_LIMIT_MB} MB", size_mb, megabytes(size_mb), f"<= {SIZE_LIMIT_MB} MB", SIZE_LIMIT_MB),
        Row("18b", "navigation to every curve drawn in headless Chromium, index.html at 1,000 x 500",
            seconds(draw), f"limit {DRAW_LIMIT_S:g} s", draw, seconds(draw), f"<= {DRAW_LIMIT_S:g} s", DRAW_LIMIT_S),
    ]  # fmt: skip
    cached, fresh, view = _api_tasks(scale_data, runs)
    ratio, text = times(cached, view)
    rows.append(
        Row("18c", "GET /api/tasks at 10,000 tasks vs the tasks view query it wraps, on an open connection",
            seconds(cached), seconds(view), ratio, text, f"<= {API_LIMIT}x its time", API_LIMIT)
    )  # fmt: skip
    notes = [
        f"Figure 18a-b: write_report over the figure 1 dataset (1,000 tasks x 500 checkpoints, {took:.1f} s), the "
        "interactive page with every checkpoint inline as columnar JSON (numbers to 6 significant digits) beside "
        "the PNG figures, which the page embeds too. 18b opens the file in Debian's Chromium (headless, software "
        f"rendering, no GPU) through Playwright, {LOADS} loads each in a fresh page, and reads performance.now() "
        "when both uPlot charts have drawn every task's curves (the navigation starts at 0); median of the loads "
        f"(all: {', '.join(f'{d:.2f}' for d in draws)} s; wall time to the page's load event and that moment: "
        f"{wall:.2f} s).",
        f"Figure 18c: `ftlog serve`'s WSGI app in a threaded werkzeug server on 127.0.0.1 over the figure 11 dataset "
        "(10,000 tasks), asked with requests on one session; the baseline fetches `SELECT * FROM tasks ORDER BY "
        f"task_id` through Arrow on an open connection. Median of {max(runs, 7)} runs each, interleaved. The server "
        "writes each answer once per version of the dataset (its files' names, sizes and times, listed at most once "
        "a second) and keeps it until a collector writes: 18c is that answer. The first request after a change "
        f"writes the JSON (all columns, raw included, in DuckDB): {seconds(fresh)} ({fresh / view:.1f}x the query). "
        "A client that sends the ETag back gets 304.",
    ]
    return rows, notes


def _draw_times(index: Path, loads: int) -> tuple[list[float], float]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    draws: list[float] = []
    wall = 0.0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            for _ in range(loads):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})

                def load(page=page) -> None:  # type: ignore[no-untyped-def]
                    page.goto(index.as_uri(), wait_until="load", timeout=120_000)
                    page.wait_for_selector("#explore[data-drawn-ms]", state="attached", timeout=120_000)

                wall = timed(load)
                draws.append(float(page.get_attribute("#explore", "data-drawn-ms") or "nan") / 1000)
                page.close()
        finally:
            browser.close()
    return draws, wall


def _api_tasks(data: Path, runs: int) -> tuple[float, float, float]:
    """Median seconds of: GET /api/tasks answered from the server's copy, the same answer written afresh, and the
    view query."""
    import ftlog
    from ftlog.compat import arrow
    from ftlog.serve import make_server_for
    from ftlog.store import Dataset

    server = make_server_for(Dataset(data), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/tasks"
    session = requests.Session()
    con = ftlog.connect(data)
    try:
        expected = con.sql("SELECT count(*) FROM tasks").fetchall()[0][0]
        assert len(session.get(url, timeout=120).json()) == expected, "the answer holds every task"

        def cached() -> None:
            session.get(url, timeout=120).raise_for_status()

        def fresh() -> None:
            server.app.live.forget()
            session.get(url, timeout=120).raise_for_status()

        def view() -> None:
            arrow(con.sql("SELECT * FROM tasks ORDER BY task_id"))

        t_cached, t_fresh, t_view = medians([cached, fresh, view], max(runs, 7))
    finally:
        server.shutdown()
        server.server_close()
        server.app.live.close()
        con.close()
    return t_cached, t_fresh, t_view
