"""DuckDB views over the dataset, defined as data. ``connect(data)`` is what notebooks, the CLI and reports use.

Every view de-duplicates on natural keys, so duplicate rows from overlapping collectors or an interrupted
compaction never show: a snapshot identical to the task's previous one is dropped, a checkpoint keeps its latest
value per (task_id, step), a poll appears once per poll_id.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from .schema import TABLES
from .store import Dataset

# name -> SQL. Sources are the raw tables ``_snapshots``, ``_checkpoints`` and ``_polls`` (created by connect()).
VIEWS: dict[str, str] = {
    "snapshots": """
        SELECT * EXCLUDE (prev_hash) FROM (
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
}
VIEW_ORDER = ["snapshots", "polls", "tasks", "checkpoints", "reported_metrics", "metrics", "metric_values",
              "status_changes"]  # fmt: skip


def ensure_views(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """(Re)create the source tables and every view; idempotent. Empty tables get typed empty sources."""
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
    ensure_views(con, dataset)
    return con
