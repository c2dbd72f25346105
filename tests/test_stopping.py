"""Stop rules in collection rounds (`ftlog collect --stop-when RULE [--stop-tasks]`): what trips, what is recorded,
what is sent, and that a task is stopped at most once, against the simulator on loopback."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.notify import describe
from ftlog.rules import parse
from ftlog.simulator import Simulator
from ftlog.stopping import StopRules
from ftlog.store import Dataset
from ftlog.views import connect

AK, SK = "AK-stop-writer", "SK-stop-writer-secret"
READER = ("AK-stop-reader", "SK-stop-reader-secret")
JOB = "job-stoprules01"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: float = 5) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> Any:
    with Simulator(seed=5, jobs=1, tasks_per_job=1, credentials={AK: SK, READER[0]: READER[1]},
                   read_only_keys={READER[0]}) as sim:  # fmt: skip
        yield sim


def client_for(sim: Simulator, keys: tuple[str, str] = (AK, SK)) -> QianfanClient:
    return QianfanClient(Credentials(*keys), base_url=sim.url, rps=500,
                         retry=RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02, total=10))  # fmt: skip


def script(sim: Simulator, task_id: str, losses: list[float | None], status: str = "Running") -> None:
    points = [{"step": 10 * (n + 1), "trainingLoss": loss, "perplexity": None if loss is None else 1 + abs(loss)}
              for n, loss in enumerate(losses)]  # fmt: skip
    result = {"taskId": task_id, "jobId": JOB, "jobName": "rules", "runStatus": status, "runProgress": "40%",
              "parameterScale": "LoRA", "checkpointList": points}  # fmt: skip
    sim.script(task_id, result, job_id=JOB)


def stops_sent(sim: Simulator) -> list[str]:
    return [body["taskId"] for action, body in sim.actions if action == "StopFineTuningTask"]


def query(dataset: Dataset, sql: str) -> list[tuple[Any, ...]]:
    with connect(dataset) as con:
        return con.execute(sql).fetchall()


def round_of(sim: Simulator, dataset: Dataset, clock: Clock, rules: str, *, act: bool, keys: tuple[str, str] = (AK, SK),
             tasks: tuple[str, ...] = ()) -> Any:  # fmt: skip
    with client_for(sim, keys) as client:
        stop_rules = StopRules(tuple(parse(rule) for rule in rules.split()), client if act else None)
        selection = Selection(task_ids=tasks) if tasks else Selection(job_ids=(JOB,))
        return collect_round(client, dataset, selection, now=clock, stop_rules=stop_rules)


def test_advice_is_recorded_once_and_nothing_is_sent(server: Simulator, dataset: Dataset, clock: Clock) -> None:
    script(server, "task-nanloss001", [2.0, 1.5, math.nan, 1.2])
    script(server, "task-healthy001", [2.0, 1.5, 1.2, 1.0])
    result = round_of(server, dataset, clock, "nan", act=False)
    assert result.stops is not None and result.stops.tripped == 1 and result.stops.stopped == 0
    clock.tick()
    script(server, "task-nanloss001", [2.0, 1.5, math.nan, 1.2, 1.1])  # a new checkpoint: judged again
    round_of(server, dataset, clock, "nan", act=False)

    assert stops_sent(server) == []
    [(task, kind, details)] = query(dataset, "SELECT task_id, kind, details FROM events WHERE kind = 'stop'")
    assert task == "task-nanloss001" and kind == "stop"
    found = json.loads(details)
    assert found["rule"] == "nan" and found["action"] == "advice" and found["job_id"] == JOB
    assert found["evidence"] == {"step": 30, "training_loss": "NaN", "perplexity": "NaN"}
    [(action, outcome, rule, command, request)] = query(
        dataset, "SELECT action, outcome, rule, command, request FROM actions"
    )
    assert (action, outcome, rule, command) == ("stop", "advised", "nan", "collect")
    assert json.loads(request) == {"taskId": "task-nanloss001"}
    assert query(dataset, "SELECT count(*) FROM _actions") == [(1,)]  # not advised again in the second round


def test_stop_tasks_stops_once_on_the_evidence(server: Simulator, dataset: Dataset, clock: Clock) -> None:
    script(server, "task-diverge001", [1.0, 0.5, 0.6, 0.9, 1.0, 1.1])  # the last 3 above 1.5 x 0.5
    result = round_of(server, dataset, clock, "diverged", act=True)
    assert result.stops is not None and (result.stops.tripped, result.stops.stopped) == (1, 1)
    assert stops_sent(server) == ["task-diverge001"]
    clock.tick()
    round_of(server, dataset, clock, "diverged", act=True)  # the task is Stopped now: nothing more to do
    assert stops_sent(server) == ["task-diverge001"]
    assert query(dataset, "SELECT run_status FROM tasks WHERE task_id = 'task-diverge001'") == [("Stopped",)]

    [(outcome, rule, request_id, details)] = query(dataset, "SELECT outcome, rule, request_id, details FROM actions")
    assert (outcome, rule) == ("sent", "diverged:1.5:3") and request_id
    evidence = json.loads(details)["evidence"]
    assert evidence["steps"] == [40, 50, 60] and evidence["training_loss"] == [0.9, 1.0, 1.1]
    assert evidence["best_before"] == 0.5 and evidence["best_step"] == 20
    [(details,)] = query(dataset, "SELECT details FROM events WHERE kind = 'stop'")
    assert json.loads(details)["action"] == "stop"


def test_rules_judge_revised_values(server: Simulator, dataset: Dataset, clock: Clock) -> None:
    script(server, "task-revised001", [1.0, 0.5, 0.6, 0.7])  # diverged:1.5:2 needs both above 0.75: not yet
    round_of(server, dataset, clock, "diverged:1.5:2", act=False)
    assert query(dataset, "SELECT count(*) FROM events WHERE kind = 'stop'") == [(0,)]
    clock.tick()
    script(server, "task-revised001", [1.0, 0.3, 0.6, 0.7])  # step 20 revised down: now 0.6 and 0.7 > 0.45
    round_of(server, dataset, clock, "diverged:1.5:2", act=False)
    [(details,)] = query(dataset, "SELECT details FROM events WHERE kind = 'stop'")
    assert json.loads(details)["evidence"]["best_before"] == 0.3


def test_one_checkpoint_trips_only_the_nan_rule(server: Simulator, dataset: Dataset, clock: Clock) -> None:
    script(server, "task-onepoint01", [5.0])
    script(server, "task-onenan0001", [None])
    round_of(server, dataset, clock, "diverged:1.1:1 plateau:50:1 nan", act=False)
    assert query(dataset, "SELECT task_id, json_extract_string(details, '$.rule') FROM events WHERE kind = 'stop'") == [
        ("task-onenan0001", "nan")
    ]


def test_terminal_tasks_are_not_judged(server: Simulator, dataset: Dataset, clock: Clock) -> None:
    script(server, "task-finished01", [1.0, math.nan], status="Done")
    result = round_of(server, dataset, clock, "nan", act=True)
    assert result.stops is not None and result.stops.tripped == 0
    assert stops_sent(server) == [] and query(dataset, "SELECT count(*) FROM actions") == [(0,)]


def test_two_collectors_tripping_the_same_rule_stop_once(server: Simulator, data: Path, clock: Clock) -> None:
    tasks = [f"task-together{n:02d}" for n in range(4)]
    for task in tasks:
        script(server, task, [1.0, 0.5, math.inf])
    server.faults.latency = 0.05  # the two rounds overlap
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def collector() -> None:
        try:
            barrier.wait(timeout=10)
            round_of(server, Dataset(data), clock, "nan", act=True, tasks=tuple(tasks))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=collector) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(stops_sent(server)) == tasks  # each once
    sent = query(Dataset(data), "SELECT task_id FROM actions WHERE outcome = 'sent' ORDER BY task_id")
    assert [task for (task,) in sent] == tasks


def test_access_denied_is_recorded_and_the_round_goes_on(
    server: Simulator, dataset: Dataset, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    script(server, "task-denied0001", [1.0, math.nan])
    script(server, "task-sibling001", [1.0, 0.9])
    with caplog.at_level(logging.WARNING):
        result = round_of(server, dataset, clock, "nan", act=True, keys=READER)
    assert result.changed == 2 and result.stops is not None and result.stops.refused == 1
    assert "AccessDenied" in caplog.text
    [(outcome, status, error)] = query(dataset, "SELECT outcome, http_status, error FROM actions")
    assert (outcome, status) == ("denied", 403) and "AccessDenied" in error
    clock.tick()
    round_of(server, dataset, clock, "nan", act=True, keys=READER)  # a read-only key stays read-only: not again
    assert stops_sent(server) == ["task-denied0001"]
    assert query(dataset, "SELECT run_status FROM tasks ORDER BY task_id") == [("Running",), ("Running",)]


def test_claims_are_taken_once(dataset: Dataset) -> None:
    assert dataset.claim("stop/abc", T0) is True
    assert dataset.claim("stop/abc", T0) is False
    assert dataset.claim("stop/other", T0) is True
    dataset.release("stop/abc")
    assert dataset.claim("stop/abc", T0) is True
    assert not list(Path(dataset.root).glob("*/date=*/*"))  # claims are no table's data


def test_stop_events_read_well_in_a_chat() -> None:
    event: Any = {"task_id": "task-x", "kind": "stop",
                  "details": {"rule": "nan", "reason": "checkpoint 30 has training loss nan", "action": "stop",
                              "job_name": "sweep"}}  # fmt: skip
    title, lines = describe(event)
    assert title == "ftlog: stopping task-x (rule nan)"
    assert lines == ["checkpoint 30 has training loss nan", "job: sweep"]
    event["details"]["action"] = "advice"
    assert describe(event)[0] == "ftlog: stop advised for task-x (rule nan)"


def test_the_command_line(server: Simulator, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", AK)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SK)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    runner = CliRunner()
    base = ["collect", "--job", JOB, "--data", str(data)]
    bad = runner.invoke(cli, [*base, "--stop-when", "diverged:0.5"])
    assert bad.exit_code == 2 and "RATIO must be a finite number above 1" in bad.output
    alone = runner.invoke(cli, [*base, "--stop-tasks"])
    assert alone.exit_code == 2 and "--stop-tasks acts on --stop-when rules" in alone.output
    assert not data.exists()

    script(server, "task-clinan0001", [1.0, math.nan])
    done = subprocess.run([sys.executable, "-m", "ftlog", *base, "--stop-when", "plateau", "--stop-when", "nan",
                           "--stop-tasks"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "task-clinan0001: stop rule nan tripped: checkpoint 20 has training loss nan" in done.stderr
    assert "task-clinan0001: stopped by rule nan" in done.stderr
    assert "stop rules: 1 tripped, 1 stopped" in done.stderr
    assert stops_sent(server) == ["task-clinan0001"]
    shown = runner.invoke(cli, ["query", "SELECT task_id, outcome, rule FROM actions", "--format", "csv",
                                "--data", str(data)])  # fmt: skip
    assert shown.output.splitlines()[1:] == ["task-clinan0001,sent,nan"]
    listed = runner.invoke(cli, ["events", "--kind", "stop", "--format", "json", "--data", str(data)])
    assert [event["task_id"] for event in json.loads(listed.output)] == ["task-clinan0001"]


def test_a_stop_rule_that_cannot_be_applied_leaves_the_round_alone(
    server: Simulator, dataset: Dataset, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    script(server, "task-noclaim001", [1.0, math.nan])
    Path(dataset.root).mkdir(parents=True)
    Path(dataset.root, "_claims").write_text("the user's own file, where ftlog keeps its claims")
    with caplog.at_level(logging.WARNING):
        result = round_of(server, dataset, clock, "nan", act=True)
    assert result.changed == 1 and result.stops is None
    assert "stop rules not applied this round: cannot write" in caplog.text
    assert stops_sent(server) == []
    assert query(dataset, "SELECT count(*) FROM snapshots") == [(1,)]  # the round's data is stored
    assert Path(dataset.root, "_claims").read_text().startswith("the user's own file")
