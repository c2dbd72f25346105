"""Property tests: normalisation accepts any JSON in any field, and stored rows read back unchanged."""

from __future__ import annotations

import json
import math
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftlog.check import check
from ftlog.normalise import normalise
from ftlog.store import Dataset
from ftlog.views import connect

FIELDS = [
    "taskId", "jobId", "jobName", "jobDescription", "model", "trainMode", "parameterScale", "runStatus",
    "runProgress", "vdlLink", "metrics", "checkpointList", "createTime", "finishTime", "createDate", "finishDate",
    "errorCode", "errorMessage", "somethingNew",
]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
OBSERVED = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
GOOD_EXAMPLE = {"runStatus": "Running", "runProgress": "50%", "jobName": "任务", "checkpointList": []}


@given(st.dictionaries(st.sampled_from(FIELDS), JSON))
@settings(max_examples=300, deadline=None)
def test_normalise_never_raises_and_keeps_raw(result: dict[str, Any]) -> None:
    row = normalise("task-prop", result, OBSERVED, "req-1")
    snapshot = row.snapshot
    assert snapshot["task_id"]
    assert snapshot["run_progress"] is None or math.isfinite(snapshot["run_progress"])
    kept = json.loads(snapshot["raw"])
    for key, value in result.items():
        if key != "checkpointList":
            assert key in kept
            # JSON itself cannot hold NaN faithfully; everything else survives the round trip
            if not (isinstance(value, float) and math.isnan(value)):
                assert json.dumps(kept[key], sort_keys=True) == json.dumps(value, sort_keys=True, default=str)


GOOD_RESULT = st.fixed_dictionaries(
    {
        "runStatus": st.sampled_from(["Waiting", "Running", "Done", "Failed", "Stopped", "Paused"]),
        "runProgress": st.integers(0, 100).map(lambda p: f"{p}%"),
        "jobName": st.text(max_size=30),
        "metrics": st.dictionaries(
            st.sampled_from(["BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "EDIT-DISTANCE"]),
            st.floats(0, 100, allow_nan=False).map(lambda v: f"{v:.2f}%"),
        ),
        "checkpointList": st.lists(
            st.fixed_dictionaries(
                {
                    "step": st.integers(1, 10_000),
                    "perplexity": st.floats(1, 1e6, allow_nan=False),
                    "trainingLoss": st.floats(0, 20, allow_nan=False),
                }
            ),
            max_size=20,
            unique_by=lambda c: c["step"],
        ),
    }
)


@given(st.lists(GOOD_RESULT, min_size=1, max_size=5))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rows_round_trip_through_parquet_and_views(results: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        dataset = Dataset(folder)
        rows = [
            normalise(f"task-{i:012d}", result, OBSERVED + timedelta(seconds=i), f"req-{i}")
            for i, result in enumerate(results)
        ]
        dataset.append("snapshots", [r.snapshot for r in rows], OBSERVED)
        points = [
            {"task_id": r.snapshot["task_id"], **p, "observed_at": r.snapshot["observed_at"]}
            for r in rows
            for p in r.checkpoints
        ]
        dataset.append("checkpoints", points, OBSERVED)
        with connect(dataset) as con:
            stored = con.execute(
                "SELECT task_id, run_status, run_progress, job_name, bleu_4, raw, observed_at FROM snapshots"
                " ORDER BY task_id"
            ).fetchall()
            curve = con.execute(
                "SELECT task_id, step, perplexity, training_loss FROM checkpoints ORDER BY task_id, step"
            ).fetchall()
        expected = [
            (s["task_id"], s["run_status"], s["run_progress"], s["job_name"], s["bleu_4"], s["raw"], s["observed_at"])
            for s in (r.snapshot for r in rows)
        ]
        assert stored == expected
        assert curve == sorted((p["task_id"], p["step"], p["perplexity"], p["training_loss"]) for p in points)


@pytest.mark.slow
@given(cut=st.floats(0, 1, exclude_max=True), noise=st.binary(max_size=64))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_check_repair_leaves_a_readable_dataset_whatever_a_file_holds(cut: float, noise: bytes) -> None:
    """Any damage to a data file (cut anywhere, followed by any bytes) is found without crashing `check`, and after
    `check --repair` every view answers."""
    with tempfile.TemporaryDirectory() as folder:
        dataset = Dataset(folder)
        row = normalise("task-damaged", GOOD_EXAMPLE, OBSERVED, "req-1")
        [good] = dataset.append("snapshots", [row.snapshot], OBSERVED)
        content = Path(good).read_bytes()
        damaged = Path(good).with_name("20260501T120000000000-damaged0.parquet")
        damaged.write_bytes(content[: int(cut * len(content))] + noise)
        report = check(folder, repair=True)
        assert not damaged.exists() or not any(p.kind == "unreadable" for p in report.problems)
        assert check(folder).count("unreadable") == 0
        with connect(dataset) as con:
            assert con.execute("SELECT count(*) FROM snapshots").fetchall() == [(1,)]


# One write of checkpoint rows: who wrote it, and (task, step, value) rows in the order written.
WRITE = st.tuples(
    st.sampled_from(["collector", "older_ftlog", "copy"]),
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 6), st.integers(0, 3)), max_size=12),
)


