"""The secret key never leaves the process: not in the dataset, the reports, stdout, stderr, logs, error messages
or tracebacks, whatever fails along the way. Every command runs as a real ``python -m ftlog`` process."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SECRET_AK, SECRET_SK
from test_s3 import S3_KEY_ID, s3, s3_server  # noqa: F401 - the S3 fixtures, on their own moto server

from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.errors import ApiError
from ftlog.redact import RedactingFilter, redact
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def child_env(sim: Simulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "FTLOG_"))}
    env.update({"QIANFAN_ACCESS_KEY": SECRET_AK, "QIANFAN_SECRET_KEY": SECRET_SK, "FTLOG_RPS": "500",
                "QIANFAN_CONSOLE_API_BASE_URL": sim.url, "PYTHONUNBUFFERED": "1", **extra})  # fmt: skip
    return env


def ftlog(cwd: Path, env: dict[str, str], *args: str) -> Run:
    done = subprocess.run([sys.executable, "-m", "ftlog", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    return Run(args, done.returncode, done.stdout, done.stderr)


def assert_secret_nowhere(runs: list[Run], *folders: Path) -> None:
    for run in runs:
        assert SECRET_SK not in run.stdout and SECRET_SK not in run.stderr, run.args
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file() and path.name != ".env"]
    assert any(path.suffix == ".parquet" for path in files) and any(path.suffix == ".html" for path in files)
    for path in files:
        assert SECRET_SK not in str(path)
        assert SECRET_SK.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":  # compressed pages would hide the text from a byte search
            assert SECRET_SK not in json.dumps(pq.read_table(path).to_pylist(), default=str), path


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_secret_key_is_in_no_output_and_no_file(sim: Simulator, tmp_path: Path) -> None:
    env = child_env(sim)
    data, reports = tmp_path / "data", tmp_path / "reports"
    tasks = list(sim.tasks)
    sim.fail(tasks[1], 403, "AccessDenied", "Access denied.")
    for kind in ("500", "reset", "truncate"):  # failures that are retried, and logged with -v
        setattr(sim.faults, f"rate_{kind}", 0.05)
    runs = [ftlog(tmp_path, env, "-v", "collect", "--all", "--data", str(data))]
    for kind in ("500", "reset", "truncate"):
        setattr(sim.faults, f"rate_{kind}", 0.0)
    # A wrong endpoint (the server answers 404 to everything there), and a wrong secret.
    runs.append(ftlog(tmp_path, env, "-v", "collect", *tasks[2:4], "--endpoint", f"{sim.url}/wrong", "--data",
                      str(data)))  # fmt: skip
    wrong_secret = child_env(sim, QIANFAN_SECRET_KEY=SECRET_SK[::-1])
    runs.append(ftlog(tmp_path, wrong_secret, "-v", "collect", "--all", "--data", str(data)))
    for args in (
        ["status", "--format", "json"],
        ["query", "SELECT * FROM polls", "--format", "csv"],
        ["query", "SELECT * FROM snapshots", "--format", "json"],
        ["query", "SELECT nope FROM nowhere"],
        ["report", "--out", str(reports)],
        ["compact"],
        ["check"],
    ):
        runs.append(ftlog(tmp_path, env, "-v", *args, "--data", str(data)))
    assert [r.returncode for r in runs] == [3, 1, 1, 0, 0, 0, 1, 0, 0, 0], [(r.args, r.stderr) for r in runs]
    assert "Traceback" not in "".join(r.stderr for r in runs)
    assert "retry" in runs[0].stderr  # -v did log the retries that were searched
    assert "InvalidURI" in runs[1].stderr and "SignatureDoesNotMatch" in runs[2].stderr

    # A second Ctrl-C aborts a round in the middle of its describes.
    sim.faults.latency = 0.3
    watcher = subprocess.Popen([sys.executable, "-m", "ftlog", "-v", "collect", *tasks, "--watch", "--concurrency",
                                "1", "--data", str(data)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        logged = len(sim.log)
        while len(sim.log) < logged + 1:  # the round is describing
            assert watcher.poll() is None
            time.sleep(0.01)
        # Describes run one at a time: the one after the next stays in flight long enough for both Ctrl-Cs to land
        # mid-round, whatever the machine's load.
        sim.faults.latency = 8.0
        while len(sim.log) < logged + 2:
            assert watcher.poll() is None
            time.sleep(0.01)
        watcher.send_signal(signal.SIGINT)
        assert watcher.stderr is not None
        first = watcher.stderr.readline()  # the first Ctrl-C is handled: the round finishes its describes
        assert "stopping after the current round's write" in first, first
        watcher.send_signal(signal.SIGINT)
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 1 and "Aborted!" in stderr, stderr
    runs.append(Run(("collect", "--watch"), watcher.returncode, stdout, first + stderr))

    assert_secret_nowhere(runs, tmp_path)


def test_tracebacks_with_locals_hold_no_secret(sim: Simulator, tmp_path: Path) -> None:
    """What an error reporter that records every frame's local variables would capture from a failed round."""
    with (
        QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=f"{sim.url}/wrong", rps=500) as client,
        pytest.raises(ApiError) as caught,
    ):
        collect_round(client, Dataset(tmp_path / "data"), Selection(task_ids=tuple(sim.tasks)[:3]))
    text = "".join(traceback.TracebackException.from_exception(caught.value, capture_locals=True).format())
    assert "collect_round" in text and "client = QianfanClient(" in text  # the frames and their locals are there
    assert SECRET_SK not in text


