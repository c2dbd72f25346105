"""``ftlog status`` without pyarrow, numpy or pandas: loading them takes longer than the whole answer.

For a local dataset whose present files (summary.py) cover its files as they are, and which every reader would read
without a warning, :func:`print_status` runs the status queries (light.py) over those files in DuckDB and prints
the rows as the CLI prints :func:`ftlog.analysis.status`'s DataFrame, byte for byte. In every other case (object
storage, files written since, a damaged or unreadable file, snapshots of an older ftlog) it prints nothing and
returns False, and the CLI takes the full path, which also says what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import duckdb

from . import light
from .redact import CONTROL, printable

# As schema.TABLES, summary.SUMMARIZED, PRESENT_DIR, PRESENT_KEY and RUNNING_KEPT, and views.present_definitions
# for the views that status reads, which those modules cannot share without pyarrow (tests/test_quick.py checks).
TABLES = ("snapshots", "checkpoints", "polls", "events", "deliveries", "actions")
SUMMARIZED = ("snapshots", "polls")
PRESENT_DIR = ("_summary", "present")
PRESENT_KEY = "ftlog.present"
RUNNING_KEPT = timedelta(days=1)
PRESENT_FILES = ("snapshots", "polls", "tasks", "reported_metrics", "latest_states", "status")
PRESENT_VIEWS = {
    "tasks": "SELECT * FROM {tasks}",
    "_latest_states": "SELECT * FROM {latest_states}",
    "_status": "SELECT * FROM {status}",
    "_current_changes": "SELECT * FROM {snapshots} WHERE in_view",
}
Row = tuple[Any, ...]
RUN_STATUS, ETA = light.STATUS_COLUMNS.index("run_status"), light.STATUS_COLUMNS.index("eta")


def status_rows(data: str, *, now: datetime, stall_after: timedelta) -> list[Row] | None:
    """The rows of :func:`ftlog.analysis.status` (light.STATUS_COLUMNS), or None where the present files cannot
    answer alone."""
    if "://" in data:
        return None
    root = Path(data).absolute()
    try:
        listed = {name: _partitions(root / name) for name in TABLES}
    except OSError:
        return None  # unlistable: the full path names it
    with duckdb.connect() as con:
        try:
            return _status_rows(con, root, listed, now=now, stall_after=stall_after)
        except (duckdb.Error, OSError, ValueError, LookupError, TypeError, AttributeError):
            return None  # a file that vanished or does not read, a manifest that does not parse: the full path


def _status_rows(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    listed: dict[str, dict[str, list[os.DirEntry[str]]]],
    *,
    now: datetime,
    stall_after: timedelta,
) -> list[Row] | None:
    con.execute("SET TimeZone = 'UTC'")
    present = {name: str(root.joinpath(*PRESENT_DIR, f"{name}.parquet")) for name in PRESENT_FILES}
    found = con.execute(
        "SELECT file_name, decode(value) FROM parquet_kv_metadata($1) WHERE decode(key) = $2",
        [list(present.values()), PRESENT_KEY],
    ).fetchall()
    manifests = {manifest for _, manifest in found}
    if len(manifests) != 1 or len(found) != len(present):
        return None  # not every present file carries it, or not the same one
    manifest = json.loads(manifests.pop())
    if any(manifest["files"].get(name) != _manifest_files(listed[name]) for name in SUMMARIZED):
        return None  # files written since, or changed
    summarized = (entry.path for name in SUMMARIZED for entries in listed[name].values() for entry in entries)
    if not all(os.access(path, os.R_OK) for path in summarized):
        return None  # a file this process may not read: an error, which the full path reports
    others = [entry.path for name in TABLES if name not in SUMMARIZED for entries in listed[name].values()
              for entry in entries]  # fmt: skip
    if not _uniform(con, others):
        return None  # a file that does not read, or of another schema: the full path skips it, with a warning
    since = (datetime.fromisoformat(manifest["latest"]) - RUNNING_KEPT).isoformat()
    files = {name: f"read_parquet({_string(_literal(path))})" for name, path in present.items()}
    for name, sql in PRESENT_VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {sql.format(**files)}")
    con.execute(f"CREATE VIEW _current_since AS SELECT CAST({_string(since)} AS TIMESTAMPTZ) AS since")
    rows = sorted(con.sql(light.STATUS).fetchall(), key=lambda row: str(row[0]))  # by task_id, as DuckDB orders
    if any(row[-1] for row in rows):
        return None  # snapshots of an older ftlog: best_loss from the checkpoints
    if any(row[RUN_STATUS] == "Running" for row in rows):
        cutoff = light.window_start(now, light.WINDOW)
        sql = light.estimates_sql(light.changes_view(con, cutoff), "TRUE", now=now, cutoff=cutoff,
                                  stall_after=stall_after)  # fmt: skip
        estimates = {task: (eta, stalled) for task, _, _, eta, _, stalled in con.sql(sql).fetchall()}
        rows = [(*row[:ETA], *estimates.get(row[0], (None, None)), *row[ETA + 2 :]) for row in rows]
    return [row[:-1] for row in rows]


def _partitions(folder: Path) -> dict[str, list[os.DirEntry[str]]]:
    """Dataset.partitions of the table ``folder``: ``{day: [data files]}``, hidden and temporary files left out.
    Walks the whole folder, as Dataset.listing does, so that what it cannot list is an OSError here too."""
    found: dict[str, list[os.DirEntry[str]]] = {}
    try:
        days = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for day in days:
        if not day.is_dir():
            continue
        for entry in os.scandir(day.path):
            if entry.is_dir():
                _walk(entry.path)
            elif entry.is_file() and day.name.startswith("date=") and _data_file(entry.name):
                found.setdefault(day.name[5:], []).append(entry)
    return found


def _data_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _walk(folder: str) -> None:
    for entry in os.scandir(folder):
        if entry.is_dir():
            _walk(entry.path)


def _manifest_files(days: dict[str, list[os.DirEntry[str]]]) -> dict[str, list[str]]:
    """The files by day as summary.listed_files names them in the manifest."""
    return {day: sorted(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in entries)
            for day, entries in days.items()}  # fmt: skip


def _uniform(con: duckdb.DuckDBPyConnection, paths: list[str]) -> bool:
    """Whether every file of ``paths`` reads and the files of each table have one schema, so that readers take
    them all without a warning (those of the snapshots and polls did, and have not changed, when the present files
    name them). A schema that no reader can use differs from the other files' (only a table whose files all have
    it passes, and then the full path's warning is missed, not an answer: status reads no other table)."""
    if not paths:
        return True
    found = con.execute(
        "SELECT file_name, string_agg(concat_ws(':', name, type, logical_type, repetition_type), ',' ORDER BY name) "
        "FROM parquet_schema($1) GROUP BY file_name",
        [paths],
    ).fetchall()
    schemas: dict[str, set[str]] = {}
    for path, schema in found:
        schemas.setdefault(Path(path).parent.parent.name, set()).add(schema)  # by table
    return len(found) == len(paths) and all(len(kinds) == 1 for kinds in schemas.values())


