"""A scripted story in which every kind of event happens once, on an injected clock (shared by the event tests).

Minute  task a                      task b              task c        task d       task e
 0      Waiting                     Running 5%          Running 5%    Done         -
10      Running 10%
20      Running 34%, step 64        Failed (error)
30                                                      Stopped
50      (34% for 30 min: no stall)                                                 Failed, first seen
55      stall at 34%
60      (still 34%: reported once)
70      Running 65%, steps to 192: new best loss and perplexity
80      Done, step 256: status, new best loss and perplexity

Task d is Done in the very first round over the empty dataset: that is the baseline, not an event.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ftlog.client import QianfanClient
from ftlog.collect import RoundResult, Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset

T0 = datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)
JOB = "job-story000001"
BASE = {"jobId": JOB, "jobName": "sft-sweep-7", "model": "ERNIE-Speed-8K", "trainMode": "SFT",
        "parameterScale": "LoRA", "createTime": "2024-05-06T07:55:00Z"}  # fmt: skip
POINTS = [
    {"step": 64, "perplexity": 2.9, "trainingLoss": 1.06},
    {"step": 128, "perplexity": 1.9, "trainingLoss": 0.64},
    {"step": 192, "perplexity": 1.5, "trainingLoss": 0.41},
    {"step": 256, "perplexity": 1.3, "trainingLoss": 0.26},
]
A, B, C, D, E = (f"task-story00000{x}" for x in "abcde")
RUNNING_5 = {"runStatus": "Running", "runProgress": "5%", "checkpointList": []}
STORY: list[tuple[int, dict[str, dict[str, Any]]]] = [
    (
        0,
        {
            A: {"runStatus": "Waiting"},
            B: RUNNING_5,
            C: RUNNING_5,
            D: {"runStatus": "Done", "finishTime": "2024-05-06T07:59:00Z"},
        },
    ),
    (10, {A: {"runStatus": "Running", "runProgress": "10%"}}),
    (
        20,
        {
            A: {"runStatus": "Running", "runProgress": "34%", "checkpointList": POINTS[:1]},
            B: {"runStatus": "Failed", "runProgress": "5%", "errorCode": 500001, "errorMessage": "GPU node lost"},
        },
    ),
    (30, {C: {"runStatus": "Stopped", "runProgress": "5%"}}),
    (50, {E: {"runStatus": "Failed", "errorCode": 400002, "errorMessage": "dataset is empty"}}),
    (55, {}),
    (60, {}),
    (70, {A: {"runStatus": "Running", "runProgress": "65%", "checkpointList": POINTS[:3]}}),
    (
        80,
        {
            A: {
                "runStatus": "Done",
                "runProgress": "100%",
                "finishTime": "2024-05-06T09:20:00Z",
                "checkpointList": POINTS,
            }
        },
    ),
]
# (task_id, kind, what it means, minute first seen)
EXPECTED = {
    (A, "stall", "34.0", 55),
    (A, "best_checkpoint", "training_loss@192", 70),
    (A, "best_checkpoint", "perplexity@192", 70),
    (A, "status", "Done", 80),
    (A, "best_checkpoint", "training_loss@256", 80),
    (A, "best_checkpoint", "perplexity@256", 80),
    (B, "status", "Failed", 20),
    (C, "status", "Stopped", 30),
    (E, "status", "Failed", 50),
}


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def meaning(kind: str, details: dict[str, Any]) -> str:
    if kind == "status":
        return str(details["to"])
    if kind == "stall":
        return str(details["progress"])
    return f"{details['metric']}@{details['step']}"


def play(
    sim: Simulator,
    client: QianfanClient,
    dataset: Dataset,
    *,
    upto: int = 80,
    after: int = -1,
    late: timedelta = timedelta(),
    **options: Any,
) -> list[RoundResult]:
    """Run the story's rounds with ``after < minute <= upto``, ``late`` after their time; ``options`` go to
    collect_round."""
    clock = Clock()
    results = []
    scripted: set[str] = set()
    for minute, changes in STORY:
        for task_id, state in changes.items():
            sim.script(task_id, {**BASE, "taskId": task_id, "checkpointList": [], **state}, job_id=JOB)
        scripted.update(changes)
        if not after < minute <= upto:
            continue
        clock.now = T0 + timedelta(minutes=minute) + late
        results.append(collect_round(client, dataset, Selection(task_ids=tuple(sorted(scripted))), now=clock,
                                     **options))  # fmt: skip
    return results
