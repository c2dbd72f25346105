"""Deliver events to webhooks and local commands: retried until delivered, never twice to the same target.

After each collection round, :meth:`Notifier.deliver` sends every event of the last ``max_age`` (one day) that
the ``deliveries`` table does not show as delivered to a target, oldest first. Each success is recorded right away,
so a restarted collector skips it; each failure is recorded too, and the event waits for the next round. A round
spends at most ``deadline`` seconds and ``max_per_round`` events per target on delivery, so a slow or dead
receiver never holds up collection, and a backlog drains over the following rounds.

A receiver that accepts a request but answers after the timeout counts as a failure and gets the event again:
every payload carries ``event_id`` for receivers that must not act twice.

Targets come from ``--notify URL`` / ``--notify-command CMD``, or else from ``FTLOG_NOTIFY`` (URLs separated by
spaces) and ``FTLOG_NOTIFY_COMMAND`` (one command), in the environment or ``.env``. See docs/notifications.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import requests

from . import transport
from .config import NOTIFY_FORMATS, settings
from .errors import ConfigError, DataError
from .redact import redact
from .store import Dataset
from .views import connect, fetch

log = logging.getLogger(__name__)

FORMATS = NOTIFY_FORMATS  # named in config, so that --help offers them without loading the notifier
# Chat services whose robots take a fixed message shape; any other host gets the event as JSON.
CHAT_HOSTS = {
    "qyapi.weixin.qq.com": "markdown",
    "oapi.dingtalk.com": "dingtalk",
    "open.feishu.cn": "feishu",
    "open.larksuite.com": "feishu",
}
REFUSED = frozenset({400, 413, 422})  # this payload was refused: try the target's next event
MAX_REPLY = 64 * 1024  # a receiver's reply is read up to this size (a chat robot's verdict is a few bytes)
TRANSIENT = frozenset({408, 425, 429})  # with 5xx and network errors: retry after a pause
SECRET_VARIABLES = ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    http_status: int | None = None
    error: str | None = None
    retry: bool = False  # transient: worth another attempt after a pause
    next_event: bool = False  # the target works but refused this payload


class Target(Protocol):
    key: str  # how the deliveries table names the target: never a URL, which may carry a token

    def send(self, event: Event, timeout: float, session: requests.Session) -> Outcome: ...


class Event(TypedDict):
    """An event as the ``events`` view shows it (its first sighting), ``details`` parsed from its JSON text."""

    event_id: str
    task_id: str
    kind: str
    at: datetime
    details: dict[str, Any]


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]  # noqa: S324 - a name, not a secret


class Webhook:
    """POST the event to a URL, as JSON or as the message shape of a chat robot."""

    def __init__(self, url: str, fmt: str = "auto") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("a --notify URL must start with http:// or https:// and name a host")
        if fmt not in FORMATS:
            raise ConfigError(f"unknown notification format {fmt!r}: choose from {', '.join(FORMATS)}")
        self.url = url
        self.format = CHAT_HOSTS.get(parts.hostname, "json") if fmt == "auto" else fmt
        self.key = f"{parts.hostname}#{_short_hash(url)}"

    def __repr__(self) -> str:
        return f"Webhook({self.key}, {self.format})"

    def send(self, event: Event, timeout: float, session: requests.Session) -> Outcome:
        body = json.dumps(payload(event, self.format), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            # The whole exchange within ``timeout``: a receiver that drips its reply is cut off like a silent one.
            reply = transport.post(session, self.url, data=body, headers=headers, deadline=timeout,
                                   max_bytes=MAX_REPLY, allow_redirects=False, where="the receiver")  # fmt: skip
        except transport.TransferError as exc:  # its message never repeats the URL, which may hold a token
            return Outcome(False, exc.status, exc.message, retry=exc.retryable)
        status = reply.status
        if not 200 <= status < 300:
            retry = status >= 500 or status in TRANSIENT
            return Outcome(False, status, f"HTTP {status}", retry=retry, next_event=status in REFUSED)
        refused = _chat_error(reply.body) if self.format != "json" else None
        return Outcome(refused is None, status, refused)


def _chat_error(body: bytes) -> str | None:
    """Chat robots answer HTTP 200 with a non-zero errcode (WeCom, DingTalk) or code (Feishu) when they refuse."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(answer, dict):
        return None
    for code_key, message_key in (("errcode", "errmsg"), ("code", "msg"), ("StatusCode", "StatusMessage")):
        code = answer.get(code_key)
        if code not in (None, 0, "0"):
            return f"{code_key} {code}: {str(answer.get(message_key, ''))[:200]}"
    return None


