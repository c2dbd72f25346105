"""The Parquet dataset: atomic, immutable, hive-partitioned files behind one filesystem abstraction.

Layout (see DESIGN.md)::

    DATA/<table>/date=YYYY-MM-DD/<UTC time>-<random>.parquet   one immutable file per table per write
    DATA/_state/<name>.parquet                                 the collector state, a cache (ftlog/state.py)

Every write goes to a hidden ``.<name>.<random>.tmp`` name first and is renamed into place (on object stores a
single PUT), so readers never see a partial file. Readers tolerate duplicates: the views de-duplicate on natural
keys, which is what makes overlapping collectors and compaction safe without locks. Readers skip a damaged file
(unreadable, or not of the declared schema) with a warning, until ``ftlog check --repair`` quarantines it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .compat import arrow
from .errors import DataError
from .redact import redact
from .schema import TABLES, TS

log = logging.getLogger(__name__)

STATE_DIR = "_state"  # the collector state files (ftlog/state.py): hidden from readers by the "_"
OPEN_PARTITION_MAX_FILES = 48  # compact today's partition too once it holds this many files
STALE_TMP = timedelta(hours=1)
CLAIMS_DIR = "_claims"  # markers of actions taken once among collectors (Dataset.claim); readers skip "_" names
CLAIM_SETTLE = 1.0  # seconds an object-store claim waits for markers still on their way (Dataset.claim)
MAX_LISTINGS = 5  # listings of a table until none of its files vanishes before it is read
# Reading an object store through DuckDB (see _duckdb_filesystem): an object of up to WHOLE_OBJECT bytes is read in
# one request, and a connection keeps up to OBJECT_CACHE bytes of those it has read.
WHOLE_OBJECT = 32 * 2**20
OBJECT_CACHE = 256 * 2**20


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to the declared schema: missing columns become NULL, extra columns are dropped."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def schema_mismatch(found: pa.Schema, name: str) -> str | None:
    """How a file's columns differ from table ``name``'s declared schema (``None``: they do not). A file that
    differs is one no reader uses and ``ftlog check --repair`` quarantines: a column of another type, a column not
    declared, or a declared column missing, unless it was declared later (``Table.added_columns``: older files lack it,
    and readers take it as NULL)."""
    declared = TABLES[name].schema
    issues = []
    for wanted in declared:
        index = found.get_field_index(wanted.name)
        if index < 0:
            if wanted.name not in TABLES[name].added_columns:
                issues.append(f"{wanted.name} is missing")
        elif not found.field(index).type.equals(wanted.type):
            issues.append(f"{wanted.name} is {found.field(index).type}, expected {wanted.type}")
    issues += [f"{extra} is not declared" for extra in found.names if extra not in declared.names]
    return "; ".join(issues) or None


def reason(exc: BaseException, path: str = "") -> str:
    """Why an operation failed, in a few words: the system's (``No space left on device``) when there is an errno,
    else the error's first line, without the ``'<path>': `` that pyarrow puts before it."""
    errno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and errno:
        return os.strerror(errno)
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(f"{path}': ", 1)[-1] if path else line


_WARNED: set[str] = set()


def warn_skipped(path: str, why: str) -> None:
    """Say once per process that a damaged data file is left out: every reader skips it (a command may read it
    several times, a watch every round) until ``ftlog check --repair`` moves it away."""
    if path not in _WARNED:
        _WARNED.add(path)
        log.warning("skipping %s (%s); `ftlog check --repair` moves it to _quarantine/", path, why)


class Rows:
    """Rows turned into Arrow record batches every ``batch`` values as they are added, so that a round's million
    checkpoint rows never wait as Python objects (a few hundred bytes each) to be written."""

    def __init__(self, schema: pa.Schema, batch: int = 10_000) -> None:
        self.schema = schema
        self.batch = batch
        self._pending: list[Mapping[str, Any]] = []
        self._size = 0
        self._batches: list[pa.RecordBatch] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: Mapping[str, Any], size: int = 1) -> None:
        """Add a row, not to be changed afterwards; ``size`` counts its values towards the batch (a state row
        holds all its checkpoints)."""
        self._pending.append(row)
        self._count += 1
        self._size += size
        if self._size >= self.batch:
            self._flush()

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def _flush(self) -> None:
        if self._pending:
            self._batches.append(pa.RecordBatch.from_pylist(self._pending, schema=self.schema))
            self._pending, self._size = [], 0


