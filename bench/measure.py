"""Timing, peak memory and request-rate measurements shared by the figures."""

from __future__ import annotations

import bisect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def medians(fns: Sequence[Callable[[], Any]], runs: int) -> list[float]:
    """Median seconds of each callable over ``runs`` runs, interleaved (a, b, a, b, ...) so that drift in the
    machine's speed falls on every side alike."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, times in zip(fns, samples, strict=True):
            times.append(timed(fn))
    return [statistics.median(times) for times in samples]


def max_per_window(moments: Sequence[float], window: float = 1.0) -> int:
    """The most events in any half-open interval ``[t, t + window)``: a sliding window, not fixed buckets."""
    ordered = sorted(moments)
    return max((bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0)


def peak_memory(args: Sequence[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run ``python -m bench.child ARGS`` in a fresh interpreter; return its JSON report (``peak_mb``: VmHWM, the
    peak resident set of that process, measured inside it)."""
    root = str(Path(__file__).resolve().parent.parent)  # so the child imports this bench package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.child {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def vm_hwm_mb() -> float:
    """Peak resident set size of this process in MB (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**2


def vm_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