class Command:
    """Run a local program (no shell) with the event as JSON on stdin; a non-zero exit is a failed delivery."""

    def __init__(self, command: str) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"cannot parse --notify-command: {exc}") from None
        if not self.argv:
            raise ConfigError("--notify-command is empty")
        self.key = f"command:{PurePath(self.argv[0]).name}#{_short_hash(command)}"

    def __repr__(self) -> str:
        return f"Command({self.key})"

    def send(self, event: Event, timeout: float, session: requests.Session) -> Outcome:
        data = json.dumps(payload(event, "json"), ensure_ascii=False).encode()
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}  # the API keys stay with ftlog
        try:
            done = subprocess.run(self.argv, input=data, capture_output=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            return Outcome(False, error="timed out", retry=True)
        except OSError as exc:
            return Outcome(False, error=f"cannot run {self.argv[0]}: {exc.strerror}")
        if done.returncode != 0:
            last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1][:200]
            last = redact(last)  # a program may print the URL or token it was given
            return Outcome(False, error=f"exit status {done.returncode}" + (f": {last}" if last else ""), retry=True)
        return Outcome(True)


def targets_from(
    urls: Sequence[str] = (),
    commands: Sequence[str] = (),
    fmt: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Target]:
    """The targets named on the command line or, when it names none, those of ``FTLOG_NOTIFY`` (URLs separated
    by spaces) and ``FTLOG_NOTIFY_COMMAND`` (one command) in ``env``; ``FTLOG_NOTIFY_FORMAT`` unless ``fmt``."""
    env = settings() if env is None else env
    if not (urls or commands):
        urls = env.get("FTLOG_NOTIFY", "").split()
        commands = [env["FTLOG_NOTIFY_COMMAND"]] if env.get("FTLOG_NOTIFY_COMMAND") else []
    fmt = fmt or env.get("FTLOG_NOTIFY_FORMAT") or "auto"
    targets: list[Target] = [Webhook(url, fmt) for url in dict.fromkeys(urls)]
    return targets + [Command(command) for command in dict.fromkeys(commands)]


# -- payloads ------------------------------------------------------------------------------------------------


def payload(event: Event, fmt: str) -> dict[str, Any]:
    """The request body for ``fmt``: the event itself ("json"), or a chat robot's message."""
    title, lines = describe(event)
    if fmt == "markdown":  # WeCom-style robots
        return {"msgtype": "markdown", "markdown": {"content": _markdown(title, lines)}}
    if fmt == "dingtalk":  # DingTalk breaks lines only at blank lines
        return {"msgtype": "markdown", "markdown": {"title": title, "text": _markdown(title, lines, "\n\n")}}
    if fmt == "feishu":
        return {"msg_type": "text", "content": {"text": "\n".join([title, *lines])}}
    at = event["at"]
    return {"event_id": event["event_id"], "task_id": event["task_id"], "kind": event["kind"],
            "at": at.isoformat().replace("+00:00", "Z") if isinstance(at, datetime) else at,
            "summary": title, "details": event["details"]}  # fmt: skip


def _markdown(title: str, lines: list[str], separator: str = "\n") -> str:
    return f"**{title}**\n\n" + separator.join(f"> {line}" for line in lines)


def describe(event: Event) -> tuple[str, list[str]]:
    """A one-line title and a few lines of context, for people reading a chat."""
    d, task = event["details"], event["task_id"]
    kind = event["kind"]
    if kind == "status":
        title = f"ftlog: {task} {d.get('to')}"
        lines = [f"status: {d.get('from') or 'new'} -> {d.get('to')}"]
        if d.get("error_code") or d.get("error_message"):
            lines.append(f"error: {d.get('error_code') or ''} {d.get('error_message') or ''}".rstrip())
    elif kind == "stall":
        title = f"ftlog: {task} stalled at {d.get('progress'):g}%"
        lines = [f"no progress for {d.get('minutes'):g} minutes (since {d.get('since')})"]
    elif kind == "stop":
        verb = "stopping" if d.get("action") == "stop" else "stop advised for"
        title = f"ftlog: {verb} {task} (rule {d.get('rule')})"
        lines = [str(d.get("reason"))]
    else:
        metric = d.get("metric")
        title = f"ftlog: {task} new best {metric} {d.get('value'):.4g} at step {d.get('step')}"
        lines = [f"previous best: {d.get('previous_best'):.4g} at step {d.get('previous_step')}"]
    job = d.get("job_name") or d.get("job_id")
    setup = " / ".join(str(d[k]) for k in ("model", "train_mode", "parameter_scale") if d.get(k))
    lines += [f"job: {job}"] if job else []
    lines += [f"model: {setup}"] if setup else []
    return title, lines


# -- delivery ------------------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # events whose delivery failed this round (they wait for the next)
    waiting: int = 0  # events still to deliver to some target after this round

    def __str__(self) -> str:
        return f"{self.delivered} delivered, {self.failed} failed, {self.waiting} waiting"


