"""`ftlog query` reads the dataset and nothing else, and what ftlog prints cannot drive the terminal.

A real dataset (simulator over loopback HTTP, real Parquet), real DuckDB, the real command line; a local HTTP
listener proves that no query reaches the network, and byte-for-byte copies of the file trees prove that nothing
was written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import SECRET_AK, SECRET_SK
from test_s3 import BUCKET, keys, s3, s3_server  # noqa: F401 - the S3 fixtures, on their own moto server

from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.redact import printable
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

MARKER = "outside-the-dataset-7d1f"
VIEWS = ["snapshots", "tasks", "checkpoints", "curves", "metrics", "metric_values", "status_changes", "polls",
         "events", "deliveries", "actions"]  # fmt: skip
# Terminal escapes as a hostile or broken API might send them: an OSC title change ended by BEL, a screen clear,
# NUL, a carriage return that would overwrite the line, a C1 CSI, a line break, DEL and a bidi override.
HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\x00\rOK\x9b31m\nnext\x7f\u202egnp.exe"
HOSTILE_TASK, HOSTILE_JOB = "task-hostile00001", "job-hostile000001"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # every control but the line break


def hostile_result(status: str) -> dict[str, object]:
    return {"taskId": HOSTILE_TASK, "jobId": HOSTILE_JOB, "jobName": HOSTILE, "model": HOSTILE, "trainMode": "SFT",
            "parameterScale": "LoRA", "runStatus": status, "runProgress": "50%" if status == "Running" else "100%",
            "errorCode": HOSTILE if status == "Failed" else None, "errorMessage": HOSTILE if status == "Failed" else "",
            "metrics": {HOSTILE: "1.5%"},
            "checkpointList": [{"step": 10, "perplexity": 3.0, "trainingLoss": 1.1}]}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator tasks plus one whose names and error are terminal escapes, over two rounds (Running, then
    Failed: a status event), so that every view has rows."""
    data = tmp_path_factory.mktemp("confinement") / "data"
    with (
        Simulator(seed=3, jobs=2, tasks_per_job=2, credentials={SECRET_AK: SECRET_SK}) as sim,
        QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500) as client,
    ):
        selection = Selection(task_ids=(HOSTILE_TASK, *sim.tasks))
        for status in ("Running", "Failed"):
            sim.script(HOSTILE_TASK, hostile_result(status), job_id=HOSTILE_JOB)
            assert collect_round(client, Dataset(data), selection).errors == 0
    outside = data.parent / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text(f"word\n{MARKER}\n", encoding="utf-8")
    pq.write_table(pa.table({"word": [MARKER]}), outside / "other.parquet")
    duckdb.connect(str(outside / "other.duckdb")).close()
    sibling = data.parent / "data-sibling"  # shares the dataset's name as a prefix
    sibling.mkdir()
    (sibling / "secret.csv").write_text(f"word\n{MARKER}\n", encoding="utf-8")
    (data / "link").symlink_to(outside, target_is_directory=True)  # a way out planted inside the dataset
    return data


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that serves a CSV to anyone and records every request."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = f"word\n{MARKER}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()
    thread.join()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes, not following symbolic links."""
    files: dict[str, bytes] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            files[str(path.relative_to(root))] = b"" if path.is_symlink() else path.read_bytes()
    return files


def assert_one_error_line(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and MARKER not in result.stderr


def count(data: Path, view: str) -> int:
    with connect(data) as con:
        row = con.execute(f"SELECT count(*) FROM {view}").fetchone()
    assert row is not None
    return int(row[0])


# -- ftlog query reads the dataset and nothing else ----------------------------------------------------------

ESCAPES = {
    "copy-out": "COPY (SELECT * FROM polls) TO '{outside}/stolen.csv'",
    "copy-over-a-data-file": "COPY (SELECT * FROM polls LIMIT 0) TO '{data_file}' (FORMAT parquet)",
    "copy-into-the-dataset": "COPY (SELECT * FROM polls) TO '{partition}/x.parquet' (FORMAT parquet)",
    "export-database": "EXPORT DATABASE '{outside}/export'",
    "attach": "ATTACH '{outside}/other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET autoload_known_extensions = true",
    "set-allowed-directories": "SET allowed_directories = ['/']",
    "reset": "RESET allowed_directories",
    "pragma": "PRAGMA threads = 1",
    "create-table": "CREATE TABLE copied AS SELECT * FROM polls",
    "replace-a-view": "CREATE OR REPLACE VIEW tasks AS SELECT 1 AS x",
    "drop-a-view": "DROP VIEW tasks",
    "create-secret": "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "select-then-copy": "SELECT 1; COPY (SELECT 1) TO '{outside}/second.csv'",
    "read-csv": "SELECT * FROM read_csv('{outside}/secret.csv')",
    "read-etc-passwd": "SELECT * FROM read_csv('/etc/passwd')",
    "read-parquet": "SELECT * FROM read_parquet('{outside}/other.parquet')",
    "read-text": "SELECT * FROM read_text('{outside}/secret.csv')",
    "read-blob": "SELECT * FROM read_blob('{outside}/secret.csv')",
    "glob": "SELECT * FROM glob('{outside}/*')",
    "quoted-path-as-table": "SELECT * FROM '{outside}/secret.csv'",
    "file-url": "SELECT * FROM read_csv('file://{outside}/secret.csv')",
    "dot-dot": "SELECT * FROM read_csv('{data}/../outside/secret.csv')",
    "sibling-folder": "SELECT * FROM read_csv('{data}-sibling/secret.csv')",
    "symlink-in-the-dataset": "SELECT * FROM read_csv('{data}/link/secret.csv')",
    "network": "SELECT * FROM read_csv('{url}/x.csv')",
    "network-parquet": "SELECT * FROM read_parquet('{url}/x.parquet')",
}


@pytest.mark.parametrize("name", ESCAPES)
def test_query_cannot_write_change_settings_or_read_outside_the_dataset(
    data: Path, listener: tuple[str, list[str]], name: str
) -> None:
    url, hits = listener
    outside = data.parent / "outside"
    data_file = Dataset(data).files("polls")[0]
    sql = ESCAPES[name].format(
        outside=outside, data=data, data_file=data_file, partition=Path(data_file).parent, url=url
    )
    before = tree(data.parent)
    polls = count(data, "polls")

    result = run("query", sql, "--data", str(data))

    assert_one_error_line(result)
    assert tree(data.parent) == before  # nothing written, moved or removed, in the dataset or beside it
    assert count(data, "polls") == polls
    assert hits == []  # nothing reached the network


def test_the_statement_check_names_what_to_use_instead(data: Path) -> None:
    result = run("query", "COPY (SELECT 1) TO 'x.csv'", "--data", str(data))
    assert_one_error_line(result)
    assert "read-only" in result.stderr and "COPY" in result.stderr and "ftlog.connect()" in result.stderr


def test_the_confined_connection_itself_refuses_files_settings_and_extensions(
    data: Path, listener: tuple[str, list[str]]
) -> None:
    """DuckDB's own limits, without the statement check in front: the second line of defence."""
    url, hits = listener
    outside = data.parent / "outside"
    with connect(data, confined=True) as con:
        for sql in (
            f"SELECT * FROM read_csv('{outside}/secret.csv')",
            f"COPY (SELECT 1) TO '{outside}/copied.csv'",
            f"SELECT * FROM read_csv('{url}/x.csv')",
            f"ATTACH '{outside}/other.duckdb'",
            "SET threads = 1",
            "SET lock_configuration = false",
            "INSTALL httpfs",
            "LOAD httpfs",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        assert con.execute("SELECT count(*) FROM tasks").fetchone() == (count(data, "tasks"),)
    assert not (outside / "copied.csv").exists() and hits == []


def test_notebook_connections_stay_unrestricted(data: Path) -> None:
    outside = data.parent / "outside"
    with connect(data) as con:
        assert con.execute(f"SELECT word FROM read_csv('{outside}/secret.csv')").fetchall() == [(MARKER,)]
        con.execute("SET threads = 1")


def test_read_only_queries_over_every_view_still_work(data: Path) -> None:
    before = tree(data)
    for view in VIEWS:
        result = run("query", f"SELECT count(*) AS n FROM {view}", "--format", "json", "--data", str(data))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"n": count(data, view)}], view
    # Every view that a round with a status change fills has rows: the views did read the files.
    assert all(count(data, view) > 0 for view in VIEWS if view not in ("deliveries", "actions"))
    for sql in (
        "WITH t AS (SELECT * FROM tasks) SELECT count(*) FROM t",
        "FROM polls SELECT count(*)",
        "DESCRIBE checkpoints",
        "SUMMARIZE metrics",
        "SELECT 1; SELECT count(*) FROM curves",
        "SELECT * FROM events WHERE kind = 'status'",
    ):
        result = run("query", sql, "--format", "csv", "--data", str(data))
        assert result.exit_code == 0 and result.stderr == "", (sql, result.output)
        assert len(list(csv.reader(io.StringIO(result.stdout)))) >= 2, sql
    # Files inside the dataset are the dataset's own: readable, like the views read them.
    inside = run("query", f"SELECT count(*) AS n FROM read_parquet('{data}/polls/*/*.parquet')", "--format",
                 "json", "--data", str(data))  # fmt: skip
    assert json.loads(inside.stdout) == [{"n": count(data, "polls")}]
    assert tree(data) == before


