"""Every analysis helper returns the same columns and dtypes whether or not rows exist, and ``status`` takes best
loss from the snapshots' curve summaries with exactly the values a scan of every checkpoint gives.

The populated dataset is a real simulator run collected by the real collector (tests/report_data.py); the others
are made from it by removing rows from its Parquet files, so they differ only in what rows exist.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SECRET_AK, SECRET_SK
from report_data import RUNNING_TASK, build_dataset

from ftlog import act, analysis
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

NOW = datetime.now(timezone.utc)
Helper = Callable[[duckdb.DuckDBPyConnection], pd.DataFrame]
HELPERS: dict[str, Helper] = {
    "tasks": analysis.tasks,
    "curves": analysis.curves,
    "curves, fraction and ema": lambda con: analysis.curves(con, x="fraction", ema=0.3),
    "final_and_best": analysis.final_and_best,
    "compare": analysis.compare,
    "compare, other stats": lambda con: analysis.compare(con, by=["job_id"], stats=("median", "count")),
    "best_checkpoints": analysis.best_checkpoints,
    "best_checkpoints, perplexity": lambda con: analysis.best_checkpoints(con, metric="perplexity"),
    "timeline": lambda con: analysis.timeline(con, now=NOW),
    "durations": lambda con: analysis.durations(con, now=NOW),
    "eta": lambda con: analysis.eta(con, now=NOW),
    "health": analysis.health,
    "status": lambda con: analysis.status(con, now=NOW),
    "events": analysis.events,
    "actions": analysis.actions,
}
CONTRACT = {analysis.TIME, analysis.FLAG, analysis.COUNT, analysis.NUMBER, analysis.TEXT}
SUMMARY = ("last_step", "final_loss", "best_loss", "final_perplexity", "best_perplexity")


def rewrite(source: Path, target: Path, keep: Callable[[str, pa.Table], pa.Table]) -> Path:
    """A copy of the dataset at ``source`` in which every data file of table ``name`` holds ``keep(name, rows)``."""
    shutil.copytree(source, target)
    for path in sorted(target.rglob("*.parquet")):
        name = path.relative_to(target).parts[0]
        if not name.startswith("_"):  # the collector's state cache is no table
            pq.write_table(keep(name, pq.ParquetFile(path).read()), path)
    return target


def not_running(name: str, rows: pa.Table) -> pa.Table:
    return rows.filter(pc.not_equal(rows.column("task_id"), RUNNING_TASK)) if "task_id" in rows.column_names else rows


def waiting_only(name: str, rows: pa.Table) -> pa.Table:
    """Tasks as first seen, before any checkpoint: what a dataset holds after a round over a fresh job."""
    if name == "snapshots":
        return rows.filter(pc.equal(rows.column("run_status"), "Waiting"))
    return rows.slice(0, 0) if name in ("checkpoints", "events", "deliveries", "actions") else rows


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("types")
    populated = root / "populated"
    build_dataset(populated, seed=5, jobs=2, tasks_per_job=2, speed=2000)
    # A stop advised and one sent, as `collect --stop-when` and `ftlog stop` record them.
    advised = act.advise(RUNNING_TASK, "job-x", rule="nan", details={"evidence": {"step": 1}}, now=NOW)
    sent = {**act.advise(RUNNING_TASK, "job-x", rule="plateau:1:5", now=NOW), "outcome": "sent", "http_status": 200,
            "request_id": "r-1", "command": "stop"}  # fmt: skip
    act.record(Dataset(populated), [advised, sent])
    (root / "no rows" / "snapshots").mkdir(parents=True)
    return {
        "populated": populated,
        "nothing running": rewrite(populated, root / "nothing running", not_running),
        "waiting, no checkpoints": rewrite(populated, root / "waiting", waiting_only),
        "only empty files": rewrite(populated, root / "empty files", lambda name, rows: rows.slice(0, 0)),
        "no rows": root / "no rows",
        "nothing at all": root / "missing",
    }


def frames(data: Path) -> dict[str, pd.DataFrame]:
    con = connect(data)
    try:
        return {name: helper(con) for name, helper in HELPERS.items()}
    finally:
        con.close()


def dtypes(frame: pd.DataFrame) -> list[tuple[str, Any]]:
    return list(frame.dtypes.items())


def test_every_public_helper_is_checked() -> None:
    public = {
        name
        for name, function in inspect.getmembers(analysis, inspect.isfunction)
        if function.__module__ == analysis.__name__ and not name.startswith("_")
        and inspect.signature(function).return_annotation == "pd.DataFrame"
    }  # fmt: skip
    assert public == {name.split(",")[0] for name in HELPERS}


def test_helpers_have_the_same_columns_and_dtypes_with_and_without_rows(datasets: dict[str, Path]) -> None:
    expected = frames(datasets["populated"])
    assert all(len(frame) for frame in expected.values()), {n: len(f) for n, f in expected.items()}
    for variant, data in datasets.items():
        got = frames(data)
        for name, frame in got.items():
            assert dtypes(frame) == dtypes(expected[name]), (variant, name)
    # The variants hold what their names say.
    assert analysis.eta(datasets["nothing running"], now=NOW).empty
    assert not analysis.status(datasets["nothing running"], now=NOW).empty
    waiting = analysis.status(datasets["waiting, no checkpoints"], now=NOW)
    assert len(waiting) and waiting["best_loss"].isna().all() and waiting["stalled"].isna().all()
    assert analysis.curves(datasets["waiting, no checkpoints"]).empty
    assert analysis.tasks(datasets["only empty files"]).empty


def test_helpers_follow_the_dtype_contract(datasets: dict[str, Path]) -> None:
    """Times datetime64[us, UTC], flags boolean, counts and steps Int64, other numbers float64, text as pandas has
    it; the same flag has the same dtype in every helper."""
    got = frames(datasets["populated"])
    for name, frame in got.items():
        for column, dtype in frame.dtypes.items():
            assert dtype in CONTRACT, (name, column, dtype)
            if column.endswith(("_at", "_time")) or column in ("eta", "progress_since", "last_change"):
                assert dtype == analysis.TIME, (name, column)
            if column in ("stalled", "is_last", "healthy", "loss_rising", "plateau", "non_finite"):
                assert dtype == analysis.FLAG, (name, column)
            if column in ("step", "last_step", "best_step", "checkpoints", "checkpoint_count", "tasks", "done"):
                assert dtype == analysis.COUNT, (name, column)
            if column in ("task_id", "job_id", "run_status", "status", "kind", "details"):
                assert dtype == analysis.TEXT, (name, column)
    assert got["eta"]["stalled"].dtype == got["status"]["stalled"].dtype == analysis.FLAG
    assert got["eta"]["eta"].dtype == got["status"]["eta"].dtype == analysis.TIME


def test_status_best_loss_equals_the_checkpoint_scan_on_a_collected_dataset(datasets: dict[str, Path]) -> None:
    for variant in ("populated", "nothing running"):
        status = analysis.status(datasets[variant], now=NOW).set_index("task_id")["best_loss"]
        scanned = analysis.final_and_best(datasets[variant]).set_index("task_id")["best_loss"]
        assert scanned.notna().sum() >= 4
        pd.testing.assert_series_equal(status, scanned.reindex(status.index), check_names=False)


# -- best loss with revised checkpoint values ----------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
JOB = "job-revised00001"
# task -> the training loss of each step in each round's answer (a step absent from a round is not yet trained)
LOSSES: dict[str, list[dict[int, float]]] = {
    # the best value is revised upwards, so the best moves to another step, then a new step beats it
    "task-bestup00001": [
        {10: 1.0, 20: 0.6, 30: 0.8},
        {10: 1.0, 20: 0.9, 30: 0.8},
        {10: 1.0, 20: 0.9, 30: 0.8, 40: 0.7},
    ],
    # an earlier step is revised below every other value, the last step unchanged
    "task-bestdown001": [{10: 1.0, 20: 0.8}, {10: 0.5, 20: 0.8}, {10: 0.5, 20: 0.8}],
    # a value that is neither best nor final is revised: the summary, and so the stored state, stays the same
    "task-bestsame001": [{10: 1.0, 20: 0.5, 30: 0.7}, {10: 1.2, 20: 0.5, 30: 0.7}, {10: 1.2, 20: 0.5, 30: 0.7}],
    "task-nocheckpt01": [{}, {}, {}],
}


def answer(task_id: str, round_no: int) -> dict[str, Any]:
    losses = LOSSES[task_id][round_no]
    return {
        "taskId": task_id,
        "jobId": JOB,
        "jobName": "revised",
        "runStatus": "Running" if losses else "Waiting",
        "runProgress": "50%",  # unchanged, so only the checkpoints can make a new state
        "checkpointList": [
            {"step": step, "trainingLoss": loss, "perplexity": math.exp(loss)} for step, loss in losses.items()
        ],
    }


@pytest.fixture(scope="module")
def revised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, set[Path]]]:
    """The dataset, and the snapshot files of the first round."""
    data = tmp_path_factory.mktemp("revised") / "data"
    first: set[Path] = set()
    with Simulator(jobs=0, credentials={SECRET_AK: SECRET_SK}) as sim:
        retry = RetryPolicy(attempts=1)
        with QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=1000, retry=retry) as client:
            for round_no in range(3):
                for task_id in LOSSES:
                    sim.script(task_id, answer(task_id, round_no), job_id=JOB)
                at = T0 + round_no * timedelta(minutes=1)
                collect_round(client, Dataset(data), Selection(task_ids=tuple(LOSSES)), now=lambda at=at: at)
                if round_no == 0:
                    first = set((data / "snapshots").rglob("*.parquet"))
    yield data, first


def test_status_best_loss_follows_revised_checkpoint_values(revised: tuple[Path, set[Path]]) -> None:
    data, _ = revised
    status = analysis.status(data, now=T0 + timedelta(minutes=3)).set_index("task_id")["best_loss"]
    scanned = analysis.final_and_best(data).set_index("task_id")["best_loss"]
    expected = {task: min(losses[-1].values(), default=math.nan) for task, losses in LOSSES.items()}
    assert status.to_dict() == pytest.approx(expected, nan_ok=True)
    pd.testing.assert_series_equal(status, scanned.reindex(status.index), check_names=False)
    # The revisions were stored as checkpoint rows, and the one that moved no summary value made no snapshot.
    con = connect(data)
    try:
        revisions = con.execute("SELECT count(*) FROM _checkpoints WHERE task_id = 'task-bestsame001'").fetchone()
        snapshots = con.execute("SELECT count(*) FROM snapshots WHERE task_id = 'task-bestsame001'").fetchone()
    finally:
        con.close()
    assert revisions == (4,) and snapshots == (1,)


def test_status_best_loss_of_snapshots_without_a_summary_comes_from_the_checkpoints(
    revised: tuple[Path, set[Path]], tmp_path: Path
) -> None:
    """Snapshot files of an older ftlog carry no curve summary: such a task is summarised from its checkpoints,
    while the others still read their snapshot's."""
    data, first = revised
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for path in first:
        old = pq.ParquetFile(copy / path.relative_to(data)).read()
        pq.write_table(old.drop_columns(list(SUMMARY)), copy / path.relative_to(data))
    status = analysis.status(copy, now=T0 + timedelta(minutes=3)).set_index("task_id")["best_loss"]
    assert status.to_dict() == pytest.approx(
        analysis.status(data, now=T0 + timedelta(minutes=3)).set_index("task_id")["best_loss"].to_dict(), nan_ok=True
    )
    assert status["task-bestsame001"] == 0.5  # its only snapshot is of the first round
    assert status.dtype == analysis.NUMBER


def test_readme_and_notebooks_read_results_without_holding_the_connection() -> None:
    """From DuckDB 2.0 on ``.arrow()`` returns a streaming reader that blocks the connection until it is read: the
    examples users copy use ``.df()``, ``fetch()`` or the helpers instead."""
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert code and "ftlog.connect" in "".join(code)
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code += ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    assert not [block for block in code if ".arrow()" in block]
