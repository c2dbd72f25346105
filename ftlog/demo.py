"""``ftlog demo``: a simulated population collected until it finishes, then a report, in about a minute.

The simulator runs in a thread of this process on 127.0.0.1 with its published demo credentials; collection goes
through the real client, collector and Parquet store, exactly as against Qianfan.

>>> run_demo(data="data/demo", out="reports/demo")  # doctest: +SKIP
PosixPath('reports/demo/index.html')
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .client import Credentials, QianfanClient
from .collect import RoundResult, Selection, after_round, run_round, watch
from .errors import FtlogError
from .report import check_out_dir, write_report
from .simulator import Simulator
from .store import Dataset

DEFAULT_DATA = "data/demo"
DEFAULT_OUT = "reports/demo"
# Simulated runs last 8-40 minutes after up to 5 minutes in the queue: 50x replays the slowest in under a minute.
DEFAULT_SPEED = 50.0
DEFAULT_INTERVAL = 2.0
DEMO_RPS = 50.0
DEMO_CONCURRENCY = 8
MARKER = ".ftlog-demo"  # written into the demo's data folder: only a folder carrying it is ever deleted


def prepare_data_dir(data: str | Path) -> Path:
    """Make ``data`` an empty folder for the demo. An existing folder is removed only when it is empty or an
    earlier demo made it (it holds the marker file); anything else is refused, never deleted."""
    text = str(data)
    if "://" in text:
        raise FtlogError(f"the demo writes to a local folder, not {text}")
    path = Path(text)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FtlogError(f"{path} exists and is not a folder; choose another --data")
    if path.exists():
        if not (path / MARKER).is_file() and any(path.iterdir()):
            raise FtlogError(f"{path} holds data the demo did not write; choose another --data")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("written by ftlog demo; the next demo run replaces this folder\n", encoding="utf-8")
    return path


def round_line(number: int, result: RoundResult) -> str:
    """``round 3: 25 tasks (Waiting 4, Running 12, Done 9), 41 new checkpoints, 0 errors, 0.4s``."""
    counts = Counter(status or "unknown" for status in result.statuses.values())
    lifecycle = ["Waiting", "Running", "Done", "Failed", "Stopped"]
    order = [s for s in lifecycle if s in counts] + sorted(set(counts) - set(lifecycle))
    states = ", ".join(f"{status} {counts[status]}" for status in order)
    return (
        f"round {number}: {result.tasks} tasks ({states}), {result.new_checkpoints} new checkpoints, "
        f"{result.errors} errors, {result.seconds:.1f}s"
    )


def run_demo(
    *,
    data: str | Path = DEFAULT_DATA,
    out: str | Path = DEFAULT_OUT,
    seed: int = 1,
    speed: float = DEFAULT_SPEED,
    interval: float = DEFAULT_INTERVAL,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] = lambda line: None,
    force: bool = False,
) -> Path:
    """Simulate, collect every ``interval`` seconds until every task is Done, Failed or Stopped (or ``stop`` is
    set), write the report into ``out`` and return the path of its ``index.html``. ``force`` is
    :func:`~ftlog.report.write_report`'s: write into an ``out`` that holds files ftlog did not write."""
    check_out_dir(out, force=force)  # before the minute of collecting, not after it
    dataset = Dataset(prepare_data_dir(data))
    stop = stop or threading.Event()
    rounds = 0

    def on_round(result: RoundResult) -> None:
        nonlocal rounds
        rounds += 1
        progress(round_line(rounds, result))

    with Simulator(seed=seed, speed=speed) as sim:
        progress(f"simulator on {sim.url}: {len(sim.tasks)} tasks in {len(sim.jobs)} jobs, {speed:g}x real time")
        credentials = Credentials(sim.access_key, sim.secret_key)
        with QianfanClient(credentials, base_url=sim.url, rps=DEMO_RPS) as client:
            selection = Selection(all_jobs=True)

            def one_round() -> RoundResult:
                result = run_round(client, dataset, selection, concurrency=DEMO_CONCURRENCY, stop=stop)
                return after_round(dataset, result)  # compaction; the demo sends no notifications

            watch(
                one_round,
                interval=interval,
                until_done=True,
                stop=stop,
                on_round=on_round,
                on_error=lambda exc: progress(f"round failed: {exc}"),
            )
    return write_report(dataset, out, force=force)