class Runs:
    """Rows added a run at a time, as columns: the rows of a run share one value of each column named in ``shared``
    (one task's checkpoints share its id and the time they were observed) and bring a list of values for each other
    column. Turned into Arrow record batches every ``batch`` rows, as :class:`Rows`, but with no Python object per
    row: a first round brings millions of checkpoints."""

    def __init__(self, schema: pa.Schema, shared: Sequence[str], batch: int = 100_000) -> None:
        self.schema = schema
        self.shared = tuple(shared)
        self.varying = tuple(name for name in schema.names if name not in self.shared)
        self.batch = batch
        self._runs: list[tuple[Any, ...]] = []  # the shared values of each pending run
        self._lengths: list[int] = []
        self._columns: list[list[Any]] = [[] for _ in self.varying]
        self._pending = 0
        self._batches: list[pa.RecordBatch] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, shared: Sequence[Any], *columns: Sequence[Any]) -> None:
        """Add the rows whose values of the ``shared`` columns are ``shared`` (in that order), and of the other
        columns ``columns`` (in schema order, one sequence each, all of the same length)."""
        length = len(columns[0])
        if any(len(values) != length for values in columns) or len(shared) != len(self.shared):
            raise ValueError("a run needs one value per shared column and columns of one length")
        if not length:
            return
        self._runs.append(tuple(shared))
        self._lengths.append(length)
        for kept, values in zip(self._columns, columns, strict=True):
            kept.extend(values)
        self._count += length
        self._pending += length
        if self._pending >= self.batch:
            self._flush()

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def _flush(self) -> None:
        if not self._pending:
            return
        run_of_row = pa.array(np.repeat(np.arange(len(self._runs)), self._lengths))
        arrays = {
            name: pa.array([run[i] for run in self._runs], type=self.schema.field(name).type).take(run_of_row)
            for i, name in enumerate(self.shared)
        }
        arrays.update(
            (name, pa.array(values, type=self.schema.field(name).type))
            for name, values in zip(self.varying, self._columns, strict=True)
        )
        self._batches.append(
            pa.RecordBatch.from_arrays([arrays[name] for name in self.schema.names], schema=self.schema)
        )
        self._runs, self._lengths, self._pending = [], [], 0
        self._columns = [[] for _ in self.varying]


