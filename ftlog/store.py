"""The Parquet dataset: atomic, immutable, hive-partitioned files behind one filesystem abstraction.

Layout (see DESIGN.md)::

    DATA/<table>/date=YYYY-MM-DD/<UTC time>-<random>.parquet   one immutable file per table per write
    DATA/_state/tasks.parquet                                  last known state per task (a cache)

Every write goes to a ``.tmp`` name first and is renamed into place (on object stores a single PUT), so readers
never see a partial file. Readers tolerate duplicates: the views de-duplicate on natural keys, which is what makes
overlapping collectors and compaction safe without locks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import DataError
from .schema import TABLES, TIME_COLUMNS, TS

log = logging.getLogger(__name__)

STATE = pa.schema(
    [
        ("task_id", pa.string()),
        ("state_hash", pa.string()),
        ("run_status", pa.string()),
        ("run_progress", pa.float64()),
        ("observed_at", TS),
        (
            "checkpoints",
            pa.list_(pa.struct([("step", pa.int64()), ("perplexity", pa.float64()), ("training_loss", pa.float64())])),
        ),
        ("progress_since", TS),  # when the current run_progress was first seen (stall events)
        ("stall_reported", pa.bool_()),
    ]
)
OPEN_PARTITION_MAX_FILES = 48  # compact today's partition too once it holds this many files
STALE_TMP = timedelta(hours=1)


@dataclass
class TaskState:
    state_hash: str | None
    run_status: str | None
    run_progress: float | None
    observed_at: datetime | None
    checkpoints: dict[int, tuple[float | None, float | None]]
    progress_since: datetime | None = None  # NULL in state files written before stall events existed
    stall_reported: bool = False


def same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to the declared schema: missing columns become NULL, extra columns are dropped."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class Dataset:
    """A dataset location: a local folder or an object-store URI, accessed only through ``pyarrow.fs``."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        self.location = text
        try:
            if "://" in text:
                self.fs, root = pafs.FileSystem.from_uri(text)
            else:
                self.fs, root = pafs.LocalFileSystem(), str(Path(text).absolute())
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise DataError(f"cannot open dataset {_redact(text)}: {exc}") from None
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.scheme = "" if self.is_local else text.split("://", 1)[0]
        self.state_name = "tasks"
        self._duckdb_fs: Any = None

    def __repr__(self) -> str:
        return f"Dataset({self.display!r})"

    @property
    def display(self) -> str:
        """The location as shown in output and reports: without a query string that may carry keys."""
        return _redact(self.location)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- writing ----------------------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Make ``path`` appear whole or not at all."""
        if not self.is_local:
            with self.fs.open_output_stream(path) as out:  # one PUT of a finished object
                out.write(data)
            return
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            self._delete_quietly(tmp)
            raise

    def write_table(self, name: str, table: pa.Table, partition: date, now: datetime) -> str:
        buffer = io.BytesIO()
        pq.write_table(conform(table, TABLES[name]), buffer, compression="zstd")
        file_name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.path(name, f"date={partition.isoformat()}", file_name)
        self.write_bytes(path, buffer.getvalue())
        return path

    def append(self, name: str, rows: list[dict[str, Any]], now: datetime) -> list[str]:
        """Write rows as one new file per UTC date they fall on; return the paths written."""
        if not rows:
            return []
        by_date: dict[date, list[dict[str, Any]]] = {}
        for row in rows:
            by_date.setdefault(row[TIME_COLUMNS[name]].astimezone(timezone.utc).date(), []).append(row)
        schema = TABLES[name]
        return [
            self.write_table(name, pa.Table.from_pylist(part, schema=schema), day, now)
            for day, part in sorted(by_date.items())
        ]

    # -- reading ----------------------------------------------------------------------------------------------
    def partitions(self, name: str) -> dict[str, list[pafs.FileInfo]]:
        """``{"YYYY-MM-DD": [data files]}`` for one table; temporary and hidden files are never listed."""
        selector = pafs.FileSelector(self.path(name), allow_not_found=True, recursive=True)
        found: dict[str, list[pafs.FileInfo]] = {}
        for info in self.fs.get_file_info(selector):
            rel = info.path[len(self.path(name)) + 1 :].split("/")
            if info.type != pafs.FileType.File or len(rel) != 2 or not rel[1].endswith(".parquet"):
                continue
            if not rel[0].startswith("date=") or rel[1].startswith((".", "_")):
                continue
            found.setdefault(rel[0][5:], []).append(info)
        return found

    def files(self, name: str) -> list[str]:
        return sorted(info.path for infos in self.partitions(name).values() for info in infos)

    def read_table(self, path: str, name: str) -> pa.Table:
        return conform(pq.read_table(path, filesystem=self.fs), TABLES[name])

    def duckdb_source(self, name: str) -> str:
        """A DuckDB table expression over every data file of ``name`` (hive partitions, schema by name).

        Local folders are read by DuckDB directly; object stores through :meth:`register_with`, which hands
        DuckDB this dataset's own pyarrow filesystem. Either way the SQL is the same.
        """
        # Like Hive and pyarrow, skip files whose names start with "_" or ".".
        pattern = self.path(name, "date=*", "[!._]*.parquet")
        if not self.is_local:
            pattern = f"{self.scheme}://{pattern}"
        pattern = pattern.replace("'", "''")
        return f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"

    def register_with(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let DuckDB read an object-store dataset through the same filesystem ftlog writes with (no DuckDB
        extension to download, the same endpoint and credentials)."""
        if self.is_local or self.scheme in con.list_filesystems():
            return
        if self._duckdb_fs is None:
            self._duckdb_fs = _duckdb_filesystem(self.fs, self.scheme)
        con.register_filesystem(self._duckdb_fs)

    # -- collector state --------------------------------------------------------------------------------------
    def state_path(self) -> str:
        """Sharded collectors keep one state file each, so they never overwrite each other's."""
        return self.path("_state", f"{self.state_name}.parquet")

    def load_state(self) -> dict[str, TaskState]:
        """The last known state of every task, read from the state file: its cost follows the number of tasks,
        not the length of history. A missing or unreadable file is rebuilt from the dataset and saved again."""
        path = self.state_path()
        try:
            # In one read: other collectors replace this file while it is read, and reopening it by name halfway
            # (as reading by path does) would mix the old file's footer with the new file's pages.
            with self.fs.open_input_file(path) as source:
                table = pq.read_table(pa.BufferReader(source.read()))
        except FileNotFoundError:
            return self._rebuild_state()
        except (OSError, pa.ArrowException) as exc:
            log.warning("collector state %s is unreadable (%s); rebuilding it from the dataset", path, exc)
            return self._rebuild_state()
        return {row["task_id"]: _task_state(row) for row in conform(table, STATE).to_pylist()}

    def save_state(self, changes: dict[str, TaskState]) -> None:
        """Merge ``changes`` into the state file (newest observation wins) and replace it atomically."""
        state = self.load_state()
        for task_id, new in changes.items():
            old = state.get(task_id)
            if old is None or old.observed_at is None or (new.observed_at and new.observed_at >= old.observed_at):
                state[task_id] = new
        self._write_state(state)

    def _rebuild_state(self) -> dict[str, TaskState]:
        # Saved right away: otherwise a round that changes nothing would leave the file missing, and every later
        # round would scan the whole history again.
        state = self._state_from_history()
        if state:
            self._write_state(state)
        return state

    def _write_state(self, state: dict[str, TaskState]) -> None:
        rows = [
            {
                "task_id": task_id,
                "state_hash": s.state_hash,
                "run_status": s.run_status,
                "run_progress": s.run_progress,
                "observed_at": s.observed_at,
                "checkpoints": [
                    {"step": step, "perplexity": p, "training_loss": loss} for step, (p, loss) in s.checkpoints.items()
                ],
                "progress_since": s.progress_since,
                "stall_reported": s.stall_reported,
            }
            for task_id, s in state.items()
        ]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=STATE), buffer, compression="zstd")
        self.write_bytes(self.state_path(), buffer.getvalue())

    def _state_from_history(self) -> dict[str, TaskState]:
        """Rebuild the cache from stored rows: needed only when the state file is missing or unreadable."""
        if not self.files("snapshots"):
            return {}
        from .views import connect, retry_vanished  # local import: views depend on this module

        con = connect(self)
        try:
            snaps = retry_vanished(lambda: con.execute(_REBUILD_TASKS).fetchall())
            points = retry_vanished(
                lambda: con.execute("SELECT task_id, step, perplexity, training_loss FROM checkpoints").fetchall()
            )
        finally:
            con.close()
        state = {
            task_id: TaskState(state_hash, status, progress, observed_at, {}, since, stalled)
            for task_id, state_hash, status, progress, observed_at, since, stalled in snaps
        }
        for task_id, step, perplexity, loss in points:
            state.setdefault(task_id, TaskState(None, None, None, None, {})).checkpoints[step] = (
                perplexity,
                loss,
            )
        return state

    # -- maintenance ------------------------------------------------------------------------------------------
    def compact(self, now: datetime | None = None, *, open_max_files: int = OPEN_PARTITION_MAX_FILES) -> int:
        """Merge each closed date partition (and any partition past ``open_max_files``) into one file.

        The merged file is written before the sources are deleted, so a reader sees every row at every moment
        (sometimes twice, which the views absorb). Returns the number of files removed.
        """
        today = (now or datetime.now(timezone.utc)).date().isoformat()
        removed = 0
        for name in TABLES:
            for day, infos in sorted(self.partitions(name).items()):
                closed = day < today
                if len(infos) < 2 or (not closed and len(infos) < open_max_files):
                    continue
                removed += self._merge(name, day, [info.path for info in infos], now or datetime.now(timezone.utc))
        self.remove_stale_tmp(now)
        return removed

    def _merge(self, name: str, day: str, paths: list[str], now: datetime) -> int:
        try:
            tables = [self.read_table(path, name) for path in paths]
        except FileNotFoundError:
            return 0  # another compaction got there first; its merged file holds these rows
        except (OSError, pa.ArrowException) as exc:
            # Compaction runs after every round: one bad file must not fail every round from now on.
            log.warning("not compacting %s/date=%s: %s (run `ftlog check`)", name, day, exc)
            return 0
        merged = dedupe(name, pa.concat_tables(tables))
        self.write_table(name, merged, date.fromisoformat(day), now)
        for path in paths:
            self._delete_quietly(path)
        return len(paths)

    def remove_stale_tmp(self, now: datetime | None = None) -> None:
        """Delete temporary files that a killed writer left behind (never visible to readers anyway)."""
        cutoff = (now or datetime.now(timezone.utc)) - STALE_TMP
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path.endswith(".tmp") and info.mtime is not None:
                mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=timezone.utc)
                if mtime < cutoff:
                    self._delete_quietly(info.path)

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(path)


