"""Collection: discover tasks, describe them concurrently under the rate cap, store only what changed.

A round is fetch -> diff -> save (:func:`run_round`): :func:`_describe_all` fetches the answers as they arrive,
:func:`diff` compares them with the collector state (no I/O), and :func:`save` writes at most one file per table
(per UTC date), then the collector state. Every describe attempt becomes a ``polls`` row, failures included.
Compaction and notifications follow the round, as the caller asks (:func:`after_round`); :func:`collect_round`
does both in one call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from .client import Answer, QianfanClient
from .config import DEFAULT_CONCURRENCY
from .errors import ApiError, AuthError, FtlogError, ListingTruncated, TransportError
from .events import DEFAULT_STALL, Lowest, derive, lowest, merge_lowest
from .normalise import normalise, utf8
from .notify import DeliveryReport, Notifier
from .refresh import refresh_summaries
from .rows import PollOutcome, PollRow
from .schema import CHECKPOINTS, EVENTS, POLLS, SNAPSHOTS, TERMINAL_STATUSES
from .state import DEFAULT_NAME, Points, State, StateRows, TaskState, load_state, same_value, save_state
from .store import Dataset, Rows, Runs

if TYPE_CHECKING:  # loaded by the caller that has stop rules: a round without them needs no views
    from .stopping import StopReport, StopRules

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Selection:
    """What to collect: named tasks, every task of named jobs, or every task of every job."""

    task_ids: tuple[str, ...] = ()
    job_ids: tuple[str, ...] = ()
    all_jobs: bool = False
    shard: tuple[int, int] | None = None  # (I, N): only the jobs whose stable hash falls in shard I of N

    def __post_init__(self) -> None:
        if not (self.task_ids or self.job_ids or self.all_jobs):
            raise FtlogError("nothing to collect: name task ids, use --job JOB_ID, or --all")
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index <= count:
                raise FtlogError(f"invalid shard {index}/{count}: use I/N with 1 <= I <= N")

    def takes_job(self, job_id: str) -> bool:
        """Whether this collector's shard owns ``job_id``. Shards count from 1 (``1/3``, ``2/3``, ``3/3``);
        ``0/N`` means the same shard as ``N/N``, so a 0-based numbering covers the same jobs too."""
        if self.shard is None:
            return True
        index, count = self.shard
        return shard_of(job_id, count) == index % count

    @property
    def state_name(self) -> str:
        """The collector state file of this selection: one per shard, so shards never overwrite each other's."""
        if self.shard is None:
            return DEFAULT_NAME
        index, count = self.shard
        return f"{DEFAULT_NAME}-shard-{index % count or count}-of-{count}"


def shard_of(job_id: str, count: int) -> int:
    """A hash that is the same on every machine and Python run (unlike ``hash()``), modulo ``count``."""
    return int(hashlib.sha1(job_id.encode()).hexdigest()[:12], 16) % count  # noqa: S324 - not for security


@dataclass
class RoundResult:
    tasks: int = 0
    changed: int = 0
    unchanged: int = 0
    errors: int = 0
    new_checkpoints: int = 0
    seconds: float = 0.0
    statuses: dict[str, str | None] = field(default_factory=dict)
    failures: list[ApiError] = field(default_factory=list)
    discovery_errors: list[ApiError] = field(default_factory=list)
    interrupted: bool = False
    events: int = 0
    delivery: DeliveryReport | None = None  # set when notifications are configured
    stops: StopReport | None = None  # set when stop rules are given
    task_ids: list[str] = field(default_factory=list, repr=False)  # the selection as discovered, in order

    def count(self, changes: RoundChanges) -> None:
        """Take the tallies of what :func:`diff` found."""
        self.changed, self.unchanged, self.errors = changes.changed, changes.unchanged, len(changes.failures)
        self.new_checkpoints, self.events = changes.new_checkpoints, len(changes.events)
        self.statuses, self.failures = changes.statuses, changes.failures

    @property
    def all_terminal(self) -> bool:
        return bool(self.statuses) and all(s in TERMINAL_STATUSES for s in self.statuses.values())

    def summary(self) -> str:
        text = (
            f"{self.tasks} tasks: {self.changed} changed, {self.unchanged} unchanged, {self.errors} errors, "
            f"{self.new_checkpoints} new checkpoints in {self.seconds:.1f}s"
        )
        text += f"; stop rules: {self.stops}" if self.stops else ""
        text += f"; notifications: {self.delivery}" if self.delivery else ""
        return text + (" (interrupted)" if self.interrupted else "")


