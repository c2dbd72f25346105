"""The collector state: the last known state of every task, a cache in ``DATA/_state/<name>.parquet``.

A round compares each answer with it, so its cost follows the number of tasks, not the length of history. It is
only a cache of what the data holds: a missing or unreadable file is rebuilt from the data through the views (the
one reason this module, unlike ``store``, reads the views). Sharded collectors keep one file each, named by the
caller, so they never overwrite each other's.

Written after the round's data and polls (``collect.save``): a crash in between leaves a state behind the data,
which only costs rows the views de-duplicate, never ahead of it, which would stop a collector from writing them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DataError
from .rows import StateRow
from .schema import TS
from .store import STATE_DIR, Dataset, conform, parquet_bytes, reason
from .views import connect, fetch

log = logging.getLogger(__name__)

DEFAULT_NAME = "tasks"  # an unsharded collector's state file; a shard's is named after it
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
POINT = ("step", "perplexity", "training_loss")  # the fields of a STATE checkpoint
# A task's checkpoints as three lists, in step order: steps, perplexity, training_loss.
Points = tuple[list[int], list[float | None], list[float | None]]
_STATE_DICTIONARY = ["task_id", "state_hash", "run_status"]


@dataclass(frozen=True)
class TaskState:
    """What the collector knows of one task. Frozen: a round makes a new one (``collect.diff``) rather than have
    one step fill in fields another step reads."""

    state_hash: str | None
    run_status: str | None
    run_progress: float | None
    observed_at: datetime | None
    checkpoints: dict[int, tuple[float | None, float | None]]
    progress_since: datetime | None = None  # NULL in state files written before stall events existed
    stall_reported: bool = False


def same_value(a: float | None, b: float | None) -> bool:
    """Whether two stored values are the same: NaN is the same as NaN (a diverged run reports it every time)."""
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


class State(Mapping[str, TaskState]):
    """The collector state as an Arrow table (schema ``STATE``), read as a mapping task_id -> TaskState.

    A task's TaskState, its checkpoints a dict, is built only when asked for and not kept: as Python objects a
    million checkpoints take over 300 MB, as Arrow columns about 25 MB. ``digest`` is the SHA-256 of the state file
    it was read from (None if it was not): :func:`save_state` merges into this table, without reading the file
    again, while the file is still that one.
    """

    def __init__(self, table: pa.Table | None = None, digest: bytes | None = None) -> None:
        # One chunk per column, so that a row number finds a task's values (no copy for a file's single chunk).
        self.table = (STATE.empty_table() if table is None else conform(table, STATE)).combine_chunks()
        self.digest = digest
        self._columns = {name: self.table.column(name).combine_chunks() for name in STATE.names}
        # A task listed twice (never written so, but tolerated) reads as its last row, as a dict would.
        self._rows = {task_id: row for row, task_id in enumerate(self._columns["task_id"].to_pylist())}
        lists = self._columns["checkpoints"]
        self._offsets = lists.offsets.to_numpy()  # row i's checkpoints: [offsets[i], offsets[i + 1]) of the values
        self._null_lists = set(np.flatnonzero(lists.is_null().to_numpy(zero_copy_only=False)).tolist())
        # Each field of every checkpoint, as a NumPy view where it has no NULL (its values read fast), else as is.
        self._fields: list[Any] = [
            child.to_numpy() if child.null_count == 0 else child for child in lists.values.flatten()
        ]

    def __getitem__(self, task_id: str) -> TaskState:
        steps, perplexity, loss = self.points(task_id)
        checkpoints = dict(zip(steps, zip(perplexity, loss, strict=True), strict=True))
        return replace(self.head(task_id), checkpoints=checkpoints)

    def head(self, task_id: str) -> TaskState:
        """``self[task_id]`` without its checkpoints (an empty dict): :meth:`points` reads them as columns."""
        row = self._rows[task_id]
        state_hash, status, progress, observed_at, since, stalled = (
            self._columns[name][row].as_py()
            for name in ("state_hash", "run_status", "run_progress", "observed_at", "progress_since", "stall_reported")
        )
        return TaskState(state_hash, status, progress, observed_at, {}, since, bool(stalled))

    def points(self, task_id: str) -> Points:
        """The checkpoints of ``task_id`` as stored, as three lists (none for a NULL list): what ``self[task_id]``
        holds as a dict, without building it."""
        row = self._rows[task_id]
        if row in self._null_lists:
            return [], [], []
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        steps, perplexity, loss = (
            values[start:end].tolist() if isinstance(values, np.ndarray) else values[start:end].to_pylist()
            for values in self._fields
        )
        return steps, perplexity, loss

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def state_row(task_id: str, state: TaskState) -> StateRow:
    """One ``STATE`` row, checkpoints in step order."""
    return {
        "task_id": task_id,
        "state_hash": state.state_hash,
        "run_status": state.run_status,
        "run_progress": state.run_progress,
        "observed_at": state.observed_at,
        "checkpoints": [
            {"step": step, "perplexity": p, "training_loss": loss}
            for step, (p, loss) in sorted(state.checkpoints.items())
        ],
        "progress_since": state.progress_since,
        "stall_reported": state.stall_reported,
    }


class StateRows:
    """New ``STATE`` rows, a task at a time, turned into Arrow record batches every ``batch`` checkpoints. A task's
    checkpoints may be given as :data:`Points`, so that none of them becomes a dict (:func:`state_row` makes one per
    checkpoint)."""

    def __init__(self, batch: int = 100_000) -> None:
        self.batch = batch
        self._tasks: list[tuple[Any, ...]] = []  # each row's values but its checkpoints, in STATE's order
        self._offsets = [0]  # row i's checkpoints: [offsets[i], offsets[i + 1]) of the pending points
        self._points: Points = ([], [], [])
        self._batches: list[pa.RecordBatch] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, task_id: str, state: TaskState, points: Points | None = None) -> None:
        """Add the row of ``task_id`` in ``state``; ``points``, when given, are ``state.checkpoints`` in step order."""
        if points is None:
            ordered = sorted(state.checkpoints.items())
            points = [step for step, _ in ordered], [p for _, (p, _) in ordered], [loss for _, (_, loss) in ordered]
        self._tasks.append((task_id, state.state_hash, state.run_status, state.run_progress, state.observed_at,
                            state.progress_since, state.stall_reported))  # fmt: skip
        self._points[0].extend(points[0])
        self._points[1].extend(points[1])
        self._points[2].extend(points[2])
        self._offsets.append(len(self._points[0]))
        self._count += 1
        if len(self._points[0]) >= self.batch:
            self._flush()

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self._batches, schema=STATE)

    def _flush(self) -> None:
        if not self._tasks:
            return
        lists = STATE.field("checkpoints").type
        fields = list(lists.value_type)
        points = pa.StructArray.from_arrays(
            [pa.array(values, type=field.type) for values, field in zip(self._points, fields, strict=True)],
            fields=fields,
        )
        checkpoints = pa.ListArray.from_arrays(pa.array(self._offsets, pa.int32()), points, type=lists)
        others = [name for name in STATE.names if name != "checkpoints"]
        values = dict(zip(others, zip(*self._tasks, strict=True), strict=True))
        arrays = [
            checkpoints if name == "checkpoints" else pa.array(values[name], type=STATE.field(name).type)
            for name in STATE.names
        ]
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=STATE))
        self._tasks, self._offsets, self._points = [], [0], ([], [], [])


def state_path(dataset: Dataset, name: str) -> str:
    """Where the state file ``name`` lives (one per shard, see ``collect.Selection.state_name``)."""
    return dataset.path(STATE_DIR, f"{name}.parquet")


def load_state(dataset: Dataset, name: str) -> State:
    """The last known state of every task, read from the state file: its cost follows the number of tasks,
    not the length of history. A missing or unreadable file is rebuilt from the dataset and saved again."""
    try:
        return State(*_read_state(dataset, name))
    except FileNotFoundError:
        return _rebuild_state(dataset, name)
    except (OSError, pa.ArrowException) as exc:
        path = state_path(dataset, name)
        log.warning("collector state %s is unreadable (%s); rebuilding it from the dataset", path, exc)
        return _rebuild_state(dataset, name)


def save_state(
    dataset: Dataset, name: str, changes: pa.Table, *, create: bool = True, loaded: State | None = None
) -> None:
    """Merge ``changes`` (``STATE`` rows) into the state file as it is now, which another collector may have
    replaced meanwhile (newest observation per task wins), and replace it atomically.

    ``loaded`` is the state this collector read at the start of its round: while the file still holds the same
    bytes, its table is the file as it is now, and the file is not decoded again.

    Without a readable file, ``changes`` alone become the state if ``create``; otherwise the file is left as it
    is, for the next :func:`load_state` to rebuild from the data (which holds this round's rows by then): a
    collector that read a state file must not turn one removed meanwhile (``ftlog check --repair``) into a
    state that lacks every task this round left unchanged."""
    if loaded is not None and loaded.digest is not None and loaded.digest == _file_digest(dataset, name):
        base = loaded.table
    else:
        try:
            base, _ = _read_state(dataset, name)
        except (OSError, pa.ArrowException) as exc:
            if not create:
                return
            if not isinstance(exc, FileNotFoundError):
                log.warning("collector state %s is unreadable (%s); replacing it", state_path(dataset, name), exc)
            base = STATE.empty_table()
    _write_state(dataset, name, _merge_states(base, conform(changes, STATE)))


def _read_state(dataset: Dataset, name: str) -> tuple[pa.Table, bytes]:
    """The state file's table, and the SHA-256 of its bytes."""
    # In one read: other collectors replace this file while it is read, and reopening it by name halfway
    # (as reading by path does) would mix the old file's footer with the new file's pages.
    path = state_path(dataset, name)
    try:
        with dataset.fs.open_input_file(path) as source:
            content = source.read()
    except PermissionError as exc:
        # Not damage: rebuilding over a file this process may not read would hide what needs fixing.
        raise DataError(f"cannot read {path}: {reason(exc)}") from None
    return conform(pq.read_table(pa.BufferReader(content)), STATE), hashlib.sha256(content).digest()


def _file_digest(dataset: Dataset, name: str) -> bytes | None:
    """The SHA-256 of the state file's bytes, read a piece at a time; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with dataset.fs.open_input_stream(state_path(dataset, name)) as source:
            while piece := source.read(1 << 20):
                digest.update(piece)
    except (OSError, pa.ArrowException):
        return None
    return digest.digest()


def _rebuild_state(dataset: Dataset, name: str) -> State:
    # Saved right away: otherwise a round that changes nothing would leave the file missing, and every later
    # round would scan the whole history again.
    table = _state_from_history(dataset)
    digest = _write_state(dataset, name, table) if len(table) else None
    return State(table, digest)


def _write_state(dataset: Dataset, name: str, table: pa.Table) -> bytes:
    """Replace the state file ``name`` with ``table``; return the SHA-256 of the bytes written."""
    # Dictionaries only where values repeat: for checkpoint values the writer would build and drop them. LZ4, not
    # zstd: the values (noisy doubles) hardly compress either way, and every round reads and writes the whole file.
    data = parquet_bytes(conform(table, STATE), compression="lz4", use_dictionary=_STATE_DICTIONARY)
    dataset.write_bytes(state_path(dataset, name), data)
    return hashlib.sha256(data).digest()


def _state_from_history(dataset: Dataset) -> pa.Table:
    """Rebuild the cache from stored rows: needed only when the state file is missing or unreadable."""
    if not dataset.files("snapshots"):
        return STATE.empty_table()
    con = connect(dataset)
    try:
        return conform(fetch(con, _REBUILD_STATE), STATE)
    finally:
        con.close()


# The stall fields as the collector keeps them: since when the latest status and progress have held (where the
# last run of equal values starts), and whether a stall was reported since then.
_REBUILD_STATE = """
    WITH moves AS (
        SELECT task_id, max(observed_at) AS progress_since FROM (
            SELECT task_id, observed_at, (run_status, run_progress) IS DISTINCT FROM
                   lag((run_status, run_progress)) OVER (PARTITION BY task_id ORDER BY observed_at) AS moved
            FROM snapshots
        ) WHERE moved GROUP BY task_id
    ), known AS (
        SELECT t.task_id, t.state_hash, t.run_status, t.run_progress, t.observed_at, m.progress_since,
               EXISTS (SELECT 1 FROM events e WHERE e.task_id = t.task_id AND e.kind = 'stall'
                       AND e."at" >= m.progress_since) AS stall_reported
        FROM tasks t LEFT JOIN moves m USING (task_id)
    ), points AS (
        SELECT task_id, list(struct_pack(step, perplexity, training_loss) ORDER BY step) AS checkpoints
        FROM checkpoints GROUP BY task_id
    )
    SELECT task_id, k.state_hash, k.run_status, k.run_progress, k.observed_at,
           coalesce(p.checkpoints, []) AS checkpoints, k.progress_since,
           coalesce(k.stall_reported, false) AS stall_reported
    FROM known k FULL JOIN points p USING (task_id)
"""


def _merge_states(base: pa.Table, changes: pa.Table) -> pa.Table:
    """``base`` with each task's row replaced by its row in ``changes``, unless ``base`` observed the task later."""
    at = pc.index_in(changes.column("task_id"), value_set=base.column("task_id"))
    before = pc.take(base.column("observed_at"), at)
    # Null ``before``: a task new to ``base``, or a row without a time; both give way, as does an equal time.
    newer = pc.or_kleene(pc.is_null(before), pc.greater_equal(changes.column("observed_at"), before))
    wins = pc.fill_null(newer, False)
    if not pc.all(wins).as_py():  # (filtering copies every row, even when all of them are kept)
        changes = changes.filter(wins)
    kept = base.filter(pc.invert(pc.is_in(base.column("task_id"), value_set=changes.column("task_id"))))
    return pa.concat_tables([kept, changes])
