"""DuckDB views over the dataset, defined as data. ``connect(data)`` is what notebooks, the CLI and reports use.

Every view de-duplicates on natural keys, so duplicate rows from overlapping collectors or an interrupted
compaction never show: a snapshot identical to the task's previous one is dropped, a checkpoint keeps its latest
value per (task_id, step), a poll appears once per poll_id. The keys and which row stands for each are declared
once, in ``schema.TABLES``, and the SQL that applies them is generated there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from .compat import arrow, lambda_sql
from .errors import DataError, QueryError
from .schema import CURVE_SUMMARY, TABLES, struct
from .store import Dataset

T = TypeVar("T")
VANISHED_RETRIES = 5
SNAPSHOTS, CHECKPOINTS, EVENTS = TABLES["snapshots"], TABLES["checkpoints"], TABLES["events"]

# The attributes a curve is grouped by, per task as its latest snapshot holds them. Straight from the stored rows
# (a repeat of a state carries the same values), which spares the snapshots view's window function.
CURVE_ATTRIBUTES = ("job_id", "job_name", "model", "train_mode", "parameter_scale")
TASK_ATTRIBUTES = f"""
    SELECT task_id, unnest({SNAPSHOTS.first(struct(CURVE_ATTRIBUTES))}) FROM _snapshots GROUP BY task_id
"""

_SNAPSHOT_COLUMNS = lambda_sql("c", f"c NOT IN ('prev_hash', {', '.join(repr(c) for c in CURVE_SUMMARY)})")

# name -> SQL. Sources are the raw tables ``_snapshots``, ``_checkpoints`` and ``_polls`` (created by connect()).
VIEWS: dict[str, str] = {
    # The curve summary columns (schema.CURVE_SUMMARY) serve analysis.compare from ``_snapshots``; views leave
    # them out, since checkpoint values are the checkpoints view's to show (COLUMNS: older files lack them).
    "snapshots": f"""
        SELECT COLUMNS({_SNAPSHOT_COLUMNS}) FROM (
            SELECT *, lag(state_hash) OVER (PARTITION BY task_id ORDER BY observed_at, state_hash) AS prev_hash
            FROM ({SNAPSHOTS.distinct("_snapshots")})
        ) WHERE prev_hash IS DISTINCT FROM state_hash
    """,
    "polls": TABLES["polls"].distinct("_polls"),
    "tasks": f"""
        WITH latest AS (
            SELECT unnest({SNAPSHOTS.first("s")}), min(observed_at) AS first_seen_at FROM snapshots s GROUP BY task_id
        ), last_poll AS (SELECT task_id, max(polled_at) AS last_polled_at FROM polls GROUP BY task_id)
        SELECT latest.*, last_poll.last_polled_at FROM latest LEFT JOIN last_poll USING (task_id)
    """,
    # The latest value per (task_id, step). A collector's file holds each task's step once, and compaction marks
    # every repeat within its file as superseded, so a step can repeat only across files: for a task whose files'
    # step ranges are disjoint, every row already is the latest. Only tasks with overlapping ranges (a changed
    # value, overlapping collectors, an interrupted compaction) or with files of unknown make (superseded NULL,
    # written before the column existed) pay for de-duplication, which on every row would cost more than the scan.
    "checkpoints": f"""
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
            QUALIFY {CHECKPOINTS.rank()} = 1
        )
    """,
    # Every checkpoint with its task's current attributes, for curves across models, modes and scales.
    "curves": f"""
        SELECT c.task_id, a.job_id, a.job_name, a.model, a.train_mode, a.parameter_scale,
               c.step, c.training_loss, c.perplexity, c.observed_at
        FROM checkpoints c JOIN ({TASK_ATTRIBUTES}) a USING (task_id)
    """,
    "reported_metrics": f"""
        SELECT unnest({SNAPSHOTS.first("s")}) FROM snapshots s WHERE len(metrics) > 0 GROUP BY task_id
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
    "events": f"""
        SELECT task_id, kind, observed_at AS "at", details, event_id FROM _events QUALIFY {EVENTS.rank()} = 1
    """,
    "deliveries": TABLES["deliveries"].distinct("_deliveries"),
}
VIEW_ORDER = ["snapshots", "polls", "tasks", "checkpoints", "curves", "reported_metrics", "metrics", "metric_values",
              "status_changes", "events", "deliveries"]  # fmt: skip


