"""Events derived from what the collector stores: terminal status changes, stalls and new best checkpoints.

An event's id is a hash of what it means, never of when it was seen, so overlapping or restarted collectors that
see the same thing write the same id and the ``events`` view shows it once (its earliest sighting):

- ``status``: ``task_id|status|<to_status>``, when a task enters Done, Failed or Stopped (a task enters a
  terminal status once);
- ``stall``: ``task_id|stall|<progress>``, when a Running task's progress has not moved for longer than the
  stall threshold (30 minutes by default);
- ``best_checkpoint``: ``task_id|best_checkpoint|<metric>|<step>``, when a new checkpoint brings the task's
  lowest training_loss, or lowest perplexity, below its previous lowest.

A task seen for the first time already in a terminal status counts as entering it, except in the first round
over an empty dataset: that round is the baseline, so pointing ftlog at an old account does not replay history.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta
from typing import Any

from .schema import TERMINAL_STATUSES
from .store import TaskState, same_value

KINDS = ("status", "stall", "best_checkpoint")
DEFAULT_STALL = timedelta(minutes=30)
CONTEXT = ("job_id", "job_name", "model", "train_mode", "parameter_scale")
METRICS = {"training_loss": 1, "perplexity": 0}  # metric -> index in TaskState.checkpoints values


def event_id(task_id: str, kind: str, *meaning: object) -> str:
    text = "|".join([task_id, kind, *(str(part) for part in meaning)])
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - an identity, not a security measure


def derive(
    previous: TaskState | None,
    current: TaskState,
    snapshot: dict[str, Any],
    *,
    stall_after: timedelta | None = DEFAULT_STALL,
    baseline: bool = False,
) -> list[dict[str, Any]]:
    """The events of one successful describe, as ``events`` rows. ``current`` is the state this describe leads
    to (observed_at = the poll time); its stall fields are filled in here, from ``previous``."""
    task_id: str = snapshot["task_id"]
    at = current.observed_at
    assert at is not None
    context = {column: snapshot.get(column) for column in CONTEXT}
    found: list[dict[str, Any]] = []

    def add(kind: str, meaning: tuple[object, ...], details: dict[str, Any]) -> None:
        text = json.dumps({**details, **context}, ensure_ascii=False, sort_keys=True)
        found.append({"event_id": event_id(task_id, kind, *meaning), "task_id": task_id, "kind": kind,
                      "observed_at": at, "details": text})  # fmt: skip

    status, before = current.run_status, previous.run_status if previous else None
    if status in TERMINAL_STATUSES and status != before and (previous is not None or not baseline):
        add("status", (status,), {"from": before, "to": status, "progress": current.run_progress,
                                  "error_code": snapshot.get("error_code"),
                                  "error_message": snapshot.get("error_message"),
                                  "finish_time": _iso(snapshot.get("finish_time"))})  # fmt: skip

    if _stall(previous, current, stall_after):
        assert current.progress_since is not None
        add("stall", (current.run_progress,), {"progress": current.run_progress,
                                               "since": _iso(current.progress_since),
                                               "minutes": round((at - current.progress_since).total_seconds() / 60, 1),
                                               "threshold_minutes": _minutes(stall_after)})  # fmt: skip

    if previous is not None:
        for metric, index in METRICS.items():
            old, new = best(previous.checkpoints, index), best(current.checkpoints, index)
            # A lower minimum can only come from a checkpoint that is new or whose value changed.
            if old is not None and new is not None and new[1] < old[1]:
                add("best_checkpoint", (metric, new[0]), {"metric": metric, "step": new[0], "value": new[1],
                                                          "previous_best": old[1],
                                                          "previous_step": old[0]})  # fmt: skip
    return found


def best(checkpoints: dict[int, tuple[float | None, float | None]], index: int) -> tuple[int, float] | None:
    """``(step, value)`` of the lowest finite value (the earliest step on ties), or None."""
    values = [(value, step) for step, pair in checkpoints.items() if (value := pair[index]) is not None]
    finite = [(value, step) for value, step in values if math.isfinite(value)]
    if not finite:
        return None
    value, step = min(finite)
    return step, value


def _stall(previous: TaskState | None, current: TaskState, stall_after: timedelta | None) -> bool:
    """Carry the time the current progress was first seen; True once per progress value that stalls."""
    at = current.observed_at
    assert at is not None
    unmoved = (
        previous is not None
        and previous.run_status == current.run_status
        and same_value(previous.run_progress, current.run_progress)
    )
    if previous is not None and unmoved:
        # State files from before stall events lack progress_since; the last change is a safe (later) bound.
        current.progress_since = previous.progress_since or previous.observed_at or at
        current.stall_reported = previous.stall_reported
    else:
        current.progress_since, current.stall_reported = at, False
    if (
        stall_after is None
        or current.stall_reported
        or current.run_status != "Running"
        or current.run_progress is None  # no progress reported: nothing to measure a stall by
        or at - current.progress_since <= stall_after
    ):
        return False
    current.stall_reported = True
    return True


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _minutes(delta: timedelta | None) -> float | None:
    return delta.total_seconds() / 60 if delta is not None else None
