"""Collection rounds against the simulator over real HTTP: selection, change-only storage, failures, odd payloads."""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ftlog import analysis
from ftlog.client import QianfanClient
from ftlog.collect import RoundResult, Selection, collect_round, watch
from ftlog.errors import ApiError, FtlogError
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

T0 = datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)
JOB = "job-lifecycle01"
BASE = {
    "jobId": JOB,
    "jobName": "sft-sweep-1",
    "jobDescription": "SFT of ERNIE-Speed-8K",
    "model": "ERNIE-Speed-8K",
    "trainMode": "SFT",
    "parameterScale": "LoRA",
    "createTime": "2024-05-06T07:55:00Z",
    "finishTime": "0000-00-00T00:00:00Z",
}
POINTS = [
    {"step": 64, "perplexity": 2.9, "trainingLoss": 1.06},
    {"step": 128, "perplexity": 1.9, "trainingLoss": 0.64},
    {"step": 192, "perplexity": 1.5, "trainingLoss": 0.41},
    {"step": 256, "perplexity": 1.3, "trainingLoss": 0.26},
]
VDL = {"vdlLink": "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=run-1"}
LIFECYCLE: list[dict[str, Any]] = [
    {"runStatus": "Waiting", "checkpointList": []},
    {"runStatus": "Running", "runProgress": "1%", "checkpointList": [], **VDL},
    {"runStatus": "Running", "runProgress": "3%", "checkpointList": [], **VDL},
    {"runStatus": "Running", "runProgress": "34%", "checkpointList": POINTS[:1], **VDL},
    {"runStatus": "Running", "runProgress": "34%", "checkpointList": POINTS[:1], **VDL},  # unchanged
    {"runStatus": "Running", "runProgress": "65%", "checkpointList": POINTS[:3], **VDL},
    {
        "runStatus": "Done",
        "finishTime": "2024-05-06T08:40:00Z",
        "metrics": {
            "BLEU-4": "58.62%",
            "ROUGE-1": "68.10%",
            "ROUGE-2": "44.50%",
            "ROUGE-L": "61.25%",
            "EDIT-DISTANCE": "43.07",
        },
        "checkpointList": POINTS,
        **VDL,
    },
]


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def query(dataset: Dataset, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = connect(dataset)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def count(dataset: Dataset, table: str, task_id: str | None = None) -> int:
    where = "WHERE task_id = ?" if task_id else ""
    return query(dataset, f"SELECT count(*) FROM {table} {where}", *([task_id] if task_id else []))[0][0]


def script(sim: Simulator, task_id: str, state: dict[str, Any], job_id: str = JOB) -> None:
    sim.script(task_id, {**BASE, "taskId": task_id, "jobId": job_id, **state}, job_id=job_id)


def one_round(client: QianfanClient, dataset: Dataset, clock: Clock, *task_ids: str) -> RoundResult:
    result = collect_round(client, dataset, Selection(task_ids=task_ids), now=clock)
    clock.advance(minutes=1)
    return result


# -- change-only storage ---------------------------------------------------------------------------------------


def test_snapshots_equal_distinct_states_over_a_lifecycle(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    clock = Clock()
    changed = []
    for state in LIFECYCLE:
        script(sim, "task-life0000001", state)
        script(sim, "task-idle0000001", {"runStatus": "Waiting", "checkpointList": []})
        result = one_round(client, dataset, clock, "task-life0000001", "task-idle0000001")
        assert (result.tasks, result.errors) == (2, 0)
        changed.append(result.changed)
    assert changed == [2, 1, 1, 1, 0, 1, 1]

    distinct = len({json.dumps(state, sort_keys=True) for state in LIFECYCLE})
    assert distinct == 6
    assert count(dataset, "snapshots", "task-life0000001") == distinct
    assert count(dataset, "_snapshots", "task-life0000001") == distinct  # stored once, not de-duplicated later
    assert count(dataset, "snapshots", "task-idle0000001") == 1
    assert count(dataset, "polls", "task-life0000001") == len(LIFECYCLE)  # one poll per round per task
    life = "WHERE task_id = 'task-life0000001'"
    outcomes = [r[0] for r in query(dataset, f"SELECT outcome FROM polls {life} ORDER BY polled_at")]
    assert outcomes == ["changed"] * 4 + ["unchanged"] + ["changed"] * 2

    progress = query(dataset, f"SELECT run_status, run_progress FROM snapshots {life} ORDER BY observed_at")
    assert progress == [("Waiting", None), ("Running", 1.0), ("Running", 3.0), ("Running", 34.0),
                        ("Running", 65.0), ("Done", None)]  # fmt: skip
    transitions = query(dataset, f"SELECT from_status, to_status FROM status_changes {life} ORDER BY changed_at")
    assert transitions == [(None, "Waiting"), ("Waiting", "Running"), ("Running", "Done")]

    task = query(
        dataset,
        "SELECT run_status, finish_time, bleu_4, rouge_l, checkpoint_count, first_seen_at, last_polled_at, job_name "
        f"FROM tasks {life}",
    )[0]
    assert task[:5] == ("Done", datetime(2024, 5, 6, 8, 40, tzinfo=timezone.utc), 58.62, 61.25, 4)
    assert task[5] == T0 and task[6] == T0 + timedelta(minutes=len(LIFECYCLE) - 1)
    assert task[7] == "sft-sweep-1"
    assert query(dataset, f"SELECT model, train_mode, parameter_scale, bleu_4, rouge_2 FROM metrics {life}") == [
        ("ERNIE-Speed-8K", "SFT", "LoRA", 58.62, 44.5)
    ]
    metrics = dict(query(dataset, f"SELECT metric, value FROM metric_values {life}"))
    assert metrics == {"BLEU-4": 58.62, "ROUGE-1": 68.1, "ROUGE-2": 44.5, "ROUGE-L": 61.25, "EDIT-DISTANCE": 43.07}
    steps = query(dataset, f"SELECT step, training_loss FROM checkpoints {life} ORDER BY step")
    assert steps == [(p["step"], p["trainingLoss"]) for p in POINTS]
    assert count(dataset, "_checkpoints") == 4


def test_rounds_without_change_add_only_polls(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    clock = Clock()
    for k in range(3):
        script(sim, f"task-same000000{k}", LIFECYCLE[5])
    tasks = tuple(f"task-same000000{k}" for k in range(3))
    one_round(client, dataset, clock, *tasks)
    files = {t: dataset.files(t) for t in ("snapshots", "checkpoints", "polls")}
    state_file = Path(dataset.root) / "_state" / "tasks.parquet"
    state_bytes = state_file.read_bytes()

    for n in range(2):
        result = one_round(client, dataset, clock, *tasks)
        assert (result.changed, result.unchanged, result.new_checkpoints) == (0, 3, 0)
        assert dataset.files("snapshots") == files["snapshots"]
        assert dataset.files("checkpoints") == files["checkpoints"]
        assert len(dataset.files("polls")) == len(files["polls"]) + n + 1  # one file per table per round
    assert state_file.read_bytes() == state_bytes  # nothing new to remember either
    assert count(dataset, "_polls") == 9
    assert count(dataset, "_snapshots") == 3


def test_checkpoints_deduplicated_with_out_of_order_and_repeated_steps(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    clock = Clock()
    p64, p128, p192, p256 = POINTS
    moved = {**p64, "perplexity": 2.5, "trainingLoss": 0.9}  # a value the API revised
    diverged = {"step": 320, "perplexity": math.nan, "trainingLoss": math.inf}
    rounds = [
        ([p128, p64], 2),
        ([p64, p128, p64, p192], 1),  # 64 repeated with the same value, 192 new
        ([p192, moved, p128], 1),  # 64 changed value
        ([p128, moved, p192][::-1], 0),  # same set, other order
        ([p256, p64], 2),  # 64's first value again is a change against the stored one; 256 new
        ([p256, diverged], 1),
        ([diverged, diverged, p256], 0),  # NaN equals NaN for de-duplication
    ]
    for points, expected_new in rounds:
        script(sim, "task-ckpt0000001", {"runStatus": "Running", "runProgress": "50%", "checkpointList": points})
        result = one_round(client, dataset, clock, "task-ckpt0000001")
        assert result.new_checkpoints == expected_new, points

    assert count(dataset, "_checkpoints") == sum(n for _, n in rounds) == 7  # 64 stored three times
    # A collector's file holds each step once, which the checkpoints view relies on (it says so in `superseded`).
    assert query(dataset, "SELECT DISTINCT superseded FROM _checkpoints") == [(False,)]
    latest = query(dataset, "SELECT step, perplexity, training_loss FROM checkpoints ORDER BY step")
    assert latest[:4] == [(64, 2.9, 1.06), (128, 1.9, 0.64), (192, 1.5, 0.41), (256, 1.3, 0.26)]
    assert latest[4][0] == 320 and math.isnan(latest[4][1]) and latest[4][2] == math.inf
    assert count(dataset, "checkpoints") == 5

    # Merged into one file, every value of step 64 but the latest is marked superseded; the view is unchanged.
    assert dataset.compact(clock.now + timedelta(days=1)) > 1 and len(dataset.files("checkpoints")) == 1
    marked = "SELECT step, count(*) FILTER (WHERE superseded) FROM _checkpoints GROUP BY step ORDER BY step"
    assert query(dataset, marked) == [(64, 2), (128, 0), (192, 0), (256, 0), (320, 0)]
    again = query(dataset, "SELECT step, perplexity, training_loss FROM checkpoints ORDER BY step")
    assert again[:4] == latest[:4] and again[4][0] == 320 and len(again) == 5


def test_a_revised_value_that_moves_the_summary_makes_a_snapshot_and_compare_sees_it(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    """compare() reads the curve summary of each task's latest snapshot and no checkpoint: a value revised in place
    must therefore make a new snapshot when it moves the final or best value, and only then."""
    clock = Clock()
    task = "task-revise00001"
    answers = [
        (POINTS, 1),
        ([POINTS[0], {**POINTS[1], "trainingLoss": 0.7}, *POINTS[2:]], 0),  # 128 revised: the summary holds
        ([*POINTS[:3], {**POINTS[3], "trainingLoss": 0.2}], 1),  # the last step revised: the final and best move
        ([*POINTS[:3], {**POINTS[3], "trainingLoss": 0.2}], 0),
    ]
    for points, changed in answers:
        script(sim, task, {"runStatus": "Running", "runProgress": "50%", "checkpointList": points})
        assert one_round(client, dataset, clock, task).changed == changed, points
    assert count(dataset, "_snapshots", task) == 2
    table = analysis.compare(dataset, by=["model"])
    assert table["final_loss_mean"].tolist() == [0.2] and table["best_loss_mean"].tolist() == [0.2]
    latest = query(dataset, f"SELECT training_loss FROM checkpoints WHERE task_id = '{task}' ORDER BY step")
    assert [v for (v,) in latest] == [1.06, 0.64, 0.41, 0.2]  # 128 back to its first value in the third answer


# -- failures ------------------------------------------------------------------------------------------------


def test_failed_describes_are_recorded_while_the_round_goes_on(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    clock = Clock()
    ok = [f"task-fine000000{k}" for k in range(3)]
    for task_id in ok:
        script(sim, task_id, LIFECYCLE[1])
    sim.fail("task-boom0000500", 500, "InternalError", "We encountered an internal error.")
    sim.fail("task-gone0000404", 404, "ResourceNotFound", "task task-gone0000404 does not exist")
    sim.fail("task-deny0000403", 403, "AccessDenied", "Access denied.")
    failing = ["task-boom0000500", "task-gone0000404", "task-deny0000403"]

    result = one_round(client, dataset, clock, *ok[:2], *failing, ok[2])
    assert (result.tasks, result.changed, result.errors) == (6, 3, 3)
    rows = query(dataset, "SELECT task_id, outcome, http_status, error_code, error_message, request_id FROM polls")
    by_task = {row[0]: row[1:] for row in rows}
    assert {by_task[t][0] for t in ok} == {"changed"}
    assert all(by_task[t][1] == 200 and by_task[t][4] for t in ok)
    assert by_task["task-boom0000500"][:3] == ("error", 500, "InternalError")
    assert by_task["task-gone0000404"][:3] == ("error", 404, "ResourceNotFound")
    assert by_task["task-deny0000403"][:3] == ("error", 403, "AccessDenied")
    assert "does not exist" in by_task["task-gone0000404"][3]
    assert all(by_task[t][4] for t in failing)  # requestId of the failed answer, for support tickets
    assert count(dataset, "snapshots") == 3

    sim.heal("task-gone0000404")
    script(sim, "task-gone0000404", LIFECYCLE[2])
    result = one_round(client, dataset, clock, *ok, *failing)
    assert (result.changed, result.unchanged, result.errors) == (1, 3, 2)
    assert count(dataset, "polls", "task-gone0000404") == 2


def test_a_round_where_every_describe_fails_raises_after_storing_the_polls(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    for task_id in ("task-boom0000001", "task-boom0000002"):
        sim.fail(task_id, 404, "ResourceNotFound", "no such task")
    with pytest.raises(ApiError, match="no task could be described") as caught:
        collect_round(client, dataset, Selection(task_ids=("task-boom0000001", "task-boom0000002")))
    assert caught.value.status == 404
    assert count(dataset, "polls") == 2


def test_an_unknown_job_is_a_discovery_error_not_a_crash(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    script(sim, "task-fine0000001", LIFECYCLE[1])
    result = collect_round(client, dataset, Selection(task_ids=("task-fine0000001",), job_ids=("job-nosuchjob01",)))
    assert (result.tasks, result.changed) == (1, 1)
    assert [e.code for e in result.discovery_errors] == ["InvalidRequestArgumentError"]


# -- odd payloads --------------------------------------------------------------------------------------------

ODD: dict[str, dict[str, Any]] = {
    "task-odd00000001": {"runStatus": "Running", "runProgress": 99},
    "task-odd00000002": {"runStatus": "Running", "runProgress": "abc"},
    "task-odd00000003": {"runStatus": "Running", "runProgress": None},
    "task-odd00000004": {"runStatus": "Running", "checkpointList": None},
    "task-odd00000005": {"runStatus": "Running", "checkpointList": {"step": 64, "perplexity": 1.2}},
    "task-odd00000006": {"runStatus": "Running", "checkpointList": ["step 64", "step 128"]},
    "task-odd00000007": {"runStatus": "Done", "metrics": {"BLEU-4": None, "ROUGE-1": "n/a", "ROUGE-L": "61%"}},
    "task-odd00000008": {"runStatus": "Paused", "runProgress": "12%"},
    "task-odd00000009": {"runStatus": "Running", "gpuHours": {"a100": 3.5}, "tags": ["x", None]},
    "task-odd00000010": {
        "runStatus": "Running",
        "checkpointList": [{"step": 2**70}, {"step": "²"}, {"step": 64, "perplexity": "abc"}, {"step": 128}],
        "createTime": "0001-01-01T00:00:00+01:00",
        "errorCode": 10**400,
    },
}


def test_odd_payload_values_never_abort_the_round(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    for task_id, state in ODD.items():
        sim.script(task_id, {"taskId": task_id, "jobId": JOB, **state}, job_id=JOB)
    result = collect_round(client, dataset, Selection(task_ids=tuple(ODD)))
    assert (result.tasks, result.changed, result.errors) == (len(ODD), len(ODD), 0)

    columns = "task_id, run_status, run_progress, bleu_4, rouge_l, checkpoint_count, raw, create_time"
    rows = query(dataset, f"SELECT {columns} FROM snapshots")
    snap = {row[0]: row[1:] for row in rows}
    assert set(snap) == set(ODD)
    for task_id, state in ODD.items():
        raw = json.loads(snap[task_id][5])
        assert {k: raw[k] for k in state} == state, task_id  # the raw JSON keeps every value as received
    assert snap["task-odd00000001"][1] == 99.0
    assert snap["task-odd00000002"][1] is None and snap["task-odd00000003"][1] is None
    assert snap["task-odd00000007"][2:4] == (None, 61.0)
    assert snap["task-odd00000008"][:2] == ("Paused", 12.0)  # an unknown status is stored as it came
    assert snap["task-odd00000010"][4] == 2 and snap["task-odd00000010"][6] is None
    metrics = query(dataset, "SELECT metric, value FROM metric_values WHERE task_id = 'task-odd00000007'")
    assert sorted(metrics, key=repr) == [("BLEU-4", None), ("ROUGE-1", None), ("ROUGE-L", 61.0)]
    points = query(dataset, "SELECT step, perplexity FROM checkpoints WHERE task_id = 'task-odd00000010' ORDER BY step")
    assert points == [(64, None), (128, None)]

    again = collect_round(client, dataset, Selection(task_ids=tuple(ODD)))
    assert (again.changed, again.unchanged) == (0, len(ODD))  # odd values hash stably too


# -- selection and discovery ---------------------------------------------------------------------------------


def test_a_job_with_260_tasks_is_discovered_across_pages(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    big = [f"task-big{n:08d}" for n in range(260)]
    for task_id in big:
        script(sim, task_id, LIFECYCLE[0], job_id="job-bigsweep001")
    result = collect_round(client, dataset, Selection(job_ids=("job-bigsweep001",)), concurrency=16)
    assert (result.tasks, result.changed, result.errors) == (260, 260, 0)
    markers = [e.body.get("marker") for e in sim.log if e.action == "DescribeFineTuningTasks"]
    assert len(markers) == 3 and markers[0] is None and all(markers[1:])
    assert query(dataset, "SELECT count(DISTINCT task_id) FROM polls")[0][0] == 260
    assert count(dataset, "snapshots") == 260


def test_all_walks_every_page_of_jobs_and_tasks(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    extra = {f"job-extra{n:06d}": f"task-extra{n:06d}" for n in range(240)}  # with the seeded jobs: three pages
    for job_id, task_id in extra.items():
        script(sim, task_id, LIFECYCLE[0], job_id=job_id)
    result = collect_round(client, dataset, Selection(all_jobs=True), concurrency=16)
    expected = set(sim.tasks) | set(extra.values())
    assert result.tasks == len(expected) > 250
    assert result.errors == 0
    assert {r[0] for r in query(dataset, "SELECT DISTINCT task_id FROM polls")} == expected
    assert len([e for e in sim.log if e.action == "DescribeFineTuningJobs"]) == 3


def test_named_tasks_and_jobs_are_combined_without_duplicates(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    job_a, job_b = sim.jobs[0]["jobId"], sim.jobs[1]["jobId"]
    of_a = [t for t, task in sim.tasks.items() if task.job["jobId"] == job_a]
    of_b = [t for t, task in sim.tasks.items() if task.job["jobId"] == job_b]
    outsider = next(t for t, task in sim.tasks.items() if task.job["jobId"] not in (job_a, job_b))
    selection = Selection(task_ids=(outsider, of_a[0], outsider), job_ids=(job_a, job_b, job_a))
    result = collect_round(client, dataset, selection)
    assert result.tasks == 1 + len(of_a) + len(of_b)
    polled = [r[0] for r in query(dataset, "SELECT task_id FROM polls")]
    assert sorted(polled) == sorted({outsider, *of_a, *of_b})


def test_an_empty_selection_is_refused() -> None:
    with pytest.raises(FtlogError, match="nothing to collect"):
        Selection()


def test_progress_reports_every_describe(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    calls: list[tuple[int, int]] = []
    tasks = tuple(sim.tasks)[:7]
    collect_round(client, dataset, Selection(task_ids=tasks), concurrency=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(n, 7) for n in range(1, 8)]


# -- overlap and watch ---------------------------------------------------------------------------------------


def test_overlapping_collectors_never_double_count(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    tasks = [f"task-both000000{k}" for k in range(4)]
    for task_id in tasks:
        script(sim, task_id, LIFECYCLE[3])
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def collector() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                collect_round(client, dataset, Selection(task_ids=tuple(tasks)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=collector) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert count(dataset, "snapshots") == 4  # one state per task, however many collectors saw it
    assert count(dataset, "checkpoints") == 4
    assert count(dataset, "polls") == 2 * 3 * 4  # every attempt is a fact of its own
    assert query(dataset, "SELECT count(*) FROM tasks")[0][0] == 4
    assert query(dataset, "SELECT count(*) FROM status_changes")[0][0] == 4


@pytest.mark.timeout(60)
def test_watch_stops_when_every_task_is_terminal(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    script(sim, "task-watch000001", LIFECYCLE[1])
    script(sim, "task-watch000002", {"runStatus": "Failed", "errorCode": 500001, "errorMessage": "internal"})
    stop = threading.Event()
    rounds: list[RoundResult] = []

    def on_round(result: RoundResult) -> None:
        rounds.append(result)
        if len(rounds) == 2:
            script(sim, "task-watch000001", LIFECYCLE[-1])

    selection = Selection(task_ids=("task-watch000001", "task-watch000002"))
    last = watch(lambda: collect_round(client, dataset, selection), interval=0.01, until_done=True, stop=stop,
                 on_round=on_round)  # fmt: skip
    assert len(rounds) == 3 and last is rounds[-1]
    assert last.statuses == {"task-watch000001": "Done", "task-watch000002": "Failed"}
    assert count(dataset, "polls") == 6


@pytest.mark.timeout(60)
def test_watch_ends_when_stopped(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    script(sim, "task-watch000001", LIFECYCLE[1])
    stop = threading.Event()
    rounds: list[RoundResult] = []

    def on_round(result: RoundResult) -> None:
        rounds.append(result)
        if len(rounds) == 2:
            stop.set()

    selection = Selection(task_ids=("task-watch000001",))
    watch(lambda: collect_round(client, dataset, selection, stop=stop), interval=0.01, until_done=True, stop=stop,
          on_round=on_round)  # fmt: skip
    assert len(rounds) == 2
    assert count(dataset, "polls") == 2
