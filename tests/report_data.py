"""Datasets for the report, browser and notebook tests: a real simulator run, collected by the real collector."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset

ACCESS_KEY = "AKftlogREPORT51c2"
SECRET_KEY = "SKftlogREPORTd7a90e"
XSS_TASK, XSS_JOB = "task-xss0000000001", "job-xss000000001"
XSS_NAME = "<script>alert(1)</script>"
XSS_MESSAGE = "<img src=x onerror=alert(1)>"
RUNNING_TASK, RUNNING_JOB = "task-run0000000001", "job-run000000001"
RUNNING_NAME = "长跑任务 & <b>bold</b>"


@dataclass
class Population:
    tasks: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    job_names: set[str] = field(default_factory=set)


def _xss_result() -> dict[str, Any]:
    """A Failed task whose name and error message are HTML/JS payloads, as a hostile or careless API might send."""
    return {
        "taskId": XSS_TASK,
        "jobId": XSS_JOB,
        "jobName": XSS_NAME,
        "jobDescription": "<iframe src=https://example.com/></iframe>",
        "model": "ERNIE-Speed-8K",
        "trainMode": "SFT",
        "parameterScale": "LoRA",
        "runStatus": "Failed",
        "errorCode": 500001,
        "errorMessage": XSS_MESSAGE,
        "vdlLink": "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=<script>",
        "createTime": "2025-01-01T00:00:00Z",
        "finishTime": "2025-01-01T00:10:00Z",
        "checkpointList": [{"step": 32, "perplexity": math.exp(2.0), "trainingLoss": 2.0}],
    }


def _running_result(progress: int) -> dict[str, Any]:
    """A task that stays Running, its loss rising over the last steps (a health flag)."""
    losses = [2.0, 1.5, 1.6, 1.7, 1.8][: 3 if progress < 50 else 5]
    return {
        "taskId": RUNNING_TASK,
        "jobId": RUNNING_JOB,
        "jobName": RUNNING_NAME,
        "model": "ERNIE-Lite-8K",
        "trainMode": "DPO",
        "parameterScale": "FullFineTuning",
        "runStatus": "Running",
        "runProgress": f"{progress}%",
        "createTime": "2025-01-01T00:00:00Z",
        "finishTime": "0000-00-00T00:00:00Z",
        "checkpointList": [
            {"step": 10 * (i + 1), "perplexity": math.exp(loss), "trainingLoss": loss} for i, loss in enumerate(losses)
        ],
    }


def build_dataset(
    data: Path, *, seed: int = 3, jobs: int = 3, tasks_per_job: int = 3, speed: float = 1500.0, scripted: bool = True
) -> Population:
    """Collect every task of a fast simulator every 0.1 s until every seeded task has ended, plus one round so the
    end states are stored. With ``scripted``, adds the hostile task and the Running task above."""
    dataset = Dataset(data)
    population = Population()
    with Simulator(seed=seed, speed=speed, jobs=jobs, tasks_per_job=tasks_per_job,
                   credentials={ACCESS_KEY: SECRET_KEY}) as sim:  # fmt: skip
        if scripted:
            sim.script(XSS_TASK, _xss_result(), job_id=XSS_JOB)
            sim.script(RUNNING_TASK, _running_result(20), job_id=RUNNING_JOB)
        with QianfanClient(Credentials(ACCESS_KEY, SECRET_KEY), base_url=sim.url, rps=500) as client:
            rounds = 0
            while True:
                finished = sim.all_done()
                collect_round(client, dataset, Selection(all_jobs=True))
                rounds += 1
                if scripted and rounds == 2:
                    sim.script(RUNNING_TASK, _running_result(60), job_id=RUNNING_JOB)
                if finished and rounds >= 3:
                    break
                time.sleep(0.1)
        population.tasks = {task.task_id for task in sim.tasks.values()} | set(sim.scripted)
        population.jobs = {job["jobId"] for job in sim.all_jobs()}
        population.job_names = {job["name"] for job in sim.jobs}
    if scripted:
        population.job_names |= {XSS_NAME, RUNNING_NAME}
    return population
