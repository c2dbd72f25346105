"""`ftlog status` from the present files (ftlog/quick.py) prints what the full path prints, byte for byte, loads
neither pandas nor pyarrow, and leaves every other case to the full path."""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import SECRET_AK, SECRET_SK

from ftlog import analysis, cli, light, quick, summary
from ftlog.client import Credentials, QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.redact import CONTROL
from ftlog.schema import TABLES
from ftlog.simulator import Simulator
from ftlog.store import Dataset

HEAVY = {"pandas", "pyarrow", "numpy"}
MARKER = "loaded modules:"
CLI = f"""
import atexit, runpy, sys
atexit.register(lambda: print({MARKER!r}, *sorted(sys.modules), file=sys.stderr))
sys.argv = ["ftlog", *sys.argv[1:]]
runpy.run_module("ftlog", run_name="__main__", alter_sys=True)
"""


def test_the_constants_it_cannot_import_are_those_of_their_modules() -> None:
    assert tuple(TABLES) == quick.TABLES
    assert quick.SUMMARIZED == summary.SUMMARIZED
    assert "/".join(quick.PRESENT_DIR) == summary.PRESENT_DIR and quick.PRESENT_KEY.encode() == summary.PRESENT_KEY
    assert quick.RUNNING_KEPT == summary.RUNNING_KEPT
    dataset = Dataset("/data")
    names = (*summary.SUMMARIZED, *summary.MATERIALIZED)
    assert sorted(quick.PRESENT_FILES) == sorted(Path(summary.present_path(dataset, n)).stem for n in names)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tasks of every status, some Running with progress that moved between rounds, as a collector leaves them."""
    data = tmp_path_factory.mktemp("quick") / "data"
    credentials = Credentials(SECRET_AK, SECRET_SK)
    with (
        Simulator(seed=3, speed=600, jobs=3, tasks_per_job=4, credentials={SECRET_AK: SECRET_SK}) as sim,
        QianfanClient(credentials, base_url=sim.url, rps=1000) as client,
    ):
        for _ in range(3):
            collect_round(client, Dataset(data), Selection(all_jobs=True))
            time.sleep(1.5)
    return data


def full_output(data: Path, fmt: str, stall_after: timedelta) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.echo_frame(analysis.status(data, stall_after=stall_after), fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("stall_minutes", [30.0, 0.0])
def test_status_from_the_present_files_prints_what_the_full_path_prints(
    running: Path, fmt: str, stall_minutes: float
) -> None:
    rows = quick.status_rows(str(running), now=datetime.now(timezone.utc), stall_after=timedelta(minutes=30))
    assert rows is not None and any(row[5] == "Running" for row in rows)
    assert any(row[7] is not None for row in rows)  # some ETA
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert quick.print_status(str(running), fmt, timedelta(minutes=stall_minutes))
    assert out.getvalue() == full_output(running, fmt, timedelta(minutes=stall_minutes))


def test_ftlog_status_loads_neither_pandas_nor_pyarrow(running: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CLI, "status", "--data", str(running)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith(MARKER))
    modules = {name.split(".")[0] for name in line.removeprefix(MARKER).split()}
    assert "duckdb" in modules and not modules & HEAVY, sorted(modules & HEAVY)
    assert done.stdout == full_output(running, "table", timedelta(minutes=30))


def test_the_full_path_answers_whenever_the_present_files_cannot(running: Path, tmp_path: Path) -> None:
    now, stall = datetime.now(timezone.utc), timedelta(minutes=30)
    copy = tmp_path / "copy"
    shutil.copytree(running, copy, copy_function=shutil.copy)  # new times: the manifest names other files
    assert quick.status_rows(str(copy), now=now, stall_after=stall) is None
    assert quick.status_rows(f"s3://bucket/{copy.name}", now=now, stall_after=stall) is None
    assert quick.status_rows(str(tmp_path / "nothing"), now=now, stall_after=stall) is None

    damaged = tmp_path / "damaged"
    shutil.copytree(running, damaged, copy_function=shutil.copy2)  # the same times: the manifest holds
    assert quick.status_rows(str(damaged), now=now, stall_after=stall) is not None
    checkpoint = next((damaged / "checkpoints").rglob("*.parquet"))
    checkpoint.write_bytes(b"not parquet")  # a file every reader skips, with a warning
    assert quick.status_rows(str(damaged), now=now, stall_after=stall) is None


def random_rows(rng: random.Random, count: int) -> list[tuple[Any, ...]]:
    texts = ["task-1", "a,b", 'q"uote', "line\nbreak", "tab\there", "esc\x1b[31m", "ü中文😀", "", "x" * 60, "a/b\\",
             "\x7f\x85\u200e", " lead"]  # fmt: skip

    def value(kind: str) -> Any:
        if rng.random() < 0.15:
            return None
        if kind == quick.TEXT:
            return rng.choice(texts)
        if kind == quick.NUMBER:
            special = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0]
            exponent = rng.choice([0, 1, 2, -1, -5, -7, -16, 6, 7, 15, 17])
            return rng.choice(special) if rng.random() < 0.1 else rng.uniform(-1, 1) * 10.0**exponent
        if kind == quick.TIME:
            micro = rng.choice([0, rng.randint(0, 999) * 1000, rng.randint(0, 999_999)])
            return datetime(rng.choice([1, 2024, 9999]), 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micro)
        return rng.random() < 0.5

    return [tuple(value(quick.KINDS[name]) for name in light.STATUS_COLUMNS) for _ in range(count)]


def as_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    columns = {}
    for i, name in enumerate(light.STATUS_COLUMNS):
        values = [row[i] for row in rows]
        dtype = analysis._STATUS[name]
        columns[name] = pd.Series(pd.array(values, dtype=object)).astype(dtype)
    frame: pd.DataFrame = pd.DataFrame(columns)
    return frame


def test_rows_print_as_the_cli_prints_their_frame() -> None:
    rng = random.Random(14)
    for _ in range(150):
        rows = random_rows(rng, rng.choice([1, 2, 3, 6]))
        frame = as_frame(rows)
        escaped = CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", quick._json(rows))
        for fmt, text in (("table", quick._table(rows) + "\n"), ("csv", quick._csv(rows)), ("json", escaped + "\n")):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                cli.echo_frame(frame, fmt)
            assert text == out.getvalue(), (fmt, rows)