def _literal(path: str) -> str:
    return path.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")  # as schema.Dialect.literal


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- printing, as cli.echo_frame prints the DataFrame --------------------------------------------------------
TEXT, NUMBER, TIME, FLAG = "text", "number", "time", "flag"
KINDS = (
    dict.fromkeys(light.STATUS_COLUMNS, TEXT)
    | dict.fromkeys(("run_progress", "best_loss"), NUMBER)
    | dict.fromkeys(("eta", "last_change", "last_polled_at"), TIME)
    | {"stalled": FLAG}
)


def print_status(data: str, fmt: str, stall_after: timedelta) -> bool:
    """Print ``ftlog status`` as the CLI does, from the present files; False, having printed nothing, where they
    cannot answer alone."""
    rows = status_rows(data, now=datetime.now(timezone.utc), stall_after=stall_after)
    if rows is None:
        return False
    if fmt == "json":
        click.echo(CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", _json(rows)))
    elif fmt == "csv":
        click.echo(_csv(rows), nl=False)
    elif not rows:
        click.echo("(no rows)", err=True)
    else:
        click.echo(_table(rows))
    return True


def _columns(rows: Sequence[Row]) -> list[tuple[str, str, list[Any]]]:
    return [(name, KINDS[name], [row[i] for row in rows]) for i, name in enumerate(light.STATUS_COLUMNS)]


def _missing(value: Any) -> bool:
    return value is None or value != value  # NULL or NaN


def _table(rows: Sequence[Row]) -> str:
    """DataFrame.to_string(index=False): each column right-justified to its widest cell or header, one space
    between columns."""
    cells: dict[str, Callable[[list[Any]], list[str]]] = {TEXT: _text_cells, NUMBER: _float_cells,
                                                          TIME: _time_cells, FLAG: _flag_cells}  # fmt: skip
    columns = []
    for name, kind, values in _columns(rows):
        # A numeric column's header has a space before it; so has a text column's of no text (pandas makes it float).
        numeric = kind in (NUMBER, FLAG) or (kind == TEXT and all(value is None for value in values))
        header = f" {name}" if numeric else name
        shown = cells[kind](values)
        width = max(len(header), *map(len, shown))
        columns.append([text.rjust(width) for text in (header, *shown)])
    return "\n".join(" ".join(line) for line in zip(*columns, strict=True))


def _text_cells(values: list[Any]) -> list[str]:
    return ["NaN" if value is None else printable(value) for value in values]


def _flag_cells(values: list[Any]) -> list[str]:
    return ["<NA>" if value is None else str(value) for value in values]


_DECIMAL = re.compile(r"^\s*[+-]?[0-9]+\.[0-9]*$")


def _float_cells(values: list[Any]) -> list[str]:
    """pandas' FloatArrayFormatter at display.precision 6: fixed point with the trailing zeros all values share
    trimmed, or scientific when a value would show as 0 or a long one is large."""

    def formatted(spec: str) -> list[str]:
        shown = ["NaN" if _missing(value) else format(value, spec) for value in values]
        number = [_DECIMAL.match(text) is not None for text in shown]
        if any(number):
            while all(text.endswith("0") for text, n in zip(shown, number, strict=True) if n):
                shown = [text[:-1] if n else text for text, n in zip(shown, number, strict=True)]
            shown = [text + "0" if n and text.endswith(".") else text for text, n in zip(shown, number, strict=True)]
        return shown

    shown = formatted(".6f")
    sizes = [abs(value) for value in values if not _missing(value)]
    too_long = max(map(len, shown), default=0) > 12
    if any(0 < size < 1e-6 for size in sizes) or (too_long and any(size > 1e6 for size in sizes)):
        shown = formatted(".6e")
    return shown


def _time_cells(values: list[Any], missing: str = "NaT") -> list[str]:
    """Times as pandas writes a column of them: every one to the finest unit (seconds, ms or µs) any needs."""
    micros = [value.microsecond for value in values if value is not None]
    digits = 6 if any(us % 1000 for us in micros) else 3 if any(micros) else 0
    return [missing if value is None else _time(value, digits) for value in values]


def _time(value: datetime, digits: int) -> str:
    text = value.astimezone(timezone.utc).isoformat(sep=" ", timespec="microseconds")
    return text[: 20 + digits if digits else 19] + text[26:]


def _csv(rows: Sequence[Row]) -> str:
    """DataFrame.to_csv(index=False): numbers as repr, missing values empty, text with its line breaks and tabs."""
    columns = []
    for _, kind, values in _columns(rows):
        if kind == TEXT:
            columns.append(["" if value is None else printable(value, "\n\t") for value in values])
        elif kind == NUMBER:
            columns.append(["" if _missing(value) else repr(value) for value in values])
        elif kind == TIME:
            columns.append(_time_cells(values, ""))
        else:
            columns.append(["" if value is None else str(value) for value in values])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(light.STATUS_COLUMNS)
    writer.writerows(zip(*columns, strict=True) if rows else [])
    return out.getvalue()


_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_SPECIAL = re.compile(r'["\\/\x00-\x1f]')


def _json(rows: Sequence[Row]) -> str:
    """DataFrame.to_json(orient="records", date_format="iso", date_unit="us", force_ascii=False)."""

    def value(kind: str, item: Any) -> str:
        if _missing(item) or (kind == NUMBER and item in (float("inf"), float("-inf"))):
            return "null"
        if kind == TEXT:
            return '"' + _JSON_SPECIAL.sub(lambda m: _ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}"), str(item)) + '"'
        if kind == NUMBER:
            return _json_number(item)
        if kind == TIME:
            moment: datetime = item
            return '"' + moment.astimezone(timezone.utc).isoformat(timespec="microseconds")[:26] + 'Z"'
        return "true" if item else "false"

    kinds = [KINDS[name] for name in light.STATUS_COLUMNS]
    keys = [json.dumps(name) for name in light.STATUS_COLUMNS]
    records = (
        "{" + ",".join(f"{key}:{value(kind, item)}" for key, kind, item in zip(keys, kinds, row, strict=True)) + "}"
        for row in rows
    )
    return "[" + ",".join(records) + "]"


def _json_number(value: float) -> str:
    """A finite float as pandas' JSON writer (ujson, double_precision 10) writes it: ten decimals at most, trailing
    zeros dropped, rounded half to odd; ``%.10g`` beyond 1e16 and below 1e-15."""
    size = abs(value)
    if size > 1e16 - 1 or (size != 0 and size < 1e-15):
        return f"{value:.10g}"
    whole = int(size)
    scaled = (size - whole) * 1e10
    frac = int(scaled)
    rest = scaled - frac
    if rest > 0.5 or (rest == 0.5 and (frac == 0 or frac & 1)):
        frac += 1
    if frac >= 1e10:
        frac, whole = 0, whole + 1
    text = f"{whole}.{f'{frac:010d}'.rstrip('0') or '0'}"
    return f"-{text}" if value < 0 else text