def parquet_bytes(table: pa.Table, **options: Any) -> pa.Buffer:
    """``table`` as the bytes of a Parquet file (``options`` as ``pq.write_table`` takes them), without the copy
    that ``io.BytesIO().getvalue()`` makes."""
    out = pa.BufferOutputStream()
    pq.write_table(table, out, **options)
    return out.getvalue()


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
        self._duckdb_fs: Any = None

    def __repr__(self) -> str:
        return f"Dataset({self.display!r})"

    @property
    def display(self) -> str:
        """The location as shown in output and reports: without the keys a URI may carry."""
        return _redact(self.location)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- writing ----------------------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes | pa.Buffer) -> None:
        """Make ``path`` appear whole or not at all. A write that fails (disk full, read-only filesystem, no
        permission) is a DataError naming the path and the reason, so a watch reports it and tries again next round,
        and it leaves nothing behind under a visible name."""
        try:
            if not self.is_local:
                with self.fs.open_output_stream(path) as out:  # one PUT of a finished object
                    out.write(data)
                return
            folder, name = path.rsplit("/", 1)
            self.fs.create_dir(folder, recursive=True)
            # Hidden by its leading ".", so that no engine lists it as data (DuckDB's glob, pyarrow, pandas, Spark
            # and Hive all skip such names; a "x.parquet.<hex>.tmp" would be read, and fail, by most of them).
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                self.fs.move(tmp, path)
            except BaseException:
                self._delete_quietly(tmp)
                raise
        except OSError as exc:
            raise DataError(f"cannot write {path}: {reason(exc, path)}") from None

    def write_table(self, name: str, table: pa.Table, partition: date, now: datetime) -> str:
        data = parquet_bytes(conform(table, TABLES[name].schema), compression="zstd")
        file_name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.path(name, f"date={partition.isoformat()}", file_name)
        self.write_bytes(path, data)
        return path

    def append(self, name: str, rows: list[dict[str, Any]], now: datetime) -> list[str]:
        """Write rows as one new file per UTC date they fall on; return the paths written."""
        return self.append_table(name, pa.Table.from_pylist(rows, schema=TABLES[name].schema), now) if rows else []

    def append_table(self, name: str, table: pa.Table, now: datetime) -> list[str]:
        """:meth:`append` for rows already in an Arrow table."""
        if not len(table):
            return []
        days = pc.cast(table.column(TABLES[name].time_column).cast(TS), pa.date32())  # TS is UTC, so UTC dates
        found = sorted(pc.unique(days).to_pylist())
        return [
            self.write_table(name, table if len(found) == 1 else table.filter(pc.equal(days, day)), day, now)
            for day in found
        ]

    def create_tables(self, now: datetime) -> list[str]:
        """Give each table that has no folder yet a file of no rows, in the partition of ``now``'s UTC date: from
        the first round on, every table folder holds a file that any reader can open and take the columns from
        (pandas, pyarrow, polars, Spark and DuckDB fail on a missing folder, and most on an empty one). Returns the
        paths written."""
        try:
            found = self.fs.get_file_info([self.path(name) for name in TABLES])
        except OSError as exc:
            raise DataError(f"cannot read {self.display}: {reason(exc)}") from None
        day = now.astimezone(timezone.utc).date()
        missing = [name for name, info in zip(TABLES, found, strict=True) if info.type == pafs.FileType.NotFound]
        return [self.write_table(name, TABLES[name].schema.empty_table(), day, now) for name in missing]

    def claim(self, name: str, now: datetime) -> bool:
        """Take ``name`` (a path under ``_claims``, e.g. ``stop/<task hash>``) once among every writer of the dataset:
        True for the one caller that took it, False for every other, now or later. Locally an exclusive create,
        which the kernel settles. Object stores offer no such create through pyarrow: each caller puts a marker of
        its own, named by its time and a random part, then lists the markers, and the first to land (by the
        store's clock, then by name) takes it if it is still first a moment later (a marker may land after this
        caller's listing). Within one second of the store's clock the callers' clocks decide, so callers check the
        task's state again before acting (ftlog/stopping.py)."""
        folder = self.path(CLAIMS_DIR, name)
        try:
            if self.is_local:
                self.fs.create_dir(folder.rsplit("/", 1)[0], recursive=True)
                try:
                    os.close(os.open(folder, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                except FileExistsError:
                    return False
                return True
            mine = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex}"
            self.write_bytes(f"{folder}/{mine}", b"")
            if self._first_marker(folder) != mine:
                return False
            time.sleep(CLAIM_SETTLE)
            return self._first_marker(folder) == mine
        except OSError as exc:
            raise DataError(f"cannot write {folder}: {reason(exc, folder)}") from None

    def _first_marker(self, folder: str) -> str | None:
        """The marker that landed first: by the store's own time of each (one clock for every caller, to the
        second), then by name (the caller's time)."""
        markers = [info for info in self.listing(folder) if info.type == pafs.FileType.File]
        first = min(markers, key=lambda info: (info.mtime_ns or 0, info.base_name), default=None)
        return first.base_name if first else None

    def release(self, name: str) -> None:
        """Give up a claim of :meth:`claim` (an action that failed and may be tried again): every marker goes."""
        folder = self.path(CLAIMS_DIR, name)
        if self.is_local:
            self._delete_quietly(folder)
        else:
            with contextlib.suppress(OSError):
                self.fs.delete_dir(folder)

    # -- reading ----------------------------------------------------------------------------------------------
    def partitions(self, name: str) -> dict[str, list[pafs.FileInfo]]:
        """``{"YYYY-MM-DD": [data files]}`` for one table; temporary and hidden files are never listed."""
        found: dict[str, list[pafs.FileInfo]] = {}
        for info in self.listing(self.path(name)):
            rel = info.path[len(self.path(name)) + 1 :].split("/")
            if info.type != pafs.FileType.File or len(rel) != 2 or not rel[1].endswith(".parquet"):
                continue
            if not rel[0].startswith("date=") or rel[1].startswith((".", "_")):
                continue
            found.setdefault(rel[0][5:], []).append(info)
        return found

    def listing(self, folder: str) -> list[pafs.FileInfo]:
        """Everything under ``folder`` (nothing if it does not exist). A folder that cannot be listed (no
        permission) is a DataError naming it: a reader that went on without it would answer with rows missing."""
        try:
            return list(self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise DataError(f"cannot list {self._unlistable(folder) or folder}: {reason(exc)}") from None

    def _unlistable(self, folder: str) -> str | None:
        """The first folder at or under ``folder`` that cannot be listed, for the error message."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            return folder
        subfolders = (info.path for info in infos if info.type == pafs.FileType.Directory)
        return next((found for sub in subfolders if (found := self._unlistable(sub))), None)

    def files(self, name: str) -> list[str]:
        return sorted(info.path for infos in self.partitions(name).values() for info in infos)

    def read_table(self, path: str, name: str) -> pa.Table:
        return conform(pq.read_table(path, filesystem=self.fs), TABLES[name].schema)

    # The views (and so every reader) and compaction decide with the two methods below whether a data file can serve as
    # its table; `ftlog check` judges by the same schema_mismatch, so what it quarantines is what readers skip.
    def usable(self, path: str, name: str) -> bool:
        """Whether readers can use the data file ``path`` of table ``name``: its footer reads and its columns are
        the declared ones. If not, it is skipped, with one warning. A file that vanished (merged by a compaction)
        raises FileNotFoundError: list again. One this process may not read is a DataError: it may well hold good
        rows, so it is never skipped as damaged."""
        try:
            found = pq.read_schema(path, filesystem=self.fs)
        except (OSError, pa.ArrowException, ValueError) as exc:
            return self._unusable(path, exc)
        mismatch = schema_mismatch(found, name)
        if mismatch:
            warn_skipped(path, mismatch)
        return mismatch is None

    def read_usable(self, path: str, name: str) -> pa.Table | None:
        """The rows of ``path`` as declared, or None (with one warning) when the file cannot be used: see
        :meth:`usable`, which this extends to the pages."""
        try:
            with self.fs.open_input_file(path) as source:
                table = pq.read_table(source)
        except (OSError, pa.ArrowException, ValueError) as exc:
            self._unusable(path, exc)
            return None
        mismatch = schema_mismatch(table.schema, name)
        if mismatch:
            warn_skipped(path, mismatch)
            return None
        return conform(table, TABLES[name].schema)

    def _unusable(self, path: str, exc: BaseException) -> bool:
        if isinstance(exc, FileNotFoundError):
            raise exc
        if isinstance(exc, PermissionError):
            raise DataError(f"cannot read {path}: {reason(exc)}") from None
        warn_skipped(path, reason(exc, path))
        return False

    def usable_parts(self, name: str) -> list[tuple[str, str | None]]:
        """What a reader of ``name`` reads when some file cannot be used (see :meth:`usable`): (day, None) for a
        partition whose files all can, and (day, name) for each usable file of the other partitions (compaction
        leaves those alone, so the names stay valid). Listed again if a file vanishes meanwhile."""
        for _ in range(MAX_LISTINGS):
            parts: list[tuple[str, str | None]] = []
            try:
                for day, infos in sorted(self.partitions(name).items()):
                    good = [info.base_name for info in infos if self.usable(info.path, name)]
                    parts += [(day, None)] if len(good) == len(infos) else [(day, file) for file in good]
            except FileNotFoundError:
                continue
            return parts
        raise DataError(f"{self.path(name)} kept changing while being read; try again")

    def uri(self, path: str) -> str:
        """``path`` (of :meth:`path`) as DuckDB and other engines name it: a local path, or the store's URI."""
        return path if self.is_local else f"{self.scheme}://{path}"

    def register_with(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let DuckDB read an object-store dataset (at :meth:`uri`) through the same filesystem ftlog writes with
        (no DuckDB extension to download, the same endpoint and credentials)."""
        if self.is_local or self.scheme in con.list_filesystems():
            return
        if self._duckdb_fs is None:
            self._duckdb_fs = _duckdb_filesystem(self.fs, self.scheme, self.root)
        con.register_filesystem(self._duckdb_fs)

    # -- maintenance ------------------------------------------------------------------------------------------
    def compact(
        self, now: datetime | None = None, *, open_max_files: int = OPEN_PARTITION_MAX_FILES, upgrade: bool = False
    ) -> int:
        """Merge each closed date partition (and any partition past ``open_max_files``) into one file.

        The merged file is written before the sources are deleted, so a reader sees every row at every moment
        (sometimes twice, which the views absorb). With ``upgrade``, a partition holding a file written before a
        column was declared (``Table.added_columns``) is rewritten too, even alone or today's, so it gains the
        column (this reads every file's footer, so the collector's own compaction leaves it out). Returns the
        number of files removed.
        """
        today = (now or datetime.now(timezone.utc)).date().isoformat()
        removed = 0
        for name in TABLES:
            for day, infos in sorted(self.partitions(name).items()):
                paths = [info.path for info in infos]
                closed = day < today
                outdated = upgrade and any(self._lacks_columns(path, name) for path in paths)
                if not outdated and (len(infos) < 2 or (not closed and len(infos) < open_max_files)):
                    continue
                removed += self._merge(name, day, paths, now or datetime.now(timezone.utc))
        self.remove_stale_tmp(now)
        return removed

    def _lacks_columns(self, path: str, name: str) -> bool:
        try:
            names = pq.read_schema(path, filesystem=self.fs).names
        except (OSError, pa.ArrowException):
            return False  # vanished or unreadable: nothing to upgrade here (``ftlog check`` reports the latter)
        return any(column not in names for column in TABLES[name].added_columns)

    def _merge(self, name: str, day: str, paths: list[str], now: datetime) -> int:
        tables = []
        for path in paths:
            try:
                table = self.read_usable(path, name)
            except FileNotFoundError:
                return 0  # another compaction got there first; its merged file holds these rows
            if table is None:
                # Never merged into good rows, and the partition is left as it is (with a warning): its other
                # files keep their names, which a reader skipping the damaged file lists one by one.
                return 0
            tables.append(table)
        merged = dedupe(name, pa.concat_tables(tables))
        self.write_table(name, merged, date.fromisoformat(day), now)
        for path in paths:
            self._delete_quietly(path)
        return len(paths)

    def remove_stale_tmp(self, now: datetime | None = None) -> None:
        """Delete temporary files that a killed writer left behind (never visible to readers anyway)."""
        for path in self.stale_temporary_files(now):
            self._delete_quietly(path)

    def stale_temporary_files(self, now: datetime | None = None) -> list[str]:
        """Temporary files older than ``STALE_TMP``: left by a writer that was killed, never data. Younger ones may
        be live writes. Both namings count: ``.x.parquet.<hex>.tmp``, and ``x.parquet.<hex>.tmp`` of older versions."""
        cutoff = (now or datetime.now(timezone.utc)) - STALE_TMP
        stale = []
        for info in self.listing(self.root):
            if info.type == pafs.FileType.File and info.path.endswith(".tmp") and info.mtime is not None:
                mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=timezone.utc)
                if mtime < cutoff:
                    stale.append(info.path)
        return stale

    def remove_temporary(self, path: str) -> None:
        """Delete one temporary file, saying why when it cannot be (``ftlog check --repair``)."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass  # its writer, or a compaction, removed it meanwhile
        except OSError as exc:
            raise DataError(f"cannot remove {path}: {reason(exc)}") from None

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(path)


def dedupe(name: str, table: pa.Table) -> pa.Table:
    """Drop rows repeated on the table's natural key, sorted by time (used by compaction)."""
    declared = TABLES[name]
    con = duckdb.connect()
    try:
        con.register("t", table)
        sql = f"{declared.distinct('t')} ORDER BY {', '.join(declared.natural_key)}, {declared.time_column}"
        if "superseded" in declared.schema.names:  # mark every row but the one that stands, as the view relies on
            sql = f"SELECT * REPLACE ({declared.rank()} > 1 AS superseded) FROM ({sql})"
        result = arrow(con.sql(sql))
    finally:
        con.close()
    # Task, time, then the rest of the key (a checkpoint's step): curves read back in order, and files compress better.
    order = dict.fromkeys(["task_id", declared.time_column, *declared.natural_key])
    return conform(result.sort_by([(column, "ascending") for column in order]), declared.schema)


def _redact(location: str) -> str:
    return redact(location)  # the one redaction of every location and URL ftlog shows (ftlog/redact.py)


def _duckdb_filesystem(fs: pafs.FileSystem, scheme: str, root: str) -> Any:
    try:
        from fsspec.implementations.arrow import ArrowFSWrapper, wrap_exceptions
    except ImportError:  # pragma: no cover - fsspec is a dependency; this guards broken installs
        raise DataError("reading object storage needs the fsspec package: pip install fsspec") from None

    # The data files of the tables: written once under a name no other write takes (Dataset.write_table), and never
    # changed, only deleted (by a compaction or a repair).
    tables = "|".join(re.escape(name) for name in TABLES)
    write_once = re.compile(rf"{re.escape(root)}/(?:{tables})/date=[^/]*/[^/._][^/]*\.parquet")

    class ObjectStore(ArrowFSWrapper):  # type: ignore[misc]
        """The dataset's filesystem as DuckDB reads it (through fsspec), in few requests, each as large as the reads
        allow. A glob lists its folder once, every level at a time, where fsspec would list folder by folder and look
        at each file; the sizes and times listed answer DuckDB's questions on the files found (size, modified), which
        would each be a request. An object of up to WHOLE_OBJECT bytes is read whole, in one GET, as DuckDB reads
        them anyway, and kept (up to OBJECT_CACHE bytes in all) for as long as the listings and looks that come
        before every read of it show the same version: the same size and time for a data file (it never changes
        under its name), and the same version tag (ETag) for any other object. So a query reads what is stored at
        the time it lists, as it did before: nothing kept is read once a listing no longer shows it."""

        protocol = (scheme,)
        cachable = False  # one per dataset, never shared through fsspec's instance cache

        def __init__(self, fs: pafs.FileSystem) -> None:
            super().__init__(fs)
            self._lock = threading.Lock()
            self._seen: dict[str, tuple[dict[str, Any], tuple[Any, ...] | None]] = {}  # path -> (info, version)
            self._kept: OrderedDict[str, tuple[tuple[Any, ...], bytes]] = OrderedDict()  # least recently read first
            self._kept_bytes = 0

        def find(
            self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any
        ) -> Any:
            """fsspec's ``find`` (what ``glob`` lists with) in one recursive listing."""
            folder = self._strip_protocol(path).rstrip("/")
            if not folder:
                return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
            except (FileNotFoundError, NotADirectoryError):
                infos = []
            except OSError:
                infos = []  # as fsspec's walk does: what cannot be listed holds nothing to read
            entries = [self._make_entry(info) for info in infos]
            self._saw(folder, entries)
            found: dict[str, dict[str, Any]] = {}
            for entry in entries:
                depth = entry["name"][len(folder) + 1 :].count("/") + 1
                if (withdirs or entry["type"] != "directory") and (maxdepth is None or depth <= maxdepth):
                    found[entry["name"]] = entry
            if not found and not infos:
                with contextlib.suppress(OSError):
                    if self._look(folder)["type"] == "file":  # as fsspec's: a file is found as itself
                        found[folder] = self.info(folder)
            names = sorted(found)
            return {name: found[name] for name in names} if detail else names

        def exists(self, path: str, **kwargs: Any) -> bool:
            try:
                self._look(self._strip_protocol(path))
            except Exception:  # as fsspec's: whatever cannot be looked at does not exist
                return False
            return True

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            path = self._strip_protocol(path)
            with self._lock:
                seen = self._seen.get(path)
            return dict(seen[0]) if seen else self._look(path)

        def modified(self, path: str) -> datetime:
            mtime: datetime = self.info(path)["mtime"]
            return mtime

        @wrap_exceptions  # type: ignore[untyped-decorator]
        def _open(
            self, path: str, mode: str = "rb", block_size: int | None = None, seekable: bool = True, **kwargs: Any
        ) -> Any:
            path = self._strip_protocol(path)
            if mode != "rb":
                return super()._open(path, mode, block_size, seekable, **kwargs)
            with self._lock:
                seen = self._seen.get(path)
                kept = self._kept.get(path)
                if seen and kept and kept[0] == seen[1]:
                    self._kept.move_to_end(path)
                    return io.BytesIO(kept[1])
            size = seen[0]["size"] if seen and seen[0]["type"] == "file" else None
            if size is None or size > WHOLE_OBJECT:
                return super()._open(path, mode, block_size, seekable, **kwargs)
            with self.fs.open_input_file(path) as source:  # pyarrow asks for the size first: a HEAD, then one GET
                data = source.read_at(source.size(), 0)
            if len(data) != size:
                self._look(path)  # replaced since it was looked at: what DuckDB asks next is of the object read
            elif seen and seen[1] is not None:
                self._keep(path, seen[1], data)
            return io.BytesIO(data)

        def _look(self, path: str) -> dict[str, Any]:
            """A fresh look at one path (a HEAD on S3), remembered for the questions and the read that follow."""
            etag = None
            try:
                with self.fs.open_input_file(path) as source:  # a file: its size, time and version tag at once
                    size, meta = source.size(), _metadata(source.metadata())
                etag = meta.get("etag")
                mtime = _metadata_time(meta.get("last-modified"))
                if mtime is None:
                    raise OSError("no time in the object's metadata")  # a store that says less: ask it plainly
                entry = {"name": path, "size": size, "type": "file", "mtime": mtime}
            except OSError:
                [info] = self.fs.get_file_info([path])
                try:
                    entry = self._make_entry(info)
                except FileNotFoundError:
                    self._forget(path)
                    raise
            self._remember(entry, etag)
            return dict(entry)

        def _saw(self, folder: str, entries: list[dict[str, Any]]) -> None:
            """Remember what a listing of ``folder`` found, and forget what it no longer holds."""
            listed = {entry["name"] for entry in entries}
            with self._lock:
                for path in [path for path in self._seen if path.startswith(folder + "/") and path not in listed]:
                    self._drop(path)
            for entry in entries:
                if entry["type"] == "file":
                    self._remember(entry, None)

        def _remember(self, entry: dict[str, Any], etag: bytes | None) -> None:
            path, kind = entry["name"], entry["type"]
            once = kind == "file" and write_once.fullmatch(path) is not None
            mtime = entry["mtime"].timestamp() if entry["mtime"] is not None else None
            version = (entry["size"], mtime, etag) if kind == "file" and (etag or once) else None
            with self._lock:
                self._seen[path] = (entry, version)

        def _forget(self, path: str) -> None:
            with self._lock:
                self._drop(path)

        def _drop(self, path: str) -> None:  # with the lock held
            self._seen.pop(path, None)
            kept = self._kept.pop(path, None)
            if kept:
                self._kept_bytes -= len(kept[1])

        def _keep(self, path: str, version: tuple[Any, ...], data: bytes) -> None:
            with self._lock:
                if self._seen.get(path, (None, None))[1] != version:
                    return  # listed again meanwhile, as another version or not at all
                old = self._kept.pop(path, None)
                self._kept_bytes += len(data) - (len(old[1]) if old else 0)
                self._kept[path] = (version, data)
                while self._kept_bytes > OBJECT_CACHE:
                    _, (_, dropped) = self._kept.popitem(last=False)
                    self._kept_bytes -= len(dropped)

    return ObjectStore(fs)


def _metadata(found: Mapping[str | bytes, str | bytes]) -> dict[str, bytes]:
    """An object's metadata as pyarrow gives it, with names in lower case."""

    def text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    return {text(name).lower(): text(value).encode() for name, value in found.items()}


def _metadata_time(value: bytes | None) -> datetime | None:
    """The time of an object's ``Last-Modified`` metadata as pyarrow gives it (ISO 8601), or None."""
    try:
        return datetime.fromisoformat(value.decode().replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


# A dataset is a folder (or object-store prefix) holding at least one of these: a table folder or the collector
# state. The quarantine of `ftlog check --repair` alone is no dataset.
DATASET_FOLDERS = (*TABLES, STATE_DIR)


def require_dataset(data: str | Path | Dataset, *, create: bool = False) -> Dataset:
    """The dataset at ``data``, or a DataError when there is none there: ``data`` is a regular file, or a folder
    holding none of ``DATASET_FOLDERS``. Every reading command calls this first, so that a mistyped ``--data`` in
    a cron job fails instead of reading as an empty dataset. With ``create`` (a collector) a missing or empty folder
    is fine, since the first round makes the dataset there; a regular file still is not."""
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    try:
        if dataset.fs.get_file_info(dataset.root).type == pafs.FileType.File:
            raise DataError(f"no ftlog dataset at {dataset.display}: it is a file, not a folder; check --data or "
                            "FTLOG_DATA")  # fmt: skip
        if create:
            return dataset
        found = dataset.fs.get_file_info([dataset.path(name) for name in DATASET_FOLDERS])
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {dataset.display}: {exc}") from None
    if not any(info.type == pafs.FileType.Directory for info in found):
        raise DataError(
            f"no ftlog dataset at {dataset.display}: run `ftlog collect` first, or check --data or FTLOG_DATA"
        )
    return dataset
