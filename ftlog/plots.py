"""Figures for reports and notebooks: loss and perplexity curves, BLEU/ROUGE bars and a status timeline.

Figures are plain :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas; pyplot is never used, so
no figure lingers in pyplot's registry and rcParams stay untouched. The house style, including the bundled CJK
font as a fallback for Chinese job names, applies inside :func:`style`, which building and rendering both use.

>>> from ftlog import analysis, plots  # doctest: +SKIP
>>> plots.save(plots.curves(analysis.curves("data", ema=0.3)), "curves.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib import font_manager, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from .normalise import METRIC_COLUMNS
from .schema import TERMINAL_STATUSES

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FONT_DIR = Path(__file__).parent / "fonts"
CJK_FONT = "WenQuanYi Micro Hei"
# DejaVu Sans (shipped with matplotlib) draws Latin text; glyphs it lacks fall back to the CJK font.
FONT_FAMILY = ["DejaVu Sans", CJK_FONT]
DPI = 200  # twice the CSS pixel density: sharp on high-DPI screens when shown at half size
METRIC_LABELS = {column: label for label, column in METRIC_COLUMNS.items()}  # as the API names them
METRIC_COLOURS = {"bleu_4": "#4c78a8", "rouge_1": "#f58518", "rouge_2": "#54a24b", "rouge_l": "#b279a2"}
STATUS_COLOURS = {
    "Waiting": "#bab0ac",
    "Running": "#4c78a8",
    "Done": "#54a24b",
    "Failed": "#e45756",
    "Stopped": "#f58518",
}
TITLES = {"training_loss": "Training loss", "perplexity": "Perplexity (log scale)"}
OTHER_STATUS_COLOUR = "#9d755d"
TIMELINE_MAX_TASKS = 60
CURVE_MARKERS_MAX_POINTS = 20_000  # checkpoints in a curves figure up to which each one has a marker

STYLE: dict[RcKeyType, Any] = {
    "font.family": FONT_FAMILY,
    "font.size": 9,
    # Normal weight only: the CJK fallback font has no bold face, and asking for one logs a warning.
    "axes.titlesize": 10.5,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e5e5",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    # Job names are data, not markup: a "$" must never start mathtext.
    "text.parse_math": False,
    "savefig.dpi": DPI,
    "figure.dpi": 100,
}


def _register_fonts() -> None:
    for path in sorted(FONT_DIR.glob("*.tt[cf]")):
        font_manager.fontManager.addfont(str(path))


_register_fonts()


@contextmanager
def style() -> Iterator[None]:
    """The house style for building and rendering figures (matplotlib draws tick labels lazily, at render)."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas and constrained layout, outside pyplot."""
    with style():
        figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure, *, dpi: int = DPI, reduce_colours: bool = True) -> bytes:
    """Render ``figure`` to PNG bytes in the house style.

    With ``reduce_colours`` the image is reduced to 256 colours: flat-coloured charts look the same and the file is
    about a third of the size, which matters once every figure is embedded in one HTML file.
    """
    buffer = io.BytesIO()
    with style():
        figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    if not reduce_colours:
        return buffer.getvalue()
    with Image.open(buffer) as image:
        reduced = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    reduced.save(out, format="PNG", optimize=True, dpi=(dpi, dpi))
    return out.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: readers see the old file or
    the new one, never a partial write."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open rather than mkstemp: mode 0o666 less the umask, like any file the user creates.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            out.write(data)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def save(figure: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``figure`` as a PNG atomically and release its contents."""
    png = to_png(figure, dpi=dpi)
    figure.clear()
    return write_atomic(path, png)


