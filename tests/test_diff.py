"""The middle of a round without HTTP or files: ``collect.diff`` and ``events.derive`` are pure."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

from ftlog.client import Answer
from ftlog.collect import diff
from ftlog.errors import ApiError
from ftlog.events import derive
from ftlog.normalise import normalise
from ftlog.state import State, TaskState

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)


def answer(status: str = "Running", progress: str = "50%", points: tuple[tuple[int, float, float], ...] = ()) -> Answer:
    checkpoints = [{"step": step, "perplexity": p, "trainingLoss": loss} for step, p, loss in points]
    result = {"taskId": "task-a", "jobId": "job-a", "runStatus": status, "runProgress": progress,
              "checkpointList": checkpoints}  # fmt: skip
    return Answer(result, "req-1", 200)


def table_rows(changes: Any, name: str) -> list[dict[str, Any]]:
    return list(getattr(changes, name).table().to_pylist())


def test_diff_of_a_first_round_is_the_baseline() -> None:
    changes = diff(State(), [("task-a", answer(status="Done", progress="100%", points=((1, 3.0, 1.0),)), 0.5, T0)])
    assert changes.baseline and (changes.changed, changes.unchanged, changes.new_checkpoints) == (1, 0, 1)
    assert table_rows(changes, "events") == []  # a terminal status merely found is no event in the baseline
    [poll] = table_rows(changes, "polls")
    assert (poll["outcome"], poll["http_status"], poll["elapsed_ms"], poll["polled_at"]) == ("changed", 200, 500, T0)
    [state] = table_rows(changes, "states")
    assert (state["task_id"], state["progress_since"], state["stall_reported"]) == ("task-a", T0, False)


def test_diff_against_a_state_writes_only_what_changed() -> None:
    first = diff(State(), [("task-a", answer(points=((1, 3.0, 1.0),)), 0.1, T0)])
    state = State(first.states.table())
    before = copy.deepcopy(dict(state.items()))
    failure = ApiError("boom", status=500, code="InternalError")
    # The clock set back: the answer is stamped just after the last observation, never at or before it.
    changes = diff(state, [("task-a", answer(points=((1, 3.0, 1.0), (2, 2.0, 0.5))), 0.1, T0 - MINUTE),
                           ("task-b", failure, 0.2, T0)])  # fmt: skip
    assert dict(state.items()) == before
    assert (changes.baseline, changes.unchanged, changes.new_checkpoints) == (False, 0, 1)
    assert changes.failures == [failure] and changes.statuses == {"task-a": "Running", "task-b": None}
    [checkpoint] = table_rows(changes, "checkpoints")
    stamp = T0 + timedelta(microseconds=1)
    assert (checkpoint["step"], checkpoint["observed_at"], checkpoint["superseded"]) == (2, stamp, False)
    polls = {poll["task_id"]: poll for poll in table_rows(changes, "polls")}
    assert polls["task-a"]["polled_at"] == stamp
    failed = polls["task-b"]
    assert (failed["outcome"], failed["error_code"], failed["polled_at"]) == ("error", "InternalError", T0)
    assert [event["kind"] for event in table_rows(changes, "events")] == ["best_checkpoint"] * 2  # loss, perplexity

    # The same answer again: a poll, and nothing else.
    again = diff(State(changes.states.table()), [("task-a", answer(points=((1, 3.0, 1.0), (2, 2.0, 0.5))), 0.1, T0)])
    assert (again.changed, again.unchanged, len(again.polls)) == (0, 1, 1)
    assert not (again.snapshots or again.checkpoints or again.events or again.states)


def test_derive_returns_the_stall_fields_and_changes_nothing_it_is_given() -> None:
    previous = TaskState("h1", "Running", 50.0, T0 + 20 * MINUTE, {}, progress_since=T0, stall_reported=False)
    current = TaskState("h2", "Running", 50.0, T0 + 40 * MINUTE, {})
    snapshot = normalise("task-a", answer().result, T0 + 40 * MINUTE, "req-1").snapshot
    found = derive(previous, current, snapshot, stall_after=30 * MINUTE)
    assert [event["kind"] for event in found.events] == ["stall"]
    assert (found.progress_since, found.stall_reported) == (T0, True)
    assert (current.progress_since, current.stall_reported) == (None, False)  # frozen: a new state holds them
    # Reported once: the next describe of the same progress finds the stall already reported.
    held = TaskState("h2", "Running", 50.0, T0 + 40 * MINUTE, {}, found.progress_since, found.stall_reported)
    later = derive(held, TaskState("h3", "Running", 50.0, T0 + 50 * MINUTE, {}), snapshot, stall_after=30 * MINUTE)
    assert (later.events, later.progress_since, later.stall_reported) == ([], T0, True)
    # Progress moved: tracking starts again from this describe.
    moved = derive(held, TaskState("h4", "Running", 60.0, T0 + 50 * MINUTE, {}), snapshot, stall_after=30 * MINUTE)
    assert (moved.events, moved.progress_since, moved.stall_reported) == ([], T0 + 50 * MINUTE, False)
