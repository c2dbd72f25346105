"""Validate a dataset: what would make a query fail or silently wrong, and where it is.

``check(data)`` reads every file a reader would see (``DATA/<table>/date=*/*.parquet``) and the collector state,
and reports:

- **unreadable** files: not Parquet, truncated, or with pages that do not decode;
- **schema** mismatches: a column whose type differs from the declared schema (``ftlog.schema``), or a declared
  column that is missing (unless it was added later, ``schema.ADDED_COLUMNS``), or one that is not declared;
- **duplicates**: rows that repeat a table's natural key (``store.NATURAL_KEYS``): left by an interrupted
  compaction or a copied file. The views absorb them; ``ftlog compact`` merges them away;
- **state** ahead of the data: the collector state remembers a snapshot or checkpoint that no file holds, so the
  collector would never write it again.

``check(data, repair=True)`` moves unreadable files to ``DATA/_quarantine/`` under the same relative path, and a
state file that is unreadable or ahead of the data likewise (the next round rebuilds it from the data). Nothing
is ever deleted. Reading is safe while collectors and compaction run: files that vanish mid-check (merged by a
compaction) are dropped from the analysis and the files that replaced them are read instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import DataError
from .schema import ADDED_COLUMNS, TABLES
from .store import NATURAL_KEYS, Dataset

QUARANTINE = "_quarantine"
STATE_DIR = "_state"
MAX_PASSES = 20  # listings until one has no file vanish before it is read; each reads only files not read before


@dataclass(frozen=True)
class Problem:
    kind: str  # 'unreadable', 'schema', 'duplicates' or 'state'
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, kind: str) -> int:
        return sum(1 for problem in self.problems if problem.kind == kind)

    def summary(self) -> str:
        checked = f"checked {self.files} files ({sum(self.rows.values())} rows) in {self.location}"
        if self.ok:
            return f"{checked}: no problems"
        kinds = ("unreadable", "schema", "duplicates", "state")
        counts = ", ".join(f"{self.count(kind)} {kind}" for kind in kinds if self.count(kind))
        return f"{checked}: {len(self.problems)} problems ({counts})"

    def lines(self) -> list[str]:
        moved = [f"moved {source} to {target}" for source, target in self.moved]
        return [str(problem) for problem in self.problems] + moved + [self.summary()]


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
        raise DataError(f"no dataset at {dataset.location}")
    report = CheckReport(dataset.location)
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
    if repair:
        for problem in report.problems:
            if problem.kind in ("unreadable", "state"):  # every state problem names a state file
                target = _quarantine(dataset, problem.path)
                if target is not None:
                    report.moved.append((problem.path, target))
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
    schema = TABLES[name]
    key_columns = [column.strip() for column in NATURAL_KEYS.get(name, "").split(",") if column.strip()]
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
            except (OSError, pa.ArrowException, ValueError) as exc:
                table.problems[path] = Problem("unreadable", rel, _first_line(exc, path))
                continue
            mismatch = _schema_mismatch(content.schema, schema, ADDED_COLUMNS.get(name, ()))
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


def _schema_mismatch(found: pa.Schema, declared: pa.Schema, optional: tuple[str, ...] = ()) -> str | None:
    issues = []
    for wanted in declared:
        index = found.get_field_index(wanted.name)
        if index < 0:
            if wanted.name not in optional:  # a column added later is NULL in older files, as readers take it
                issues.append(f"{wanted.name} is missing")
        elif not found.field(index).type.equals(wanted.type):
            issues.append(f"{wanted.name} is {found.field(index).type}, expected {wanted.type}")
    issues += [f"{extra} is not declared" for extra in found.names if extra not in declared.names]
    return "; ".join(issues) or None


def _duplicates(tables: dict[str, _Table]) -> list[Problem]:
    problems = []
    con = duckdb.connect()
    try:
        for name, table in tables.items():
            if not table.keys or name not in NATURAL_KEYS:
                continue
            con.register("keyed", pa.concat_tables(table.keys.values()))
            rows = con.execute(
                f"""SELECT partition, sum(n - 1)::BIGINT, sum(n)::BIGINT FROM (
                        SELECT min(partition) AS partition, count(*) AS n FROM keyed
                        GROUP BY {NATURAL_KEYS[name]} HAVING count(*) > 1
                    ) GROUP BY partition ORDER BY partition"""
            ).fetchall()
            con.unregister("keyed")
            problems += [
                Problem(
                    "duplicates", f"{name}/{partition}", f"{extra} extra rows repeat the key ({NATURAL_KEYS[name]})"
                )
                for partition, extra, _ in rows
            ]
    finally:
        con.close()
    return problems


def _read_states(dataset: Dataset) -> tuple[dict[str, pa.Table], list[Problem]]:
    selector = pafs.FileSelector(dataset.path(STATE_DIR), allow_not_found=True)
    states: dict[str, pa.Table] = {}
    problems = []
    for info in dataset.fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        rel = _relative(dataset, info.path)
        try:
            states[rel] = _read(dataset, info.path)
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException, ValueError) as exc:
            reason = _first_line(exc, info.path)
            problems.append(Problem("state", rel, f"unreadable ({reason}); the next round rebuilds it"))
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
    return pa.concat_tables(parts) if parts else TABLES[name].empty_table().select(columns)


def _quarantine(dataset: Dataset, rel: str) -> str | None:
    """Move ``rel`` to ``_quarantine/rel`` (``.1``, ``.2``... if taken); None if it vanished meanwhile."""
    target = f"{QUARANTINE}/{rel}"
    suffix = 0
    while dataset.fs.get_file_info(dataset.path(target)).type != pafs.FileType.NotFound:
        suffix += 1
        target = f"{QUARANTINE}/{rel}.{suffix}"
    dataset.fs.create_dir(dataset.path(target).rsplit("/", 1)[0], recursive=True)
    try:
        dataset.fs.move(dataset.path(rel), dataset.path(target))
    except FileNotFoundError:
        return None
    return target


def _read(dataset: Dataset, path: str) -> pa.Table:
    """A whole file in one read: a state file may be replaced meanwhile, and reading by name reopens it."""
    with dataset.fs.open_input_file(path) as source:
        return pq.read_table(pa.BufferReader(source.read()))


def _first_line(exc: BaseException, path: str) -> str:
    """The reason without the file's own path, which the problem line already starts with."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(f"{path}': ", 1)[-1]
