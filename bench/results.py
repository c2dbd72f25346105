"""The results table: rows, targets, the printed table and ``RESULTS.md``."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@dataclass
class Row:
    """One figure. ``ratio`` is compared with ``limit``: at most it when ``at_most``, else at least it."""

    key: str
    title: str
    measured: str
    baseline: str
    ratio: float | None
    ratio_text: str
    target: str
    limit: float | None = None
    at_most: bool = True
    met: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.met is None and self.ratio is not None and self.limit is not None:
            self.met = self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else "met" if self.met else "MISSED"


def seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def megabytes(value: float) -> str:
    return f"{value:.1f} MB"


def speedup(baseline: float, measured: float) -> tuple[float, str]:
    ratio = baseline / measured
    return ratio, f"{ratio:.0f}x faster" if ratio >= 10 else f"{ratio:.1f}x faster"


def times(measured: float, baseline: float) -> tuple[float, str]:
    ratio = measured / baseline
    return ratio, f"{ratio:.2f}x"


HEADER = ["#", "figure", "measured", "baseline", "ratio", "target", "result"]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for row in rows:
        cells = [row.key, row.title, row.measured, row.baseline, row.ratio_text, row.target, row.verdict]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def plain(rows: list[Row]) -> str:
    """A fixed-width table for the terminal."""
    cells = [HEADER] + [
        [row.key, row.title, row.measured, row.baseline, row.ratio_text, row.target, row.verdict] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> list[tuple[str, str]]:
    memory = "unknown"
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages * size / 1024**3:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        ("platform", platform.platform()),
        ("cpu", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", memory),
        ("python", sys.version.split()[0]),
        *((name, _version(name)) for name in ("ftlog", "duckdb", "pyarrow", "pandas", "matplotlib", "mlflow")),
    ]


def document(rows: list[Row], notes: list[str], *, mode: str, elapsed: float) -> str:
    """``RESULTS.md``: what ran where, the table, and what each figure means (including why a target is missed)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = "\n".join(f"| {key} | {value} |" for key, value in machine())
    met = sum(1 for row in rows if row.met)
    judged = sum(1 for row in rows if row.met is not None)
    return f"""# ftlog benchmark results

Written by `make bench` (`python -m bench{" --smoke" if mode == "smoke" else ""}`) on {now}; the run took \
{elapsed / 60:.1f} minutes. Every time is the median of the runs stated in the notes, taken in the same run as its
baseline (measured and baseline runs interleaved), so the ratios hold on a noisy machine where absolute times do not.
{met} of {judged} targets met.

| machine | |
|---|---|
{facts}

{markdown(rows)}

## Notes

{chr(10).join(f"- {note}" for note in notes)}
"""
