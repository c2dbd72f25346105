"""`ftlog stop` and `ftlog continue` against the simulator over loopback HTTP, and the `actions` table they write.

Nothing is sent without --yes; a stop that fails leaves the other tasks to be tried; a create is sent once; every
action sent is recorded, with its outcome, and the recorded requests hold no key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import SECRET_AK, SECRET_SK

from ftlog import act
from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.errors import ConfigError
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

START = 1_717_243_200.0  # 2024-06-01T12:00:00Z, the simulator's clock
READ_ONLY = ("AKftlogREADONLY0001", "SKftlogREADONLYb84e2a6c")
JOB = "job-scripted0001"  # the job of scripted tasks
RUNNING, DONE, CURVE, BROKEN = "task-actrunning01", "task-actdone0001", "task-actcurve0001", "task-actbroken01"
# A curve whose lowest loss (step 20) and lowest perplexity (step 30) differ, with a missing and a NaN loss.
POINTS = [
    {"step": 5, "perplexity": 2.5, "trainingLoss": None},
    {"step": 10, "perplexity": 2.0, "trainingLoss": 0.9},
    {"step": 20, "perplexity": 1.9, "trainingLoss": 0.5},
    {"step": 30, "perplexity": 1.7, "trainingLoss": 0.6},
    {"step": 40, "perplexity": math.nan, "trainingLoss": math.nan},
]
VERSION = "ds-abc123"
DATASET = {"sourceType": "Platform", "splitRatio": 20, "versions": [{"versionId": VERSION}]}
DENIED = "AccessDenied: this access key may only read; use a key with a FullControl policy"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    """Seeded jobs on a clock the test moves, scripted tasks of each kind a stop meets, and a read-only key."""
    credentials = {SECRET_AK: SECRET_SK, READ_ONLY[0]: READ_ONLY[1]}
    with Simulator(seed=3, jobs=2, clock=clock, credentials=credentials, read_only_keys={READ_ONLY[0]}) as server:
        common = {"jobId": JOB, "jobName": "scripted", "model": "ERNIE-Speed-8K", "trainMode": "SFT",
                  "parameterScale": "LoRA"}  # fmt: skip
        server.script(RUNNING, {**common, "taskId": RUNNING, "runStatus": "Running", "runProgress": "40%"})
        server.script(DONE, {**common, "taskId": DONE, "runStatus": "Done", "checkpointList": POINTS[1:3]})
        server.script(CURVE, {**common, "taskId": CURVE, "runStatus": "Done", "checkpointList": POINTS})
        server.script(BROKEN, {**common, "taskId": BROKEN, "runStatus": "Failed", "checkpointList": [POINTS[-1]]})
        yield server


@pytest.fixture
def env(sim: Simulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Simulator:
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", SECRET_AK)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SECRET_SK)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", sim.url)
    monkeypatch.setenv("FTLOG_RPS", "500")
    monkeypatch.chdir(tmp_path)
    return sim


@pytest.fixture
def collected(env: Simulator, data: Path) -> Path:
    """A dataset holding the scripted tasks."""
    assert run("collect", RUNNING, DONE, CURVE, BROKEN, "--data", str(data)).exit_code == 0
    return data


@pytest.fixture
def api(sim: Simulator, fast_retry: RetryPolicy) -> Iterator[QianfanClient]:
    with QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500, retry=fast_retry) as client:
        yield client


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def actions(data: Path, columns: str = "*") -> list[dict[str, Any]]:
    """The `actions` view through `ftlog query`, as the user sees it."""
    result = run("query", f'SELECT {columns} FROM actions ORDER BY "at"', "--format", "json", "--data", str(data))
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def files(data: Path) -> dict[str, int]:
    return {str(path.relative_to(data)): path.stat().st_mtime_ns for path in data.rglob("*") if path.is_file()}


def status(api: QianfanClient, task_id: str) -> str:
    result: str = api.describe_task(task_id).result["runStatus"]
    return result


def error_line(result: Result) -> str:
    """The one `Error: ...` line of a failed command, which must also have printed no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def finished_source(sim: Simulator, clock: Clock) -> tuple[str, str, list[dict[str, Any]]]:
    """A seeded task that has ended with several checkpoints: (task id, job id, checkpoints)."""
    clock.now += 10**6
    for task_id, task in sim.tasks.items():
        points = (sim.task_result(task_id) or {}).get("checkpointList") or []
        if len(points) > 2:
            return task_id, task.job["jobId"], points
    raise AssertionError("the seeded population has no task with checkpoints")


