"""The simulator's world: seeded task lifecycles that behave like real Qianfan runs, on an injected clock."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean
from typing import Any

import pytest

from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.simulator import TERMINAL, ZERO_TIME, Faults, Simulator

START = 1_717_243_200.0  # 2024-06-01T12:00:00Z


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sim_credentials(sim: Simulator) -> Credentials:
    return Credentials(sim.access_key, sim.secret_key)


def _collapse(values: list[str]) -> list[str]:
    return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]


@pytest.fixture(scope="module")
def histories() -> dict[str, list[dict[str, Any]]]:
    """Every task of a seeded population, rendered every 20 simulated seconds from before creation to the end."""
    clock = Clock()
    with Simulator(seed=11, speed=1, jobs=6, clock=clock) as sim:
        clock.now = min(task.created for task in sim.tasks.values()) - 1
        seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        while True:
            for task_id in sim.tasks:
                result = sim.task_result(task_id)
                assert result is not None
                seen[task_id].append(result)
            if sim.all_done():
                break
            clock.now += 20
        for _ in range(3):  # a little past the end: terminal states must hold still
            clock.now += 600
            for task_id in sim.tasks:
                seen[task_id].append(sim.task_result(task_id) or {})
    return dict(seen)


def test_population_covers_every_outcome(histories: dict[str, list[dict[str, Any]]]) -> None:
    assert {states[-1]["runStatus"] for states in histories.values()} == set(TERMINAL)


def test_status_goes_waiting_running_terminal(histories: dict[str, list[dict[str, Any]]]) -> None:
    for task_id, states in histories.items():
        path = _collapse([state["runStatus"] for state in states])
        assert path[:2] == ["Waiting", "Running"], task_id
        assert len(path) == 3 and path[2] in TERMINAL, (task_id, path)


def test_terminal_states_never_change(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        first_terminal = next(i for i, state in enumerate(states) if state["runStatus"] in TERMINAL)
        assert all(state == states[first_terminal] for state in states[first_terminal:])


def test_run_progress_only_while_running_and_never_decreasing(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        progress = []
        for state in states:
            assert ("runProgress" in state) == (state["runStatus"] == "Running")
            if "runProgress" in state:
                text = state["runProgress"]
                assert isinstance(text, str) and text.endswith("%")
                progress.append(int(text[:-1]))
        assert progress and progress == sorted(progress)
        assert progress[0] >= 1 and progress[-1] <= 99


def test_progress_follows_the_real_phases(histories: dict[str, list[dict[str, Any]]]) -> None:
    done = [states for states in histories.values() if states[-1]["runStatus"] == "Done"]
    values = {int(s["runProgress"][:-1]) for states in done for s in states if "runProgress" in s}
    assert {1, 3, 34, 65, 99} <= values


def test_metrics_only_when_done_as_percent_strings(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        for state in states:
            assert ("metrics" in state) == (state["runStatus"] == "Done")
        final = states[-1]
        if final["runStatus"] == "Done" and final["trainMode"] != "PostPretrain":
            for key in ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"):
                value = final["metrics"][key]
                assert value.endswith("%")
                assert 0 < float(value[:-1]) < 100


def test_checkpoints_increase_and_perplexity_tracks_loss(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        final = states[-1]["checkpointList"]
        if states[-1]["runStatus"] == "Done":
            assert final
        steps = [point["step"] for point in final]
        assert steps == sorted(set(steps))
        for point in final:
            assert isinstance(point["step"], int)
            assert point["perplexity"] == pytest.approx(math.exp(point["trainingLoss"]), rel=0.03)
        counts = [len(state["checkpointList"]) for state in states]
        assert counts == sorted(counts)  # checkpoints only ever accumulate


def test_failed_tasks_explain_why_and_others_do_not(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        final = states[-1]
        if final["runStatus"] == "Failed":
            assert isinstance(final["errorCode"], int)
            assert isinstance(final["errorMessage"], str) and final["errorMessage"]
        else:
            assert "errorCode" not in final and "errorMessage" not in final


def test_finish_time_is_the_zero_sentinel_until_done(histories: dict[str, list[dict[str, Any]]]) -> None:
    for states in histories.values():
        for state in states:
            if state["runStatus"] not in TERMINAL:
                assert state["finishTime"] == ZERO_TIME
            if state["runStatus"] == "Done":
                assert state["finishTime"] != ZERO_TIME
                assert state["finishTime"] > state["createTime"]


def test_parameter_scale_orders_final_loss() -> None:
    clock = Clock()
    with Simulator(seed=5, jobs=24, clock=clock) as sim:
        clock.now += 10**6
        losses: dict[str, list[float]] = defaultdict(list)
        for task_id in sim.tasks:
            result = sim.task_result(task_id)
            assert result is not None
            if result["runStatus"] == "Done":
                losses[result["parameterScale"]].append(result["checkpointList"][-1]["trainingLoss"])
    assert mean(losses["FullFineTuning"]) < mean(losses["LoRA"]) < mean(losses["PromptTuning"])


def _world(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any] | None]]:
    clock = Clock()
    with Simulator(seed=seed, clock=clock) as sim:
        clock.now += 900
        return sim.jobs, [sim.task_result(task_id) for task_id in sim.tasks]


def test_same_seed_same_population() -> None:
    assert _world(21) == _world(21)
    assert _world(21)[0] != _world(22)[0]


def test_date_spelling_renames_time_fields(fast_retry: RetryPolicy) -> None:
    clock = Clock()
    with Simulator(seed=2, time_field="Date", clock=clock) as sim:
        clock.now += 10**6
        with QianfanClient(sim_credentials(sim), base_url=sim.url, rps=500, retry=fast_retry) as client:
            task_id = next(iter(sim.tasks))
            result = client.describe_task(task_id).result
            jobs = list(client.iter_jobs())
    assert "createDate" in result and "finishDate" in result
    assert "createTime" not in result and "finishTime" not in result
    assert all("createDate" in job and "createTime" not in job for job in jobs)


def test_the_injected_clock_drives_answers_over_http(fast_retry: RetryPolicy) -> None:
    clock = Clock()
    with Simulator(seed=9, clock=clock) as sim:
        task_id = next(iter(sim.tasks))
        task = sim.tasks[task_id]
        with QianfanClient(sim_credentials(sim), base_url=sim.url, rps=500, retry=fast_retry) as client:
            clock.now = task.created + task.queue / 2
            assert client.describe_task(task_id).result["runStatus"] == "Waiting"
            clock.now = task.finished_at() + 1
            assert client.describe_task(task_id).result["runStatus"] == task.outcome


def test_fault_script_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Faults(script=["429", "teapot"])


@pytest.mark.timeout(10)
def test_stop_without_start_returns() -> None:
    Simulator().stop()
