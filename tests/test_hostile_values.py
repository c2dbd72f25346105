"""Hostile values: rates that put an ETA beyond any timestamp, a clock set back between rounds, repeated checkpoint
steps, NaN and absurd option values, a --data that holds no dataset, and a report folder holding a user's files.

Everything goes through the real simulator over HTTP, the real collector and Parquet files, real DuckDB and the
real command line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import SECRET_AK, SECRET_SK

import ftlog
from ftlog import analysis
from ftlog.cli import MAX_INTERVAL, MAX_RPS, cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import RoundResult, Selection, collect_round
from ftlog.errors import FtlogError
from ftlog.report import MANIFEST, duration, write_report
from ftlog.simulator import Simulator
from ftlog.state import load_state
from ftlog.store import Dataset

JOB = "job-hostile00001"
MINUTE = timedelta(minutes=1)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def one_error_line(result: Result, code: int = 1) -> str:
    """The single ``Error:`` line of a failed command (click adds its usage lines before it for exit 2)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if code == 1:
        assert result.stderr == errors[0] + "\n"
    return errors[0]


def recent() -> datetime:
    """A round time a few minutes ago: `ftlog status` and `report` measure ETAs and stalls against the clock."""
    return datetime.now(timezone.utc).replace(microsecond=0) - 10 * MINUTE


@pytest.fixture
def scripted() -> Iterator[tuple[Simulator, QianfanClient]]:
    with Simulator(jobs=0, credentials={SECRET_AK: SECRET_SK}) as sim:
        retry = RetryPolicy(attempts=1)
        with QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=1000, retry=retry) as client:
            yield sim, client


def collect(
    scripted: tuple[Simulator, QianfanClient], data: Path, answers: dict[str, dict[str, Any]], at: datetime
) -> RoundResult:
    """One real round over HTTP in which each task answers ``answers[task_id]``, with the clock reading ``at``."""
    sim, client = scripted
    for task_id, answer in answers.items():
        sim.script(task_id, {"taskId": task_id, "jobId": JOB, "jobName": "hostile", **answer}, job_id=JOB)
    return collect_round(client, Dataset(data), Selection(task_ids=tuple(answers)), now=lambda: at)


def running(progress: Any, *steps: int) -> dict[str, Any]:
    points = [{"step": s, "trainingLoss": 2.0 / s, "perplexity": math.exp(2.0 / s)} for s in steps]
    return {"runStatus": "Running", "runProgress": progress, "checkpointList": points}


# -- 1. rates that no timestamp can turn into an ETA ---------------------------------------------------------------


