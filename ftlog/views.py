"""DuckDB views over the dataset, defined as data. ``connect(data)`` is what notebooks, the CLI and reports use.

Every view de-duplicates on natural keys, so duplicate rows from overlapping collectors or an interrupted
compaction never show: a snapshot identical to the task's previous one is dropped, a checkpoint keeps its latest
value per (task_id, step), a poll appears once per poll_id. The keys and which row stands for each are declared
once, in ``schema.TABLES``, and the SQL that applies them is generated there.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from .compat import arrow
from .errors import DataError, QueryError
from .redact import printable
from .schema import CURVE_SUMMARY, DUCKDB, TABLES, TS, Dialect, Files, struct
from .spark import SPARK
from .store import Dataset
from .summary import (
    MATERIALIZED,
    RUNNING_KEPT,
    SUMMARIZED,
    SUMMARY_DIR,
    present_path,
    read_present,
    recent_days,
    summary_path,
)

T = TypeVar("T")
VANISHED_RETRIES = 5
SNAPSHOTS, CHECKPOINTS, EVENTS = TABLES["snapshots"], TABLES["checkpoints"], TABLES["events"]
ACTIONS = TABLES["actions"]
DIALECTS = {dialect.name: dialect for dialect in (DUCKDB, SPARK)}  # ftlog sql --engine NAME (config.SQL_ENGINES)

# The attributes a curve is grouped by, per task as its latest snapshot holds them. Straight from the stored rows
# (a repeat of a state carries the same values), which spares the snapshots view's window function.
CURVE_ATTRIBUTES = ("job_id", "job_name", "model", "train_mode", "parameter_scale")
# The curve summary columns (schema.CURVE_SUMMARY) serve analysis.compare from ``_snapshots``; the view leaves them
# out, since checkpoint values are the checkpoints view's to show.
SNAPSHOT_COLUMNS = tuple(column for column in SNAPSHOTS.schema.names if column not in CURVE_SUMMARY)
WITH_FILENAME = ("checkpoints",)  # the raw tables that carry each row's file: see the checkpoints view
GROUP_COLUMNS = ("model", "train_mode", "parameter_scale", "job_id", "job_name", "run_status")  # analysis.compare
METRICS = ("bleu_4", "rouge_1", "rouge_2", "rouge_l")
# The columns of a task's latest stored row that _latest_states keeps (the last two only for ``recount``).
LATEST_STATE = (
    *GROUP_COLUMNS,
    *CURVE_SUMMARY[1:],
    "last_step",
    "checkpoint_count",
)


def task_attributes(d: Dialect = DUCKDB) -> str:
    """SQL: per task, its CURVE_ATTRIBUTES."""
    latest = SNAPSHOTS.first(struct(CURVE_ATTRIBUTES, d), dialect=d)
    return d.spread([("task_id", "task_id"), (latest, None)], "_current_snapshots GROUP BY task_id")


TASK_ATTRIBUTES = task_attributes()


# After snapshots and polls. _current_since: when the rows read whole begin (NULL: every row is read).
CURRENT_VIEWS = ["_current_snapshots", "_current_changes", "_current_polls", "_current_since", "_latest_states"]


def marked_changes(source: str, d: Dialect = DUCKDB, seed: str | None = None) -> str:
    """SQL: the stored snapshot rows of ``source`` (a table expression), a row stored twice once, each with
    ``changed``: whether it changes its task's state, its state_hash differing from the task's previous row's (in
    order of observed_at, then state_hash). ``seed``: a query of (task_id, last_hash), the hash of the row before
    the first of ``source`` (see summary.py)."""
    previous = "lag(state_hash) OVER (PARTITION BY task_id ORDER BY observed_at, state_hash) AS prev_hash"
    rows = f"SELECT *, {previous} FROM ({SNAPSHOTS.distinct(source, d)})"
    if seed is None:
        columns = ", ".join(SNAPSHOTS.schema.names)
        return f"SELECT {columns}, prev_hash IS DISTINCT FROM state_hash AS changed FROM ({rows})"
    columns = ", ".join(f"r.{column}" for column in SNAPSHOTS.schema.names)
    changed = "coalesce(r.prev_hash, seed.last_hash) IS DISTINCT FROM r.state_hash AS changed"
    return f"SELECT {columns}, {changed} FROM ({rows}) r LEFT JOIN ({seed}) seed ON seed.task_id = r.task_id"


def current_definitions(summaries: Mapping[str, tuple[str, str, Files | None]], d: Dialect = DUCKDB) -> dict[str, str]:
    """The views of CURRENT_VIEWS over summaries of the past (summary.py): ``summaries`` maps a table to its
    summary file, the time from which every change of a Running task's progress is in the summary or in the files
    read whole (analysis.eta), and those files (None: none)."""
    definitions = {}
    if "snapshots" in summaries:
        summary, since, recent = summaries["snapshots"]
        definitions["_current_since"] = f"SELECT CAST({d.string(since)} AS {d.type(TS)}) AS since"
        past = d.read_file(summary)
        columns = ", ".join(SNAPSHOTS.schema.names)
        stored = f"({d.source(SNAPSHOTS.schema, recent)})"
        seed = f"SELECT DISTINCT task_id, last_hash FROM {past}"
        definitions["_current_snapshots"] = (
            f"SELECT {columns} FROM {past} UNION ALL {d.source(SNAPSHOTS.schema, recent)}"
        )
        definitions["_current_changes"] = (
            f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM {past} WHERE in_view UNION ALL "
            f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM ({marked_changes(stored, d, seed)}) WHERE changed"
        )
    if "polls" in summaries:
        summary, _, recent = summaries["polls"]
        definitions["_current_polls"] = (
            f"SELECT task_id, last_polled_at AS polled_at FROM {d.read_file(summary)} UNION ALL "
            f"SELECT task_id, polled_at FROM ({d.source(TABLES['polls'].schema, recent)})"
        )
    return definitions


@functools.cache
def view_definitions(d: Dialect = DUCKDB) -> dict[str, str]:
    """name -> the SQL of each view, in dialect ``d``. Sources are the raw tables ``_snapshots``, ``_checkpoints``,
    ``_polls``, ``_events``, ``_deliveries`` and ``_actions``: every stored row, as declared (see
    :func:`view_statements`)."""
    latest = SNAPSHOTS.first(d.row("s"), dialect=d)
    by_task = "_current_changes s GROUP BY task_id"
    point = "task_id, step, perplexity, training_loss, observed_at"
    with_metrics = f"{d.length('metrics')} > 0"
    action_columns = ", ".join(f"acted_at AS {d.quote('at')}" if name == "acted_at" else name
                               for name in ACTIONS.schema.names)  # fmt: skip
    latest_states = [
        ("task_id", "task_id"),
        (SNAPSHOTS.first(struct(LATEST_STATE, d), dialect=d), None),
        (SNAPSHOTS.first(struct(METRICS, d), where=with_metrics, dialect=d), None),
    ]
    views = {
        "snapshots": f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM ({marked_changes('_snapshots', d)}) WHERE changed",
        "polls": TABLES["polls"].distinct("_polls", d),
        # What can stand for each task's present: every row, unless a summary of the past stands in for most (see
        # current_definitions).
        "_current_snapshots": "SELECT * FROM _snapshots",
        "_current_changes": "SELECT * FROM snapshots",
        "_current_polls": "SELECT task_id, polled_at FROM polls",
        "_current_since": f"SELECT CAST(NULL AS {d.type(TS)}) AS since",
        # Per task, for analysis.compare: the group columns, status and metrics of its latest stored row (a repeat
        # of a state holds its values, so the stored rows serve without the snapshots view's window), the curve
        # summary it carries, and ``recount`` where that summary is missing (a file of an older ftlog).
        "_latest_states": f"""
            SELECT task_id, {", ".join(LATEST_STATE[:-2])}, {", ".join(METRICS)},
                   last_step IS NULL AND checkpoint_count > 0 AS recount
            FROM ({d.spread(latest_states, "_current_snapshots GROUP BY task_id")})
        """,
        "tasks": f"""
            WITH latest AS (
                {d.spread([(latest, None), ("min(observed_at)", "first_seen_at")], by_task)}
            ), last_poll AS (SELECT task_id, max(polled_at) AS last_polled_at FROM _current_polls GROUP BY task_id)
            SELECT latest.*, last_poll.last_polled_at FROM latest LEFT JOIN last_poll USING (task_id)
        """,
        # What `ftlog status` shows per task but its ETA and stall (light.STATUS), written out with the present
        # files so that it reads one file; ``recount`` where the latest row carries no curve summary (older files).
        "_status": f"""
            SELECT t.task_id, t.job_id, t.model, t.train_mode, t.parameter_scale, t.run_status, t.run_progress,
                   CAST(NULL AS {d.type(TS)}) AS eta, CAST(NULL AS BOOLEAN) AS stalled, l.best_loss,
                   t.observed_at AS last_change, t.last_polled_at, l.recount
            FROM tasks t LEFT JOIN _latest_states l USING (task_id)
        """,
        # The latest value per (task_id, step). A collector's file holds each task's step once, and compaction marks
        # every repeat within its file as superseded, so a step can repeat only across files: for a task whose files'
        # step ranges are disjoint, every row already is the latest. Only tasks with overlapping ranges (a changed
        # value, overlapping collectors, an interrupted compaction) or with files of unknown make (superseded NULL,
        # written before the column existed) pay for de-duplication, which on every row would cost more than the scan.
        "checkpoints": f"""
            WITH candidates AS {d.inline}(
                SELECT {point}, superseded, filename FROM _checkpoints WHERE superseded IS NOT TRUE
            ), spans AS (
                SELECT task_id, filename, min(step) AS low, max(step) AS high, bool_or(superseded IS NULL) AS unknown
                FROM candidates GROUP BY task_id, filename
            ), mixed AS (
                SELECT task_id FROM spans WHERE unknown
                UNION
                SELECT a.task_id FROM spans a JOIN spans b
                    ON a.task_id = b.task_id AND a.filename < b.filename AND a.low <= b.high AND b.low <= a.high
            )
            SELECT {point} FROM candidates {d.anti_join} mixed USING (task_id)
            UNION ALL (
                {d.qualify(point, f"candidates {d.semi_join} mixed USING (task_id)", CHECKPOINTS.rank(d))}
            )
        """,
        # Every checkpoint with its task's current attributes, for curves across models, modes and scales.
        "curves": f"""
            SELECT c.task_id, a.job_id, a.job_name, a.model, a.train_mode, a.parameter_scale,
                   c.step, c.training_loss, c.perplexity, c.observed_at
            FROM checkpoints c JOIN ({task_attributes(d)}) a USING (task_id)
        """,
        "reported_metrics": d.spread([(latest, None)], f"_current_changes s WHERE {with_metrics} GROUP BY task_id"),
        "metrics": """
            SELECT task_id, job_id, model, train_mode, parameter_scale, bleu_4, rouge_1, rouge_2, rouge_l, observed_at
            FROM reported_metrics
        """,
        "metric_values": f"""
            SELECT task_id, m.metric AS metric, m.value AS value, observed_at
            FROM (SELECT task_id, observed_at, {d.explode("metrics")} AS m FROM reported_metrics)
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
        "events": d.qualify(
            f"task_id, kind, observed_at AS {d.quote('at')}, details, event_id", "_events", EVENTS.rank(d)
        ),
        "deliveries": TABLES["deliveries"].distinct("_deliveries", d),
        # Collectors tripping the same rule derive the same action_id: keep the first sighting of each outcome.
        "actions": d.qualify(action_columns, "_actions", ACTIONS.rank(d)),
    }
    return {name: textwrap.dedent(sql).strip() for name, sql in views.items()}


