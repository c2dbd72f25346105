"""The tables of the dataset, one record each (``TABLES``): declared pyarrow schema, time column, natural key,
which row of a key the views keep, columns added later. Writers, readers, compaction, ``ftlog check`` and the views
all take their rules from here; the SQL that applies a rule is generated here too, so each rule is written once.

API payloads become rows in ``ftlog/normalise.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
TERMINAL_STATUSES = ("Done", "Failed", "Stopped")
DATA_FILES = "[!._]*.parquet"  # a partition's data files: like Hive and pyarrow, skip names starting "_" or "."
# A summary of an answer's checkpoints that each snapshot carries (normalise.curve_summary), so that compare()
# need not read every checkpoint.
CURVE_SUMMARY = ("last_step", "final_loss", "best_loss", "final_perplexity", "best_perplexity")

SNAPSHOTS = pa.schema(
    [
        ("task_id", pa.string()),
        ("job_id", pa.string()),
        ("job_name", pa.string()),
        ("job_description", pa.string()),
        ("model", pa.string()),
        ("train_mode", pa.string()),
        ("parameter_scale", pa.string()),
        ("run_status", pa.string()),
        ("run_progress", pa.float64()),
        ("vdl_link", pa.string()),
        ("create_time", TS),
        ("finish_time", TS),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("bleu_4", pa.float64()),
        ("rouge_1", pa.float64()),
        ("rouge_2", pa.float64()),
        ("rouge_l", pa.float64()),
        ("metrics", pa.list_(pa.struct([("metric", pa.string()), ("value", pa.float64())]))),
        ("checkpoint_count", pa.int32()),
        # CURVE_SUMMARY
        ("last_step", pa.int64()),
        ("final_loss", pa.float64()),
        ("best_loss", pa.float64()),
        ("final_perplexity", pa.float64()),
        ("best_perplexity", pa.float64()),
        ("observed_at", TS),
        ("request_id", pa.string()),
        ("state_hash", pa.string()),
        ("raw", pa.string()),
    ]
)
CHECKPOINTS = pa.schema(
    [
        ("task_id", pa.string()),
        ("step", pa.int64()),
        ("perplexity", pa.float64()),
        ("training_loss", pa.float64()),
        ("observed_at", TS),
        # True when a later row of the same file holds the same task and step (compaction sets it, collectors
        # write False). It lets the checkpoints view skip de-duplicating the files that cannot hold a repeat.
        ("superseded", pa.bool_()),
    ]
)
POLLS = pa.schema(
    [
        ("poll_id", pa.string()),
        ("task_id", pa.string()),
        ("polled_at", TS),
        ("outcome", pa.string()),
        ("http_status", pa.int32()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("request_id", pa.string()),
        ("elapsed_ms", pa.float64()),
    ]
)
# Derived by the collector (ftlog/events.py): one row per event per observation; the view keeps the earliest.
EVENTS = pa.schema(
    [
        ("event_id", pa.string()),  # sha1 of what the event means, so every collector derives the same id
        ("task_id", pa.string()),
        ("kind", pa.string()),
        ("observed_at", TS),  # the `events` view calls it `at`
        ("details", pa.string()),  # JSON text
    ]
)
# One row per delivery outcome of an event to a notification target (ftlog/notify.py).
DELIVERIES = pa.schema(
    [
        ("event_id", pa.string()),
        ("task_id", pa.string()),
        ("target", pa.string()),  # host or program name plus a short hash: never a URL that may hold a token
        ("attempted_at", TS),
        ("outcome", pa.string()),  # 'delivered' or 'failed'
        ("attempts", pa.int32()),
        ("http_status", pa.int32()),
        ("error", pa.string()),
    ]
)
# One row per stop or continue that ftlog sent or only advised, and its outcome (ftlog/act.py): who acted on a run,
# and why. A rule's advice or stop, derived by every collector that trips it, carries the same action_id.
ACTIONS = pa.schema(
    [
        ("action_id", pa.string()),  # a command's: fresh; a rule's: sha1 of task, action and rule (act.action_id)
        ("task_id", pa.string()),
        ("job_id", pa.string()),
        ("action", pa.string()),  # 'stop' or 'continue'
        ("rule", pa.string()),  # the stop rule as written in full; NULL for a command
        ("command", pa.string()),  # 'stop', 'continue' or 'collect'
        ("request", pa.string()),  # JSON text of the request body, secrets masked
        ("acted_at", TS),  # the `actions` view calls it `at`
        ("outcome", pa.string()),  # 'sent', 'advised' (nothing sent), 'denied' (AccessDenied) or 'failed'
        ("request_id", pa.string()),
        ("new_task_id", pa.string()),  # the task a continue created
        ("http_status", pa.int32()),
        ("error", pa.string()),
        ("details", pa.string()),  # JSON text: the evidence of a rule, the step of a continue and how it was chosen
    ]
)


@dataclass(frozen=True)
class Files:
    """The data files a reader of one table reads: every data file of its ``folder`` (the table's folder, as
    engines name it), or, when some cannot be used, the ``parts`` that can: (day, None) for every data file of the
    day's partition, (day, name) for one file of it."""

    folder: str
    parts: tuple[tuple[str, str | None], ...] | None = None

    def globs(self, literal: Callable[[str], str]) -> list[str]:
        """The files as paths and globs, in a glob syntax where ``literal(text)`` matches ``text`` only."""
        folder = literal(self.folder)
        if self.parts is None:
            return [f"{folder}/date=*/{DATA_FILES}"]
        return [f"{folder}/date={literal(day)}/{literal(name) if name else DATA_FILES}" for day, name in self.parts]


