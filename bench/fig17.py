"""Figure 17: ``ftlog report`` at 10,000 tasks x 100 checkpoints, its peak memory and its time against 1,000 tasks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .measure import medians, peak_memory, timed
from .results import Row, megabytes, seconds, times
from .workload import Plan, build_history, make_plans

FULL_SIZES = (10_000, 1_000, 100, 10)  # large side, small side (tasks), checkpoints per task, collector rounds
SMOKE_SIZES = (20, 2, 5, 3)
PEAK_LIMIT_MB = 1500
TIME_LIMIT = 12
MAX_RUNS = 3  # reports of each side timed: a large one takes tens of seconds


def _dataset(folder: Path, plans: list[Plan], rounds: int, log: Callable[[str], None]) -> tuple[Path, float | None]:
    """The collector's dataset of ``plans`` in ``folder``; one already complete there (``--keep``) is reused.
    Returns the data folder and the seconds building it took (None when reused)."""
    data, done = folder / "data", folder / "complete.json"
    recipe = {"tasks": len(plans), "checkpoints": plans[0].checkpoints, "rounds": rounds}
    try:
        if json.loads(done.read_text(encoding="utf-8")) == recipe:
            log(f"  reusing {data}")
            return data, None
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    log(f"  building {len(plans):,} tasks x {plans[0].checkpoints} checkpoints over {rounds} collector rounds")
    took = timed(lambda: build_history(data, plans, rounds=rounds))
    done.write_text(json.dumps(recipe), encoding="utf-8")
    return data, took


def figure_17(sizes_name: str, work: Path, runs: int, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    from ftlog.report import write_report

    large, small, checkpoints, rounds = SMOKE_SIZES if sizes_name == "smoke" else FULL_SIZES
    runs = min(runs, MAX_RUNS)
    log(f"figure 17: report at {large:,} vs {small:,} tasks x {checkpoints} checkpoints")
    plans = make_plans(large, checkpoints)
    root = work / "fig17"
    big, built_big = _dataset(root / f"tasks-{large}", plans, rounds, log)
    little, built_little = _dataset(root / f"tasks-{small}", plans[:small], rounds, log)

    idle = peak_memory(["idle"])
    peak_big = peak_memory(["report", str(big), str(root / "memory-big")])
    peak_little = peak_memory(["report", str(little), str(root / "memory-small")])

    out_big, out_little = root / "report-big", root / "report-small"
    write_report(little, out_little)  # warm: fonts and templates load once per process
    t_big, t_little = medians([lambda: write_report(big, out_big), lambda: write_report(little, out_little)], runs)

    peak = peak_big["peak_mb"]
    rows = [
        Row(
            "17a",
            f"peak memory of ftlog report at {large:,} tasks x {checkpoints} checkpoints",
            megabytes(peak),
            f"{megabytes(peak_little['peak_mb'])} at {small:,} tasks",
            peak,
            megabytes(peak),
            f"<= {PEAK_LIMIT_MB:,} MB",
            PEAK_LIMIT_MB,
        )
    ]
    ratio, text = times(t_big, t_little)
    rows.append(
        Row(
            "17b",
            f"ftlog report at {large:,} tasks vs at {small:,} tasks ({checkpoints} checkpoints each)",
            seconds(t_big),
            seconds(t_little),
            ratio,
            text,
            f"<= {TIME_LIMIT}x its time",
            TIME_LIMIT,
        )
    )
    built = (
        "both built by an earlier run and kept with --keep"
        if built_big is None or built_little is None
        else f"building them took {built_big:.0f} s and {built_little:.0f} s"
    )
    note = (
        f"Figure 17: write_report (every section and figure of `ftlog report`) over a dataset of {large:,} tasks x "
        f"{checkpoints} checkpoints ({large * checkpoints:,} checkpoint rows) written by the real collector over "
        f"{rounds} rounds spread across 5 days, and over the first {small:,} tasks of the same plans with the same "
        f"history ({built}). 17a is the peak resident set (VmHWM) of a fresh interpreter that imports ftlog and "
        f"writes the report of the large dataset, imports included (the same at {small:,} tasks: "
        f"{megabytes(peak_little['peak_mb'])}; after the imports alone: {megabytes(idle['peak_mb'])}; that report "
        f"took {peak_big['seconds']:.1f} s in the fresh interpreter). 17b is the median wall time of {runs} reports "
        f"of each side, interleaved, in one process after one warm-up report of the small side."
    )
    return rows, [note]
