"""Summaries of the past, so that reads of the present never scan the whole history.

The latest state of a task (the ``tasks`` and ``metrics`` views, a curve's attributes, ``compare``) is a row of the
snapshots, and its last poll a row of the polls, anywhere in months of history. A summary holds, for the closed
days before a day ``before``, the few rows per task that can stand for its present (see ``refresh.py``), in
``DATA/_summary/<table>.parquet``; readers take those rows plus the rows of the days from ``before`` on. A row's
partition is the UTC date of its time, so every row of those days is later than every summarised one: the summary
and the recent rows together answer exactly as the whole history does.

A summary is only a cache. Its manifest names every data file of the days it covers; a reader uses it only while
those days hold exactly those files (a late write, a compaction or a repair since changes them), and reads the
whole history otherwise, as it would with no summary at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import SNAPSHOTS, TS
from .store import Dataset

log = logging.getLogger(__name__)

SUMMARY_DIR = "_summary"  # hidden from readers of the tables by the "_"
# How long before its latest snapshot a summary keeps every change of a Running task's progress (analysis.eta reads
# a window of them).
RUNNING_KEPT = timedelta(days=1)
MANIFEST_KEY = b"ftlog.summary"
# The rows each summary holds, per task: for snapshots, the stored rows that can stand for its present (``in_view``:
# a row of the snapshots view, a change of state) and the state_hash of its last row (``last_hash``, which the first
# later row is compared with); for polls, the time of its last poll.
SUMMARIZED = ("snapshots", "polls")
SCHEMAS = {
    "snapshots": pa.schema([*SNAPSHOTS, ("in_view", pa.bool_()), ("last_hash", pa.string())]),
    "polls": pa.schema([("task_id", pa.string()), ("last_polled_at", TS)]),
}


@dataclass(frozen=True)
class Manifest:
    """What a summary covers: every data file (see :func:`listed_files`, per day) of the days before ``before``."""

    before: str  # YYYY-MM-DD
    files: dict[str, list[str]]

    def to_json(self) -> bytes:
        return json.dumps({"before": self.before, "files": self.files}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes) -> Manifest:
        found = json.loads(text)
        files = found["files"]
        if not isinstance(found["before"], str) or not isinstance(files, dict):
            raise ValueError("not a summary manifest")
        return cls(found["before"], {str(day): sorted(map(str, names)) for day, names in files.items()})


def summary_path(dataset: Dataset, name: str) -> str:
    return dataset.path(SUMMARY_DIR, f"{name}.parquet")


def read_manifest(dataset: Dataset, name: str) -> Manifest | None:
    """The manifest of table ``name``'s summary; None when there is none, or it does not read as one."""
    try:
        schema = pq.read_schema(summary_path(dataset, name), filesystem=dataset.fs)
        if schema.remove_metadata() != SCHEMAS[name]:
            raise ValueError("another schema")
        return Manifest.from_json((schema.metadata or {})[MANIFEST_KEY])
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError) as exc:
        log.debug("summary of %s not used: %s", name, exc)
        return None


def closed_files(partitions: dict[str, list[str]], before: str) -> dict[str, list[str]]:
    """The file names of each day before ``before``, from ``{day: names}``."""
    return {day: sorted(names) for day, names in partitions.items() if day < before}


def recent_days(dataset: Dataset, name: str) -> tuple[Manifest, list[str]] | None:
    """When table ``name`` has a summary that covers its files now: the manifest, and the days from its ``before``
    on that hold files (for the reader to read whole); None otherwise."""
    manifest = read_manifest(dataset, name)
    if manifest is None:
        return None
    partitions = listed_files(dataset, name)
    if closed_files(partitions, manifest.before) != manifest.files:
        return None
    return manifest, sorted(day for day in partitions if day >= manifest.before)


# -- the present: the same rows over every file, and the views of the present written out ------------------------
# Written after each round's summary: the summary rows over every file then stored (``SUMMARIZED``), and the
# views that read them (``MATERIALIZED``), each carrying the same manifest. While the tables hold exactly the files
# it names, readers take the views of the present from these files as they are, reading no history at all. A round
# extends them by the files written since, as the summary of the closed days is extended by the days closed since,
# while every file they name is still there and the new snapshots are all later (see refresh.py).
PRESENT_DIR = f"{SUMMARY_DIR}/present"
PRESENT_KEY = b"ftlog.present"
MATERIALIZED = ("tasks", "reported_metrics", "_latest_states", "_status")


@dataclass(frozen=True)
class Present:
    """What the present files cover: every data file of the summarised tables, by day, when they were written, and
    the time of their latest snapshot."""

    files: dict[str, dict[str, list[str]]]
    latest: str  # ISO time

    def to_json(self) -> bytes:
        return json.dumps({"files": self.files, "latest": self.latest}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes) -> Present:
        found = json.loads(text)
        files = {str(name): {str(day): list(names) for day, names in days.items()}
                 for name, days in found["files"].items()}  # fmt: skip
        return cls(files, str(found["latest"]))


def present_path(dataset: Dataset, name: str) -> str:
    return dataset.path(PRESENT_DIR, f"{name.lstrip('_')}.parquet")


def listed_files(dataset: Dataset, name: str) -> dict[str, list[str]]:
    """The data files of table ``name`` by day, as a manifest names them: name, size and time of last change, so
    that a file written again under its name (never by ftlog, whose files are immutable) is another file."""
    return {
        day: sorted(f"{info.base_name}:{info.size}:{info.mtime_ns}" for info in infos)
        for day, infos in dataset.partitions(name).items()
    }


def read_present(dataset: Dataset) -> Present | None:
    """The present files' manifest, when every one of them carries it, the summary rows have their schema, and the
    tables hold exactly the files it names; None otherwise."""
    found = set()
    try:
        for name in (*SUMMARIZED, *MATERIALIZED):
            schema = pq.read_schema(present_path(dataset, name), filesystem=dataset.fs)
            if name in SCHEMAS and schema.remove_metadata() != SCHEMAS[name]:
                return None
            found.add((schema.metadata or {}).get(PRESENT_KEY))
    except (OSError, pa.ArrowException, ValueError) as exc:
        log.debug("present files not used: %s", exc)
        return None
    text = found.pop() if len(found) == 1 else None
    present = present_manifest(text)
    if present is None:
        return None
    if any(present.files.get(name) != listed_files(dataset, name) for name in SUMMARIZED):
        return None
    return present


def present_manifest(text: bytes | None) -> Present | None:
    """The present files' manifest from the metadata ``text`` of one of them; None when it does not read as one."""
    if text is None:
        return None
    try:
        return Present.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
