"""A Qianfan-compatible fine-tuning API server on loopback, for tests, the demo and trying ftlog offline.

It serves the describe actions (DescribeFineTuningJobs, DescribeFineTuningTasks, DescribeFineTuningTask,
DescribeFineTuningSupportModels) and the write actions (CreateFineTuningJob, CreateFineTuningTask, StopFineTuningTask,
DeleteFineTuningTask, DeleteFineTuningJob) with the documented envelopes, verifies every bce-auth-v1 signature, and
plays seeded task lifecycles shaped like real Qianfan runs: Waiting -> Running (1% -> 3% -> 34% -> a climb to 65% ->
a long plateau -> 96% -> 99%) -> Done, Failed or Stopped. Created tasks live the same way. Time runs ``speed`` times
faster than the wall clock; timestamps in answers are wall-clock UTC.

Write actions are recorded in ``Simulator.actions``; keys in ``read_only_keys`` may describe but get AccessDenied
on writes, like an IAM user holding only a Read policy.

>>> with Simulator(seed=1, speed=60) as sim:  # doctest: +SKIP
...     print(sim.url, sim.access_key)
"""

from __future__ import annotations

import json
import math
import random
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from . import auth
from .errors import AuthError

DEMO_ACCESS_KEY = "ftlog-demo-access-key"
DEMO_SECRET_KEY = "ftlog-demo-secret-key"  # noqa: S105 - a published demo credential for the local simulator
ZERO_TIME = "0000-00-00T00:00:00Z"
TERMINAL = ("Done", "Failed", "Stopped")
STOPPABLE = ("Waiting", "Running")
WRITE_ACTIONS = frozenset(
    {"CreateFineTuningJob", "CreateFineTuningTask", "StopFineTuningTask", "DeleteFineTuningTask", "DeleteFineTuningJob"}
)
INAPPROPRIATE = "The JSON you provided was well-formed and valid, but not appropriate for this operation."

MODELS = {"ERNIE-3.5-8K": -0.06, "ERNIE-Speed-8K": 0.0, "ERNIE-Lite-8K": 0.08, "ERNIE-Tiny-8K": 0.16}
TRAIN_MODES = {"SFT": 0.0, "DPO": 0.12, "KTO": 0.18, "PostPretrain": 0.55}
SCALES = {"FullFineTuning": 0.22, "LoRA": 0.42, "PromptTuning": 0.78}
FAILURES = [
    (500001, "训练过程中出现内部错误, 请重试 (internal training error)"),
    (400102, "数据集格式错误: 第 17 行缺少 response 字段 (dataset format error)"),
    (500203, "GPU out of memory at step {step}; reduce maxSeqLen or batchSize"),
]
JOB_NAMES = [
    "客服问答-{n}",
    "sft-sweep-{n}",
    "dpo-alignment-{n}",
    "摘要生成实验 {n}",
    "kto-feedback-{n}",
    "pretrain-domain-{n}",
]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ident(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))


