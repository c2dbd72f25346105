"""The rows a collection round hands from module to module, typed: one TypedDict per table row it writes.

They are plain dicts at run time (no cost in memory or speed over ``dict[str, Any]``), and their keys are the
columns of the declared schemas (``tests/test_architecture.py`` holds them to it), so a misspelt column is a type
error, not a NULL column in Parquet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypedDict


class Point(TypedDict):
    """One checkpoint as an answer reports it, normalised; also one entry of a state row's ``checkpoints``."""

    step: int
    perplexity: float | None
    training_loss: float | None


class CheckpointRow(Point):
    """A ``checkpoints`` row: a point first seen, or seen with another value, at ``observed_at``."""

    task_id: str
    observed_at: datetime
    superseded: bool  # collectors write False; compaction marks every repeat of a step within its file


class MetricValue(TypedDict):
    metric: str
    value: float | None


class SnapshotRow(TypedDict):
    """A ``snapshots`` row: one normalised DescribeFineTuningTask result (see ``schema.SNAPSHOTS``)."""

    task_id: str
    job_id: str | None
    job_name: str | None
    job_description: str | None
    model: str | None
    train_mode: str | None
    parameter_scale: str | None
    run_status: str | None
    run_progress: float | None
    vdl_link: str | None
    create_time: datetime | None
    finish_time: datetime | None
    error_code: str | None
    error_message: str | None
    bleu_4: float | None
    rouge_1: float | None
    rouge_2: float | None
    rouge_l: float | None
    metrics: list[MetricValue] | None
    checkpoint_count: int
    last_step: int | None
    final_loss: float | None
    best_loss: float | None
    final_perplexity: float | None
    best_perplexity: float | None
    observed_at: datetime
    request_id: str | None
    state_hash: str
    raw: str


PollOutcome = Literal["changed", "unchanged", "error"]


class PollRow(TypedDict):
    """A ``polls`` row: the outcome of one describe attempt."""

    poll_id: str
    task_id: str
    polled_at: datetime
    outcome: PollOutcome
    http_status: int | None
    error_code: str | None
    error_message: str | None
    request_id: str | None
    elapsed_ms: float


EventKind = Literal["status", "stall", "best_checkpoint", "stop"]


class EventRow(TypedDict):
    """An ``events`` row (ftlog/events.py): ``details`` is JSON text."""

    event_id: str
    task_id: str
    kind: EventKind
    observed_at: datetime
    details: str


class StateRow(TypedDict):
    """A row of the collector state (``state.STATE``): what the collector last knew of one task."""

    task_id: str
    state_hash: str | None
    run_status: str | None
    run_progress: float | None
    observed_at: datetime | None
    checkpoints: list[Point]  # in step order
    progress_since: datetime | None  # when the current status and progress were first seen (stall events)
    stall_reported: bool


Action = Literal["stop", "continue"]
Outcome = Literal["sent", "advised", "denied", "failed"]


class ActionRow(TypedDict):
    """An ``actions`` row (ftlog/act.py): a stop or continue sent or advised, and its outcome. ``request`` and
    ``details`` are JSON text."""

    action_id: str
    task_id: str
    job_id: str | None
    action: Action
    rule: str | None
    command: Literal["stop", "continue", "collect"]
    request: str
    acted_at: datetime
    outcome: Outcome
    request_id: str | None
    new_task_id: str | None
    http_status: int | None
    error: str | None
    details: str | None