def ensure_views(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """(Re)create the source tables and every view; idempotent. Empty tables get typed empty sources."""
    dataset.register_with(con)
    for name, table in TABLES.items():
        con.register(f"_{name}_empty", table.schema.empty_table())
        # Which file each row came from: the checkpoints view compares files' step ranges (see VIEWS).
        with_filename = name == "checkpoints"
        # One glob over the table while its columns bind as declared, which is the rule. A file that does not read,
        # or of another schema, fails or changes the binding: then the files are taken one by one, and those that
        # cannot be used are skipped with a warning (Dataset.usable), so one damaged file never stops a reader.
        if dataset.files(name):
            if _bind_source(con, name, dataset.duckdb_source(name, filename=with_filename)):
                continue
            sources = dataset.usable_sources(name)
            if sources:
                if _bind_source(con, name, dataset.duckdb_source(name, filename=with_filename, sources=sources)):
                    continue
                raise DataError(f"cannot read the {name} files of {dataset.display} as declared; run `ftlog check`")
        extra = ", NULL::VARCHAR AS filename" if with_filename else ""
        con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT *{extra} FROM _{name}_empty")
    for name in VIEW_ORDER:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {VIEWS[name]}")


def _bind_source(con: duckdb.DuckDBPyConnection, name: str, source: str) -> bool:
    """Make ``_name`` the rows of ``source``. False when they do not bind as the declared columns: a file that does
    not read or has another schema fails the binding, or widens a column's type, or adds a column. A file removed
    meanwhile raises, for :func:`retry_vanished` to list again."""
    try:
        con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * EXCLUDE (date) FROM {source}")
    except duckdb.Error as exc:
        if _vanished(exc):
            raise
        return False
    declared, bound = con.table(f"_{name}_empty"), con.table(f"_{name}")
    wanted = {column: str(kind) for column, kind in zip(declared.columns, declared.types, strict=True)}
    found = {column: str(kind) for column, kind in zip(bound.columns, bound.types, strict=True)}
    if any(wanted.get(column) != kind for column, kind in found.items() if column != "filename"):
        return False
    # Files written before a column was declared lack it; when every file does, add it as NULL.
    missing = [f"NULL::{kind} AS {column}" for column, kind in wanted.items() if column not in found]
    if missing:
        con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * EXCLUDE (date), {', '.join(missing)} FROM {source}")
    return True


def _vanished(exc: duckdb.Error) -> bool:
    """Whether DuckDB failed because a data file it had listed is gone (a compaction merged it meanwhile)."""
    text = str(exc)
    return isinstance(exc, duckdb.IOException) and ("No such file" in text or "FileNotFoundError" in text)


def connect(data: str | Path | Dataset = "data", *, confined: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every ftlog view over the dataset at ``data``.

    With ``confined`` (what ``ftlog query`` uses) the connection reads the dataset's files and nothing else: see
    :func:`confine`. Without it, it is a connection like any other, for notebooks.

    >>> con = connect("data")  # doctest: +SKIP
    >>> con.sql("SELECT run_status, count(*) FROM tasks GROUP BY ALL").df()  # doctest: +SKIP
    """
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Data files are immutable (a new name for every write), so their footers can be cached for the connection.
    con.execute("SET parquet_metadata_cache = true")
    retry_vanished(lambda: ensure_views(con, dataset))  # creating a view reads every file's schema
    if confined:
        confine(con, dataset)
    return con


def confine(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """Let ``con`` reach the files under the dataset's root and nothing else, for good: no other path or URL (the
    views read their files lazily, at each query, so the root stays open), no extension installed or loaded, no
    Python variable read as a table, and no setting changed afterwards, this one included.

    Within the root DuckDB could still write (``COPY ... TO``), and a statement could still change the catalog:
    :func:`require_select` rejects every statement that is not a query."""
    root = dataset.root if dataset.is_local else f"{dataset.scheme}://{dataset.root}"  # as duckdb_source names it
    con.execute("SET allowed_directories = $1", [[root + "/"]])
    for setting in (
        "enable_external_access = false",  # files and URLs outside allowed_directories, INSTALL, LOAD, ATTACH
        "autoinstall_known_extensions = false",
        "autoload_known_extensions = false",
        "python_enable_replacements = false",  # `FROM name` never reads a Python object of the caller
        "lock_configuration = true",  # last: no SET or RESET can undo the above
    ):
        con.execute(f"SET {setting}")


def require_select(sql: str) -> None:
    """Raise QueryError unless every statement of ``sql`` is a query (SELECT, FROM-first, WITH, VALUES, DESCRIBE,
    SHOW, SUMMARIZE, TABLE). A statement that does not parse raises DuckDB's own parser error."""
    for statement in duckdb.extract_statements(sql):
        if statement.type != duckdb.StatementType.SELECT:
            raise QueryError(
                f"ftlog query runs read-only queries (SELECT) over the views, not {statement.type.name} statements;"
                " for anything else use ftlog.connect() in Python"
            )


def retry_vanished(run: Callable[[], T], attempts: int = VANISHED_RETRIES) -> T:
    """``run()``, run again when a compaction removed a data file between DuckDB listing the files and opening one.

    Compaction writes the merged file before it removes the sources, so the next listing finds every row: only the
    list DuckDB made at the start of the query was stale. No storage layout can avoid this (any removal can follow
    a listing), so readers absorb it, as they absorb the duplicates compaction briefly leaves."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except duckdb.IOException as exc:
            if attempt == attempts or not _vanished(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run one query over the views as an Arrow table, safe against a concurrent compaction."""
    return retry_vanished(lambda: arrow(con.sql(sql, params=list(params) if params else None)))