def group_labels(frame: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """One label per row, e.g. ``ERNIE-Speed-8K · SFT · LoRA``; missing values show as ``—``."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    parts = frame[list(by)].astype(object).where(frame[list(by)].notna(), "—").astype(str)
    # Column by column: a row-wise join calls Python once per row, over a minute at 500,000 checkpoints.
    labels = parts.iloc[:, 0].rename(None)
    for column in parts.columns[1:]:
        labels = labels + " · " + parts[column]
    return labels


def palette(labels: Sequence[str]) -> dict[str, Any]:
    """A distinct colour per label, stable for a given sorted set of labels."""
    colormap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: colormap(i % colormap.N) for i, label in enumerate(sorted(labels))}


def _plain(value: float, position: int | None = None) -> str:
    return f"{value:g}"


def _legend_columns(labels: Sequence[str], width_inches: float) -> int:
    longest = max((len(label) for label in labels), default=1)
    return max(1, min(len(labels), int(width_inches * 12 / (longest + 6))))


class _Runs:
    """The rows of a curves frame by task: tasks in sorted order, each task's rows in their order in the frame (as
    ``groupby("task_id")`` gives them, rows without a task id left out), found without building a group per task."""

    def __init__(self, frame: pd.DataFrame) -> None:
        codes, _ = pd.factorize(frame["task_id"], sort=True)
        if len(codes) and codes[0] >= 0 and bool(np.all(codes[1:] >= codes[:-1])):
            self.order: np.ndarray | None = None  # already sorted, as analysis.curves returns it: no copies
            kept = codes
        else:
            order = np.argsort(codes, kind="stable")
            self.order = order[codes[order] >= 0]
            kept = codes[self.order]
        self.starts = np.flatnonzero(np.diff(kept, prepend=-1))
        self.lengths = np.diff(np.append(self.starts, len(kept)))
        self.first = frame.iloc[self.starts if self.order is None else self.order[self.starts]]

    def values(self, column: pd.Series) -> np.ndarray:
        values = column.to_numpy(dtype=float, na_value=np.nan)
        return values if self.order is None else values[self.order]

    def split(self, xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
        """One (n, 2) array of points per task."""
        return np.split(np.column_stack([xs, ys]), self.starts[1:]) if len(xs) else []


def _lines(ax: Any, segments: list[np.ndarray], colours: list[Any], *, linewidth: float, alpha: float) -> None:
    """Every task's line as one collection (10,000 Line2D objects take seconds to build and draw); the segments
    keep the tasks' order, so they overlap as separate lines would. NaN points leave gaps, as in a line."""
    if segments:
        lines = LineCollection(
            segments, colors=colours, linewidths=linewidth, alpha=alpha, capstyle="projecting", joinstyle="round"
        )
        ax.add_collection(lines, autolim=False)  # limits from the finite points only: see _limits


def _markers(
    ax: Any,
    xs: np.ndarray,
    ys: np.ndarray,
    only: np.ndarray | None,
    runs: _Runs,
    groups: np.ndarray,
    colours: Mapping[str, Any],
    *,
    markersize: float,
    alpha: float,
) -> None:
    """A marker at each point (where ``only``), one Line2D per group; ``groups`` holds each task's position in
    ``colours``."""
    row_group = np.repeat(groups, runs.lengths)
    for number, colour in enumerate(colours.values()):
        chosen = row_group == number if only is None else (row_group == number) & only
        if chosen.any():
            ax.plot(xs[chosen], ys[chosen], "o", markersize=markersize, color=colour, alpha=alpha)


def _limits(ax: Any, xs: np.ndarray, *columns: np.ndarray) -> None:
    """Fit the axes to the finite points of the collections, as they fit a line's."""
    for ys in columns:
        finite = np.isfinite(xs) & np.isfinite(ys)
        if finite.any():
            ax.update_datalim(np.column_stack([xs[finite], ys[finite]]))
            ax.autoscale()


