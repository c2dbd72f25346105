"""API payload -> typed rows: one DescribeFineTuningTask result becomes a ``snapshots`` row and its checkpoints.

Normalisation never raises: a value of the wrong type becomes NULL while the raw JSON keeps what was received.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from operator import itemgetter
from typing import Any, Literal, TypedDict

import numpy as np

from .rows import MetricValue, Point, SnapshotRow

METRIC_COLUMNS = {"BLEU-4": "bleu_4", "ROUGE-1": "rouge_1", "ROUGE-2": "rouge_2", "ROUGE-L": "rouge_l"}
STRING_FIELDS = {
    "job_id": "jobId",
    "job_name": "jobName",
    "job_description": "jobDescription",
    "model": "model",
    "train_mode": "trainMode",
    "parameter_scale": "parameterScale",
    "run_status": "runStatus",
    "vdl_link": "vdlLink",
    "error_message": "errorMessage",
}

INT64_MAX = 2**63 - 1
# Checkpoints as three lists, in the order received: steps, perplexity, training_loss.
Points = tuple[list[int], list[float | None], list[float | None]]
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*%?\s*$")
_POINT = itemgetter("step", "perplexity", "trainingLoss")
_ZERO_TIMES = {"0000-00-00T00:00:00Z", "0000-00-00 00:00:00", "0000-00-00T00:00:00", "0000-00-00"}


def as_number(value: Any) -> float | None:
    """``"99%"`` -> 99.0, ``"16.56%"`` -> 16.56, ``"43.07"`` -> 43.07, ``7`` -> 7.0; anything else -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = _float(value)
    elif isinstance(value, str) and (match := _NUMBER.match(value)):
        number = float(match.group(1))
    else:
        return None
    return number if number is not None and math.isfinite(number) else None


def _float(value: int | float) -> float | None:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a double
        return None


def as_time(value: Any) -> datetime | None:
    """ISO-8601 UTC text (``Z``, an offset, or naive meaning UTC) -> aware datetime; the zero sentinel -> None."""
    if not isinstance(value, str) or not value.strip() or value.strip() in _ZERO_TIMES:
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # not a date, or an offset that moves it out of datetime's range
        return None


def as_text(value: Any) -> str | None:
    return utf8(value) if isinstance(value, str) and value != "" else None


def utf8(text: str) -> str:
    """JSON may carry lone surrogates that Parquet (UTF-8 only) rejects; escape them instead of failing a write."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _as_step(value: Any) -> int | None:
    step: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        step = value
    elif isinstance(value, float) and value.is_integer():
        step = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        step = int(value.strip())
    # Beyond int64 the value cannot be stored, and would fail the whole write.
    return step if step is not None and -INT64_MAX <= step <= INT64_MAX else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: Any) -> float | None:
    """Checkpoint values keep NaN and inf: they are what a diverging run reports, and health checks flag them."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return _float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _first(result: dict[str, Any], *keys: str) -> Any:
    return next((result[key] for key in keys if key in result), None)


@dataclass
class Normalised:
    snapshot: SnapshotRow
    points: Points  # every well-formed entry of checkpointList, in the order received, as columns
    increasing: bool  # whether their steps strictly increase (no step repeated)

    @property
    def checkpoints(self) -> list[Point]:
        """``points`` as one dict per checkpoint."""
        return _dicts(self.points)


class CurveSummary(TypedDict):
    """The columns ``schema.CURVE_SUMMARY`` of a snapshot: what its answer's checkpoints come to."""

    last_step: int | None
    final_loss: float | None
    best_loss: float | None
    final_perplexity: float | None
    best_perplexity: float | None


def parse_checkpoints(value: Any) -> tuple[list[Point], bool]:
    """Return the usable checkpoints and whether the whole list was well formed (a list of entries with an
    integer step and numeric or missing values), i.e. whether ``checkpoints`` rows hold all of it."""
    if not isinstance(value, list):
        return [], False
    rows: list[Point] = []
    clean = True
    for item in value:
        step = _as_step(item.get("step")) if isinstance(item, dict) else None
        if step is None:
            clean = False
            continue
        perplexity, loss = item.get("perplexity"), item.get("trainingLoss")
        rows.append({"step": step, "perplexity": _as_float(perplexity), "training_loss": _as_float(loss)})
        clean = clean and isinstance(item["step"], int) and all(v is None or _is_number(v) for v in (perplexity, loss))
    return rows, clean


def read_points(value: Any) -> tuple[Points, bool, bool]:
    """:func:`parse_checkpoints` as columns, and whether the steps strictly increase. The usual answer, a list of
    dicts with an integer step and float values in step order, is read in bulk (:func:`_regular_points`)."""
    if isinstance(value, list) and (points := _regular_points(value)) is not None:
        return points, True, True
    rows, clean = parse_checkpoints(value)
    steps = [row["step"] for row in rows]
    points = steps, [row["perplexity"] for row in rows], [row["training_loss"] for row in rows]
    return points, clean, all(a < b for a, b in pairwise(steps))


def _regular_points(value: list[Any]) -> Points | None:
    """The columns of a list of dicts whose steps are ints in strictly increasing order and whose values are
    floats, with what :func:`parse_checkpoints` makes of it; None for any other list. Reading each entry once and
    checking the types of whole columns costs a fraction of checking one checkpoint at a time."""
    if not value or set(map(type, value)) != {dict}:
        return None
    try:
        steps, perplexity, loss = map(list, zip(*map(_POINT, value), strict=True))
    except KeyError:
        return None
    if (
        set(map(type, steps)) != {int}  # (a bool, a float or a string step is read one at a time)
        or not {*map(type, perplexity), *map(type, loss)} <= {float}
        or steps != sorted(steps)
        or not -INT64_MAX <= steps[0] <= steps[-1] <= INT64_MAX
    ):
        return None
    ordered = np.array(steps, dtype=np.int64)
    if (ordered[1:] == ordered[:-1]).any():  # a step repeated
        return None
    return steps, perplexity, loss