@pytest.mark.slow
def test_query_on_object_storage_is_confined_to_the_prefix(s3: str, sim: Simulator, tmp_path: Path) -> None:  # noqa: F811
    with QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500) as client:
        collect_round(client, Dataset(s3), Selection(all_jobs=True))
    bucket, _, prefix = s3.removeprefix("s3://").partition("/")
    s3_client = boto3.client("s3")
    for key in (f"other/{prefix}/secret.csv", f"{prefix}-sibling/secret.csv"):  # another prefix, a longer one
        s3_client.put_object(Bucket=bucket, Key=key, Body=f"word\n{MARKER}\n".encode())
    stored = keys(s3)

    result = run("query", "SELECT count(*) AS n FROM tasks", "--format", "json", "--data", s3)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": len(sim.tasks)}]
    for sql in (
        f"SELECT * FROM read_csv('s3://{bucket}/other/{prefix}/secret.csv')",
        f"SELECT * FROM read_csv('{s3}-sibling/secret.csv')",
        f"SELECT * FROM glob('s3://{bucket}/*')",
        f"COPY (SELECT 1) TO '{s3}/polls/x.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
    ):
        assert_one_error_line(run("query", sql, "--data", s3))
    assert keys(s3) == stored


# -- text from the API reaches the terminal escaped ----------------------------------------------------------

