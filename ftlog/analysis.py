"""pandas helpers over the views: curves, comparisons, best checkpoints, timelines, ETAs and health flags.

Every helper takes ``source``: a dataset location (path or URI), a :class:`~ftlog.store.Dataset`, or a connection
from :func:`ftlog.connect`, so a notebook can open the dataset once and pass the connection around.

Every helper returns the same columns and dtypes whether or not rows exist, as its docstring lists: times are
``datetime64[us, UTC]``, flags pandas ``boolean``, counts and steps ``Int64``, other numbers ``float64``, and text
``str`` (pandas' text dtype: ``object`` before pandas 3). A missing value is NaN, NaT or ``<NA>`` accordingly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import light, schema, views
from .errors import FtlogError
from .schema import TABLES, TERMINAL_STATUSES
from .store import Dataset
from .views import CURVE_ATTRIBUTES, TASK_ATTRIBUTES, connect, fetch

Source = str | Path | Dataset | duckdb.DuckDBPyConnection
GROUP_COLUMNS, METRICS = views.GROUP_COLUMNS, views.METRICS  # what compare groups by and reports
CURVE_METRICS = ("training_loss", "perplexity")
CURVE_SUMMARY = schema.CURVE_SUMMARY[1:]  # final and best values; last_step only marks that a summary exists

# The dtypes of the helpers' columns (see the module docstring).
TIME = pd.DatetimeTZDtype("us", "UTC")
FLAG = pd.BooleanDtype()
COUNT = pd.Int64Dtype()
NUMBER = np.dtype("float64")
TEXT = pa.array([], pa.string()).to_pandas().dtype  # what pandas makes of Arrow text: str, or object before pandas 3
# Integers and booleans as nullable dtypes: plain ones turn into float64 or object as soon as one value is NULL,
# so a column's dtype would depend on the rows.
_INTEGERS = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_NULLABLE: dict[pa.DataType, Any] = dict.fromkeys(_INTEGERS, COUNT) | {pa.bool_(): FLAG}


@contextmanager
def connection(source: Source) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with the ftlog views for ``source``, for running several helpers over one consistent view of
    the dataset: a connection passed in is used as it is and left open; otherwise one is opened with
    :func:`ftlog.connect` and closed when the block ends.

    >>> with connection("data") as con:  # doctest: +SKIP
    ...     latest, best = tasks(con), best_checkpoints(con)
    """
    if isinstance(source, duckdb.DuckDBPyConnection):
        yield source
        return
    con = connect(source)
    try:
        yield con
    finally:
        con.close()


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_NULLABLE.get)


