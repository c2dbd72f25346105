"""`ftlog collect`, `query` and `compact` through the command line: exit codes, clean output, secrets, signals."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import SECRET_SK

from ftlog.cli import cli
from ftlog.client import QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

SUMMARY = re.compile(
    r"^(\d+) tasks: (\d+) changed, (\d+) unchanged, (\d+) errors, \d+ new checkpoints in [\d.]+s( \(interrupted\))?$"
)
RUNNING = {"runStatus": "Running", "runProgress": "34%", "checkpointList": []}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def scalar(data: Path, sql: str) -> Any:
    con = connect(data)
    try:
        row = con.execute(sql).fetchone()
        assert row is not None
        return row[0]
    finally:
        con.close()


def assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def ftlog_process(*args: str, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m ftlog ARGS`` in a child process, killed and reaped however the test ends."""
    process = subprocess.Popen([sys.executable, "-m", "ftlog", *args], stdin=subprocess.DEVNULL, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def assert_dataset_reads_cleanly(data: Path) -> None:
    """Every visible file is whole, and every view answers."""
    for path in data.rglob("*.parquet"):
        pq.read_table(path)  # a truncated file has no footer and fails here
    con = connect(data)
    try:
        for view in ("snapshots", "tasks", "checkpoints", "polls", "metric_values", "status_changes"):
            con.execute(f"SELECT count(*) FROM {view}").fetchall()
        duplicated = con.execute("SELECT count(*) - count(DISTINCT poll_id) FROM polls").fetchone()
        assert duplicated == (0,)
    finally:
        con.close()


# -- exit codes ----------------------------------------------------------------------------------------------


def test_a_round_exits_0_with_one_summary_line(api_env: Simulator, data: Path) -> None:
    result = run("collect", "--all", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # stdout is for data
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and (match := SUMMARY.match(lines[0])), result.stderr  # no progress bar off a terminal
    assert int(match.group(1)) == len(api_env.tasks) and match.group(4) == "0"
    assert scalar(data, "SELECT count(DISTINCT task_id) FROM polls") == len(api_env.tasks)


def test_some_tasks_failing_exits_3_and_records_them(api_env: Simulator, data: Path) -> None:
    good, bad = list(api_env.tasks)[:2]
    api_env.fail(bad, 404, "ResourceNotFound", "task does not exist")
    result = run("collect", good, bad, "--data", str(data))
    assert result.exit_code == 3, result.output
    match = SUMMARY.match(result.stderr.splitlines()[-1])
    assert match and match.groups()[:4] == ("2", "1", "0", "1")
    assert scalar(data, f"SELECT error_code FROM polls WHERE task_id = '{bad}'") == "ResourceNotFound"
    assert scalar(data, f"SELECT outcome FROM polls WHERE task_id = '{good}'") == "changed"


def test_no_credentials_exit_1(api_env: Simulator, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QIANFAN_ACCESS_KEY")
    monkeypatch.delenv("QIANFAN_SECRET_KEY")
    assert_one_error_line(run("collect", "--all", "--data", str(data)), "QIANFAN_ACCESS_KEY")
    assert not data.exists()


@pytest.mark.parametrize("selection", [["--all"], ["task-whatever0001"]], ids=["all", "named"])
def test_rejected_credentials_exit_1(
    api_env: Simulator, data: Path, monkeypatch: pytest.MonkeyPatch, selection: list[str]
) -> None:
    monkeypatch.setenv("QIANFAN_SECRET_KEY", "not-the-right-secret-key")
    assert_one_error_line(run("collect", *selection, "--data", str(data)), "SignatureDoesNotMatch")


def test_rejected_credentials_end_a_watch_with_exit_1(
    api_env: Simulator, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QIANFAN_SECRET_KEY", "not-the-right-secret-key")
    result = run("collect", "--all", "--watch", "--interval", "0.1", "--data", str(data))
    assert_one_error_line(result, "SignatureDoesNotMatch")


def test_unreachable_api_exit_1(api_env: Simulator, data: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run("collect", "task-whatever0001", "--endpoint", endpoint, "--data", str(data))
    assert_one_error_line(result, "cannot reach")
    assert scalar(data, "SELECT outcome FROM polls") == "error"  # the attempt is on record


@pytest.mark.parametrize(
    "args", [["collect"], ["collect", "--all", "--until-done"], ["collect", "--all", "--rps", "0"]]
)
def test_usage_errors_exit_2(api_env: Simulator, data: Path, args: list[str]) -> None:
    result = run(*args, "--data", str(data))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


# -- secrets -------------------------------------------------------------------------------------------------


def test_secret_key_is_in_no_file_and_no_output(api_env: Simulator, data: Path, tmp_path: Path) -> None:
    tasks = list(api_env.tasks)
    api_env.fail(tasks[0], 500, "InternalError", "We encountered an internal error.")  # retried and logged with -v
    outputs = [run("-v", "collect", "--all", "--data", str(data))]
    api_env.heal(tasks[0])
    api_env.fail(tasks[1], 403, "AccessDenied", "Access denied.")
    outputs.append(run("collect", *tasks[:3], "--data", str(data)))
    for args in (["query", "SELECT * FROM snapshots", "--format", "json"], ["compact"]):
        outputs.append(run(*args, "--data", str(data)))
    assert [r.exit_code for r in outputs] == [3, 3, 0, 0]
    for result in outputs:
        assert SECRET_SK not in result.output

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any("_state" in p.parts for p in written)
    for path in written:
        assert SECRET_SK.encode() not in path.read_bytes(), path
        assert SECRET_SK not in str(path)
        if path.suffix == ".parquet":  # compressed pages would hide the text from a byte search
            assert SECRET_SK not in json.dumps(pq.read_table(path).to_pylist(), default=str), path


# -- query and compact ---------------------------------------------------------------------------------------


def test_query_formats_are_clean_on_stdout(api_env: Simulator, data: Path) -> None:
    metrics = {"BLEU-4": "58.62%", "ROUGE-1": "68.1%", "EDIT-DISTANCE": "43.07"}
    api_env.script("task-done0000001", {"taskId": "task-done0000001", "runStatus": "Done", "metrics": metrics})
    assert run("collect", "--all", "--data", str(data)).exit_code == 0
    sql = "SELECT task_id, run_status, run_progress, observed_at, metrics FROM snapshots ORDER BY task_id"
    count = scalar(data, "SELECT count(*) FROM snapshots")

    as_csv = run("query", sql, "--format", "csv", "--data", str(data))
    assert as_csv.exit_code == 0 and as_csv.stderr == ""
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == count and list(rows[0]) == ["task_id", "run_status", "run_progress", "observed_at", "metrics"]
    assert [r["task_id"] for r in rows] == sorted(r["task_id"] for r in rows)
    done = next(r for r in rows if r["task_id"] == "task-done0000001")
    assert json.loads(done["metrics"]) == [  # nested values as JSON, not a Python repr
        {"metric": "BLEU-4", "value": 58.62},
        {"metric": "ROUGE-1", "value": 68.1},
        {"metric": "EDIT-DISTANCE", "value": 43.07},
    ]

    as_json = run("query", sql, "--format", "json", "--data", str(data))
    assert as_json.exit_code == 0 and as_json.stderr == ""
    records = json.loads(as_json.stdout)
    assert isinstance(records, list) and len(records) == count
    assert all(isinstance(r, dict) and set(r) == set(rows[0]) for r in records)
    assert [r["task_id"] for r in records] == [r["task_id"] for r in rows]

    empty = run("query", "SELECT * FROM polls WHERE false", "--format", "json", "--data", str(data))
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []

    table = run("query", "SELECT run_status, count(*) AS n FROM tasks GROUP BY ALL", "--data", str(data))
    assert table.exit_code == 0 and table.stdout.split()[:2] == ["run_status", "n"]


def test_query_errors_exit_1(data: Path) -> None:
    (data / "snapshots").mkdir(parents=True)  # a dataset without rows: the query itself is what fails
    assert_one_error_line(run("query", "SELECT nope FROM snapshots", "--data", str(data)), "query failed")


def test_compact_merges_closed_partitions(sim: Simulator, client: QianfanClient, data: Path) -> None:
    dataset = Dataset(data)
    day = datetime(2024, 2, 3, 10, 0, tzinfo=timezone.utc)
    for minute in range(3):
        sim.script("task-compact0001", {"taskId": "task-compact0001", **RUNNING, "runProgress": f"{minute}%"})
        at = day + timedelta(minutes=minute)
        collect_round(client, dataset, Selection(task_ids=("task-compact0001",)), now=lambda: at)  # noqa: B023
    assert len(dataset.files("polls")) == 3
    before = scalar(data, "SELECT list(run_progress ORDER BY observed_at) FROM snapshots")

    result = run("compact", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert result.stderr == "compacted: 6 files merged\n"
    # checkpoints: the file of no rows of the first round (the task reports none), for readers of the folder
    assert [len(dataset.files(t)) for t in ("snapshots", "checkpoints", "polls")] == [1, 1, 1]
    assert scalar(data, "SELECT list(run_progress ORDER BY observed_at) FROM snapshots") == before == [0.0, 1.0, 2.0]


# -- watch mode ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_until_done_ends_the_watch_once_every_task_is_terminal(api_env: Simulator, data: Path) -> None:
    api_env.script("task-watch000001", {"taskId": "task-watch000001", **RUNNING})
    api_env.script("task-watch000002", {"taskId": "task-watch000002", "runStatus": "Stopped"})
    done = {"taskId": "task-watch000001", "runStatus": "Done", "metrics": {"BLEU-4": "50%"}}
    finish = threading.Timer(0.5, api_env.script, args=("task-watch000001", done))
    finish.start()
    try:
        result = run("collect", "task-watch000001", "task-watch000002", "--watch", "--until-done", "--interval", "0.1",
                     "--data", str(data))  # fmt: skip
    finally:
        finish.cancel()
    assert result.exit_code == 0, result.output
    rounds = result.stderr.splitlines()
    assert len(rounds) >= 2 and all(SUMMARY.match(line) for line in rounds)
    assert scalar(data, "SELECT run_status FROM tasks WHERE task_id = 'task-watch000001'") == "Done"
    assert scalar(data, "SELECT count(*) FROM polls") == 2 * len(rounds)


@pytest.mark.timeout(90)
def test_ctrl_c_finishes_the_round_and_exits_0(api_env: Simulator, data: Path) -> None:
    tasks = list(api_env.tasks)[:12]
    api_env.faults.latency = 0.05  # a round of 12 describes, one at a time, lasts long enough to interrupt
    with ftlog_process("collect", *tasks, "--watch", "--interval", "0.1", "--concurrency", "1", "--data", str(data),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) as watcher:  # fmt: skip
        # Interrupt during the second round: its describes have begun, its rows are not written yet.
        while len(api_env.log) <= len(tasks):  # one entry per describe; len() is safe while the server appends
            assert watcher.poll() is None, watcher.communicate()
            time.sleep(0.01)
        watcher.send_signal(signal.SIGINT)
        stdout, stderr = watcher.communicate(timeout=60)
    text = stderr.decode()
    assert watcher.returncode == 0, text
    assert stdout == b""
    assert "Traceback" not in text and "stopping after the current round's write" in text
    rounds = [m for line in text.splitlines() if (m := SUMMARY.match(line))]
    assert len(rounds) == 2  # the interrupted round was finished, and no other began
    assert int(rounds[0].group(2)) + int(rounds[0].group(3)) == len(tasks)
    described = sum(int(m.group(2)) + int(m.group(3)) + int(m.group(4)) for m in rounds)
    assert scalar(data, "SELECT count(*) FROM polls") == described  # the last round's rows are stored
    assert_dataset_reads_cleanly(data)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_at_any_moment_leaves_a_readable_dataset(api_env: Simulator, client: QianfanClient, data: Path) -> None:
    def visible() -> int:
        return sum(1 for _ in data.rglob("*.parquet")) if data.exists() else 0

    # From right after the first file of a round appears (between the tables' writes) to well into later rounds.
    for delay in (0.0, 0.0, 0.003, 0.01, 0.03, 0.1, 0.3):
        start = visible()
        with ftlog_process("collect", "--all", "--watch", "--interval", "0.1", "--data", str(data),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as collector:  # fmt: skip
            while visible() == start:
                assert collector.poll() is None, collector.communicate()
                time.sleep(0.0005)
            time.sleep(delay)
            collector.send_signal(signal.SIGKILL)
            collector.wait(timeout=30)
        assert collector.returncode == -signal.SIGKILL
        assert_dataset_reads_cleanly(data)

    # The next collector carries on from whatever was left.
    result = collect_round(client, Dataset(data), Selection(all_jobs=True))
    assert result.errors == 0
    assert_dataset_reads_cleanly(data)
    assert scalar(data, "SELECT count(*) FROM tasks") == len(api_env.tasks)
    assert scalar(data, "SELECT count(*) FROM (SELECT DISTINCT task_id, observed_at FROM snapshots)") == scalar(
        data, "SELECT count(*) FROM snapshots"
    )


@pytest.mark.timeout(60)
def test_progress_bar_only_on_a_terminal(api_env: Simulator, data: Path) -> None:
    primary, secondary = pty.openpty()
    with ftlog_process("collect", "--all", "--data", str(data), stdout=subprocess.PIPE, stderr=secondary) as collector:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the collector closed its end of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(primary)
        stdout, _ = collector.communicate(timeout=30)
    terminal = b"".join(chunks).decode(errors="replace")
    assert collector.returncode == 0, terminal
    assert stdout == b""
    total = len(api_env.tasks)
    assert "describing" in terminal and f"{total}/{total}" in terminal, terminal
    assert SUMMARY.search(terminal.splitlines()[-1].split("\r")[-1].strip()), terminal
