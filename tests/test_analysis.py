"""Analysis helpers, checked against values computed here from the scripted API answers.

The dataset is built by the real collector from a real simulator over HTTP; every round has an injected clock, so
observation times (and therefore durations and ETAs) are known exactly.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from ftlog import analysis
from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
ROUND = timedelta(minutes=1)
ROUNDS = 12
AK, SK = "ak-analysis", "sk-analysis"

# task id -> (model, train_mode, parameter_scale, loss floor, outcome)
TASKS: dict[str, tuple[str, str, str, float, str]] = {
    "task-full00000001": ("ERNIE-Speed-8K", "SFT", "FullFineTuning", 0.20, "Done"),
    "task-full00000002": ("ERNIE-Speed-8K", "SFT", "FullFineTuning", 0.26, "Done"),
    "task-lora00000001": ("ERNIE-Speed-8K", "SFT", "LoRA", 0.45, "Done"),
    "task-lora00000002": ("ERNIE-Speed-8K", "SFT", "LoRA", 0.41, "Done"),
    "task-dpo000000001": ("ERNIE-Lite-8K", "DPO", "LoRA", 0.60, "Done"),
    "task-fail00000001": ("ERNIE-Lite-8K", "DPO", "LoRA", 0.70, "Failed"),
    "task-run000000001": ("ERNIE-Lite-8K", "DPO", "PromptTuning", 0.90, "Running"),
    "task-stall0000001": ("ERNIE-Lite-8K", "DPO", "PromptTuning", 0.95, "Stalled"),
}
STEPS = [32, 64, 96, 128, 160, 192, 224, 256]


def curve(task_id: str) -> list[dict[str, Any]]:
    """A decaying loss with seeded noise; the 'overfit' LoRA task gets worse at the end."""
    floor = TASKS[task_id][3]
    rng = random.Random(task_id)
    points = []
    for i, step in enumerate(STEPS):
        loss = floor + 2.0 * math.exp(-3 * step / STEPS[-1]) + rng.uniform(-0.01, 0.01)
        if task_id == "task-lora00000002" and i >= 6:
            loss += 0.3 * (i - 5)  # rises over the last steps
        points.append({"step": step, "perplexity": math.exp(loss) * 1.001, "trainingLoss": loss})
    return points


def metrics(task_id: str) -> dict[str, str]:
    floor = TASKS[task_id][3]
    return {
        "BLEU-4": f"{80 - 50 * floor:.2f}%",
        "ROUGE-1": f"{88 - 50 * floor:.2f}%",
        "ROUGE-2": f"{60 - 50 * floor:.2f}%",
        "ROUGE-L": f"{84 - 50 * floor:.2f}%",
        "EDIT-DISTANCE": f"{30 + floor:.2f}",
    }


def progress_plan(outcome: str) -> list[tuple[str, int | None]]:
    """(runStatus, runProgress) for each round."""
    if outcome == "Running":  # keeps climbing 5 points per round after two rounds of Waiting
        return [("Waiting", None)] * 2 + [("Running", 5 * (r - 1)) for r in range(2, ROUNDS)]
    if outcome == "Stalled":  # stuck at 65% since round 4
        return [("Waiting", None)] + [("Running", p) for p in (1, 34, 50)] + [("Running", 65)] * (ROUNDS - 4)
    plan: list[tuple[str, int | None]] = [("Waiting", None)] * 2 + [
        ("Running", p) for p in (1, 3, 34, 50, 65, 65, 96, 99)
    ]
    end = "Done" if outcome == "Done" else "Failed"
    return plan + [(end, None)] * (ROUNDS - len(plan))


def result_at(task_id: str, round_no: int) -> dict[str, Any]:
    model, mode, scale, _, outcome = TASKS[task_id]
    status, progress = progress_plan(outcome)[round_no]
    points = curve(task_id)
    shown = 0 if status == "Waiting" else len(points) if status in ("Done", "Failed") else min(len(points), round_no)
    result: dict[str, Any] = {
        "taskId": task_id,
        "jobId": f"job-{mode.lower()}000000",
        "jobName": f"{mode} 实验",
        "jobDescription": "",
        "model": model,
        "trainMode": mode,
        "parameterScale": scale,
        "runStatus": status,
        "createTime": "2026-03-01T07:59:00Z",
        "finishTime": "0000-00-00T00:00:00Z",
        # the list arrives out of order, with a repeated entry, as some servers answer
        "checkpointList": list(reversed(points[:shown])) + points[:1] if shown else [],
    }
    if progress is not None:
        result["runProgress"] = f"{progress}%"
    if status == "Done":
        result["metrics"] = metrics(task_id)
    if status == "Failed":
        result.update(errorCode=500203, errorMessage="GPU out of memory")
    return result


def round_time(round_no: int) -> datetime:
    return T0 + round_no * ROUND


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    data = Dataset(tmp_path_factory.mktemp("analysis") / "data")
    with Simulator(jobs=0, credentials={AK: SK}) as sim:
        client = QianfanClient(Credentials(AK, SK), base_url=sim.url, rps=1000, retry=RetryPolicy(attempts=1))
        for round_no in range(ROUNDS):
            for task_id in TASKS:
                sim.script(task_id, result_at(task_id, round_no), job_id=f"job-{TASKS[task_id][1].lower()}000000")
            moment = round_time(round_no)
            collect_round(client, data, Selection(task_ids=tuple(TASKS)), now=lambda m=moment: m)
        client.close()
    yield data


def final_best(task_id: str) -> dict[str, float]:
    points = curve(task_id)
    return {
        "final_loss": points[-1]["trainingLoss"],
        "best_loss": min(p["trainingLoss"] for p in points),
        "final_perplexity": points[-1]["perplexity"],
        "best_perplexity": min(p["perplexity"] for p in points),
    }


def seen_points(task_id: str) -> list[dict[str, Any]]:
    """The checkpoints the collector can have seen by the last round."""
    shown = max(len({p["step"] for p in result_at(task_id, r)["checkpointList"]}) for r in range(ROUNDS))
    return curve(task_id)[:shown]


def test_curves_full_resolution_with_fraction_and_ema(dataset: Dataset) -> None:
    frame = analysis.curves(dataset, x="fraction", ema=0.5)
    for task_id in TASKS:
        rows = frame[frame["task_id"] == task_id]
        expected = seen_points(task_id)
        assert rows["step"].tolist() == [p["step"] for p in expected]
        assert rows["training_loss"].tolist() == pytest.approx([p["trainingLoss"] for p in expected])
        if expected:
            assert rows["x"].tolist() == pytest.approx([p["step"] / expected[-1]["step"] for p in expected])
            smoothed, value = [], None
            for p in expected:
                value = p["trainingLoss"] if value is None else 0.5 * p["trainingLoss"] + 0.5 * value
                smoothed.append(value)
            assert rows["training_loss_ema"].tolist() == pytest.approx(smoothed)
        assert set(rows["parameter_scale"]) <= {TASKS[task_id][2]}
    by_step = analysis.curves(dataset, tasks=["task-full00000001"])
    assert by_step["x"].tolist() == [float(s) for s in STEPS]
    assert "training_loss_ema" not in by_step.columns


def test_curves_equal_the_curves_view_whatever_the_filter(dataset: Dataset, tmp_path: Path) -> None:
    """curves() attaches task attributes in Arrow, not SQL; it must return exactly the curves view's rows, and like
    the view's inner join leave out checkpoints of a task with no snapshot."""
    copy = tmp_path / "data"
    shutil.copytree(dataset.root, copy)
    orphan = pa.table({"task_id": ["task-nosnapshot1"], "step": [8], "perplexity": [2.0], "training_loss": [1.0],
                       "observed_at": [T0], "superseded": [False]})  # fmt: skip
    Dataset(copy).append_table("checkpoints", orphan, T0)
    columns = "task_id, job_id, job_name, model, train_mode, parameter_scale, step, step::DOUBLE AS x"
    con = connect(copy)
    cases = [  # tasks, jobs, how many tasks the answer holds
        (None, None, len(TASKS)),
        (["task-lora00000002", "task-run000000001"], None, 2),
        (None, ["job-dpo000000"], 4),
        (["task-lora00000002"], ["job-dpo000000"], 0),  # both filters apply
        (["task-nosnapshot1"], None, 0),  # no snapshot, no attributes: left out, as the view's join does
    ]
    for tasks, jobs, count in cases:
        clauses = [f"{c} IN (SELECT unnest(?::VARCHAR[]))" for c, v in (("task_id", tasks), ("job_id", jobs)) if v]
        expected = con.execute(
            f"SELECT {columns}, training_loss, perplexity FROM curves WHERE {' AND '.join(clauses) or 'TRUE'} "
            "ORDER BY task_id, step",
            [v for v in (tasks, jobs) if v],
        ).df()
        frame = analysis.curves(con, tasks=tasks, jobs=jobs)
        assert frame["task_id"].nunique() == count, (tasks, jobs)
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    con.close()