def _typed(frame: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with exactly the columns of ``dtypes``, in that order and of those dtypes."""
    if frame.columns.tolist() == list(dtypes) and frame.dtypes.tolist() == list(dtypes.values()):
        return frame  # as it is (a query's frame mostly is)
    columns = {}
    for column, dtype in dtypes.items():  # column by column: most already are of their dtype
        values = frame[column] if column in frame.columns else pd.Series(None, index=frame.index, dtype=dtype)
        columns[column] = values if values.dtype == dtype else values.astype(dtype)
    return pd.DataFrame(columns, index=frame.index)


def _frame(source: Source, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
    with connection(source) as con:
        # Through Arrow rather than .df(): at 500,000 checkpoint rows it is about twice as fast and needs half the
        # peak memory, since text columns never become one Python object per value.
        return _to_pandas(fetch(con, sql, params))


def _task_filter(tasks: Sequence[str] | None, jobs: Sequence[str] | None, alias: str = "t") -> tuple[str, list[Any]]:
    clauses, params = [], []
    if tasks:
        clauses.append(f"{alias}.task_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(tasks))
    if jobs:
        clauses.append(f"{alias}.job_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(jobs))
    return (" AND ".join(clauses) or "TRUE"), params


def tasks(source: Source, *, tasks: Sequence[str] | None = None, jobs: Sequence[str] | None = None) -> pd.DataFrame:
    """The latest state of each task (the ``tasks`` view), optionally limited to some tasks or jobs.

    Columns: those of the ``tasks`` view but ``raw`` and ``metrics``, ordered by ``task_id``. Text (``task_id``,
    ``job_id``, ``job_name``, ``model``, ``run_status``, ``error_code``, ...) is ``str``; ``create_time``,
    ``finish_time``, ``observed_at``, ``first_seen_at`` and ``last_polled_at`` are ``datetime64[us, UTC]``;
    ``run_progress`` and ``bleu_4``, ``rouge_1``, ``rouge_2``, ``rouge_l`` are ``float64``; ``checkpoint_count``
    is ``Int64``.

    >>> tasks("data")[["task_id", "run_status", "run_progress"]]  # doctest: +SKIP
    """
    where, params = _task_filter(tasks, jobs)
    return _frame(source, f"SELECT * EXCLUDE (raw, metrics) FROM tasks t WHERE {where} ORDER BY task_id", params)


def curves(
    source: Source,
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    x: str = "step",
    ema: float | None = None,
) -> pd.DataFrame:
    """Every checkpoint of every task at full resolution, one row per (task, step), with the task's model, train
    mode and parameter scale. ``x="fraction"`` sets column ``x`` to step / last step of the task (0..1); ``ema``
    (a smoothing factor in (0, 1], e.g. 0.3) adds ``training_loss_ema`` and ``perplexity_ema`` beside the raw values.

    Columns: ``task_id``, ``job_id``, ``job_name``, ``model``, ``train_mode``, ``parameter_scale`` (``str``),
    ``step`` (``Int64``), ``x``, ``training_loss``, ``perplexity`` and, with ``ema``, ``training_loss_ema`` and
    ``perplexity_ema`` (``float64``); ordered by ``task_id`` and ``step``.

    >>> df = curves("data", x="fraction", ema=0.3)  # doctest: +SKIP
    >>> df.columns[:4].tolist()  # doctest: +SKIP
    ['task_id', 'job_id', 'model', 'train_mode']
    """
    if x not in ("step", "fraction"):
        raise FtlogError(f"x must be 'step' or 'fraction', not {x!r}")
    if ema is not None and not 0 < ema <= 1:
        raise FtlogError(f"ema must be in (0, 1], not {ema}")
    where, params = _task_filter(tasks, jobs)
    x_expr = "c.step::DOUBLE" if x == "step" else "c.step / max(c.step) OVER (PARTITION BY c.task_id)"
    with connection(source) as con:
        # The same rows as the curves view, faster: each checkpoint carries the position of its task among the
        # tasks in task order, so DuckDB sorts by integers and returns no text, and the tasks' text attributes are
        # attached afterwards by that position.
        chosen = f"SELECT * FROM ({TASK_ATTRIBUTES}) t WHERE {where}"
        attributes = fetch(con, f"{chosen} ORDER BY task_id", params)
        points = fetch(
            con,
            f"""SELECT a.at, c.step, {x_expr} AS x, c.training_loss, c.perplexity
                FROM checkpoints c JOIN (
                    SELECT task_id, (row_number() OVER (ORDER BY task_id) - 1)::INTEGER AS at FROM ({chosen})
                ) a USING (task_id)
                ORDER BY a.at, c.step""",
            params,
        )
    at = points.column("at")  # (the inner join leaves out checkpoints of a task without a snapshot, as the view)
    columns = {name: attributes.column(name).take(at) for name in ("task_id", *CURVE_ATTRIBUTES)}
    columns |= {name: points.column(name) for name in ("step", "x", *CURVE_METRICS)}
    frame = _to_pandas(pa.table(columns))
    if ema is not None:
        grouped = frame.groupby("task_id", sort=False)
        for column in CURVE_METRICS:
            smoothed = (
                grouped[column].transform(lambda s: s.ewm(alpha=ema, adjust=False).mean())
                if len(frame)
                else frame[column]
            )
            frame[f"{column}_ema"] = smoothed.astype(NUMBER)
    return frame


def final_and_best(source: Source) -> pd.DataFrame:
    """Per task with checkpoints: final (last step) and best (lowest, NaN ignored) training loss and perplexity,
    summarised from every checkpoint.

    Columns: ``task_id`` (``str``), ``final_loss``, ``best_loss``, ``final_perplexity``, ``best_perplexity``
    (``float64``), ``last_step`` and ``checkpoints`` (``Int64``).
    """
    return _frame(source, _checkpoint_summary_sql())


def _checkpoint_summary_sql(where: str = "TRUE") -> str:
    """SQL for :func:`final_and_best` over the tasks ``where`` selects (a condition on ``task_id``)."""
    return f"""
        SELECT task_id,
               arg_max(training_loss, step) AS final_loss,
               min(training_loss) FILTER (WHERE isfinite(training_loss)) AS best_loss,
               arg_max(perplexity, step) AS final_perplexity,
               min(perplexity) FILTER (WHERE isfinite(perplexity)) AS best_perplexity,
               max(step) AS last_step,
               count(*) AS checkpoints
        FROM checkpoints WHERE {where} GROUP BY task_id
    """


def compare(
    source: Source,
    by: Sequence[str] = ("model", "train_mode", "parameter_scale"),
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    stats: Sequence[str] = ("mean", "std", "min", "max"),
) -> pd.DataFrame:
    """One row per group: ``tasks`` (count), ``done`` (count), and mean/std/min/max of BLEU-4, ROUGE-1/2/L and
    of final and best training loss and perplexity. Columns are named ``<value>_<stat>``, e.g. ``bleu_4_mean``.
    ``stats`` may also hold ``median`` and ``count`` (tasks with a value, e.g. for standard errors).

    >>> compare("data", by=["parameter_scale"])[["parameter_scale", "tasks", "final_loss_mean"]]  # doctest: +SKIP
    """
    by = list(by)
    unknown = [column for column in by if column not in GROUP_COLUMNS]
    if unknown or not by:
        raise FtlogError(f"cannot group by {', '.join(unknown) or 'nothing'}: choose from {', '.join(GROUP_COLUMNS)}")
    allowed = {"mean": "avg", "std": "stddev_samp", "min": "min", "max": "max", "median": "median", "count": "count"}
    if bad := [s for s in stats if s not in allowed]:
        raise FtlogError(f"unknown statistic {', '.join(bad)}: choose from {', '.join(allowed)}")
    values = [*METRICS, *CURVE_SUMMARY]
    aggregates = ",\n".join(f"{allowed[s]}({v}) AS {v}_{s}" for v in values for s in stats)
    where, params = _task_filter(tasks, jobs)
    with connection(source) as con:
        latest = _latest_states_sql(where)
        # First from the curve summaries the snapshots carry; only if some task's summary is missing,
        # again with those tasks summarised from their checkpoints (which costs a read of every checkpoint).
        for recount in (False, True):
            curve = fallback = ""
            if recount:
                curve = ", ".join(f"CASE WHEN t.recount THEN fb.{v} ELSE t.{v} END AS {v}" for v in CURVE_SUMMARY)
                fallback = f"""
                    SELECT task_id,
                           arg_max(training_loss, step) AS final_loss,
                           min(training_loss) FILTER (WHERE isfinite(training_loss)) AS best_loss,
                           arg_max(perplexity, step) AS final_perplexity,
                           min(perplexity) FILTER (WHERE isfinite(perplexity)) AS best_perplexity
                    FROM (  -- the checkpoints view, restricted to those tasks before it de-duplicates
                        SELECT task_id, step, perplexity, training_loss FROM _checkpoints
                        WHERE task_id IN (SELECT task_id FROM latest WHERE recount)
                        QUALIFY {TABLES["checkpoints"].rank()} = 1
                    ) GROUP BY task_id
                """
            joined = "latest"  # as stored, unless some summaries are recounted
            if recount:
                joined = f"""(
                    SELECT t.* EXCLUDE ({", ".join(CURVE_SUMMARY)}), {curve}
                    FROM latest t LEFT JOIN ({fallback}) fb ON fb.task_id = t.task_id
                )"""
            frame = _frame(
                con,
                f"""
                WITH latest AS ({latest})
                SELECT {", ".join(by)}, count(*) AS tasks, count(*) FILTER (WHERE run_status = 'Done') AS done,
                       {aggregates}, count(*) FILTER (WHERE recount) AS recount
                FROM {joined} GROUP BY ALL ORDER BY ALL
                """,
                params,
            )
            if recount or not frame["recount"].any():
                break
    return frame.drop(columns="recount")


def _latest_states_sql(where: str) -> str:
    """SQL for, per task: the group columns, status and reported metrics of its latest snapshot, the summary of
    its curve that the snapshot carries, and ``recount`` where that summary is missing (the ``_latest_states``
    view, see views.py)."""
    return f"SELECT * FROM _latest_states t WHERE {where}"


def best_checkpoints(
    source: Source,
    metric: str = "training_loss",
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per task the checkpoint with the lowest ``metric`` (``training_loss`` or ``perplexity``; ties go to the
    earlier step), whether it is the last step (if not, later steps got worse: an overfitting hint), and the
    ``incrementTaskId`` / ``incrementCheckpointStep`` pair CreateFineTuningTask takes to continue from it.

    Columns: ``task_id``, ``job_id``, ``job_name``, ``model``, ``train_mode``, ``parameter_scale``, ``run_status``,
    ``metric`` (``str``), ``best_step`` (``Int64``), ``best_value`` (``float64``), ``last_step`` (``Int64``),
    ``is_last`` (``boolean``), ``checkpoints`` (``Int64``), ``incrementTaskId`` (``str``),
    ``incrementCheckpointStep`` (``Int64``); ordered by ``task_id``.

    >>> best_checkpoints("data")[["task_id", "best_step", "best_value", "is_last"]]  # doctest: +SKIP
    """
    if metric not in CURVE_METRICS:
        raise FtlogError(f"metric must be one of {', '.join(CURVE_METRICS)}, not {metric!r}")
    where, params = _task_filter(tasks, jobs)
    return _frame(
        source,
        f"""
        WITH ranked AS (
            SELECT task_id, step, {metric} AS value,
                   row_number() OVER (PARTITION BY task_id ORDER BY {metric}, step) AS rn,
                   max(step) OVER (PARTITION BY task_id) AS last_step,
                   count(*) OVER (PARTITION BY task_id) AS checkpoints
            FROM checkpoints WHERE isfinite({metric})
        )
        SELECT r.task_id, t.job_id, t.job_name, t.model, t.train_mode, t.parameter_scale, t.run_status,
               '{metric}' AS metric, r.step AS best_step, r.value AS best_value, r.last_step,
               r.step = r.last_step AS is_last, r.checkpoints,
               r.task_id AS incrementTaskId, r.step AS incrementCheckpointStep
        FROM ranked r JOIN tasks t USING (task_id)
        WHERE r.rn = 1 AND {where}
        ORDER BY r.task_id
        """,
        params,
    )


def timeline(
    source: Source,
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Per task and status stretch: ``entered_at``, ``left_at`` (NULL while current) and ``seconds`` (up to
    ``now`` for the current stretch of a task still in flight, NULL for a terminal status). Times are when the
    collector first saw each status, so their resolution is the polling interval.

    Columns: ``task_id``, ``job_id``, ``model``, ``train_mode``, ``parameter_scale``, ``status`` (``str``),
    ``entered_at``, ``left_at`` (``datetime64[us, UTC]``), ``seconds`` (``float64``); ordered by task and time.

    >>> timeline("data")[["task_id", "status", "seconds"]]  # doctest: +SKIP
    """
    where, params = _task_filter(tasks, jobs)
    frame = _frame(
        source,
        f"""
        SELECT s.task_id, t.job_id, t.model, t.train_mode, t.parameter_scale,
               s.to_status AS status, s.changed_at AS entered_at,
               lead(s.changed_at) OVER (PARTITION BY s.task_id ORDER BY s.changed_at) AS left_at
        FROM status_changes s JOIN tasks t USING (task_id)
        WHERE {where}
        ORDER BY s.task_id, s.changed_at
        """,
        params,
    )
    moment = pd.Timestamp(now or datetime.now(timezone.utc))
    end = frame["left_at"].where(frame["left_at"].notna() | frame["status"].isin(TERMINAL_STATUSES), moment)
    frame["seconds"] = (end - frame["entered_at"]).dt.total_seconds()
    return frame


def durations(
    source: Source,
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Per task: ``queue_seconds`` (Waiting), ``running_seconds`` (Running), ``total_seconds`` (first seen until
    a terminal status, or until ``now``) and the ``end_status``. A duration the collector could not observe (a
    status never seen, or a task first seen already finished) is NULL.

    Columns: ``task_id`` (``str``), ``queue_seconds``, ``running_seconds``, ``total_seconds`` (``float64``),
    ``end_status`` (``str``); ordered by ``task_id``.

    >>> durations("data")[["task_id", "queue_seconds", "running_seconds", "total_seconds"]]  # doctest: +SKIP
    """
    stretches = timeline(source, tasks=tasks, jobs=jobs, now=now)
    rows = []
    moment = pd.Timestamp(now or datetime.now(timezone.utc))
    for task_id, group in stretches.groupby("task_id", sort=True):
        last = group.iloc[-1]
        end = last["entered_at"] if last["status"] in TERMINAL_STATUSES else moment
        seen_from_start = group.iloc[0]["status"] not in TERMINAL_STATUSES

        def spent(status: str, group: pd.DataFrame = group) -> float | None:
            # NULL, not 0, for a stretch the collector never saw: the task may well have waited or run.
            stretch = group.loc[group["status"] == status, "seconds"]
            return float(stretch.sum()) if len(stretch) else None

        rows.append(
            {
                "task_id": task_id,
                "queue_seconds": spent("Waiting"),
                "running_seconds": spent("Running"),
                "total_seconds": (end - group["entered_at"].min()).total_seconds() if seen_from_start else None,
                "end_status": last["status"] if last["status"] in TERMINAL_STATUSES else None,
            }
        )
    return _typed(pd.DataFrame(rows), _DURATIONS)


_DURATIONS = {"task_id": TEXT, "queue_seconds": NUMBER, "running_seconds": NUMBER, "total_seconds": NUMBER,
              "end_status": TEXT}  # fmt: skip


def eta(
    source: Source,
    *,
    window: timedelta = light.WINDOW,
    stall_after: timedelta = timedelta(minutes=30),
    now: datetime | None = None,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """For each Running task: progress rate (percent per hour) over the snapshots of the last ``window``, the
    estimated finish time (NULL when the rate is zero or unknown), and ``stalled`` when runProgress has not moved
    for longer than ``stall_after``.

    The rate runs from the first Running snapshot in the window to the last poll, so a plateau lowers it.

    Columns: ``task_id`` (``str``), ``run_progress``, ``rate_per_hour`` (``float64``), ``eta``,
    ``progress_since`` (when the current progress was first seen; ``datetime64[us, UTC]``), ``stalled``
    (``boolean``); ordered by ``task_id``.

    >>> eta("data", stall_after=timedelta(minutes=20))[["task_id", "run_progress", "eta", "stalled"]]  # doctest: +SKIP
    """
    moment = now or datetime.now(timezone.utc)
    where, params = _task_filter(tasks, jobs)
    cutoff = light.window_start(moment, window)
    with connection(source) as con:
        sql = light.estimates_sql(light.changes_view(con, cutoff), where, now=moment, cutoff=cutoff,
                                  stall_after=stall_after)  # fmt: skip
        return _typed(_frame(con, f"{sql} ORDER BY task_id", params), _ETA)


_ETA = {"task_id": TEXT, "run_progress": NUMBER, "rate_per_hour": NUMBER, "eta": TIME, "progress_since": TIME,
        "stalled": FLAG}  # fmt: skip


def finish_time(last_seen: pd.Timestamp, progress: float, rate: float | None) -> pd.Timestamp | None:
    """When ``progress`` (percent) reaches 100 at ``rate`` percent per hour from ``last_seen``; None when it never
    does at that rate (zero, negative, NaN or unknown) or when the moment is beyond what a timestamp can hold
    (``"1%"`` then ``"1.00000001%"`` a minute later puts it a million years away). Progress past 100 finishes at
    ``last_seen``. The rule :func:`eta` applies in SQL (light.estimates_sql), for a single value."""
    if rate is None or not rate > 0 or not math.isfinite(progress):  # ``not rate > 0`` is also true for NaN
        return None
    finish = light.shifted(last_seen.to_pydatetime(), max(100.0 - progress, 0.0) / rate * 3600)
    return None if finish is None else pd.Timestamp(finish)


def health(
    source: Source,
    *,
    k: int = 3,
    plateau: float = 0.005,
    perplexity_tolerance: float = 0.25,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per task flags from the checkpoint curve: ``loss_rising`` (loss went up at each of the last ``k`` steps),
    ``non_finite`` (any NaN or inf), ``plateau`` (the last ``k`` steps moved the loss by less than ``plateau``,
    relative), ``perplexity_mismatch`` (some perplexity is off exp(training_loss) by more than
    ``perplexity_tolerance``, relative), and ``healthy`` when none is set.

    Columns: ``task_id`` (``str``), ``checkpoints`` (``Int64``), ``loss_rising``, ``non_finite``, ``plateau``,
    ``perplexity_mismatch``, ``healthy`` (``boolean``); one row per task with checkpoints, ordered by ``task_id``.

    >>> health("data").query("not healthy")  # doctest: +SKIP
    """
    frame = curves(source, tasks=tasks, jobs=jobs)
    rows = []
    for task_id, group in frame.groupby("task_id", sort=True):
        loss = group["training_loss"].to_numpy(dtype=float)
        ppl = group["perplexity"].to_numpy(dtype=float)
        finite = np.isfinite(loss) & np.isfinite(ppl)
        tail = loss[finite][-(k + 1) :]
        steps = np.diff(tail)
        rising = len(steps) >= k and bool(np.all(steps > 0))
        flat = len(steps) >= k and bool(abs(tail[-1] - tail[0]) <= plateau * max(abs(tail[0]), 1e-12))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ratio = ppl[finite] / np.exp(loss[finite])
        mismatch = bool(np.any(np.abs(ratio - 1) > perplexity_tolerance))
        non_finite = bool(not finite.all())
        rows.append(
            {
                "task_id": task_id,
                "checkpoints": len(loss),
                "loss_rising": rising,
                "non_finite": non_finite,
                "plateau": flat,
                "perplexity_mismatch": mismatch,
                "healthy": not (rising or non_finite or flat or mismatch),
            }
        )
    return _typed(pd.DataFrame(rows), _HEALTH)


_HEALTH = {"task_id": TEXT, "checkpoints": COUNT, "loss_rising": FLAG, "non_finite": FLAG, "plateau": FLAG,
           "perplexity_mismatch": FLAG, "healthy": FLAG}  # fmt: skip


_STATUS = {"task_id": TEXT, "job_id": TEXT, "model": TEXT, "train_mode": TEXT, "parameter_scale": TEXT,
           "run_status": TEXT, "run_progress": NUMBER, "eta": TIME, "stalled": FLAG, "best_loss": NUMBER,
           "last_change": TIME, "last_polled_at": TIME}  # fmt: skip
STATUS_COLUMNS = list(_STATUS)


def status(
    source: Source, *, now: datetime | None = None, stall_after: timedelta = timedelta(minutes=30)
) -> pd.DataFrame:
    """One row per task for ``ftlog status``: identity, status, progress, ETA, best loss and last change.

    ``eta`` and ``stalled`` are those of :func:`eta`, NULL for a task not Running; ``best_loss`` is the lowest
    finite training loss of the task's checkpoints (NULL without any), as its latest snapshot summarises them.

    Columns: ``task_id``, ``job_id``, ``model``, ``train_mode``, ``parameter_scale``, ``run_status`` (``str``),
    ``run_progress`` (``float64``), ``eta`` (``datetime64[us, UTC]``), ``stalled`` (``boolean``), ``best_loss``
    (``float64``), ``last_change``, ``last_polled_at`` (``datetime64[us, UTC]``); ordered by ``task_id``.

    >>> status("data")  # doctest: +SKIP
    """
    with connection(source) as con:
        # One query for what every task shows; ETAs only for the tasks Running, if any.
        table = fetch(con, light.STATUS)
        table = table.take(pc.sort_indices(table.column("task_id")))
        frame = _to_pandas(table.drop_columns("recount"))
        stale = table.filter(table.column("recount")).column("task_id").to_pylist()
        if stale:  # snapshots of an older ftlog, which carry no curve summary: read their checkpoints
            recount = frame["task_id"].isin(stale)
            scanned = _frame(con, _checkpoint_summary_sql("task_id IN (SELECT unnest(?::VARCHAR[]))"), [stale])
            fallback = frame["task_id"].map(scanned.set_index("task_id")["best_loss"])
            frame["best_loss"] = frame["best_loss"].where(~recount, fallback)
        if pc.any(pc.equal(table.column("run_status"), "Running")).as_py():
            estimates = eta(con, now=now, stall_after=stall_after).set_index("task_id")
            for column in ("eta", "stalled"):
                frame[column] = frame["task_id"].map(estimates[column])
    return _typed(frame, _STATUS)


def events(
    source: Source,
    *,
    since: datetime | None = None,
    kinds: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Derived events (the ``events`` view: terminal status changes, stalls, new best checkpoints), oldest first,
    optionally from ``since`` on and of some ``kinds`` only. ``details`` is JSON text.

    Columns: ``at`` (``datetime64[us, UTC]``), ``task_id``, ``kind``, ``details``, ``event_id`` (``str``).

    >>> events("data", kinds=["status"], since=datetime(2024, 5, 1, tzinfo=timezone.utc))  # doctest: +SKIP
    """
    clauses, params = ["TRUE"], list[Any]()
    if since is not None:
        clauses.append('"at" >= ?')  # "at" is a DuckDB keyword
        params.append(since if since.tzinfo else since.replace(tzinfo=timezone.utc))
    if kinds:
        clauses.append("kind IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(kinds))
    if tasks:
        clauses.append("task_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(tasks))
    where = " AND ".join(clauses)
    sql = f'SELECT "at", task_id, kind, details, event_id FROM events WHERE {where} ORDER BY "at", task_id, kind'
    return _frame(source, sql, params)


def actions(source: Source, *, tasks: Sequence[str] | None = None, jobs: Sequence[str] | None = None) -> pd.DataFrame:
    """Every stop and continue ftlog sent or only advised (the ``actions`` view), oldest first: who acted on a
    run, and why. ``request`` and ``details`` are JSON text.

    Columns: those of the ``actions`` view: ``action_id``, ``task_id``, ``job_id``, ``action``, ``rule``,
    ``command``, ``request`` (``str``), ``at`` (``datetime64[us, UTC]``), ``outcome``, ``request_id``,
    ``new_task_id`` (``str``), ``http_status`` (``Int32``), ``error``, ``details`` (``str``).

    >>> actions("data")[["at", "task_id", "action", "rule", "outcome"]]  # doctest: +SKIP
    """
    where, params = _task_filter(tasks, jobs, alias="a")
    return _frame(source, f'SELECT * FROM actions a WHERE {where} ORDER BY "at", task_id, action_id', params)
