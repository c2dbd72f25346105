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
    "checkpoints": """
        SELECT task_id, step, perplexity, training_loss, observed_at FROM _checkpoints
        QUALIFY row_number() OVER (PARTITION BY task_id, step ORDER BY observed_at DESC) = 1
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
VIEW_ORDER = ["snapshots", "polls", "tasks", "checkpoints", "reported_metrics", "metrics", "metric_values",
              "status_changes", "events", "deliveries"]  # fmt: skip


def ensure_views(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """(Re)create the source tables and every view; idempotent. Empty tables get typed empty sources."""
    dataset.register_with(con)
    for name, schema in TABLES.items():
        if dataset.files(name):
            con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * EXCLUDE (date) FROM {dataset.duckdb_source(name)}")
        else:
            con.register(f"_{name}_empty", schema.empty_table())
            con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * FROM _{name}_empty")
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