def curves(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] = ("model", "train_mode", "parameter_scale"),
    x: str = "step",
    metrics: Sequence[str] = ("training_loss", "perplexity"),
    width: float = 10.0,
) -> Figure:
    """Training loss and perplexity of every run (one line per task, one colour per group), one panel per metric.

    ``frame`` comes from :func:`ftlog.analysis.curves` and must hold the ``by`` columns. When it has
    ``<metric>_ema`` columns the smoothed curve is drawn over a faint raw curve. ``x`` says what the x column
    means: ``"step"`` or ``"fraction"``. Perplexity uses a log scale: early checkpoints sit an order of magnitude
    above the final ones. Raw curves mark each checkpoint up to ``CURVE_MARKERS_MAX_POINTS`` checkpoints; past
    that only the lines are drawn (and a run with a single checkpoint is still marked).
    """
    runs = _Runs(frame)
    labels = group_labels(runs.first, by)  # one per task, in task order
    colours = palette(sorted(set(labels)))
    rows = math.ceil(len(colours) / _legend_columns(list(colours), width)) if colours else 0
    figure = new_figure(width, 3.6 + 0.2 * rows)
    task_colours = [colours[label] for label in labels]
    groups = pd.Index(list(colours)).get_indexer(labels)
    with style():
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics, strict=True):
            xs = runs.values(frame["x"])
            ys = runs.values(frame[metric])
            if f"{metric}_ema" in frame.columns:
                smooth = runs.values(frame[f"{metric}_ema"])
                _lines(ax, runs.split(xs, ys), task_colours, linewidth=0.8, alpha=0.35)
                _lines(ax, runs.split(xs, smooth), task_colours, linewidth=1.5, alpha=0.9)
                # A run with one checkpoint has no line to draw: mark the point.
                single = np.repeat(runs.lengths == 1, runs.lengths)
                _markers(ax, xs, smooth, single, runs, groups, colours, markersize=3, alpha=0.9)
                _limits(ax, xs, ys, smooth)
            else:
                _lines(ax, runs.split(xs, ys), task_colours, linewidth=1.2, alpha=0.8)
                # Every checkpoint marked while the markers stay apart; beyond that they merge into bands that hide
                # the lines, and only the points of one-checkpoint runs (which have no line) are marked.
                marked = None if len(xs) <= CURVE_MARKERS_MAX_POINTS else np.repeat(runs.lengths == 1, runs.lengths)
                _markers(ax, xs, ys, marked, runs, groups, colours, markersize=2.2, alpha=0.8)
                _limits(ax, xs, ys)
            ax.set_title(TITLES.get(metric, metric))
            if metric == "perplexity":
                ax.set_yscale("log")
                # Plain numbers: the default log labels are mathtext, which the style turns off.
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
                ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_plain))
            ax.set_xlabel("step" if x == "step" else "share of the task's steps (last checkpoint = 1)")
            if x == "fraction":
                ax.set_xlim(0, 1.02)
        if colours:
            counts = labels.value_counts()
            names = list(colours)
            handles = [Line2D([], [], color=colours[name], linewidth=2) for name in names]
            texts = [f"{name} ({counts.get(name, 0)})" for name in names]
            figure.legend(
                handles,
                texts,
                loc="outside lower center",
                ncols=_legend_columns(texts, width),
                title="group (runs)" + (" — thin: raw, bold: smoothed" if f"{metrics[0]}_ema" in frame else ""),
                title_fontsize=8,
            )
    return figure


