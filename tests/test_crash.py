"""Crash safety: collectors and compactions SIGKILLed at random (seeded) moments, in real child processes.

After every kill the dataset must read cleanly, no partial file may be visible, every round a collector reported
as finished must be stored in full, and the collector state must never remember anything the data lacks (or the
collector would never write it again).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ftlog.check import check
from ftlog.client import QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.state import load_state
from ftlog.store import Dataset
from ftlog.views import connect

SUMMARY = re.compile(r"^\d+ tasks: (\d+) changed, (\d+) unchanged, (\d+) errors, ")


@contextmanager
def ftlog_process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-m", "ftlog", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def listing(data: Path) -> set[str]:
    """Every file under the dataset, temporary ones included: any change means a writer is at work."""
    return {str(path) for path in data.rglob("*") if path.is_file()} if data.exists() else set()


def kill_at_random(process: subprocess.Popen[bytes], data: Path, rng: random.Random, longest: float) -> bool:
    """Wait for the process's first write, then SIGKILL it up to ``longest`` seconds later; True if it was killed
    (rather than finished on its own first)."""
    start = listing(data)
    while listing(data) == start and process.poll() is None:
        time.sleep(0.001)
    time.sleep(rng.uniform(0, longest))
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return process.returncode == -signal.SIGKILL


def assert_no_partial_file_visible(data: Path) -> None:
    for path in data.rglob("*.parquet"):  # data files and the state file alike; temporary names end in .tmp
        pq.read_table(path)  # a partial file has no footer and fails here


def assert_consistent(data: Path, reported_polls: int) -> None:
    """Everything a reader may rely on after a crash."""
    assert_no_partial_file_visible(data)
    report = check(data)
    # Duplicates are allowed (an interrupted compaction leaves them, and the views absorb them); nothing else is.
    assert [p for p in report.problems if p.kind != "duplicates"] == [], report.lines()
    with connect(data) as con:
        polls = con.execute("SELECT count(*) FROM polls").fetchall()[0][0]
        assert polls >= reported_polls  # every finished round's polls, and maybe some of a killed round
        # Data is written before polls: a poll that reports a change always finds its snapshot.
        orphans = con.execute(
            "SELECT count(*) FROM polls p ANTI JOIN _snapshots s ON s.task_id = p.task_id AND s.observed_at = "
            "p.polled_at WHERE p.outcome = 'changed'"
        ).fetchall()
        assert orphans == [(0,)]
        for view in ("snapshots", "tasks", "checkpoints", "metric_values", "status_changes"):
            con.execute(f"SELECT count(*) FROM {view}").fetchall()


@pytest.mark.slow
@pytest.mark.timeout(420)  # fifty collector starts; a loaded machine takes far longer than an idle one
def test_collectors_killed_at_random_moments_lose_no_finished_round(api_env: Simulator, data: Path) -> None:
    rng = random.Random(7001)
    rounds = kills = reported = 0
    # Each collector runs a few rounds of --watch before its kill lands; at least 50 rounds end or die that way.
    while rounds < 50 or kills < 10:
        assert kills < 60, f"only {rounds} rounds in {kills} kills"
        with ftlog_process("collect", "--all", "--watch", "--interval", "0.1", "--data", str(data)) as collector:
            kills += kill_at_random(collector, data, rng, longest=1.2)
            assert collector.stderr is not None
            stderr = collector.stderr.read().decode()
        assert "Traceback" not in stderr, stderr
        finished = [m for line in stderr.splitlines() if (m := SUMMARY.match(line))]
        rounds += len(finished) + 1  # the killed one, wherever it was
        reported += sum(int(m.group(1)) + int(m.group(2)) + int(m.group(3)) for m in finished)
        assert_consistent(data, reported)

    # The next collector carries on from whatever the kills left, and finds nothing it already stored new.
    dataset = Dataset(data)
    with connect(data) as con:
        latest = dict(con.execute("SELECT task_id, state_hash FROM tasks").fetchall())
    assert len(latest) == len(api_env.tasks)
    assert {task_id: state.state_hash for task_id, state in load_state(dataset, "tasks").items()} == latest


def closed_day_rounds(sim: Simulator, client: QianfanClient, dataset: Dataset, day: datetime, rounds: int) -> None:
    """Rounds at an injected time on a past day: each task moves on every round, so every table gets a file."""
    for n in range(rounds):
        for k in range(6):
            task_id = f"task-compact{k:05d}"
            points = [{"step": 32 * (s + 1), "perplexity": 1 + 1 / (s + 1), "trainingLoss": 1 / (s + 1)}
                      for s in range(n + 1)]  # fmt: skip
            # Incompressible notes make files large enough that a kill can land in the middle of writing one.
            notes = random.Random(f"{task_id}{day}{n}").randbytes(30_000).hex()
            sim.script(task_id, {"taskId": task_id, "jobId": "job-compact00001", "runStatus": "Running",
                                 "runProgress": f"{n}.{day.day:02d}{day.hour:02d}%", "checkpointList": points,
                                 "notes": notes})  # fmt: skip
        tasks = tuple(f"task-compact{k:05d}" for k in range(6))
        collect_round(client, dataset, Selection(task_ids=tasks), now=lambda at=day + timedelta(minutes=n): at,
                      compact=False)  # fmt: skip


def view_rows(data: Path) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "snapshots": "SELECT task_id, observed_at, state_hash, run_progress FROM snapshots",
        "checkpoints": "SELECT * FROM checkpoints",
        "polls": "SELECT poll_id, task_id, polled_at, outcome FROM polls",
        "status_changes": "SELECT * FROM status_changes",
    }
    with connect(data) as con:
        return {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in queries.items()}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_compaction_killed_at_random_moments_loses_nothing(sim: Simulator, client: QianfanClient, data: Path) -> None:
    dataset = Dataset(data)
    first = datetime(2024, 4, 1, 6, 0, tzinfo=timezone.utc)
    days = 8
    for d in range(days):
        closed_day_rounds(sim, client, dataset, first + timedelta(days=d), rounds=3)
    rng = random.Random(7002)
    kills = attempt = 0
    while kills < 8:
        attempt += 1
        assert attempt <= 30, f"only {kills} kills landed during a compaction"
        # Fresh small files on a few days, some already compacted, so every compaction has work to be killed in.
        for d in rng.sample(range(days), 2):
            closed_day_rounds(sim, client, dataset, first + timedelta(days=d, hours=attempt), rounds=2)
        before = view_rows(data)
        with ftlog_process("compact", "--data", str(data)) as compactor:
            kills += kill_at_random(compactor, data, rng, longest=0.4)
        assert_consistent(data, 0)
        assert view_rows(data) == before  # not a row lost, none doubled in any view

    before = view_rows(data)
    dataset.compact()  # one uninterrupted compaction finishes the job
    assert all(len(infos) == 1 for name in ("snapshots", "polls") for infos in dataset.partitions(name).values())
    assert view_rows(data) == before
    assert check(data).ok
