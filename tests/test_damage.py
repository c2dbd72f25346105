"""Damaged datasets heal, and the collector never crash-loops.

A file of another schema, or of zero bytes, in any table is skipped by every reader (the views behind every
command and ``ftlog.connect()``, the collector's state rebuild, notifications, compaction) with one warning naming
it, until ``ftlog check --repair`` moves it to ``_quarantine/``. A file or folder this process may not read is an
error naming it, never damage to move. Temporary files are hidden from every engine. A full disk or a read-only
filesystem fails a write with one ``Error:`` line and leaves nothing half-written, and a watch tries again.

Everything is real: Parquet files, DuckDB, ``python -m ftlog`` processes, a process without the capabilities that
let root ignore file modes, and a small tmpfs of the test's own that fills up and turns read-only.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import SECRET_AK, SECRET_SK

from ftlog import act
from ftlog.check import check
from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.notify import Command, Notifier
from ftlog.schema import TABLES
from ftlog.simulator import Simulator
from ftlog.state import load_state
from ftlog.store import Dataset
from ftlog.views import VIEW_ORDER, connect

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=timezone.utc)
DAY1 = "date=2024-07-01"
TASKS = tuple(f"task-damage{k:05d}" for k in range(3))
# One column of each table rewritten as text: what another tool writing into the dataset might leave.
RETYPED = {"snapshots": "run_progress", "checkpoints": "step", "polls": "http_status", "events": "observed_at",
           "deliveries": "attempts", "actions": "acted_at"}  # fmt: skip


def script_round(sim: Simulator, n: int, status: str = "Running") -> None:
    """Round ``n`` of every task: progress moves and one more checkpoint, with a new best loss, arrives."""
    for task_id in TASKS:
        points = [{"step": 10 * (s + 1), "perplexity": 2.0, "trainingLoss": 1.0 / (s + 1)} for s in range(n + 1)]
        sim.script(task_id, {"taskId": task_id, "runStatus": status, "runProgress": f"{10 * n}%",
                             "checkpointList": points})  # fmt: skip


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three rounds on 2024-07-01 and one the next day, compaction off, events delivered to a local command: every
    table holds several files on the first day."""
    data = tmp_path_factory.mktemp("history") / "data"
    dataset = Dataset(data)
    notifier = Notifier([Command(f"{sys.executable} -c pass")])
    retry = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05, total=20)
    with (
        Simulator(seed=7, speed=240, credentials={SECRET_AK: SECRET_SK}) as sim,
        QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500, retry=retry) as client,
    ):
        for n, at in enumerate([T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), T0 + timedelta(days=1)]):
            script_round(sim, n, "Done" if n == 3 else "Running")
            collect_round(client, dataset, Selection(task_ids=TASKS), now=lambda at=at: at, compact=False,
                          notifier=notifier)  # fmt: skip
    for minute in (1, 2):  # a stop rule's advice, as two collectors record it
        act.record(dataset, [act.advise(TASKS[0], rule="nan", now=T0 + timedelta(minutes=minute))])
    assert all(len(files(data, name, DAY1)) >= 2 for name in TABLES)
    return data


@pytest.fixture
def data(history: Path, tmp_path: Path) -> Path:
    """A copy of the history for one test to damage."""
    copy = tmp_path / "data"
    shutil.copytree(history, copy)
    return copy


def files(data: Path, table: str, partition: str = "date=*") -> list[Path]:
    return sorted((data / table).glob(f"{partition}/*.parquet"))


def rows(paths: list[Path]) -> int:
    return sum(pq.read_metadata(path).num_rows for path in paths)


def retype(path: Path, column: str) -> Path:
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, table[column].cast(pa.string())), path)
    return path


def stored_rows(data: Path) -> dict[str, int]:
    """Rows each table's source view reads (before any de-duplication)."""
    with connect(data) as con:
        return {name: con.execute(f"SELECT count(*) FROM _{name}").fetchone()[0] for name in TABLES}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ftlog(*args: str, data: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftlog", *args, "--data", str(data)], capture_output=True,
                          text=True, timeout=180, **kwargs)  # fmt: skip


