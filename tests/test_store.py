"""The Parquet store, compaction, de-duplicating views and the collector state file. No server: rounds are
diffed and saved from made-up answers."""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from payloads import DONE, T0

from ftlog.client import Answer
from ftlog.collect import RoundChanges, diff, save
from ftlog.normalise import normalise
from ftlog.schema import SNAPSHOTS
from ftlog.state import STATE, TaskState, load_state, save_state, state_row
from ftlog.store import Dataset, dedupe
from ftlog.views import connect


class Clock:
    """An injectable UTC clock that moves only when told to; ``ticks`` counts the rounds run with it."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.ticks = 0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def snapshot_of(result: dict[str, Any]) -> dict[str, Any]:
    return normalise("task-x", result, T0, "req-1").snapshot


def view_rows(dataset: Dataset) -> dict[str, list[tuple[Any, ...]]]:
    """Every view's rows, sorted, so two dataset states can be compared for equality."""
    queries = {
        "snapshots": "SELECT task_id, observed_at, state_hash, run_status, run_progress, raw FROM snapshots",
        "tasks": "SELECT task_id, state_hash, first_seen_at, last_polled_at FROM tasks",
        "checkpoints": "SELECT * FROM checkpoints",
        "polls": "SELECT poll_id, task_id, polled_at, outcome FROM polls",
        "metric_values": "SELECT * FROM metric_values",
        "status_changes": "SELECT * FROM status_changes",
        "events": "SELECT * FROM events",
    }
    con = connect(dataset)
    try:
        return {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in queries.items()}
    finally:
        con.close()


def parquet_files(data: Path) -> list[Path]:
    return sorted(data.rglob("*.parquet"))


STORE_TASKS = tuple(f"task-store{k:07d}" for k in range(3))


def run_rounds(dataset: Dataset, clock: Clock, rounds: int, *, compact: bool = True) -> None:
    """Rounds one minute apart over made-up answers (so nothing depends on wall-clock speed); in each round every
    task changes and reports one new checkpoint, so every round writes a file to every table."""
    for _ in range(rounds):
        clock.ticks += 1
        replay(dataset, clock, STORE_TASKS, compact=compact)
        clock.advance(minutes=1)


def replay(dataset: Dataset, clock: Clock, tasks: tuple[str, ...], *, compact: bool = True) -> RoundChanges:
    """A collector round over the answers of the clock's current tick, diffed and saved as ``ftlog collect`` does
    (no server: these tests are about the files, not about fetching)."""
    points = [{"step": 64 * n, "perplexity": 1 + 1 / n, "trainingLoss": 1 / n} for n in range(1, clock.ticks + 1)]
    answers = []
    for task_id in tasks:
        result = {**DONE, "taskId": task_id, "runStatus": "Running", "checkpointList": points,
                  "runProgress": f"{clock.ticks + STORE_TASKS.index(task_id)}%"}  # fmt: skip
        answers.append((task_id, Answer(result, f"req-{clock.ticks}-{task_id}", 200), 0.001, clock()))
    changes = diff(load_state(dataset, "tasks"), answers)
    save(dataset, "tasks", changes, clock())
    if compact:
        dataset.compact(clock())
    return changes


# -- writing --------------------------------------------------------------------------------------------------


def test_append_writes_one_file_per_date_atomically(dataset: Dataset, data: Path) -> None:
    rows = [
        normalise("task-a", DONE, T0, "r1").snapshot,
        normalise("task-b", DONE, T0 + timedelta(hours=1), "r2").snapshot,
        normalise("task-c", DONE, T0 + timedelta(days=1), "r3").snapshot,
    ]
    paths = dataset.append("snapshots", rows, T0)
    assert [Path(p).parent.name for p in paths] == ["date=2024-03-01", "date=2024-03-02"]
    assert not list(data.rglob("*.tmp"))
    assert pq.read_schema(paths[0]).equals(SNAPSHOTS)
    assert dataset.append("snapshots", [], T0) == []


def test_leftover_tmp_files_are_invisible_and_cleaned_up_when_stale(dataset: Dataset, data: Path) -> None:
    dataset.append("snapshots", [normalise("task-a", DONE, T0, "r1").snapshot], T0)
    good = parquet_files(data)[0]
    # What a writer killed mid-write leaves behind: a truncated file under a temporary name.
    leftover = good.with_name(good.name + ".1234abcd.tmp")
    leftover.write_bytes(good.read_bytes()[:40])
    assert dataset.files("snapshots") == [str(good)]
    assert len(view_rows(dataset)["snapshots"]) == 1
    dataset.compact(datetime.now(timezone.utc))
    assert leftover.exists()  # it might still be a live write of another collector
    old = time.time() - 2 * 3600
    os.utime(leftover, (old, old))
    dataset.compact(datetime.now(timezone.utc))
    assert not leftover.exists()
    assert parquet_files(data) == [good]


