"""Stop rules in a collection round (``ftlog collect --stop-when RULE [--stop-tasks]``).

After a round's writes, the curves of the tasks it found Waiting or Running are read back from the dataset (so a
value revised by the API counts as revised) and judged by each rule (ftlog/rules.py). A rule that trips on a task
becomes, once per task and rule however many collectors see it:

- a ``stop`` event (id ``task_id|stop|<rule>``), notified like the others, with the rule, its reason and its
  evidence (steps and values);
- an ``actions`` row: 'advised' when the collector only advises; with ``--stop-tasks``, the StopFineTuningTask it
  sent and its outcome ('sent', 'denied' for a key that may only read, 'failed').

A task is stopped at most once among collectors: the stop goes out only from the collector that claims it
(``Dataset.claim``), after describing the task again to see it still running. A failed stop gives the claim back,
to be tried again next round; a denied one keeps it (a read-only key stays read-only: ``ftlog stop`` with another
key is the way on). Nothing here stops a round: what cannot be judged or sent is logged and the round goes on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import act
from .client import QianfanClient
from .errors import ApiError
from .events import CONTEXT, event_id
from .rows import ActionRow, EventRow
from .rules import Rule, Trip, evaluate
from .schema import TERMINAL_STATUSES
from .store import Dataset
from .views import connect, fetch

log = logging.getLogger(__name__)


@dataclass
class StopReport:
    tripped: int = 0  # rules newly tripped this round
    stopped: int = 0
    refused: int = 0  # stops denied or failed

    def __str__(self) -> str:
        return f"{self.tripped} tripped, {self.stopped} stopped" + (f", {self.refused} refused" if self.refused else "")


@dataclass(frozen=True)
class StopRules:
    """The rules of ``--stop-when``, and the client to stop tasks with (``--stop-tasks``), or None to advise only."""

    rules: Sequence[Rule]
    client: QianfanClient | None = None

    def apply(self, dataset: Dataset, statuses: dict[str, str | None], now: Callable[[], datetime]) -> StopReport:
        """Judge the tasks of ``statuses`` (each described task's latest status) that are not terminal; record and
        act on what trips."""
        report = StopReport()
        running = sorted(task for task, status in statuses.items() if status not in TERMINAL_STATUSES)
        if not running or not self.rules:
            return report
        with connect(dataset) as con:
            curves = _curves(con, running)
            known = _recorded(con, running)
        events: list[EventRow] = []
        for task_id, (context, steps, losses, perplexities) in curves.items():
            for rule in self.rules:
                trip = evaluate(rule, steps, losses, perplexities)
                if trip is None:
                    continue
                event = event_id(task_id, "stop", rule.text)
                acting = self.client is not None
                if event not in known.events:
                    report.tripped += 1
                    log.warning("%s: stop rule %s tripped: %s%s", task_id, rule.text, trip.reason,
                                "" if acting else "; advice only (--stop-tasks would stop it)")  # fmt: skip
                    events.append(_event(task_id, trip, context, acting, now()))
                action = act.action_id(task_id, "stop", rule.text)
                if not acting and action not in known.advised:
                    act.record(dataset, [act.advise(task_id, context.get("job_id"), rule=rule.text,
                                                    details=_details(trip), now=now())])  # fmt: skip
                elif acting and action not in known.settled:
                    self._stop(dataset, task_id, context, trip, report, now)
                break  # one rule is reason enough: the task is stopped (or advised) once
        # Events after the actions: a stop's event is notified with its outcome already on record.
        if events:
            dataset.append("events", [dict(row) for row in events], events[0]["observed_at"])
        return report

    def _stop(
        self, dataset: Dataset, task_id: str, context: dict[str, Any], trip: Trip, report: StopReport,
        now: Callable[[], datetime],
    ) -> None:  # fmt: skip
        assert self.client is not None
        claim = f"stop/{hashlib.sha1(task_id.encode()).hexdigest()}"  # noqa: S324 - a file name, not security
        if not dataset.claim(claim, now()):
            log.info("%s: another collector stops it", task_id)
            return
        try:
            status = self.client.describe_task(task_id).result.get("runStatus")
        except ApiError as exc:
            log.warning("%s: not stopped this round (describing it again failed: %s)", task_id, exc)
            dataset.release(claim)
            return
        if status in TERMINAL_STATUSES:
            log.info("%s: already %s, nothing to stop", task_id, status)
            return
        row: ActionRow = act.stop(self.client, task_id, context.get("job_id"), rule=trip.rule.text,
                                  command="collect", details=_details(trip), now=now())  # fmt: skip
        act.record(dataset, [row])
        if row["outcome"] == "sent":
            report.stopped += 1
            log.warning("%s: stopped by rule %s", task_id, trip.rule.text)
            return
        report.refused += 1
        if row["outcome"] == "failed":
            dataset.release(claim)  # tried again next round
        log.warning("%s: %s", task_id, act.problem(row))


@dataclass(frozen=True)
class _Recorded:
    events: set[str]  # stop events already stored
    advised: set[str]  # action ids with an 'advised' row
    settled: set[str]  # action ids with a stop sent or denied: never sent again


def _recorded(con: Any, tasks: list[str]) -> _Recorded:
    among = "task_id IN (SELECT unnest(?::VARCHAR[]))"
    events = fetch(con, f"SELECT event_id FROM events WHERE kind = 'stop' AND {among}", [tasks])
    actions = fetch(con, f"SELECT action_id, outcome FROM actions WHERE action = 'stop' AND {among}", [tasks])
    rows = actions.to_pylist()
    return _Recorded(
        events=set(events.column("event_id").to_pylist()),
        advised={row["action_id"] for row in rows if row["outcome"] == "advised"},
        settled={row["action_id"] for row in rows if row["outcome"] in ("sent", "denied")},
    )


Curve = tuple[dict[str, Any], list[int], list[float | None], list[float | None]]


def _curves(con: Any, tasks: list[str]) -> dict[str, Curve]:
    """Per task its attributes and its checkpoints' steps, training losses and perplexities, in step order."""
    columns = ", ".join(CONTEXT)
    table = fetch(
        con,
        f"""SELECT c.task_id, list(c.step ORDER BY c.step) AS steps,
                   list(c.training_loss ORDER BY c.step) AS losses, list(c.perplexity ORDER BY c.step) AS perplexities,
                   any_value(struct_pack({columns})) AS context
            FROM checkpoints c JOIN tasks USING (task_id)
            WHERE c.task_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY c.task_id""",
        [tasks],
    )
    return {row["task_id"]: (row["context"], row["steps"], row["losses"], row["perplexities"])
            for row in table.to_pylist()}  # fmt: skip


def _details(trip: Trip) -> dict[str, Any]:
    return {"rule": trip.rule.text, "reason": trip.reason, "evidence": trip.evidence}


def _event(task_id: str, trip: Trip, context: dict[str, Any], acting: bool, at: datetime) -> EventRow:
    details = {**_details(trip), "action": "stop" if acting else "advice", **context}
    return {"event_id": event_id(task_id, "stop", trip.rule.text), "task_id": task_id, "kind": "stop",
            "observed_at": at, "details": act.details_json(details)}  # fmt: skip
