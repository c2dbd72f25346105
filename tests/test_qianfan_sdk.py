"""The official ``qianfan`` SDK, pointed at the simulator, gets exactly what the simulator serves.

This proves the simulator is compatible with the client everyone else uses: its signature verification accepts
the SDK's (unsorted signedHeaders, port in Host), and its envelopes and pagination parse as the SDK expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qianfan.config
import qianfan.errors
from qianfan.resources import FineTune

from ftlog.simulator import Simulator

START = 1_717_243_200.0  # 2024-06-01T12:00:00Z; frozen, so every answer is stable and comparable


@pytest.fixture
def sdk_sim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Simulator]:
    """A simulator on a frozen clock (midway through most runs) and the SDK configured for it through env vars."""
    now = START + 900
    with Simulator(seed=13, jobs=4, clock=lambda: now, credentials={"AK-sdk-test": "SK-sdk-test"}) as sim:
        monkeypatch.chdir(tmp_path)  # no stray .env for the SDK's settings loader
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", sim.url)
        monkeypatch.setenv("QIANFAN_ACCESS_KEY", sim.access_key)
        monkeypatch.setenv("QIANFAN_SECRET_KEY", sim.secret_key)
        # The SDK reads its environment once into a module-level config; drop it so ours is read.
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
        yield sim


def _result(response: Any) -> Any:
    return response["result"]


def test_job_list_matches_the_simulator(sdk_sim: Simulator) -> None:
    result = _result(FineTune.V2.job_list(max_keys=100))
    assert result["jobList"] == sdk_sim.all_jobs()
    assert result["pageInfo"]["isTruncated"] is False


def test_task_list_matches_the_simulator(sdk_sim: Simulator) -> None:
    for job in sdk_sim.jobs:
        result = _result(FineTune.V2.task_list(job_id=job["jobId"], max_keys=100))
        expected = [sdk_sim.task_result(task_id) for task_id in sdk_sim.job_task_ids(job["jobId"])]
        assert result["taskList"] == expected


def test_task_list_pages_like_the_spec(sdk_sim: Simulator) -> None:
    job_id = sdk_sim.jobs[0]["jobId"]
    ids = sdk_sim.job_task_ids(job_id)
    assert len(ids) > 2
    first = _result(FineTune.V2.task_list(job_id=job_id, max_keys=2))
    assert [task["taskId"] for task in first["taskList"]] == ids[:2]
    assert first["pageInfo"] == {"marker": "", "maxKeys": 2, "isTruncated": True, "nextMarker": ids[2]}
    rest = _result(FineTune.V2.task_list(job_id=job_id, marker=ids[2], max_keys=100))
    assert [task["taskId"] for task in rest["taskList"]] == ids[2:]
    assert rest["pageInfo"]["isTruncated"] is False


def test_task_detail_matches_the_simulator(sdk_sim: Simulator) -> None:
    statuses = set()
    for task_id in sdk_sim.tasks:
        result = _result(FineTune.V2.task_detail(task_id=task_id))
        assert result == sdk_sim.task_result(task_id)
        statuses.add(result["runStatus"])
    assert {"Waiting", "Running"} <= statuses  # the frozen moment shows tasks in flight, not only finished ones
    assert all(entry.status == 200 for entry in sdk_sim.log)


def test_sdk_with_a_wrong_secret_is_rejected(sdk_sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIANFAN_SECRET_KEY", "SK-wrong")
    with pytest.raises(qianfan.errors.RequestError) as caught:
        FineTune.V2.task_detail(task_id=next(iter(sdk_sim.tasks)))
    assert caught.value.status_code == 400
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert [entry.status for entry in sdk_sim.log] == [400]
