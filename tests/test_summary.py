"""Summaries of the past (ftlog/summary.py, ftlog/refresh.py): with them, every view and helper answers exactly as
over the whole history, while the views of the present read only the summary and the days after it; without a
usable one (none yet, a late write into a summarised day, a damaged file) they read the whole history."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from payloads import DONE
from test_portable import ALL, JOB, overlapping_rounds, serve

from ftlog import analysis, refresh
from ftlog.client import QianfanClient
from ftlog.collect import Selection, after_round, run_round
from ftlog.normalise import normalise
from ftlog.notify import Notifier, targets_from
from ftlog.refresh import refresh_summaries
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.summary import SUMMARY_DIR, present_path, read_manifest, read_present, recent_days, summary_path
from ftlog.views import VIEW_ORDER, connect

DAY1 = datetime(2024, 6, 3, 8, 0, tzinfo=timezone.utc)
NOW = DAY1 + timedelta(days=5)


def answers(data: Path) -> dict[str, Any]:
    """Every view, and what the helpers of the present make of them, as comparable values."""
    with connect(data) as con:
        found: dict[str, Any] = {name: sorted(map(repr, con.sql(f"SELECT * FROM {name}").fetchall()))
                                 for name in VIEW_ORDER}  # fmt: skip
        found["compare"] = repr(analysis.compare(con).to_dict("records"))
        found["status"] = repr(analysis.status(con, now=NOW).to_dict("records"))
        found["curves"] = repr(analysis.curves(con).to_dict("records"))
        found["since"] = con.sql("SELECT since FROM _current_since").fetchall()[0][0]
        found["written"] = (
            "present/tasks.parquet"
            in con.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'tasks'").fetchall()[0][0]
        )
    return found


def without_summary(data: Path, tmp_path: Path) -> dict[str, Any]:
    copy = tmp_path / "whole-history"
    shutil.copytree(data, copy)
    shutil.rmtree(copy / SUMMARY_DIR)
    return answers(copy)


def assert_exact(data: Path, tmp_path: Path, *, summarised: bool, present: bool = False) -> None:
    """The views and helpers answer over ``data`` as over its whole history; with ``summarised``, through a
    summary of the closed days, with ``present`` through the present files as they are."""
    ours, whole = answers(data), without_summary(data, tmp_path / "x")
    shutil.rmtree(tmp_path / "x")
    for name in whole:
        if name not in ("since", "written"):
            assert ours[name] == whole[name], name
    assert whole["since"] is None and not whole["written"]
    assert (ours["since"] is not None) == summarised and ours["written"] == present


@pytest.fixture
def days(sim: Simulator, client: QianfanClient, data: Path) -> Path:
    """Four days of two overlapping collectors; the first round of each later day repeats the state the previous
    day ended with (a stored repeat across the day boundary), and every day ends compacted and summarised, as a
    collector's rounds leave it."""
    dataset = Dataset(data)
    notifier = Notifier(targets_from(commands=["true"]), attempts=1, backoff=0.01)
    for day, versions in enumerate([range(1, 3), range(2, 4), range(3, 5), range(4, 7)]):
        start = DAY1 + timedelta(days=day)
        overlapping_rounds(sim, client, dataset, start, versions, notifier)
        result = run_round(client, dataset, Selection(task_ids=ALL), now=lambda at=start: at + timedelta(hours=1))
        after_round(dataset, result, now=lambda at=start: at + timedelta(hours=1))
    return data


def test_summaries_answer_exactly_as_the_whole_history(
    days: Path, tmp_path: Path, sim: Simulator, client: QianfanClient
) -> None:
    dataset = Dataset(days)
    manifest = read_manifest(dataset, "snapshots")
    # Every day before the last two is summarised: a window of up to a day is read whole.
    assert manifest is not None and manifest.before == (DAY1 + timedelta(days=2)).date().isoformat()
    assert len(manifest.files) == 2 and read_manifest(dataset, "polls") is not None
    assert_exact(days, tmp_path, summarised=True, present=True)

    # Extended day by day, the summary holds what one built from every closed day at once holds.
    extended = pq.read_table(summary_path(dataset, "snapshots")).sort_by([("task_id", "ascending"),
                                                                          ("observed_at", "ascending")])  # fmt: skip
    shutil.rmtree(days / SUMMARY_DIR)
    refresh_summaries(dataset, DAY1 + timedelta(days=3, hours=2))
    rebuilt = pq.read_table(summary_path(dataset, "snapshots")).sort_by([("task_id", "ascending"),
                                                                         ("observed_at", "ascending")])  # fmt: skip
    assert rebuilt.equals(extended)

    # A round no refresh followed (another collector's, still running): its files are read with the summary of the
    # closed days, since the present files no longer cover every file.
    later = DAY1 + timedelta(days=3, hours=3)
    run_round(client, dataset, Selection(task_ids=ALL), now=lambda: later)
    assert read_present(dataset) is None and recent_days(dataset, "snapshots") is not None
    assert_exact(days, tmp_path, summarised=True)
    refresh_summaries(dataset, later)
    assert_exact(days, tmp_path, summarised=True, present=True)