def metric_bars(
    comparison: pd.DataFrame,
    *,
    by: Sequence[str] = ("model", "train_mode", "parameter_scale"),
    metrics: Sequence[str] = tuple(METRIC_LABELS),
    width: float = 10.0,
) -> Figure:
    """BLEU-4 and ROUGE-1/2/L per group as horizontal grouped bars; error bars are standard errors of the mean.

    ``comparison`` comes from :func:`ftlog.analysis.compare` with the ``mean``, ``std`` and ``count`` statistics.
    Groups without any reported metric are left out.
    """
    rows = comparison[comparison[[f"{m}_count" for m in metrics]].sum(axis=1) > 0].copy()
    rows["label"] = group_labels(rows, by)
    rows = rows.sort_values("label", ascending=False)  # top to bottom in alphabetical order
    groups = len(rows)
    figure = new_figure(width, 1.2 + 0.5 * max(groups, 1))
    with style():
        ax = figure.subplots()
        positions = np.arange(groups)
        bar = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            mean = rows[f"{metric}_mean"].to_numpy(dtype=float)
            count = rows[f"{metric}_count"].to_numpy(dtype=float)
            std = rows[f"{metric}_std"].to_numpy(dtype=float)
            with np.errstate(invalid="ignore", divide="ignore"):
                error = np.where(count > 1, std / np.sqrt(count), np.nan)
            offset = positions + (len(metrics) - 1 - i - (len(metrics) - 1) / 2) * bar
            ax.barh(
                offset,
                np.nan_to_num(mean),
                height=bar * 0.92,
                color=METRIC_COLOURS.get(metric, "#888888"),
                label=METRIC_LABELS.get(metric, metric),
                xerr=np.nan_to_num(error),
                error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#333333"},
            )
        counts = rows[[f"{m}_count" for m in metrics]].max(axis=1).astype(int)
        ax.set_yticks(positions, [f"{label}  (n={n})" for label, n in zip(rows["label"], counts, strict=True)])
        ax.set_xlabel("score (%), mean ± standard error")
        ax.set_xlim(0, max(5.0, float(np.nanmax(rows[[f"{m}_mean" for m in metrics]].to_numpy(dtype=float)) * 1.12)))
        ax.grid(axis="y", visible=False)
        figure.legend(loc="outside upper center", ncols=len(metrics))
    return figure


def _naive_utc(values: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(values, utc=True).dt.tz_localize(None)
    return mdates.date2num(stamps.to_numpy())  # type: ignore[no-untyped-call]


def timeline(
    stretches: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
    width: float = 10.0,
    max_tasks: int = TIMELINE_MAX_TASKS,
) -> Figure:
    """A Gantt chart of each task's Waiting and Running stretches, with a marker at its end state.

    ``stretches`` comes from :func:`ftlog.analysis.timeline`; ``labels`` maps task ids to row labels (default: the
    task id). A stretch still open runs to ``now``. Only the ``max_tasks`` most recently started tasks are drawn.
    """
    moment = pd.Timestamp(now or datetime.now(timezone.utc))
    starts = stretches.groupby("task_id")["entered_at"].min().sort_values()
    shown = list(starts.index[-max_tasks:])
    frame = stretches[stretches["task_id"].isin(shown)].copy()
    frame["end"] = frame["left_at"].fillna(moment)
    begin, end = _naive_utc(frame["entered_at"]), _naive_utc(frame["end"])
    row = {task_id: i for i, task_id in enumerate(reversed(shown))}  # earliest start at the top
    figure = new_figure(width, 1.4 + 0.24 * max(len(shown), 1))
    seen: set[str] = set()
    with style():
        ax = figure.subplots()
        for task_id, value, left, right in zip(frame["task_id"], frame["status"], begin, end, strict=True):
            status = str(value)
            colour = STATUS_COLOURS.get(status, OTHER_STATUS_COLOUR)
            seen.add(status)
            if status in TERMINAL_STATUSES:  # an end state has no duration: a marker where it began
                ax.plot(left, row[task_id], marker="D", markersize=5, color=colour, linestyle="none")
            else:
                ax.barh(row[task_id], max(right - left, 0.0), left=left, height=0.62, color=colour)
        ax.set_yticks(range(len(shown)), [(labels or {}).get(t, t) for t in reversed(shown)])
        ax.set_ylim(-0.7, len(shown) - 0.3)
        locator = mdates.AutoDateLocator(tz=timezone.utc)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        formatter = mdates.ConciseDateFormatter(locator, tz=timezone.utc)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(formatter)
        ax.set_xlabel("time (UTC)")
        ax.grid(axis="y", visible=False)
        order = [s for s in STATUS_COLOURS if s in seen] + sorted(s for s in seen if s not in STATUS_COLOURS)
        handles = [
            Line2D([], [], marker="D", color=STATUS_COLOURS[s], linestyle="none")
            if s in TERMINAL_STATUSES
            else Patch(color=STATUS_COLOURS.get(s, OTHER_STATUS_COLOUR))
            for s in order
        ]
        figure.legend(handles, order, loc="outside upper center", ncols=max(1, len(order)))
    return figure