def assert_warned_once(stderr: str, paths: list[Path]) -> None:
    """No traceback, and exactly one warning per skipped file, naming it and the repair."""
    assert "Traceback" not in stderr, stderr
    for path in paths:
        lines = [line for line in stderr.splitlines() if str(path) in line]
        assert len(lines) == 1, stderr
        assert f"skipping {path}" in lines[0] and "`ftlog check --repair`" in lines[0], lines[0]


# -- a file of another schema, or empty, in any table ---------------------------------------------------------


@pytest.mark.parametrize("damage", ["retyped", "empty"])
@pytest.mark.parametrize("table", list(TABLES))
def test_a_damaged_file_in_any_table_is_skipped_by_readers_and_compaction_until_repaired(
    table: str, damage: str, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = Dataset(data)
    partition = data / table / DAY1
    if damage == "retyped":
        bad = retype(files(data, table, DAY1)[0], RETYPED[table])
    else:
        bad = partition / "20240701T093000000000-empty000.parquet"
        bad.write_bytes(b"")
    content = bad.read_bytes()
    expected = {name: rows([path for path in files(data, name) if path != bad]) for name in TABLES}
    (data / "_state" / "tasks.parquet").unlink()  # so that the collector state is rebuilt from the data

    with caplog.at_level("WARNING", logger="ftlog.store"):
        assert stored_rows(data) == expected
        with connect(data) as con:
            for view in VIEW_ORDER:  # every view answers
                assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] >= 0
            latest = con.execute("SELECT task_id, state_hash FROM tasks ORDER BY task_id").fetchall()
        state = load_state(dataset, "tasks")
        assert sorted((task_id, s.state_hash) for task_id, s in state.items()) == latest
        # Compaction merges every other closed partition, never the damaged file into good rows.
        kept = sorted(partition.iterdir())
        dataset.compact(T0 + timedelta(days=5))
    assert sorted(partition.iterdir()) == kept and bad.read_bytes() == content
    assert all(len(files(data, name, DAY1)) == 1 for name in TABLES if name != table)
    assert caplog.text.count(f"skipping {bad}") == 1, caplog.text

    report = check(data, repair=True)
    rel = str(bad.relative_to(data))
    assert [(p.kind, p.path) for p in report.problems] == [("schema" if damage == "retyped" else "unreadable", rel)]
    assert report.moved == [(rel, f"_quarantine/{rel}")]
    assert (data / "_quarantine" / rel).read_bytes() == content
    dataset.compact(T0 + timedelta(days=5))  # with the file gone, its partition is merged too
    assert len(files(data, table, DAY1)) == 1
    assert stored_rows(data) == expected
    assert check(data).ok