def test_compare_groups_match_independent_statistics(dataset: Dataset) -> None:
    table = analysis.compare(dataset, by=["train_mode", "parameter_scale"])
    groups: dict[tuple[str, str], list[str]] = {}
    for task_id, (_, mode, scale, _, _) in TASKS.items():
        groups.setdefault((mode, scale), []).append(task_id)
    assert len(table) == len(groups)
    for (mode, scale), members in groups.items():
        row = table[(table["train_mode"] == mode) & (table["parameter_scale"] == scale)].iloc[0]
        assert row["tasks"] == len(members)
        done = [t for t in members if TASKS[t][4] == "Done"]
        assert row["done"] == len(done)
        bleu = [float(metrics(t)["BLEU-4"].rstrip("%")) for t in done]
        if bleu:
            assert row["bleu_4_mean"] == pytest.approx(statistics.mean(bleu))
            assert row["bleu_4_min"] == pytest.approx(min(bleu))
            assert row["bleu_4_max"] == pytest.approx(max(bleu))
        if len(bleu) > 1:
            assert row["bleu_4_std"] == pytest.approx(statistics.stdev(bleu))
        else:
            assert pd.isna(row["bleu_4_std"])
        finals = [seen_points(t)[-1]["trainingLoss"] for t in members if seen_points(t)]
        bests = [min(p["trainingLoss"] for p in seen_points(t)) for t in members if seen_points(t)]
        assert row["final_loss_mean"] == pytest.approx(statistics.mean(finals))
        assert row["best_loss_min"] == pytest.approx(min(bests))