# The stall fields as the collector keeps them: since when the latest status and progress have held (where the
# last run of equal values starts), and whether a stall was reported since then.
_REBUILD_TASKS = """
    WITH moves AS (
        SELECT task_id, max(observed_at) AS progress_since FROM (
            SELECT task_id, observed_at, (run_status, run_progress) IS DISTINCT FROM
                   lag((run_status, run_progress)) OVER (PARTITION BY task_id ORDER BY observed_at) AS moved
            FROM snapshots
        ) WHERE moved GROUP BY task_id
    )
    SELECT t.task_id, t.state_hash, t.run_status, t.run_progress, t.observed_at, m.progress_since,
           EXISTS (SELECT 1 FROM events e WHERE e.task_id = t.task_id AND e.kind = 'stall'
                   AND e."at" >= m.progress_since) AS stall_reported
    FROM tasks t LEFT JOIN moves m USING (task_id)
"""
NATURAL_KEYS = {
    "snapshots": "task_id, observed_at, state_hash",
    "checkpoints": "task_id, step, observed_at, perplexity, training_loss",
    "polls": "poll_id",
    "events": "event_id, observed_at",  # a later sighting (another collector) is kept; the view shows the first
    "deliveries": "event_id, target, attempted_at, outcome",
}


def dedupe(name: str, table: pa.Table) -> pa.Table:
    """Drop rows repeated on the table's natural key, sorted by time (used by compaction)."""
    con = duckdb.connect()
    try:
        con.register("t", table)
        time_column = TIME_COLUMNS[name]
        relation = con.sql(
            f"SELECT DISTINCT ON ({NATURAL_KEYS[name]}) * FROM t ORDER BY {NATURAL_KEYS[name]}, {time_column}"
        )
        # fetch_arrow_table() warns as deprecated from DuckDB 1.4 on, where to_arrow_table() replaces it
        fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
        result = fetch()
    finally:
        con.close()
    return conform(result.sort_by([("task_id", "ascending"), (TIME_COLUMNS[name], "ascending")]), TABLES[name])


def _redact(location: str) -> str:
    return location.split("?", 1)[0]


def _duckdb_filesystem(fs: pafs.FileSystem, scheme: str) -> Any:
    try:
        from fsspec.implementations.arrow import ArrowFSWrapper
    except ImportError:  # pragma: no cover - fsspec is a dependency; this guards broken installs
        raise DataError("reading object storage needs the fsspec package: pip install fsspec") from None

    class ObjectStore(ArrowFSWrapper):  # type: ignore[misc]
        protocol = (scheme,)

    return ObjectStore(fs)


def _task_state(row: dict[str, Any]) -> TaskState:
    points = row.get("checkpoints") or []
    return TaskState(
        row["state_hash"],
        row["run_status"],
        row["run_progress"],
        row["observed_at"],
        {p["step"]: (p["perplexity"], p["training_loss"]) for p in points},
        row.get("progress_since"),
        bool(row.get("stall_reported")),
    )
