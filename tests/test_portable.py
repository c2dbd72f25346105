"""ftlog's views outside ftlog. `ftlog sql --engine duckdb|spark` prints statements that give a plain DuckDB session
and a real Spark session (local mode) exactly the rows of ftlog's own views, over a dataset with every kind of
stored duplicate; and pandas, pyarrow and polars read every raw table folder from the first round on, `date` as a
date and times in UTC."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from payloads import DONE, T0

from ftlog import act
from ftlog.cli import cli
from ftlog.client import QianfanClient
from ftlog.collect import Selection, after_round, run_round
from ftlog.config import SQL_ENGINES
from ftlog.normalise import normalise
from ftlog.notify import Notifier, targets_from
from ftlog.schema import CURVE_SUMMARY, TABLES, TS
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import DIALECTS, VIEW_ORDER, WITH_FILENAME, connect

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

JOB = "job-portable0001"
FIRST = tuple(f"task-pfirst{k:05d}" for k in range(2))  # described by the first collector only
SHARED = tuple(f"task-pboth0{k:05d}" for k in range(3))  # by both
SECOND = tuple(f"task-psecnd{k:05d}" for k in range(2))  # by the second only
ALL = FIRST + SHARED + SECOND
DAY1 = datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(days=1)
LAST_VERSION = 6
RAW = [f"_{name}" for name in TABLES]
PARTITIONING = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")


def serve(sim: Simulator, version: int) -> None:
    """Version ``version`` of every task: more progress and one more checkpoint each time; from version 4 on the
    API reports step 32 with another value (and no perplexity), and the last version finishes or fails the tasks."""
    for k, task_id in enumerate(ALL):
        points = [{"step": 32 * n, "perplexity": 1 + 1 / n, "trainingLoss": 1 / n} for n in range(1, version + 1)]
        if version >= 4:
            points[0] = {"step": 32, "perplexity": None, "trainingLoss": 0.75}
        status = ("Failed" if k == 1 else "Done") if version == LAST_VERSION else "Running"
        answer: dict[str, Any] = {"taskId": task_id, "jobId": JOB, "jobName": f"portable {k % 2}",
                                  "model": "ERNIE-Speed-8K", "trainMode": "SFT" if k % 3 else "DPO",
                                  "parameterScale": "LoRA" if k % 2 else "Full", "runStatus": status,
                                  "runProgress": f"{min(100, 18 * version)}%", "checkpointList": points}  # fmt: skip
        if status == "Done":
            answer["metrics"] = {"BLEU-4": f"{50 + k}.5%", "ROUGE-L": "61.25%", "EDIT-DISTANCE": "43.07"}
        if status == "Failed":
            answer |= {"errorCode": "E1001", "errorMessage": "out of memory"}
        sim.script(task_id, answer, job_id=JOB)


def clock(at: datetime) -> Callable[[], datetime]:
    return lambda: at


def overlapping_rounds(sim: Simulator, client: QianfanClient, dataset: Dataset, start: datetime,
                       versions: range, notifier: Notifier) -> None:  # fmt: skip
    """A round of each collector per version, 20 seconds apart, the second having read the collector state before
    the first saved it (as when cron starts one while the other runs), from the second version on: it stores
    again every state and checkpoint the first stored of the tasks they share, and derives the same events again."""
    state = Path(dataset.root) / "_state" / "tasks.parquet"
    for version in versions:
        serve(sim, version)
        at = start + timedelta(minutes=version)
        before = state.read_bytes() if state.exists() else None
        run_round(client, dataset, Selection(task_ids=FIRST + SHARED), now=clock(at))
        if before is not None:  # (a collector that finds no state file rebuilds it from the data)
            state.write_bytes(before)
        later = at + timedelta(seconds=20)
        result = run_round(client, dataset, Selection(task_ids=SHARED + SECOND), now=clock(later))
        after_round(dataset, result, now=clock(later), compact=False, notifier=notifier)


def sql_script(data: Path | str, engine: str = "duckdb") -> str:
    result = CliRunner().invoke(cli, ["sql", "--engine", engine, "--data", str(data)])
    assert result.exit_code == 0, result.output
    return result.stdout


def plain_session(script: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection of its own, with nothing from ftlog but the script: not even a Python object it could
    read as a table."""
    con = duckdb.connect()
    con.execute("SET python_enable_replacements = false")
    con.execute(script)
    return con


def statements(script: str) -> list[str]:
    """The statements of a printed script, as the README runs them through spark.sql() one by one."""
    return [statement for statement in script.split(";\n") if statement.strip()]


