"""The dataset on S3-compatible object storage: a real S3 protocol server (moto's standalone server) on loopback.

Every command works with ``--data s3://bucket/prefix``; endpoint and keys come from the usual AWS variables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import duckdb
import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner
from conftest import SECRET_AK, SECRET_SK
from test_portable import assert_same_views, spark_session

from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round, shard_of
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

S3_KEY_ID = "AKIAFTLOGS3TEST0001"
S3_SECRET = "s3SecretFtlog+9f2c7e41b0aa"
BUCKET = "ftlog-bucket"
pytestmark = pytest.mark.slow  # a moto server process, and every command in a child process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server as a separate process, the way a real endpoint is reached: over HTTP."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
        server.terminate()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the bucket, with the standard AWS variables pointing at the local server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3_client = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]:
        s3_client.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/{request.node.name}"


def keys(prefix: str) -> list[str]:
    bucket, _, path = prefix.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=path + "/")
    # pyarrow leaves an empty "folder/" marker when it deletes a folder's last object: not data, skip it
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))


def download(prefix: str, target: Path) -> Path:
    bucket, _, path = prefix.removeprefix("s3://").partition("/")
    s3_client = boto3.client("s3")
    for key in keys(prefix):
        local = target / key[len(path) + 1 :]
        local.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, key, str(local))
    return target


def client_for(sim: Simulator) -> QianfanClient:
    return QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=1000, retry=RetryPolicy(attempts=2))


QUERIES = [
    "SELECT task_id, run_status, run_progress, state_hash FROM snapshots ORDER BY ALL",
    "SELECT task_id, step, perplexity, training_loss FROM checkpoints ORDER BY ALL",
    "SELECT task_id, outcome FROM polls ORDER BY ALL",
    "SELECT task_id, run_status, first_seen_at FROM tasks ORDER BY ALL",
    "SELECT * FROM metric_values ORDER BY ALL",
]


def answers(data: str | Path) -> list[list[tuple[object, ...]]]:
    with connect(data) as con:
        return [con.execute(sql).fetchall() for sql in QUERIES]


def test_every_command_works_on_object_storage(s3: str, api_env: Simulator, tmp_path: Path) -> None:
    runner = CliRunner()
    for _ in range(3):
        result = runner.invoke(cli, ["collect", "--all", "--data", s3])
        assert result.exit_code == 0, result.output
        time.sleep(0.2)
    stored = keys(s3)
    assert stored, "nothing written to the bucket"
    assert all(k.endswith(".parquet") for k in stored), "temporary objects are never left behind"
    assert {"snapshots", "checkpoints", "polls", "_state"} <= {k.split("/")[1] for k in stored}

    # What DuckDB reads through the object store is exactly what the same files say on a local disk.
    local = download(s3, tmp_path / "copy")
    remote_answers = answers(s3)
    assert remote_answers == answers(local)
    assert len({row[0] for row in remote_answers[3]}) == len(api_env.tasks)

    query = runner.invoke(cli, ["query", "SELECT count(*) AS n FROM tasks", "--format", "json", "--data", s3])
    assert query.exit_code == 0, query.output
    assert json.loads(query.stdout) == [{"n": len(api_env.tasks)}]
    status = runner.invoke(cli, ["status", "--format", "json", "--data", s3])
    assert status.exit_code == 0 and len(json.loads(status.stdout)) == len(api_env.tasks)
    compare = runner.invoke(cli, ["compare", "--by", "parameter_scale", "--format", "csv", "--data", s3])
    assert compare.exit_code == 0 and compare.stdout.startswith("parameter_scale,tasks,done")
    compact = runner.invoke(cli, ["compact", "--data", s3])
    assert compact.exit_code == 0, compact.output
    checked = runner.invoke(cli, ["check", "--data", s3])
    assert checked.exit_code == 0, checked.output
    assert "no problems" in checked.output
    report = runner.invoke(cli, ["report", "--out", str(tmp_path / "report"), "--data", s3])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert f"{len(api_env.tasks)}</" in html

    outputs = [result.output, query.output, status.output, compare.output, compact.output, checked.output,
               report.output, html]  # fmt: skip
    assert not any(S3_SECRET in text or SECRET_SK in text for text in outputs)
    for path in local.rglob("*"):
        if path.is_file():
            assert S3_SECRET.encode() not in path.read_bytes()


def printed_for_bucket(s3: str, sim: Simulator, engine: str) -> tuple[str, str]:
    """After a round into the bucket, what `ftlog sql --engine ENGINE` prints, and its comment lines; neither names
    the store's keys."""
    collect_round(client_for(sim), Dataset(s3), Selection(all_jobs=True))
    result = CliRunner().invoke(cli, ["sql", "--engine", engine, "--data", s3])
    assert result.exit_code == 0, result.output
    assert S3_SECRET not in result.output and S3_KEY_ID not in result.output
    comments = "\n".join(line for line in result.stdout.splitlines() if line.startswith("--"))
    return result.stdout, comments