VIEWS = view_definitions()  # ftlog's own, in DuckDB
VIEW_ORDER = ["snapshots", "polls", "tasks", "_status", "checkpoints", "curves", "reported_metrics", "metrics",
              "metric_values", "status_changes", "events", "deliveries", "actions"]  # fmt: skip


def view_statements(
    files: Mapping[str, Files | None], d: Dialect = DUCKDB, current: Mapping[str, str] | None = None
) -> list[str]:
    """The statements that create every view, in dialect ``d``, over the data ``files`` of each table (None or
    absent: the table has none, and its raw table is empty): first the raw tables ``_<table>`` (every
    stored row as declared, see ``Dialect.source``), then the views of VIEW_ORDER and CURRENT_VIEWS, those
    over every row unless ``current`` defines them otherwise (current_definitions). ftlog runs them in DuckDB
    (:func:`ensure_views`), and ``ftlog sql`` prints them for other sessions and engines (:func:`sql_script`)."""
    statements = []
    for name, table in TABLES.items():
        statements += d.create_source(f"_{name}", table.schema, files.get(name), filename=name in WITH_FILENAME)
    definitions = view_definitions(d) | dict(current or {})
    order = [*VIEW_ORDER[:2], *CURRENT_VIEWS, *VIEW_ORDER[2:]]
    return statements + [d.create_view(name, definitions[name]) for name in order]


