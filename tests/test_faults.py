"""The collector against a misbehaving API: every fault kind of the simulator, storms of them, wrong JSON types in
every field and a huge checkpoint list. Each time the round goes on, failures land in ``polls``, a bad value is
stored as NULL with ``raw`` keeping it, nothing already stored is lost, and memory stays bounded."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET_AK, SECRET_SK

from ftlog.check import check
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import RoundResult, Selection, collect_round, watch
from ftlog.errors import ApiError, FtlogError
from ftlog.simulator import FAULT_KINDS, Faults, Simulator
from ftlog.store import Dataset
from ftlog.views import connect

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=timezone.utc)
JOB = "job-faults000001"
TASKS = tuple(f"task-fault{k:06d}" for k in range(6))
ATTEMPTS = 3
TIMEOUT = 0.2  # seconds the client waits for an answer; "slow" answers take longer
# What each fault looks like once it is a row of `polls`.
EXPECTED = {
    "429": (429, "QPSLimitReached"),
    "500": (500, "InternalError"),
    "slow": (None, "no complete answer"),
    "reset": (None, "cannot reach"),
    "html": (502, "non-JSON answer"),
    "truncate": (None, "cut off"),
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def version(task_id: str, v: int) -> dict[str, Any]:
    """State ``v`` of a task: progress and checkpoints grow with ``v``, so every version is a change."""
    points = [{"step": 64 * n, "perplexity": 1 + 1 / n, "trainingLoss": 1 / n} for n in range(1, v + 1)]
    return {"taskId": task_id, "jobId": JOB, "jobName": "faults", "runStatus": "Running",
            "runProgress": f"{10 * v}%", "checkpointList": points}  # fmt: skip


def serve(sim: Simulator, v: int, tasks: tuple[str, ...] = TASKS) -> None:
    for task_id in tasks:
        sim.script(task_id, version(task_id, v), job_id=JOB)


def rows(dataset: Dataset, sql: str) -> list[tuple[Any, ...]]:
    with connect(dataset) as con:
        return con.execute(sql).fetchall()


def stored(dataset: Dataset) -> dict[str, set[tuple[Any, ...]]]:
    """Every stored row of every table (raw sources, before the views' de-duplication)."""
    with connect(dataset) as con:
        return {
            table: set(con.execute(f"SELECT * EXCLUDE (metrics) FROM _{table}").fetchall())
            if table == "snapshots"
            else set(con.execute(f"SELECT * FROM _{table}").fetchall())
            for table in ("snapshots", "checkpoints", "polls")
        }


def assert_nothing_lost(before: dict[str, set[tuple[Any, ...]]], dataset: Dataset) -> None:
    after = stored(dataset)
    for table, old in before.items():
        assert old <= after[table], f"{table}: {len(old - after[table])} stored rows disappeared"


@pytest.fixture
def faulty() -> Iterator[tuple[Simulator, QianfanClient]]:
    """A simulator whose faults tests switch on, and a client with a short timeout and a small retry budget."""
    faults = Faults(retry_after=0.01, slow_seconds=3 * TIMEOUT)
    retry = RetryPolicy(attempts=ATTEMPTS, backoff=0.01, max_backoff=0.02, total=30)
    with (
        Simulator(seed=3, credentials={SECRET_AK: SECRET_SK}, faults=faults) as sim,
        QianfanClient(
            Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500, timeout=TIMEOUT, retry=retry
        ) as client,
    ):
        yield sim, client


# -- each fault kind -------------------------------------------------------------------------------------------


def test_every_fault_kind_is_covered() -> None:
    assert set(EXPECTED) == set(FAULT_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_fault_fails_only_the_describes_it_hits(
    kind: str, faulty: tuple[Simulator, QianfanClient], dataset: Dataset
) -> None:
    sim, client = faulty
    clock = Clock()
    serve(sim, 1)
    assert collect_round(client, dataset, Selection(task_ids=TASKS), now=clock).changed == len(TASKS)
    before = stored(dataset)

    serve(sim, 2)
    # One at a time, so the script is deterministic: the first task meets the fault on every attempt, the second
    # once before a good answer; after that the fault hits 40% of requests at random.
    sim.faults.script = [kind] * ATTEMPTS + [kind, "ok"]
    setattr(sim.faults, f"rate_{kind}", 0.4)
    started = clock.tick()
    result = collect_round(client, dataset, Selection(task_ids=TASKS), now=clock, concurrency=1)
    assert result.tasks == len(TASKS) and result.errors + result.changed == len(TASKS)
    assert result.errors >= 1 and result.changed >= 1

    polls = rows(dataset, f"SELECT task_id, outcome, http_status, error_message FROM polls "
                          f"WHERE polled_at >= '{started.isoformat()}'")  # fmt: skip
    assert len(polls) == len(TASKS)  # every describe is on record, failed or not
    failed = {task_id for task_id, outcome, *_ in polls if outcome == "error"}
    assert len(failed) == result.errors and TASKS[0] in failed and TASKS[1] not in failed
    status, fragment = EXPECTED[kind]
    for _, outcome, http_status, message in polls:
        if outcome == "error":
            assert http_status == status and fragment in message, (http_status, message)
    assert_nothing_lost(before, dataset)
    progress = dict(rows(dataset, "SELECT task_id, run_progress FROM tasks"))
    assert progress == {t: 10.0 if t in failed else 20.0 for t in TASKS}  # a failed describe changes nothing

    # The fault passes: the next round catches up on everything the failed describes missed.
    setattr(sim.faults, f"rate_{kind}", 0.0)
    clock.tick()
    result = collect_round(client, dataset, Selection(task_ids=TASKS), now=clock)
    assert (result.errors, result.changed) == (0, len(failed))
    assert dict(rows(dataset, "SELECT task_id, run_progress FROM tasks")) == dict.fromkeys(TASKS, 20.0)
    assert rows(dataset, "SELECT count(*) FROM snapshots") == [(2 * len(TASKS),)]
    assert rows(dataset, "SELECT count(*) FROM checkpoints") == [(2 * len(TASKS),)]
    assert check(dataset).ok


@pytest.mark.timeout(60)
def test_a_429_storm_fails_whole_rounds_but_the_watch_goes_on(
    faulty: tuple[Simulator, QianfanClient], dataset: Dataset
) -> None:
    sim, client = faulty
    clock = Clock()
    serve(sim, 1)
    collect_round(client, dataset, Selection(task_ids=TASKS), now=clock)
    before = stored(dataset)
    serve(sim, 2)
    sim.faults.rate_429 = 1.0
    stop = threading.Event()
    errors: list[FtlogError] = []
    rounds: list[RoundResult] = []

    def on_error(error: FtlogError) -> None:
        errors.append(error)
        if len(errors) == 3:
            sim.faults.rate_429 = 0.0  # the storm ends

    def on_round(result: RoundResult) -> None:
        rounds.append(result)
        stop.set()

    def one_round() -> RoundResult:
        clock.tick()
        return collect_round(client, dataset, Selection(task_ids=TASKS), now=clock)

    watch(one_round, interval=0.01, until_done=False, stop=stop, on_round=on_round, on_error=on_error)
    assert len(errors) == 3 and len(rounds) == 1
    assert all(isinstance(e, ApiError) and e.status == 429 and "no task could be described" in str(e) for e in errors)
    assert rounds[0].changed == len(TASKS)
    outcomes = rows(dataset, "SELECT outcome, http_status, count(*) FROM polls GROUP BY ALL ORDER BY ALL")
    assert outcomes == [("changed", 200, 2 * len(TASKS)), ("error", 429, 3 * len(TASKS))]
    assert_nothing_lost(before, dataset)
    assert dict(rows(dataset, "SELECT task_id, run_progress FROM tasks")) == dict.fromkeys(TASKS, 20.0)


@pytest.mark.timeout(120)
def test_a_storm_of_every_fault_at_once_keeps_the_dataset_consistent(
    faulty: tuple[Simulator, QianfanClient], dataset: Dataset
) -> None:
    sim, client = faulty
    tasks = tuple(f"task-storm{k:06d}" for k in range(24))
    clock = Clock()
    for kind in FAULT_KINDS:
        setattr(sim.faults, f"rate_{kind}", 0.08)  # together about half of all requests
    results = []
    for v in range(1, 6):
        serve(sim, v, tasks)
        before = stored(dataset)
        clock.tick()
        with contextlib.suppress(ApiError):  # every describe of a round failing is allowed, though unlikely
            results.append(collect_round(client, dataset, Selection(task_ids=tasks), now=clock, concurrency=8))
        assert_nothing_lost(before, dataset)
    for kind in FAULT_KINDS:
        setattr(sim.faults, f"rate_{kind}", 0.0)
    clock.tick()
    results.append(collect_round(client, dataset, Selection(task_ids=tasks), now=clock))
    assert results[-1].errors == 0
    assert sum(r.errors for r in results) > 0  # the storm did hit

    assert rows(dataset, "SELECT count(*), count(DISTINCT poll_id) FROM polls") == [(6 * len(tasks),) * 2]
    # Every poll that reported a change has its snapshot, and every error says what went wrong.
    orphans = rows(
        dataset,
        "SELECT count(*) FROM polls p ANTI JOIN _snapshots s "
        "ON s.task_id = p.task_id AND s.observed_at = p.polled_at WHERE outcome = 'changed'",
    )
    assert orphans == [(0,)]
    assert rows(dataset, "SELECT count(*) FROM polls WHERE outcome = 'error' AND error_message IS NULL") == [(0,)]
    assert dict(rows(dataset, "SELECT task_id, run_progress FROM tasks")) == dict.fromkeys(tasks, 50.0)
    expected_points = {(t, 64 * n) for t in tasks for n in range(1, 6)}
    assert set(rows(dataset, "SELECT task_id, step FROM checkpoints")) == expected_points
    assert check(dataset).ok


# -- wrong JSON types --------------------------------------------------------------------------------------------

# task suffix -> (field, value): each replaces a good value in a task that already has history.
WRONG: dict[str, tuple[str, Any]] = {
    "progress-int": ("runProgress", 99),
    "progress-text": ("runProgress", "abc"),
    "progress-null": ("runProgress", None),
    "progress-list": ("runProgress", [1, 2]),
    "ckpts-null": ("checkpointList", None),
    "ckpts-dict": ("checkpointList", {"step": 64, "perplexity": 1.2}),
    "ckpts-text": ("checkpointList", ["step 64", "step 128"]),
    "ckpts-string": ("checkpointList", "64,128"),
    "metrics-null": ("metrics", {"BLEU-4": None, "ROUGE-1": "n/a", "ROUGE-L": "61%"}),
    "metrics-text": ("metrics", "n/a"),
    "status-number": ("runStatus", 5),
    "name-object": ("jobName", {"zh": "名字"}),
    "time-number": ("createTime", 1706607714),
    "code-float": ("errorCode", 1.5),
}
GOOD_METRICS = {"BLEU-4": "58.62%", "ROUGE-1": "68.1%", "ROUGE-L": "61.25%"}


def good(task_id: str) -> dict[str, Any]:
    return {**version(task_id, 2), "metrics": GOOD_METRICS, "createTime": "2024-06-01T07:00:00Z", "errorCode": 0}


def test_wrong_types_in_every_field_become_null_and_lose_nothing(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    clock = Clock()
    tasks = {f"task-wrong-{suffix}": change for suffix, change in WRONG.items()}
    not_objects = {"task-wrong-result-list": [1, 2], "task-wrong-result-text": "ok"}
    everything = (*tasks, *not_objects)
    for task_id in everything:
        sim.script(task_id, good(task_id), job_id=JOB)
    assert collect_round(client, dataset, Selection(task_ids=everything), now=clock).changed == len(everything)
    before = stored(dataset)

    for task_id, (key, value) in tasks.items():
        sim.script(task_id, {**good(task_id), key: value}, job_id=JOB)
    for task_id, result in not_objects.items():
        sim.script(task_id, result, job_id=JOB)  # type: ignore[arg-type]  # the whole result of the wrong type
    clock.tick()
    result = collect_round(client, dataset, Selection(task_ids=everything), now=clock)
    assert (result.changed, result.errors) == (len(tasks), len(not_objects))
    assert_nothing_lost(before, dataset)
    assert result.new_checkpoints == 0  # a broken list adds nothing, and forgets nothing either

    latest = {
        task_id: (progress, status, name, created, code, bleu, rouge_1, rouge_l, count, json.loads(raw))
        for task_id, progress, status, name, created, code, bleu, rouge_1, rouge_l, count, raw in rows(
            dataset,
            "SELECT task_id, run_progress, run_status, job_name, create_time, error_code, bleu_4, rouge_1, rouge_l, "
            "checkpoint_count, raw FROM tasks",
        )
    }
    for task_id, (key, value) in tasks.items():
        assert latest[task_id][-1][key] == value, task_id  # raw keeps what was received
    progress = {t: latest[f"task-wrong-{t}"][0] for t in ("progress-int", "progress-text", "progress-null")}
    assert progress == {"progress-int": 99.0, "progress-text": None, "progress-null": None}
    assert latest["task-wrong-progress-list"][0] is None
    assert latest["task-wrong-status-number"][1] is None
    assert latest["task-wrong-name-object"][2] is None
    assert latest["task-wrong-time-number"][3] is None
    assert latest["task-wrong-code-float"][4] is None
    assert latest["task-wrong-metrics-null"][5:8] == (None, None, 61.0)
    assert latest["task-wrong-metrics-text"][5:8] == (None, None, None)
    assert [latest[f"task-wrong-ckpts-{suffix}"][8] for suffix in ("null", "dict", "text", "string")] == [0] * 4
    points = rows(dataset, "SELECT task_id, count(*) FROM checkpoints GROUP BY ALL")
    assert dict(points) == dict.fromkeys(everything, 2)  # the stored curve is intact for every task

    polls = rows(dataset, "SELECT task_id, outcome, http_status, error_message FROM polls "
                          f"WHERE polled_at = '{clock().isoformat()}' AND outcome = 'error'")  # fmt: skip
    assert {p[0] for p in polls} == set(not_objects)
    assert all(p[2] == 200 and "not an object" in p[3] for p in polls)

    # Good answers again: the state still knew every checkpoint, so none is written twice.
    for task_id in everything:
        sim.script(task_id, good(task_id), job_id=JOB)
    clock.tick()
    result = collect_round(client, dataset, Selection(task_ids=everything), now=clock)
    assert (result.errors, result.new_checkpoints) == (0, 0)
    assert rows(dataset, "SELECT count(*) FROM _checkpoints") == [(2 * len(everything),)]
    assert check(dataset).ok


# -- a huge checkpoint list --------------------------------------------------------------------------------------

HUGE = 100_000
MEMORY_BOUND = 300 * 2**20  # bytes of peak RSS growth one round may add

COLLECT_AND_MEASURE = """
import json, resource, sys
from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.store import Dataset

url, ak, sk, data, small, huge = sys.argv[1:]
client = QianfanClient(Credentials(ak, sk), base_url=url, rps=500, timeout=60)
dataset = Dataset(data)
collect_round(client, dataset, Selection(task_ids=(small,)))  # warms up pyarrow, DuckDB and the HTTP pool
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = collect_round(client, dataset, Selection(task_ids=(huge,)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth": (peak - baseline) * 1024, "new": result.new_checkpoints, "errors": result.errors}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_100000_checkpoint_list_is_stored_in_bounded_memory(sim: Simulator, data: Path) -> None:
    task_id, small = "task-huge00000001", "task-small0000001"
    sim.script(small, version(small, 1), job_id=JOB)
    points = [{"step": n, "perplexity": 1 + 1 / n, "trainingLoss": 1 / n} for n in range(1, HUGE + 1)]
    sim.script(task_id, {"taskId": task_id, "jobId": JOB, "runStatus": "Running", "checkpointList": points})

    def one_round() -> dict[str, Any]:
        # A child process, so the measured peak is the collector's alone (the simulator serves from here).
        done = subprocess.run(
            [sys.executable, "-c", COLLECT_AND_MEASURE, sim.url, SECRET_AK, SECRET_SK, str(data), small, task_id],
            capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outcome: dict[str, Any] = json.loads(done.stdout)
        return outcome

    first = one_round()
    assert (first["new"], first["errors"]) == (HUGE, 0)
    assert first["growth"] < MEMORY_BOUND, f"peak RSS grew by {first['growth'] / 2**20:.0f} MiB"
    points[HUGE // 2] = {**points[HUGE // 2], "trainingLoss": 0.5}  # one revised value among 100,000
    sim.script(task_id, {"taskId": task_id, "jobId": JOB, "runStatus": "Running", "checkpointList": points})
    second = one_round()
    assert (second["new"], second["errors"]) == (1, 0)  # compared against the state file, not rewritten
    assert second["growth"] < MEMORY_BOUND, f"peak RSS grew by {second['growth'] / 2**20:.0f} MiB"

    dataset = Dataset(data)
    assert rows(dataset, f"SELECT checkpoint_count FROM tasks WHERE task_id = '{task_id}'") == [(HUGE,)]
    assert rows(dataset, f"SELECT count(*), max(step) FROM checkpoints WHERE task_id = '{task_id}'") == [(HUGE, HUGE)]
    assert rows(dataset, f"SELECT training_loss FROM checkpoints WHERE step = {HUGE // 2 + 1}") == [(0.5,)]
    assert rows(dataset, f"SELECT count(*) FROM _checkpoints WHERE task_id = '{task_id}'") == [(HUGE + 1,)]