def spark_session(spark: SparkSession, script: str, out: Path) -> duckdb.DuckDBPyConnection:
    """Run ``script`` in Spark, write every view and raw table Spark then has to Parquet, and give a DuckDB
    connection whose views of the same names read what Spark wrote: so the rows of both engines compare in one
    way. The raw tables' ``filename`` is left out, being each engine's own name of the file."""
    for statement in statements(script):
        spark.sql(statement)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # times shown as ftlog's connection shows them
    for name in [*RAW, *VIEW_ORDER]:
        frame = spark.table(name)
        if name[1:] in WITH_FILENAME:
            frame = frame.drop("filename")
        frame.write.parquet(str(out / name))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{out / name}/*.parquet')")
    return con


def their_session(engine: str, script: str, request: pytest.FixtureRequest, out: Path) -> duckdb.DuckDBPyConnection:
    if engine == "duckdb":
        return plain_session(script)
    return spark_session(request.getfixturevalue("spark"), script, out)


def rows(
    con: duckdb.DuckDBPyConnection, name: str, exclude: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Columns, types and rows of ``name`` but ``exclude``, the rows as the sorted texts of their values: equal
    texts, equal values (times in the same time zone too, NaN included)."""
    columns = f"* EXCLUDE ({', '.join(exclude)})" if exclude else "*"
    relation = con.sql(f"SELECT {columns} FROM {name}")
    return relation.columns, [str(kind) for kind in relation.types], sorted(map(repr, relation.fetchall()))


def assert_same_views(data: Path | str, theirs: duckdb.DuckDBPyConnection, engine: str = "duckdb") -> dict[str, int]:
    """Every view and raw table of ``theirs`` has the columns, types and rows (repeats and NULLs included) of
    ftlog's own; returns the row count of each."""
    counts = {}
    with connect(data) as ours, theirs:
        for name in [*RAW, *VIEW_ORDER]:
            exclude = ("filename",) if engine != "duckdb" and name[1:] in WITH_FILENAME else ()
            expected = rows(ours, name, exclude)
            assert rows(theirs, name) == expected, name
            counts[name] = len(expected[2])
    return counts


def record_actions(sim: Simulator, client: QianfanClient, dataset: Dataset, at: datetime) -> None:
    """Actions of every outcome, in two files of one day: a stop sent and one refused (the task has ended), and a
    rule's advice recorded by two collectors, 20 seconds apart."""
    sim.script("task-pstopped0001", {"taskId": "task-pstopped0001", "jobId": JOB, "runStatus": "Running"}, JOB)
    act.record(dataset, [act.stop(client, "task-pstopped0001", JOB, now=at),
                         act.stop(client, SHARED[0], JOB, now=at)])  # fmt: skip
    evidence = {"steps": [32], "values": [0.75]}
    act.record(dataset, [act.advise(ALL[0], JOB, rule="plateau:1:5", details=evidence, now=at + timedelta(seconds=s))
                         for s in (20, 0)])  # fmt: skip


@pytest.fixture
def overlapped(sim: Simulator, client: QianfanClient, data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two days of two overlapping collectors, one of which notifies two targets (one always fails). Day 1 is
    then compacted; on day 2 a checkpoint value is revised, actions are recorded, and the day's compaction is
    interrupted after writing the merged files, their sources left in place."""
    dataset = Dataset(data)
    notifier = Notifier(targets_from(commands=["true", "false"]), attempts=1, backoff=0.01)
    overlapping_rounds(sim, client, dataset, DAY1, range(1, 4), notifier)
    assert dataset.compact(DAY2) > 0
    overlapping_rounds(sim, client, dataset, DAY2, range(4, LAST_VERSION + 1), notifier)
    record_actions(sim, client, dataset, DAY2 + timedelta(hours=1))
    with monkeypatch.context() as patch:
        patch.setattr(Dataset, "_delete_quietly", lambda self, path: None)
        assert dataset.compact(DAY2 + timedelta(days=1)) > 0
    return data


ENGINES = pytest.mark.parametrize("engine", [pytest.param("duckdb"), pytest.param("spark", marks=pytest.mark.slow)])


@ENGINES
def test_the_printed_views_return_exactly_ftlogs_rows(
    engine: str, overlapped: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with connect(overlapped) as con:
        for name, table in TABLES.items():  # every table holds rows stored twice ...
            stored, keys = con.execute(f"SELECT count(*), count(DISTINCT ({', '.join(table.natural_key)})) "
                                       f"FROM _{name}").fetchall()[0]  # fmt: skip
            assert stored > keys > 0, name
        revised = "SELECT task_id, step FROM _checkpoints GROUP BY ALL HAVING count(DISTINCT training_loss) > 1"
        assert len(con.execute(revised).fetchall()) == len(ALL)  # ... and step 32 changed its value
        # Each state of a shared task stored by both collectors, 20 seconds apart: two rows, one change.
        twice = "SELECT task_id, state_hash FROM _snapshots GROUP BY ALL HAVING count(DISTINCT observed_at) = 2"
        assert len(con.execute(twice).fetchall()) == len(SHARED) * (LAST_VERSION - 1)

    script = sql_script(overlapped, engine)
    every = {"duckdb": f"read_parquet('{overlapped}/checkpoints/date=*/[!._]*.parquet'",
             "spark": f"OPTIONS (path 'file://{overlapped}/checkpoints/date=*/[!._]*.parquet'"}  # fmt: skip
    assert every[engine] in script
    theirs = their_session(engine, script, request, tmp_path / "out")
    with theirs as con:  # the de-duplication rules themselves, as ftlog documents them
        assert con.sql("SELECT DISTINCT training_loss, perplexity FROM checkpoints WHERE step = 32").fetchall() == [
            (0.75, None)
        ]
        events = con.sql("SELECT count(*), count(DISTINCT event_id) FROM events").fetchall()
        assert events[0][0] == events[0][1] > 0
        statuses = dict(con.sql("SELECT task_id, run_status FROM tasks").fetchall())
        assert statuses == {task: "Failed" if task == ALL[1] else "Done" for task in ALL}
        assert con.sql("SELECT DISTINCT outcome FROM deliveries ORDER BY 1").fetchall() == [("delivered",), ("failed",)]
        outcomes = con.sql("SELECT outcome, count(*) FROM actions GROUP BY ALL ORDER BY 1").fetchall()
        assert outcomes == [("advised", 1), ("failed", 1), ("sent", 1)]  # the advice once, at its first sighting
        assert con.sql("SELECT DISTINCT second(\"at\") FROM actions WHERE outcome = 'advised'").fetchall() == [(0,)]
        counts = assert_same_views(overlapped, con, engine)
    assert counts["tasks"] == len(ALL) and counts["checkpoints"] == len(ALL) * LAST_VERSION
    assert all(counts[name] > 0 for name in VIEW_ORDER), counts


