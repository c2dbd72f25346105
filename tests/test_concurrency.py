"""Everything at once: two collectors over overlapping tasks, compaction in a loop, and readers querying the views
and checking the dataset the whole time. Every query must answer, and answer consistently."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import SECRET_AK, SECRET_SK

from ftlog.check import check
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect, fetch

JOB = "job-overlap00001"
ONLY_FIRST = tuple(f"task-first{k:06d}" for k in range(3))
SHARED = tuple(f"task-both0{k:06d}" for k in range(4))
ONLY_SECOND = tuple(f"task-secnd{k:06d}" for k in range(3))
ALL = ONLY_FIRST + SHARED + ONLY_SECOND
VERSIONS = 40  # states each task moves through while the collectors run


def serve(sim: Simulator, v: int) -> None:
    """Version ``v`` of every task: a new progress value (never an earlier one) and a checkpoint every 4th."""
    for task_id in ALL:
        points = [{"step": 32 * n, "perplexity": 1 + 1 / n, "trainingLoss": 1 / n} for n in range(1, v // 4 + 2)]
        sim.script(task_id, {"taskId": task_id, "jobId": JOB, "runStatus": "Running" if v < VERSIONS else "Done",
                             "runProgress": f"{v}%", "checkpointList": points}, job_id=JOB)  # fmt: skip


class Worker(threading.Thread):
    """Runs ``step`` until told to stop; keeps the first exception for the test to raise."""

    def __init__(self, name: str, step: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.step, self.stop, self.runs = step, stop, 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                self.runs += 1
        except BaseException as exc:  # handed to the test thread
            self.error = exc


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_collectors_compaction_and_readers_at_the_same_time(
    sim: Simulator, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = Dataset(data)
    serve(sim, 1)
    retry = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, total=20)
    clients = [QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500, retry=retry)
               for _ in range(2)]  # fmt: skip
    collect_round(clients[0], dataset, Selection(task_ids=ALL))  # the readers connect to a dataset with files
    stop = threading.Event()
    polls = [0, 0]

    def collector(k: int, tasks: tuple[str, ...]) -> Callable[[], None]:
        def step() -> None:
            result = collect_round(clients[k], Dataset(data), Selection(task_ids=tasks))
            polls[k] += result.changed + result.unchanged + result.errors

        return step

    def compactor() -> None:
        # Today's partition merged as soon as it has two files: a compaction is running nearly all the time.
        Dataset(data).compact(datetime.now(timezone.utc), open_max_files=2)

    seen: dict[str, list[tuple[int, int]]] = {}

    def reader() -> None:
        # Through ftlog's query helper, as the CLI, the reports and the analysis functions query.
        with connect(data) as con:
            per_task = fetch(
                con,
                """SELECT task_id, count(*) AS n, count(DISTINCT state_hash) AS states,
                          count(DISTINCT (observed_at, state_hash)) AS keys, bool_and(forward) AS forward
                   FROM (SELECT task_id, state_hash, observed_at, run_progress > coalesce(lag(run_progress)
                                OVER (PARTITION BY task_id ORDER BY observed_at), -1) AS forward FROM snapshots)
                   GROUP BY task_id""",
            ).to_pylist()
        by_task = {row["task_id"]: row for row in per_task}
        assert set(by_task) == set(ALL)
        assert all(row["n"] == row["keys"] for row in per_task)  # no row shows twice, whatever the files hold
        for task_id in ONLY_FIRST + ONLY_SECOND:
            # One collector describes these: each state shows once, in the order it was served.
            assert by_task[task_id]["n"] == by_task[task_id]["states"] and by_task[task_id]["forward"], task_id
        # Rows are only ever added, so both counts only grow; a file missed by a query would shrink them.
        total = (sum(row["n"] for row in per_task), sum(row["states"] for row in per_task))
        mine = seen.setdefault(threading.current_thread().name, [])
        if mine:
            assert total[0] >= mine[-1][0] and total[1] >= mine[-1][1], (mine[-1], total)
        mine.append(total)

    def checker() -> None:
        report = check(data)
        assert [p for p in report.problems if p.kind != "duplicates"] == [], report.lines()

    workers = [
        Worker("collector-1", collector(0, ONLY_FIRST + SHARED), stop),
        Worker("collector-2", collector(1, SHARED + ONLY_SECOND), stop),
        Worker("compactor", compactor, stop),
        Worker("reader-1", reader, stop),
        Worker("reader-2", reader, stop),
        Worker("checker", checker, stop),
    ]

    def raise_errors() -> None:
        for worker in workers:
            if worker.error:
                raise AssertionError(f"{worker.name} failed") from worker.error

    for worker in workers:
        worker.start()
    try:
        for v in range(2, VERSIONS + 1):
            time.sleep(0.05)
            serve(sim, v)
            raise_errors()
        # Both collectors see the final state before the end.
        while any(workers[k].runs < 3 for k in range(2)) or workers[3].runs + workers[4].runs < 20:
            time.sleep(0.05)
            raise_errors()
        final_runs = [workers[k].runs for k in range(2)]
        while any(workers[k].runs < final_runs[k] + 2 for k in range(2)):
            time.sleep(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        for client in clients:
            client.close()
    raise_errors()
    assert all(w.runs > 0 for w in workers)
    # Nothing went wrong quietly either, e.g. a collector that found the state file unreadable and rebuilt it.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    with connect(data) as con:
        total = sum(polls) + len(ALL)  # and the first round's
        assert con.execute("SELECT count(*), count(DISTINCT poll_id) FROM polls").fetchall() == [(total, total)]
        assert dict(con.execute("SELECT task_id, run_status FROM tasks").fetchall()) == dict.fromkeys(ALL, "Done")
        steps = con.execute("SELECT task_id, count(*), max(step) FROM checkpoints GROUP BY ALL").fetchall()
        assert set(steps) == {(t, VERSIONS // 4 + 1, 32 * (VERSIONS // 4 + 1)) for t in ALL}
        view = con.execute("SELECT task_id, state_hash FROM snapshots ORDER BY task_id, observed_at, state_hash")
        view = view.fetchall()
        stored = con.execute("SELECT task_id, observed_at, state_hash FROM _snapshots").fetchall()
    # The view is exactly the stored observations in time order, each run of one state shown once.
    expected: list[tuple[str, str]] = []
    for task_id, _, state_hash in sorted(set(stored)):
        if not expected or expected[-1] != (task_id, state_hash):
            expected.append((task_id, state_hash))
    assert view == expected
    dataset.compact(datetime.now(timezone.utc), open_max_files=2)
    assert check(data).ok