def test_progress_of_running_tasks_reads_alike(
    sim: Simulator, client: QianfanClient, data: Path, tmp_path: Path
) -> None:
    """Tasks still Running, whose progress went up, back to a value it had on the first day, and then stayed there
    for days; then, on a later day, three changes within an hour: their ETA, rate, progress_since and stall read
    the same through the summaries (for a window within the last day) as over the whole history (for a longer
    window, which the summaries cannot serve)."""
    dataset = Dataset(data)
    notifier = Notifier(targets_from(commands=["true"]), attempts=1, backoff=0.01)

    def collect(day: int, versions: tuple[int, ...]) -> None:
        start = DAY1 + timedelta(days=day)
        overlapping_rounds(sim, client, dataset, start, versions, notifier)
        later = start + timedelta(hours=1)
        after_round(dataset, run_round(client, dataset, Selection(task_ids=ALL), now=lambda: later), now=lambda: later)

    def etas_alike(now: datetime) -> pd.DataFrame:
        assert read_present(dataset) is not None
        copy = tmp_path / f"whole-history-{now:%d%H%M}"
        shutil.copytree(data, copy)
        shutil.rmtree(copy / SUMMARY_DIR)
        for window in (timedelta(hours=1), timedelta(days=3)):
            ours, whole = (
                analysis.eta(d, now=now, window=window, stall_after=timedelta(hours=30)) for d in (data, copy)
            )
            assert len(ours) == len(ALL)
            assert repr(ours.to_dict("records")) == repr(whole.to_dict("records")), window
        assert repr(analysis.status(data, now=now).to_dict("records")) == repr(
            analysis.status(copy, now=now).to_dict("records")
        )
        return analysis.eta(data, now=now)

    for day, versions in enumerate([(2, 3), (2,), (2,), (2,), (2,)]):
        collect(day, versions)
    stalled = etas_alike(DAY1 + timedelta(days=4, hours=2))
    assert stalled["stalled"].all() and (stalled["progress_since"] >= DAY1 + timedelta(days=1)).all()
    collect(5, (1, 2, 3))  # 18%, 36%, 54% within three minutes
    moving = etas_alike(DAY1 + timedelta(days=5, minutes=30))
    assert not moving["stalled"].any() and (moving["rate_per_hour"] > 0).all()


def test_a_late_write_into_a_summarised_day_is_read_until_the_summary_covers_it(days: Path, tmp_path: Path) -> None:
    """A collector whose round straddled midnight writes into a day already summarised (here a state no other row
    has, and a poll): readers read the whole history (the summary no longer covers the day's files) and answer
    with the late rows; the next refresh covers them again."""
    dataset = Dataset(days)
    late = (DAY1 + timedelta(days=1)).replace(hour=23, minute=59)
    answer = {**DONE, "taskId": ALL[0], "jobId": JOB, "runStatus": "Running", "runProgress": "77%"}
    dataset.append("snapshots", [normalise(ALL[0], answer, late, "req-late").snapshot], late)
    dataset.append("polls", [{"poll_id": "poll-late", "task_id": ALL[0], "polled_at": late, "outcome": "changed",
                              "http_status": 200}], late)  # fmt: skip
    assert recent_days(dataset, "snapshots") is None and recent_days(dataset, "polls") is None
    assert_exact(days, tmp_path, summarised=False)
    refresh_summaries(dataset, DAY1 + timedelta(days=3, hours=2))
    assert recent_days(dataset, "snapshots") is not None
    assert_exact(days, tmp_path, summarised=True, present=True)