def test_compare_rejects_unknown_columns(dataset: Dataset) -> None:
    with pytest.raises(analysis.FtlogError, match="cannot group by colour"):
        analysis.compare(dataset, by=["colour"])


def test_best_checkpoints_and_continuation_pair(dataset: Dataset) -> None:
    best = analysis.best_checkpoints(dataset).set_index("task_id")
    for task_id in TASKS:
        points = seen_points(task_id)
        if not points:
            assert task_id not in best.index
            continue
        winner = min(points, key=lambda p: (p["trainingLoss"], p["step"]))
        row = best.loc[task_id]
        assert row["best_step"] == winner["step"]
        assert row["best_value"] == pytest.approx(winner["trainingLoss"])
        assert row["is_last"] == (winner["step"] == points[-1]["step"])
        assert row["incrementTaskId"] == task_id
        assert row["incrementCheckpointStep"] == winner["step"]
    assert not best.loc["task-lora00000002", "is_last"]  # the overfitting run is flagged
    by_ppl = analysis.best_checkpoints(dataset, metric="perplexity").set_index("task_id")
    ppl_winner = min(curve("task-full00000001"), key=lambda p: p["perplexity"])
    assert by_ppl.loc["task-full00000001", "best_step"] == ppl_winner["step"]


def expected_stretches(task_id: str) -> list[tuple[str, datetime]]:
    stretches: list[tuple[str, datetime]] = []
    for round_no, (status, _) in enumerate(progress_plan(TASKS[task_id][4])):
        if not stretches or stretches[-1][0] != status:
            stretches.append((status, round_time(round_no)))
    return stretches


def test_timeline_and_durations(dataset: Dataset) -> None:
    now = round_time(ROUNDS + 3)
    timeline = analysis.timeline(dataset, now=now)
    durations = analysis.durations(dataset, now=now).set_index("task_id")
    for task_id in TASKS:
        rows = timeline[timeline["task_id"] == task_id]
        expected = expected_stretches(task_id)
        assert rows["status"].tolist() == [status for status, _ in expected]
        assert [t.to_pydatetime() for t in rows["entered_at"]] == [at for _, at in expected]
        ends = [at for _, at in expected[1:]] + [None]
        for (status, entered), end, seconds in zip(expected, ends, rows["seconds"], strict=True):
            if end is not None:
                assert seconds == (end - entered).total_seconds()
            elif status in ("Done", "Failed"):
                assert pd.isna(seconds)
            else:
                assert seconds == (now - entered).total_seconds()
        queue = sum(((ends[i] or now) - at).total_seconds() for i, (s, at) in enumerate(expected) if s == "Waiting")
        running = sum(((ends[i] or now) - at).total_seconds() for i, (s, at) in enumerate(expected) if s == "Running")
        assert durations.loc[task_id, "queue_seconds"] == queue
        assert durations.loc[task_id, "running_seconds"] == running
        finished = expected[-1][0] in ("Done", "Failed")
        total_end = expected[-1][1] if finished else now
        assert durations.loc[task_id, "total_seconds"] == (total_end - expected[0][1]).total_seconds()


