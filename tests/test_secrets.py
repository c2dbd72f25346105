"""The secret key never leaves the process: not in the dataset, the reports, stdout, stderr, logs, error messages
or tracebacks, whatever fails along the way. Every command runs as a real ``python -m ftlog`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SECRET_AK, SECRET_SK

from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.errors import ApiError
from ftlog.simulator import Simulator
from ftlog.store import Dataset


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def child_env(sim: Simulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "FTLOG_"))}
    env.update({"QIANFAN_ACCESS_KEY": SECRET_AK, "QIANFAN_SECRET_KEY": SECRET_SK, "FTLOG_RPS": "500",
                "QIANFAN_CONSOLE_API_BASE_URL": sim.url, "PYTHONUNBUFFERED": "1", **extra})  # fmt: skip
    return env


def ftlog(cwd: Path, env: dict[str, str], *args: str) -> Run:
    done = subprocess.run([sys.executable, "-m", "ftlog", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    return Run(args, done.returncode, done.stdout, done.stderr)


def assert_secret_nowhere(runs: list[Run], *folders: Path) -> None:
    for run in runs:
        assert SECRET_SK not in run.stdout and SECRET_SK not in run.stderr, run.args
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file() and path.name != ".env"]
    assert any(path.suffix == ".parquet" for path in files) and any(path.suffix == ".html" for path in files)
    for path in files:
        assert SECRET_SK not in str(path)
        assert SECRET_SK.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":  # compressed pages would hide the text from a byte search
            assert SECRET_SK not in json.dumps(pq.read_table(path).to_pylist(), default=str), path


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_secret_key_is_in_no_output_and_no_file(sim: Simulator, tmp_path: Path) -> None:
    env = child_env(sim)
    data, reports = tmp_path / "data", tmp_path / "reports"
    tasks = list(sim.tasks)
    sim.fail(tasks[1], 403, "AccessDenied", "Access denied.")
    for kind in ("500", "reset", "truncate"):  # failures that are retried, and logged with -v
        setattr(sim.faults, f"rate_{kind}", 0.05)
    runs = [ftlog(tmp_path, env, "-v", "collect", "--all", "--data", str(data))]
    for kind in ("500", "reset", "truncate"):
        setattr(sim.faults, f"rate_{kind}", 0.0)
    # A wrong endpoint (the server answers 404 to everything there), and a wrong secret.
    runs.append(ftlog(tmp_path, env, "-v", "collect", *tasks[2:4], "--endpoint", f"{sim.url}/wrong", "--data",
                      str(data)))  # fmt: skip
    wrong_secret = child_env(sim, QIANFAN_SECRET_KEY=SECRET_SK[::-1])
    runs.append(ftlog(tmp_path, wrong_secret, "-v", "collect", "--all", "--data", str(data)))
    for args in (
        ["status", "--format", "json"],
        ["query", "SELECT * FROM polls", "--format", "csv"],
        ["query", "SELECT * FROM snapshots", "--format", "json"],
        ["query", "SELECT nope FROM nowhere"],
        ["report", "--out", str(reports)],
        ["compact"],
        ["check"],
    ):
        runs.append(ftlog(tmp_path, env, "-v", *args, "--data", str(data)))
    assert [r.returncode for r in runs] == [3, 1, 1, 0, 0, 0, 1, 0, 0, 0], [(r.args, r.stderr) for r in runs]
    assert "Traceback" not in "".join(r.stderr for r in runs)
    assert "retry" in runs[0].stderr  # -v did log the retries that were searched
    assert "InvalidURI" in runs[1].stderr and "SignatureDoesNotMatch" in runs[2].stderr

    # A second Ctrl-C aborts a round in the middle of its describes.
    sim.faults.latency = 0.3
    watcher = subprocess.Popen([sys.executable, "-m", "ftlog", "-v", "collect", *tasks, "--watch", "--concurrency",
                                "1", "--data", str(data)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        logged = len(sim.log)
        while len(sim.log) < logged + 1:  # the round is describing
            assert watcher.poll() is None
            time.sleep(0.01)
        # Describes run one at a time: the one after the next stays in flight long enough for both Ctrl-Cs to land
        # mid-round, whatever the machine's load.
        sim.faults.latency = 8.0
        while len(sim.log) < logged + 2:
            assert watcher.poll() is None
            time.sleep(0.01)
        watcher.send_signal(signal.SIGINT)
        assert watcher.stderr is not None
        first = watcher.stderr.readline()  # the first Ctrl-C is handled: the round finishes its describes
        assert "stopping after the current round's write" in first, first
        watcher.send_signal(signal.SIGINT)
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 1 and "Aborted!" in stderr, stderr
    runs.append(Run(("collect", "--watch"), watcher.returncode, stdout, first + stderr))

    assert_secret_nowhere(runs, tmp_path)


def test_tracebacks_with_locals_hold_no_secret(sim: Simulator, tmp_path: Path) -> None:
    """What an error reporter that records every frame's local variables would capture from a failed round."""
    with (
        QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=f"{sim.url}/wrong", rps=500) as client,
        pytest.raises(ApiError) as caught,
    ):
        collect_round(client, Dataset(tmp_path / "data"), Selection(task_ids=tuple(sim.tasks)[:3]))
    text = "".join(traceback.TracebackException.from_exception(caught.value, capture_locals=True).format())
    assert "collect_round" in text and "client = QianfanClient(" in text  # the frames and their locals are there
    assert SECRET_SK not in text


def test_a_dotenv_readable_by_others_is_flagged_without_the_secret(sim: Simulator, tmp_path: Path) -> None:
    env = child_env(sim)
    del env["QIANFAN_ACCESS_KEY"], env["QIANFAN_SECRET_KEY"]  # the .env supplies them
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"QIANFAN_ACCESS_KEY={SECRET_AK}\nQIANFAN_SECRET_KEY={SECRET_SK}\n", encoding="utf-8")
    dotenv.chmod(0o640)
    task = next(iter(sim.tasks))
    run = ftlog(tmp_path, env, "collect", task, "--data", "data")
    assert run.returncode == 0, run.stderr  # the credentials from .env were used
    warnings = [line for line in run.stderr.splitlines() if "readable by other users" in line]
    assert len(warnings) == 1 and "chmod 600" in warnings[0], run.stderr
    assert SECRET_SK not in run.stdout + run.stderr

    dotenv.chmod(0o600)
    run = ftlog(tmp_path, env, "collect", task, "--data", "data")
    assert run.returncode == 0 and "readable by other users" not in run.stderr