def write_old_file(folder: Path, table: pa.Table, name: str = "20240301T090000000000-0older00.parquet") -> None:
    """A data file as an older ftlog wrote it: without the columns declared since."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)


@ENGINES
def test_a_dataset_missing_tables_and_columns_reads_alike(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Tables without any file, files of an older ftlog (one of two snapshot files, and every checkpoint file,
    without the columns declared since), a damaged file beside a usable one, and glob characters in the dataset's
    path and a file name: the printed statements read them as ftlog does."""
    data = tmp_path / "data [1]{a,b}*?"
    dataset = Dataset(data)
    answers = [{**DONE, "taskId": f"task-old{k:09d}"} for k in range(3)]
    snapshots = [normalise(a["taskId"], a, T0 + timedelta(minutes=k), f"req-{k}") for k, a in enumerate(answers)]
    old = pa.Table.from_pylist([s.snapshot for s in snapshots[:2]], schema=TABLES["snapshots"].schema)
    write_old_file(data / "snapshots" / "date=2024-03-01", old.drop_columns(list(CURVE_SUMMARY)))
    dataset.append("snapshots", [snapshots[2].snapshot], T0)
    points = [{"task_id": s.snapshot["task_id"], "step": p["step"], "perplexity": p["perplexity"],
               "training_loss": p["training_loss"], "observed_at": s.snapshot["observed_at"]}
              for s in snapshots for p in s.checkpoints]  # fmt: skip
    declared = TABLES["checkpoints"].schema
    checkpoints = pa.Table.from_pylist(points, schema=declared.remove(declared.get_field_index("superseded")))
    write_old_file(data / "checkpoints" / "date=2024-03-01", checkpoints)
    polls = [{"poll_id": f"poll-{k}", "task_id": s.snapshot["task_id"], "polled_at": s.snapshot["observed_at"],
              "outcome": "changed", "http_status": 200} for k, s in enumerate(snapshots)]  # fmt: skip
    dataset.append("polls", polls[:2], T0)
    odd = "older [1]{a,b}*?.parquet"  # a file of the declared schema under a name that is a glob
    write_old_file(data / "polls" / "date=2024-03-01", pa.Table.from_pylist(polls[2:], TABLES["polls"].schema), odd)
    (data / "polls" / "date=2024-03-01" / "20240301T235959000000-damaged0.parquet").write_bytes(b"PAR1 not parquet")
    assert not any((data / name).exists() for name in ("events", "deliveries", "actions"))

    script = sql_script(data, engine)
    for name in ("events", "deliveries", "actions"):
        assert f"-- {name}: no usable files yet, so _{name} is empty" in script
    assert "-- polls: some files are left out" in script and "damaged0" not in script
    with their_session(engine, script, request, tmp_path / "out") as con:
        assert con.sql("SELECT count(last_step), count(*) FROM _snapshots").fetchall() == [(1, 3)]
        assert con.sql("SELECT count(superseded), count(*) FROM _checkpoints").fetchall() == [(0, 6)]
        assert con.sql("SELECT count(*) FROM metric_values").fetchall() == [(3 * len(DONE["metrics"]),)]
        counts = assert_same_views(data, con, engine)
    assert {name: counts[name] for name in TABLES} == {
        "snapshots": 3, "checkpoints": 2 * 3, "polls": 3, "events": 0, "deliveries": 0, "actions": 0
    }  # fmt: skip