@pytest.mark.slow
def test_a_file_of_another_schema_in_every_table_leaves_every_command_working_until_repaired(
    data: Path, api_env: Simulator, tmp_path: Path
) -> None:
    """Each command runs as its own process, so each shows the one warning per skipped file on its stderr."""
    bad = [retype(files(data, name, DAY1)[0], column) for name, column in RETYPED.items()]
    expected = {name: rows([path for path in files(data, name) if path not in bad]) for name in TABLES}
    counts = " UNION ALL ".join(f"SELECT '{name}' AS t, count(*) AS n FROM _{name}" for name in TABLES)

    result = ftlog("query", counts, "--format", "json", data=data)
    assert result.returncode == 0, result.stderr
    assert {row["t"]: row["n"] for row in json.loads(result.stdout)} == expected
    assert_warned_once(result.stderr, bad)
    result = ftlog("status", "--format", "json", data=data)
    assert result.returncode == 0 and sorted(row["task_id"] for row in json.loads(result.stdout)) == list(TASKS)
    assert_warned_once(result.stderr, bad)
    for command in (["events"], ["compare"], ["report", "--out", str(tmp_path / "report")]):
        result = ftlog(*command, data=data)
        assert result.returncode == 0 and result.stdout, (command, result.stderr)
        assert_warned_once(result.stderr, bad)
    assert (tmp_path / "report" / "index.html").is_file()
    notebook = f"import ftlog; print(ftlog.connect({str(data)!r}).execute('SELECT count(*) FROM curves').fetchone()[0])"
    result = subprocess.run([sys.executable, "-c", notebook], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and int(result.stdout) > 0, result.stderr
    assert_warned_once(result.stderr, bad)

    # The collector rebuilds its state from what it can read, compacts around the damaged files, and goes on.
    (data / "_state" / "tasks.parquet").unlink()
    script_round(api_env, 4, "Done")
    contents = {path: path.read_bytes() for path in bad}
    result = ftlog("collect", *TASKS, "--notify-command", f"{sys.executable} -c pass", data=data)
    assert result.returncode == 0, result.stderr
    assert_warned_once(result.stderr, bad)
    assert all(path.read_bytes() == content for path, content in contents.items())
    assert (data / "_state" / "tasks.parquet").is_file()

    checked = run("check", "--data", str(data))
    assert checked.exit_code == 1
    lines = checked.stdout.splitlines()
    for path, column in zip(bad, RETYPED.values(), strict=True):
        assert any(line.startswith(f"{path.relative_to(data)}: schema: {column} is string, expected") for line in lines)
    assert lines[-1].endswith(f"{len(bad)} problems ({len(bad)} schema)"), lines
    repaired = run("check", "--repair", "--data", str(data))
    moved = sorted(line for line in repaired.stdout.splitlines() if line.startswith("moved "))
    rels = [path.relative_to(data) for path in bad]
    assert moved == sorted(f"moved {rel} to _quarantine/{rel}" for rel in rels)
    assert run("check", "--data", str(data)).exit_code == 0
    result = ftlog("status", data=data)
    assert result.returncode == 0 and result.stderr == ""  # nothing left to skip


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A receiver on loopback: its URL, and the bodies it was sent."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_an_empty_file_in_events_and_deliveries_stops_neither_notifications_nor_any_command(
    data: Path, api_env: Simulator, webhook: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """`collect --notify` reads today's events and deliveries: an empty file there (a disk that filled up under
    another tool) is skipped, and the round's events are still delivered."""
    url, received = webhook
    today = datetime.now(timezone.utc).date().isoformat()
    empty = [
        data / name / f"date={today}" / "20000101T000000000000-empty000.parquet" for name in ("events", "deliveries")
    ]
    for path in empty:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    script_round(api_env, 4, "Done")  # a new best checkpoint for every task: one event each

    result = ftlog("collect", *TASKS, "--notify", url, data=data)
    assert result.returncode == 0, result.stderr
    assert_warned_once(result.stderr, empty)
    with connect(data) as con:
        new = {row[0] for row in con.execute('SELECT event_id FROM events WHERE "at" >= current_date').fetchall()}
    assert len(new) == len(TASKS) and {body["event_id"] for body in received} == new

    for command in (["status"], ["events"], ["compare"], ["query", "SELECT * FROM events"], ["compact"],
                    ["report", "--out", str(tmp_path / "report")]):  # fmt: skip
        outcome = run(*command, "--data", str(data))
        assert outcome.exit_code == 0 and outcome.exception is None, (command, outcome.output)
    checked = run("check", "--data", str(data))
    assert checked.exit_code == 1
    assert sorted(line.split(": ")[:2] for line in checked.stdout.splitlines()[:-1]) == sorted(
        [str(path.relative_to(data)), "unreadable"] for path in empty
    )
    assert run("check", "--repair", "--data", str(data)).exit_code == 1
    assert not any(path.exists() for path in empty)
    assert run("check", "--data", str(data)).exit_code == 0


# -- permissions ----------------------------------------------------------------------------------------------

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
# Every command, run by CliRunner inside one process that file modes apply to.
RUNNER = """
import json, sys
from click.testing import CliRunner
from ftlog.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    exception = None if result.exception is None else type(result.exception).__name__
    results.append({"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                    "exception": exception})
print(json.dumps(results))
"""


def file_modes_apply() -> None:
    """Run in the child before it starts Python: as root, give up the capabilities that let root read and write
    any file whatever its mode (the tests run as root here), so the kernel denies access as it would to any user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_restricted(commands: list[list[str]]) -> list[dict[str, Any]]:
    process = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands)], capture_output=True, text=True,
                             timeout=300, preexec_fn=file_modes_apply)  # fmt: skip
    assert process.returncode == 0, process.stderr
    results: list[dict[str, Any]] = json.loads(process.stdout)
    return results


@pytest.mark.parametrize("denied", ["file", "folder"])
def test_a_file_or_folder_without_read_permission_is_an_error_naming_it_never_damage(
    denied: str, data: Path, api_env: Simulator, tmp_path: Path
) -> None:
    # A closed day with several files: collect's own compaction reads it.
    path = files(data, "snapshots", DAY1)[0] if denied == "file" else data / "checkpoints" / DAY1
    commands = [["collect", *TASKS], ["status"], ["query", "SELECT count(*) FROM snapshots"], ["events"],
                ["compare"], ["report", "--out", str(tmp_path / "report")], ["compact"]]  # fmt: skip
    script_round(api_env, 3, "Done")
    path.chmod(0)
    try:
        results = run_restricted([[*command, "--data", str(data)] for command in commands] + [
            ["check", "--data", str(data)], ["check", "--repair", "--data", str(data)]])  # fmt: skip
    finally:
        if path.exists():  # (a check that took a permission error for damage would have moved it)
            path.chmod(0o755 if path.is_dir() else 0o644)

    for command, result in zip(commands, results, strict=False):
        assert result["exit_code"] == 1 and result["exception"] == "SystemExit", (command, result)
        assert result["stdout"] == "" and result["stderr"].count("\n") == 1, (command, result)
        assert result["stderr"].startswith("Error: ") and str(path) in result["stderr"], (command, result)
        assert "Permission denied" in result["stderr"], (command, result)
    checked, repaired = results[len(commands) :]
    if denied == "file":  # `check` lists it among the problems and, repairing, leaves it where it is
        rel = path.relative_to(data)
        for result in (checked, repaired):
            assert result["exit_code"] == 1 and result["stderr"] == "", result
            assert f"{rel}: permission: cannot read it (Permission denied); fix its permissions" in result["stdout"]
            assert "moved" not in result["stdout"], result
    else:  # a folder it cannot list: the check cannot be complete
        for result in (checked, repaired):
            assert result["exit_code"] == 1 and result["stdout"] == "", result
            assert result["stderr"] == f"Error: cannot list {path}: Permission denied\n", result
    assert path.exists() and not (data / "_quarantine").exists()
    assert run("check", "--data", str(data)).exit_code == 0  # with the mode restored, nothing is damaged


# -- temporary files ------------------------------------------------------------------------------------------


class StoppedBeforeRename:
    """The dataset's filesystem, but a write stops after its temporary file, as a writer killed right then."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.opened: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_output_stream(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_output_stream(path)

    def move(self, source: str, target: str) -> None:
        pass


def test_a_temporary_file_is_hidden_from_every_engine(data: Path) -> None:
    dataset = Dataset(data)
    expected = rows(files(data, "polls"))
    dataset.fs = StoppedBeforeRename(dataset.fs)
    dataset.write_table("polls", pq.read_table(files(data, "polls", DAY1)[0]), T0.date(), T0)
    [opened] = dataset.fs.opened
    temporary = Path(opened)
    # A whole Parquet file, under a name that starts with "." in the partition folder: if any engine read it,
    # its rows would show twice.
    assert temporary.parent == data / "polls" / DAY1 and temporary.name.startswith(".")
    assert temporary.name.endswith(".tmp") and pq.read_metadata(temporary).num_rows > 0
    assert pads.dataset(data / "polls", format="parquet", partitioning="hive").count_rows() == expected
    assert len(pd.read_parquet(data / "polls")) == expected
    assert stored_rows(data)["polls"] == expected
    assert check(data).ok  # a fresh temporary file may be a live write: not a problem


def test_check_reports_temporary_files_older_than_an_hour_and_repair_removes_them(data: Path) -> None:
    partition = data / "snapshots" / DAY1
    name = files(data, "snapshots", DAY1)[0].name
    stale = [partition / f".{name}.1234abcd.tmp", partition / f"{name}.5678ef01.tmp",  # this naming and the older
             data / "_state" / ".tasks.parquet.0badc0de.tmp"]  # fmt: skip
    fresh = partition / f".{name}.9abc0def.tmp"
    hours_ago = time.time() - 2 * 3600
    for path in [*stale, fresh]:
        path.write_bytes(b"PAR1 cut short")
    for path in stale:
        os.utime(path, (hours_ago, hours_ago))

    checked = run("check", "--data", str(data))
    assert checked.exit_code == 1
    lines = checked.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(
        f"{path.relative_to(data)}: temporary: left by an interrupted write over an hour ago; never data"
        for path in stale
    )
    assert lines[-1].endswith("3 problems (3 temporary)")
    repaired = run("check", "--repair", "--data", str(data))
    assert sorted(line for line in repaired.stdout.splitlines() if line.startswith("removed ")) == sorted(
        f"removed {path.relative_to(data)}" for path in stale
    )
    assert not any(path.exists() for path in stale) and fresh.exists()
    assert run("check", "--data", str(data)).exit_code == 0


# -- a full disk and a read-only filesystem -------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of this test's own: a disk that really fills up and really turns read-only (mounting it needs
    root, as the tests run here)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "ftlog-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write until not one more byte fits."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        size = 1 << 16
        while size:
            try:
                out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2
    return filler