SHOWN = printable(HOSTILE)  # as table and markdown show it: every control as its escape
COMMANDS = {
    "status": ["status"],
    "query": [
        "query",
        f'SELECT task_id, job_name, model, error_message, metrics, 1 AS "{HOSTILE}" FROM tasks'
        f" WHERE task_id = '{HOSTILE_TASK}'",
    ],
    "compare": ["compare", "--by", "job_name,model"],
    "events": ["events", "--kind", "status"],
}


def strings(value: object) -> Iterator[str]:
    """Every string in parsed JSON, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.parametrize(
    ("command", "fmt"),
    [(c, f) for c in COMMANDS for f in (("table", "csv", "markdown") if c == "compare" else ("table", "csv", "json"))],
)
def test_control_characters_from_the_api_are_shown_as_escapes(data: Path, command: str, fmt: str) -> None:
    result = run(*COMMANDS[command], "--format", fmt, "--data", str(data))
    assert result.exit_code == 0 and result.stderr == "", result.output
    out = result.stdout
    assert not RAW.search(out), repr(out)
    if fmt == "json":
        # The exact text, every control escaped as \uXXXX: DEL, C1 and the bidi override too, which JSON allows raw.
        assert out.count("\n") == 1 and HOSTILE in strings(json.loads(out)), out
        return
    rows = list(csv.reader(io.StringIO(run(*COMMANDS[command], "--format", "csv", "--data", str(data)).stdout)))
    if command == "events":  # details are JSON text, which escapes C0 controls itself: C1 and bidi are ftlog's
        assert "\\x9b" in out and "\\u202e" in out, out
    elif fmt == "csv":  # CSV keeps line breaks inside quoted values, and escapes every other control
        assert printable(HOSTILE, keep="\n") in [cell for row in rows for cell in row], rows
    else:
        assert SHOWN in out, out
    if fmt != "csv":  # one line per row: a line break inside a value is shown as \n
        assert len(out.splitlines()) == len(rows) + (1 if fmt == "markdown" else 0), out


def test_escaped_column_names_and_error_lines(data: Path) -> None:
    aliased = run("query", 'SELECT 1 AS "a\x1b[31mb"', "--format", "csv", "--data", str(data))
    assert aliased.exit_code == 0 and aliased.stdout.splitlines()[0] == "a\\x1b[31mb"
    failing = run("query", "SELECT nope\x1b]0;owned\x07", "--data", str(data))
    assert_one_error_line(failing)
    assert not RAW.search(failing.stderr)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31m", "\\x1b[31m"),
        ("a\x07b\x00c", "a\\x07b\\x00c"),
        ("over\rwrite", "over\\rwrite"),
        ("\x9b2J", "\\x9b2J"),
        ("\x7f", "\\x7f"),
        ("\u202etxt.exe", "\\u202etxt.exe"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("line\nbreak\ttab", "line\\nbreak\\ttab"),
        ("长跑任务 ✓ ordinary text", "长跑任务 ✓ ordinary text"),
    ],
)
def test_printable_escapes_controls_and_keeps_text(text: str, shown: str) -> None:
    assert printable(text) == shown
