"""The official ``qianfan`` SDK (0.4.12.3) creates, continues, stops and deletes through the simulator.

The write-side twin of test_qianfan_sdk.py: the SDK's own request bodies (``FineTune.V2.create_job``,
``create_task``, ``stop_task``, ...) are accepted, and its answers parse as the SDK expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qianfan.config
import qianfan.errors
from qianfan.resources import FineTune

from ftlog.simulator import Simulator, support_models

START = 1_717_243_200.0  # 2024-06-01T12:00:00Z
DATASET = {"sourceType": "Platform", "versions": [{"versionId": "ds-sdk000000001"}], "splitRatio": 20}
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
def sdk_sim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: Clock) -> Iterator[Simulator]:
    """A simulator with a writer key (the SDK's) and a read-only one, and the SDK configured through env vars."""
    keys = {"AK-sdk-writer": "SK-sdk-writer", "AK-sdk-reader": "SK-sdk-reader"}
    with Simulator(seed=13, jobs=2, clock=clock, credentials=keys, read_only_keys={"AK-sdk-reader"}) as sim:
        monkeypatch.chdir(tmp_path)  # no stray .env for the SDK's settings loader
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", sim.url)
        use_key(monkeypatch, "AK-sdk-writer", "SK-sdk-writer")
        yield sim


def use_key(monkeypatch: pytest.MonkeyPatch, access_key: str, secret_key: str) -> None:
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", access_key)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", secret_key)
    # The SDK reads its environment once into a module-level config; drop it so ours is read.
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)


def _result(response: Any) -> Any:
    return response["result"]


def status(sim: Simulator, task_id: str) -> Any:
    return (sim.task_result(task_id) or {}).get("runStatus")


def test_sdk_creates_a_job_and_a_task_and_stops_it(sdk_sim: Simulator, clock: Clock) -> None:
    job = _result(FineTune.V2.create_job(name="sdk-job", model="ERNIE-Speed-8K", train_mode="SFT", description="d"))
    job_id = job["jobId"]
    assert job == {"jobId": job_id} and job_id.startswith("job-")
    listed = _result(FineTune.V2.job_list(max_keys=100))["jobList"]
    assert [(j["jobId"], j["name"], j["description"]) for j in listed][-1] == (job_id, "sdk-job", "d")

    task = _result(
        FineTune.V2.create_task(job_id=job_id, params_scale="LoRA", hyper_params=HYPER, dataset_config=DATASET)
    )
    task_id = task["taskId"]
    assert task == {"jobId": job_id, "taskId": task_id}
    detail = _result(FineTune.V2.task_detail(task_id=task_id))
    assert (detail["runStatus"], detail["jobName"], detail["parameterScale"]) == ("Waiting", "sdk-job", "LoRA")
    created = sdk_sim.tasks[task_id]
    clock.now = created.created + created.queue + created.run * 0.3
    assert _result(FineTune.V2.task_detail(task_id=task_id))["runStatus"] == "Running"

    assert _result(FineTune.V2.stop_task(task_id=task_id)) is True
    assert _result(FineTune.V2.task_detail(task_id=task_id))["runStatus"] == "Stopped"
    with pytest.raises(qianfan.errors.RequestError) as caught:
        FineTune.V2.stop_task(task_id=task_id)  # a stopped task stays stopped
    assert caught.value.status_code == 400
    assert "InvalidRequestArgumentError" in str(caught.value)
    assert [action for action, _ in sdk_sim.actions] == [
        "CreateFineTuningJob",
        "CreateFineTuningTask",
        "StopFineTuningTask",
        "StopFineTuningTask",
    ]
    assert sdk_sim.actions[2] == ("StopFineTuningTask", {"taskId": task_id})


def test_sdk_continues_a_task_from_a_checkpoint(sdk_sim: Simulator, clock: Clock) -> None:
    clock.now += 10**6
    source_id, points = next(
        (tid, r["checkpointList"]) for tid in sdk_sim.tasks if (r := sdk_sim.task_result(tid)) and r["checkpointList"]
    )
    source = sdk_sim.tasks[source_id]
    task = _result(
        FineTune.V2.create_task(
            job_id=source.job["jobId"],
            params_scale=source.parameter_scale,
            hyper_params=HYPER,
            dataset_config=DATASET,
            increment_task_id=source_id,
            increment_checkpoint_step=points[0]["step"],
        )
    )
    assert sdk_sim.tasks[task["taskId"]].loss_start == pytest.approx(points[0]["trainingLoss"])
    assert sdk_sim.actions[-1][1]["incrementCheckpointStep"] == points[0]["step"]
    with pytest.raises(qianfan.errors.RequestError) as caught:
        FineTune.V2.create_task(
            job_id=source.job["jobId"],
            params_scale=source.parameter_scale,
            dataset_config=DATASET,
            increment_task_id=source_id,
            increment_checkpoint_step=points[-1]["step"] + 1,
        )
    assert caught.value.status_code == 400
    assert "param[incrementCheckpointStep] invalid" in str(caught.value)


def test_sdk_deletes_and_lists_supported_models(sdk_sim: Simulator) -> None:
    assert _result(FineTune.V2.supported_models()) == support_models()
    job_id = sdk_sim.jobs[0]["jobId"]
    task_id = sdk_sim.job_task_ids(job_id)[0]
    assert _result(FineTune.V2.delete_task(task_id=task_id)) is True
    assert task_id not in sdk_sim.tasks
    assert _result(FineTune.V2.delete_job(job_id=job_id)) is True
    assert job_id not in [job["jobId"] for job in _result(FineTune.V2.job_list(max_keys=100))["jobList"]]


def test_sdk_with_a_read_only_key_may_describe_but_not_stop(
    sdk_sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_key(monkeypatch, "AK-sdk-reader", "SK-sdk-reader")
    task_id = next(tid for tid in sdk_sim.tasks if status(sdk_sim, tid) == "Waiting")
    assert _result(FineTune.V2.task_detail(task_id=task_id))["runStatus"] == "Waiting"
    with pytest.raises(qianfan.errors.RequestError) as caught:
        FineTune.V2.stop_task(task_id=task_id)
    assert caught.value.status_code == 403
    assert "AccessDenied" in str(caught.value)
    assert status(sdk_sim, task_id) == "Waiting"
    assert sdk_sim.actions == [("StopFineTuningTask", {"taskId": task_id})]