def every_file(data: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in data.rglob("*") if path.is_file()}


def view_rows(data: Path) -> dict[str, set[tuple[Any, ...]]]:
    with connect(data) as con:
        return {
            "polls": set(con.execute("SELECT poll_id, task_id, polled_at, outcome FROM polls").fetchall()),
            "snapshots": set(con.execute("SELECT task_id, observed_at, state_hash FROM snapshots").fetchall()),
            "checkpoints": set(con.execute("SELECT task_id, step, training_loss FROM checkpoints").fetchall()),
        }


def next_line(lines: queue.Queue[str], wanted: str) -> str:
    """The next stderr line of a process that contains ``wanted``, within a bounded wait."""
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"no line with {wanted!r} within 60 seconds") from None
        if wanted in line:
            return line


def test_a_full_disk_fails_a_write_cleanly_and_a_watch_carries_on_once_space_is_back(
    disk: Path, api_env: Simulator
) -> None:
    data = disk / "data"
    script_round(api_env, 0)
    assert ftlog("collect", *TASKS, data=data).returncode == 0
    before, stored = every_file(data), view_rows(data)
    filler = fill(disk)

    script_round(api_env, 1)
    result = ftlog("collect", *TASKS, data=data)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: cannot write {data}/") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.endswith(".parquet: No space left on device\n"), result.stderr
    assert every_file(data) == before  # nothing half-written, not even under a temporary name

    command = [sys.executable, "-m", "ftlog", "collect", *TASKS, "--watch", "--interval", "0.2", "--data", str(data)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as watch:
        stderr = watch.stderr
        assert stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True)
        reader.start()
        for _ in range(2):  # round after round fails, and the watch goes on
            assert next_line(lines, "Warning: cannot write").endswith(": No space left on device\n")
        filler.unlink()
        next_line(lines, f"{len(TASKS)} tasks: ")  # a round that went through
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=60) == 0
        reader.join(timeout=60)  # the stream ended with the process: read to its end before it is closed
    after = view_rows(data)
    assert all(stored[view] <= after[view] for view in stored)
    assert {(task_id, step) for task_id, step, _ in after["checkpoints"]} == {(t, s) for t in TASKS for s in (10, 20)}
    assert run("check", "--data", str(data)).exit_code == 0


