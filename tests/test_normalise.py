"""Normalisation: API answers to typed rows, pure functions, no server and no files."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pytest
from payloads import DONE, T0

from ftlog.normalise import as_number, as_time, normalise
from ftlog.schema import CHECKPOINTS, SNAPSHOTS


def snapshot_of(result: dict[str, Any]) -> dict[str, Any]:
    return dict(normalise("task-x", result, T0, "req-1").snapshot)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("99%", 99.0),
        ("16.56%", 16.56),
        ("43.07", 43.07),
        (" 7 % ", 7.0),
        (7, 7.0),
        (0.5, 0.5),
        ("abc", None),
        ("", None),
        (None, None),
        (True, None),
        ([1], None),
        (float("inf"), None),
        (10**400, None),  # valid JSON, too large for a double
    ],
    ids=lambda value: repr(value)[:12],
)
def test_as_number(value: Any, expected: float | None) -> None:
    assert as_number(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-30T09:41:54Z", datetime(2024, 1, 30, 9, 41, 54, tzinfo=timezone.utc)),
        ("2024-01-30 09:41:54", datetime(2024, 1, 30, 9, 41, 54, tzinfo=timezone.utc)),
        ("2024-01-30T17:41:54+08:00", datetime(2024, 1, 30, 9, 41, 54, tzinfo=timezone.utc)),
        ("0000-00-00T00:00:00Z", None),
        ("0000-00-00 00:00:00", None),
        ("", None),
        ("yesterday", None),
        (1706607714, None),
        ("0001-01-01T00:00:00+01:00", None),  # parses, but converting it to UTC overflows
    ],
)
def test_as_time(value: Any, expected: datetime | None) -> None:
    assert as_time(value) == expected


def test_normalise_done_task_with_date_spelling() -> None:
    row = normalise("task-done00000001", DONE, T0, "req-1")
    snap = row.snapshot
    assert snap["run_status"] == "Done"
    assert snap["job_name"] == "客服问答-1"
    assert snap["job_description"] is None  # empty string -> NULL
    assert snap["run_progress"] is None
    assert snap["create_time"] == datetime(2024, 1, 30, 9, 41, 54, tzinfo=timezone.utc)
    assert snap["finish_time"] == datetime(2024, 1, 30, 10, 12, tzinfo=timezone.utc)
    assert (snap["bleu_4"], snap["rouge_1"], snap["rouge_2"], snap["rouge_l"]) == (58.62, 68.1, 40.0, 61.25)
    assert {m["metric"]: m["value"] for m in snap["metrics"]} == {
        "BLEU-4": 58.62,
        "ROUGE-1": 68.1,
        "ROUGE-2": 40.0,
        "ROUGE-L": 61.25,
        "EDIT-DISTANCE": 43.07,
        "EMBEDDING-DISTANCE": 0.03,
    }
    assert snap["checkpoint_count"] == 2
    assert [p["step"] for p in row.checkpoints] == [128, 64]
    raw = json.loads(snap["raw"])
    assert "checkpointList" not in raw  # it lives in the checkpoints table
    assert raw["somethingNew"] == {"nested": [1, 2]}  # unknown fields are kept
    assert raw == {k: v for k, v in DONE.items() if k != "checkpointList"}


def test_time_spellings_are_equivalent() -> None:
    with_time = {k: v for k, v in DONE.items() if k not in ("createDate", "finishDate")}
    with_time |= {"createTime": DONE["createDate"], "finishTime": DONE["finishDate"]}
    assert snapshot_of(with_time)["create_time"] == snapshot_of(DONE)["create_time"]
    assert snapshot_of(with_time)["finish_time"] == snapshot_of(DONE)["finish_time"]


def test_normalise_running_and_failed() -> None:
    running = snapshot_of({"runStatus": "Running", "runProgress": "16.56%", "finishTime": "0000-00-00T00:00:00Z"})
    assert running["run_progress"] == 16.56
    assert running["finish_time"] is None
    failed = snapshot_of({"runStatus": "Failed", "errorCode": 500203, "errorMessage": "GPU out of memory"})
    assert (failed["error_code"], failed["error_message"]) == ("500203", "GPU out of memory")


WEIRD: list[tuple[str, Any]] = [
    ("runProgress", 99),
    ("runProgress", "abc"),
    ("runProgress", None),
    ("runProgress", True),
    ("runProgress", 10**400),
    ("runStatus", "Paused"),
    ("runStatus", 5),
    ("checkpointList", None),
    ("checkpointList", {"step": 1, "perplexity": 2.0}),
    ("checkpointList", ["step 64", "step 128"]),
    ("checkpointList", [{"step": "²"}, {"step": 2**70}, {"step": 64, "perplexity": "abc"}, None]),
    ("checkpointList", [{"step": 64, "perplexity": 10**400, "trainingLoss": [0.1]}]),
    ("metrics", {"BLEU-4": None, "ROUGE-1": "n/a", "ROUGE-L": [1], "EDIT-DISTANCE": 10**400}),
    ("metrics", "n/a"),
    ("createTime", 1706607714),
    ("createTime", "0001-01-01T00:00:00+01:00"),
    ("errorCode", True),
    ("errorCode", 1.5),
    ("jobName", "bad \ud800 text"),
    ("vdlLink", {"url": "x"}),
    ("brandNewField", {"nested": [1, None, "x"]}),
]


@pytest.mark.parametrize(("key", "value"), WEIRD, ids=[f"{k}={v!r}"[:40] for k, v in WEIRD])
def test_weird_values_become_null_and_raw_keeps_them(key: str, value: Any) -> None:
    result = {**DONE, "runStatus": "Running", key: value}
    row = normalise("task-x", result, T0, "req-1")
    # The rows fit the declared schemas, so the write cannot fail either.
    pa.Table.from_pylist([row.snapshot], schema=SNAPSHOTS)
    pa.Table.from_pylist([{"task_id": "t", **p, "observed_at": T0} for p in row.checkpoints], schema=CHECKPOINTS)
    assert json.loads(row.snapshot["raw"])[key] == value


def test_wrong_typed_values_become_null() -> None:
    snap = snapshot_of({"runStatus": "Paused", "runProgress": "abc", "metrics": {"BLEU-4": "n/a", "ROUGE-1": None}})
    assert snap["run_status"] == "Paused"  # unknown statuses are stored as they came
    assert snap["run_progress"] is None
    assert snap["bleu_4"] is None and snap["rouge_1"] is None
    assert {m["metric"] for m in snap["metrics"]} == {"BLEU-4", "ROUGE-1"}
    partly_bad = normalise("t", {"checkpointList": [{"step": 64, "perplexity": 1.5}, {"step": "x"}]}, T0, None)
    assert partly_bad.checkpoints == [{"step": 64, "perplexity": 1.5, "training_loss": None}]


def test_state_hash_follows_the_normalised_state() -> None:
    base = snapshot_of(DONE)["state_hash"]
    assert snapshot_of(dict(reversed(DONE.items())))["state_hash"] == base  # key order is not a change
    # Checkpoint values are the checkpoints table's to keep; only their summary (final, best) is part of the state.
    step_128, step_64 = DONE["checkpointList"]
    inner = [step_128, {**step_64, "trainingLoss": 0.3}]  # final and best stay those of step 128
    assert snapshot_of({**DONE, "checkpointList": inner})["state_hash"] == base
    final = [{**step_128, "trainingLoss": 0.18}, step_64]
    assert snapshot_of({**DONE, "checkpointList": final})["state_hash"] != base
    assert snapshot_of({**DONE, "runStatus": "Running"})["state_hash"] != base
    assert snapshot_of({**DONE, "somethingNew": 2})["state_hash"] != base
    assert snapshot_of({**DONE, "checkpointList": DONE["checkpointList"][:1]})["state_hash"] != base


REGULAR = [{"step": 10 * k, "perplexity": 3.0 - k / 10, "trainingLoss": 1.0 - k / 100} for k in range(1, 6)]


@pytest.mark.parametrize(
    "entries",
    [
        REGULAR,
        [*REGULAR[:2], {"step": True, "perplexity": 1.0, "trainingLoss": 1.0}],  # a bool step
        [*REGULAR[:2], {"step": 40.0, "perplexity": 1.0, "trainingLoss": 1.0}],  # an integral float step
        [*REGULAR[:2], {"step": 40.5, "perplexity": 1.0, "trainingLoss": 1.0}],
        [*REGULAR[:2], {"step": "40", "perplexity": 1.0, "trainingLoss": 1.0}],
        [{"step": -(2**63), "perplexity": 1.0, "trainingLoss": 1.0}, *REGULAR],  # beyond what is stored
        [*REGULAR, {"step": 2**63, "perplexity": 1.0, "trainingLoss": 1.0}],
        [*REGULAR, REGULAR[1]],  # a step repeated, out of order
        [*REGULAR[:2], {"step": 20, "perplexity": 9.0, "trainingLoss": 9.0}],  # a step repeated in order
        [*REGULAR[:2], {"step": 30, "perplexity": 2, "trainingLoss": True}],  # an int and a bool value
        [*REGULAR[:2], {"step": 30, "perplexity": None, "trainingLoss": "0.5"}],
        [*REGULAR[:2], {"step": 30, "trainingLoss": 0.5}],  # a missing value
        [*REGULAR[:2], {"step": 30, "perplexity": float("nan"), "trainingLoss": float("inf")}],
        [*REGULAR[:2], {"step": 30, "perplexity": -0.0, "trainingLoss": 0.0}, {"step": 40, "perplexity": 0.0}],
        [*REGULAR[:2], [30, 1.0, 1.0]],  # not a dict
        [*REGULAR[:2], None],
    ],
)
def test_lists_read_in_bulk_normalise_as_read_one_checkpoint_at_a_time(entries: list[Any]) -> None:
    """normalise reads a regular list in bulk: whatever the list holds, the result is what the careful reading of
    one checkpoint at a time (parse_checkpoints, curve_summary) makes of it."""
    from ftlog.normalise import curve_summary, parse_checkpoints

    row = normalise("task-x", {"checkpointList": entries}, T0, None)
    expected, clean = parse_checkpoints(entries)
    assert [(p["step"], repr(p["perplexity"]), repr(p["training_loss"])) for p in row.checkpoints] == [
        (p["step"], repr(p["perplexity"]), repr(p["training_loss"])) for p in expected
    ]
    summary = curve_summary(expected)
    assert repr([row.snapshot[key] for key in summary]) == repr(list(summary.values()))  # type: ignore[literal-required]
    assert row.snapshot["checkpoint_count"] == len({p["step"] for p in expected})
    assert ("checkpointList" in json.loads(row.snapshot["raw"])) is not clean
