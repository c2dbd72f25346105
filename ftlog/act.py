"""Acting on runs: stop a task, continue one from a checkpoint, and keep every action on the record.

Acting on a paid cloud account is opt-in: the functions that send (:func:`stop`, :func:`continue_task`) run only
when a user said so (``ftlog stop --yes``, ``ftlog continue --yes``, ``ftlog collect --stop-tasks``); everything
else here only reads. Each action sent, and each one only advised, becomes an ``actions`` row (:func:`record`)
holding the request body with every secret masked. A create is sent once and never retried: an answer lost on the
way back does not mean that no run was started.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import duckdb

from .client import QianfanClient
from .errors import ApiError, ConfigError, FtlogError
from .redact import redact
from .rows import ActionRow, Outcome
from .store import Dataset
from .views import fetch

Source = str | Path | Dataset | duckdb.DuckDBPyConnection
Command = Literal["stop", "continue", "collect"]
# Share of the dataset the platform holds out for evaluation when a body file sets none: the value of the API's and
# the SDK's own examples (the API requires one).
DEFAULT_SPLIT_RATIO = 20
BEST_BY = {"loss": "training_loss", "perplexity": "perplexity"}  # ftlog continue --best
DENIED_HINT = "this access key may only read; use a key with a FullControl policy"
MASK = "***"
# Body fields that would carry credentials (the SDK puts ak/sk kwargs into bodies): requests are signed with the
# keys of the environment, so a body file holding any of these is refused rather than sent or recorded.
CREDENTIAL_FIELDS = frozenset({"ak", "sk", "accesskey", "secretkey", "access_key", "secret_key", "token"})


class ActError(FtlogError):
    """An action that cannot be worked out from the dataset and the options: nothing was sent."""


class Known(NamedTuple):
    """What the dataset knows of a task (its latest snapshot)."""

    task_id: str
    job_id: str | None
    run_status: str | None
    parameter_scale: str | None


# -- identities and rows -------------------------------------------------------------------------------------
def action_id(task_id: str, action: str = "stop", rule: str | None = None) -> str:
    """A rule's action on a task has one id, derived (sha1 of task, action and rule text), so that every collector
    tripping the rule records the same action; a command's is fresh, each invocation an action of its own."""
    if rule is None:
        return uuid.uuid4().hex
    return hashlib.sha1((task_id + action + rule).encode()).hexdigest()  # noqa: S324 - an identity, not security


def _row(
    task_id: str,
    job_id: str | None,
    action: Literal["stop", "continue"],
    *,
    request: Mapping[str, Any],
    outcome: Outcome,
    rule: str | None,
    command: Command,
    details: Mapping[str, Any] | None,
    secrets: Sequence[str] = (),
    now: datetime | None = None,
) -> ActionRow:
    return {
        "action_id": action_id(task_id, action, rule),
        "task_id": task_id,
        "job_id": job_id,
        "action": action,
        "rule": rule,
        "command": command,
        "request": masked_json(request, secrets),
        "acted_at": now or datetime.now(timezone.utc),
        "outcome": outcome,
        "request_id": None,
        "new_task_id": None,
        "http_status": None,
        "error": None,
        "details": details_json(details) if details is not None else None,
    }


def details_json(details: Mapping[str, Any]) -> str:
    """``details`` as JSON text that any JSON reader takes: a NaN or infinite value (the evidence of a ``nan``
    rule) as the text "NaN", "Infinity" or "-Infinity", which plain JSON has no number for."""

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(value, Mapping):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return json.dumps(plain(details), ensure_ascii=False, sort_keys=True, allow_nan=False, default=str)


def _answered(row: ActionRow, status: int, request_id: str | None) -> ActionRow:
    return {**row, "outcome": "sent", "http_status": status, "request_id": request_id}


def _refused(row: ActionRow, exc: ApiError) -> ActionRow:
    return {**row, "outcome": outcome_of(exc), "http_status": exc.status, "request_id": exc.request_id,
            "error": exc.message}  # fmt: skip


