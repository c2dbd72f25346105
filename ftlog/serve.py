"""``ftlog serve``: the interactive report, live, over HTTP, and the JSON it is drawn from. Read-only.

Routes (every other path answers 404, every method but GET and HEAD 405):

- ``GET /``: the page (``templates/live.html``), which polls ``api/version`` and fetches ``api/report`` again when
  the dataset changed;
- ``GET /api/tasks``: the ``tasks`` view, one object per task, ordered by ``task_id``;
- ``GET /api/curves?task_id=ID`` (repeatable): those tasks' rows of the ``checkpoints`` view, by task and step;
- ``GET /api/compare?by=COLS``: :func:`ftlog.analysis.compare` grouped by the comma-separated ``COLS``;
- ``GET /api/report``: the document the page draws (:func:`ftlog.explore.payload`);
- ``GET /api/version``: a fingerprint of the dataset's files, which changes whenever a collector writes.

Times are ISO 8601 in UTC, numbers that are not finite are ``null``. An error is ``{"error": "..."}`` with status
400 (a bad parameter) or 503 (the dataset cannot be read now).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server, select_address_family
from werkzeug.wrappers import Request, Response

from . import __version__, analysis, explore
from .errors import FtlogError
from .store import Dataset
from .views import GROUP_COLUMNS, connect, retry_vanished

RECHECK_SECONDS = 1.0  # how often the dataset's files are listed again at most: new data shows within this
POLL_SECONDS = 2.0  # how often the page asks whether the data changed
MAX_TASK_IDS = 1000  # task_id parameters one /api/curves request may name
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class LiveDataset:
    """One DuckDB connection over the dataset, opened again when the dataset's files changed (the views of the
    present are bound to the summaries found when they were created), shared by the request threads one at a
    time."""

    def __init__(self, dataset: Dataset, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.dataset = dataset
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._version = ""
        self._checked = float("-inf")
        self._cache: dict[str, bytes] = {}  # answers for the current version

    def version(self) -> str:
        with self._lock:
            self._refresh()
            return self._version

    def answer(self, key: str, make: Callable[[duckdb.DuckDBPyConnection], bytes]) -> tuple[str, bytes]:
        """The dataset's version and ``make(connection)`` (JSON), computed once per version of the dataset for each
        ``key``: a page or script asking again while no collector wrote gets the same bytes at once. A file removed
        by a compaction mid-read makes the connection be opened again, once."""
        with self._lock:
            self._refresh()
            if key not in self._cache:
                try:
                    self._cache[key] = self._compute(make)
                except duckdb.Error:
                    # A view of the present may name a file that a compaction or a refresh replaced since the
                    # connection was opened: open it again, once.
                    self._refresh(force=True)
                    self._cache[key] = self._compute(make)
            return self._version, self._cache[key]

    def _compute(self, make: Callable[[duckdb.DuckDBPyConnection], bytes]) -> bytes:
        con = self._con
        assert con is not None
        return retry_vanished(lambda: make(con))

    def forget(self) -> None:
        """Drop the answers kept for the current version: the next ones are computed again."""
        with self._lock:
            self._cache = {}

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._con is not None and now - self._checked < self.recheck_seconds:
            return
        version = fingerprint(self.dataset)
        self._checked = now
        if force or version != self._version or self._con is None:
            con = retry_vanished(lambda: connect(self.dataset))
            if self._con is not None:
                self._con.close()
            self._con, self._version, self._cache = con, version, {}


def fingerprint(dataset: Dataset) -> str:
    """A digest of every file's name, size and time of last change under the dataset's root."""
    digest = hashlib.sha256()
    for info in sorted(dataset.listing(dataset.root), key=lambda info: info.path):
        digest.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def to_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def tasks_document(con: duckdb.DuckDBPyConnection) -> bytes:
    return json_rows(con, "SELECT * FROM tasks ORDER BY task_id")


def curves_document(con: duckdb.DuckDBPyConnection, task_ids: list[str]) -> bytes:
    return json_rows(
        con,
        "SELECT * FROM checkpoints WHERE task_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY task_id, step",
        [task_ids],
    )


def compare_document(con: duckdb.DuckDBPyConnection, by: list[str]) -> bytes:
    frame = analysis.compare(con, by)
    return to_json([{k: _plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")])


def json_rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> bytes:
    """The rows of ``sql`` as a JSON array of objects, written by DuckDB (far faster than building Python objects
    first): numbers that are not finite, which JSON has no words for, as null; times ISO 8601 in UTC."""
    relation = con.sql(sql, params=params)
    columns = ", ".join(
        _json_safe('"' + name.replace('"', '""') + '"', str(kind))
        for name, kind in zip(relation.columns, relation.types, strict=True)
    )
    rows = con.execute(f"SELECT coalesce(to_json(list(r)), '[]') FROM (SELECT {columns} FROM ({sql})) r", params)
    return str(rows.fetchall()[0][0]).encode("utf-8")


def _json_safe(column: str, kind: str) -> str:
    """An expression of ``column`` (of DuckDB type ``kind``) that DuckDB writes as valid JSON."""
    if kind in ("DOUBLE", "FLOAT"):
        return f"CASE WHEN isfinite({column}) THEN {column} END AS {column}"
    if kind.startswith("TIMESTAMP"):
        return f"strftime({column}, '%Y-%m-%dT%H:%M:%S.%fZ') AS {column}"
    if kind == 'STRUCT(metric VARCHAR, "value" DOUBLE)[]':  # the tasks view's metrics
        value = "CASE WHEN isfinite(m.value) THEN m.value END"
        return f"[{{'metric': m.metric, 'value': {value}}} FOR m IN {column}] AS {column}"
    if "DOUBLE" in kind or "FLOAT" in kind:
        return f"{column}::VARCHAR AS {column}"  # nested numbers of a kind not foreseen: as text, still valid
    return column


def _plain(value: Any) -> Any:
    if value is None or value != value:  # None, NaN, NA
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value.item() if hasattr(value, "item") else value


class App:
    """The WSGI application."""

    def __init__(self, dataset: Dataset, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.live = LiveDataset(dataset)
        self.dataset = dataset
        self.poll_seconds = poll_seconds
        self.routes = Map(
            [
                Rule("/", endpoint="page", methods=["GET", "HEAD"]),
                Rule("/api/version", endpoint="version", methods=["GET", "HEAD"]),
                Rule("/api/report", endpoint="report", methods=["GET", "HEAD"]),
                Rule("/api/tasks", endpoint="tasks", methods=["GET", "HEAD"]),
                Rule("/api/curves", endpoint="curves", methods=["GET", "HEAD"]),
                Rule("/api/compare", endpoint="compare", methods=["GET", "HEAD"]),
            ],
            strict_slashes=False,
            merge_slashes=False,
            redirect_defaults=False,
        )
        self._page = (
            explore.environment()
            .get_template("live.html")
            .render(
                version=__version__,
                location=dataset.display,
                **explore.page_parts(None, live=True, poll_seconds=poll_seconds),
            )
            .encode("utf-8")
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            if ".." in request.path or "\\" in request.path or "//" in request.path:
                raise NotFound()
            endpoint, _ = self.routes.bind_to_environ(environ).match(return_rule=False)
            response = getattr(self, f"on_{endpoint}")(request)
        except MethodNotAllowed as exc:
            response = _error(exc.description or "method not allowed", 405)
            response.headers["Allow"] = "GET, HEAD"
        except NotFound:
            response = _error("not found: the page is /, the data /api/tasks, /api/curves?task_id=ID, "
                              "/api/compare?by=COLS", 404)  # fmt: skip
        except HTTPException as exc:
            response = _error(exc.description or exc.name, exc.code or 500)
        except FtlogError as exc:
            response = _error(str(exc), 503)
        except duckdb.Error as exc:
            response = _error(f"cannot read the dataset now: {str(exc).splitlines()[0]}", 503)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"  # may be kept, but asked again (ETag) before each use
        return response(environ, start_response)  # type: ignore[no-any-return]

    def on_page(self, request: Request) -> Response:
        response = Response(self._page, mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    def on_version(self, request: Request) -> Response:
        return _json(request, "", to_json({"version": self.live.version()}))

    def on_report(self, request: Request) -> Response:
        location = self.dataset.display
        return _json(request, *self.live.answer("report", lambda con: to_json(explore.payload(con, location=location))))

    def on_tasks(self, request: Request) -> Response:
        return _json(request, *self.live.answer("tasks", tasks_document))

    def on_curves(self, request: Request) -> Response:
        task_ids = request.args.getlist("task_id")
        if not task_ids:
            raise BadRequest("name at least one task: /api/curves?task_id=ID (repeatable)")
        if len(task_ids) > MAX_TASK_IDS:
            raise BadRequest(f"at most {MAX_TASK_IDS} task_id parameters per request")
        key = "curves\0" + "\0".join(task_ids)
        return _json(request, *self.live.answer(key, lambda con: curves_document(con, task_ids)))

    def on_compare(self, request: Request) -> Response:
        text = request.args.get("by", "model,train_mode,parameter_scale")
        by = [column.strip() for column in text.split(",") if column.strip()]
        if not by or any(column not in GROUP_COLUMNS for column in by):
            raise BadRequest(f"by: comma-separated columns from {', '.join(GROUP_COLUMNS)}, not {text!r}")
        return _json(request, *self.live.answer("compare\0" + ",".join(by), lambda con: compare_document(con, by)))


def _json(request: Request, version: str, body: bytes) -> Response:
    """A JSON answer; with the dataset's version as its ETag, so a client that has it gets 304 Not Modified."""
    response = Response(body, mimetype="application/json")
    if version:
        response.set_etag(f"{version}-{hashlib.sha256(request.full_path.encode()).hexdigest()[:8]}")
        response.make_conditional(request)
    return response


def _error(message: str, status: int) -> Response:
    return Response(to_json({"error": message}), status=status, mimetype="application/json")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server_for(dataset: Dataset, host: str, port: int) -> Any:
    """A threaded WSGI server for the dataset, listening on ``host:port`` (port 0: a free port). Raises OSError when
    it cannot listen there (werkzeug alone would print and exit)."""
    listening = socket.create_server((host, port), family=select_address_family(host, port))
    try:
        return make_server(host, port, App(dataset), threaded=True, fd=listening.fileno())
    finally:
        listening.close()  # the server holds its own duplicate