def ensure_views(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """(Re)create the raw tables and every view; idempotent. The views of a task's present read the summaries of
    the past where they cover the files (summary.py)."""
    files = table_files(con, dataset)
    for statement in view_statements(files, current=present_definitions(dataset, files)):
        con.execute(statement)


def present_definitions(dataset: Dataset, files: Mapping[str, Files | None]) -> dict[str, str]:
    """The definitions of the views of the present that the summaries allow (summary.py): from the present files
    as they are while the tables hold the files they cover; else over each table's summary of the closed days and
    the days after it; else none (every row is read)."""
    if any((found := files[name]) is None or found.parts is not None for name in SUMMARIZED):  # (files left out)
        return {}
    present = read_present(dataset)
    if present is not None:
        since = (datetime.fromisoformat(present.latest) - RUNNING_KEPT).isoformat()
        summaries: dict[str, tuple[str, str, Files | None]] = {
            name: (dataset.uri(present_path(dataset, name)), since, None) for name in SUMMARIZED
        }
        written = {name: f"SELECT * FROM {DUCKDB.read_file(dataset.uri(present_path(dataset, name)))}"
                   for name in MATERIALIZED}  # fmt: skip
        return current_definitions(summaries) | written
    summaries = {}
    for name in SUMMARIZED:
        found, covered = files[name], recent_days(dataset, name)
        if found is not None and covered is not None:
            recent = Files(found.folder, tuple((day, None) for day in covered[1])) if covered[1] else None
            summaries[name] = (dataset.uri(summary_path(dataset, name)), f"{covered[0].before} 00:00:00+00", recent)
    return current_definitions(summaries)


def table_files(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> dict[str, Files | None]:
    """Which data files each table's raw table reads (None: the table has no usable file).

    Every data file while they all bind as declared, which is the rule. A file that does not read, or of another
    schema, fails or changes the binding: then the files are taken one by one, and those that cannot be used are
    left out with a warning (Dataset.usable), so one damaged file never stops a reader. Reads each file's schema
    through ``con``, which is given the dataset's filesystem for an object store."""
    dataset.register_with(con)
    found: dict[str, Files | None] = {}
    for name in TABLES:
        found[name] = None
        if not dataset.files(name):
            continue
        every = Files(dataset.uri(dataset.path(name)))
        if _binds(con, name, every):
            found[name] = every
            continue
        usable = Files(every.folder, tuple(dataset.usable_parts(name)))
        if usable.parts:
            if not _binds(con, name, usable):
                raise DataError(f"cannot read the {name} files of {dataset.display} as declared; run `ftlog check`")
            found[name] = usable
    return found


def _binds(con: duckdb.DuckDBPyConnection, name: str, files: Files) -> bool:
    """Whether ``files`` bind as the declared columns of table ``name``. Not when a file does not read or has
    another schema: it fails the binding, or gives a column another type, or adds a column. Columns that every file
    lacks are fine: they were declared after the files were written, and the raw table has them as NULL. A file
    removed meanwhile raises, for :func:`retry_vanished` to list again."""
    try:
        found = con.sql(f"SELECT * EXCLUDE (date) FROM {DUCKDB.read_parquet(files)}")
    except duckdb.Error as exc:
        if _vanished(exc):
            raise
        return False
    declared = con.sql(DUCKDB.empty([(field.name, field.type) for field in TABLES[name].schema]))
    wanted = {column: str(kind) for column, kind in zip(declared.columns, declared.types, strict=True)}
    return all(wanted.get(column) == str(kind) for column, kind in zip(found.columns, found.types, strict=True))


def _vanished(exc: duckdb.Error) -> bool:
    """Whether DuckDB failed because a file it had opened changed meanwhile: a data file it had listed is gone (a
    compaction merged it), an I/O error on a local file or the FileNotFoundError of an object store's filesystem,
    which DuckDB passes on as its generic error; or a summary (summary.py), which a collector replaces whole, was
    replaced between DuckDB reading its footer and its rows."""
    text = str(exc)
    vanished = ("No such file" in text and isinstance(exc, duckdb.IOException)) or "FileNotFoundError" in text
    return vanished or f"/{SUMMARY_DIR}/" in text or "TProtocolException" in text


def connect(data: str | Path | Dataset = "data", *, confined: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every ftlog view over the dataset at ``data``.

    With ``confined`` (what ``ftlog query`` uses) the connection reads the dataset's files and nothing else: see
    :func:`confine`. Without it, it is a connection like any other, for notebooks.

    >>> con = connect("data")  # doctest: +SKIP
    >>> con.sql("SELECT run_status, count(*) FROM tasks GROUP BY ALL").df()  # doctest: +SKIP
    """
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    con = duckdb.connect()
    for setting in DUCKDB.session():  # times in UTC, as the printed statements set them too
        con.execute(setting)
    # Data files are immutable (a new name for every write), so their footers can be cached for the connection.
    con.execute("SET parquet_metadata_cache = true")
    retry_vanished(lambda: ensure_views(con, dataset))  # creating a view reads every file's schema
    if confined:
        confine(con, dataset)
    return con


def sql_script(data: str | Path | Dataset, engine: str = "duckdb") -> str:
    """The statements that register every ftlog view over the dataset at ``data`` in another session of ``engine``
    (a name of DIALECTS), as one script: what ``ftlog sql`` prints. They are ftlog's own (see
    :func:`view_statements`), over the files ftlog would read now; only comments say what a session needs besides.

    >>> con = duckdb.connect()  # doctest: +SKIP
    >>> con.execute(sql_script("data"))  # doctest: +SKIP
    >>> con.sql("SELECT count(*) FROM tasks").fetchall()  # doctest: +SKIP
    """
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    d = DIALECTS[engine]
    with duckdb.connect() as con:
        files = retry_vanished(lambda: table_files(con, dataset))
    notes = [
        f"ftlog views over {dataset.display}, generated by ftlog from its own view definitions: the same names,",
        "columns, types and de-duplication as ftlog.connect() and `ftlog query`. Every stored row is in the raw",
        "tables _snapshots, _checkpoints, _polls, _events, _deliveries and _actions, duplicates included.",
    ]
    if not dataset.is_local:
        notes += d.storage_notes(dataset.display, dataset.scheme)
    for name, found in files.items():
        if found is None:
            notes.append(f"{name}: no usable files yet, so _{name} is empty; print the statements again once it has.")
        elif found.parts is not None:
            notes.append(f"{name}: some files are left out, as ftlog leaves them out (`ftlog check` says why); print "
                         "the statements again after `ftlog check --repair`.")  # fmt: skip
    lines = [f"-- {printable(note)}".rstrip() for note in notes]  # a line break in a path must not end the comment
    return "\n".join(lines) + "\n" + ";\n\n".join([*d.session(), *view_statements(files, d)]) + ";\n"


def confine(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> None:
    """Let ``con`` reach the files under the dataset's root and nothing else, for good: no other path or URL (the
    views read their files lazily, at each query, so the root stays open), no extension installed or loaded, no
    Python variable read as a table, and no setting changed afterwards, this one included.

    Within the root DuckDB could still write (``COPY ... TO``), and a statement could still change the catalog:
    :func:`require_select` rejects every statement that is not a query."""
    root = dataset.uri(dataset.root)  # as the views name the files
    # DuckDB checks a glob as written as well as the files it finds: a root with glob characters is allowed in both
    # forms (the escaped one names no other folder unless one is named so, a name no one gives a folder).
    allowed = sorted({root + "/", DUCKDB.literal(root) + "/"})
    con.execute("SET allowed_directories = $1", [allowed])
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
        except duckdb.Error as exc:
            if attempt == attempts or not _vanished(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run one query over the views as an Arrow table, safe against a concurrent compaction."""
    return retry_vanished(lambda: arrow(con.sql(sql, params=list(params) if params else None)))
