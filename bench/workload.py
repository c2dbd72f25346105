"""Synthetic Qianfan workloads: answers shaped like the simulator's, served in-process with an injected clock.

Where HTTP is not what a figure measures, datasets are built by the real collector (``collect_round``) talking to
:class:`LocalApi`, an object with the three methods the collector calls on ``QianfanClient``. Curves are computed
on demand from a seed, so the generator holds no checkpoint lists of its own and adds nothing to memory figures.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ftlog.client import Answer
from ftlog.collect import RoundResult, Selection, collect_round
from ftlog.simulator import MODELS, SCALES, TRAIN_MODES
from ftlog.store import Dataset

EPOCH = datetime(2025, 3, 3, tzinfo=timezone.utc)  # a Monday, 00:00 UTC: day boundaries fall on round boundaries
TASKS_PER_JOB = 10


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Plan:
    """One task's identity and curve parameters; what it shows at a moment is :class:`LocalApi`'s business."""

    task_id: str
    job_id: str
    job_name: str
    model: str
    train_mode: str
    parameter_scale: str
    created: datetime
    checkpoints: int  # how many the finished task has
    save_step: int
    loss_floor: float
    loss_start: float
    seed: int
    outcome: str  # Done, Failed or Stopped

    def curve(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps, training loss and perplexity of the first ``count`` checkpoints (the simulator's formula)."""
        rng = np.random.default_rng(self.seed)
        noise = rng.normal(0, 0.012, self.checkpoints)[:count]
        wobble = rng.normal(0, 0.004, self.checkpoints)[:count]
        steps = self.save_step * np.arange(1, count + 1, dtype=np.int64)
        total = self.save_step * self.checkpoints
        loss = np.maximum(
            self.loss_floor + (self.loss_start - self.loss_floor) * np.exp(-3.2 * steps / total) + noise, 0.01
        )
        return steps, loss, np.exp(loss) * (1 + wobble)

    def checkpoint_list(self, count: int) -> list[dict[str, Any]]:
        steps, loss, ppl = self.curve(count)
        return [
            {"step": s, "perplexity": p, "trainingLoss": v}
            for s, p, v in zip(steps.tolist(), ppl.tolist(), loss.tolist(), strict=True)
        ]

    def metrics(self) -> dict[str, float]:
        """BLEU/ROUGE as numbers (percent); the API sends them as ``"43.07%"`` strings."""
        rng = random.Random(self.seed + 1)
        bleu = max(1.0, 78 - 52 * self.loss_floor + rng.gauss(0, 1.5))
        return {
            "BLEU-4": round(bleu, 2),
            "ROUGE-1": round(min(99.0, bleu + 9 + rng.gauss(0, 1)), 2),
            "ROUGE-2": round(max(1.0, bleu - 14 + rng.gauss(0, 1)), 2),
            "ROUGE-L": round(min(99.0, bleu + 5 + rng.gauss(0, 1)), 2),
        }