def discover(
    client: QianfanClient, selection: Selection, result: RoundResult, *, concurrency: int = DEFAULT_CONCURRENCY
) -> list[str]:
    """Task ids of the selection, in a stable order, without duplicates. Jobs are listed concurrently (one
    listing per job, so ``--all`` over many jobs would otherwise take one round trip per job in a row). Listing
    errors of single jobs are recorded in ``result.discovery_errors``; credential and connection errors propagate."""
    task_ids = dict.fromkeys(selection.task_ids)
    job_ids = list(selection.job_ids)

    def listed(items: Iterator[dict[str, Any]], key: str) -> tuple[list[str], ApiError | None]:
        """The ids a listing yields; a listing cut at its budget keeps what it yielded, with the reason."""
        found: list[str] = []
        try:
            found.extend(item[key] for item in items)
        except ListingTruncated as exc:
            return found, exc
        return found, None

    if selection.all_jobs:
        jobs, truncated = listed(client.iter_jobs(), "jobId")
        job_ids += jobs
        if truncated:
            log.warning("%s", truncated.message)
            result.discovery_errors.append(truncated)

    def list_tasks(job_id: str) -> tuple[list[str], ApiError | None]:
        try:
            return listed(client.iter_tasks(job_id), "taskId")
        except (AuthError, TransportError):
            raise
        except ApiError as exc:
            return [], exc

    unique = [job_id for job_id in dict.fromkeys(job_ids) if selection.takes_job(job_id)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ftlog-list") as pool:
        for job_id, (tasks, error) in zip(unique, pool.map(list_tasks, unique), strict=True):
            task_ids.update(dict.fromkeys(tasks))
            if error is not None:
                log.warning("cannot list every task of %s: %s", job_id, error.message)
                result.discovery_errors.append(error)
    return list(task_ids)


Fetched = tuple[str, Answer | ApiError, float, datetime]  # what _describe_all yields for one task


@dataclass
class RoundChanges:
    """What one round's answers change (:func:`diff`), ready to :func:`save`. The rows wait as Arrow batches,
    not Python dicts: a first round may bring millions of checkpoints."""

    baseline: bool  # the first round over an empty dataset reports no terminal status it merely finds
    snapshots: Rows = field(default_factory=lambda: Rows(SNAPSHOTS, 1000))
    # A task's new checkpoints, as one run of rows that share its id, their time and superseded (False).
    checkpoints: Runs = field(default_factory=lambda: Runs(CHECKPOINTS, ("task_id", "observed_at", "superseded")))
    polls: Rows = field(default_factory=lambda: Rows(POLLS, 1000))
    events: Rows = field(default_factory=lambda: Rows(EVENTS))
    states: StateRows = field(default_factory=StateRows)  # the new state of each task that changed
    changed: int = 0
    unchanged: int = 0
    new_checkpoints: int = 0
    statuses: dict[str, str | None] = field(default_factory=dict)  # each described task's latest known status
    failures: list[ApiError] = field(default_factory=list)
    poll_ids: Iterator[str] = field(default_factory=lambda: _poll_ids(), repr=False)


def collect_round(
    client: QianfanClient,
    dataset: Dataset,
    selection: Selection,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    now: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    compact: bool = True,
    stall_after: timedelta | None = DEFAULT_STALL,
    notifier: Notifier | None = None,
    stop_rules: StopRules | None = None,
) -> RoundResult:
    """:func:`run_round`, then :func:`after_round`: a round as ``ftlog collect`` runs it, in one call. Raises only
    when nothing could be done (credentials rejected, API unreachable); per-task failures are counted and stored
    in ``polls``. With ``notifier``, pending events are delivered after the writes, within its budget; with
    ``stop_rules``, the round's running tasks are judged by them first (ftlog/stopping.py)."""
    result = run_round(client, dataset, selection, concurrency=concurrency, now=now, stop=stop, progress=progress,
                       stall_after=stall_after)  # fmt: skip
    return after_round(dataset, result, now=now, compact=compact, notifier=notifier, stop_rules=stop_rules)


def run_round(
    client: QianfanClient,
    dataset: Dataset,
    selection: Selection,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    now: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    stall_after: timedelta | None = DEFAULT_STALL,
) -> RoundResult:
    """Describe every selected task once and append what changed: fetch -> diff -> save. ``progress(done,
    total)`` is called after each describe. A round in which every describe failed is stored like any other;
    :func:`after_round` turns it into an error."""
    started = time.monotonic()
    result = RoundResult()
    result.task_ids = discover(client, selection, result, concurrency=concurrency)
    result.tasks = len(result.task_ids)
    state = load_state(dataset, selection.state_name)
    answers = _describe_all(client, result.task_ids, concurrency, stop, progress, now)
    changes = diff(state, answers, stall_after=stall_after)
    result.interrupted = bool(stop and stop.is_set())
    # The state merges into the file as it is then: the one read here, unless another collector replaced it.
    save(dataset, selection.state_name, changes, now(), loaded=state)
    result.count(changes)
    result.seconds = time.monotonic() - started
    return result


def diff(
    state: Mapping[str, TaskState], answers: Iterable[Fetched], *, stall_after: timedelta | None = DEFAULT_STALL
) -> RoundChanges:
    """What ``answers`` (as :func:`_describe_all` yields them) change against ``state``: the rows to append and
    the new state of each task that changed. No I/O; ``answers`` is consumed as it comes, one task at a time, and
    a task's checkpoints are a dict only while its answer is compared."""
    changes = RoundChanges(baseline=not state)
    for task_id, outcome, elapsed, answered_at in answers:
        if isinstance(state, State):  # a TaskState without checkpoints: they are read as columns below
            previous = state.head(task_id) if task_id in state else None
        else:
            previous = state.get(task_id)
        if isinstance(outcome, ApiError):
            changes.failures.append(outcome)
            changes.statuses[task_id] = previous.run_status if previous else None
            changes.polls.add(_poll(next(changes.poll_ids), task_id, answered_at, elapsed, "error", outcome))
        else:
            # The task's known checkpoints as columns in step order: read so from a State, sorted otherwise.
            before: Points = ([], [], [])
            if previous is not None:
                before = state.points(task_id) if isinstance(state, State) else _points(previous.checkpoints)
            polled_at = _not_before(answered_at, previous)
            _compare(changes, task_id, outcome, previous, before, polled_at, elapsed, stall_after)
    return changes


def _compare(
    changes: RoundChanges,
    task_id: str,
    answer: Answer,
    previous: TaskState | None,
    before: Points,
    polled_at: datetime,
    elapsed: float,
    stall_after: timedelta | None,
) -> None:
    """Add one successful describe to ``changes``; ``before`` holds the task's known checkpoints as columns in
    step order (``previous.checkpoints`` is not read)."""
    row = normalise(task_id, answer.result, polled_at, answer.request_id)
    snapshot = row.snapshot
    snapshot["task_id"] = task_id
    new_points, after, appended = _fresh_points(row.points, row.increasing, before)
    # superseded: False, as each step is written once per round (the checkpoints view relies on it)
    changes.checkpoints.add((task_id, polled_at, False), *new_points)
    changes.new_checkpoints += len(new_points[0])
    changed = previous is None or previous.state_hash != snapshot["state_hash"]
    if changed:
        changes.snapshots.add(snapshot)
        changes.changed += 1
    else:
        changes.unchanged += 1
    changes.statuses[task_id] = snapshot["run_status"]
    # The new checkpoints are ``after``, as columns: no dict of them is built.
    observed = TaskState(snapshot["state_hash"], snapshot["run_status"], snapshot["run_progress"], polled_at, {})
    bests = _bests(before, new_points, after, appended)
    derived = derive(previous, observed, snapshot, stall_after=stall_after, baseline=changes.baseline, bests=bests)
    for event in derived.events:
        changes.events.add(event)
    if changed or new_points[0] or derived.events:  # a reported stall is remembered, so it is reported once
        current = replace(observed, progress_since=derived.progress_since, stall_reported=derived.stall_reported)
        changes.states.add(task_id, current, after)
    outcome: PollOutcome = "changed" if changed else "unchanged"
    changes.polls.add(_poll(next(changes.poll_ids), task_id, polled_at, elapsed, outcome, answer))


def _bests(before: Points, new: Points, after: Points, appended: bool) -> dict[str, tuple[Lowest, Lowest]]:
    """Each metric's lowest point before and after a describe (events.best), from its checkpoints as columns:
    ``before``, ``new`` and ``after``. Appended checkpoints can only lower it, so then only they are searched."""
    columns = {"perplexity": (before[1], new[1], after[1]), "training_loss": (before[2], new[2], after[2])}
    return {
        metric: (
            old := lowest(before[0], known),
            merge_lowest(old, lowest(new[0], fresh)) if appended else lowest(after[0], every),
        )
        for metric, (known, fresh, every) in columns.items()
    }


def _poll_ids(batch: int = 1024) -> Iterator[str]:
    """Random (version 4) UUIDs as hex, as ``uuid.uuid4().hex``, but with the system's random bytes fetched for
    ``batch`` ids at once: each fetch releases the interpreter lock, which the describing threads then hold for
    a while before this thread gets it back."""
    while True:
        random = os.urandom(16 * batch)
        for start in range(0, len(random), 16):
            yield uuid.UUID(bytes=random[start : start + 16], version=4).hex


def _poll(
    poll_id: str, task_id: str, polled_at: datetime, elapsed: float, outcome: PollOutcome, answer: Answer | ApiError
) -> PollRow:
    """The ``polls`` row of one describe (its id ``poll_id``); ``answer`` is an ApiError for an 'error' poll."""
    error = answer if isinstance(answer, ApiError) else None
    return {
        "poll_id": poll_id,
        "task_id": task_id,
        "polled_at": polled_at,
        "outcome": outcome,
        "http_status": answer.status,
        "error_code": error.code and utf8(error.code) if error else None,
        "error_message": utf8(error.message) if error else None,
        "request_id": answer.request_id,
        "elapsed_ms": elapsed * 1000,
    }


def save(
    dataset: Dataset, state_name: str, changes: RoundChanges, now: datetime, *, loaded: State | None = None
) -> None:
    """Append a round's rows, stamped ``now``, then merge its task states into the state file ``state_name``
    (``loaded``: the state the round read from it, see :func:`state.save_state`).

    Data before polls before state: a crash in between leaves rows the views de-duplicate, never a gap. Every poll
    that reports a change finds its snapshot, and the state never remembers a snapshot the data lacks (which would
    stop the collector from ever writing it): docs/reliability.md, "Crashes"."""
    dataset.append_table("snapshots", changes.snapshots.table(), now)
    dataset.append_table("checkpoints", changes.checkpoints.table(), now)
    dataset.append_table("events", changes.events.table(), now)
    dataset.append_table("polls", changes.polls.table(), now)
    dataset.create_tables(now)  # the tables that got no rows, for readers of the folders
    if changes.states:  # a state file found at the start is only updated (state.save_state)
        save_state(dataset, state_name, changes.states.table(), create=changes.baseline, loaded=loaded)


def after_round(
    dataset: Dataset,
    result: RoundResult,
    *,
    now: Callable[[], datetime] = utcnow,
    compact: bool = True,
    notifier: Notifier | None = None,
    stop_rules: StopRules | None = None,
) -> RoundResult:
    """What follows a round's writes: with ``stop_rules``, judge the round's running tasks and record (and with a
    client, act on) what trips (ftlog/stopping.py); with ``compact``, merge closed partitions
    (``Dataset.compact``); with ``notifier``, deliver pending events of the round's tasks (a collector notifies of
    its own tasks). Last, a round in which every describe failed is an error (exit 1), raised only now so that it
    compacts and delivers what earlier rounds found like any other. Returns ``result``, its time including these
    steps."""
    started = time.monotonic()
    # The round's rows and state are freed by now, but Arrow's memory pool keeps their pages for reuse: hand them
    # back, so that what follows (compaction, and the summaries' refresh in DuckDB's own memory) does not come on
    # top of them.
    pa.default_memory_pool().release_unused()
    if stop_rules is not None:
        try:
            result.stops = stop_rules.apply(dataset, result.statuses, now)
        # Unreadable data, a write that failed: the round itself is stored, and the watch goes on.
        except (FtlogError, duckdb.Error, pa.ArrowException, OSError) as exc:
            log.warning("stop rules not applied this round: %s", exc)
    if compact:
        moment = now()
        dataset.compact(moment)
        refresh_summaries(dataset, moment)  # the past as of the days just closed, for readers of the present
    if notifier is not None:
        result.delivery = notifier.deliver(dataset, now=now, tasks=result.task_ids)
    result.seconds += time.monotonic() - started
    _raise_if_nothing_worked(result)
    return result


def _not_before(answered_at: datetime, previous: TaskState | None) -> datetime:
    """The time to stamp an answer with: when it arrived, but never at or before the last observation of the task
    the collector knows. With the clock set back between rounds, an earlier stamp would order this newer answer
    before the older one in every view (the latest state is the one observed last), and the state merge (newest
    observation wins) would drop it, so its checkpoints would be written again every round."""
    last = previous.observed_at if previous is not None else None
    return answered_at if last is None else max(answered_at, last + timedelta(microseconds=1))


def _points(checkpoints: Mapping[int, tuple[float | None, float | None]]) -> Points:
    """``checkpoints`` (step -> values) as columns in step order."""
    ordered = sorted(checkpoints.items())
    return [step for step, _ in ordered], [p for _, (p, _) in ordered], [loss for _, (_, loss) in ordered]


def _fresh_points(points: Points, increasing: bool, before: Points) -> tuple[Points, Points, bool]:
    """The checkpoints of an answer (``points``, their steps strictly ``increasing`` or not) never stored or whose
    value changed (:func:`_new_checkpoints`), and all of the task's checkpoints once they are stored, both as
    columns in step order, and whether the answer only appended checkpoints. ``before``: the known checkpoints,
    as columns in step order.

    Most answers repeat the known checkpoints, in order and unchanged, and add a few at higher steps: that is
    checked on whole lists at once, and only another answer is compared point by point."""
    steps, perplexity, loss = points
    count = len(before[0])
    # Equal lists hold equal values (NaN counts as equal only as the same object): then only the tail is new.
    # Known steps in strictly increasing order, as an increasing answer repeats them, hold no step twice.
    if increasing and steps[:count] == before[0] and perplexity[:count] == before[1] and loss[:count] == before[2]:
        new: Points = steps[count:], perplexity[count:], loss[count:]
        return new, (before[0] + new[0], before[1] + new[1], before[2] + new[2]), True
    known = dict(zip(before[0], zip(before[1], before[2], strict=True), strict=True))
    fresh = _new_checkpoints(points, known)
    new = [step for step, _, _ in fresh], [p for _, p, _ in fresh], [loss for _, _, loss in fresh]
    return new, _points({**known, **{step: (p, loss) for step, p, loss in fresh}}), False


def _new_checkpoints(
    points: Points, known: Mapping[int, tuple[float | None, float | None]]
) -> list[tuple[int, float | None, float | None]]:
    """Checkpoints never stored, or whose value changed, in step order; a step repeated within one answer counts
    once (its last entry)."""
    latest = dict(zip(points[0], zip(points[1], points[2], strict=True), strict=True))
    fresh = []
    for step, (perplexity, loss) in sorted(latest.items()):
        old = known.get(step)
        if old is None or not (same_value(old[0], perplexity) and same_value(old[1], loss)):
            fresh.append((step, perplexity, loss))
    return fresh


def _describe_all(
    client: QianfanClient,
    task_ids: list[str],
    concurrency: int,
    stop: threading.Event | None,
    progress: Callable[[int, int], None] | None,
    now: Callable[[], datetime] = utcnow,
) -> Iterator[Fetched]:
    """Yield ``(task_id, Answer | ApiError, seconds, answered_at)`` as describes finish, with at most
    ``concurrency`` in flight (so memory stays bounded however many tasks there are). Stops submitting once
    ``stop`` is set. ``answered_at`` is taken as the answer arrives, not when it is consumed: a late stamp could
    order two collectors' observations of one task the wrong way round."""

    def describe(task_id: str) -> Fetched:
        began = time.monotonic()
        try:
            answer: Answer | ApiError = client.describe_task(task_id)
        except ApiError as exc:
            answer = exc
        return task_id, answer, time.monotonic() - began, now()

    pending: set[Future[Fetched]] = set()
    queue: Iterable[str] = iter(task_ids)
    finished = 0

    def report() -> None:
        nonlocal finished
        finished += 1
        if progress:
            progress(finished, len(task_ids))

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ftlog-describe") as pool:
        for task_id in queue:
            if stop and stop.is_set():
                break
            pending.add(pool.submit(describe, task_id))
            if len(pending) >= concurrency * 2:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    report()
        for future in pending:
            yield future.result()
            report()


def _raise_if_nothing_worked(result: RoundResult) -> None:
    """A round in which every describe failed is an error (exit 1), after its polls were stored."""
    if result.tasks and result.errors == result.tasks:
        first = result.failures[0]
        auth = next((f for f in result.failures if isinstance(f, AuthError)), None)
        raise (auth or first).__class__(
            f"no task could be described ({result.errors} failed); first error: {(auth or first).message}",
            status=(auth or first).status,
            code=(auth or first).code,
        )


def watch(
    round_once: Callable[[], RoundResult],
    *,
    interval: float,
    until_done: bool,
    stop: threading.Event,
    on_round: Callable[[RoundResult], None] = lambda r: None,
    on_error: Callable[[FtlogError], None] = lambda e: None,
) -> RoundResult | None:
    """Run rounds every ``interval`` seconds until ``stop`` is set or, with ``until_done``, every selected task is
    terminal. A round that fails as a whole is reported and retried at the next interval, unless the credentials
    were rejected."""
    last: RoundResult | None = None
    while not stop.is_set():
        began = time.monotonic()
        try:
            last = round_once()
            on_round(last)
            if until_done and last.all_terminal:
                break
        except AuthError:
            raise  # rejected credentials stay rejected: end the watch with the error, reported once
        except FtlogError as exc:
            on_error(exc)
        stop.wait(max(0.0, interval - (time.monotonic() - began)))
    return last
