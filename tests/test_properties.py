"""Property tests: normalisation accepts any JSON in any field, and stored rows read back unchanged."""

from __future__ import annotations

import json
import math
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftlog.check import check
from ftlog.schema import normalise
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