@dataclass
class SimTask:
    """One task's whole life, fixed at creation; :meth:`result` renders it at a moment."""

    task_id: str
    job: dict[str, Any]
    parameter_scale: str
    created: float  # epoch seconds
    queue: float  # seconds spent Waiting
    run: float  # seconds from Running to the end state, if it runs to completion
    outcome: str  # Done, Failed or Stopped
    end_fraction: float  # share of the run reached before a Failed/Stopped end (1.0 for Done)
    total_steps: int
    save_step: int
    loss_floor: float
    loss_start: float
    noise_seed: int
    error: tuple[int, str] | None = None
    extra_metrics: bool = False
    run_id: str = ""
    stopped_at: float | None = None  # set by StopFineTuningTask; the life ends there instead

    def finished_at(self) -> float:
        if self.stopped_at is not None:
            return self.stopped_at
        return self.created + self.queue + self.run * self.end_fraction

    def stop(self, now: float) -> None:
        self.outcome, self.error, self.stopped_at = "Stopped", None, now

    def curve(self, up_to_step: int) -> list[dict[str, Any]]:
        rng = random.Random(self.noise_seed)
        points = []
        steps = [*range(self.save_step, self.total_steps + 1, self.save_step)]
        if not steps or steps[-1] != self.total_steps:
            steps.append(self.total_steps)
        for step in steps:
            decay = math.exp(-3.2 * step / self.total_steps)
            loss = self.loss_floor + (self.loss_start - self.loss_floor) * decay + rng.gauss(0, 0.012)
            loss = max(loss, 0.01)
            perplexity = math.exp(loss) * (1 + rng.gauss(0, 0.004))
            if step <= up_to_step:
                points.append({"step": step, "perplexity": perplexity, "trainingLoss": loss})
        return points

    def metrics(self) -> dict[str, str]:
        rng = random.Random(self.noise_seed + 1)
        bleu = max(1.0, 78 - 52 * self.loss_floor + rng.gauss(0, 1.5))
        values = {
            "BLEU-4": bleu,
            "ROUGE-1": min(99.0, bleu + 9 + rng.gauss(0, 1)),
            "ROUGE-2": max(1.0, bleu - 14 + rng.gauss(0, 1)),
            "ROUGE-L": min(99.0, bleu + 5 + rng.gauss(0, 1)),
        }
        metrics = {key: f"{value:.2f}%" for key, value in values.items()}
        if self.extra_metrics:
            metrics["EDIT-DISTANCE"] = f"{30 + 40 * self.loss_floor:.2f}"
            metrics["EMBEDDING-DISTANCE"] = f"{0.02 + self.loss_floor / 20:.2f}"
        return metrics

    def result(self, now: float) -> dict[str, Any]:
        job = self.job
        base: dict[str, Any] = {
            "taskId": self.task_id,
            "jobId": job["jobId"],
            "jobName": job["name"],
            "jobDescription": job["description"],
            "model": job["model"],
            "trainMode": job["trainMode"],
            "parameterScale": self.parameter_scale,
            "createTime": _iso(self.created),
            "finishTime": ZERO_TIME,
        }
        started = self.created + self.queue
        if now < min(started, self.finished_at()):  # a task stopped while queued ends before it starts
            return {**base, "runStatus": "Waiting", "checkpointList": []}
        # A stopped task's training froze at the stop; unstopped tasks keep the plain expression (same numbers).
        cut = now if self.stopped_at is None else min(now, self.stopped_at)
        fraction = min((cut - started) / self.run, self.end_fraction)
        if cut >= started:
            base["vdlLink"] = "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=" + self.run_id
        trained = int(self.total_steps * min(1.0, max(0.0, (fraction - 0.12) / 0.43)))
        if now >= self.finished_at() and self.outcome != "Done":
            state = {**base, "runStatus": self.outcome, "checkpointList": self.curve(trained)}
            if self.outcome == "Failed" and self.error:
                code, message = self.error
                state.update(
                    errorCode=code,
                    errorMessage=message.format(step=trained),
                    finishTime=_iso(self.finished_at()),
                )
            return state
        if fraction >= 1.0:
            return {
                **base,
                "runStatus": "Done",
                "finishTime": _iso(self.finished_at()),
                "metrics": self.metrics() if job["trainMode"] != "PostPretrain" else {},
                "checkpointList": self.curve(self.total_steps),
            }
        return {
            **base,
            "runStatus": "Running",
            "runProgress": f"{progress_at(fraction)}%",
            "checkpointList": self.curve(trained),
        }


def progress_at(fraction: float) -> int:
    """runProgress at a share of the run, following the phases of real Qianfan traces."""
    if fraction < 0.03:
        return 1
    if fraction < 0.06:
        return 3
    if fraction < 0.12:
        return 34
    if fraction < 0.55:
        return 34 + int(31 * (fraction - 0.12) / 0.43)
    if fraction < 0.92:
        return 65
    return 96 if fraction < 0.96 else 99


# (low, high, default) learning rate per parameter scale: adapters tolerate larger steps than full fine-tuning.
LEARNING_RATES = {"FullFineTuning": (1e-6, 4e-5, 3e-5), "LoRA": (1e-6, 1e-3, 3e-4), "PromptTuning": (1e-6, 3e-2, 3e-3)}


