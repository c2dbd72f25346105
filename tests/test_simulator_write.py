"""The simulator's write actions over real HTTP: create, continue, stop and delete, with the documented envelopes.

Each test runs its own simulator on 127.0.0.1 on an injected clock, and talks to it with ftlog's signed client.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.errors import ApiError
from ftlog.simulator import MODELS, SCALES, TERMINAL, TRAIN_MODES, Simulator

START = 1_717_243_200.0  # 2024-06-01T12:00:00Z
RW, RO = ("AK-write", "SK-write"), ("AK-read", "SK-read")
DATASET = {"sourceType": "Platform", "versions": [{"versionId": "ds-abc123"}], "splitRatio": 20}
HYPER = {"epoch": 1, "learningRate": 3e-5, "maxSeqLen": 4096}


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    with Simulator(seed=3, jobs=3, clock=clock, credentials=dict([RW, RO]), read_only_keys={RO[0]}) as server:
        yield server


def _client(sim: Simulator, key: tuple[str, str], retry: RetryPolicy) -> QianfanClient:
    return QianfanClient(Credentials(*key), base_url=sim.url, rps=500, retry=retry)


@pytest.fixture
def api(sim: Simulator, fast_retry: RetryPolicy) -> Iterator[QianfanClient]:
    with _client(sim, RW, fast_retry) as client:
        yield client


def call(api: QianfanClient, action: str, body: dict[str, Any]) -> Any:
    return api.call(action, body).result


def refused(api: QianfanClient, action: str, body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        api.call(action, body)
    return caught.value


def new_job(api: QianfanClient, **fields: Any) -> str:
    body = {"name": "sweep-1", "model": "ERNIE-Speed-8K", "trainMode": "SFT", **fields}
    job_id: str = call(api, "CreateFineTuningJob", body)["jobId"]
    return job_id


def new_task(api: QianfanClient, job_id: str, **fields: Any) -> str:
    body = {"jobId": job_id, "parameterScale": "LoRA", "hyperParameterConfig": HYPER, "datasetConfig": DATASET}
    result = call(api, "CreateFineTuningTask", {**body, **fields})
    assert set(result) == {"jobId", "taskId"} and result["jobId"] == job_id
    task_id: str = result["taskId"]
    return task_id


def describe(api: QianfanClient, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = api.describe_task(task_id).result
    return result


def test_created_job_is_listed_with_its_fields(api: QianfanClient, sim: Simulator) -> None:
    job_id = new_job(api, description="lr sweep", name="sweep-42")
    assert re.fullmatch(r"job-[a-z0-9]{12}", job_id)
    jobs = {job["jobId"]: job for job in api.iter_jobs()}
    assert jobs[job_id] == {
        "jobId": job_id,
        "name": "sweep-42",
        "description": "lr sweep",
        "model": "ERNIE-Speed-8K",
        "trainMode": "SFT",
        "createTime": "2024-06-01T12:00:00Z",
    }
    assert len(jobs) == 4


def test_created_task_lives_waiting_running_terminal(api: QianfanClient, sim: Simulator, clock: Clock) -> None:
    job_id = new_job(api, name="lifecycle")
    task_id = new_task(api, job_id)
    assert re.fullmatch(r"task-[a-z0-9]{12}", task_id)
    assert [task["taskId"] for task in api.iter_tasks(job_id)] == [task_id]
    first = describe(api, task_id)
    assert first["runStatus"] == "Waiting"
    assert (first["jobId"], first["jobName"], first["parameterScale"]) == (job_id, "lifecycle", "LoRA")
    assert first["createTime"] == "2024-06-01T12:00:00Z"
    seen = [first["runStatus"]]
    while seen[-1] not in TERMINAL:
        clock.now += 15
        status = describe(api, task_id)["runStatus"]
        if status != seen[-1]:
            seen.append(status)
    assert seen == ["Waiting", "Running", sim.tasks[task_id].outcome]


def _checkpointed_task(sim: Simulator, clock: Clock) -> tuple[str, list[dict[str, Any]]]:
    """A seeded task that has finished with checkpoints, and those checkpoints."""
    clock.now += 10**6
    for task_id in sim.tasks:
        points = (sim.task_result(task_id) or {}).get("checkpointList")
        if points and len(points) > 2:
            return task_id, points
    raise AssertionError("the seeded population has no task with checkpoints")


def test_continued_task_starts_from_the_source_checkpoint_loss(
    api: QianfanClient, sim: Simulator, clock: Clock
) -> None:
    source_id, points = _checkpointed_task(sim, clock)
    middle = points[len(points) // 2]
    job_id = sim.tasks[source_id].job["jobId"]
    scale = sim.tasks[source_id].parameter_scale
    task_id = new_task(
        api, job_id, parameterScale=scale, incrementTaskId=source_id, incrementCheckpointStep=middle["step"]
    )
    task = sim.tasks[task_id]
    assert task.loss_start == pytest.approx(middle["trainingLoss"])
    assert task.loss_floor < task.loss_start
    clock.now = task.finished_at() + 1
    final = describe(api, task_id)
    assert task.outcome == final["runStatus"] == "Done"  # as seed 3 draws it
    # Training went on from the checkpoint: the continued run ends below the loss it started from.
    assert final["checkpointList"][-1]["trainingLoss"] < middle["trainingLoss"]


def test_continuing_needs_an_existing_task_and_one_of_its_checkpoints(
    api: QianfanClient, sim: Simulator, clock: Clock
) -> None:
    source_id, points = _checkpointed_task(sim, clock)
    job_id = sim.tasks[source_id].job["jobId"]
    steps = {point["step"] for point in points}
    before = set(sim.tasks)
    cases = [
        ({"incrementTaskId": "task-doesnotexist"}, "incrementTaskId"),
        ({"incrementTaskId": source_id, "incrementCheckpointStep": max(steps) + 1}, "incrementCheckpointStep"),
        ({"incrementTaskId": source_id, "incrementCheckpointStep": str(min(steps))}, "incrementCheckpointStep"),
        ({"incrementCheckpointStep": min(steps)}, "incrementCheckpointStep"),
    ]
    body = {"jobId": job_id, "parameterScale": "LoRA", "hyperParameterConfig": HYPER, "datasetConfig": DATASET}
    for extra, param in cases:
        error = refused(api, "CreateFineTuningTask", {**body, **extra})
        assert (error.status, error.code) == (400, "InappropriateJSON"), extra
        assert f"param[{param}] invalid" in error.message, extra
    assert set(sim.tasks) == before
    # Without a step the last checkpoint is taken.
    task_id = new_task(api, job_id, incrementTaskId=source_id)
    assert sim.tasks[task_id].loss_start == pytest.approx(points[-1]["trainingLoss"])


def test_stop_ends_waiting_and_running_tasks_for_good(api: QianfanClient, sim: Simulator, clock: Clock) -> None:
    job_id = new_job(api)
    waiting, running = new_task(api, job_id), new_task(api, job_id)
    task = sim.tasks[running]
    clock.now = task.created + task.queue + task.run * 0.5
    assert describe(api, waiting)["runStatus"] in ("Waiting", "Running")
    during = describe(api, running)
    assert during["runStatus"] == "Running"
    assert call(api, "StopFineTuningTask", {"taskId": running}) is True
    stopped = describe(api, running)
    assert stopped["runStatus"] == "Stopped" and "runProgress" not in stopped
    assert stopped["checkpointList"] == during["checkpointList"]  # training froze where it was
    clock.now += 10**6  # long after the run would have ended, it is still the stopped one
    assert describe(api, running) == stopped


def test_stop_a_queued_task(api: QianfanClient, sim: Simulator, clock: Clock) -> None:
    task_id = new_task(api, new_job(api))
    assert describe(api, task_id)["runStatus"] == "Waiting"
    assert call(api, "StopFineTuningTask", {"taskId": task_id}) is True
    clock.now += 10**6
    result = describe(api, task_id)
    assert result["runStatus"] == "Stopped"
    assert result["checkpointList"] == [] and "vdlLink" not in result  # it never started


def test_stop_of_a_finished_or_unknown_task_is_an_error(api: QianfanClient, sim: Simulator, clock: Clock) -> None:
    clock.now += 10**6
    by_status = {(sim.task_result(t) or {})["runStatus"]: t for t in sim.tasks}
    assert set(by_status) == set(TERMINAL)
    for status, task_id in by_status.items():
        # Qianfan's answer here is undocumented; the simulator refuses with a reason rather than answer false.
        error = refused(api, "StopFineTuningTask", {"taskId": task_id})
        assert (error.status, error.code) == (400, "InvalidRequestArgumentError")
        assert f"is {status}" in error.message
        assert describe(api, task_id)["runStatus"] == status
    error = refused(api, "StopFineTuningTask", {"taskId": "task-doesnotexist"})
    assert (error.status, error.code) == (404, "ResourceNotFound")


def test_stop_a_scripted_running_task(api: QianfanClient, sim: Simulator) -> None:
    sim.script("task-scripted0001", {"taskId": "task-scripted0001", "runStatus": "Running", "runProgress": "40%"})
    assert call(api, "StopFineTuningTask", {"taskId": "task-scripted0001"}) is True
    assert describe(api, "task-scripted0001") == {"taskId": "task-scripted0001", "runStatus": "Stopped"}


def test_delete_task_and_job(api: QianfanClient, sim: Simulator) -> None:
    job_id = sim.jobs[0]["jobId"]
    doomed, *kept = [task["taskId"] for task in api.iter_tasks(job_id)]
    assert call(api, "DeleteFineTuningTask", {"taskId": doomed}) is True
    assert (refused(api, "DescribeFineTuningTask", {"taskId": doomed}).status) == 404
    assert [task["taskId"] for task in api.iter_tasks(job_id)] == kept
    assert refused(api, "DeleteFineTuningTask", {"taskId": doomed}).code == "ResourceNotFound"

    assert call(api, "DeleteFineTuningJob", {"jobId": job_id}) is True
    assert job_id not in {job["jobId"] for job in api.iter_jobs()}
    assert all(task.job["jobId"] != job_id for task in sim.tasks.values())
    for task_id in kept:
        assert refused(api, "DescribeFineTuningTask", {"taskId": task_id}).status == 404
    error = refused(api, "DeleteFineTuningJob", {"jobId": job_id})
    assert (error.status, error.code) == (404, "ResourceNotFound")


def test_support_models_cover_the_population(api: QianfanClient) -> None:
    models = call(api, "DescribeFineTuningSupportModels", {})
    assert [m["model"] for m in models] == list(MODELS)
    for model in models:
        assert [mode["trainMode"] for mode in model["supportTrainMode"]] == list(TRAIN_MODES)
        for mode in model["supportTrainMode"]:
            scales = mode["supportParameterScale"]
            assert [scale["parameterScale"] for scale in scales] == list(SCALES)
            for scale in scales:
                for spec in scale["supportHyperParameterConfig"]:
                    assert {"key", "type", "checkType", "checkValue", "default"} <= set(spec)
                    if spec["checkType"] == "range":
                        assert spec["checkValue"][0] <= spec["default"] <= spec["checkValue"][1]
                    else:
                        assert spec["default"] in spec["checkValue"]


JOB = {"name": "j", "model": "ERNIE-Speed-8K", "trainMode": "SFT"}
TASK = {"parameterScale": "LoRA", "hyperParameterConfig": HYPER, "datasetConfig": DATASET}
BAD_REQUESTS = [
    ("CreateFineTuningJob", {**JOB, "name": None}, "name"),
    ("CreateFineTuningJob", {**JOB, "name": ""}, "name"),
    ("CreateFineTuningJob", {**JOB, "name": 7}, "name"),
    ("CreateFineTuningJob", {**JOB, "model": "GPT-5"}, "model"),
    ("CreateFineTuningJob", {**JOB, "trainMode": True}, "trainMode"),
    ("CreateFineTuningJob", {**JOB, "description": ["x"]}, "description"),
    ("CreateFineTuningJob", {**JOB, "parameterScale": "Huge"}, "parameterScale"),
    ("CreateFineTuningJob", {**JOB, "parameterScale": "LoRA", "hyperParameterConfig": {"epoch": 99}},
     "hyperParameterConfig.epoch"),
    ("CreateFineTuningTask", {**TASK}, "jobId"),
    ("CreateFineTuningTask", {**TASK, "jobId": "job-doesnotexist"}, "jobId"),
    ("CreateFineTuningTask", {**TASK, "parameterScale": "Huge"}, "parameterScale"),
    ("CreateFineTuningTask", {**TASK, "hyperParameterConfig": None}, "hyperParameterConfig"),
    ("CreateFineTuningTask", {**TASK, "hyperParameterConfig": {"epoch": 0}}, "hyperParameterConfig.epoch"),
    ("CreateFineTuningTask", {**TASK, "hyperParameterConfig": {"epoch": 1.5}}, "hyperParameterConfig.epoch"),
    ("CreateFineTuningTask", {**TASK, "hyperParameterConfig": {"learningRate": True}},
     "hyperParameterConfig.learningRate"),
    ("CreateFineTuningTask", {**TASK, "hyperParameterConfig": {"maxSeqLen": 3000}}, "hyperParameterConfig.maxSeqLen"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": "ds-abc123"}, "datasetConfig"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": {**DATASET, "splitRatio": 101}}, "datasetConfig.splitRatio"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": {**DATASET, "splitRatio": "20"}}, "datasetConfig.splitRatio"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": {"versions": [{"versionId": "ds-1"}]}},
     "datasetConfig.splitRatio"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": {**DATASET, "versions": []}}, "datasetConfig.versions"),
    ("CreateFineTuningTask", {**TASK, "datasetConfig": {**DATASET, "versions": [{"versionId": 1}]}},
     "datasetConfig.versions"),
    ("CreateFineTuningTask", {**TASK, "resourceConfig": "gpu"}, "resourceConfig"),
    ("StopFineTuningTask", {}, "taskId"),
    ("StopFineTuningTask", {"taskId": 5}, "taskId"),
    ("DeleteFineTuningTask", {"taskId": ["task-x"]}, "taskId"),
    ("DeleteFineTuningJob", {"jobId": None}, "jobId"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "body", "param"), BAD_REQUESTS)
def test_bad_write_requests_get_the_error_envelope(
    api: QianfanClient, sim: Simulator, action: str, body: dict[str, Any], param: str
) -> None:
    if action == "CreateFineTuningTask" and "jobId" not in body and param != "jobId":
        body = {**body, "jobId": sim.jobs[0]["jobId"]}
    jobs, tasks = len(sim.jobs), len(sim.tasks)
    error = refused(api, action, body)
    assert (error.status, error.code) == (400, "InappropriateJSON")
    assert f"param[{param}] invalid" in error.message
    assert error.request_id
    assert (len(sim.jobs), len(sim.tasks)) == (jobs, tasks)


def test_unknown_fields_are_ignored(api: QianfanClient, sim: Simulator) -> None:
    # The SDK leaks ak/sk kwargs into bodies; BCE ignores items it does not know.
    job_id = new_job(api, ak="x", sk="y", hyperParameterConfig={"someFutureKnob": 3})
    assert new_task(api, job_id, hyperParameterConfig={**HYPER, "someFutureKnob": "on"}) in sim.tasks


def test_read_only_key_describes_but_may_not_write(sim: Simulator, fast_retry: RetryPolicy) -> None:
    task_id = next(iter(sim.tasks))
    job_id = sim.jobs[0]["jobId"]
    writes = [
        ("CreateFineTuningJob", JOB),
        ("CreateFineTuningTask", {**TASK, "jobId": job_id}),
        ("StopFineTuningTask", {"taskId": task_id}),
        ("DeleteFineTuningTask", {"taskId": task_id}),
        ("DeleteFineTuningJob", {"jobId": job_id}),
    ]
    before = (list(sim.jobs), sorted(sim.tasks), sim.task_result(task_id))
    with _client(sim, RO, fast_retry) as reader:
        assert reader.describe_task(task_id).result == sim.task_result(task_id)
        assert call(reader, "DescribeFineTuningSupportModels", {})
        for action, body in writes:
            error = refused(reader, action, body)
            assert (error.status, error.code) == (403, "AccessDenied"), action
    assert (list(sim.jobs), sorted(sim.tasks), sim.task_result(task_id)) == before
    assert sim.actions == writes  # denied attempts are recorded too: they were sent


def test_actions_records_writes_in_order_and_no_reads(api: QianfanClient, sim: Simulator) -> None:
    job_id = new_job(api)
    task_id = new_task(api, job_id)
    describe(api, task_id)
    list(api.iter_jobs())
    call(api, "StopFineTuningTask", {"taskId": task_id})
    refused(api, "StopFineTuningTask", {"taskId": task_id})
    assert [action for action, _ in sim.actions] == [
        "CreateFineTuningJob",
        "CreateFineTuningTask",
        "StopFineTuningTask",
        "StopFineTuningTask",
    ]
    assert sim.actions[2] == ("StopFineTuningTask", {"taskId": task_id})


def test_read_only_keys_must_have_a_secret() -> None:
    with pytest.raises(ValueError, match="AK-nobody"):
        Simulator(read_only_keys={"AK-nobody"})


def test_concurrent_creates_and_lists_stay_consistent(sim: Simulator, fast_retry: RetryPolicy) -> None:
    job_id = sim.jobs[0]["jobId"]
    created: list[str] = []
    failures: list[BaseException] = []

    def create() -> None:
        try:
            with _client(sim, RW, fast_retry) as client:
                for _ in range(10):
                    created.append(new_task(client, job_id))
                    list(client.iter_tasks(job_id))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert len(set(created)) == 40
    assert set(created) <= set(sim.job_task_ids(job_id))
