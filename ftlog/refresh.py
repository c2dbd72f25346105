"""Keeping the summaries of the past (summary.py) current: after a collector's round compacts the closed days, the
summary of each table is extended by the days closed since it was written, or, when the days it covers changed
(a late write, a repair), rebuilt from every closed day. Either way from the stored rows alone, by the same rules
as the views (``views.marked_changes``, ``schema.Table.first``)."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .compat import arrow
from .errors import DataError
from .schema import DUCKDB, SNAPSHOTS, TABLES, Files, struct
from .store import Dataset
from .summary import (
    MANIFEST_KEY,
    MATERIALIZED,
    PRESENT_KEY,
    RUNNING_KEPT,
    SCHEMAS,
    SUMMARIZED,
    Manifest,
    Present,
    closed_files,
    listed_files,
    present_manifest,
    present_path,
    read_manifest,
    read_present,
    recent_days,
    summary_path,
)
from .views import current_definitions, marked_changes, table_files, view_statements

log = logging.getLogger(__name__)

ATTEMPTS = 3
METRICS_REPORTED = "len(metrics) > 0"  # as the metrics view
KEPT = int(RUNNING_KEPT.total_seconds())
ORDER = struct(("observed_at", "state_hash"))  # the order of a task's rows, as views.marked_changes takes them
KEY = ORDER  # with task_id, what tells a task's rows apart (candidates hold each row once)


def refresh_summaries(dataset: Dataset, now: datetime) -> None:
    """Bring the summary of each table of SUMMARIZED up to the day before the UTC day of ``now``: readers read the
    last two days whole, so that a window of a day's length (``analysis.eta``) is never summarised. A summary is
    only a cache, so a failure to write one is a warning: readers then read the whole history."""
    before = (now.astimezone(timezone.utc).date() - timedelta(days=1)).isoformat()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with duckdb.connect() as con:
                con.execute("SET TimeZone = 'UTC'")
                files = table_files(con, dataset)
                every = [found for name in SUMMARIZED if (found := files[name]) is not None and found.parts is None]
                if len(every) < len(SUMMARIZED):
                    return  # a table without files, or one left out: readers read every row
                for name, found in zip(SUMMARIZED, every, strict=True):
                    _refresh(con, dataset, name, found, before)
                _refresh_present(con, dataset, files)
            return
        except (DataError, duckdb.Error, OSError, pa.ArrowException) as exc:
            # Another collector's compaction or refresh changing the files meanwhile: the next attempt lists them
            # again. What persists (a read-only filesystem, no space) is worth a warning.
            if attempt == ATTEMPTS:
                log.warning("could not bring the summaries of %s up to date (%s); readers read the whole history",
                            dataset.display, exc)  # fmt: skip
            else:
                log.debug("summaries of %s: %s; trying again", dataset.display, exc)


def _refresh(con: duckdb.DuckDBPyConnection, dataset: Dataset, name: str, every: Files, before: str) -> None:
    partitions = listed_files(dataset, name)
    closed = closed_files(partitions, before)
    manifest = read_manifest(dataset, name)
    if manifest is not None and manifest.before == before and manifest.files == closed:
        return  # current
    extends = (
        manifest is not None
        and manifest.before <= before
        and closed_files(partitions, manifest.before) == manifest.files
    )
    path = summary_path(dataset, name)
    nothing = f"({DUCKDB.empty([(field.name, field.type) for field in SCHEMAS[name]])})"
    past = DUCKDB.read_file(dataset.uri(path)) if extends else nothing
    since = manifest.before if extends and manifest is not None else ""
    days = tuple((day, None) for day in sorted(closed) if day >= since)
    table = _summary(con, name, past, Files(every.folder, days) if days else None)
    _write(dataset, path, table, MANIFEST_KEY, Manifest(before, closed).to_json())


def _refresh_present(con: duckdb.DuckDBPyConnection, dataset: Dataset, files: dict[str, Files | None]) -> None:
    """Write the present files (summary.py) over every file the tables hold now, unless they cover them already:
    each table's summary rows, then the views of the present over those rows, all with the same manifest. The rows
    are the present files' own extended by the files written since (:func:`_extended`) where that is exact, which
    spares reading the days after the summary of the closed days; else that summary and those days."""
    if read_present(dataset) is not None:
        return
    listed = {name: listed_files(dataset, name) for name in SUMMARIZED}
    tables = _extended(con, dataset, files, listed) or _rebuilt(con, dataset, files)
    if tables is None:
        return
    latest = pc.max(tables["snapshots"].column("observed_at")).as_py()
    if latest is None:
        return  # no snapshot yet
    manifest = Present(listed, latest.isoformat()).to_json()
    for name, table in tables.items():
        _write(dataset, present_path(dataset, name), table, PRESENT_KEY, manifest)
    since = (latest - RUNNING_KEPT).isoformat()
    current = current_definitions({name: (dataset.uri(present_path(dataset, name)), since, None) for name in tables})
    for statement in view_statements(files, current=current):
        con.execute(statement)
    for name in MATERIALIZED:
        _write(dataset, present_path(dataset, name), arrow(con.sql(f"SELECT * FROM {name}")), PRESENT_KEY, manifest)


def _rebuilt(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, files: dict[str, Files | None]
) -> dict[str, pa.Table] | None:
    """Each table's summary rows over its summary of the closed days and the days after it; None without a summary
    that covers the files."""
    tables = {}
    for name in SUMMARIZED:
        found, covered = files[name], recent_days(dataset, name)
        if found is None or covered is None:
            return None
        days = tuple((day, None) for day in covered[1])
        past = DUCKDB.read_file(dataset.uri(summary_path(dataset, name)))
        tables[name] = _summary(con, name, past, Files(found.folder, days) if days else None)
    return tables


def _extended(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    files: dict[str, Files | None],
    listed: dict[str, dict[str, list[str]]],
) -> dict[str, pa.Table] | None:
    """Each table's summary rows as the present files hold them, extended by the files written since, as a summary
    of the closed days is extended by the days closed since: exact when every file they cover is still there and
    every snapshot of the files since is later than their latest snapshot (then no row is both in them and in the
    files since, and each task's new rows follow its summarised ones). None otherwise: a compaction or a repair
    changed files, or a collector stored rows of an earlier moment (a late or overlapping round), or there are no
    usable present files."""
    try:
        rows = {name: pq.read_table(present_path(dataset, name), filesystem=dataset.fs) for name in SUMMARIZED}
    except (OSError, pa.ArrowException) as exc:
        log.debug("present files not extended: %s", exc)
        return None
    # The manifest as the rows read carry it: another collector may have replaced the files since they were listed.
    texts = {(table.schema.metadata or {}).get(PRESENT_KEY) for table in rows.values()}
    present = present_manifest(texts.pop()) if len(texts) == 1 else None
    if present is None or any(rows[name].schema.remove_metadata() != SCHEMAS[name] for name in SUMMARIZED):
        return None
    tables = {}
    for name in SUMMARIZED:
        found, covered = files[name], present.files.get(name, {})
        if found is None or any(not set(names) <= set(listed[name].get(day, ())) for day, names in covered.items()):
            return None
        # (A listed name is "name:size:mtime", see listed_files.)
        since = tuple((day, entry.rsplit(":", 2)[0]) for day, names in sorted(listed[name].items())
                      for entry in names if entry not in covered.get(day, ()))  # fmt: skip
        stored = Files(found.folder, since) if since else None
        if name == "snapshots" and stored is not None:
            earlier = f"SELECT count(*) FROM ({DUCKDB.source(SNAPSHOTS, stored)}) WHERE (observed_at > ?) IS NOT TRUE"
            if con.execute(earlier, [datetime.fromisoformat(present.latest)]).fetchall()[0][0]:
                return None
        con.register(f"present_{name}", rows[name])
        tables[name] = _summary(con, name, f"present_{name}", stored)
    return tables


def _summary(con: duckdb.DuckDBPyConnection, name: str, past: str, files: Files | None) -> pa.Table:
    """The summary rows of table ``name`` over the summary rows ``past`` (a table expression) and the data
    ``files`` after them."""
    stored = f"({DUCKDB.source(TABLES[name].schema, files)})"
    sql = _snapshots_summary(past, stored) if name == "snapshots" else _polls_summary(past, stored)
    return arrow(con.sql(sql)).select(SCHEMAS[name].names).cast(SCHEMAS[name])


def _write(dataset: Dataset, path: str, table: pa.Table, key: bytes, manifest: bytes) -> None:
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({key: manifest}), buffer, compression="zstd")
    dataset.write_bytes(path, buffer.getvalue())


def _snapshots_summary(past: str, stored: str) -> str:
    """SQL: the summary rows of the snapshots, from the summary ``past`` and the stored rows after it."""
    seed = "SELECT DISTINCT task_id, last_hash FROM past"
    snapshots = TABLES["snapshots"]
    latest = snapshots.first
    return f"""
        WITH past AS (SELECT * FROM {past}),
        new AS ({marked_changes(stored, DUCKDB, seed)}),
        candidates AS (
            SELECT * EXCLUDE (last_hash) FROM past
            UNION ALL BY NAME SELECT * EXCLUDE (changed), changed AS in_view FROM new
        ),
        last AS (  -- the hash of each task's last row, which the first row of a later day is compared with
            SELECT task_id, arg_max(state_hash, {ORDER}) AS last_hash
            FROM new GROUP BY task_id
            UNION ALL
            SELECT * FROM ({seed}) WHERE task_id NOT IN (SELECT task_id FROM new)
        ),
        progress AS (  -- the changes that analysis.eta reads: Running, with a progress
            SELECT task_id, observed_at, {KEY} AS k, lag(run_progress) OVER w AS prev_progress,
                   lag({KEY}) OVER w AS prev_k, run_progress, state_hash
            FROM candidates WHERE in_view AND run_status = 'Running' AND isfinite(run_progress)
            WINDOW w AS (PARTITION BY task_id ORDER BY observed_at, state_hash)
        ),
        running AS (  -- the last of them, where the run of its progress value starts, and the one before
            SELECT task_id, arg_max(k, {ORDER}) AS last_running,
                   arg_max(k, {ORDER}) FILTER (WHERE prev_progress IS DISTINCT FROM run_progress) AS run_start,
                   arg_max(prev_k, {ORDER}) FILTER (WHERE prev_progress IS DISTINCT FROM run_progress) AS before_run
            FROM progress GROUP BY task_id
        ),
        -- Per task, the keys of the rows that can stand for it in the views of its present. (Keys, not rows: an
        -- aggregate's state holding a whole row costs kilobytes a task.)
        picked AS (
            SELECT task_id, [
                min_by({KEY}, observed_at) FILTER (WHERE in_view),  -- its first (first_seen_at)
                {latest(KEY, where="in_view")},  -- its latest change (tasks)
                {latest(KEY, where=f"in_view AND {METRICS_REPORTED}")},  -- the latest with metrics (metrics)
                {latest(KEY)},  -- its latest stored row (curves, compare)
                {latest(KEY, where=METRICS_REPORTED)}  -- the latest stored row with metrics (compare)
            ] AS keys
            FROM candidates GROUP BY task_id
            UNION ALL
            SELECT task_id, [last_running, run_start, before_run] FROM running  -- (eta)
            UNION ALL
            SELECT task_id, list(k) FROM progress  -- and every one of the last day (eta's window)
            WHERE observed_at >= (SELECT max(observed_at) FROM candidates) - INTERVAL '{KEPT} seconds'
            GROUP BY task_id
        ),
        chosen AS (
            SELECT DISTINCT task_id, k.observed_at, k.state_hash
            FROM (SELECT task_id, unnest(keys) AS k FROM picked) WHERE k IS NOT NULL
        )
        SELECT c.*, last.last_hash
        FROM candidates c SEMI JOIN chosen USING (task_id, observed_at, state_hash) JOIN last USING (task_id)
    """


def _polls_summary(past: str, stored: str) -> str:
    return f"""
        SELECT task_id, max(polled_at) AS last_polled_at FROM (
            SELECT task_id, last_polled_at AS polled_at FROM {past}
            UNION ALL SELECT task_id, polled_at FROM {stored}
        ) GROUP BY task_id
    """