def hyper_parameters(scale: str) -> list[dict[str, Any]]:
    """The supportHyperParameterConfig of one parameter scale, in the shape of the SDK's mock server."""
    low, high, default = LEARNING_RATES[scale]
    return [
        {"key": "epoch", "type": "int", "checkType": "range", "checkValue": [1, 50], "default": 1},
        {"key": "learningRate", "type": "float", "checkType": "range", "checkValue": [low, high], "default": default},
        {"key": "maxSeqLen", "type": "int", "checkType": "choice", "checkValue": [512, 1024, 2048, 4096, 8192],
         "default": 4096},
    ]  # fmt: skip


def support_models() -> list[dict[str, Any]]:
    """DescribeFineTuningSupportModels: every combination the seeded population uses, so any task can be continued."""
    modes = [
        {
            "trainMode": mode,
            "supportParameterScale": [
                {"parameterScale": scale, "supportHyperParameterConfig": hyper_parameters(scale)} for scale in SCALES
            ],
        }
        for mode in TRAIN_MODES
    ]
    return [{"model": model, "modelType": "text2text", "supportTrainMode": modes} for model in MODELS]


def build_population(
    seed: int, jobs: int, tasks_per_job: int | None, start: float, speed: float
) -> tuple[list[dict[str, Any]], list[SimTask]]:
    rng = random.Random(seed)
    job_list: list[dict[str, Any]] = []
    tasks: list[SimTask] = []
    models, modes, scales = list(MODELS), list(TRAIN_MODES), list(SCALES)
    for n in range(jobs):
        model, mode = models[n % len(models)], modes[(n // 2) % len(modes)]
        created = start - 60 / speed * (jobs - n)
        job = {
            "jobId": _ident("job-", rng),
            "name": JOB_NAMES[n % len(JOB_NAMES)].format(n=n + 1),
            "description": f"{mode} of {model}" if n % 3 else "",
            "model": model,
            "trainMode": mode,
            "createTime": _iso(created),
        }
        job_list.append(job)
        for k in range(tasks_per_job if tasks_per_job is not None else rng.randint(3, 6)):
            scale = scales[k % len(scales)]
            floor = 0.35 + MODELS[model] + TRAIN_MODES[mode] + SCALES[scale] + rng.gauss(0, 0.03)
            roll = rng.random()
            outcome = "Done" if roll < 0.76 else "Failed" if roll < 0.88 else "Stopped"
            total_steps = rng.choice([256, 281, 512, 640])
            tasks.append(
                SimTask(
                    task_id=_ident("task-", rng),
                    job=job,
                    parameter_scale=scale,
                    created=created + (k * 20 + rng.uniform(0, 10)) / speed,
                    queue=rng.uniform(5, 300) / speed,
                    run=rng.uniform(8 * 60, 40 * 60) / speed,
                    outcome=outcome,
                    end_fraction=1.0 if outcome == "Done" else rng.uniform(0.15, 0.75),
                    total_steps=total_steps,
                    save_step=32 if total_steps < 400 else 64,
                    loss_floor=max(0.05, floor),
                    loss_start=floor + rng.uniform(1.6, 2.4),
                    noise_seed=rng.randrange(2**31),
                    error=rng.choice(FAILURES) if outcome == "Failed" else None,
                    extra_metrics=rng.random() < 0.3,
                    run_id=_ident("run-", rng),
                )
            )
    return job_list, tasks


FAULT_KINDS = ("429", "500", "slow", "reset", "html", "truncate")


@dataclass
class Faults:
    """Share of requests answered badly, for tests that try to break the client and collector.

    ``script`` is consumed first, one entry per request: a fault kind, or ``"ok"`` for a normal answer. It makes
    retry tests deterministic where the random rates cannot.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_reset: float = 0.0
    rate_html: float = 0.0
    rate_truncate: float = 0.0  # a 200 whose body stops short of its Content-Length, then the connection closes
    retry_after: float = 1.0
    slow_seconds: float = 5.0
    latency: float = 0.0  # added to every answer
    script: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.script if kind != "ok" and kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected 'ok' or one of {FAULT_KINDS}")


@dataclass
class Logged:
    at: float
    action: str
    status: int
    body: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """The server and its world. Tests may script results and errors per task on top of the seeded population.

    ``read_only_keys``: access keys (also in ``credentials``) whose write actions are answered 403 AccessDenied,
    as for a key holding only QianfanReadAccessPolicy; their describes work. ``actions`` lists ``(action, body)``
    of every write request that reached the API, denied or refused ones included (not those an injected fault
    answered instead), so a test can check what was sent, e.g. that a stop went out exactly once.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        speed: float = 1.0,
        jobs: int = 6,
        tasks_per_job: int | None = None,
        faults: Faults | None = None,
        credentials: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        time_field: str = "Time",
        read_only_keys: Collection[str] = (),
    ) -> None:
        self.clock = clock
        self.speed = speed
        self.faults = faults or Faults()
        self.credentials = credentials or {DEMO_ACCESS_KEY: DEMO_SECRET_KEY}
        self.read_only_keys = frozenset(read_only_keys)
        if not self.read_only_keys <= self.credentials.keys():
            raise ValueError(f"read-only keys {sorted(self.read_only_keys - self.credentials.keys())} have no secret")
        self.actions: list[tuple[str, dict[str, Any]]] = []  # write requests received, in order (under the lock)
        self.jobs, tasks = build_population(seed, jobs, tasks_per_job, clock(), speed)
        self.tasks: dict[str, SimTask] = {task.task_id: task for task in tasks}
        self.scripted: dict[str, dict[str, Any]] = {}  # task_id -> result served as-is
        self.scripted_jobs: dict[str, str] = {}  # task_id -> job_id for scripted tasks
        self.errors: dict[str, tuple[int, str, str]] = {}  # task_id -> (status, code, message)
        self.time_field = time_field  # "Time" (createTime) or "Date" (createDate), both seen in the wild
        self.log: deque[Logged] = deque(maxlen=200_000)
        self._rng = random.Random(seed ^ 0x5F3759DF)
        self._world = random.Random(seed ^ 0x2545F491)  # created jobs and tasks; apart from the fault draws
        self._lock = threading.Lock()
        self.host = host
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        self._thread: threading.Thread | None = None
        self._serving = False

    # -- life cycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}"

    @property
    def access_key(self) -> str:
        return next(iter(self.credentials))

    @property
    def secret_key(self) -> str:
        return self.credentials[self.access_key]

    def start(self) -> Simulator:
        self._serving = True  # before the thread runs, so an immediate stop() still shuts it down
        self._thread = threading.Thread(target=self.serve_forever, name="ftlog-simulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        try:
            # A short poll interval keeps stop() quick: shutdown() waits up to one interval.
            self._server.serve_forever(poll_interval=0.05)
        finally:
            self._serving = False

    def stop(self) -> None:
        # shutdown() waits for serve_forever to acknowledge, so it would hang on a server that is not serving.
        if self._serving:
            self._server.shutdown()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting for tests ----------------------------------------------------------------------------------
    def script(self, task_id: str, result: dict[str, Any], job_id: str = "job-scripted0001") -> None:
        """Serve ``result`` verbatim for ``task_id`` (listed under ``job_id``) until scripted again."""
        with self._lock:
            self.scripted[task_id] = result
            self.scripted_jobs[task_id] = job_id

    def fail(self, task_id: str, status: int = 500, code: str = "InternalError", message: str = "boom") -> None:
        """Answer every describe of ``task_id`` with an error until :meth:`heal` is called."""
        with self._lock:
            self.errors[task_id] = (status, code, message)

    def heal(self, task_id: str) -> None:
        with self._lock:
            self.errors.pop(task_id, None)

    def all_done(self) -> bool:
        now = self.clock()
        with self._lock:  # writes add and remove tasks from the server threads
            return all(now >= task.finished_at() for task in self.tasks.values())

    # -- the API ----------------------------------------------------------------------------------------------
    def task_result(self, task_id: str) -> dict[str, Any] | None:
        if task_id in self.scripted:
            return self.scripted[task_id]
        task = self.tasks.get(task_id)
        if task is None:
            return None
        result = task.result(self.clock())
        if self.time_field != "Time":
            result[f"create{self.time_field}"] = result.pop("createTime")
            result[f"finish{self.time_field}"] = result.pop("finishTime")
        return result

    def job_task_ids(self, job_id: str) -> list[str]:
        ids = [t.task_id for t in self.tasks.values() if t.job["jobId"] == job_id]
        return ids + [tid for tid, jid in self.scripted_jobs.items() if jid == job_id and tid not in ids]

    def all_jobs(self) -> list[dict[str, Any]]:
        jobs = [dict(job.items()) for job in self.jobs]
        if self.time_field != "Time":
            for job in jobs:
                job[f"create{self.time_field}"] = job.pop("createTime")
        known = {job["jobId"] for job in jobs}
        for job_id in dict.fromkeys(self.scripted_jobs.values()):
            if job_id not in known:
                jobs.append({"jobId": job_id, "name": job_id, "description": "", "model": "", "trainMode": ""})
        return jobs

    def handle(self, action: str, body: dict[str, Any], access_key: str | None = None) -> tuple[int, dict[str, Any]]:
        """Answer one authenticated request: ``(HTTP status, envelope without requestId)``."""
        handler = self._handlers.get(action)
        if handler is None:
            return 400, _error("InvalidAction", f"unsupported Action {action!r}")
        # One lock for reads and writes: a create or delete must not change the dicts a describe is walking.
        with self._lock:
            if action in WRITE_ACTIONS:
                self.actions.append((action, body))
                if access_key in self.read_only_keys:
                    # Stop and Delete need a FullControl policy [DOC]; creating surely does too.
                    return 403, _error(
                        "AccessDenied",
                        f"Access denied. {action} needs QianfanFullControlAccessPolicy or "
                        "QianfanModelTuningFullControlAccessPolicy; this access key may only read.",
                    )
            try:
                return 200, {"result": handler(self, body)}
            except Refused as refused:
                return refused.status, _error(refused.code, refused.message)

    # Each takes the request body and returns the result, or raises Refused; called with the lock held.
    def _describe_task(self, body: dict[str, Any]) -> Any:
        task_id = body.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise Refused(400, "InvalidRequestArgumentError", "taskId is required")
        if task_id in self.errors:
            raise Refused(*self.errors[task_id])
        result = self.task_result(task_id)
        if result is None:
            raise _not_found("task", task_id)
        return result

    def _describe_jobs(self, body: dict[str, Any]) -> Any:
        return _page(self.all_jobs(), body, "jobList", "jobId")

    def _describe_tasks(self, body: dict[str, Any]) -> Any:
        job_id = body.get("jobId")
        if not isinstance(job_id, str) or job_id not in {job["jobId"] for job in self.all_jobs()}:
            raise Refused(400, "InvalidRequestArgumentError", f"job {job_id!r} does not exist")
        # A scripted result may lack taskId (tests send odd payloads); a list item always carries it.
        items = [{"taskId": tid, **(self.task_result(tid) or {})} for tid in self.job_task_ids(job_id)]
        return _page([i for i in items if i], body, "taskList", "taskId")

    def _describe_support_models(self, body: dict[str, Any]) -> Any:
        return support_models()

    def _create_job(self, body: dict[str, Any]) -> Any:
        name, model, mode = _field(body, "name", str), _field(body, "model", str), _field(body, "trainMode", str)
        if model not in MODELS:
            raise _bad("model", f"{model!r} is not a supported model (see DescribeFineTuningSupportModels)")
        if mode not in TRAIN_MODES:
            raise _bad("trainMode", f"must be one of {list(TRAIN_MODES)}")
        description = _field(body, "description", str, required=False)
        scale = _field(body, "parameterScale", str, required=False)
        if scale is not None and scale not in SCALES:
            raise _bad("parameterScale", f"must be one of {list(SCALES)}")
        config = _field(body, "hyperParameterConfig", dict, required=False)
        if config is not None and scale is not None:
            _check_hyper_parameters(config, scale)
        job = {
            "jobId": self._new_id("job-", {job["jobId"] for job in self.jobs}),
            "name": name,
            "description": description or "",
            "model": model,
            "trainMode": mode,
            "createTime": _iso(self.clock()),
        }
        self.jobs.append(job)
        return {"jobId": job["jobId"]}

    def _create_task(self, body: dict[str, Any]) -> Any:
        job_id = _field(body, "jobId", str)
        job = next((job for job in self.jobs if job["jobId"] == job_id), None)
        if job is None:
            raise _bad("jobId", f"job {job_id} does not exist")
        scale = _field(body, "parameterScale", str)
        if scale not in SCALES:
            raise _bad("parameterScale", f"must be one of {list(SCALES)}")
        _check_hyper_parameters(_field(body, "hyperParameterConfig", dict), scale)
        dataset = _field(body, "datasetConfig", dict)
        _field(dataset, "datasetConfig.sourceType", str, required=False)
        versions = _field(dataset, "datasetConfig.versions", list)
        if not versions or not all(isinstance(v, dict) and isinstance(v.get("versionId"), str) for v in versions):
            raise _bad("datasetConfig.versions", "must be a non-empty array of {versionId: string}")
        ratio = _field(dataset, "datasetConfig.splitRatio", float)  # required, as in the SDK's own mock
        if not 0 <= ratio <= 100:
            raise _bad("datasetConfig.splitRatio", "must be from 0 to 100")
        for optional in ("modelConfig", "resourceConfig", "corpusConfig"):
            _field(body, optional, dict, required=False)
        task = self._spawn(job, scale, self._increment_loss(body))
        self.tasks[task.task_id] = task
        return {"jobId": job_id, "taskId": task.task_id}

    def _increment_loss(self, body: dict[str, Any]) -> float | None:
        """The loss a continued task starts from: its source checkpoint's; None for a fresh task."""
        source_id = _field(body, "incrementTaskId", str, required=False)
        step = _field(body, "incrementCheckpointStep", int, required=False)
        if source_id is None:
            if step is not None:
                raise _bad("incrementCheckpointStep", "needs incrementTaskId")
            return None
        source = self.task_result(source_id)
        if source is None:
            raise _bad("incrementTaskId", f"task {source_id} does not exist")
        checkpoints = [p for p in source.get("checkpointList") or [] if isinstance(p, dict)]
        if not checkpoints:
            raise _bad("incrementTaskId", f"task {source_id} has no checkpoint to continue from")
        # Without a step the API presumably continues from the latest model; the last checkpoint stands for it.
        point = checkpoints[-1] if step is None else next((p for p in checkpoints if p.get("step") == step), None)
        if point is None:
            steps = [p.get("step") for p in checkpoints]
            raise _bad("incrementCheckpointStep", f"step {step} is not a checkpoint of {source_id} (has {steps})")
        loss = point.get("trainingLoss")
        if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and loss > 0:
            return float(loss)
        return None  # a scripted NaN or missing loss: start afresh rather than propagate it

    def _spawn(self, job: dict[str, Any], scale: str, start_loss: float | None) -> SimTask:
        """A new task drawn like the seeded ones, created now; a continued one starts from ``start_loss``."""
        rng, speed, now = self._world, self.speed, self.clock()
        floor = 0.35 + MODELS[job["model"]] + TRAIN_MODES[job["trainMode"]] + SCALES[scale] + rng.gauss(0, 0.03)
        floor = max(0.05, floor)
        if start_loss is None:
            start = floor + rng.uniform(1.6, 2.4)
        else:  # continuing keeps improving on the checkpoint, even when it is already below this setup's floor
            start, floor = start_loss, min(floor, 0.8 * start_loss)
        roll = rng.random()
        outcome = "Done" if roll < 0.76 else "Failed" if roll < 0.88 else "Stopped"
        total_steps = rng.choice([256, 281, 512, 640])
        return SimTask(
            task_id=self._new_id("task-", self.tasks.keys() | self.scripted.keys()),
            job=job,
            parameter_scale=scale,
            created=now,
            queue=rng.uniform(5, 300) / speed,
            run=rng.uniform(8 * 60, 40 * 60) / speed,
            outcome=outcome,
            end_fraction=1.0 if outcome == "Done" else rng.uniform(0.15, 0.75),
            total_steps=total_steps,
            save_step=32 if total_steps < 400 else 64,
            loss_floor=floor,
            loss_start=start,
            noise_seed=rng.randrange(2**31),
            error=rng.choice(FAILURES) if outcome == "Failed" else None,
            extra_metrics=rng.random() < 0.3,
            run_id=_ident("run-", rng),
        )

    def _new_id(self, prefix: str, taken: Collection[str]) -> str:
        while (ident := _ident(prefix, self._world)) in taken:
            pass
        return ident

    def _stop_task(self, body: dict[str, Any]) -> Any:
        task_id = self._existing_task(body)
        status = (self.task_result(task_id) or {}).get("runStatus")
        if status not in STOPPABLE:
            # The docs leave Stop on a finished task open (error or result false); an error tells the caller why.
            raise Refused(
                400,
                "InvalidRequestArgumentError",
                f"task {task_id} is {status}; only a Waiting or Running task can be stopped",
            )
        if task_id in self.scripted:
            kept = {k: v for k, v in self.scripted[task_id].items() if k != "runProgress"}  # only while Running
            self.scripted[task_id] = {**kept, "runStatus": "Stopped"}
        else:
            self.tasks[task_id].stop(self.clock())
        return True

    def _delete_task(self, body: dict[str, Any]) -> Any:
        # The docs name no precondition, so a running task may be deleted too.
        self._forget(self._existing_task(body))
        return True

    def _delete_job(self, body: dict[str, Any]) -> Any:
        job_id = _field(body, "jobId", str)
        if job_id not in {job["jobId"] for job in self.all_jobs()}:
            raise _not_found("job", job_id)
        for task_id in self.job_task_ids(job_id):  # a job's tasks go with it
            self._forget(task_id)
        self.jobs[:] = [job for job in self.jobs if job["jobId"] != job_id]
        return True

    def _existing_task(self, body: dict[str, Any]) -> str:
        task_id: str = _field(body, "taskId", str)
        if task_id not in self.tasks and task_id not in self.scripted:
            raise _not_found("task", task_id)
        return task_id

    def _forget(self, task_id: str) -> None:
        for table in (self.tasks, self.scripted, self.scripted_jobs, self.errors):
            table.pop(task_id, None)

    _handlers: ClassVar[dict[str, Callable[[Simulator, dict[str, Any]], Any]]] = {
        "DescribeFineTuningTask": _describe_task,
        "DescribeFineTuningJobs": _describe_jobs,
        "DescribeFineTuningTasks": _describe_tasks,
        "DescribeFineTuningSupportModels": _describe_support_models,
        "CreateFineTuningJob": _create_job,
        "CreateFineTuningTask": _create_task,
        "StopFineTuningTask": _stop_task,
        "DeleteFineTuningTask": _delete_task,
        "DeleteFineTuningJob": _delete_job,
    }

    def draw_fault(self) -> str | None:
        f = self.faults
        with self._lock:
            if f.script:
                kind = f.script.pop(0)
                return None if kind == "ok" else kind
            roll = self._rng.random()
        for name, rate in zip(
            FAULT_KINDS,
            (f.rate_429, f.rate_500, f.rate_slow, f.rate_reset, f.rate_html, f.rate_truncate),
            strict=True,
        ):
            if roll < rate:
                return name
            roll -= rate
        return None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


class Refused(Exception):
    """An error answer, raised from inside an action handler."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(name: str, why: str) -> Refused:
    # The code and wording of the SDK mock's answer to a bad splitRatio, the one recorded example for a write.
    return Refused(400, "InappropriateJSON", f"{INAPPROPRIATE} param[{name}] invalid: {why}.")


def _not_found(kind: str, ident: str) -> Refused:
    return Refused(404, "ResourceNotFound", f"{kind} {ident} does not exist")


_KINDS = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "an array"}


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` if it is of ``kind`` (JSON booleans are no numbers; a float may be written as an int)."""
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    ok = isinstance(value, accepted) and not isinstance(value, bool)
    if not ok or (kind is float and not math.isfinite(value)):
        raise _bad(name, f"must be {_KINDS[kind]}")
    return value


def _field(obj: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """``obj``'s field named by the last part of ``name`` (a dotted path, for messages); required ones non-empty."""
    value = obj.get(name.rpartition(".")[2])
    if value is None:
        if required:
            raise _bad(name, "is required")
        return None
    value = _typed(name, value, kind)
    if required and kind is str and not value:
        raise _bad(name, "must not be empty")
    return value


def _check_hyper_parameters(config: dict[str, Any], scale: str) -> None:
    """Known keys must fit DescribeFineTuningSupportModels; unknown ones are ignored, as BCE ignores unknown items."""
    for spec in hyper_parameters(scale):
        if spec["key"] not in config:
            continue
        name = f"hyperParameterConfig.{spec['key']}"
        value = _typed(name, config[spec["key"]], int if spec["type"] == "int" else float)
        allowed = spec["checkValue"]
        if spec["checkType"] == "range" and not allowed[0] <= value <= allowed[1]:
            raise _bad(name, f"must be from {allowed[0]:g} to {allowed[1]:g}")
        if spec["checkType"] == "choice" and value not in allowed:
            raise _bad(name, f"must be one of {allowed}")


def _page(items: list[dict[str, Any]], body: dict[str, Any], key: str, id_key: str) -> dict[str, Any]:
    """One page: marker is the id of the first item returned, nextMarker the id of the first one not returned."""
    raw_max = body.get("maxKeys", 10)
    max_keys = min(100, raw_max) if isinstance(raw_max, int) and raw_max > 0 else 10
    if body.get("pageReverse") is True:
        items = items[::-1]
    marker = body.get("marker") or ""
    ids = [item[id_key] for item in items]
    start = ids.index(marker) if marker in ids else 0
    page = items[start : start + max_keys]
    info: dict[str, Any] = {
        "marker": marker,
        "maxKeys": max_keys,
        "isTruncated": start + max_keys < len(items),
    }
    if info["isTruncated"]:
        info["nextMarker"] = ids[start + max_keys]
    return {key: page, "pageInfo": info}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, reset) is routine here, not worth a traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; Nagle would add ~40 ms to each
    _logged_body: dict[str, Any]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the simulator keeps its own request log

    def do_POST(self) -> None:
        sim = self.server.sim
        request_id = str(uuid.uuid4())
        split = urlsplit(self.path)
        query = parse_qsl(split.query, keep_blank_values=True)
        action = dict(query).get("Action", "")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        # Set per request: with keep-alive one handler serves many requests and must not log a stale body.
        self._logged_body = body if isinstance(body, dict) else {}
        if sim.faults.latency:
            time.sleep(sim.faults.latency)
        fault = sim.draw_fault()
        if fault == "reset":
            return self._reset()
        if fault == "slow":
            time.sleep(sim.faults.slow_seconds)
        if split.path != "/v2/finetuning":
            return self._send(404, _error("InvalidURI", "Could not parse the specified URI."), request_id, action)
        try:
            headers = dict(self.headers.items())
            access_key = auth.verify(
                self.headers.get("Authorization"),
                sim.credentials.get,
                "POST",
                split.path,
                query,
                headers,
                now=datetime.now(timezone.utc),
            )
        except AuthError as exc:
            return self._send(exc.status or 400, _error(exc.code or "AccessDenied", exc.message), request_id, action)
        if fault == "429":
            limited = _error("QPSLimitReached", "Request rate exceeds the limit; retry later.")
            return self._send(429, limited, request_id, action, {"Retry-After": f"{sim.faults.retry_after:g}"})
        if fault == "500":
            return self._send(500, _error("InternalError", "We encountered an internal error."), request_id, action)
        if fault == "html":
            return self._send_raw(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", action)
        if not isinstance(body, dict):
            return self._send(
                400, _error("MalformedJSON", "The JSON you provided was not well-formed."), request_id, action
            )
        status, answer = sim.handle(action, body, access_key)
        if fault == "truncate":
            return self._truncate(status, answer, request_id, action)
        self._send(status, answer, request_id, action)

    def _send(
        self,
        status: int,
        body: dict[str, Any],
        request_id: str,
        action: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        payload = json.dumps({"requestId": request_id, **body}, ensure_ascii=False).encode()
        headers = {"x-bce-request-id": request_id, **(extra or {})}
        self._send_raw(status, payload, "application/json; charset=utf-8", action, headers)

    def _send_raw(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        action: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.server.sim.log.append(Logged(time.monotonic(), action, status, self._logged_body))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _truncate(self, status: int, body: dict[str, Any], request_id: str, action: str) -> None:
        """Announce the whole answer, send half of it, and hang up: what a proxy dying mid-response looks like."""
        payload = json.dumps({"requestId": request_id, **body}, ensure_ascii=False).encode()
        self.server.sim.log.append(Logged(time.monotonic(), "truncate", status, self._logged_body))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)

    def _reset(self) -> None:
        self.server.sim.log.append(Logged(time.monotonic(), "reset", 0, self._logged_body))
        # SO_LINGER with a zero timeout makes close() send a TCP RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