def make_plans(tasks: int, checkpoints: int | tuple[int, int], seed: int = 0) -> list[Plan]:
    """``tasks`` tasks in jobs of ten; ``checkpoints`` is a count or an inclusive (low, high) range."""
    rng = random.Random(seed)
    models, modes, scales = list(MODELS), list(TRAIN_MODES), list(SCALES)
    plans = []
    for n in range(tasks):
        job = n // TASKS_PER_JOB
        model, mode, scale = models[job % len(models)], modes[(job // 2) % len(modes)], scales[n % len(scales)]
        floor = max(0.05, 0.35 + MODELS[model] + TRAIN_MODES[mode] + SCALES[scale] + rng.gauss(0, 0.03))
        roll = rng.random()
        plans.append(
            Plan(
                task_id=f"task-{seed:02d}{n:010d}",
                job_id=f"job-{seed:02d}{job:010d}",
                job_name=["客服问答-{n}", "sft-sweep-{n}", "摘要生成实验 {n}"][job % 3].format(n=job + 1),
                model=model,
                train_mode=mode,
                parameter_scale=scale,
                created=EPOCH - timedelta(hours=1, minutes=n % 50),
                checkpoints=checkpoints if isinstance(checkpoints, int) else rng.randint(*checkpoints),
                save_step=10,
                loss_floor=floor,
                loss_start=floor + rng.uniform(1.6, 2.4),
                seed=rng.randrange(2**31),
                outcome="Done" if roll < 0.85 else "Failed" if roll < 0.95 else "Stopped",
            )
        )
    return plans


@dataclass
class LocalApi:
    """In-process stand-in for ``QianfanClient``: ``describe_task``, ``iter_jobs`` and ``iter_tasks``.

    The driver sets ``shown[task_id]`` (checkpoints visible so far) and ``ended`` (tasks in their end state);
    ``now`` is the simulated wall clock used for finish times.
    """

    plans: list[Plan]
    now: datetime = EPOCH
    shown: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_id = {plan.task_id: plan for plan in self.plans}
        self.jobs: dict[str, list[Plan]] = {}
        for plan in self.plans:
            self.jobs.setdefault(plan.job_id, []).append(plan)

    def result(self, plan: Plan) -> dict[str, Any]:
        count = self.shown.get(plan.task_id, 0)
        result: dict[str, Any] = {
            "taskId": plan.task_id,
            "jobId": plan.job_id,
            "jobName": plan.job_name,
            "jobDescription": f"{plan.train_mode} of {plan.model}",
            "model": plan.model,
            "trainMode": plan.train_mode,
            "parameterScale": plan.parameter_scale,
            "createTime": iso(plan.created),
            "finishTime": "0000-00-00T00:00:00Z",
            "vdlLink": f"https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=run-{plan.seed:x}",
        }
        if plan.task_id in self.ended:
            result["runStatus"] = plan.outcome
            result["finishTime"] = iso(self.now)
            if plan.outcome == "Done":
                result["metrics"] = {key: f"{value:.2f}%" for key, value in plan.metrics().items()}
            elif plan.outcome == "Failed":
                result.update(errorCode=500203, errorMessage=f"GPU out of memory at step {count * plan.save_step}")
        else:
            result["runStatus"] = "Running" if count else "Waiting"
            result["runProgress"] = f"{math.floor(99 * count / plan.checkpoints)}%"
        result["checkpointList"] = plan.checkpoint_list(count)
        return result

    # -- the collector's view of QianfanClient ---------------------------------------------------------------
    def describe_task(self, task_id: str) -> Answer:
        return Answer(self.result(self.by_id[task_id]), str(uuid.uuid4()), 200)

    def iter_jobs(self) -> Iterator[dict[str, Any]]:
        for job_id, plans in self.jobs.items():
            yield {"jobId": job_id, "name": plans[0].job_name, "model": plans[0].model}

    def iter_tasks(self, job_id: str) -> Iterator[dict[str, Any]]:
        for plan in self.jobs[job_id]:
            yield {"taskId": plan.task_id, "jobId": job_id}


def run_round(api: LocalApi, dataset: Dataset, at: datetime, **options: Any) -> RoundResult:
    api.now = at
    return collect_round(api, dataset, Selection(all_jobs=True), now=_clock(at), **options)  # type: ignore[arg-type]


def _clock(at: datetime) -> Callable[[], datetime]:
    return lambda: at


# -- datasets ---------------------------------------------------------------------------------------------------
def build_history(data: Path, plans: list[Plan], *, rounds: int = 10, days: int = 5) -> LocalApi:
    """Collect ``rounds`` rounds spread over ``days`` days: each round reveals the next share of every curve, the
    last one shows every task at its end (Done with metrics, Failed or Stopped) with all its checkpoints."""
    api = LocalApi(plans)
    dataset = Dataset(data)
    step = timedelta(days=days) / rounds
    for r in range(rounds):
        for plan in plans:
            api.shown[plan.task_id] = math.ceil(plan.checkpoints * (r + 1) / rounds)
        if r == rounds - 1:
            api.ended = {plan.task_id for plan in plans}
        run_round(api, dataset, EPOCH + r * step)
    return api


def flat_rows(plans: list[Plan]) -> pa.Table:
    """Every checkpoint of every finished task, one row each, with the task's attributes repeated: what a
    hand-rolled pipeline would keep in one Parquet file."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "task_id",
            "job_id",
            "job_name",
            "model",
            "train_mode",
            "parameter_scale",
            "run_status",
            "bleu_4",
            "rouge_1",
            "rouge_2",
            "rouge_l",
        )
    }
    steps, losses, ppls = [], [], []
    for plan in plans:
        step, loss, ppl = plan.curve(plan.checkpoints)
        metrics = plan.metrics() if plan.outcome == "Done" else {}
        values = {
            "task_id": plan.task_id,
            "job_id": plan.job_id,
            "job_name": plan.job_name,
            "model": plan.model,
            "train_mode": plan.train_mode,
            "parameter_scale": plan.parameter_scale,
            "run_status": plan.outcome,
            "bleu_4": metrics.get("BLEU-4"),
            "rouge_1": metrics.get("ROUGE-1"),
            "rouge_2": metrics.get("ROUGE-2"),
            "rouge_l": metrics.get("ROUGE-L"),
        }
        for name, value in values.items():
            columns[name].extend([value] * len(step))
        steps.append(step)
        losses.append(loss)
        ppls.append(ppl)
    table = pa.table(columns)
    return (
        table.append_column("step", pa.array(np.concatenate(steps)))
        .append_column("training_loss", pa.array(np.concatenate(losses)))
        .append_column("perplexity", pa.array(np.concatenate(ppls)))
    )


def write_flat(path: Path, plans: list[Plan]) -> Path:
    pq.write_table(flat_rows(plans), path, compression="zstd")
    return path