def _increasing_summary(points: Points) -> CurveSummary:
    """:func:`curve_summary` of columns whose steps strictly increase, in bulk."""
    steps = points[0]
    if not steps:
        return {"last_step": None, "final_loss": None, "best_loss": None, "final_perplexity": None,
                "best_perplexity": None}  # fmt: skip

    def final_and_best(values: list[float | None]) -> tuple[float | None, float | None]:
        final = next((value for value in reversed(values) if value is not None), None)
        at = lowest_finite(values)
        return final, None if at is None else values[at]

    final_loss, best_loss = final_and_best(points[2])
    final_perplexity, best_perplexity = final_and_best(points[1])
    return {"last_step": steps[-1], "final_loss": final_loss, "best_loss": best_loss,
            "final_perplexity": final_perplexity, "best_perplexity": best_perplexity}  # fmt: skip


def lowest_finite(values: list[float | None]) -> int | None:
    """Where the lowest finite value is (the first of equal ones, as min() keeps it: 0.0 and -0.0 are equal)."""
    try:
        if values and math.isfinite(sum(values)):  # type: ignore[arg-type]  # the usual curve: no NaN, inf or None
            return values.index(min(values))  # type: ignore[type-var]
    except TypeError:  # a None
        pass
    array = np.array(values, dtype=np.float64)  # None -> NaN, left out as a non-finite value is
    finite = np.isfinite(array)
    return int(np.argmin(np.where(finite, array, np.inf))) if finite.any() else None


def curve_summary(points: list[Point]) -> CurveSummary:
    """``last_step``, ``final_*`` (the value at the last step that has one) and ``best_*`` (the lowest finite value)
    of training loss and perplexity; a step repeated in one answer counts once, its last entry, as stored."""
    latest = {point["step"]: point for point in points}

    def final_and_best(key: Literal["training_loss", "perplexity"]) -> tuple[float | None, float | None]:
        values = [(step, value) for step, point in latest.items() if (value := point[key]) is not None]
        final = max(values, key=lambda pair: pair[0])[1] if values else None
        return final, min((v for _, v in values if math.isfinite(v)), default=None)

    final_loss, best_loss = final_and_best("training_loss")
    final_perplexity, best_perplexity = final_and_best("perplexity")
    return {"last_step": max(latest, default=None), "final_loss": final_loss, "best_loss": best_loss,
            "final_perplexity": final_perplexity, "best_perplexity": best_perplexity}  # fmt: skip


def normalise(task_id: str, result: dict[str, Any], observed_at: datetime, request_id: str | None) -> Normalised:
    """One DescribeFineTuningTask result -> a snapshot row and its checkpoint rows. Never raises."""
    points, clean, increasing = read_points(result.get("checkpointList"))
    # checkpointList lives in its own table; keep it in raw only when part of it could not be parsed.
    kept = {k: v for k, v in result.items() if k != "checkpointList" or not clean}
    raw = utf8(json.dumps(kept, ensure_ascii=False, sort_keys=True, default=str))
    text = {column: as_text(result.get(key)) for column, key in STRING_FIELDS.items()}
    code = result.get("errorCode")
    metrics = result.get("metrics")
    pairs: list[MetricValue] = (
        [{"metric": utf8(str(k)), "value": as_number(v)} for k, v in metrics.items()]
        if isinstance(metrics, dict)
        else []
    )
    reported = {column: next((p["value"] for p in pairs if p["metric"] == key), None)
                for key, column in METRIC_COLUMNS.items()}  # fmt: skip
    summary = _increasing_summary(points) if increasing else curve_summary(_dicts(points))
    # The checkpoint values live in their own table, but their summary is part of the state: a value revised in
    # place that moves the final or best value makes a new snapshot, so the latest snapshot's summary is current.
    # The list length (not checkpoint_count) as ever: another input would make every stored task look changed once.
    state_hash = hashlib.sha1(  # noqa: S324 - a fingerprint for change detection, not security
        f"{raw}|{len(points[0])}|{sorted(summary.items())!r}".encode()
    ).hexdigest()
    return Normalised(
        {
            "task_id": as_text(result.get("taskId")) or task_id,
            "job_id": text["job_id"],
            "job_name": text["job_name"],
            "job_description": text["job_description"],
            "model": text["model"],
            "train_mode": text["train_mode"],
            "parameter_scale": text["parameter_scale"],
            "run_status": text["run_status"],
            "run_progress": as_number(result.get("runProgress")),
            "vdl_link": text["vdl_link"],
            "create_time": as_time(_first(result, "createTime", "createDate")),
            "finish_time": as_time(_first(result, "finishTime", "finishDate")),
            "error_code": (
                utf8(str(code)) if isinstance(code, (int, str)) and not isinstance(code, bool) and code != "" else None
            ),
            "error_message": text["error_message"],
            "bleu_4": reported["bleu_4"],
            "rouge_1": reported["rouge_1"],
            "rouge_2": reported["rouge_2"],
            "rouge_l": reported["rouge_l"],
            "metrics": pairs or None,
            # Distinct steps: an answer may repeat a step, which the checkpoints table and view hold once.
            "checkpoint_count": len(points[0]) if increasing else len(set(points[0])),
            **summary,
            "observed_at": observed_at,
            "request_id": request_id,
            "state_hash": state_hash,
            "raw": raw,
        },
        points,
        increasing,
    )


def _dicts(points: Points) -> list[Point]:
    return [{"step": step, "perplexity": p, "training_loss": loss} for step, p, loss in zip(*points, strict=True)]
