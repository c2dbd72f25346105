"""Events derived from what the collector stores: terminal status changes, stalls, new best checkpoints, stops.

An event's id is a hash of what it means, never of when it was seen, so overlapping or restarted collectors that
see the same thing write the same id and the ``events`` view shows it once (its earliest sighting):

- ``status``: ``task_id|status|<to_status>``, when a task enters Done, Failed or Stopped (a task enters a
  terminal status once);
- ``stall``: ``task_id|stall|<progress>``, when a Running task's progress has not moved for longer than the
  stall threshold (30 minutes by default);
- ``best_checkpoint``: ``task_id|best_checkpoint|<metric>|<step>``, when a new checkpoint brings the task's
  lowest training_loss, or lowest perplexity, below its previous lowest;
- ``stop``: ``task_id|stop|<rule>``, when a stop rule of ``collect --stop-when`` trips on a running task
  (derived after the round's writes, from its stored curve: ftlog/stopping.py).

A task seen for the first time already in a terminal status counts as entering it, except in the first round
over an empty dataset: that round is the baseline, so pointing ftlog at an old account does not replay history.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from .config import EVENT_KINDS
from .normalise import lowest_finite
from .rows import EventKind, EventRow, SnapshotRow
from .schema import TERMINAL_STATUSES
from .state import TaskState, same_value

KINDS = EVENT_KINDS  # named in config, so that --help offers them without loading the store
DEFAULT_STALL = timedelta(minutes=30)
CONTEXT = ("job_id", "job_name", "model", "train_mode", "parameter_scale")
METRICS = {"training_loss": 1, "perplexity": 0}  # metric -> index in TaskState.checkpoints values
Lowest = tuple[int, float] | None  # (step, value) of a metric's lowest finite value, see best()


def event_id(task_id: str, kind: str, *meaning: object) -> str:
    text = "|".join([task_id, kind, *(str(part) for part in meaning)])
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - an identity, not a security measure


class Derived(NamedTuple):
    """What one describe brings about: its events, and the task's stall fields to keep in its new state."""

    events: list[EventRow]
    progress_since: datetime  # since when the task's status and progress have held
    stall_reported: bool  # whether a stall was reported since then (so it is reported once)


def derive(
    previous: TaskState | None,
    current: TaskState,
    snapshot: SnapshotRow,
    *,
    stall_after: timedelta | None = DEFAULT_STALL,
    baseline: bool = False,
    bests: Mapping[str, tuple[Lowest, Lowest]] | None = None,
) -> Derived:
    """The events of one successful describe, as ``events`` rows, and the stall fields of the state it leads to.
    ``current`` is that state (observed_at = the poll time); its own stall fields are not read: they are what
    this returns, worked out from ``previous``. ``bests``: each metric's :func:`best` of ``previous`` and of
    ``current`` checkpoints, when the caller has them (then neither's checkpoints are read). Pure: nothing passed
    in is changed."""
    task_id = snapshot["task_id"]
    at = current.observed_at
    assert at is not None
    context = {column: snapshot.get(column) for column in CONTEXT}
    found: list[EventRow] = []

    def add(kind: EventKind, meaning: tuple[object, ...], details: dict[str, Any]) -> None:
        text = json.dumps({**details, **context}, ensure_ascii=False, sort_keys=True)
        found.append({"event_id": event_id(task_id, kind, *meaning), "task_id": task_id, "kind": kind,
                      "observed_at": at, "details": text})  # fmt: skip

    status, before = current.run_status, previous.run_status if previous else None
    if status in TERMINAL_STATUSES and status != before and (previous is not None or not baseline):
        add("status", (status,), {"from": before, "to": status, "progress": current.run_progress,
                                  "error_code": snapshot.get("error_code"),
                                  "error_message": snapshot.get("error_message"),
                                  "finish_time": _iso(snapshot.get("finish_time"))})  # fmt: skip

    since, reported = held_since(previous, current)
    if not reported and _stalled(current, since, stall_after):
        reported = True
        add("stall", (current.run_progress,), {"progress": current.run_progress,
                                               "since": _iso(since),
                                               "minutes": round((at - since).total_seconds() / 60, 1),
                                               "threshold_minutes": _minutes(stall_after)})  # fmt: skip

    if previous is not None:
        for metric, index in METRICS.items():
            old, new = bests[metric] if bests else (best(previous.checkpoints, index), best(current.checkpoints, index))
            # A lower minimum can only come from a checkpoint that is new or whose value changed.
            if old is not None and new is not None and new[1] < old[1]:
                add("best_checkpoint", (metric, new[0]), {"metric": metric, "step": new[0], "value": new[1],
                                                          "previous_best": old[1],
                                                          "previous_step": old[0]})  # fmt: skip
    return Derived(found, since, reported)


def best(checkpoints: dict[int, tuple[float | None, float | None]], index: int) -> tuple[int, float] | None:
    """``(step, value)`` of the lowest finite value (the earliest step on ties), or None."""
    values = [(value, step) for step, pair in checkpoints.items() if (value := pair[index]) is not None]
    finite = [(value, step) for value, step in values if math.isfinite(value)]
    if not finite:
        return None
    value, step = min(finite)
    return step, value


def lowest(steps: Sequence[int], values: list[float | None]) -> Lowest:
    """:func:`best` of checkpoints as columns in step order (steps distinct), in bulk."""
    at = lowest_finite(values)  # the first, i.e. earliest, of equal lowest values
    value = None if at is None else values[at]
    return None if at is None or value is None else (steps[at], value)


def merge_lowest(known: Lowest, appended: Lowest) -> Lowest:
    """:func:`best` of known checkpoints and checkpoints appended at higher steps, from each one's: on a tie the
    known (earlier) step stays."""
    return appended if appended is not None and (known is None or appended[1] < known[1]) else known


def held_since(previous: TaskState | None, current: TaskState) -> tuple[datetime, bool]:
    """Since when ``current``'s status and progress have held, and whether a stall was reported since then:
    carried over from ``previous`` while neither moves, else from now on (``current.observed_at``)."""
    at = current.observed_at
    assert at is not None
    if (
        previous is not None
        and previous.run_status == current.run_status
        and same_value(previous.run_progress, current.run_progress)
    ):
        # State files from before stall events lack progress_since; the last change is a safe (later) bound.
        return previous.progress_since or previous.observed_at or at, previous.stall_reported
    return at, False


def _stalled(current: TaskState, since: datetime, stall_after: timedelta | None) -> bool:
    """Whether a Running task's progress has held for longer than ``stall_after``."""
    assert current.observed_at is not None
    return not (
        stall_after is None
        or current.run_status != "Running"
        or current.run_progress is None  # no progress reported: nothing to measure a stall by
        or current.observed_at - since <= stall_after
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _minutes(delta: timedelta | None) -> float | None:
    return delta.total_seconds() / 60 if delta is not None else None
