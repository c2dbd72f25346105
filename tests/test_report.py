"""The HTML report, built from a real simulator run collected into real Parquet and read through DuckDB."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_data import RUNNING_NAME, RUNNING_TASK, XSS_MESSAGE, XSS_NAME, XSS_TASK, Population, build_dataset

import ftlog
from ftlog import act, analysis, plots
from ftlog.demo import MARKER, prepare_data_dir
from ftlog.errors import FtlogError
from ftlog.report import FIGURE_FILES, MANIFEST, write_report
from ftlog.store import Dataset


class Page(HTMLParser):
    """Every tag with its attributes, every id's text, and the text of the page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.ids: dict[str, str] = {}
        self._open: list[str] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        self._open.append(attributes.get("id", ""))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for element_id in self._open:
            if element_id:
                self.ids[element_id] = self.ids.get(element_id, "") + data


def section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert match, f"no section {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Population]:
    data = tmp_path_factory.mktemp("report") / "data"
    return data, build_dataset(data)


@pytest.fixture(scope="module")
def report(population: tuple[Path, Population], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data, _ = population
    out = tmp_path_factory.mktemp("out") / "report"
    index = write_report(data, out, ema=0.3)
    return index, index.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(report: tuple[Path, str]) -> None:
    index, html = report
    assert index.name == "index.html" and index.is_file()
    page = Page(html)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(FIGURE_FILES), "curves by step and by fraction, metrics, timeline"
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(attrs["src"].split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = plots.png_size(png)
        # Shown at half its pixel size, so it stays sharp on high-DPI screens.
        assert (int(attrs["width"]), int(attrs["height"])) == (width // 2, height // 2)
    assert not [tag for tag, _ in page.tags if tag in ("link", "iframe", "object", "embed", "base")]
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts and all("src" not in attrs for attrs in scripts), "every script is inline"
    assert "Content-Security-Policy" in html and "default-src 'none'" in html  # the page may load nothing
    for tag, attrs in page.tags:
        assert all("http:" not in value and "https:" not in value for value in attrs.values()), (tag, attrs)
        assert attrs.get("href", "#").startswith("#"), (tag, attrs)
    assert "url(" not in html and "@import" not in html
    for name in FIGURE_FILES:
        assert (index.parent / name).read_bytes().startswith(b"\x89PNG")
    leftovers = [p.name for p in index.parent.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [MANIFEST]  # the list of the files ftlog wrote there, and no temporary file


def test_header_counts_match_the_dataset(population: tuple[Path, Population], report: tuple[Path, str]) -> None:
    data, expected = population
    page = Page(report[1])
    with ftlog.connect(data) as con:
        tasks, jobs = con.execute("SELECT count(*), count(DISTINCT job_id) FROM tasks").fetchone() or (0, 0)
    assert (tasks, jobs) == (len(expected.tasks), len(expected.jobs))
    assert page.ids["task-count"] == str(tasks)
    assert page.ids["job-count"] == str(jobs)
    assert page.ids["dataset"] == str(data)
    assert page.ids["version"] == ftlog.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.ids["first-seen"])
    assert page.ids["first-seen"] <= page.ids["last-seen"]


def test_payloads_from_the_api_render_as_text(report: tuple[Path, str]) -> None:
    html = report[1]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert XSS_NAME not in html and XSS_MESSAGE not in html and "<img src=x" not in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    failures = section(html, "failures")
    assert XSS_TASK in failures and "500001: &lt;img src=x" in failures
    assert "客服问答-1" in html  # the seeded population's Chinese job name


def test_tables_show_comparison_best_checkpoints_running_and_health(
    population: tuple[Path, Population], report: tuple[Path, str]
) -> None:
    data, _ = population
    html = report[1]
    comparison = section(html, "comparison")
    for scale in ("FullFineTuning", "LoRA", "PromptTuning"):
        assert f'<td class="key">{scale}</td>' in comparison
    best = section(html, "best")
    rows = analysis.best_checkpoints(data)
    assert len(rows) >= 3
    for row in rows.itertuples(index=False):
        assert re.search(rf"{row.incrementTaskId}</td><td class=\"num\">{row.incrementCheckpointStep:,}</td>", best)
    running = section(html, "running")
    assert RUNNING_TASK in running and ">60%<" in running
    assert "unknown" not in running, "progress moved from 20% to 60%, so the ETA is known"
    health = section(html, "health")
    assert RUNNING_TASK in health and "loss rising" in health
    assert RUNNING_NAME.split()[0] in html


def test_report_limited_to_one_job(population: tuple[Path, Population], tmp_path: Path) -> None:
    data, _ = population
    job = analysis.tasks(data)["job_id"].iloc[0]
    expected = analysis.tasks(data, jobs=[job])
    html = write_report(data, tmp_path, jobs=[job], by=["parameter_scale"]).read_text(encoding="utf-8")
    page = Page(html)
    assert page.ids["task-count"] == str(len(expected)) and page.ids["job-count"] == "1"
    assert set(re.findall(r"task-[a-z0-9]{12,}", section(html, "best"))) <= set(expected["task_id"])


def test_empty_dataset_gives_a_valid_report(population: tuple[Path, Population], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report(population[0], out)  # an earlier report, with figures
    assert (out / "timeline.png").is_file()
    html = write_report(tmp_path / "nothing", out).read_text(encoding="utf-8")
    page = Page(html)
    assert page.ids["task-count"] == "0" and "No data" in html and "holds no task snapshots" in html
    assert not [tag for tag, _ in page.tags if tag == "img"]
    assert not (out / "timeline.png").exists(), "a figure the report no longer shows is removed"


def test_selection_matching_nothing_says_so(population: tuple[Path, Population], tmp_path: Path) -> None:
    html = write_report(population[0], tmp_path, jobs=["job-doesnotexist"]).read_text(encoding="utf-8")
    assert "No task in the dataset matches the selection" in html and "job job-doesnotexist" in html


def test_chinese_glyphs_render_without_missing_glyph_warnings() -> None:
    figure = plots.new_figure(3, 1)
    with plots.style():
        figure.suptitle("摘要生成实验 · 客服问答")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plots.to_png(figure).startswith(b"\x89PNG")
    # Control: without the fallback font the same text is missing glyphs, so the check above can fail.
    figure.suptitle("摘要生成实验", fontfamily="DejaVu Sans")
    with pytest.warns(UserWarning, match="missing from font"):
        figure.savefig(io.BytesIO(), format="png")


def test_report_leaves_matplotlib_global_state_alone(population: tuple[Path, Population], tmp_path: Path) -> None:
    """No pyplot (its figure registry and backend switching stay untouched) and no rcParams changes."""
    script = f"""
import sys, matplotlib
from ftlog import plots
from ftlog.report import write_report
keys = sorted(plots.STYLE)
before = [matplotlib.rcParams[key] for key in keys]
write_report({str(population[0])!r}, {str(tmp_path)!r})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert [matplotlib.rcParams[key] for key in keys] == before, "rcParams changed"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "timeline.png").is_file()


def test_cli_report_prints_the_index_path(population: tuple[Path, Population], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    command = [sys.executable, "-W", "error::UserWarning", "-m", "ftlog", "report", "--data", str(population[0])]
    done = subprocess.run([*command, "--out", str(out), "--by", "train_mode,parameter_scale", "--ema", "0.5"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "index.html")
    assert "Train mode · Parameter scale" in (out / "index.html").read_text(encoding="utf-8")


def test_cli_demo_collects_until_done_and_reports(tmp_path: Path) -> None:
    data, out = tmp_path / "demo-data", tmp_path / "demo-out"
    command = [sys.executable, "-m", "ftlog", "demo", "--data", str(data), "--out", str(out)]
    done = subprocess.run([*command, "--speed", "3000", "--interval", "0.2", "--seed", "2"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "index.html")
    assert "round 1:" in done.stderr
    statuses = analysis.tasks(data)["run_status"]
    assert set(statuses) <= {"Done", "Failed", "Stopped"}, "collected until every task ended"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert Page(html).ids["task-count"] == str(len(statuses))
    assert 'id="explore"' in html and 'id="ftlog-data"' in html, "the demo writes the interactive report"


def test_demo_deletes_only_folders_it_made(tmp_path: Path) -> None:
    collected = tmp_path / "collected"  # a real dataset: ftlog tables, but not made by the demo
    for name in ("snapshots", "checkpoints", "polls", "_state"):
        (collected / name).mkdir(parents=True)
    (collected / "snapshots" / "keep.parquet").write_text("rows")
    with pytest.raises(FtlogError, match="did not write"):
        prepare_data_dir(collected)
    assert (collected / "snapshots" / "keep.parquet").read_text() == "rows"

    demo = prepare_data_dir(tmp_path / "demo")
    (demo / "snapshots").mkdir()
    again = prepare_data_dir(demo)  # a second demo run replaces the first one's folder
    assert sorted(p.name for p in again.iterdir()) == [MARKER]
    (tmp_path / "empty").mkdir()
    assert sorted(p.name for p in prepare_data_dir(tmp_path / "empty").iterdir()) == [MARKER]


def test_static_report_has_no_script(population: tuple[Path, Population], tmp_path: Path) -> None:
    data, _ = population
    html = write_report(data, tmp_path / "static", interactive=False).read_text(encoding="utf-8")
    page = Page(html)
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object", "embed", "base")]
    assert 'id="explore"' not in html
    assert len([attrs for tag, attrs in page.tags if tag == "img"]) == len(FIGURE_FILES)


def test_cli_report_static_flag(population: tuple[Path, Population], tmp_path: Path) -> None:
    data, _ = population
    for flags, scripted in (([], True), (["--static"], False)):
        out = tmp_path / ("static" if flags else "interactive")
        done = subprocess.run(
            [sys.executable, "-m", "ftlog", "report", "--data", str(data), "--out", str(out), *flags],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ("<script>" in (out / "index.html").read_text(encoding="utf-8")) is scripted


def test_actions_section_shows_who_acted_and_why(
    population: tuple[Path, Population], report: tuple[Path, str], tmp_path: Path
) -> None:
    assert "ftlog has not stopped, continued or advised stopping any of these tasks." in section(report[1], "actions")
    data = tmp_path / "data"
    shutil.copytree(population[0], data)
    start = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)
    advised = act.advise(RUNNING_TASK, None, rule="diverged:1.5:3", now=start)
    continued = {**act.advise(RUNNING_TASK, None, rule="x", now=start + timedelta(minutes=1)), "rule": None,
                 "action": "continue", "command": "continue", "outcome": "sent",
                 "new_task_id": "task-newone00001"}  # fmt: skip
    denied = {**act.advise(RUNNING_TASK, None, rule="y", now=start + timedelta(minutes=2)), "rule": None,
              "command": "stop", "outcome": "denied", "error": "AccessDenied <script>alert(1)</script>"}  # fmt: skip
    act.record(Dataset(data), [advised, continued, denied])
    html = write_report(data, tmp_path / "out").read_text(encoding="utf-8")
    rows = re.findall(r"<tr>(.*?)</tr>", section(html, "actions"), re.S)
    cells = [found for row in rows if (found := re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))]
    assert [(c[2], c[3], c[4], c[5], c[6]) for c in cells] == [
        (RUNNING_TASK, "stop", "ftlog stop", "denied", "AccessDenied &lt;script&gt;alert(1)&lt;/script&gt;"),
        (RUNNING_TASK, "continue", "ftlog continue", "sent", "new task task-newone00001"),
        (RUNNING_TASK, "stop", "rule diverged:1.5:3", "advised", "nothing sent"),
    ]
    assert "<script>alert(1)" not in html
