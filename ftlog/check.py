"""Validate a dataset: what would make a query fail or silently wrong, and where it is.

``check(data)`` reads every file a reader would see (``DATA/<table>/date=*/*.parquet``) and the collector state,
and reports:

- **unreadable** files: not Parquet, truncated, or with pages that do not decode;
- **schema** mismatches: a column whose type differs from the declared schema (``ftlog.schema``), or a declared
  column that is missing (unless it was added later, ``Table.added_columns``), or one that is not declared;
- **duplicates**: rows that repeat a table's natural key (``Table.natural_key``): left by an interrupted
  compaction or a copied file. The views absorb them; ``ftlog compact`` merges them away;
- **state** ahead of the data: the collector state remembers a snapshot or checkpoint that no file holds, so the
  collector would never write it again;
- **permission**: a file this process may not read. It may hold good rows, so it is never moved: fix its mode;
- **temporary** files (``*.tmp``) older than an hour: left by a writer that was killed, never data.

``check(data, repair=True)`` moves unreadable files and files of another schema (which every reader skips) to
``DATA/_quarantine/`` under the same relative path, and a state file that is unreadable or ahead of the data
likewise (the next round rebuilds it from the data). It deletes stale temporary files and nothing else. Reading is
safe while collectors and compaction run: files that vanish mid-check (merged by a compaction) are dropped from the
analysis and the files that replaced them are read instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import DataError
from .schema import TABLES
from .store import STATE_DIR, Dataset, reason, schema_mismatch

KINDS = ("unreadable", "schema", "duplicates", "state", "permission", "temporary")
QUARANTINED = ("unreadable", "schema", "state")  # what --repair moves: every reader skips it (a state is rebuilt)
QUARANTINE = "_quarantine"
MAX_PASSES = 20  # listings until one has no file vanish before it is read; each reads only files not read before


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    path: str  # relative to the dataset root: a file, or a partition for duplicates
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


@dataclass
class CheckReport:
    location: str
    files: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows in readable files
    problems: list[Problem] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative to the dataset root
    removed: list[str] = field(default_factory=list)  # stale temporary files, relative to the dataset root

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, kind: str) -> int:
        return sum(1 for problem in self.problems if problem.kind == kind)

    def summary(self) -> str:
        checked = f"checked {self.files} files ({sum(self.rows.values())} rows) in {self.location}"
        if self.ok:
            return f"{checked}: no problems"
        counts = ", ".join(f"{self.count(kind)} {kind}" for kind in KINDS if self.count(kind))
        return f"{checked}: {len(self.problems)} problems ({counts})"

    def lines(self) -> list[str]:
        moved = [f"moved {source} to {target}" for source, target in self.moved]
        removed = [f"removed {path}" for path in self.removed]
        return [str(problem) for problem in self.problems] + moved + removed + [self.summary()]


@dataclass
class _Table:
    """What one pass over a table's files learned: natural-key columns per readable, conforming file."""

    keys: dict[str, pa.Table] = field(default_factory=dict)  # path -> key columns plus the partition date
    rows: dict[str, int] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)  # path -> problem


def check(data: str | Path | Dataset, *, repair: bool = False) -> CheckReport:
    """Check the dataset at ``data``; with ``repair``, quarantine what cannot be read. Raises DataError only
    when there is no dataset at all."""
    dataset = data if isinstance(data, Dataset) else Dataset(data)
    if dataset.fs.get_file_info(dataset.root).type == pafs.FileType.NotFound:
        raise DataError(f"no dataset at {dataset.display}")
    report = CheckReport(dataset.display)  # the location as shown: a URI's keys never reach the output
    # The state before the data: a collector writes data first, so a state read earlier never runs ahead of
    # data read later, however many rounds finish in between.
    states, state_problems = _read_states(dataset)
    tables = {name: _scan(dataset, name) for name in TABLES}
    report.files = len(states) + len(state_problems) + sum(len(t.keys) + len(t.problems) for t in tables.values())
    report.rows = {name: sum(table.rows.values()) for name, table in tables.items()}
    for table in tables.values():
        report.problems += table.problems.values()
    report.problems += _duplicates(tables)
    report.problems += state_problems
    report.problems += _state_ahead(states, tables)
    stale = dataset.stale_temporary_files()
    report.problems += [
        Problem("temporary", _relative(dataset, path), "left by an interrupted write over an hour ago; never data")
        for path in stale
    ]
    if repair:
        for problem in report.problems:
            if problem.kind in QUARANTINED:  # every state problem names a state file
                target = _quarantine(dataset, problem.path)
                if target is not None:
                    report.moved.append((problem.path, target))
        for path in stale:
            dataset.remove_temporary(path)
            report.removed.append(_relative(dataset, path))
    return report


def _relative(dataset: Dataset, path: str) -> str:
    return path[len(dataset.root) + 1 :]


def _visible_files(dataset: Dataset, name: str) -> set[str]:
    return {info.path for infos in dataset.partitions(name).values() for info in infos}


