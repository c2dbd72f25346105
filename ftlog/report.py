"""The HTML report: one self-contained ``index.html`` (figures embedded as data: URIs) plus the PNG figures.

Everything shown comes from the helpers in :mod:`ftlog.analysis` over one connection, and every value from the
API is escaped by the template engine, so a job name or error message can never inject markup.

>>> write_report("data", "reports", ema=0.3)  # doctest: +SKIP
PosixPath('reports/index.html')
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from . import __version__, analysis, explore, plots
from .errors import FtlogError
from .schema import TERMINAL_STATUSES
from .store import Dataset

DEFAULT_BY = ("model", "train_mode", "parameter_scale")
COLUMN_TITLES = {
    "model": "Model",
    "train_mode": "Train mode",
    "parameter_scale": "Parameter scale",
    "job_id": "Job ID",
    "job_name": "Job",
    "run_status": "Status",
}
MISSING = "—"
FIGURE_FILES = ("curves_step.png", "curves_fraction.png", "metrics.png", "timeline.png")
REPORT_FILES = ("index.html", *FIGURE_FILES)
MANIFEST = ".ftlog-report.json"  # the files ftlog wrote into a report folder: the only ones it replaces or removes
_OWN_NAMES = "|".join(map(re.escape, (*REPORT_FILES, MANIFEST)))
_TEMPORARY = re.compile(rf"\.(?:{_OWN_NAMES})\.[0-9a-f]{{8}}\.tmp")  # plots.write_atomic's temporary names
MAX_DURATION = (datetime.max - datetime.min).total_seconds()  # years 1 to 9999, as analysis.finish_time bounds ETAs


@dataclass
class Cell:
    text: str
    numeric: bool = False
    css: str = ""
    badge: str = ""  # CSS class of a status badge around the text


@dataclass
class Table:
    columns: list[tuple[str, bool]]  # (title, numeric)
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class EmbeddedFigure:
    file: str
    title: str
    caption: str
    uri: str
    width: int  # CSS pixels: half the PNG's pixels, so it stays sharp on high-DPI screens
    height: int


# -- formatting for humans -------------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def number(value: Any, decimals: int = 2) -> str:
    """``1234.5678`` -> ``1,234.57``; missing or non-finite values read as a dash."""
    if _missing(value) or not math.isfinite(float(value)):
        return MISSING
    return f"{float(value):,.{decimals}f}"


def integer(value: Any) -> str:
    return MISSING if _missing(value) else f"{int(value):,}"


def mean_std(mean: Any, std: Any, decimals: int) -> str:
    if _missing(mean):
        return MISSING
    return number(mean, decimals) + ("" if _missing(std) else f" ± {number(std, decimals)}")


def when(value: Any) -> str:
    """A UTC time to the second, e.g. ``2025-03-01 14:05:09``."""
    if _missing(value):
        return MISSING
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: Any) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``; negative as ``-12 min`` (a clock set back); a dash for a
    missing, non-finite or absurd value (beyond what a timestamp difference can hold)."""
    if _missing(seconds) or not math.isfinite(float(seconds)) or abs(float(seconds)) > MAX_DURATION:
        return MISSING
    if float(seconds) < 0:
        return f"-{duration(-float(seconds))}"
    total = round(float(seconds))
    if total < 60:
        return f"{total} s"
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 3600:
        return f"{minutes} min"
    if total < 86400:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"


def percent(value: Any) -> str:
    return MISSING if _missing(value) else f"{float(value):g}%"


def text(value: Any) -> str:
    return MISSING if _missing(value) or value == "" else str(value)


# -- building blocks ---------------------------------------------------------------------------------------------
def _location(source: analysis.Source) -> str:
    if isinstance(source, duckdb.DuckDBPyConnection):
        return "an open DuckDB connection"
    return (source if isinstance(source, Dataset) else Dataset(source)).display


