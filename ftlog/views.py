"""DuckDB views over the dataset, defined as data. ``connect(data)`` is what notebooks, the CLI and reports use.

Every view de-duplicates on natural keys, so duplicate rows from overlapping collectors or an interrupted
compaction never show: a snapshot identical to the task's previous one is dropped, a checkpoint keeps its latest
value per (task_id, step), a poll appears once per poll_id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from .schema import CURVE_SUMMARY, TABLES
from .store import Dataset

T = TypeVar("T")
# DuckDB 1.3 brought ``lambda c: ...``; 2.0 rejects the older ``c -> ...``.
_LAMBDA = "lambda c:" if tuple(int(p) for p in duckdb.__version__.split(".")[:2]) >= (1, 3) else "c ->"
VANISHED_RETRIES = 5

# The attributes a curve is grouped by, per task as its latest snapshot holds them. Straight from the stored rows
# (a repeat of a state carries the same values), which spares the window functions of the tasks view.
CURVE_ATTRIBUTES = ("job_id", "job_name", "model", "train_mode", "parameter_scale")
TASK_ATTRIBUTES = f"""
    SELECT task_id, unnest(arg_min(
        {{{", ".join(f"'{c}': {c}" for c in CURVE_ATTRIBUTES)}}},
        {{'at': -epoch_us(observed_at), 'hash': state_hash}}  -- the latest; ties broken as the tasks view does
    )) FROM _snapshots GROUP BY task_id