@pytest.mark.slow
@given(writes=st.lists(WRITE, min_size=1, max_size=10), compact_at=st.none() | st.integers(0, 9))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_checkpoints_view_keeps_the_latest_value_per_step_however_files_overlap(
    writes: list[tuple[str, list[tuple[str, int, int]]]], compact_at: int | None
) -> None:
    """The checkpoints view takes the fast path only for tasks whose files' step ranges are disjoint: whatever mix
    of collector files, files of an older ftlog (no ``superseded`` column, any repeats), copied files (as an
    interrupted compaction leaves) and compactions, it equals the latest value per (task, step), compared here with
    the plain de-duplication over every stored row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftlog.schema import CHECKPOINTS

    start = datetime(2026, 5, 1, 23, 55, tzinfo=timezone.utc)  # writes cross midnight: two date partitions
    with tempfile.TemporaryDirectory() as folder:
        dataset = Dataset(folder)
        written: list[str] = []
        for i, (kind, rows) in enumerate(writes):
            at = start + timedelta(minutes=i)
            if kind == "copy" and written:
                source = Path(written[-1])
                copy = source.with_name(f"{at:%Y%m%dT%H%M%S%f}-copy{i:04d}.parquet")
                copy.write_bytes(source.read_bytes())
                written.append(str(copy))
            elif kind == "collector":  # one answer per task: each step once, its last value
                latest = {(task, step): value for task, step, value in rows}
                table = pa.Table.from_pylist(
                    [
                        {"task_id": t, "step": s, "perplexity": float(v), "training_loss": float(v),
                         "observed_at": at, "superseded": False}
                        for (t, s), v in latest.items()
                    ],
                    schema=CHECKPOINTS,
                )  # fmt: skip
                written.append(dataset.write_table("checkpoints", table, at.date(), at))
            elif rows:  # an older ftlog: no superseded column, rows a second apart, repeats allowed
                table = pa.Table.from_pylist(
                    [
                        {"task_id": t, "step": s, "perplexity": float(v), "training_loss": float(v),
                         "observed_at": at + timedelta(seconds=j)}
                        for j, (t, s, v) in enumerate(rows)
                    ],
                    schema=CHECKPOINTS.remove(CHECKPOINTS.get_field_index("superseded")),
                )  # fmt: skip
                path = Path(folder, "checkpoints", f"date={at.date()}", f"{at:%Y%m%dT%H%M%S%f}-old{i:04d}.parquet")
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path)
                written.append(str(path))
            if compact_at == i:
                dataset.compact(at + timedelta(days=1), upgrade=i % 2 == 0)
                written = dataset.files("checkpoints")
        if not written:
            return
        with connect(dataset) as con:
            view = con.execute("SELECT task_id, step, perplexity, observed_at FROM checkpoints ORDER BY ALL").fetchall()
            expected = con.execute(
                """SELECT task_id, step, perplexity, observed_at FROM _checkpoints
                   QUALIFY row_number() OVER (PARTITION BY task_id, step ORDER BY observed_at DESC) = 1
                   ORDER BY ALL"""
            ).fetchall()
        assert view == expected
        assert check(folder).count("schema") == 0
        dataset.compact(start + timedelta(days=3), upgrade=True)
        with connect(dataset) as con:
            again = con.execute("SELECT task_id, step, perplexity, observed_at FROM checkpoints ORDER BY ALL")
            assert again.fetchall() == expected
            assert con.execute("SELECT count(*) FROM _checkpoints WHERE superseded IS NULL").fetchone() == (0,)
