"""`ftlog check`: unreadable and partial files, schema mismatches, duplicate keys and a state ahead of the data are
reported with exit status 1; `--repair` quarantines what cannot be read and deletes nothing."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from ftlog.check import check
from ftlog.cli import cli
from ftlog.client import QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=timezone.utc)
TASKS = tuple(f"task-check{k:06d}" for k in range(4))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def collected(sim: Simulator, client: QianfanClient, data: Path) -> Path:
    """Three rounds on one past day and one on the next, each changing every task, compaction off."""
    dataset = Dataset(data)
    for n, at in enumerate([T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), T0 + timedelta(days=1)]):
        for task_id in TASKS:
            points = [{"step": 10 * (s + 1), "perplexity": 2.0, "trainingLoss": 1.0 / (s + 1)} for s in range(n + 1)]
            sim.script(task_id, {"taskId": task_id, "runStatus": "Running", "runProgress": f"{n}%",
                                 "checkpointList": points})  # fmt: skip
        collect_round(client, dataset, Selection(task_ids=TASKS), now=lambda at=at: at, compact=False)
    return data


def files(data: Path, table: str) -> list[Path]:
    return sorted((data / table).rglob("*.parquet"))


def test_a_clean_dataset_exits_0(collected: Path) -> None:
    result = run("check", "--data", str(collected))
    assert result.exit_code == 0, result.output
    stored = list(collected.rglob("*.parquet"))  # every table's files and the collector state
    rows = sum(pq.read_metadata(path).num_rows for path in stored if "_state" not in path.parts)
    assert rows >= 48  # four rounds of four tasks: snapshots, checkpoints and polls at the least
    assert result.stdout.splitlines() == [f"checked {len(stored)} files ({rows} rows) in {collected}: no problems"]
    assert result.stderr == ""


def test_every_kind_of_problem_is_reported_and_repair_quarantines_only_damaged_files(collected: Path) -> None:
    data = collected
    snapshots, checkpoints, polls = files(data, "snapshots"), files(data, "checkpoints"), files(data, "polls")
    rel = {path: str(path.relative_to(data)) for path in [*snapshots, *checkpoints, *polls]}
    # A partial file under a visible name (what a non-atomic writer killed mid-write would leave), garbage, empty.
    partial = snapshots[3]
    partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])
    garbage = polls[0].with_name("20240701T090500000000-garbage0.parquet")
    garbage.write_bytes(b"<html>not parquet</html>")
    empty = checkpoints[0].with_name("20240701T090600000000-empty000.parquet")
    empty.write_bytes(b"")
    # A column of the wrong type, and a file missing a declared column.
    table = pq.read_table(polls[1])
    pq.write_table(table.set_column(table.schema.get_field_index("http_status"), "http_status",
                                    table["http_status"].cast(pa.string())), polls[1])  # fmt: skip
    pq.write_table(pq.read_table(checkpoints[1]).drop_columns(["training_loss"]), checkpoints[1])
    # A whole file copied under another name: every row of it twice.
    copied = polls[2].with_name("20240701T090700000000-copied00.parquet")
    shutil.copy(polls[2], copied)
    originals = {path: path.read_bytes() for path in (partial, garbage, empty, polls[1], checkpoints[1])}

    result = run("check", "--data", str(data))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert f"{rel[partial]}: unreadable: " in "\n".join(lines)
    assert any(line.startswith(f"{garbage.relative_to(data)}: unreadable: ") for line in lines)
    assert any(line.startswith(f"{empty.relative_to(data)}: unreadable: ") for line in lines)
    assert f"{rel[polls[1]]}: schema: http_status is string, expected int32" in lines
    assert f"{rel[checkpoints[1]]}: schema: training_loss is missing" in lines
    assert "polls/date=2024-07-01: duplicates: 4 extra rows repeat the key (poll_id)" in lines
    # The partial snapshot file held the last state of every task: the collector state is now ahead of the data.
    assert any(line.startswith("_state/tasks.parquet: state: remembers 4 snapshots") for line in lines)
    assert lines[-1].endswith("7 problems (3 unreadable, 2 schema, 1 duplicates, 1 state)")
    assert not (data / "_quarantine").exists()  # checking changes nothing

    repaired = run("check", "--repair", "--data", str(data))
    assert repaired.exit_code == 1  # problems were found, even if some were repaired
    moved = [line for line in repaired.stdout.splitlines() if line.startswith("moved ")]
    assert sorted(moved) == sorted(
        f"moved {path} to _quarantine/{path}"
        for path in (rel[partial], garbage.relative_to(data), empty.relative_to(data), rel[polls[1]],
                     rel[checkpoints[1]], "_state/tasks.parquet")
    )  # fmt: skip
    for path, content in originals.items():
        assert not path.exists() and (data / "_quarantine" / path.relative_to(data)).read_bytes() == content

    # Files of another schema, which every reader skips, are quarantined too. Quarantined files are out of every
    # view; what is left (rows the views absorb) is reported until `ftlog compact` merges it away.
    after = run("check", "--data", str(data))
    assert after.exit_code == 1
    assert [line.split(": ")[1] for line in after.stdout.splitlines()[:-1]] == ["duplicates"]
    with connect(data) as con:
        assert con.execute("SELECT count(*) FROM snapshots").fetchall() == [(12,)]


def test_quarantine_keeps_earlier_quarantined_files(collected: Path) -> None:
    bad = files(collected, "polls")[0]
    for n in range(2):
        bad.write_bytes(f"broken {n}".encode())
        report = check(collected, repair=True)
        assert [problem.kind for problem in report.problems] == ["unreadable"]
    quarantined = collected / "_quarantine" / bad.relative_to(collected)
    assert quarantined.read_bytes() == b"broken 0"
    assert quarantined.with_name(quarantined.name + ".1").read_bytes() == b"broken 1"


def test_a_moved_state_file_is_rebuilt_by_the_next_round(
    collected: Path, sim: Simulator, client: QianfanClient
) -> None:
    files(collected, "snapshots")[-1].unlink()  # the newest states are gone: the state file is ahead
    report = check(collected, repair=True)
    assert [(p.kind, p.path) for p in report.problems] == [("state", "_state/tasks.parquet")]
    assert report.moved == [("_state/tasks.parquet", "_quarantine/_state/tasks.parquet")]
    # Rebuilt from the data, the state lets the collector store the lost states again when it sees them.
    result = collect_round(client, Dataset(collected), Selection(task_ids=TASKS), now=lambda: T0 + timedelta(days=2))
    assert result.changed == len(TASKS)
    assert check(collected).ok


def test_no_dataset_is_an_error(tmp_path: Path) -> None:
    result = run("check", "--data", str(tmp_path / "nothing-here"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no ftlog dataset at") and result.stdout == ""


def test_files_of_an_older_ftlog_pass_check_and_compact_gives_them_the_new_columns(collected: Path) -> None:
    """Columns declared later (Table.added_columns) are missing from older files: `check` accepts them, every view
    reads them as NULL, and `ftlog compact` rewrites those files, even alone in a partition, so they gain them."""
    con = connect(collected)
    before = {v: con.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall() for v in ("checkpoints", "curves")}
    con.close()
    for table, dropped in (("checkpoints", ["superseded"]), ("snapshots", ["last_step", "final_loss"])):
        for path in files(collected, table):
            old = pq.read_table(path)
            pq.write_table(old.drop_columns(dropped), path)
    assert run("check", "--data", str(collected)).exit_code == 0
    con = connect(collected)
    assert con.execute("SELECT count(*) FROM _checkpoints WHERE superseded IS NOT NULL").fetchone() == (0,)
    assert {v: con.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall() for v in before} == before
    con.close()

    result = run("compact", "--data", str(collected))
    assert result.exit_code == 0, result.output
    for table in ("checkpoints", "snapshots"):
        assert all("superseded" in pq.read_schema(p).names or table == "snapshots" for p in files(collected, table))
        assert all("last_step" in pq.read_schema(p).names or table == "checkpoints" for p in files(collected, table))
    assert len(files(collected, "checkpoints")) == 2  # one per day: the closed day merged, the last day rewritten
    con = connect(collected)
    assert con.execute("SELECT count(*) FROM _checkpoints WHERE superseded IS NULL").fetchone() == (0,)
    assert {v: con.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall() for v in before} == before
    con.close()
    assert run("check", "--data", str(collected)).exit_code == 0