def test_eta_rate_and_stall(dataset: Dataset) -> None:
    now = round_time(ROUNDS - 1)
    table = analysis.eta(dataset, window=timedelta(minutes=5), stall_after=timedelta(minutes=4), now=now)
    table = table.set_index("task_id")
    assert set(table.index) == {"task-run000000001", "task-stall0000001"}

    # Running task: progress 5 points a minute; the window starts at the first snapshot within 5 minutes of now.
    plan = progress_plan("Running")
    in_window = [r for r in range(ROUNDS) if round_time(r) >= now - timedelta(minutes=5) and plan[r][0] == "Running"]
    first = in_window[0]
    current = plan[ROUNDS - 1][1]
    assert current is not None and plan[first][1] is not None
    hours = (now - round_time(first)).total_seconds() / 3600
    rate = (current - plan[first][1]) / hours
    row = table.loc["task-run000000001"]
    assert row["run_progress"] == current
    assert row["rate_per_hour"] == pytest.approx(rate)
    expected_eta = now + timedelta(hours=(100 - current) / rate)
    assert abs(row["eta"].to_pydatetime() - expected_eta) < timedelta(milliseconds=1)
    assert not row["stalled"]

    # Stalled task: 65% since round 4, i.e. for 7 minutes before now: rate 0 over the window, no ETA, stalled.
    stalled = table.loc["task-stall0000001"]
    assert stalled["rate_per_hour"] == 0
    assert pd.isna(stalled["eta"])
    assert stalled["stalled"]
    assert stalled["progress_since"].to_pydatetime() == round_time(4)


def test_health_flags(dataset: Dataset) -> None:
    flags = analysis.health(dataset, k=2).set_index("task_id")
    assert flags.loc["task-lora00000002", "loss_rising"]
    assert not flags.loc["task-lora00000002", "healthy"]
    assert flags.loc["task-full00000001", "healthy"]
    assert not flags["non_finite"].any()
    assert not flags["perplexity_mismatch"].any()  # perplexity is exp(loss) within 0.1%


def test_views_expose_every_metric_and_status_changes(dataset: Dataset) -> None:
    with connect(dataset) as con:
        values = con.sql("SELECT metric, value FROM metric_values WHERE task_id = 'task-full00000001'").fetchall()
        changes = con.sql(
            "SELECT from_status, to_status FROM status_changes WHERE task_id = 'task-fail00000001' ORDER BY changed_at"
        ).fetchall()
        raw = con.execute("SELECT raw FROM tasks WHERE task_id = 'task-fail00000001'").fetchone()
    assert dict(values) == {k: float(v.rstrip("%")) for k, v in metrics("task-full00000001").items()}
    assert changes == [(None, "Waiting"), ("Waiting", "Running"), ("Running", "Failed")]
    assert raw is not None and json.loads(raw[0])["errorMessage"] == "GPU out of memory"


def test_status_and_compare_cli(dataset: Dataset) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["status", "--format", "json", "--data", dataset.location])
    assert result.exit_code == 0, result.output
    rows = {row["task_id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(TASKS)
    assert rows["task-fail00000001"]["run_status"] == "Failed"
    assert rows["task-run000000001"]["run_progress"] == progress_plan("Running")[-1][1]
    assert rows["task-full00000001"]["best_loss"] == pytest.approx(final_best("task-full00000001")["best_loss"])

    result = runner.invoke(cli, ["compare", "--by", "parameter_scale", "--format", "csv", "--data", dataset.location])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.strip().splitlines()
    assert header.split(",")[:3] == ["parameter_scale", "tasks", "done"]
    assert sorted(line.split(",")[0] for line in lines) == ["FullFineTuning", "LoRA", "PromptTuning"]

    markdown = runner.invoke(cli, ["compare", "--format", "markdown", "--data", dataset.location])
    assert markdown.exit_code == 0 and markdown.stdout.startswith("| model | train_mode | parameter_scale |")

    bad = runner.invoke(cli, ["compare", "--by", "colour", "--data", dataset.location])
    assert bad.exit_code == 2 and "colour" in bad.output


def test_empty_dataset_gives_empty_frames(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    assert analysis.curves(empty).empty
    assert analysis.compare(empty).empty
    assert analysis.best_checkpoints(empty).empty
    assert analysis.timeline(empty).empty
    assert analysis.durations(empty).empty
    assert analysis.eta(empty).empty
    assert analysis.health(empty).empty
    assert analysis.status(empty).empty
    # The command line says there is no dataset there (a mistyped --data), rather than printing nothing.
    result = CliRunner().invoke(cli, ["status", "--format", "json", "--data", str(empty)])
    assert result.exit_code == 1 and result.stderr.startswith("Error: no ftlog dataset at") and result.stdout == ""
    (empty / "snapshots").mkdir(parents=True)  # a dataset with no rows yet
    result = CliRunner().invoke(cli, ["status", "--format", "json", "--data", str(empty)])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