def _figure(out_dir: Path, file: str, title: str, caption: str, figure: Any) -> EmbeddedFigure:
    png = plots.to_png(figure)
    figure.clear()
    plots.write_atomic(out_dir / file, png)
    width, height = plots.png_size(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return EmbeddedFigure(file, title, caption, uri, width // 2, height // 2)


def _columns(*titles: str, numeric: Sequence[str] = ()) -> list[tuple[str, bool]]:
    return [(title, title in numeric) for title in titles]


def _identity(row: Any) -> list[Cell]:
    """Job name, task id and model · mode · scale: how a task is recognised in every table."""
    return [Cell(text(row.job_name), css="key"), Cell(text(row.task_id), css="mono"), Cell(_kind(row), css="key")]


def _kind(row: Any) -> str:
    return " · ".join(text(getattr(row, column)) for column in DEFAULT_BY)


def _status_cell(status: Any) -> Cell:
    return Cell(text(status), badge="" if _missing(status) else f"status-{str(status).lower()}")


def _error(code: Any, message: Any) -> str:
    return ": ".join(text(value) for value in (code, message) if not _missing(value) and value != "") or MISSING


def comparison_table(frame: pd.DataFrame, by: Sequence[str]) -> Table:
    numbers = (
        "Tasks",
        "Done",
        "BLEU-4",
        "ROUGE-1",
        "ROUGE-2",
        "ROUGE-L",
        "Final loss",
        "Best loss",
        "Final perplexity",
    )
    table = Table(_columns(*(COLUMN_TITLES.get(c, c) for c in by), *numbers, numeric=numbers))
    for row in frame.to_dict("records"):
        cells = [Cell(text(row[c]), css="key") for c in by]
        cells += [Cell(integer(row["tasks"]), True), Cell(integer(row["done"]), True)]
        cells += [Cell(mean_std(row[f"{m}_mean"], row[f"{m}_std"], 1), True) for m in analysis.METRICS]
        cells += [
            Cell(mean_std(row[f"{v}_mean"], row[f"{v}_std"], 3), True)
            for v in ("final_loss", "best_loss", "final_perplexity")
        ]
        table.rows.append(cells)
    return table


def best_table(frame: pd.DataFrame) -> Table:
    numbers = ("Best loss", "Last step", "incrementCheckpointStep")
    table = Table(
        _columns("Job", "Model · mode · scale", "Status", "Best loss", "Last step", "Later steps", "incrementTaskId",
                 "incrementCheckpointStep", numeric=numbers)
    )  # fmt: skip
    for row in frame.sort_values(["job_name", "task_id"]).itertuples(index=False):
        table.rows.append(
            [
                Cell(text(row.job_name), css="key"),
                Cell(_kind(row), css="key"),
                _status_cell(row.run_status),
                Cell(number(row.best_value, 4), True),
                Cell(integer(row.last_step), True),
                Cell("best is last") if row.is_last else Cell("worse: overfitting?", css="warn"),
                Cell(text(row.incrementTaskId), css="mono"),
                Cell(integer(row.incrementCheckpointStep), True),
            ]
        )
    return table


def failures_table(latest: pd.DataFrame, spans: pd.DataFrame, last_steps: pd.Series) -> Table:
    numbers = ("Ran for", "Last step")
    table = Table(
        _columns("Job", "Task", "Model · mode · scale", "Status", *numbers, "Finished (UTC)", "Error code and message",
                 numeric=numbers)
    )  # fmt: skip
    ran = spans.set_index("task_id")["running_seconds"] if not spans.empty else pd.Series(dtype=float)
    ended = latest[latest["run_status"].isin(["Failed", "Stopped"])].sort_values(["job_name", "task_id"])
    for row in ended.itertuples(index=False):
        table.rows.append(
            [
                *_identity(row),
                _status_cell(row.run_status),
                Cell(duration(ran.get(row.task_id)), True),
                Cell(integer(last_steps.get(row.task_id)), True),
                Cell(when(row.finish_time), css="key"),
                Cell(_error(row.error_code, row.error_message), css="message"),
            ]
        )
    return table


def running_table(latest: pd.DataFrame, estimates: pd.DataFrame, now: datetime) -> Table:
    numbers = ("Progress", "Rate")
    table = Table(
        _columns("Job", "Task", "Model · mode · scale", *numbers, "ETA (UTC)", "Progress last moved (UTC)",
                 numeric=numbers)
    )  # fmt: skip
    joined = estimates.merge(latest[["task_id", "job_name", *DEFAULT_BY]], on="task_id", how="left")
    for row in joined.sort_values(["job_name", "task_id"]).itertuples(index=False):
        if _missing(row.eta) and not _missing(row.rate_per_hour) and row.rate_per_hour > 0:
            eta = "unknown (too slow to tell)"  # a finish beyond any time a timestamp holds
        elif _missing(row.eta):
            eta = "unknown (no progress yet)"
        else:
            # As POSIX seconds: a difference of Timestamps can overflow where one of floats cannot.
            remaining = pd.Timestamp(row.eta).timestamp() - pd.Timestamp(now).timestamp()
            eta = f"{when(row.eta)} (in {duration(remaining)})" if remaining > 0 else f"{when(row.eta)} (passed)"
        rate = row.rate_per_hour
        table.rows.append(
            [
                *_identity(row),
                Cell(percent(row.run_progress), True),
                Cell(MISSING if _missing(rate) else f"{number(rate, 1 if abs(rate) < 100 else 0)} %/h", True),
                Cell(eta, css="key"),
                Cell(
                    when(row.progress_since) + (" · stalled" if row.stalled else ""),
                    css="key warn" if row.stalled else "key",
                ),
            ]
        )
    return table


HEALTH_FLAGS = {
    "loss_rising": "loss rising",
    "non_finite": "NaN or inf values",
    "plateau": "loss plateau",
    "perplexity_mismatch": "perplexity ≠ exp(loss)",
}


def health_table(flags: pd.DataFrame, latest: pd.DataFrame) -> Table:
    table = Table(
        _columns("Job", "Task", "Model · mode · scale", "Status", "Checkpoints", "Flags", numeric=["Checkpoints"])
    )
    flagged = flags[~flags["healthy"].astype(bool)]
    joined = flagged.merge(latest[["task_id", "job_name", "run_status", *DEFAULT_BY]], on="task_id")
    for row in joined.sort_values(["job_name", "task_id"]).itertuples(index=False):
        raised = ", ".join(label for column, label in HEALTH_FLAGS.items() if getattr(row, column))
        table.rows.append(
            [
                *_identity(row),
                _status_cell(row.run_status),
                Cell(integer(row.checkpoints), True),
                Cell(raised, css="warn"),
            ]
        )
    return table


def actions_table(frame: pd.DataFrame, latest: pd.DataFrame) -> Table:
    """Every stop and continue sent or advised, newest first: who acted on a run, and why."""
    table = Table(_columns("When (UTC)", "Job", "Task", "Action", "Why", "Outcome", "Result"))
    names = latest.set_index("task_id")["job_name"]
    for row in frame.iloc[::-1].itertuples(index=False):
        why = f"rule {row.rule}" if not _missing(row.rule) else f"ftlog {row.command}"
        if row.outcome == "sent":
            result = (
                f"new task {row.new_task_id}" if not _missing(row.new_task_id) else f"request {text(row.request_id)}"
            )
        elif row.outcome == "advised":
            result = "nothing sent"
        else:
            result = text(row.error)
        table.rows.append(
            [
                Cell(when(row.at), css="key"),
                Cell(text(names.get(row.task_id, row.job_id)), css="key"),
                Cell(text(row.task_id), css="mono"),
                Cell(text(row.action)),
                Cell(text(why), css="mono"),
                Cell(text(row.outcome), css="warn" if row.outcome in ("denied", "failed") else ""),
                Cell(text(result), css="message"),
            ]
        )
    return table


def _with_columns(frame: pd.DataFrame, latest: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Add the task columns a frame lacks (e.g. ``run_status`` for grouping curves by status)."""
    missing = [c for c in columns if c not in frame.columns]
    return frame.merge(latest[["task_id", *missing]], on="task_id", how="left") if missing else frame


def write_report(
    source: analysis.Source,
    out_dir: str | Path,
    *,
    jobs: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    by: Sequence[str] = DEFAULT_BY,
    ema: float | None = None,
    now: datetime | None = None,
    force: bool = False,
    interactive: bool = True,
) -> Path:
    """Write the figures and ``index.html`` into ``out_dir`` and return the path of ``index.html``.

    ``jobs`` / ``tasks`` limit the report to some jobs or tasks; ``by`` groups the comparison, the curves and the
    BLEU/ROUGE chart; ``ema`` (in (0, 1]) draws smoothed curves over the raw ones; ``now`` fixes the moment used
    for ETAs and open status stretches (default: the current time).

    ``out_dir`` is refused when it holds files an ftlog report did not write (they are not in its manifest,
    ``MANIFEST``); with ``force`` the report is written beside them, replacing a file only where it has the name of
    one of the report's files. Files ftlog did not write are never removed.

    ``interactive`` (the default) adds the charts and runs table of :mod:`ftlog.explore` to the page, with their
    data and scripts inline; without it the page shows the PNG figures only.
    """
    by = list(by)
    moment = now or datetime.now(timezone.utc)
    out = Path(out_dir)
    context: dict[str, Any] = {
        "location": _location(source),
        "version": __version__,
        "generated": when(moment),
        "by": " · ".join(COLUMN_TITLES.get(c, c) for c in by),
        "selection": ", ".join([*(f"job {j}" for j in jobs or ()), *(f"task {t}" for t in tasks or ())]),
        "ema": ema,
        "figures": [],
        "notes": [],
        "interactive": interactive,
        "live": False,
    }
    try:
        claimed = _claim(out, force=force)
        out.mkdir(parents=True, exist_ok=True)
        # Claimed before anything is written: a report killed halfway leaves a folder the next one knows as its own.
        _write_manifest(out, claimed)
        # One connection for every helper: the report reads one consistent view of the dataset.
        with analysis.connection(source) as con:
            latest = analysis.tasks(con, tasks=tasks, jobs=jobs)
            if not latest.empty:
                _fill(context, con, out, latest, jobs=jobs, tasks=tasks, by=by, ema=ema, now=moment)
                if interactive:
                    document = explore.payload(
                        con, tasks=tasks, jobs=jobs, by=by, now=moment, location=context["location"]
                    )
                    context.update(explore.page_parts(document))
        context["empty"] = latest.empty
        html = explore.environment().get_template("report.html").render(**context)
        index = plots.write_atomic(out / "index.html", html.encode("utf-8"))
        written = {index.name, *(figure.file for figure in context["figures"])}
        _write_manifest(out, written)
        # A figure of an earlier report that this one has no data for would otherwise look current. Only names
        # claimed as ftlog's are removed: a file of the same name that ftlog did not write stays.
        for name in claimed - written:
            (out / name).unlink(missing_ok=True)
        return index
    except OSError as exc:
        raise FtlogError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def _claim(out: Path, *, force: bool) -> set[str]:
    """The names in ``out`` this report may write and remove: those its manifest lists, and the report's file names
    that nothing else holds. Raises FtlogError if ``out`` holds anything not in the manifest (anything at all
    without one), unless ``force``."""
    if out.exists() and not out.is_dir():
        raise FtlogError(f"{out} is a file, not a folder; choose another --out")
    try:
        listed = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, list):
            raise TypeError(listed)
        # Only the report's own names: a manifest edited by hand must never make ftlog remove other files.
        ours = {name for name in listed if name in REPORT_FILES}
        present = {entry.name for entry in out.iterdir()} - {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        # No manifest, or a file of its name that ftlog did not write: nothing in the folder is known to be ftlog's.
        ours = set()
        present = {entry.name for entry in out.iterdir()} if out.is_dir() else set()
    # write_atomic's temporary files (a killed or concurrent report's) are ftlog's, and left alone.
    foreign = sorted(name for name in present - ours if not _TEMPORARY.fullmatch(name))
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FtlogError(
            f"{out} holds files ftlog did not write ({shown}); choose another --out, or use --force to write the "
            "report beside them (replacing files of the report's names, removing none)"
        )
    return ours | (set(REPORT_FILES) - set(foreign))


def check_out_dir(out_dir: str | Path, *, force: bool = False) -> None:
    """Raise FtlogError where :func:`write_report` would refuse ``out_dir``, before any work is done."""
    try:
        _claim(Path(out_dir), force=force)
    except OSError as exc:
        raise FtlogError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None


def _write_manifest(out: Path, files: set[str]) -> None:
    manifest = {"written_by": f"ftlog {__version__}", "files": sorted(files)}
    plots.write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def _curves_figure(
    con: duckdb.DuckDBPyConnection,
    latest: pd.DataFrame,
    *,
    x: str,
    by: list[str],
    ema: float | None,
    tasks: Sequence[str] | None,
    jobs: Sequence[str] | None,
) -> tuple[Any, int] | None:
    """The curves figure over ``x`` and its number of runs, or None without checkpoints. The frame of every
    checkpoint row lives only while its figure is built: the report holds one at a time."""
    frame = _with_columns(analysis.curves(con, x=x, ema=ema, tasks=tasks, jobs=jobs), latest, by)
    if frame.empty:
        return None
    return plots.curves(frame, by=by, x=x), int(frame["task_id"].nunique())


def _fill(
    context: dict[str, Any],
    con: duckdb.DuckDBPyConnection,
    out: Path,
    latest: pd.DataFrame,
    *,
    jobs: Sequence[str] | None,
    tasks: Sequence[str] | None,
    by: list[str],
    ema: float | None,
    now: datetime,
) -> None:
    comparison = analysis.compare(con, by, stats=("mean", "std", "min", "max", "count"), tasks=tasks, jobs=jobs)
    best = analysis.best_checkpoints(con, tasks=tasks, jobs=jobs)
    stretches = analysis.timeline(con, now=now, tasks=tasks, jobs=jobs)
    spans = analysis.durations(con, now=now, tasks=tasks, jobs=jobs)
    estimates = analysis.eta(con, now=now, tasks=tasks, jobs=jobs)
    flags = analysis.health(con, tasks=tasks, jobs=jobs)

    counts = latest["run_status"].fillna("unknown").value_counts()
    order = ["Waiting", "Running", *TERMINAL_STATUSES]
    context.update(
        tasks=len(latest),
        jobs=int(latest["job_id"].nunique()),
        first_seen=when(latest["first_seen_at"].min()),
        last_seen=when(latest[["observed_at", "last_polled_at"]].max(axis=1).max()),
        statuses=[(s, int(counts[s])) for s in [*order, *sorted(set(counts.index) - set(order))] if s in counts],
    )

    figures, notes = context["figures"], context["notes"]
    smoothing = f" Bold lines are smoothed (EMA, α = {ema:g}) over the faint raw values." if ema else ""
    by_step = _curves_figure(con, latest, x="step", by=by, ema=ema, tasks=tasks, jobs=jobs)
    if by_step is None:
        notes.append("No checkpoints yet, so there are no loss or perplexity curves.")
    else:
        figure, runs = by_step
        caption = f"Every checkpoint of {runs} runs, one line per task, one colour per group.{smoothing}"
        figures.append(_figure(out, "curves_step.png", "Loss and perplexity by step", caption, figure))
        caption = (
            "The same curves with each task's steps scaled to its last checkpoint, so runs of different lengths "
            f"line up.{smoothing}"
        )
        by_fraction = _curves_figure(con, latest, x="fraction", by=by, ema=ema, tasks=tasks, jobs=jobs)
        if by_fraction is not None:
            figure, _ = by_fraction
            figures.append(
                _figure(out, "curves_fraction.png", "Loss and perplexity by share of the run", caption, figure)
            )
    if (comparison[[f"{m}_count" for m in analysis.METRICS]].sum(axis=1) > 0).any():
        caption = (
            "Mean over the tasks of each group that reported evaluation metrics (n); error bars are standard errors. "
            "Groups without reported metrics are left out."
        )
        figure = plots.metric_bars(comparison, by=by)
        figures.append(_figure(out, "metrics.png", "BLEU-4 and ROUGE by group", caption, figure))
    else:
        notes.append("No task has reported BLEU or ROUGE yet (they arrive when a task is Done).")
    labels = {
        str(task_id): f"{text(name)} · {text(scale)} · {task_id}"
        for task_id, name, scale in zip(latest["task_id"], latest["job_name"], latest["parameter_scale"], strict=True)
    }
    caption = (
        "When the collector saw each task Waiting and Running, and its end state (◆). Times have the resolution of "
        "the polling interval."
    )
    if len(labels) > plots.TIMELINE_MAX_TASKS:
        caption += f" Showing the {plots.TIMELINE_MAX_TASKS} most recently started of {len(labels)} tasks."
    figure = plots.timeline(stretches, labels=labels, now=now)
    figures.append(_figure(out, "timeline.png", "Status timeline", caption, figure))

    last_steps = best.set_index("task_id")["last_step"] if not best.empty else pd.Series(dtype=float)
    context.update(
        comparison=comparison_table(comparison, by),
        best=best_table(best),
        failures=failures_table(latest, spans, last_steps),
        running=running_table(latest, estimates, now),
        health=health_table(flags, latest),
        checked=len(flags),
        actions=actions_table(analysis.actions(con, tasks=tasks, jobs=jobs), latest),
    )