def test_sql_script_for_object_storage_names_its_objects_and_what_duckdb_needs(
    s3: str, sim: Simulator, tmp_path: Path
) -> None:
    script, comments = printed_for_bucket(s3, sim, "duckdb")
    assert "httpfs" in comments and "CREATE SECRET" in comments  # what a plain session needs
    for table in ("snapshots", "checkpoints", "polls", "events", "deliveries", "actions"):
        assert f"read_parquet('{s3}/{table}/date=*/[!._]*.parquet'" in script

    # The same statements over a copy of the objects on disk give ftlog's answers over the bucket.
    local = download(s3, tmp_path / "copy")
    with connect(s3) as ours, duckdb.connect() as theirs:
        theirs.execute(script.replace(f"'{s3}/", f"'{local}/"))
        for view in ("tasks", "checkpoints", "polls", "metric_values", "status_changes", "events"):
            query = f"SELECT * FROM {view} ORDER BY ALL"
            assert theirs.execute(query).fetchall() == ours.execute(query).fetchall(), view


def test_spark_statements_for_object_storage_name_s3a_and_what_spark_needs(
    s3: str, sim: Simulator, tmp_path: Path, spark: SparkSession
) -> None:
    script, comments = printed_for_bucket(s3, sim, "spark")
    for needed in ("hadoop-aws", "fs.s3a.endpoint", "fs.s3a.path.style.access", "fs.s3a.access.key"):
        assert needed in comments, needed
    s3a = "s3a://" + s3.removeprefix("s3://")
    for table in ("snapshots", "checkpoints", "polls", "events", "deliveries", "actions"):
        assert f"OPTIONS (path '{s3a}/{table}/date=*/[!._]*.parquet', basePath '{s3a}/{table}')" in script

    # The same statements over a copy of the objects on disk (Spark's s3a module is not on PyPI) give ftlog's rows.
    local = download(s3, tmp_path / "copy")
    theirs = spark_session(spark, script.replace(f"'{s3a}/", f"'file://{local}/"), tmp_path / "out")
    counts = assert_same_views(s3, theirs, "spark")
    assert counts["tasks"] == len(sim.tasks) > 0


def test_compaction_on_object_storage_keeps_every_row(s3: str, sim: Simulator) -> None:
    dataset = Dataset(s3)
    day = datetime(2026, 4, 1, 9, 0, tzinfo=timezone.utc)
    client = client_for(sim)
    for n in range(4):  # four rounds on a closed day: four files per table
        moment = day + timedelta(minutes=5 * n)
        collect_round(client, dataset, Selection(all_jobs=True), now=lambda m=moment: m, compact=False)
    before = answers(s3)
    files_before = [k for k in keys(s3) if "/polls/" in k]
    assert len(files_before) == 4

    # A merged object written while its sources still exist (a compaction caught half way) changes no answer.
    merged_early = dataset.read_table(dataset.files("polls")[0], "polls")
    dataset.write_table("polls", merged_early, day.date(), day)
    assert answers(s3) == before

    removed = dataset.compact(day + timedelta(days=2))
    assert removed > 0
    assert answers(s3) == before
    assert len([k for k in keys(s3) if "/polls/" in k]) == 1
    client.close()