# -- stop ------------------------------------------------------------------------------------------------------


def test_stop_without_yes_says_what_it_would_do_and_sends_and_writes_nothing(
    collected: Path, env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QIANFAN_ACCESS_KEY")  # a dry run needs no credentials
    monkeypatch.delenv("QIANFAN_SECRET_KEY")
    before = files(collected)
    result = run("stop", RUNNING, DONE, "task-notcollected", RUNNING, "--data", str(collected))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"would stop {RUNNING} (job {JOB}, Running)",
        f"would stop {DONE} (job {JOB}, Done: it has ended, so the API will refuse)",
        "would stop task-notcollected (not in the dataset)",
    ]
    assert "nothing sent" in result.stderr and "--yes" in result.stderr
    assert env.actions == []
    assert files(collected) == before
    assert actions(collected) == []


def test_stop_before_any_collect_needs_credentials_only_to_send(
    env: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --yes nothing is created; with it the stop is recorded in a new dataset, as collect would make it."""
    data = tmp_path / "nothing-yet"
    result = run("stop", RUNNING, "--data", str(data))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"would stop {RUNNING} (not in the dataset)\n"
    assert not data.exists() and env.actions == []
    with monkeypatch.context() as patch:
        patch.delenv("QIANFAN_SECRET_KEY")
        assert "QIANFAN_SECRET_KEY" in error_line(run("stop", RUNNING, "--yes", "--data", str(data)))
    assert not data.exists() and env.actions == []
    assert run("stop", RUNNING, "--yes", "--data", str(data)).exit_code == 0
    assert actions(data, "task_id, job_id, outcome") == [{"task_id": RUNNING, "job_id": None, "outcome": "sent"}]


def test_stop_with_yes_stops_a_running_task_and_records_it(collected: Path, env: Simulator, api: QianfanClient) -> None:
    result = run("stop", RUNNING, "--yes", "--data", str(collected))
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"{RUNNING}: stopped \(request [0-9a-f-]{{36}}\)\n", result.stdout), result.stdout
    assert env.actions == [("StopFineTuningTask", {"taskId": RUNNING})]
    assert status(api, RUNNING) == "Stopped"
    [row] = actions(collected)
    request_id = result.stdout.split("request ")[1].rstrip(")\n")
    assert {key: row[key] for key in row if key not in ("action_id", "at")} == {
        "task_id": RUNNING, "job_id": JOB, "action": "stop", "rule": None, "command": "stop",
        "request": json.dumps({"taskId": RUNNING}), "outcome": "sent", "request_id": request_id,
        "new_task_id": None, "http_status": 200, "error": None, "details": None,
    }  # fmt: skip
    assert re.fullmatch("[0-9a-f]{32}", row["action_id"]) and row["at"]


def test_stop_of_ended_and_unknown_tasks_fails_while_the_others_are_stopped(
    collected: Path, env: Simulator, api: QianfanClient
) -> None:
    result = run("stop", DONE, "task-nowhere00001", RUNNING, "--yes", "--data", str(collected))
    line = error_line(result)
    assert line.startswith(f"Error: could not stop {DONE} (StopFineTuningTask: HTTP 400 InvalidRequestArgumentError")
    assert "task-nowhere00001 (StopFineTuningTask: HTTP 404 ResourceNotFound" in line
    assert RUNNING not in line
    assert [action for action, _ in env.actions] == ["StopFineTuningTask"] * 3  # every task was tried
    assert status(api, RUNNING) == "Stopped" and status(api, DONE) == "Done"
    assert result.stdout.splitlines()[0].startswith(f"{DONE}: failed: StopFineTuningTask: HTTP 400")
    rows = actions(collected, "task_id, job_id, outcome, http_status, error IS NULL AS ok, command")
    assert sorted(rows, key=lambda row: row["task_id"]) == [
        {"task_id": DONE, "job_id": JOB, "outcome": "failed", "http_status": 400, "ok": False, "command": "stop"},
        {"task_id": RUNNING, "job_id": JOB, "outcome": "sent", "http_status": 200, "ok": True, "command": "stop"},
        {"task_id": "task-nowhere00001", "job_id": None, "outcome": "failed", "http_status": 404, "ok": False,
         "command": "stop"},
    ]  # fmt: skip


def test_a_read_only_key_is_denied_and_told_what_key_it_needs(
    collected: Path, env: Simulator, api: QianfanClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", READ_ONLY[0])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", READ_ONLY[1])
    result = run("stop", RUNNING, "--yes", "--data", str(collected))
    assert error_line(result) == f"Error: could not stop {RUNNING} ({DENIED})"
    assert result.stdout.startswith(f"{RUNNING}: denied: StopFineTuningTask: HTTP 403 AccessDenied")
    assert status(api, RUNNING) == "Running"
    assert actions(collected, "task_id, outcome, http_status") == [
        {"task_id": RUNNING, "outcome": "denied", "http_status": 403}
    ]
    result = run("continue", CURVE, "--dataset", VERSION, "--yes", "--data", str(collected))
    assert error_line(result) == f"Error: could not continue {CURVE} ({DENIED})"
    assert result.stdout == ""
    assert [row["outcome"] for row in actions(collected, "outcome")] == ["denied", "denied"]


def test_a_stop_is_retried_like_a_read(collected: Path, env: Simulator, api: QianfanClient) -> None:
    env.faults.script = ["500"]  # the first answer is a server error; stopping twice is harmless anyway
    assert run("stop", RUNNING, "--yes", "--data", str(collected)).exit_code == 0
    assert [entry.status for entry in env.log if entry.action == "StopFineTuningTask"] == [500, 200]
    assert status(api, RUNNING) == "Stopped"


# -- continue --------------------------------------------------------------------------------------------------


def body(task_id: str, step: int, **fields: Any) -> dict[str, Any]:
    return {"jobId": JOB, "parameterScale": "LoRA", "incrementTaskId": task_id, "incrementCheckpointStep": step,
            "hyperParameterConfig": {}, "datasetConfig": DATASET, **fields}  # fmt: skip


@pytest.mark.parametrize(("options", "step"), [([], 20), (["--best", "loss"], 20), (["--best", "perplexity"], 30),
                                               (["--step", "5"], 5)])  # fmt: skip
def test_continue_without_yes_prints_the_exact_body_and_sends_nothing(
    collected: Path, env: Simulator, monkeypatch: pytest.MonkeyPatch, options: list[str], step: int
) -> None:
    monkeypatch.delenv("QIANFAN_SECRET_KEY")  # a dry run needs no credentials
    before = files(collected)
    result = run("continue", CURVE, *options, "--dataset", VERSION, "--data", str(collected))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == body(CURVE, step)
    assert list(json.loads(result.stdout)) == list(body(CURVE, step))  # in this order
    assert f"from step {step}, " in result.stderr and "nothing sent" in result.stderr
    assert env.actions == [] and files(collected) == before


def test_continue_with_yes_creates_a_task_in_the_job_that_collect_picks_up(
    env: Simulator, clock: Clock, data: Path
) -> None:
    source, job_id, points = finished_source(env, clock)
    assert run("collect", "--job", job_id, "--data", str(data)).exit_code == 0
    best = min(points, key=lambda point: (point["trainingLoss"], point["step"]))
    result = run("continue", source, "--dataset", VERSION, "--set", "epoch=1", "--set", "learningRate=3e-5",
                 "--yes", "--data", str(data))  # fmt: skip
    assert result.exit_code == 0, result.output
    new_id = result.stdout.strip()
    assert re.fullmatch(r"task-[a-z0-9]{12}", new_id) and result.stdout == new_id + "\n"
    assert f"created {new_id} in {job_id}, from {source} step {best['step']}, the lowest training loss" in result.stderr
    [(action, sent)] = env.actions
    assert action == "CreateFineTuningTask"
    assert sent == {"jobId": job_id, "parameterScale": env.tasks[source].parameter_scale, "incrementTaskId": source,
                    "incrementCheckpointStep": best["step"], "hyperParameterConfig": {"epoch": 1, "learningRate": 3e-5},
                    "datasetConfig": DATASET}  # fmt: skip
    assert env.tasks[new_id].loss_start == pytest.approx(best["trainingLoss"])  # it goes on from that checkpoint
    assert new_id in env.job_task_ids(job_id)

    [row] = actions(data)
    identity = (row["task_id"], row["job_id"], row["action"], row["command"], row["outcome"], row["new_task_id"])
    assert identity == (source, job_id, "continue", "continue", "sent", new_id)
    assert json.loads(row["request"]) == sent
    assert json.loads(row["details"]) == {"step": best["step"], "chosen_by": "training_loss", "checkpoint": {
        "step": best["step"], "training_loss": best["trainingLoss"], "perplexity": best["perplexity"]}}  # fmt: skip
    assert run("collect", "--job", job_id, "--data", str(data)).exit_code == 0
    with connect(data) as con:
        assert con.execute("SELECT job_id FROM tasks WHERE task_id = ?", [new_id]).fetchall() == [(job_id,)]


def test_continue_from_a_step_that_does_not_exist_sends_and_records_nothing(collected: Path, env: Simulator) -> None:
    before = files(collected)
    for yes in ([], ["--yes"]):
        result = run("continue", CURVE, "--step", "25", "--dataset", VERSION, *yes, "--data", str(collected))
        assert error_line(result) == (
            f"Error: {CURVE} has no checkpoint at step 25: its stored checkpoints are steps 5 to 40 (5 checkpoints)"
        )
        assert result.stdout == ""
    assert env.actions == [] and files(collected) == before and actions(collected) == []


@pytest.mark.parametrize(
    ("task_id", "options", "message"),
    [
        ("task-notcollected", [], "task-notcollected is not in the dataset: collect it first: ftlog collect "
                                  "task-notcollected"),
        (BROKEN, [], f"{BROKEN} has no checkpoint with a finite training loss to continue from (its only stored "
                     "checkpoint is step 40)"),
        (BROKEN, ["--best", "perplexity"], f"{BROKEN} has no checkpoint with a finite perplexity"),
        (RUNNING, ["--step", "1"], f"{RUNNING} has no checkpoint at step 1: it has no stored checkpoints"),
    ],
    ids=["not-collected", "nan-loss", "nan-perplexity", "no-checkpoints"],
)  # fmt: skip
def test_continue_refuses_what_the_dataset_cannot_support(
    collected: Path, env: Simulator, task_id: str, options: list[str], message: str
) -> None:
    result = run("continue", task_id, *options, "--dataset", VERSION, "--yes", "--data", str(collected))
    assert error_line(result).startswith(f"Error: {message}")
    assert env.actions == [] and actions(collected) == []


def test_step_and_best_together_or_no_dataset_version_are_usage_errors(collected: Path, env: Simulator) -> None:
    both = run("continue", CURVE, "--step", "20", "--best", "loss", "--dataset", VERSION, "--data", str(collected))
    assert both.exit_code == 2 and "--step and --best" in both.stderr
    assert run("continue", CURVE, "--data", str(collected)).exit_code == 2  # --dataset is required
    assert env.actions == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("epoch=1", ("epoch", 1)), ("learningRate=3e-5", ("learningRate", 3e-5)), ("x=-0.5", ("x", -0.5)),
     ("flag=true", ("flag", True)), ("name=lora-v2", ("name", "lora-v2")), ("pad=01", ("pad", "01")),
     ("none=null", ("none", "null")), ("list=[1]", ("list", "[1]")), ("empty=", ("empty", "")),
     ("eq=a=b", ("eq", "a=b"))],
)  # fmt: skip
def test_set_values_are_numbers_and_booleans_when_they_parse_else_text(text: str, expected: tuple[str, Any]) -> None:
    key, value = act.parse_setting(text)
    assert (key, value) == expected and type(value) is type(expected[1])


@pytest.mark.parametrize("text", ["lr=NaN", "lr=nan", "lr=inf", "lr=-Infinity", "lr=1e999", "noequals", "=1"])
def test_set_refuses_non_finite_numbers_and_missing_keys(collected: Path, env: Simulator, text: str) -> None:
    with pytest.raises(ConfigError):
        act.parse_setting(text)
    result = run("continue", CURVE, "--set", text, "--dataset", VERSION, "--yes", "--data", str(collected))
    assert result.exit_code == 2 and "--set" in result.stderr and "Traceback" not in result.output
    assert env.actions == []


def test_set_values_go_into_the_hyper_parameters(collected: Path) -> None:
    result = run("continue", CURVE, "--set", "epoch=2", "--set", "learningRate=3e-5", "--set", "scheduler=cosine",
                 "--set", "epoch=3", "--dataset", VERSION, "--data", str(collected))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hyperParameterConfig"] == {"epoch": 3, "learningRate": 3e-5,
                                                                 "scheduler": "cosine"}  # fmt: skip


def test_a_body_file_goes_underneath_the_fields_ftlog_sets(collected: Path, tmp_path: Path) -> None:
    file = tmp_path / "body.json"
    file.write_text(json.dumps({
        "jobId": "job-someother001", "incrementCheckpointStep": 1, "resourceConfig": {"gpus": 8},
        "hyperParameterConfig": {"epoch": 5, "maxSeqLen": 4096}, "datasetConfig": {"splitRatio": 10},
    }))  # fmt: skip
    result = run("continue", CURVE, "--body", str(file), "--set", "epoch=1", "--dataset", VERSION,
                 "--data", str(collected))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == body(
        CURVE, 20, hyperParameterConfig={"epoch": 1, "maxSeqLen": 4096}, resourceConfig={"gpus": 8},
        datasetConfig={**DATASET, "splitRatio": 10},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --body"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not list"),
        ('{"hyperParameterConfig": {"learningRate": NaN}}', "NaN is not a number the API takes"),
        (f'{{"ak": "{SECRET_AK}", "resourceConfig": {{"sk": "x"}}}}', "holds ak, sk: ftlog signs with"),
        ('{"datasetConfig": "ds-1"}', "the body file's datasetConfig must be a JSON object"),
    ],
    ids=["missing", "not-json", "not-object", "nan", "credentials", "bad-field"],
)
def test_a_bad_body_file_is_one_clear_error(
    collected: Path, env: Simulator, tmp_path: Path, content: str | None, message: str
) -> None:
    file = tmp_path / "body.json"
    if content is not None:
        file.write_text(content)
    result = run("continue", CURVE, "--body", str(file), "--dataset", VERSION, "--yes", "--data", str(collected))
    line = error_line(result)
    assert message in line and result.stdout == ""
    assert SECRET_AK not in result.output
    assert env.actions == [] and actions(collected) == []


def test_a_create_is_sent_once_even_when_its_answer_is_lost(env: Simulator, clock: Clock, data: Path) -> None:
    source, job_id, _ = finished_source(env, clock)
    assert run("collect", "--job", job_id, "--data", str(data)).exit_code == 0
    tasks = set(env.job_task_ids(job_id))
    env.faults.script = ["truncate"]  # the server creates the task, and its answer breaks off
    result = run("continue", source, "--dataset", VERSION, "--yes", "--data", str(data))
    line = error_line(result)
    assert f"the new task may or may not have been created: check with ftlog collect --job {job_id}" in line
    assert result.stdout == ""
    assert [action for action, _ in env.actions] == ["CreateFineTuningTask"]  # not retried
    assert len(set(env.job_task_ids(job_id)) - tasks) == 1  # the one it did create
    [row] = actions(data, "outcome, new_task_id, http_status, details")
    assert (row["outcome"], row["new_task_id"], row["http_status"]) == ("failed", None, None)
    assert json.loads(row["details"])["may_exist"] is True


# -- the record ------------------------------------------------------------------------------------------------


def test_no_key_reaches_the_actions_table(collected: Path, env: Simulator, tmp_path: Path) -> None:
    """The recorded request is the body sent less any secret: a key pasted into a body field is masked."""
    file = tmp_path / "body.json"
    file.write_text(json.dumps({"description": f"tried by {SECRET_AK}/{SECRET_SK}"}))
    runs = [run("stop", RUNNING, "--yes", "--data", str(collected)),
            run("continue", CURVE, "--body", str(file), "--step", "20", "--dataset", VERSION, "--yes",
                "--data", str(collected))]  # fmt: skip
    assert [r.exit_code for r in runs] == [0, 1]  # CURVE's scripted job cannot take a task; still recorded
    requests = [row["request"] for row in actions(collected, "request")]
    assert json.loads(requests[1])["description"] == "***"
    for r in runs:
        assert SECRET_SK not in r.output
    written = list(collected.rglob("*.parquet"))
    assert any("actions" in path.parts for path in written)
    for path in written:
        assert SECRET_SK.encode() not in path.read_bytes() and SECRET_AK.encode() not in path.read_bytes()
        text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        assert SECRET_SK not in text and SECRET_AK not in text, path


def test_a_rule_records_one_action_however_many_collectors_saw_it(data: Path) -> None:
    """What collect calls: advise, then record. Two collectors tripping the same rule derive the same action_id;
    the view shows its first sighting."""
    dataset = Dataset(data)
    at = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
    evidence = {"steps": [30, 40], "values": [math.nan, -math.inf]}
    later = act.advise(RUNNING, JOB, rule="nan", details=evidence, now=at + timedelta(seconds=20))
    first = act.advise(RUNNING, JOB, rule="nan", details=evidence, now=at)
    other = act.advise(RUNNING, JOB, rule="diverged:1.5:3", now=at)
    assert later["action_id"] == first["action_id"] != other["action_id"]
    assert act.action_id(RUNNING, "stop", "nan") == first["action_id"]
    act.record(dataset, [later])
    act.record(dataset, [first, other])
    assert act.record(dataset, []) == []
    with connect(data) as con:
        rows = con.execute('SELECT rule, command, outcome, "at", request, details FROM actions ORDER BY rule')
        assert rows.fetchall() == [
            ("diverged:1.5:3", "collect", "advised", at, json.dumps({"taskId": RUNNING}), None),
            ("nan", "collect", "advised", at, json.dumps({"taskId": RUNNING}),
             '{"steps": [30, 40], "values": ["NaN", "-Infinity"]}'),
        ]  # fmt: skip
        # Plain JSON, which SQL's JSON functions read: non-finite evidence as text.
        assert con.execute("SELECT details->>'$.values[0]' FROM actions WHERE rule = 'nan'").fetchall() == [("NaN",)]
        assert con.execute("SELECT count(*) FROM _actions").fetchall() == [(3,)]
    assert run("check", "--data", str(data)).exit_code == 0


def test_a_dataset_without_an_actions_folder_reads_as_no_actions(collected: Path) -> None:
    """A dataset of an older ftlog has no actions folder: the view is empty, and check finds nothing wrong."""
    for path in (collected / "actions").rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted((collected / "actions").rglob("*"), reverse=True):
        path.rmdir()
    (collected / "actions").rmdir()
    assert actions(collected) == []
    assert run("check", "--data", str(collected)).exit_code == 0
    script = run("sql", "--engine", "duckdb", "--data", str(collected))
    assert "-- actions: no usable files yet, so _actions is empty" in script.stdout


def test_a_stop_answered_false_is_not_taken_for_a_stop(
    collected: Path, env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hostile import HostileProxy

    answer_false = {"StopFineTuningTask": lambda handler, raw: handler.send_json({"requestId": "r-0", "result": False})}
    with HostileProxy(env, answer_false) as proxy:
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", proxy.url)
        result = run("stop", RUNNING, "--yes", "--data", str(collected))
    assert f"{RUNNING} was not stopped" in error_line(result)
    assert proxy.requests["StopFineTuningTask"] == 1  # an answer, not a fault: not retried
    [row] = actions(collected, "outcome, request_id, error")
    assert (row["outcome"], row["request_id"]) == ("failed", "r-0") and "the answer is false" in row["error"]