# -- compaction and de-duplication ----------------------------------------------------------------------------


def test_compaction_merges_closed_partitions_and_keeps_results(dataset: Dataset, data: Path) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 3)  # day 1: compaction after each round finds nothing closed
    clock.advance(days=1)
    run_rounds(dataset, clock, 2, compact=False)
    tables = ("snapshots", "checkpoints", "polls")
    assert all(len(list((data / t / "date=2024-03-01").glob("*.parquet"))) == 3 for t in tables)
    before = view_rows(dataset)
    assert len(before["snapshots"]) == 15 and len(before["polls"]) == 15 and len(before["checkpoints"]) == 15

    # `ftlog compact`: day 1 is closed, day 2 is still open; day 1 also has three events files (the first round's
    # file of no rows, as it derived no event, and new best checkpoints in its second and third rounds)
    assert dataset.compact(clock()) == 9 + 3
    for table in tables:
        assert len(list((data / table / "date=2024-03-01").glob("*.parquet"))) == 1, table
        assert len(list((data / table / "date=2024-03-02").glob("*.parquet"))) == 2, table
    assert view_rows(dataset) == before

    clock.advance(days=1)
    run_rounds(dataset, clock, 1)  # a regular round compacts the partition that just closed
    for table in tables:
        assert len(list((data / table / "date=2024-03-02").glob("*.parquet"))) == 1, table
    assert len(view_rows(dataset)["polls"]) == 18


def test_views_are_identical_before_during_and_after_an_interrupted_compaction(dataset: Dataset, data: Path) -> None:
    clock = Clock(T0)
    for n in range(3):
        run_rounds(dataset, clock, 1)
        replay(dataset, clock, ("task-store0000000",), compact=False)
        clock.advance(minutes=1 + n)
    before = view_rows(dataset)
    files_before = {table: dataset.files(table) for table in ("snapshots", "checkpoints", "polls", "events")}

    # A compaction that wrote its merged files and died before deleting the sources: every row is there twice.
    for table, paths in files_before.items():
        merged = dedupe(table, pa.concat_tables(dataset.read_table(p, table) for p in paths))
        dataset.write_table(table, merged, T0.date(), clock())
        assert len(dataset.files(table)) == len(paths) + 1
    assert view_rows(dataset) == before

    # Two overlapping collectors may also have written the very same rows (here: a copied file).
    copy = Path(files_before["snapshots"][0])
    shutil.copy(copy, copy.with_name("20240301T000000000000-copy0000.parquet"))
    assert view_rows(dataset) == before

    removed = dataset.compact(T0 + timedelta(days=1))
    assert removed == sum(len(paths) + 1 for paths in files_before.values()) + 1
    assert all(len(dataset.files(table)) == 1 for table in files_before)
    assert view_rows(dataset) == before
    assert dataset.compact(T0 + timedelta(days=1)) == 0  # nothing left to do


def test_two_values_of_a_step_stored_at_one_instant_show_one_value_before_and_after_compaction(
    dataset: Dataset,
) -> None:
    """Overlapping collectors may store two values of a step at the same instant. The view, compaction's
    `superseded` mark and compare()'s recount rank them by one declared order (schema.TABLES), so all pick one."""
    for task_id, values in (("task-a", [(2.0, 0.5), (1.5, 0.7)]), ("task-b", [(1.5, 0.7), (2.0, 0.5)])):
        for perplexity, loss in values:  # one file each, as two collectors write them
            row = {"task_id": task_id, "step": 10, "perplexity": perplexity, "training_loss": loss, "observed_at": T0}
            dataset.append("checkpoints", [{**row, "superseded": False}], T0)
    before = view_rows(dataset)["checkpoints"]
    assert [(p, loss) for _, _, p, loss, _ in before] == [(1.5, 0.7)] * 2  # the lower perplexity breaks the tie
    assert dataset.compact(T0 + timedelta(days=1)) == 4
    assert view_rows(dataset)["checkpoints"] == before


def test_open_partition_is_compacted_only_when_it_has_many_files(dataset: Dataset) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 3)
    before = view_rows(dataset)
    assert dataset.compact(clock(), open_max_files=4) == 0
    assert len(dataset.files("polls")) == 3
    # Events too: the first round's file of no rows and two files of new best checkpoints.
    assert dataset.compact(clock(), open_max_files=3) == 9 + 3
    assert len(dataset.files("polls")) == 1
    assert view_rows(dataset) == before