def outcome_of(exc: ApiError) -> Outcome:
    """'denied' for a key without the permission (AccessDenied, or any 403), 'failed' for every other error."""
    return "denied" if exc.code == "AccessDenied" or exc.status == 403 else "failed"


def masked_json(body: Mapping[str, Any], secrets: Sequence[str] = ()) -> str:
    """``body`` as JSON text for the record: every string holding one of ``secrets`` (the client's keys) masked,
    and credentials in the URLs it quotes too. What is stored never holds a key, whatever a body file held."""

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            return MASK if any(secret and secret in value for secret in secrets) else redact(value)
        if isinstance(value, Mapping):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [mask(item) for item in value]
        return value

    return json.dumps(mask(body), ensure_ascii=False, sort_keys=True)


def _secrets(client: QianfanClient) -> tuple[str, str]:
    return client.credentials.access_key, client.credentials.secret_key


def record(dataset: Dataset, rows: Iterable[ActionRow]) -> list[str]:
    """Append ``rows`` to the ``actions`` table (a file per UTC day of their times); returns the paths written."""
    listed = list(rows)
    return dataset.append("actions", [dict(row) for row in listed], listed[0]["acted_at"]) if listed else []


# -- stop ------------------------------------------------------------------------------------------------------
def stop(
    client: QianfanClient,
    task_id: str,
    job_id: str | None = None,
    *,
    rule: str | None = None,
    command: Command = "stop",
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> ActionRow:
    """Send StopFineTuningTask for ``task_id`` and return its ``actions`` row, not yet recorded (see
    :func:`record`): outcome 'sent', or 'denied'/'failed' with the API's status, code and message. Never raises
    an API error: a failed stop is an outcome to record, and the caller goes on with the other tasks."""
    row = _row(task_id, job_id, "stop", request={"taskId": task_id}, outcome="sent", rule=rule, command=command,
               details=details, secrets=_secrets(client), now=now)  # fmt: skip
    try:
        answer = client.stop_task(task_id)
    except ApiError as exc:
        return _refused(row, exc)
    return _answered(row, answer.status, answer.request_id)


def advise(
    task_id: str,
    job_id: str | None = None,
    *,
    rule: str,
    command: Command = "collect",
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> ActionRow:
    """The ``actions`` row of a stop advised by ``rule`` and not sent: outcome 'advised', the request it would
    have been."""
    return _row(task_id, job_id, "stop", request={"taskId": task_id}, outcome="advised", rule=rule, command=command,
                details=details, now=now)  # fmt: skip


def stop_tasks(client: QianfanClient, dataset: Dataset, task_ids: Sequence[str]) -> Iterator[ActionRow]:
    """Stop each task (once, however often named), recording each outcome as soon as it is known; yields the rows.
    Every task is tried, whatever became of the others."""
    known = known_tasks(dataset, task_ids)
    for task_id in dict.fromkeys(task_ids):
        found = known.get(task_id)
        row = stop(client, task_id, found.job_id if found else None)
        record(dataset, [row])
        yield row


def known_tasks(source: Source, task_ids: Sequence[str]) -> dict[str, Known]:
    """What the dataset knows of each of ``task_ids`` that it holds (none for a dataset not yet written)."""
    from .analysis import connection  # here, not at the top: a collector that only stops needs no pandas

    sql = ("SELECT task_id, job_id, run_status, parameter_scale FROM tasks "
           "WHERE task_id IN (SELECT unnest(?::VARCHAR[]))")  # fmt: skip
    with connection(source) as con:
        found = fetch(con, sql, [list(task_ids)]).to_pylist()
    return {row["task_id"]: Known(**row) for row in found}


# -- continue --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Continuation:
    """A continue worked out from the dataset: the source task, the checkpoint, how it was chosen, and the exact
    CreateFineTuningTask body."""

    task_id: str
    job_id: str
    step: int
    chosen_by: str  # 'step' (given), or the metric it is best by: 'training_loss' or 'perplexity'
    checkpoint: Mapping[str, Any]  # the checkpoint's step, training_loss and perplexity as stored
    body: dict[str, Any]

    def details(self) -> dict[str, Any]:
        return {"step": self.step, "chosen_by": self.chosen_by, "checkpoint": dict(self.checkpoint)}

    @property
    def reason(self) -> str:
        """Which checkpoint, and why: ``step 192, the lowest training loss (0.254)``."""
        if self.chosen_by == "step":
            return f"step {self.step}, as given"
        metric = self.chosen_by.replace("_", " ")
        return f"step {self.step}, the lowest {metric} ({self.checkpoint[self.chosen_by]:.4g})"


def plan_continue(
    source: Source,
    task_id: str,
    *,
    version_id: str,
    step: int | None = None,
    best: str = "loss",
    settings: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Continuation:
    """The CreateFineTuningTask that continues ``task_id`` in its job from checkpoint ``step`` (one the dataset
    holds), or else from its best checkpoint by ``best`` ('loss' or 'perplexity'). The body is ``base`` (a body
    file) with ftlog's fields over it: jobId, parameterScale, incrementTaskId, incrementCheckpointStep,
    datasetConfig's versions (sourceType 'Platform' and splitRatio DEFAULT_SPLIT_RATIO unless ``base`` sets them)
    and ``settings`` over ``base``'s hyperParameterConfig. Raises :class:`ActError` when the dataset cannot
    support it: nothing is sent then."""
    from .analysis import best_checkpoints, connection

    if best not in BEST_BY:
        raise ActError(f"--best takes {' or '.join(BEST_BY)}, not {best!r}")
    chosen_by = "step" if step is not None else BEST_BY[best]
    with connection(source) as con:
        known = known_tasks(con, [task_id]).get(task_id)
        if known is None:
            raise ActError(f"{task_id} is not in the dataset: collect it first: ftlog collect {task_id}")
        points = fetch(con, "SELECT step, training_loss, perplexity FROM checkpoints WHERE task_id = ? ORDER BY step",
                       [task_id]).to_pylist()  # fmt: skip
        if step is None:
            best_steps = best_checkpoints(con, chosen_by, tasks=[task_id])["best_step"].tolist()
            if not best_steps:
                raise ActError(f"{task_id} has no checkpoint with a finite {chosen_by.replace('_', ' ')} to "
                               f"continue from ({_steps(points)})")  # fmt: skip
            step = int(best_steps[0])
    chosen = next((point for point in points if point["step"] == step), None)
    if chosen is None:
        raise ActError(f"{task_id} has no checkpoint at step {step}: {_steps(points)}")
    if known.job_id is None:
        raise ActError(f"the dataset does not know the job of {task_id}")
    body = continue_body(known, step, version_id=version_id, settings=settings, base=base)
    return Continuation(task_id, known.job_id, step, chosen_by, chosen, body)


def continue_body(
    known: Known,
    step: int,
    *,
    version_id: str,
    settings: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CreateFineTuningTask body of :func:`plan_continue`."""
    base = dict(base or {})
    for name in ("datasetConfig", "hyperParameterConfig"):
        if not isinstance(base.get(name, {}), dict):
            raise ActError(f"the body file's {name} must be a JSON object")
    scale = known.parameter_scale or base.get("parameterScale")
    if not scale:
        raise ActError(f"the dataset does not know the parameter scale of {known.task_id}: set parameterScale in "
                       "a --body file")  # fmt: skip
    ours = {
        "jobId": known.job_id,
        "parameterScale": scale,
        "incrementTaskId": known.task_id,
        "incrementCheckpointStep": step,
        "hyperParameterConfig": {**base.get("hyperParameterConfig", {}), **(settings or {})},
        "datasetConfig": {"sourceType": "Platform", "splitRatio": DEFAULT_SPLIT_RATIO,
                          **base.get("datasetConfig", {}), "versions": [{"versionId": version_id}]},
    }  # fmt: skip
    return {**ours, **{name: value for name, value in base.items() if name not in ours}}


def continue_task(
    client: QianfanClient, plan: Continuation, *, command: Command = "continue", now: datetime | None = None
) -> ActionRow:
    """Send ``plan``'s CreateFineTuningTask, once, and return its ``actions`` row, not yet recorded: outcome
    'sent' with ``new_task_id``, or 'denied'/'failed'. When no answer came back (a transport error, a server
    error), the row's details say ``may_exist``: the task may or may not have been created."""
    row = _row(plan.task_id, plan.job_id, "continue", request=plan.body, outcome="sent", rule=None,
               command=command, details=plan.details(), secrets=_secrets(client), now=now)  # fmt: skip
    try:
        answer = client.create_task(plan.body)
    except ApiError as exc:
        refused = _refused(row, exc)
        if may_exist(exc):
            refused["details"] = details_json({**plan.details(), "may_exist": True})
        return refused
    return {**_answered(row, answer.status, answer.request_id), "new_task_id": answer.result["taskId"]}


def may_exist(exc: ApiError) -> bool:
    """Whether a create that failed so may still have started a task: only a 4xx answer is a sure refusal."""
    return exc.status is None or not 400 <= exc.status < 500


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: VALUE as a JSON number or boolean when it is one (``3e-5``, ``1``, ``true``),
    else as text. NaN and infinities are refused: the API takes finite numbers only."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{text!r}: expected KEY=VALUE, e.g. learningRate=3e-5")
    try:
        number = float(raw)
    except ValueError:
        number = 0.0
    if not math.isfinite(number):
        raise ConfigError(f"{text!r}: {key} must be a finite number, not {raw.strip()}")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value if isinstance(value, (bool, int, float)) else raw


def load_body(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``--body`` file; ConfigError for a file that does not read, is no JSON object, holds
    NaN or infinities, or carries credentials."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number the API takes")

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --body {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        body = json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise ConfigError(f"--body {path} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"--body {path} must hold a JSON object, not {type(body).__name__}")
    credentials = sorted(_credential_fields(body))
    if credentials:
        raise ConfigError(f"--body {path} holds {', '.join(credentials)}: ftlog signs with QIANFAN_ACCESS_KEY and "
                          "QIANFAN_SECRET_KEY and sends no keys in a body")  # fmt: skip
    return body


def _credential_fields(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {key for key in value if key.lower() in CREDENTIAL_FIELDS}
        return found.union(*(_credential_fields(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_credential_fields(item) for item in value))
    return set()


# -- what to say -----------------------------------------------------------------------------------------------
def intent(task_id: str, known: Known | None) -> str:
    """One line: what ``ftlog stop`` would do for ``task_id``."""
    if known is None:
        return f"would stop {task_id} (not in the dataset)"
    status = known.run_status or "status unknown"
    if known.run_status in ("Done", "Failed", "Stopped"):
        status += ": it has ended, so the API will refuse"
    return f"would stop {task_id} (job {known.job_id}, {status})"


def outcome_line(row: ActionRow) -> str:
    """One line: what became of an action."""
    if row["outcome"] == "sent":
        done = f"created {row['new_task_id']}" if row["action"] == "continue" else "stopped"
        return f"{row['task_id']}: {done} (request {row['request_id']})"
    return f"{row['task_id']}: {row['outcome']}: {row['error']}"


def problem(row: ActionRow) -> str:
    """The task and the API's reason, for an error line: ``task-x (AccessDenied: ...)``; for a create that may
    have started a task after all, how to find out."""
    if row["outcome"] == "denied" and "AccessDenied" in (row["error"] or ""):
        return f"{row['task_id']} (AccessDenied: {DENIED_HINT})"
    text = f"{row['task_id']} ({row['error']})"
    if row["action"] == "continue" and json.loads(row["details"] or "{}").get("may_exist"):
        text += (f"; the new task may or may not have been created: check with ftlog collect --job {row['job_id']} "
                 "before trying again")  # fmt: skip
    return text


def _steps(points: Sequence[Mapping[str, Any]]) -> str:
    if not points:
        return "it has no stored checkpoints"
    steps = [point["step"] for point in points]
    if len(steps) == 1:
        return f"its only stored checkpoint is step {steps[0]}"
    return f"its stored checkpoints are steps {steps[0]} to {steps[-1]} ({len(steps)} checkpoints)"
