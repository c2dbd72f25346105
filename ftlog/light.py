"""What ``ftlog status`` shows, as DuckDB SQL over the views, for :func:`ftlog.analysis.status` and
:func:`ftlog.analysis.eta` alike.

Only duckdb and the standard library here: ``ftlog status`` on a local dataset whose present files are current
(summary.py) runs these queries over those files and prints the rows itself (ftlog/quick.py), without loading
pyarrow, numpy or pandas, which would take longer than the whole query.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)
# The times a Python datetime can hold (years 1 to 9999), as microseconds since EPOCH: an ETA beyond them is NULL.
FIRST_US = (datetime(1, 1, 1, tzinfo=timezone.utc) - EPOCH) // MICROSECOND
LAST_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - EPOCH) // MICROSECOND
WINDOW = timedelta(hours=1)  # the rates of `ftlog status` (analysis.eta's default)
STATUS_COLUMNS = ("task_id", "job_id", "model", "train_mode", "parameter_scale", "run_status", "run_progress", "eta",
                  "stalled", "best_loss", "last_change", "last_polled_at")  # fmt: skip


def microseconds(moment: datetime) -> int:
    """``moment`` (naive: UTC) as microseconds since EPOCH."""
    return ((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)) - EPOCH) // MICROSECOND


def window_start(now: datetime, window: timedelta) -> datetime | None:
    """Where a window of ``window`` up to ``now`` starts; None when before year 1 (the window takes everything)."""
    return shifted(now, -window.total_seconds())


def shifted(moment: datetime, seconds: float) -> datetime | None:
    """``moment`` plus ``seconds``, or None when that is no time: NaN, infinite, or outside years 1 to 9999, which
    a Python datetime (and so every reader of these frames: JSON, the report, a notebook) can hold."""
    try:
        return moment + timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # out of range; ValueError for NaN
        return None


def changes_view(con: duckdb.DuckDBPyConnection, cutoff: datetime | None) -> str:
    """The view of the snapshots that holds every row :func:`estimates_sql` reads from ``cutoff`` on: the changes
    that can stand for the present (views.CURRENT_VIEWS), unless the window reaches back into the days a summary
    stands in for."""
    [(since,)] = con.sql("SELECT epoch_us(since) FROM _current_since").fetchall()
    covered = since is None or (cutoff is not None and microseconds(cutoff) >= since)
    return "_current_changes" if covered else "snapshots"


def estimates_sql(changes: str, where: str, *, now: datetime, cutoff: datetime | None, stall_after: timedelta) -> str:
    """SQL: for each Running task (of those ``where`` selects in ``tasks t``) with a Running snapshot of finite
    progress in ``changes`` (:func:`changes_view`), its progress, rate (percent per hour), ETA, since when its
    progress has not moved, and whether it stalled; see :func:`ftlog.analysis.eta`.

    The rate runs from the first Running snapshot from ``cutoff`` (None: the first) to the last poll (or the
    latest snapshot, if later), so a plateau lowers it; the ETA is that last sighting plus the time the rest takes
    at that rate (analysis.finish_time), NULL when the rate is not positive or the time is beyond years 1 to 9999.
    Times are worked out in microseconds, the ETA rounded half to even, as Python's ``timedelta(seconds=...)``."""
    recent = "TRUE" if cutoff is None else f"seen >= {microseconds(cutoff)}"
    every = "OVER (PARTITION BY task_id)"
    return f"""
        WITH running AS (
            SELECT s.task_id, s.run_progress AS progress, epoch_us(s.observed_at) AS seen,
                   epoch_us(greatest(coalesce(t.last_polled_at, t.observed_at), t.observed_at)) AS last_seen
            FROM {changes} s JOIN tasks t USING (task_id)
            WHERE t.run_status = 'Running' AND s.run_status = 'Running' AND isfinite(s.run_progress) AND {where}
        ), current AS (
            SELECT *, arg_max(progress, seen) {every} AS latest FROM running
        ), runs AS (  -- moved_at: the last time the progress differed from the current value
            SELECT *, max(seen) FILTER (WHERE progress != latest) {every} AS moved_at,
                   min(seen) FILTER (WHERE {recent}) {every} AS first_recent
            FROM current
        ), tasks_running AS (  -- the rate starts at the first recent snapshot, or else at the latest
            SELECT task_id, any_value(latest) AS run_progress, any_value(last_seen) AS last_seen,
                   min(seen) FILTER (WHERE moved_at IS NULL OR seen > moved_at) AS since,
                   coalesce(any_value(first_recent), max(seen)) AS start_at,
                   coalesce(any_value(progress) FILTER (WHERE seen = first_recent), any_value(latest)) AS start_progress
            FROM runs GROUP BY task_id
        ), rated AS (
            SELECT *, CASE WHEN last_seen > start_at
                      THEN (run_progress - start_progress) / ((last_seen - start_at) / 1e6 / 3600) END AS rate_per_hour
            FROM tasks_running
        ), timed AS (
            SELECT *, CASE WHEN rate_per_hour > 0 THEN greatest(100.0 - run_progress, 0.0) / rate_per_hour * 3600
                      END AS seconds
            FROM rated
        ), finished AS (
            SELECT *, CASE WHEN seconds < 1e12 THEN last_seen + trunc(seconds)::BIGINT * 1000000
                           + round_even((seconds - trunc(seconds)) * 1e6, 0)::BIGINT END AS eta_us
            FROM timed
        )
        SELECT task_id, run_progress, rate_per_hour,
               CASE WHEN eta_us BETWEEN {FIRST_US} AND {LAST_US} THEN make_timestamptz(eta_us) END AS eta,
               make_timestamptz(since) AS progress_since,
               {microseconds(now)} - since > {stall_after // MICROSECOND} AS stalled
        FROM finished
    """


# One row per task: the columns of `ftlog status` (STATUS_COLUMNS), ``eta`` and ``stalled`` NULL (those of
# :func:`estimates_sql` are for the tasks Running), and last ``recount`` where the task's latest snapshot carries no
# curve summary, so that ``best_loss`` is to be worked out from its checkpoints: the view ``_status``, which the
# present files hold written out (summary.MATERIALIZED). See :func:`ftlog.analysis.status`. In no order: the caller
# sorts by task_id, which is faster than DuckDB sorting every column (a third of the query at 10,000 tasks).
STATUS = "SELECT * FROM _status"