def test_ftlog_sql_needs_an_engine_and_a_dataset(tmp_path: Path) -> None:
    assert tuple(DIALECTS) == SQL_ENGINES  # the choices of --engine, named for the CLI without loading the views
    runner = CliRunner()
    missing = runner.invoke(cli, ["sql", "--data", str(tmp_path)])
    assert missing.exit_code == 2 and "--engine" in missing.stderr and missing.stdout == ""
    unknown = runner.invoke(cli, ["sql", "--engine", "oracle", "--data", str(tmp_path)])
    assert unknown.exit_code == 2 and "oracle" in unknown.stderr
    nowhere = runner.invoke(cli, ["sql", "--engine", "duckdb", "--data", str(tmp_path / "nothing")])
    assert nowhere.exit_code == 1 and nowhere.stdout == ""
    assert nowhere.stderr.startswith("Error: no ftlog dataset at ") and nowhere.stderr.count("\n") == 1


# -- plain readers -------------------------------------------------------------------------------------------


class Read(NamedTuple):
    """What a reader made of one table folder."""

    columns: list[str]
    rows: list[dict[str, Any]]
    date_is_date: bool  # the partition column's type is a date
    utc: set[str]  # the columns of a timestamp type in UTC


def read_pandas(folder: Path) -> Read:
    frame = pd.read_parquet(folder, partitioning=PARTITIONING)
    dates = frame["date"]  # datetime.date values (pandas has no date dtype of its own)
    is_date = dates.dtype == object and all(type(value) is dt.date for value in dates)
    utc = {str(c) for c, kind in frame.dtypes.items() if isinstance(kind, pd.DatetimeTZDtype) and str(kind.tz) == "UTC"}
    return Read(list(frame.columns), frame.to_dict("records"), is_date, utc)


def read_pyarrow(folder: Path) -> Read:
    table = ds.dataset(folder, format="parquet", partitioning=PARTITIONING).to_table()
    utc = {field.name for field in table.schema if pa.types.is_timestamp(field.type) and field.type.tz == "UTC"}
    return Read(table.column_names, table.to_pylist(), table.schema.field("date").type == pa.date32(), utc)


def read_polars(folder: Path) -> Read:
    frame = pl.read_parquet(f"{folder}/*/*.parquet", hive_partitioning=True)
    utc = {name for name, kind in frame.schema.items() if isinstance(kind, pl.Datetime) and kind.time_zone == "UTC"}
    return Read(frame.columns, frame.to_dicts(), frame.schema["date"] == pl.Date, utc)


@pytest.mark.parametrize("reader", [read_pandas, read_pyarrow, read_polars], ids=["pandas", "pyarrow", "polars"])
def test_plain_readers_read_every_table_from_the_first_round(
    reader: Callable[[Path], Read], api_env: Simulator, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    assert CliRunner().invoke(cli, ["collect", "--all", "--data", str(data)]).exit_code == 0
    # A write in progress: readers skip its temporary name (polars by the glob of its line in the README).
    day = next((data / "snapshots").iterdir())
    (day / ".20990101T000000000000-inflight.parquet.0123abcd.tmp").write_bytes(b"PAR1 half a file")
    with connect(data) as con:
        expected = {name: con.execute(f"SELECT count(*) FROM _{name}").fetchall()[0][0] for name in TABLES}
    assert expected["snapshots"] == len(api_env.tasks) and expected["deliveries"] == 0  # no notification target

    for name, table in TABLES.items():
        read = reader(data / name)  # every folder is there, deliveries with a file of no rows
        assert (read.columns, len(read.rows)) == ([*table.schema.names, "date"], expected[name]), name
        assert read.date_is_date, name
        assert read.utc == {field.name for field in table.schema if field.type == TS}, name
        for row in read.rows:  # the partition is the UTC date of the row's time
            assert row["date"] == row[table.time_column].astimezone(timezone.utc).date(), (name, row)
    assert CliRunner().invoke(cli, ["check", "--data", str(data)]).exit_code == 0