class Dialect:
    """How one SQL engine spells what ftlog's views do. The views (``views.view_definitions``) and the rules of the
    tables (:class:`Table`) are written once, against these methods, so that the views ftlog runs and the ones
    ``ftlog sql --engine NAME`` prints for another engine come from the same definitions. This class is DuckDB's,
    which ftlog itself runs on; another engine's dialect overrides the methods its SQL spells differently."""

    name = "duckdb"
    semi_join = "SEMI JOIN"  # the rows of the left side with a match on the right, once each
    anti_join = "ANTI JOIN"  # the rows of the left side without a match on the right
    inline = "NOT MATERIALIZED "  # a CTE read twice is read twice rather than stored (millions of rows)

    # -- names, types and values
    def quote(self, identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'

    def string(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def type(self, kind: pa.DataType) -> str:
        """The SQL type of a column declared as ``kind``."""
        if pa.types.is_list(kind):
            return f"{self.type(kind.value_type)}[]"
        if pa.types.is_struct(kind):
            fields = ", ".join(f"{self.quote(field.name)} {self.type(field.type)}" for field in kind)
            return f"STRUCT({fields})"
        if kind not in SQL_TYPES:
            raise ValueError(f"no SQL type for {kind}")  # pragma: no cover - a declaration
        return SQL_TYPES[kind]

    def struct(self, fields: dict[str, str]) -> str:
        """A struct value: field name -> SQL expression."""
        return "{" + ", ".join(f"{self.string(name)}: {value}" for name, value in fields.items()) + "}"

    def row(self, alias: str) -> str:
        """The whole row of table ``alias`` as one struct value."""
        return alias

    def length(self, values: str) -> str:
        """The number of elements of a list."""
        return f"len({values})"

    # -- the rules of the tables (see Table)
    def distinct_on(self, keys: tuple[str, ...], columns: list[str], source: str) -> str:
        """The rows of ``source`` (of ``columns``), one per value of ``keys``; which of the rows equal on ``keys``
        is left open."""
        return f"SELECT DISTINCT ON ({', '.join(keys)}) * FROM {source}"

    def order_term(self, column: str, descending: bool) -> str:
        """A term of ORDER BY: NULLs last either way, whatever an engine's (or a session's) default."""
        return f"{column} {'DESC' if descending else 'ASC'} NULLS LAST"

    def arg_min(self, value: str, order: list[tuple[str, pa.DataType, bool]]) -> str:
        """Aggregate: ``value`` of the row that sorts first by ``order`` ((column, type, descending) terms, NULLs
        last as in :meth:`order_term`). One ``arg_min`` over a struct of the terms, which compares field by field
        with NULL after any value: a direction must be folded into the value, arg_min taking none."""
        terms = {}
        for i, (column, kind, descending) in enumerate(order):
            if descending and kind != TS:
                raise ValueError(f"cannot rank by {column} DESC with arg_min")  # pragma: no cover - a declaration
            terms[f"k{i}"] = f"-epoch_us({column})" if descending else column
        return f"arg_min({value}, {self.struct(terms)})"

    def qualify(self, columns: str, source: str, rank: str) -> str:
        """SELECT ``columns`` FROM ``source`` (a FROM clause): only the rows that window expression ``rank`` ranks
        1."""
        return f"SELECT {columns} FROM {source} QUALIFY {rank} = 1"

    def spread(self, items: list[tuple[str, str | None]], source: str) -> str:
        """SELECT ``items`` FROM ``source`` (a FROM clause, GROUP BY included), where an item is (expression,
        name), or (struct expression, None) for the struct's fields as columns."""
        columns = (
            f"unnest({sql})" if name is None else sql if sql == name else f"{sql} AS {name}" for sql, name in items
        )
        return f"SELECT {', '.join(columns)} FROM {source}"

    def explode(self, values: str) -> str:
        """In a SELECT list: one row per element of a list."""
        return f"unnest({values})"

    # -- sources and statements
    def empty(self, columns: list[tuple[str, pa.DataType]]) -> str:
        """A query of no rows with ``columns`` of the given types."""
        cast = (f"CAST(NULL AS {self.type(kind)}) AS {self.quote(name)}" for name, kind in columns)
        return f"SELECT {', '.join(cast)} WHERE false"

    def literal(self, path: str) -> str:
        """A glob that matches ``path`` only: DuckDB's globs take ``[x]`` as x."""
        return path.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")

    def read_parquet(self, files: Files, *, filename: bool = False) -> str:
        """A table expression over Parquet ``files`` in hive partitions, columns matched by name across files, with
        a ``filename`` column when asked."""
        globs = files.globs(self.literal)
        listed = self.string(globs[0]) if len(globs) == 1 else f"[{', '.join(map(self.string, globs))}]"
        return f"read_parquet({listed}, hive_partitioning = true, union_by_name = true{', filename = true' * filename})"

    def read_file(self, path: str) -> str:
        """A table expression over one Parquet file, as it is."""
        return f"read_parquet({self.string(self.literal(path))})"

    def source(self, schema: pa.Schema, files: Files | None, *, filename: bool = False) -> str:
        """A query of the rows of a table's data ``files`` (None: none) as its declared ``schema``: NULL where a
        file lacks a column (written before it was declared), and nothing else (not the ``date`` of the
        partition), plus ``filename`` (the file of each row) when asked."""
        columns = [(field.name, field.type) for field in schema] + [("filename", pa.string())] * filename
        empty = self.empty(columns)
        if not files:
            return empty
        # The typed empty query first, so that every declared column is there, in order and of its declared type.
        names = ", ".join(self.quote(name) for name, _ in columns)
        stored = self.read_parquet(files, filename=filename)
        return f"SELECT {names} FROM ({empty} UNION ALL BY NAME SELECT * FROM {stored})"

    def create_source(self, name: str, schema: pa.Schema, files: Files | None, *, filename: bool = False) -> list[str]:
        """The statements that make view ``name`` the rows of a table's data ``files``, as :meth:`source` reads them."""
        return [self.create_view(name, self.source(schema, files, filename=filename))]

    def create_view(self, name: str, query: str) -> str:
        return f"CREATE OR REPLACE VIEW {name} AS {query}"

    def session(self) -> list[str]:
        """The settings a session needs for the views to show what ftlog's do: times in UTC."""
        return ["SET TimeZone = 'UTC'"]

    def storage_notes(self, location: str, scheme: str) -> list[str]:
        """Comment lines on what a session needs to read an object store (``scheme`` is not empty) at ``location``
        (shown without credentials), such as an extension and the credentials."""
        if scheme != "s3":
            return [
                f"{location} is object storage: DuckDB reads {scheme}:// through an extension (httpfs for gs://,",
                "azure for az://) and a CREATE SECRET with the store's credentials, run before these statements.",
            ]
        return [
            f"{location} is object storage: DuckDB reads s3:// with its httpfs extension (INSTALL httpfs; LOAD httpfs;",
            "where extensions do not load themselves) and the store's credentials as a secret, created before these",
            "statements (creating a view reads the files' schemas). For BOS, MinIO or Ceph name the endpoint:",
            "  CREATE SECRET ftlog_data (TYPE s3, KEY_ID '...', SECRET '...', REGION '...',",
            "                            ENDPOINT 's3.bj.bcebos.com', URL_STYLE 'path');",
            "or, with the aws extension, CREATE SECRET ftlog_data (TYPE s3, PROVIDER credential_chain) takes them from",
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the other usual variables.",
        ]  # fmt: skip


# The SQL type of each type a declared column has (lists and structs are built of these).
SQL_TYPES = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
             pa.bool_(): "BOOLEAN", pa.date32(): "DATE", TS: "TIMESTAMPTZ"}  # fmt: skip
DUCKDB = Dialect()


@dataclass(frozen=True)
class Table:
    """One table of the dataset, and the rules every writer and reader of it follows."""

    name: str
    schema: pa.Schema  # declared, never inferred from a batch
    time_column: str  # its UTC date names a row's partition; compaction sorts by it
    # Rows equal on these are one row stored twice (overlapping collectors, an interrupted compaction): the views
    # and compaction keep one, `ftlog check` reports the repeats.
    natural_key: tuple[str, ...]
    # The row that stands for each value of `one_per` (a task's latest snapshot, a checkpoint's latest value, an
    # event's first sighting) is the first in the SQL order `first_by`; empty: every distinct row stands alone.
    one_per: tuple[str, ...] = ()
    first_by: tuple[str, ...] = ()
    # Declared after files of the table were first written: older files lack them, and readers take them as NULL.
    added_columns: tuple[str, ...] = ()

    def distinct(self, source: str, dialect: Dialect = DUCKDB) -> str:
        """SQL: the rows of ``source`` (a table expression), once per natural key."""
        return dialect.distinct_on(self.natural_key, self.schema.names, source)

    def rank(self, dialect: Dialect = DUCKDB) -> str:
        """SQL window expression over rows of this table: 1 for the row that stands for its ``one_per``, 2 and on
        for the rows it outranks."""
        order = ", ".join(dialect.order_term(column, descending) for column, _, descending in self._order())
        return f"row_number() OVER (PARTITION BY {', '.join(self.one_per)} ORDER BY {order})"

    def first(self, value: str, *, where: str | None = None, dialect: Dialect = DUCKDB) -> str:
        """SQL aggregate over rows grouped by ``one_per``: ``value`` (an expression, e.g. a :func:`struct` of
        columns, or a table alias for the whole row) of the row that :meth:`rank` ranks 1, among the rows that match
        ``where``. One ``arg_min`` over a sort key instead of a window, which would sort every row: the ``curves``
        view and ``analysis.compare`` depend on the speed."""
        aggregate = dialect.arg_min(value, self._order())
        return f"{aggregate} FILTER (WHERE {where})" if where else aggregate

    def _order(self) -> list[tuple[str, pa.DataType, bool]]:
        """``first_by`` as (column, type, descending) terms."""
        terms = []
        for term in self.first_by:
            column, _, direction = term.partition(" ")
            terms.append((column, self.schema.field(column).type, direction.upper() == "DESC"))
        return terms


def struct(columns: tuple[str, ...] | list[str], dialect: Dialect = DUCKDB) -> str:
    """SQL: a struct of ``columns`` under their own names, for :meth:`Table.first`."""
    return dialect.struct({column: column for column in columns})


TABLES: dict[str, Table] = {
    table.name: table
    for table in (
        Table("snapshots", SNAPSHOTS, "observed_at", natural_key=("task_id", "observed_at", "state_hash"),
              one_per=("task_id",), first_by=("observed_at DESC", "state_hash"), added_columns=CURVE_SUMMARY),
        Table("checkpoints", CHECKPOINTS, "observed_at",
              natural_key=("task_id", "step", "observed_at", "perplexity", "training_loss"),
              one_per=("task_id", "step"), first_by=("observed_at DESC", "perplexity", "training_loss"),
              added_columns=("superseded",)),
        Table("polls", POLLS, "polled_at", natural_key=("poll_id",)),
        # A later sighting of an event (another collector) is stored and kept by compaction; the view shows the first.
        Table("events", EVENTS, "observed_at", natural_key=("event_id", "observed_at"),
              one_per=("event_id",), first_by=("observed_at", "details")),
        Table("deliveries", DELIVERIES, "attempted_at", natural_key=("event_id", "target", "attempted_at", "outcome")),
        # As for events, each outcome of an action shows once: its first sighting.
        Table("actions", ACTIONS, "acted_at", natural_key=("action_id", "acted_at", "outcome"),
              one_per=("action_id", "outcome"), first_by=("acted_at", "request_id", "details")),
    )
}  # fmt: skip