def test_a_bad_file_does_not_stop_compaction_of_other_partitions(
    dataset: Dataset, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 2)
    clock.advance(days=1)
    run_rounds(dataset, clock, 2)
    bad = data / "polls" / "date=2024-03-01" / "20240301T999999999999-notparq.parquet"
    bad.write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, logger="ftlog.store"):
        dataset.compact(T0 + timedelta(days=5))
    assert "polls/date=2024-03-01" in caplog.text
    assert len(list(bad.parent.glob("*.parquet"))) == 2  # left alone for `ftlog check` to report
    assert len(list((data / "polls" / "date=2024-03-02").glob("*.parquet"))) == 1
    assert len(list((data / "snapshots" / "date=2024-03-01").glob("*.parquet"))) == 1


# -- collector state ------------------------------------------------------------------------------------------


def test_load_state_reads_the_state_file_not_the_history(dataset: Dataset, data: Path) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 2)
    state = load_state(dataset, "tasks")
    assert (data / "_state" / "tasks.parquet").is_file()
    assert set(state) == {f"task-store{k:07d}" for k in range(3)}
    assert all(len(s.checkpoints) == 2 for s in state.values())
    # Without any history the state is still complete: it came from the state file alone.
    for table in ("snapshots", "checkpoints", "polls"):
        shutil.rmtree(data / table)
    assert load_state(dataset, "tasks") == state


def test_deleted_state_is_rebuilt_without_duplicate_rows(dataset: Dataset, data: Path) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 2)
    state = load_state(dataset, "tasks")
    raw_counts = _raw_counts(dataset)
    (data / "_state" / "tasks.parquet").unlink()

    assert load_state(dataset, "tasks") == state
    assert (data / "_state" / "tasks.parquet").is_file()  # saved again, so later rounds read only the file

    (data / "_state" / "tasks.parquet").unlink()
    result = replay(dataset, clock, STORE_TASKS)  # nothing changed
    assert (result.changed, result.unchanged, result.new_checkpoints) == (0, 3, 0)
    assert _raw_counts(dataset) == {**raw_counts, "polls": raw_counts["polls"] + 3}
    assert (data / "_state" / "tasks.parquet").is_file()


def test_unreadable_state_is_rebuilt(dataset: Dataset, data: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    run_rounds(dataset, clock, 1)
    state = load_state(dataset, "tasks")
    (data / "_state" / "tasks.parquet").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="ftlog.state"):
        assert load_state(dataset, "tasks") == state
    assert "unreadable" in caplog.text
    assert pq.read_table(data / "_state" / "tasks.parquet").num_rows == 3


def test_save_state_merges_with_the_file_as_it_is_then(dataset: Dataset, data: Path) -> None:
    def rows(*tasks: tuple[str, str, datetime | None]) -> pa.Table:
        states = {task_id: TaskState(h, "Running", 50.0, at, {1: (2.0, 0.5)}) for task_id, h, at in tasks}
        return pa.Table.from_pylist([state_row(task_id, s) for task_id, s in states.items()], schema=STATE)

    later = T0 + timedelta(minutes=1)
    save_state(dataset, "tasks", rows(("a", "a1", T0), ("b", "b1", later), ("c", "c1", None), ("d", "d1", T0)),
               create=False)  # fmt: skip
    assert not (data / "_state" / "tasks.parquet").exists()  # left for the next round to rebuild from the data
    save_state(dataset, "tasks", rows(("a", "a1", T0), ("b", "b1", later), ("c", "c1", None), ("d", "d1", T0)))
    # Newest observation wins; a tie or a stored row without a time gives way to the change.
    save_state(dataset, "tasks", rows(("a", "a2", T0), ("b", "b2", T0), ("c", "c2", T0), ("e", "e2", T0)),
               create=False)  # fmt: skip
    state = load_state(dataset, "tasks")
    assert {task_id: s.state_hash for task_id, s in state.items()} == {"a": "a2", "b": "b1", "c": "c2", "d": "d1",
                                                                       "e": "e2"}  # fmt: skip
    assert "a" in state and "z" not in state and len(state) == 5
    assert state["e"] == TaskState("e2", "Running", 50.0, T0, {1: (2.0, 0.5)}, None, False)


def _raw_counts(dataset: Dataset) -> dict[str, int]:
    """Rows stored, before any de-duplication by the views."""
    con = connect(dataset)
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM _{t}").fetchone()[0] for t in ("snapshots", "checkpoints", "polls")
        }
    finally:
        con.close()