def test_sharded_collectors_split_jobs_without_coordination(s3: str) -> None:
    with Simulator(seed=11, jobs=8, tasks_per_job=3, credentials={SECRET_AK: SECRET_SK}) as sim:
        env = {
            **os.environ,
            "QIANFAN_ACCESS_KEY": SECRET_AK,
            "QIANFAN_SECRET_KEY": SECRET_SK,
            "QIANFAN_CONSOLE_API_BASE_URL": sim.url,
            "FTLOG_RPS": "500",
        }
        commands = [
            [sys.executable, "-m", "ftlog", "collect", "--all", "--shard", f"{i}/2", "--data", s3] for i in (1, 2)
        ]
        for _ in range(2):  # two rounds, both shards at once each time
            procs = [subprocess.Popen(c, env=env, stderr=subprocess.PIPE, text=True) for c in commands]
            for proc in procs:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
        by_shard = {i: {t.task_id for t in sim.tasks.values() if shard_of(t.job["jobId"], 2) == i % 2} for i in (1, 2)}
        assert by_shard[1] and by_shard[2], "both shards own some jobs"
        with connect(s3) as con:
            seen = {row[0] for row in con.execute("SELECT task_id FROM tasks").fetchall()}
            duplicates = con.execute(
                "SELECT count(*) FROM (SELECT task_id, state_hash FROM snapshots GROUP BY ALL HAVING count(*) > 1)"
            ).fetchone()
            polls_per_task = con.execute("SELECT DISTINCT count(*) FROM polls GROUP BY task_id").fetchall()
        assert seen == set(sim.tasks)
        assert duplicates == (0,)
        assert polls_per_task == [(2,)], "each task polled once per round, by exactly one shard"
        state_files = sorted(k.rsplit("/", 1)[1] for k in keys(s3) if "/_state/" in k)
        assert state_files == ["tasks-shard-1-of-2.parquet", "tasks-shard-2-of-2.parquet"]


def test_shard_option_is_validated(api_env: Simulator) -> None:
    result = CliRunner().invoke(cli, ["collect", "--all", "--shard", "3/2"])
    assert result.exit_code == 2 and "expected I/N" in result.output
    result = CliRunner().invoke(cli, ["collect", "task-x", "--shard", "1/2"])
    assert result.exit_code == 2 and "splits jobs" in result.output


def test_unreachable_object_store_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = CliRunner().invoke(cli, ["query", "SELECT 1", "--data", "s3://nowhere/x?secret_key=" + S3_SECRET])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert S3_SECRET not in result.output