@pytest.mark.parametrize("damage", [b"", b"PAR1 not parquet", None], ids=["empty", "garbage", "foreign"])
@pytest.mark.parametrize("which", ["summary", "present", "both"])
def test_a_damaged_summary_is_not_used_and_is_rebuilt(
    days: Path, tmp_path: Path, damage: bytes | None, which: str
) -> None:
    """A summary of the closed days or a present file that is empty, not Parquet, or of another schema: readers use
    what is left (the present files need no summary to be read, the summary no present file), else read the whole
    history; the next refresh writes them anew."""
    dataset = Dataset(days)
    paths = {"summary": [summary_path(dataset, "snapshots")], "present": [present_path(dataset, "tasks")]}
    paths["both"] = paths["summary"] + paths["present"]
    for path in map(Path, paths[which]):
        if damage is None:  # a Parquet file of another schema under the summary's name
            pq.write_table(pq.read_table(next((days / "polls").glob("*/*.parquet"))), path)
        else:
            path.write_bytes(damage)
    assert (read_manifest(dataset, "snapshots") is None) == (which != "present")
    assert (read_present(dataset) is None) == (which != "summary")
    assert_exact(days, tmp_path, summarised=which != "both", present=which == "summary")
    refresh_summaries(dataset, DAY1 + timedelta(days=3, hours=2))
    assert read_manifest(dataset, "snapshots") is not None and read_present(dataset) is not None
    assert_exact(days, tmp_path, summarised=True, present=True)


def present_rows(data: Path) -> dict[str, pa.Table]:
    """The rows of each present file, in one order, with the manifest they carry."""
    keys = [("task_id", "ascending"), ("observed_at", "ascending"), ("state_hash", "ascending")]
    found = {}
    for path in sorted((data / SUMMARY_DIR / "present").glob("*.parquet")):
        table = pq.read_table(path)
        found[path.name] = table.sort_by([key for key in keys if key[0] in table.column_names])
    return found


def test_the_present_files_are_extended_by_each_round(
    sim: Simulator, client: QianfanClient, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round after round within a day, two collectors' among them, the present files are extended by the files
    written since alone, and hold what they would hold rebuilt over the summary of the closed days and the days
    after it. Rows of an earlier moment than they cover (a collector that stored late), a compaction and a new day
    have them rebuilt instead. Either way every view answers as over the whole history."""
    dataset = Dataset(data)
    rebuilds: list[Dataset] = []  # of the present files, by refresh_summaries
    rebuild = refresh._rebuilt

    def counted(con: Any, at: Dataset, files: Any) -> Any:
        rebuilds.append(at)
        return rebuild(con, at, files)

    monkeypatch.setattr(refresh, "_rebuilt", counted)
    notifier = Notifier(targets_from(commands=["true"]), attempts=1, backoff=0.01)

    def collect(at: datetime, version: int) -> None:
        serve(sim, version)
        after_round(dataset, run_round(client, dataset, Selection(task_ids=ALL), now=lambda: at), now=lambda: at)

    def as_rebuilt(at: datetime) -> None:
        copy = tmp_path / "rebuilt"
        shutil.copytree(data, copy)
        shutil.rmtree(copy / SUMMARY_DIR / "present")
        refresh_summaries(Dataset(copy), at)
        assert present_rows(data) == present_rows(copy)
        shutil.rmtree(copy)
        rebuilds.pop()

    for day, version in enumerate((1, 2, 3)):
        collect(DAY1 + timedelta(days=day), version)
    start, rebuilt = DAY1 + timedelta(days=3), len(rebuilds)
    for k, version in enumerate((3, 4, 5)):
        at = start + timedelta(hours=k)
        overlapping_rounds(sim, client, dataset, at, range(version, version + 1), notifier)
        collect(at + timedelta(minutes=30), version)
        assert len(rebuilds) == rebuilt
        as_rebuilt(at + timedelta(minutes=30))
    assert_exact(data, tmp_path, summarised=True, present=True)

    late = start + timedelta(hours=2)  # before the latest stored row: extending would put it after
    answer = {**DONE, "taskId": ALL[0], "jobId": JOB, "runStatus": "Running", "runProgress": "77%"}
    dataset.append("snapshots", [normalise(ALL[0], answer, late, "req-late").snapshot], late)
    refresh_summaries(dataset, start + timedelta(hours=3))
    assert len(rebuilds) == rebuilt + 1 and read_present(dataset) is not None
    as_rebuilt(start + timedelta(hours=3))
    assert_exact(data, tmp_path, summarised=True, present=True)

    later = start + timedelta(days=1)
    collect(later, 5)  # compacts the day before: its files are others now
    assert len(rebuilds) == rebuilt + 2
    collect(later + timedelta(hours=1), 6)
    assert len(rebuilds) == rebuilt + 2
    as_rebuilt(later + timedelta(hours=1))
    assert_exact(data, tmp_path, summarised=True, present=True)