@dataclass
class Notifier:
    """Delivers pending events to ``targets`` within a per-round budget."""

    targets: Sequence[Target]
    timeout: float = 3.0  # seconds per attempt
    attempts: int = 3  # per event and round, for transient failures
    backoff: float = 0.5  # seconds before the second attempt, doubled before each further one
    deadline: float = 5.0  # seconds of delivery per round, over all targets
    max_per_round: int = 50  # events per target and round: the rest wait
    max_age: timedelta = timedelta(days=1)  # older events are not sent: a new target gets no stale alerts

    def deliver(
        self, dataset: Dataset, *, now: Callable[[], datetime] = utcnow, tasks: Iterable[str] | None = None
    ) -> DeliveryReport:
        """Send pending events (of ``tasks`` only, when given), oldest first, round-robin over the targets."""
        started = time.monotonic()
        report = DeliveryReport()
        cutoff = now() - self.max_age
        con = connect(dataset)
        try:
            events = recent_events(con, cutoff, tasks)
            done = delivered(con, cutoff)
        finally:
            con.close()
        pending = {t.key: [e for e in events if (t.key, e["event_id"]) not in done] for t in self.targets}
        queues = {t.key: deque(pending[t.key][: self.max_per_round]) for t in self.targets}
        failures: list[dict[str, Any]] = []
        active = [t for t in self.targets if queues[t.key]]
        with transport.session() as session:
            while active and self._left(started) > 0:
                for target in list(active):
                    if self._left(started) <= 0:
                        break
                    event = queues[target.key].popleft()
                    outcome, attempts = self._send(target, event, session, started)
                    row = {"event_id": event["event_id"], "task_id": event["task_id"], "target": target.key,
                           "attempted_at": now(), "attempts": attempts, "http_status": outcome.http_status,
                           "error": outcome.error}  # fmt: skip
                    if outcome.ok:
                        if not self._record(dataset, [{**row, "outcome": "delivered"}]):
                            active = []  # unrecorded deliveries would be sent again: stop until writes work
                            break
                        report.delivered += 1
                        done.add((target.key, event["event_id"]))
                    else:
                        log.warning("notification to %s failed: %s", target.key, outcome.error)
                        failures.append({**row, "outcome": "failed"})
                        report.failed += 1
                    if not queues[target.key] or not (outcome.ok or outcome.next_event):
                        active.remove(target)  # emptied, or failing: its other events wait for the next round
        self._record(dataset, failures)
        report.waiting = sum(1 for key, queued in pending.items() for e in queued if (key, e["event_id"]) not in done)
        return report

    def _left(self, started: float) -> float:
        return self.deadline - (time.monotonic() - started)

    def _send(self, target: Target, event: Event, session: requests.Session, started: float) -> tuple[Outcome, int]:
        outcome = Outcome(False, error="no time left in this round")
        for attempt in range(1, self.attempts + 1):
            outcome = target.send(event, max(0.05, min(self.timeout, self._left(started))), session)
            pause = self.backoff * 2 ** (attempt - 1)
            if outcome.ok or not outcome.retry or attempt == self.attempts or self._left(started) <= pause:
                return outcome, attempt
            time.sleep(pause)
        return outcome, self.attempts

    def _record(self, dataset: Dataset, rows: list[dict[str, Any]]) -> bool:
        try:
            dataset.append("deliveries", rows, rows[0]["attempted_at"] if rows else utcnow())
        except (OSError, pa.ArrowException, DataError) as exc:
            log.error("cannot record notification deliveries: %s", exc)
            return False
        return True


# -- reading events and deliveries ---------------------------------------------------------------------------


# Through the views (a connection from ftlog.connect), like every reader: they keep an event's first sighting,
# skip damaged files, and read again when a compaction removes a file meanwhile.


def recent_events(con: duckdb.DuckDBPyConnection, since: datetime, tasks: Iterable[str] | None = None) -> list[Event]:
    """Events of the ``events`` view at or after ``since`` (of ``tasks`` only, when given), oldest first."""
    where = '"at" >= ?'
    params: list[Any] = [since]
    if tasks is not None:
        where += " AND task_id IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(tasks))
    sql = f'SELECT event_id, task_id, kind, "at", details FROM events WHERE {where} ORDER BY "at", event_id'
    rows = fetch(con, sql, params).to_pylist()
    return [{"event_id": row["event_id"], "task_id": row["task_id"], "kind": row["kind"], "at": row["at"],
             "details": json.loads(row["details"])} for row in rows]  # fmt: skip


def delivered(con: duckdb.DuckDBPyConnection, since: datetime) -> set[tuple[str, str]]:
    """``(target, event_id)`` of every delivery recorded of an event at or after ``since``."""
    rows = fetch(
        con,
        """SELECT DISTINCT target, event_id FROM deliveries
           WHERE outcome = 'delivered' AND event_id IN (SELECT event_id FROM events WHERE "at" >= ?)""",
        [since],
    )
    return set(zip(rows.column("target").to_pylist(), rows.column("event_id").to_pylist(), strict=True))