def test_layout_is_plain_hive_parquet(s3: str, sim: Simulator) -> None:
    """What Spark, Trino or DuckDB elsewhere read: hive-partitioned Parquet with declared schemas."""
    collect_round(client_for(sim), Dataset(s3), Selection(all_jobs=True))
    fs, root = pafs.FileSystem.from_uri(s3)
    import pyarrow.dataset as ds

    table = ds.dataset(f"{root}/snapshots", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(sim.tasks)
    assert "date" in table.column_names and "task_id" in table.column_names


def test_check_repairs_object_storage(s3: str, sim: Simulator) -> None:
    collect_round(client_for(sim), Dataset(s3), Selection(all_jobs=True))
    bucket, _, prefix = s3.removeprefix("s3://").partition("/")
    day = datetime.now(timezone.utc).date().isoformat()
    broken = f"{prefix}/snapshots/date={day}/20990101T000000000000-broken00.parquet"
    boto3.client("s3").put_object(Bucket=bucket, Key=broken, Body=b"PAR1 not really parquet")
    runner = CliRunner()
    found = runner.invoke(cli, ["check", "--data", s3])
    assert found.exit_code == 1 and "broken00" in found.output
    repaired = runner.invoke(cli, ["check", "--repair", "--data", s3])
    assert "_quarantine" in repaired.output
    assert f"{prefix}/_quarantine/snapshots/date={day}/20990101T000000000000-broken00.parquet" in keys(s3)
    assert broken not in keys(s3)
    assert runner.invoke(cli, ["check", "--data", s3]).exit_code == 0
    with connect(s3) as con:
        assert con.execute("SELECT count(*) FROM tasks").fetchone() == (len(sim.tasks),)


def test_serve_answers_from_object_storage_and_sees_new_rounds(s3: str, sim: Simulator) -> None:
    import threading

    import requests

    from ftlog.serve import make_server_for

    dataset = Dataset(s3)
    client = client_for(sim)
    collect_round(client, dataset, Selection(all_jobs=True))
    server = make_server_for(dataset, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with connect(s3) as con:
            expected = [row[0] for row in con.execute("SELECT task_id FROM tasks ORDER BY 1").fetchall()]
        assert [t["task_id"] for t in requests.get(url + "api/tasks", timeout=60).json()] == expected
        version = requests.get(url + "api/version", timeout=60).json()["version"]
        collect_round(client, dataset, Selection(all_jobs=True))
        deadline = time.monotonic() + 30
        while requests.get(url + "api/version", timeout=60).json()["version"] == version:
            assert time.monotonic() < deadline, "a new round changes the version"
            time.sleep(0.3)
        document = requests.get(url + "api/report", timeout=60).json()
        assert document["runs"]["task_id"] == expected
        assert S3_SECRET not in requests.get(url, timeout=60).text + json.dumps(document)
    finally:
        server.shutdown()
        server.server_close()
        server.app.live.close()
        client.close()


def test_stop_claims_on_object_storage(s3: str) -> None:
    dataset = Dataset(s3)
    moment = datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert dataset.claim("stop/abc", moment) is True
    assert dataset.claim("stop/abc", moment + timedelta(seconds=1)) is False
    time.sleep(1.1)  # the store's clock (to the second) ranks a later claim last, whatever the claimant's clock says
    assert dataset.claim("stop/abc", moment - timedelta(hours=1)) is False
    dataset.release("stop/abc")
    assert dataset.claim("stop/abc", moment) is True


def test_two_collectors_on_object_storage_stop_a_task_once(s3: str) -> None:
    with Simulator(seed=12, jobs=1, tasks_per_job=1, credentials={SECRET_AK: SECRET_SK}) as sim:
        tasks = [f"task-s3nan{n:06d}" for n in range(3)]
        for task in tasks:
            points = [{"step": 10, "trainingLoss": 1.0, "perplexity": 2.0},
                      {"step": 20, "trainingLoss": None, "perplexity": None}]  # fmt: skip
            sim.script(task, {"taskId": task, "jobId": "job-s3nan0001", "runStatus": "Running", "runProgress": "20%",
                              "checkpointList": points}, job_id="job-s3nan0001")  # fmt: skip
        env = {**os.environ, "QIANFAN_ACCESS_KEY": SECRET_AK, "QIANFAN_SECRET_KEY": SECRET_SK,
               "QIANFAN_CONSOLE_API_BASE_URL": sim.url, "FTLOG_RPS": "500"}  # fmt: skip
        command = [sys.executable, "-m", "ftlog", "collect", "--job", "job-s3nan0001", "--stop-when", "nan",
                   "--stop-tasks", "--data", s3]  # fmt: skip
        procs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        stopped = sorted(body["taskId"] for action, body in sim.actions if action == "StopFineTuningTask")
        assert stopped == tasks
        with connect(s3) as con:
            sent = con.execute("SELECT task_id FROM actions WHERE outcome = 'sent' ORDER BY task_id").fetchall()
        assert [task for (task,) in sent] == tasks