def test_a_dotenv_readable_by_others_is_flagged_without_the_secret(sim: Simulator, tmp_path: Path) -> None:
    env = child_env(sim)
    del env["QIANFAN_ACCESS_KEY"], env["QIANFAN_SECRET_KEY"]  # the .env supplies them
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"QIANFAN_ACCESS_KEY={SECRET_AK}\nQIANFAN_SECRET_KEY={SECRET_SK}\n", encoding="utf-8")
    dotenv.chmod(0o640)
    task = next(iter(sim.tasks))
    run = ftlog(tmp_path, env, "collect", task, "--data", "data")
    assert run.returncode == 0, run.stderr  # the credentials from .env were used
    warnings = [line for line in run.stderr.splitlines() if "readable by other users" in line]
    assert len(warnings) == 1 and "chmod 600" in warnings[0], run.stderr
    assert SECRET_SK not in run.stdout + run.stderr

    dotenv.chmod(0o600)
    run = ftlog(tmp_path, env, "collect", task, "--data", "data")
    assert run.returncode == 0 and "readable by other users" not in run.stderr


# -- credentials inside URLs: dataset locations, endpoints, webhooks ------------------------------------------

URL_SECRET = "urlSECRETe5c4a1"  # a password or token written into a URL
URL_TOKEN = "urlTOKEN9b7d20"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("s3://AKID:pw@bucket/prefix", "s3://***@bucket/prefix"),
        ("s3://AKID:p@ss/word@bucket/prefix", "s3://***@bucket/prefix"),  # "@" and "/" typed unencoded
        ("s3://bucket/prefix?access_key=AKID&secret_key=pw", "s3://bucket/prefix?access_key=***&secret_key=***"),
        (
            "see 'http://user:pw@host:8080/api' and https://h/x?token=t#frag",
            "see 'http://***@host:8080/api' and https://h/x?token=***#frag",
        ),
        (
            "Max retries exceeded with url: /hook?key=k&sig=s (Caused by X)",
            "Max retries exceeded with url: /hook?key=***&sig=*** (Caused by X)",
        ),
        (
            "http://127.0.0.1:9/v2/finetuning?Action=DescribeFineTuningTask",
            "http://127.0.0.1:9/v2/finetuning?Action=DescribeFineTuningTask",
        ),
        ("/data/ftlog and s3://bucket/prefix", "/data/ftlog and s3://bucket/prefix"),
    ],
)
def test_redact_masks_the_credentials_of_every_url_in_a_text(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown


@pytest.mark.parametrize(
    "location",
    [
        f"s3://AKIDURI:{URL_SECRET}/x@bucket/prefix",  # unparseable: the URI parser's error quotes it whole
        f"s3://bucket/prefix?access_key=AKIDURI&secret_key={URL_SECRET}",
        f"s3://AKIDURI:{URL_SECRET}@bucket/prefix?unknown=1",
    ],
)
@pytest.mark.parametrize(
    "command", [["check"], ["query", "SELECT 1"], ["status"], ["report", "--out"], ["sql", "--engine", "duckdb"]]
)
def test_credentials_in_a_dataset_uri_are_in_no_error(location: str, command: list[str], tmp_path: Path) -> None:
    out = [str(tmp_path / "report")] if command == ["report", "--out"] else []
    result = CliRunner().invoke(cli, [*command, *out, "--data", location])
    assert result.exit_code == 1 and result.stderr.startswith("Error: "), result.output
    assert "***" in result.stderr and URL_SECRET not in result.output


@pytest.mark.slow
def test_credentials_in_an_s3_uri_reach_no_output_check_or_report(
    s3: str,  # noqa: F811 - the fixture
    api_env: Simulator,
    tmp_path: Path,
) -> None:
    """Keys in the URI itself (``s3://KEY:SECRET@bucket/prefix``), which pyarrow uses to sign its requests."""
    location = s3.replace("s3://", f"s3://{S3_KEY_ID}:{URL_SECRET}@")
    shown = s3.replace("s3://", "s3://***@")
    runner = CliRunner()
    runs = [runner.invoke(cli, ["-v", "collect", "--all", "--data", location])]
    for args in (["status"], ["query", "SELECT count(*) FROM tasks"], ["check"], ["report", "--out", "r"],
                 ["sql", "--engine", "duckdb"]):  # fmt: skip
        runs.append(runner.invoke(cli, ["-v", *args, "--data", location]))
    assert [r.exit_code for r in runs] == [0] * 6, [r.output for r in runs]
    assert f"-- ftlog views over {shown}," in runs[5].stdout  # the script names the location without its keys
    assert f"in {shown}: no problems" in runs[3].stdout  # check names the location, without its keys
    html = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert f">{shown}</dd>" in html  # the report's location line
    for text in [html, *(r.output for r in runs)]:
        assert URL_SECRET not in text


@pytest.mark.slow
def test_credentials_in_the_endpoint_are_in_no_output_log_or_poll(sim: Simulator, tmp_path: Path) -> None:
    closed = socket_port()
    endpoint = f"http://apiuser:{URL_SECRET}@127.0.0.1:{closed}/?token={URL_TOKEN}"
    runs = [
        ftlog(tmp_path, child_env(sim), "-v", "collect", "task-any00000001", "--endpoint", endpoint, "--data", "data"),
        ftlog(
            tmp_path,
            child_env(sim, QIANFAN_CONSOLE_API_BASE_URL=endpoint),
            "-v",
            "collect",
            "task-any00000001",
            "--data",
            "data",
        ),
    ]
    for run in runs:
        # ftlog signs with AK/SK: the user:password part is dropped from the endpoint, and never shown
        assert run.returncode == 1 and f"cannot reach http://127.0.0.1:{closed}/ " in run.stderr, run.stderr
        assert "retry" in run.stderr  # the retries were logged (-v), with the endpoint
    with connect(tmp_path / "data") as con:
        messages = [row[0] for row in con.execute("SELECT error_message FROM polls").fetchall()]
    assert len(messages) == 2 and all(f"http://127.0.0.1:{closed}/ " in m for m in messages), messages
    for text in [*messages, *(r.stdout + r.stderr for r in runs)]:
        assert URL_SECRET not in text and URL_TOKEN not in text
    assert_no_file_holds(tmp_path / "data", URL_SECRET, URL_TOKEN)


def test_an_api_message_quoting_a_url_is_stored_and_shown_redacted(api_env: Simulator, tmp_path: Path) -> None:
    task = next(iter(api_env.tasks))
    api_env.fail(task, 400, "InvalidParameter", f"cannot fetch http://u:{URL_SECRET}@host/x?token={URL_TOKEN}")
    result = CliRunner().invoke(cli, ["collect", task, "--data", "data"])
    assert result.exit_code == 1 and "InvalidParameter" in result.stderr, result.output
    with connect(tmp_path / "data") as con:
        (message,) = con.execute("SELECT error_message FROM polls").fetchone() or (None,)
    assert message is not None and "http://***@host/x?token=***" in message
    for text in (message, result.output):
        assert URL_SECRET not in text and URL_TOKEN not in text


def test_webhook_credentials_are_in_no_output_log_or_file(sim: Simulator, tmp_path: Path) -> None:
    task, job = "task-hook00000001", "job-hook000000001"
    hook = f"http://hookuser:{URL_SECRET}@127.0.0.1:{socket_port()}/hook?access_token={URL_TOKEN}"
    env = child_env(sim)
    runs = []
    for status in ("Running", "Failed"):  # the change to Failed is an event, to deliver to the unreachable hook
        sim.script(task, {"taskId": task, "runStatus": status, "checkpointList": []}, job_id=job)
        runs.append(ftlog(tmp_path, env, "-v", "collect", task, "--notify", hook, "--data", "data"))
    runs.append(ftlog(tmp_path, env, "collect", task, "--notify", f"ftp://hookuser:{URL_SECRET}@host/?t={URL_TOKEN}",
                      "--data", "data"))  # fmt: skip
    assert [r.returncode for r in runs] == [0, 0, 1], [r.stderr for r in runs]
    assert "notification to 127.0.0.1#" in runs[1].stderr  # the failed delivery was logged, by the target's key
    with connect(tmp_path / "data") as con:
        deliveries = con.execute("SELECT target, outcome, error FROM deliveries").fetchall()
    assert deliveries and all(outcome == "failed" for _, outcome, _ in deliveries), deliveries
    for text in [str(deliveries), *(r.stdout + r.stderr for r in runs)]:
        assert URL_SECRET not in text and URL_TOKEN not in text
    assert_no_file_holds(tmp_path / "data", URL_SECRET, URL_TOKEN)


def test_log_lines_and_their_tracebacks_are_redacted_and_printable() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("ftlog.test_redaction")
    logger.addHandler(handler)
    try:
        logger.warning("posting to %s failed: \x1b]0;title\x07", f"https://u:{URL_SECRET}@h/?token={URL_TOKEN}")
        try:
            raise OSError(f"cannot reach https://u:{URL_SECRET}@h/?token={URL_TOKEN}")
        except OSError:
            logger.exception("delivery failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "posting to https://***@h/?token=*** failed: \\x1b]0;title\\x07" in text
    assert "OSError: cannot reach https://***@h/?token=***" in text  # the traceback, redacted too
    assert URL_SECRET not in text and URL_TOKEN not in text and "\x1b" not in text


def socket_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_no_file_holds(folder: Path, *secrets: str) -> None:
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert any(path.suffix == ".parquet" for path in files)
    for path in files:
        for secret in secrets:
            assert secret.encode() not in path.read_bytes(), path
            if path.suffix == ".parquet":  # compressed pages would hide the text from a byte search
                assert secret not in json.dumps(pq.read_table(path).to_pylist(), default=str), path