"""

# name -> SQL. Sources are the raw tables ``_snapshots``, ``_checkpoints`` and ``_polls`` (created by connect()).
VIEWS: dict[str, str] = {
    # The curve summary columns (schema.CURVE_SUMMARY) serve analysis.compare from ``_snapshots``; views leave
    # them out, since checkpoint values are the checkpoints view's to show (COLUMNS: older files lack them).
    "snapshots": f"""
        SELECT COLUMNS({_LAMBDA} c NOT IN ('prev_hash', {", ".join(f"'{c}'" for c in CURVE_SUMMARY)})) FROM (
            SELECT *, lag(state_hash) OVER (PARTITION BY task_id ORDER BY observed_at, state_hash) AS prev_hash
            FROM (SELECT DISTINCT ON (task_id, observed_at, state_hash) * FROM _snapshots)
        ) WHERE prev_hash IS DISTINCT FROM state_hash
    """,
    "polls": "SELECT DISTINCT ON (poll_id) * FROM _polls",
    "tasks": """
        WITH ranked AS (
            SELECT *, min(observed_at) OVER (PARTITION BY task_id) AS first_seen_at,
                   row_number() OVER (PARTITION BY task_id ORDER BY observed_at DESC, state_hash) AS rn
            FROM snapshots
        ), last_poll AS (SELECT task_id, max(polled_at) AS last_polled_at FROM polls GROUP BY task_id)
        SELECT ranked.* EXCLUDE (rn), last_poll.last_polled_at
        FROM ranked LEFT JOIN last_poll USING (task_id) WHERE rn = 1
    """,
    # The latest value per (task_id, step). A collector's file holds each task's step once, and compaction marks
    # every repeat within its file as superseded, so a step can repeat only across files: for a task whose files'
    # step ranges are disjoint, every row already is the latest. Only tasks with overlapping ranges (a changed
    # value, overlapping collectors, an interrupted compaction) or with files of unknown make (superseded NULL,
    # written before the column existed) pay for de-duplication, which on every row would cost more than the scan.
    "checkpoints": """
        WITH candidates AS (
            SELECT task_id, step, perplexity, training_loss, observed_at, superseded, filename FROM _checkpoints
            WHERE superseded IS NOT TRUE
        ), spans AS (
            SELECT task_id, filename, min(step) AS low, max(step) AS high, bool_or(superseded IS NULL) AS unknown
            FROM candidates GROUP BY task_id, filename
        ), mixed AS (
            SELECT task_id FROM spans WHERE unknown
            UNION
            SELECT a.task_id FROM spans a JOIN spans b
                ON a.task_id = b.task_id AND a.filename < b.filename AND a.low <= b.high AND b.low <= a.high
        )
        SELECT task_id, step, perplexity, training_loss, observed_at FROM candidates ANTI JOIN mixed USING (task_id)
        UNION ALL (
            SELECT task_id, step, perplexity, training_loss, observed_at FROM candidates SEMI JOIN mixed USING (task_id)
            QUALIFY row_number() OVER (PARTITION BY task_id, step ORDER BY observed_at DESC) = 1
        )
    """,
    # Every checkpoint with its task's current attributes, for curves across models, modes and scales.
    "curves": f"""
        SELECT c.task_id, a.job_id, a.job_name, a.model, a.train_mode, a.parameter_scale,
               c.step, c.training_loss, c.perplexity, c.observed_at
        FROM checkpoints c JOIN ({TASK_ATTRIBUTES}) a USING (task_id)
    """,
    "reported_metrics": """
        SELECT * FROM snapshots WHERE len(metrics) > 0
        QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY observed_at DESC) = 1
    """,
    "metrics": """
        SELECT task_id, job_id, model, train_mode, parameter_scale, bleu_4, rouge_1, rouge_2, rouge_l, observed_at
        FROM reported_metrics
    """,
    "metric_values": """
        SELECT task_id, m.metric AS metric, m.value AS value, observed_at
        FROM (SELECT task_id, observed_at, unnest(metrics) AS m FROM reported_metrics)
    """,
    "status_changes": """
        SELECT task_id, from_status, run_status AS to_status, observed_at AS changed_at FROM (
            SELECT task_id, run_status, observed_at,
                   lag(run_status) OVER (PARTITION BY task_id ORDER BY observed_at) AS from_status,
                   row_number() OVER (PARTITION BY task_id ORDER BY observed_at) AS nth
            FROM snapshots
        ) WHERE nth = 1 OR from_status IS DISTINCT FROM run_status
    """,
    # Overlapping or restarted collectors derive the same event_id for the same event: keep its first sighting.
    "events": """
        SELECT task_id, kind, observed_at AS "at", details, event_id FROM _events
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY observed_at, details) = 1
    """,
    "deliveries": "SELECT DISTINCT ON (event_id, target, attempted_at, outcome) * FROM _deliveries",
}
VIEW_ORDER = ["snapshots", "polls", "tasks", "checkpoints", "curves", "reported_metrics", "metrics", "metric_values",
              "status_changes", "events", "deliveries"]  # fmt: skip


def ensure_views(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """(Re)create the source tables and every view; idempotent. Empty tables get typed empty sources."""
    dataset.register_with(con)
    for name, schema in TABLES.items():
        con.register(f"_{name}_empty", schema.empty_table())
        # Which file each row came from: the checkpoints view compares files' step ranges (see VIEWS).
        with_filename = name == "checkpoints"
        if not dataset.files(name):
            extra = ", NULL::VARCHAR AS filename" if with_filename else ""
            con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT *{extra} FROM _{name}_empty")
            continue
        source = dataset.duckdb_source(name, filename=with_filename)
        con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * EXCLUDE (date) FROM {source}")
        # Files written before a column was declared lack it; when every file does, add it as NULL.
        present = set(con.table(f"_{name}").columns)
        declared = con.table(f"_{name}_empty")
        missing = [
            f"NULL::{kind} AS {column}"
            for column, kind in zip(declared.columns, declared.types, strict=True)
            if column not in present
        ]
        if missing:
            con.execute(
                f"CREATE OR REPLACE VIEW _{name} AS SELECT * EXCLUDE (date), {', '.join(missing)} FROM {source}"
            )
    for name in VIEW_ORDER:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {VIEWS[name]}")


def connect(data: str | Path | Dataset = "data") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every ftlog view over the dataset at ``data``.

    >>> con = connect("data")  # doctest: +SKIP
    >>> con.sql("SELECT run_status, count(*) FROM tasks GROUP BY ALL").df()  # doctest: +SKIP
    """
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Data files are immutable (a new name for every write), so their footers can be cached for the connection.
    con.execute("SET parquet_metadata_cache = true")
    retry_vanished(lambda: ensure_views(con, dataset))  # creating a view reads every file's schema
    return con


def retry_vanished(run: Callable[[], T], attempts: int = VANISHED_RETRIES) -> T:
    """``run()``, run again when a compaction removed a data file between DuckDB listing the files and opening one.

    Compaction writes the merged file before it removes the sources, so the next listing finds every row: only the
    list DuckDB made at the start of the query was stale. No storage layout can avoid this (any removal can follow
    a listing), so readers absorb it, as they absorb the duplicates compaction briefly leaves."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except duckdb.IOException as exc:
            text = str(exc)
            if attempt == attempts or not ("No such file" in text or "FileNotFoundError" in text):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run one query over the views as an Arrow table, safe against a concurrent compaction."""

    def run() -> pa.Table:
        relation = con.sql(sql, params=list(params) if params else None)
        fetch_arrow = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table  # renamed in 1.4
        return fetch_arrow()

    return retry_vanished(run)
