"""The tables of the dataset, one record each (``TABLES``): declared pyarrow schema, time column, natural key,
which row of a key the views keep, columns added later. Writers, readers, compaction, ``ftlog check`` and the views
all take their rules from here; the SQL that applies a rule is generated here too, so each rule is written once.

API payloads become rows in ``ftlog/normalise.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
TERMINAL_STATUSES = ("Done", "Failed", "Stopped")
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

    def distinct(self, source: str) -> str:
        """SQL: the rows of ``source`` (a table expression), once per natural key."""
        return f"SELECT DISTINCT ON ({', '.join(self.natural_key)}) * FROM {source}"

    def rank(self) -> str:
        """SQL window expression over rows of this table: 1 for the row that stands for its ``one_per``, 2 and on
        for the rows it outranks."""
        return f"row_number() OVER (PARTITION BY {', '.join(self.one_per)} ORDER BY {', '.join(self.first_by)})"

    def first(self, value: str, *, where: str | None = None) -> str:
        """SQL aggregate over rows grouped by ``one_per``: ``value`` (an expression, e.g. a :func:`struct` of
        columns, or a table alias for the whole row) of the row that :meth:`rank` ranks 1, among the rows that match
        ``where``. One ``arg_min`` over a sort key instead of a window, which would sort every row: the ``curves``
        view and ``analysis.compare`` depend on the speed."""
        key = ", ".join(f"'k{i}': {self._ascending(term)}" for i, term in enumerate(self.first_by))
        aggregate = f"arg_min({value}, {{{key}}})"
        return f"{aggregate} FILTER (WHERE {where})" if where else aggregate

    def _ascending(self, term: str) -> str:
        """A term of ``first_by`` as a value that sorts ascending: arg_min takes no direction."""
        column, _, direction = term.partition(" ")
        if direction.upper() != "DESC":
            return column
        if self.schema.field(column).type != TS:
            raise ValueError(f"{self.name}: cannot rank by {term} with arg_min")  # pragma: no cover - a declaration
        return f"-epoch_us({column})"


def struct(columns: tuple[str, ...] | list[str]) -> str:
    """SQL: a struct of ``columns`` under their own names, for :meth:`Table.first`."""
    return "{" + ", ".join(f"'{column}': {column}" for column in columns) + "}"


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
    )
}  # fmt: skip