def test_a_progress_step_of_1e_8_percent_gives_no_eta_instead_of_a_crash(
    scripted: tuple[Simulator, QianfanClient], data: Path, tmp_path: Path
) -> None:
    """1% then 1.00000001% a minute later: 99% to go at 6e-7 %/h is a million years away. `status` and `report`
    crashed on it (pandas OutOfBoundsTimedelta); the ETA is now NULL, and a slow rate that still lands within the
    range of a timestamp keeps its ETA."""
    start = recent()
    for i, (slow, slower) in enumerate((("1%", "50%"), ("1.00000001%", "50.0000001%"))):
        collect(scripted, data, {"task-tiny0000001": running(slow), "task-slow0000001": running(slower)},
                start + i * MINUTE)  # fmt: skip
    now = start + 2 * MINUTE
    estimates = analysis.eta(data, now=now).set_index("task_id")
    assert pd.isna(estimates.loc["task-tiny0000001", "eta"])
    assert estimates.loc["task-tiny0000001", "rate_per_hour"] > 0
    # 50% to go at 6e-6 %/h: about 950 years on, later than pandas' nanosecond range but a valid time.
    eta = estimates.loc["task-slow0000001", "eta"]
    slow = estimates.loc["task-slow0000001"]
    expected = start + MINUTE + timedelta(hours=(100 - slow["run_progress"]) / slow["rate_per_hour"])
    assert abs(eta.to_pydatetime() - expected) < timedelta(seconds=1)
    assert eta.year > 2900

    status = run("status", "--format", "json", "--data", str(data))
    assert status.exit_code == 0, status.output
    rows = {row["task_id"]: row for row in json.loads(status.stdout)}
    assert rows["task-tiny0000001"]["eta"] is None
    assert rows["task-slow0000001"]["eta"].startswith(str(eta.year))
    assert run("status", "--data", str(data)).exit_code == 0

    report = run("report", "--data", str(data), "--out", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "unknown (too slow to tell)" in html
    assert f"{eta.year}-" in html


def test_non_finite_and_absurd_stored_progress_never_crash_a_reader(data: Path, tmp_path: Path) -> None:
    """Rows written by another tool or an older ftlog may hold NaN, inf or absurd progress: stored here directly.
    Each Running task gets an ETA only where its rate makes one."""
    start = recent()
    plans = {  # task -> progress at three rounds a minute apart
        "task-nan00000001": [10.0, 20.0, math.nan],  # latest unknown: its last finite progress still has a rate
        "task-inf00000001": [10.0, math.inf, -math.inf],
        "task-back0000001": [50.0, 40.0, 30.0],  # negative rate
        "task-flat0000001": [30.0, 30.0, 30.0],  # zero rate
        "task-huge0000001": [10.0, 1e300, 1e308],  # past 100%: done at the last sighting
        "task-deep0000001": [-1e308, -1e308, 0.0],  # a rate of 1e310 %/h overflows to inf
    }
    rows = [
        {"task_id": task, "job_id": JOB, "run_status": "Running", "run_progress": value,
         "observed_at": start + i * MINUTE, "state_hash": f"{task}-{i}"}
        for task, values in plans.items() for i, value in enumerate(values)
    ]  # fmt: skip
    Dataset(data).append("snapshots", rows, start)
    now = start + 3 * MINUTE
    estimates = analysis.eta(data, now=now).set_index("task_id")
    last = start + 2 * MINUTE
    # 10% to 20% between the first and the last sighting (two minutes): 300 %/h, so 80% more takes 16 minutes.
    nan_eta = estimates.loc["task-nan00000001", "eta"]
    assert estimates.loc["task-nan00000001", "rate_per_hour"] == pytest.approx(300)
    assert abs(nan_eta.to_pydatetime() - (last + 16 * MINUTE)) < timedelta(seconds=1)
    assert pd.isna(estimates.loc["task-inf00000001", "eta"])  # no finite progress beyond the first
    assert pd.isna(estimates.loc["task-back0000001", "eta"]) and estimates.loc["task-back0000001", "rate_per_hour"] < 0
    assert pd.isna(estimates.loc["task-flat0000001", "eta"]) and estimates.loc["task-flat0000001", "rate_per_hour"] == 0
    assert estimates.loc["task-huge0000001", "eta"].to_pydatetime() == last
    assert math.isinf(estimates.loc["task-deep0000001", "rate_per_hour"])
    assert estimates.loc["task-deep0000001", "eta"].to_pydatetime() == last
    # A window or stall threshold beyond what a pandas Timedelta holds (about 292 years) is fine too.
    huge = analysis.eta(data, now=now, window=timedelta(days=999_999_999), stall_after=timedelta(days=999_999_999))
    assert not huge["stalled"].any()
    assert analysis.status(data, now=now, stall_after=timedelta(days=999_999_999))["task_id"].nunique() == len(plans)

    assert run("status", "--format", "csv", "--data", str(data)).exit_code == 0
    report = run("report", "--data", str(data), "--out", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output


@pytest.mark.parametrize(
    ("rate", "progress", "expected"),
    [
        (1e-12, 1.0, None),  # beyond year 9999
        (0.0, 50.0, None),
        (-5.0, 50.0, None),
        (math.nan, 50.0, None),
        (math.inf, 50.0, 0.0),  # done now
        (-math.inf, 50.0, None),
        (None, 50.0, None),
        (1e300, 50.0, 0.0),
        (10.0, math.nan, None),
        (10.0, math.inf, None),
        (10.0, 250.0, 0.0),  # past 100%: done
        (10.0, 50.0, 5 * 3600.0),
    ],
)
def test_finish_time_is_a_time_or_null_for_any_rate(
    rate: float | None, progress: float, expected: float | None
) -> None:
    seen = pd.Timestamp("2026-03-01T08:00:00Z")
    finish = analysis.finish_time(seen, progress, rate)
    if expected is None:
        assert finish is None
    else:
        assert finish is not None and (finish - seen).total_seconds() == pytest.approx(expected)


def test_durations_read_as_text_whatever_the_number() -> None:
    assert [duration(s) for s in (45, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == ["45 s", "12 min", "3 h 5 min",
                                                                                       "2 d 4 h"]  # fmt: skip
    assert duration(-720) == "-12 min"  # a clock set back between two sightings
    for absurd in (math.nan, math.inf, -math.inf, 1e300, -1e300, None, pd.NaT):
        assert duration(absurd) == "—"


# -- 2. a clock set back between rounds ----------------------------------------------------------------------


def test_a_clock_set_back_between_rounds_keeps_the_newest_answer_and_the_state(
    scripted: tuple[Simulator, QianfanClient], data: Path
) -> None:
    t = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    task = "task-clock000001"
    collect(scripted, data, {task: running("10%", 10)}, t)
    # The machine's clock jumps back an hour; the answer moved on.
    second = collect(scripted, data, {task: running("20%", 10, 20)}, t - timedelta(hours=1))
    assert (second.changed, second.new_checkpoints) == (1, 1)
    with ftlog.connect(data) as con:
        latest = con.execute("SELECT run_progress, checkpoint_count, observed_at FROM tasks").fetchall()
        stamps = con.execute("SELECT polled_at FROM polls ORDER BY polled_at").fetchall()
    assert latest == [(20.0, 2, t + timedelta(microseconds=1))]  # stamped just after the last observation
    assert [s for (s,) in stamps] == [t, t + timedelta(microseconds=1)]  # the poll that found it, likewise
    state = load_state(Dataset(data), "tasks")[task]
    assert (state.run_progress, sorted(state.checkpoints)) == (20.0, [10, 20])  # the state was saved

    status = run("status", "--format", "json", "--data", str(data))
    assert [row["run_progress"] for row in json.loads(status.stdout)] == [20.0]

    # Still behind: the same answer a minute later is unchanged, and no checkpoint is written again.
    files = {name: Dataset(data).files(name) for name in ("snapshots", "checkpoints")}
    third = collect(scripted, data, {task: running("20%", 10, 20)}, t - timedelta(hours=1) + MINUTE)
    assert (third.changed, third.unchanged, third.new_checkpoints) == (0, 1, 0)
    assert {name: Dataset(data).files(name) for name in files} == files
    # Once the clock passes the last observation again, answers are stamped as they arrive.
    fourth = collect(scripted, data, {task: running("30%", 10, 20, 30)}, t + MINUTE)
    assert (fourth.changed, fourth.new_checkpoints) == (1, 1)
    with ftlog.connect(data) as con:
        assert con.execute("SELECT run_progress, observed_at FROM tasks").fetchall() == [(30.0, t + MINUTE)]
        assert con.execute("SELECT count(*) FROM checkpoints").fetchone() == (3,)


# -- 3. repeated checkpoint steps ----------------------------------------------------------------------------


def test_checkpoint_count_counts_distinct_steps(scripted: tuple[Simulator, QianfanClient], data: Path) -> None:
    answer = running("40%", 10, 20)
    answer["checkpointList"] += answer["checkpointList"][:1]  # step 10 again, as some servers answer
    collect(scripted, data, {"task-repeat000001": answer}, datetime(2026, 3, 1, tzinfo=timezone.utc))
    with ftlog.connect(data) as con:
        counted = con.execute("SELECT checkpoint_count FROM tasks").fetchone()
        stored = con.execute("SELECT count(*) FROM checkpoints").fetchone()
    assert counted == stored == (2,)


# -- 4. NaN, inf and absurd option values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        *((["collect", "--all", "--rps", value], "--rps") for value in ("nan", "inf", "-inf", "0", "1e9")),
        *((["collect", "--all", "--interval", value], "--interval") for value in ("nan", "inf", "31536001")),
        *((["collect", "--all", "--stall-minutes", value], "--stall-minutes") for value in ("nan", "inf", "1e12")),
        *((["collect", "--all", "--concurrency", value], "--concurrency") for value in ("nan", "1e9", "0")),
        (["status", "--stall-minutes", "nan"], "--stall-minutes"),
        (["status", "--stall-minutes", "inf"], "--stall-minutes"),
        (["report", "--ema", "nan"], "--ema"),
        (["report", "--ema", "inf"], "--ema"),
        (["demo", "--speed", "nan"], "--speed"),
        (["demo", "--speed", "1e300"], "--speed"),
        (["demo", "--interval", "nan"], "--interval"),
        (["simulate", "--rate-429", "nan"], "--rate-429"),
        (["simulate", "--latency", "inf"], "--latency"),
        (["simulate", "--speed", "nan"], "--speed"),
    ],
)
def test_non_finite_and_absurd_option_values_are_usage_errors(
    args: list[str], option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert option in one_error_line(result, code=2)
    assert list(tmp_path.iterdir()) == [], "nothing ran"


def test_ftlog_rps_from_the_environment_is_checked_like_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for value in ("nan", "inf", str(MAX_RPS * 10)):
        assert "--rps" in one_error_line(run("collect", "--all", env={"FTLOG_RPS": value}), code=2)
    assert list(tmp_path.iterdir()) == []


def test_help_shows_the_bounds_of_float_options() -> None:
    collect_help = run("collect", "--help").stdout
    assert f"0.01<=x<={MAX_RPS}" in collect_help and f"0.1<=x<={MAX_INTERVAL}" in collect_help
    assert "0<x<=1" in run("report", "--help").stdout


# -- 5. a --data that holds no dataset -----------------------------------------------------------------------

READERS = [["status"], ["compare"], ["query", "SELECT 1"], ["events"], ["report"], ["check"], ["compact"]]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("kind", ["missing", "empty folder", "other files", "regular file"])
def test_reading_commands_refuse_a_path_with_no_dataset(
    command: list[str], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "dtaa"  # a typo in a crontab
    if kind == "empty folder":
        path.mkdir()
    elif kind == "other files":
        (path / "_quarantine").mkdir(parents=True)  # what check --repair leaves is no dataset on its own
        (path / "notes.txt").write_text("mine")
    elif kind == "regular file":
        path.write_text("not a dataset")
    line = one_error_line(run(*command, "--data", str(path)))
    assert line.startswith(f"Error: no ftlog dataset at {path}")
    assert ("not a folder" if kind == "regular file" else "run `ftlog collect` first") in line
    assert "FTLOG_DATA" in line
    assert not (tmp_path / "reports").exists(), "no empty report was written"
    assert kind != "missing" or not path.exists()


def test_any_table_folder_or_the_state_makes_a_dataset_and_collect_creates_one(
    api_env: Simulator, tmp_path: Path
) -> None:
    for folder in ("polls", "_state"):
        (tmp_path / folder / folder).mkdir(parents=True)
        result = run("status", "--format", "json", "--data", str(tmp_path / folder))
        assert result.exit_code == 0 and json.loads(result.stdout) == []
    # A notebook's connect() still opens an empty or missing folder, as views with no rows.
    with ftlog.connect(tmp_path / "nothing") as con:
        assert con.execute("SELECT count(*) FROM tasks").fetchone() == (0,)

    task = next(iter(api_env.tasks))
    (tmp_path / "new").mkdir()
    for path in (tmp_path / "new", tmp_path / "missing"):
        assert run("collect", task, "--quiet", "--data", str(path)).exit_code == 0
        assert run("status", "--data", str(path)).exit_code == 0
    (tmp_path / "file").write_text("x")
    line = one_error_line(run("collect", task, "--quiet", "--data", str(tmp_path / "file")))
    assert "not a folder" in line and (tmp_path / "file").read_text() == "x"


# -- 6. a report folder that holds other files ----------------------------------------------------------------


@pytest.fixture
def two_tasks(scripted: tuple[Simulator, QianfanClient], data: Path) -> Path:
    """A task with checkpoints (curve figures) and one without."""
    start = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
    for i in range(3):
        answers = {"task-curve000001": running(f"{10 * (i + 1)}%", *range(10, 10 * (i + 2), 10)),
                   "task-nocurve0001": running(f"{5 * (i + 1)}%")}  # fmt: skip
        collect(scripted, data, answers, start + i * MINUTE)
    return data


def test_report_never_overwrites_or_deletes_files_it_did_not_write(two_tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "timeline.png").write_bytes(b"the user's own timeline")
    (out / "notes.txt").write_text("mine")
    line = one_error_line(run("report", "--data", str(two_tasks), "--out", str(out)))
    assert str(out) in line and "timeline.png" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "timeline.png"]
    assert (out / "timeline.png").read_bytes() == b"the user's own timeline"

    # --force writes beside them, replacing only files of the report's names; a figure this report does not draw
    # (no curves for this task) is left as the user had it.
    (out / "curves_step.png").write_bytes(b"the user's curves")
    forced = run("report", "--task", "task-nocurve0001", "--force", "--data", str(two_tasks), "--out", str(out))
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "curves_step.png").read_bytes() == b"the user's curves"
    assert (out / "timeline.png").read_bytes().startswith(b"\x89PNG")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["files"] == ["index.html", "timeline.png"]
    # Without --force again: the user's files are still not ftlog's.
    assert "notes.txt" in one_error_line(run("report", "--data", str(two_tasks), "--out", str(out)))


@pytest.mark.slow
def test_report_rewrites_its_own_folder_and_removes_only_its_own_stale_figures(two_tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    for _ in range(2):  # twice into its own folder, no flag needed
        assert run("report", "--data", str(two_tasks), "--out", str(out)).exit_code == 0
    figures = {"curves_step.png", "curves_fraction.png", "timeline.png"}
    assert {p.name for p in out.iterdir()} == {"index.html", MANIFEST, *figures}
    # A narrower report has no curves: its own earlier curve figures go, as they would look current.
    narrow = run("report", "--task", "task-nocurve0001", "--data", str(two_tasks), "--out", str(out))
    assert narrow.exit_code == 0, narrow.output
    assert {p.name for p in out.iterdir()} == {"index.html", MANIFEST, "timeline.png"}

    # A manifest edited by hand cannot make ftlog remove or claim a file that is not one of the report's.
    (out / "keep.txt").write_text("mine")
    (out / MANIFEST).write_text(json.dumps({"files": ["index.html", "timeline.png", "keep.txt", "../x"]}))
    assert "keep.txt" in one_error_line(run("report", "--data", str(two_tasks), "--out", str(out)))
    assert run("report", "--force", "--data", str(two_tasks), "--out", str(out)).exit_code == 0
    assert (out / "keep.txt").read_text() == "mine"


def test_a_file_of_the_manifest_name_that_ftlog_did_not_write_is_not_trusted(two_tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text("the user's own notes")
    assert MANIFEST in one_error_line(run("report", "--data", str(two_tasks), "--out", str(out)))
    assert (out / MANIFEST).read_text() == "the user's own notes"
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_error_line(run("report", "--data", str(two_tasks), "--out", str(tmp_path / "file")))
    assert (tmp_path / "file").read_text() == "x"


def test_demo_checks_its_report_folder_before_collecting(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "demo-data"
    out.mkdir()
    (out / "index.html").write_text("a page of the user's")
    result = run("demo", "--out", str(out), "--data", str(data), "--speed", "1e5")
    assert "index.html" in one_error_line(result)
    assert not data.exists(), "refused before the simulator and collector ran"
    assert (out / "index.html").read_text() == "a page of the user's"
    with pytest.raises(FtlogError, match="did not write"):
        write_report(tmp_path / "nothing", out)


@pytest.mark.slow
def test_the_demo_writes_its_report_twice_into_the_same_folder(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo"
    for _ in range(2):  # as `make demo` twice
        result = run("demo", "--out", str(out), "--data", str(tmp_path / "demo-data"), "--speed", "3000",
                     "--interval", "0.2", "--seed", "3")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(out / "index.html")
    assert {"index.html", "timeline.png"} <= set(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"])
