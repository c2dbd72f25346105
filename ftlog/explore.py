"""The data behind the interactive report and ``ftlog serve``: one JSON document, columnar and compact.

The page (``templates/explore.js`` over the vendored uPlot) draws everything from this document, whether it is
embedded in a report file or fetched from ``ftlog serve``. Numbers stay numbers; a value that is not finite is
``null``; times are milliseconds since the epoch (UTC). Curves are flat arrays in task order with each task's
start in ``offsets``, so 1,000 tasks x 500 checkpoints stay a file people can mail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import duckdb
import jinja2
import numpy as np
import pyarrow as pa
from markupsafe import Markup

from . import __version__, analysis
from .schema import TERMINAL_STATUSES
from .views import fetch

SIGNIFICANT_DIGITS = 6  # of a loss or perplexity in the page: beyond what a chart or a tooltip can show
RUN_COLUMNS = (
    "task_id", "job_id", "job_name", "model", "train_mode", "parameter_scale", "run_status", "run_progress",
    "bleu_4", "rouge_1", "rouge_2", "rouge_l", "error_code", "error_message",
)  # fmt: skip
TIME_COLUMNS = ("first_seen_at", "observed_at", "last_polled_at")
ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "explore.js", "explore.css")


def payload(
    con: duckdb.DuckDBPyConnection,
    *,
    tasks: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    by: Sequence[str] = ("model", "train_mode", "parameter_scale"),
    now: datetime | None = None,
    location: str = "",
) -> dict[str, Any]:
    """Everything the page shows for the tasks selected (all by default), read through ``con``."""
    moment = now or datetime.now(timezone.utc)
    where, params = analysis._task_filter(tasks, jobs)
    times = ", ".join(f"epoch_ms(t.{c}) AS {c}" for c in TIME_COLUMNS)
    runs = fetch(
        con,
        f"SELECT {', '.join(f't.{c}' for c in RUN_COLUMNS)}, {times} FROM tasks t WHERE {where} ORDER BY t.task_id",
        params,
    )
    # Each checkpoint carries its task's position in ``runs``, so the rows sort by integers and need no text.
    points = fetch(
        con,
        f"""SELECT a.at, c.step, c.training_loss, c.perplexity
            FROM checkpoints c JOIN (
                SELECT task_id, (row_number() OVER (ORDER BY task_id) - 1)::INTEGER AS at FROM tasks t WHERE {where}
            ) a USING (task_id)
            ORDER BY a.at, c.step""",
        params,
    )
    at = points.column("at").to_numpy()
    offsets = np.searchsorted(at, np.arange(runs.num_rows + 1)).tolist()
    comparison = analysis.compare(con, by, stats=("mean", "std", "count"), tasks=tasks, jobs=jobs)
    stretches = analysis.timeline(con, now=moment, tasks=tasks, jobs=jobs)
    position = {task_id: i for i, task_id in enumerate(runs.column("task_id").to_pylist())}
    seen = [max((v for v in pair if v is not None), default=None) for pair in zip(
        runs.column("observed_at").to_pylist(), runs.column("last_polled_at").to_pylist(), strict=True)]  # fmt: skip
    return {
        "version": __version__,
        "location": location,
        "generated": _ms(moment),
        "updated": max((v for v in seen if v is not None), default=None),
        "by": list(by),
        "terminal": list(TERMINAL_STATUSES),
        "runs": {name: _values(runs.column(name)) for name in runs.column_names},
        "curves": {
            "offsets": offsets,
            "step": _values(points.column("step")),
            "loss": _values(points.column("training_loss")),
            "perplexity": _values(points.column("perplexity")),
        },
        "compare": {
            name: _values(pa.array(comparison[name].astype(object).where(comparison[name].notna(), None)))
            for name in comparison.columns
        },
        "timeline": {
            "task": [position.get(t, -1) for t in stretches["task_id"]],
            "status": [None if s is None or s != s else str(s) for s in stretches["status"].astype(object)],
            "start": [_ms(v) for v in stretches["entered_at"]],
            "end": [_ms(v) for v in stretches["left_at"]],
        },
    }


def _ms(value: Any) -> int | None:
    """A time as milliseconds since the epoch; None for a missing one."""
    if value is None or value != value:  # None, NaT
        return None
    return round(float(value.timestamp()) * 1000)


def _values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column as a JSON-ready list: floats cut to SIGNIFICANT_DIGITS, NaN and infinities as None."""
    if pa.types.is_floating(column.type):
        numbers = column.to_numpy(zero_copy_only=False).astype(np.float64)
        rounded: list[float] = _rounded(numbers).tolist()
        return [v if math.isfinite(v) else None for v in rounded]
    found: list[Any] = column.to_pylist()
    return found


def _rounded(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to SIGNIFICANT_DIGITS. Dividing by an exact power of ten (or multiplying by one) gives the
    double nearest to the short decimal, which is what ``repr`` then prints: 0.123457, not 0.12345678901234."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        decimals = np.where(np.isfinite(magnitude), SIGNIFICANT_DIGITS - 1 - magnitude, 0).astype(np.int64)
        decimals = np.clip(decimals, -300, 300)  # 10.0**decimals stays finite; tinier values keep fewer digits
        out = values.copy()
        up = decimals >= 0
        scale = 10.0 ** decimals[up].astype(np.float64)
        out[up] = np.round(values[up] * scale) / scale
        scale = 10.0 ** (-decimals[~up]).astype(np.float64)
        out[~up] = np.round(values[~up] / scale) * scale
        # Where the scaling over- or underflows, the value as it was (tiny or huge numbers are rare and exact).
        broken = ~np.isfinite(out) & np.isfinite(values)
        out[broken] = values[broken]
    return np.asarray(out, dtype=np.float64)


def to_script_json(document: Any) -> str:
    """``document`` as JSON that can sit inside an HTML ``<script>`` element: ASCII only, and no ``<``, ``>`` or
    ``&`` that could close the element or start a comment, whatever the job names hold."""
    text = json.dumps(document, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def asset(name: str) -> str:
    """The text of one of the page's files (the vendored uPlot, the page's script and style), checked to be safe to
    inline: nothing in it may end its ``<script>`` or ``<style>`` element early."""
    if name not in ASSETS:
        raise ValueError(name)
    text = resources.files("ftlog").joinpath("static").joinpath(name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"{name} cannot be inlined")
    return text


def page_parts(document: dict[str, Any] | None, *, live: bool = False, poll_seconds: float = 2.0) -> dict[str, Any]:
    """What the templates' explore parts take: the inlined files, the page's settings and, for a report, its
    document. Marked safe for the template engine because each was made safe for its element above (HTML escaping
    would corrupt JSON and JavaScript, which a ``<script>`` element does not unescape)."""
    return {
        "assets": {
            "uplot": Markup(asset("uPlot.iife.min.js")),  # noqa: S704 (checked by asset())
            "js": Markup(asset("explore.js")),  # noqa: S704
            "css": Markup(asset("uPlot.min.css") + "\n" + asset("explore.css")),  # noqa: S704
        },
        "config": Markup(to_script_json({"live": live, "poll_ms": round(poll_seconds * 1000)})),  # noqa: S704
        "data": None if document is None else Markup(to_script_json(document)),  # noqa: S704
        "live": live,
    }


def environment() -> jinja2.Environment:
    """The template engine of the report and the live page. ``autoescape`` for every template: names and messages
    come from the API and may hold markup."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ftlog", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
