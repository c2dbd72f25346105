"""`ftlog serve` as users run it: a real process on loopback over a dataset collected from the simulator, asked
over real HTTP, while collectors and compactions change the dataset under it."""

from __future__ import annotations

import http.client
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import browser_page
from report_data import ACCESS_KEY, SECRET_KEY, XSS_NAME, _running_result, build_dataset

import ftlog
from ftlog import analysis
from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset

pytestmark = pytest.mark.slow
LISTENING = re.compile(r"ftlog serve: (http://\S+/) ")


class Served:
    def __init__(self, data: Path, *extra: str) -> None:
        command = [sys.executable, "-m", "ftlog", "serve", "--data", str(data), "--port", "0", *extra]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            if found := LISTENING.search(line):
                self.url = found.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise AssertionError(f"ftlog serve did not start: {self.lines}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path.lstrip("/"), params=params, timeout=30)

    def raw(self, method: str, path: str) -> http.client.HTTPResponse:
        """A request whose path goes out exactly as written (no client normalises the dots away)."""
        host, port = self.url.split("//", 1)[1].rstrip("/").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "data"
    build_dataset(folder, jobs=2, tasks_per_job=3, speed=2000)
    return folder


@pytest.fixture(scope="module")
def served(data: Path) -> Iterator[Served]:
    server = Served(data)
    yield server
    server.stop()


def test_api_tasks_is_the_tasks_view(data: Path, served: Served) -> None:
    answer = served.get("/api/tasks")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    tasks = answer.json()
    with ftlog.connect(data) as con:
        view = con.sql("SELECT * FROM tasks ORDER BY task_id").df()
    assert [t["task_id"] for t in tasks] == view["task_id"].tolist()
    assert set(tasks[0]) == set(view.columns)
    assert [t["run_status"] for t in tasks] == view["run_status"].tolist()
    assert XSS_NAME in {t["job_name"] for t in tasks}
    for got, progress in zip(tasks, view["run_progress"], strict=True):
        assert got["run_progress"] == (None if math.isnan(progress) else pytest.approx(progress))
    first = tasks[0]["observed_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first)


def test_api_curves_are_the_tasks_checkpoints(data: Path, served: Served) -> None:
    with ftlog.connect(data) as con:
        chosen = [row[0] for row in con.sql("SELECT DISTINCT task_id FROM checkpoints ORDER BY 1 LIMIT 2").fetchall()]
        expected = con.execute(
            "SELECT task_id, step, training_loss FROM checkpoints WHERE task_id IN (?, ?) ORDER BY task_id, step",
            chosen,
        ).fetchall()
    answer = served.get("/api/curves", task_id=chosen)
    assert answer.status_code == 200
    got = [(row["task_id"], row["step"], row["training_loss"]) for row in answer.json()]
    assert got == [(t, s, pytest.approx(v)) for t, s, v in expected]
    assert served.get("/api/curves", task_id="no-such-task").json() == []
    missing = served.get("/api/curves")
    assert missing.status_code == 400 and "task_id" in missing.json()["error"]


def test_api_compare_is_compare(data: Path, served: Served) -> None:
    answer = served.get("/api/compare", by="model,train_mode")
    assert answer.status_code == 200
    expected = analysis.compare(data, ["model", "train_mode"])
    rows = answer.json()
    assert [(r["model"], r["train_mode"], r["tasks"]) for r in rows] == list(
        zip(expected["model"], expected["train_mode"], expected["tasks"], strict=True)
    )
    for row, mean in zip(rows, expected["final_loss_mean"], strict=True):
        assert row["final_loss_mean"] == (None if math.isnan(mean) else pytest.approx(mean))
    bad = served.get("/api/compare", by="model,raw; DROP TABLE x")
    assert bad.status_code == 400 and "by:" in bad.json()["error"]


def test_page_and_report_document(served: Served) -> None:
    page = served.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert '"live":true' in page.text
    document = served.get("/api/report").json()
    assert XSS_NAME in document["runs"]["job_name"]
    assert re.fullmatch(r"[0-9a-f]{16}", served.get("/api/version").json()["version"])


@pytest.mark.parametrize(
    "path",
    ["/nope", "/api", "/api/tasks/x", "/../etc/passwd", "/api/../api/tasks", "/%2e%2e/etc/passwd",
     "/api/%2e%2e/api/tasks", "/api/..%2fapi/tasks", "//etc/passwd", "/static/../../pyproject.toml", "/.git/config"],
)  # fmt: skip
def test_unknown_paths_and_traversal_are_404(served: Served, path: str) -> None:
    assert served.raw("GET", path).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_reading_methods(served: Served, method: str) -> None:
    answer = served.raw(method, "/api/tasks")
    assert answer.status == 405
    assert answer.getheader("Allow") is not None and "POST" not in answer.getheader("Allow", "")
    assert served.raw("HEAD", "/api/tasks").status == 200


def test_refuses_a_missing_dataset_and_a_busy_port(tmp_path: Path, data: Path, served: Served) -> None:
    done = subprocess.run([sys.executable, "-m", "ftlog", "serve", "--data", str(tmp_path / "typo")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("Error: no ftlog dataset")
    port = served.url.rsplit(":", 1)[1].rstrip("/")
    done = subprocess.run([sys.executable, "-m", "ftlog", "serve", "--data", str(data), "--port", port],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and "cannot listen" in done.stderr and "Traceback" not in done.stderr


def test_warns_when_bound_beyond_loopback(data: Path) -> None:
    server = Served(data, "--host", "0.0.0.0")
    try:
        assert any(line.startswith("warning: serving on 0.0.0.0") for line in server.lines)
        assert requests.get(server.url.replace("0.0.0.0", "127.0.0.1") + "api/version", timeout=30).ok
    finally:
        server.stop()


def test_keeps_serving_while_collectors_write_and_compact(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dataset = Dataset(data)
    with Simulator(seed=11, speed=300, jobs=2, tasks_per_job=3, credentials={ACCESS_KEY: SECRET_KEY}) as sim, \
            QianfanClient(Credentials(ACCESS_KEY, SECRET_KEY), base_url=sim.url, rps=500) as client:  # fmt: skip
        collect_round(client, dataset, Selection(all_jobs=True))
        server = Served(data)
        failures: list[str] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                for path in ("api/tasks", "api/report", "api/compare?by=model"):
                    answer = requests.get(server.url + path, timeout=60)
                    if answer.status_code != 200:
                        failures.append(f"{path}: {answer.status_code} {answer.text[:200]}")

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            for _ in range(6):
                collect_round(client, dataset, Selection(all_jobs=True))
                dataset.compact(open_max_files=1)  # merges today's files too: every round removes files
        finally:
            stop.set()
            asker.join(timeout=120)
            server.stop()
    assert failures == []


@pytest.mark.browser
def test_page_shows_a_new_task_without_reload(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dataset = Dataset(data)
    new_task, new_job = "task-live00000001", "job-live00000001"
    with Simulator(seed=5, speed=2000, jobs=1, tasks_per_job=2, credentials={ACCESS_KEY: SECRET_KEY}) as sim, \
            QianfanClient(Credentials(ACCESS_KEY, SECRET_KEY), base_url=sim.url, rps=500) as client:  # fmt: skip
        collect_round(client, dataset, Selection(all_jobs=True))
        server = Served(data)
        try:
            with browser_page() as watched:
                page = watched.page
                page.goto(server.url, wait_until="load")
                page.wait_for_selector("#explore[data-ready=true]")
                before = page.evaluate("ftlogExplore.tasks()")
                assert before and new_task not in before
                stamp = page.inner_text("#ex-updated")
                result = _running_result(20) | {"taskId": new_task, "jobId": new_job, "jobName": "实时 <i>live</i>"}
                sim.script(new_task, result, job_id=new_job)
                collect_round(client, dataset, Selection(all_jobs=True))
                page.wait_for_selector(f"#ex-runs tr[data-task='{new_task}']", timeout=20_000)
                assert new_task in page.evaluate("ftlogExplore.tasks()")
                assert page.inner_text("#ex-updated") != stamp
                assert page.evaluate(f"ftlogExplore.drawn('loss', '{new_task}')")["y"][0] == pytest.approx(2.0)
                assert "实时 <i>live</i>" in page.inner_text(f"#ex-runs tr[data-task='{new_task}']")
            assert watched.errors == []
            assert all(url.startswith(server.url) for url in watched.requests), "only the server it came from"
        finally:
            server.stop()
    assert json.dumps(server.lines).count("Traceback") == 0


def test_unchanged_answers_are_not_sent_again(served: Served) -> None:
    first = served.get("/api/tasks")
    tag = first.headers["ETag"]
    again = requests.get(served.url + "api/tasks", headers={"If-None-Match": tag}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    other = requests.get(served.url + "api/compare?by=model", headers={"If-None-Match": tag}, timeout=30)
    assert other.status_code == 200, "a tag names one answer, not every answer of the version"
