"""Events derived by the collector: every kind once, exactly once across restarts and overlap, and `ftlog events`."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from event_story import BASE, EXPECTED, JOB, T0, A, B, Clock, meaning, play

from ftlog.analysis import events
from ftlog.cli import cli
from ftlog.client import QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.events import event_id
from ftlog.simulator import Simulator
from ftlog.state import STATE, load_state
from ftlog.store import Dataset
from ftlog.views import connect


def rows(dataset: Dataset, sql: str) -> list[tuple[Any, ...]]:
    con = connect(dataset)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def seen(dataset: Dataset) -> set[tuple[str, str, str, int]]:
    """The events view as (task_id, kind, meaning, minute first seen)."""
    found = rows(dataset, 'SELECT task_id, kind, details, "at" FROM events')
    return {(t, k, meaning(k, json.loads(d)), int((at - T0).total_seconds() // 60)) for t, k, d, at in found}


def test_a_story_yields_every_kind_of_event_once(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    results = play(sim, client, dataset)
    assert seen(dataset) == EXPECTED
    assert rows(dataset, "SELECT count(*) FROM _events") == [(len(EXPECTED),)]  # nothing re-derived, either
    assert [r.events for r in results] == [0, 0, 1, 1, 1, 1, 0, 2, 3]

    details = {(t, k, meaning(k, json.loads(d))): json.loads(d) for t, k, d in
               rows(dataset, "SELECT task_id, kind, details FROM events")}  # fmt: skip
    context = {"job_id": JOB, "job_name": "sft-sweep-7", "model": "ERNIE-Speed-8K", "train_mode": "SFT",
               "parameter_scale": "LoRA"}  # fmt: skip
    assert details[(B, "status", "Failed")] == {"from": "Running", "to": "Failed", "progress": 5.0,
                                                "error_code": "500001", "error_message": "GPU node lost",
                                                "finish_time": None, **context}  # fmt: skip
    assert details[(A, "status", "Done")]["finish_time"] == "2024-05-06T09:20:00Z"
    assert details[("task-story00000e", "status", "Failed")]["from"] is None  # first seen already failed
    assert details[(A, "stall", "34.0")] == {"progress": 34.0, "since": "2024-05-06T08:20:00Z", "minutes": 35.0,
                                             "threshold_minutes": 30.0, **context}  # fmt: skip
    assert details[(A, "best_checkpoint", "training_loss@192")] == {
        "metric": "training_loss", "step": 192, "value": 0.41, "previous_best": 1.06, "previous_step": 64, **context
    }  # fmt: skip
    assert details[(A, "best_checkpoint", "perplexity@256")] == {
        "metric": "perplexity", "step": 256, "value": 1.3, "previous_best": 1.5, "previous_step": 192, **context
    }  # fmt: skip
    # The id says what happened, not when: anyone can recompute it.
    ids = dict(rows(dataset, "SELECT event_id, kind FROM events"))
    assert event_id(A, "status", "Done") in ids and event_id(A, "best_checkpoint", "perplexity", 256) in ids


def test_the_stall_threshold_is_configurable_and_can_be_off(
    sim: Simulator, client: QianfanClient, dataset: Dataset, tmp_path: Path
) -> None:
    play(sim, client, dataset, upto=60, stall_after=timedelta(minutes=10))
    stalls = {(t, m, minute) for t, k, m, minute in seen(dataset) if k == "stall"}
    # 5% since minute 0: past 10 minutes at minute 20 for task b (Failed by then) and c; 34% since minute 20.
    assert stalls == {("task-story00000c", "5.0", 20), (A, "34.0", 50)}

    other = Dataset(tmp_path / "other")
    play(sim, client, other, upto=60, stall_after=None)
    assert not [k for _, k, _, _ in seen(other) if k == "stall"]


def test_a_restarted_collector_records_each_event_once(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    state_file = Path(dataset.root) / "_state" / "tasks.parquet"
    play(sim, client, dataset, upto=55)

    # A lost state file is rebuilt from history, stall tracking included: the stall is not reported again.
    def tracking() -> dict[str, tuple[Any, ...]]:
        return {task_id: (s.progress_since, s.stall_reported) for task_id, s in load_state(dataset, "tasks").items()}

    live = tracking()
    state_file.unlink()
    assert tracking() == live and live[A] == (T0 + timedelta(minutes=20), True)
    play(sim, client, dataset, after=55, upto=60)
    assert seen(dataset) == {event for event in EXPECTED if event[3] <= 60}

    # A collector that died after writing its rows but before saving its state: the next one derives the same
    # events again, an hour later, with the same ids.
    before = state_file.read_bytes()
    play(sim, client, dataset, after=60, upto=80)
    state_file.write_bytes(before)
    play(sim, client, dataset, after=60, upto=80, late=timedelta(hours=1))
    assert rows(dataset, "SELECT count(*) FROM _events") == [(len(EXPECTED) + 5,)]
    assert seen(dataset) == EXPECTED  # once each, at its first sighting


def test_overlapping_collectors_record_each_event_once(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    play(sim, client, dataset, upto=60)
    tasks = [f"task-both0000{k:02d}" for k in range(6)]
    for task_id in tasks:
        sim.script(task_id, {**BASE, "taskId": task_id, "runStatus": "Running", "runProgress": "50%"}, job_id=JOB)
    collect_round(client, dataset, Selection(task_ids=tuple(tasks)), now=Clock(T0 + timedelta(minutes=61)))
    for task_id in tasks:
        sim.script(task_id, {**BASE, "taskId": task_id, "runStatus": "Done", "runProgress": "100%"}, job_id=JOB)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def collector(minute: int) -> None:
        try:
            barrier.wait()
            for n in range(3):
                clock = Clock(T0 + timedelta(minutes=minute + n))
                collect_round(client, dataset, Selection(task_ids=tuple(tasks)), now=clock)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=collector, args=(minute,)) for minute in (62, 63)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    done = rows(dataset, "SELECT task_id, count(*) FROM events WHERE task_id LIKE 'task-both%' GROUP BY ALL")
    assert sorted(done) == [(task_id, 1) for task_id in tasks]
    assert len(seen(dataset)) == 4 + len(tasks)  # the story's first events and one per new task


def test_state_files_from_before_events_stay_readable(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    play(sim, client, dataset, upto=30)
    state_file = Path(dataset.root) / "_state" / "tasks.parquet"
    old_schema = pa.schema([f for f in STATE if f.name not in ("progress_since", "stall_reported")])
    pq.write_table(pq.read_table(state_file).select(old_schema.names).cast(old_schema), state_file)

    state = load_state(dataset, "tasks")
    assert state[A].run_progress == 34.0 and state[A].progress_since is None and not state[A].stall_reported
    play(sim, client, dataset, after=30, upto=80)
    # Without progress_since, the stall is measured from the last stored change (minute 20), a safe bound.
    assert seen(dataset) == EXPECTED


# -- ftlog events ------------------------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_events_command_formats_and_filters(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    play(sim, client, dataset)
    data = dataset.root

    listed = run("events", "--data", data, "--format", "json")
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.stdout)
    assert len(records) == len(EXPECTED)
    assert [r["at"] for r in records] == sorted(r["at"] for r in records)
    failed = next(r for r in records if r["task_id"] == B)
    assert failed["kind"] == "status" and failed["at"] == "2024-05-06T08:20:00.000000Z"
    assert failed["details"]["error_message"] == "GPU node lost"  # an object, not JSON text inside JSON

    table = run("events", "--data", data, "--kind", "status", "--kind", "stall")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["at", "task_id", "kind"] and len(lines) == 1 + 5

    since = run("events", "--data", data, "--since", "2024-05-06T09:15", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(since.stdout)))
    assert {(r["task_id"], r["kind"]) for r in parsed} == {(A, "status"), (A, "best_checkpoint")}
    assert len(parsed) == 3 and json.loads(parsed[0]["details"])["job_id"] == JOB

    frame = events(data, kinds=["best_checkpoint"], tasks=[A])
    assert len(frame) == 4 and set(frame["kind"]) == {"best_checkpoint"}


def test_events_command_on_an_empty_dataset_and_bad_arguments(tmp_path: Path) -> None:
    none = run("events", "--data", str(tmp_path / "none"), "--format", "json")
    assert none.exit_code == 1 and none.stderr.startswith("Error: no ftlog dataset at") and none.stdout == ""
    (tmp_path / "empty" / "events").mkdir(parents=True)
    empty = run("events", "--data", str(tmp_path / "empty"), "--format", "json")
    assert (empty.exit_code, empty.stdout.strip()) == (0, "[]")
    bad = run("events", "--data", str(tmp_path), "--since", "yesterday")
    assert bad.exit_code == 2 and "expected an ISO time" in bad.stderr
    assert run("events", "--data", str(tmp_path), "--kind", "nonsense").exit_code == 2


def test_compaction_merges_copies_and_the_view_keeps_first_sightings(
    sim: Simulator, client: QianfanClient, dataset: Dataset
) -> None:
    play(sim, client, dataset, upto=60, compact=False)
    first = seen(dataset)
    for path in list((Path(dataset.root) / "events").rglob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table, path.with_name("copy-" + path.name))  # a copied file: true duplicates
        later = table.set_column(3, "observed_at", pc.add(table["observed_at"], pa.scalar(timedelta(hours=1))))
        pq.write_table(later, path.with_name("later-" + path.name))  # every event seen again an hour later
    assert rows(dataset, "SELECT count(*) FROM _events") == [(3 * len(first),)]
    assert seen(dataset) == first
    assert dataset.compact(T0 + timedelta(days=2)) > 0
    assert rows(dataset, "SELECT count(*) FROM _events") == [(2 * len(first),)]
    assert seen(dataset) == first


@pytest.mark.parametrize(
    "values",
    [[3.0, 1.0, 2.0, 1.0], [None, float("nan"), float("inf")], [], [0.0, -0.0, 5.0], [None, 2.0, -float("inf"), 2.0]],
)
def test_lowest_of_columns_is_best_of_the_dict(values: list[float | None]) -> None:
    from ftlog.events import best, lowest, merge_lowest

    steps = [10 * (k + 1) for k in range(len(values))]
    checkpoints = {step: (value, value) for step, value in zip(steps, values, strict=True)}
    assert repr(lowest(steps, values)) == repr(best(checkpoints, 0))
    for cut in range(len(values) + 1):  # known checkpoints, then the rest appended
        merged = merge_lowest(lowest(steps[:cut], values[:cut]), lowest(steps[cut:], values[cut:]))
        assert repr(merged) == repr(best(checkpoints, 0))