def _scan(dataset: Dataset, name: str) -> _Table:
    """Read every visible file of one table, as of one listing in which every file could be read.

    A compaction may remove a file between a listing and its reading; it wrote the merged file first, so the next
    listing holds those rows. Files read earlier and gone from the latest listing are dropped (their rows are in a
    listed file), so duplicates are counted in one consistent set of files."""
    table = _Table()
    key_columns = list(TABLES[name].natural_key)
    for _ in range(MAX_PASSES):
        listed = _visible_files(dataset, name)
        seen = set(table.keys) | set(table.problems)
        for gone in seen - listed:
            table.keys.pop(gone, None)
            table.rows.pop(gone, None)
            table.problems.pop(gone, None)
        vanished = False
        for path in sorted(listed - seen):
            rel = _relative(dataset, path)
            try:
                content = _read(dataset, path)
            except FileNotFoundError:
                vanished = True  # merged away between listing and reading: list again
                continue
            except PermissionError as exc:
                table.problems[path] = _permission(rel, exc)
                continue
            except (OSError, pa.ArrowException, ValueError) as exc:
                table.problems[path] = Problem("unreadable", rel, reason(exc, path))
                continue
            mismatch = schema_mismatch(content.schema, name)
            if mismatch:
                table.problems[path] = Problem("schema", rel, mismatch)
                continue
            partition = rel.split("/")[1]
            keys = content.select(key_columns)
            table.keys[path] = keys.append_column("partition", pa.array([partition] * len(keys), pa.string()))
            table.rows[path] = content.num_rows
        if not vanished:
            break
    return table


def _permission(rel: str, exc: OSError) -> Problem:
    # Reported, never moved: the file may hold good rows, and it is its mode that needs fixing.
    return Problem("permission", rel, f"cannot read it ({reason(exc)}); fix its permissions")


def _duplicates(tables: dict[str, _Table]) -> list[Problem]:
    problems = []
    con = duckdb.connect()
    try:
        for name, table in tables.items():
            if not table.keys:
                continue
            key = ", ".join(TABLES[name].natural_key)
            con.register("keyed", pa.concat_tables(table.keys.values()))
            rows = con.execute(
                f"""SELECT partition, sum(n - 1)::BIGINT, sum(n)::BIGINT FROM (
                        SELECT min(partition) AS partition, count(*) AS n FROM keyed
                        GROUP BY {key} HAVING count(*) > 1
                    ) GROUP BY partition ORDER BY partition"""
            ).fetchall()
            con.unregister("keyed")
            problems += [
                Problem("duplicates", f"{name}/{partition}", f"{extra} extra rows repeat the key ({key})")
                for partition, extra, _ in rows
            ]
    finally:
        con.close()
    return problems


def _read_states(dataset: Dataset) -> tuple[dict[str, pa.Table], list[Problem]]:
    states: dict[str, pa.Table] = {}
    problems = []
    for info in dataset.listing(dataset.path(STATE_DIR)):
        in_folder = info.path.rsplit("/", 1)[0] == dataset.path(STATE_DIR)  # the listing is recursive
        if info.type != pafs.FileType.File or not in_folder or not info.base_name.endswith(".parquet"):
            continue
        rel = _relative(dataset, info.path)
        try:
            states[rel] = _read(dataset, info.path)
        except FileNotFoundError:
            continue
        except PermissionError as exc:
            problems.append(_permission(rel, exc))
        except (OSError, pa.ArrowException, ValueError) as exc:
            why = reason(exc, info.path)
            problems.append(Problem("state", rel, f"unreadable ({why}); the next round rebuilds it"))
    return states, problems


def _state_ahead(states: dict[str, pa.Table], tables: dict[str, _Table]) -> list[Problem]:
    """State entries that name a snapshot or checkpoint no readable file holds."""
    if not states or "snapshots" not in tables or "checkpoints" not in tables:
        return []
    problems = []
    con = duckdb.connect()
    try:
        con.register("snapshot_keys", _keys(tables, "snapshots", ["task_id", "state_hash"]))
        con.register("checkpoint_keys", _keys(tables, "checkpoints", ["task_id", "step"]))
        for rel, state in states.items():
            if not {"task_id", "state_hash", "checkpoints"} <= set(state.column_names):
                problems.append(Problem("state", rel, "not a collector state file (columns missing)"))
                continue
            con.register("state", state.select(["task_id", "state_hash", "checkpoints"]))
            lost = con.execute(
                """SELECT
                    (SELECT count(*) FROM state ANTI JOIN snapshot_keys USING (task_id, state_hash)
                     WHERE state.state_hash IS NOT NULL),
                    (SELECT count(*) FROM (SELECT task_id, unnest(checkpoints).step AS step FROM state) AS points
                     ANTI JOIN checkpoint_keys USING (task_id, step))"""
            ).fetchall()[0]
            con.unregister("state")
            if any(lost):
                detail = (f"remembers {lost[0]} snapshots and {lost[1]} checkpoints that no data file holds, "
                          "so the collector would not write them again")  # fmt: skip
                problems.append(Problem("state", rel, detail))
    finally:
        con.close()
    return problems


def _keys(tables: dict[str, _Table], name: str, columns: list[str]) -> pa.Table:
    parts = [keys.select(columns) for keys in tables[name].keys.values()]
    return pa.concat_tables(parts) if parts else TABLES[name].schema.empty_table().select(columns)


def _quarantine(dataset: Dataset, rel: str) -> str | None:
    """Move ``rel`` to ``_quarantine/rel`` (``.1``, ``.2``... if taken); None if it vanished meanwhile."""
    target = f"{QUARANTINE}/{rel}"
    suffix = 0
    try:
        while dataset.fs.get_file_info(dataset.path(target)).type != pafs.FileType.NotFound:
            suffix += 1
            target = f"{QUARANTINE}/{rel}.{suffix}"
        dataset.fs.create_dir(dataset.path(target).rsplit("/", 1)[0], recursive=True)
        dataset.fs.move(dataset.path(rel), dataset.path(target))
    except FileNotFoundError:
        return None
    except OSError as exc:  # a read-only filesystem, no permission on the folder
        raise DataError(f"cannot move {dataset.path(rel)} to {dataset.path(target)}: {reason(exc)}") from None
    return target


def _read(dataset: Dataset, path: str) -> pa.Table:
    """A whole file in one read: a state file may be replaced meanwhile, and reading by name reopens it."""
    with dataset.fs.open_input_file(path) as source:
        return pq.read_table(pa.BufferReader(source.read()))