def test_a_read_only_filesystem_fails_writes_and_repairs_with_one_error_line(disk: Path, api_env: Simulator) -> None:
    data = disk / "data"
    script_round(api_env, 0)
    assert ftlog("collect", *TASKS, data=data).returncode == 0
    garbage = data / "polls" / "date=2024-07-01" / "20240701T090000000000-garbage0.parquet"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"not parquet")
    before, stored = every_file(data), view_rows(data)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        script_round(api_env, 1)
        result = ftlog("collect", *TASKS, data=data)
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert result.stderr.startswith(f"Error: cannot write {data}/") and result.stderr.count("\n") == 1
        assert result.stderr.endswith(": Read-only file system\n"), result.stderr
        repaired = ftlog("check", "--repair", data=data)
        assert repaired.returncode == 1 and "Traceback" not in repaired.stderr
        assert repaired.stderr == f"Error: cannot move {garbage} to {data}/_quarantine/polls/date=2024-07-01/" \
                                  f"{garbage.name}: Read-only file system\n"  # fmt: skip
        assert every_file(data) == before
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert ftlog("check", "--repair", data=data).returncode == 1  # the garbage file, now moved
    assert ftlog("collect", *TASKS, data=data).returncode == 0
    assert all(stored[view] <= rows for view, rows in view_rows(data).items())
    assert run("check", "--data", str(data)).exit_code == 0
