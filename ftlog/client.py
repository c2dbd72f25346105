"""HTTP client for Qianfan's fine-tuning v2 management API.

One pooled session, a shared requests-per-second cap, bounded retries with jittered exponential backoff (honouring
``Retry-After``), typed errors, and generators that walk every page of the list actions.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from . import auth, transport
from .config import ATTEMPT_SECONDS, CALL_SECONDS, DEFAULT_BASE_URL, DEFAULT_RPS, MAX_BYTES
from .config import Credentials as Credentials  # where callers of the client have always found them
from .config import load_credentials as load_credentials
from .errors import ApiError, AuthError, ConfigError, ListingTruncated, TransportError
from .redact import redact

log = logging.getLogger(__name__)

API_PATH = "/v2/finetuning"
PAGE_SIZE = 100  # the documented maximum of maxKeys
MAX_PAGES = 1000  # a listing stops after this many pages (100,000 jobs or tasks) with a warning ...
LIST_SECONDS = 300.0  # ... or after this long
STALE_PAGES = 3  # ... or after this many pages in a row that list nothing new (a server looping on markers)
MAX_DEPTH = 64  # the deepest JSON accepted; API answers nest four or five levels


class RateLimiter:
    """Space requests at least ``1/rps`` seconds apart, across every thread that shares this limiter."""

    def __init__(
        self,
        rps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rps <= 0:
            raise ConfigError(f"requests per second must be positive, got {rps}")
        self.interval = 1.0 / rps
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        # The lock is held through the sleep and the next slot counts from when this caller actually goes: a thread
        # that wakes late then delays the next request. Reserving slots and sleeping outside the lock let requests
        # bunch up behind a late wake-up (up to 212 in one second at a 200/s cap, with 64 threads).
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            if slot > now:
                self._sleep(slot - now)
            self._next = max(slot, self._clock()) + self.interval


@dataclass
class RetryPolicy:
    attempts: int = 5  # total tries of one call
    backoff: float = 0.5  # first backoff, doubled each retry, full jitter
    max_backoff: float = 20.0
    total: float = CALL_SECONDS  # seconds one call may take, retries and waits included


@dataclass
class Answer:
    result: Any
    request_id: str | None
    status: int


class QianfanClient:
    """Calls ``POST {base_url}/v2/finetuning?Action=...`` signed with bce-auth-v1.

    >>> client = QianfanClient(Credentials("ak", "sk"), base_url="http://127.0.0.1:8080")  # doctest: +SKIP
    >>> client.describe_task("task-0tgmn4a7h4i6").result["runStatus"]  # doctest: +SKIP
    'Running'
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str = DEFAULT_BASE_URL,
        rps: float = DEFAULT_RPS,
        timeout: float = ATTEMPT_SECONDS,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
        max_bytes: int = MAX_BYTES,
        max_pages: int = MAX_PAGES,
        list_seconds: float = LIST_SECONDS,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"invalid API base URL {redact(base_url)!r}: expected http(s)://host[:port]")
        self.credentials = credentials
        # Without any user:password@ part: ftlog signs with AK/SK, and the URL is shown in messages.
        host = parts.netloc.rpartition("@")[2]
        self.base_url = f"{parts.scheme}://{host}{parts.path}"
        self._host = host
        self._path = parts.path + API_PATH
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rps)
        self._sleep = sleep
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.list_seconds = list_seconds
        self.session = transport.session(pool_size)

    def __repr__(self) -> str:
        return f"QianfanClient(base_url={self.base_url!r}, access_key={self.credentials.access_key!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> QianfanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call ---------------------------------------------------------------------------------------------
    def _sign(self, action: str, body: bytes) -> dict[str, str]:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        headers = {
            "Host": self._host,
            "Content-Type": "application/json",
            "x-bce-date": now.strftime(auth.TIME_FORMAT),
        }
        headers["Authorization"] = auth.sign(
            self.credentials.access_key,
            self.credentials.secret_key,
            "POST",
            self._path,
            [("Action", action)],
            headers,
            timestamp=now,
            signed_headers=["content-type", "host", "x-bce-date"],
        )
        return headers

    def call(self, action: str, body: Mapping[str, Any], *, retry: bool = True) -> Answer:
        """One API call with retries. Raises :class:`ApiError` (or a subclass) when it cannot succeed.

        ``retry=False`` sends the request once, whatever fails: for an action that must never happen twice (a
        create), since an answer lost on the way back does not mean the server did nothing."""
        payload = json.dumps(body, ensure_ascii=False).encode()
        url = f"{self.base_url}{API_PATH}"
        deadline = time.monotonic() + self.retry.total
        attempts = self.retry.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            # Each attempt gets at most the time the call has left, so a call never outlives its total.
            error, wait = self._attempt(action, url, payload, max(0.05, min(self.timeout, deadline - time.monotonic())))
            if isinstance(error, Answer):
                return error
            remaining = deadline - time.monotonic()
            if not error.retryable or attempt == attempts:
                raise error
            if wait is None:
                wait = random.uniform(0, min(self.retry.max_backoff, self.retry.backoff * 2 ** (attempt - 1)))
            if wait > remaining:
                raise error
            log.info("%s failed (%s); retry %d in %.2fs", action, error.message, attempt, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, action: str, url: str, payload: bytes, deadline: float
    ) -> tuple[Answer | ApiError, float | None]:
        self.limiter.wait()
        try:
            reply = transport.post(self.session, url, params={"Action": action}, data=payload,
                                   headers=self._sign(action, payload), deadline=deadline,
                                   max_bytes=self.max_bytes, where=self.base_url)  # fmt: skip
        except transport.TransferError as exc:
            message = f"{action}: {exc.message}"
            if exc.status is None:
                return TransportError(message, retryable=exc.retryable), None
            return ApiError(message, status=exc.status, retryable=exc.retryable), None
        try:
            body = parse_body(reply.body)
        except TooDeep as exc:
            return ApiError(f"{action}: HTTP {reply.status}: {exc}", status=reply.status, retryable=False), None
        headers = dict(reply.headers)
        if reply.status == 200 and isinstance(body, dict) and "result" in body and not _console_error(body):
            request_id = body.get("requestId") or reply.headers.get("x-bce-request-id")
            return Answer(body["result"], str(request_id) if request_id else None, 200), None
        error = ApiError.from_response(reply.status, body, headers, action)
        if reply.status == 200 and error.code is None:
            if isinstance(body, dict):
                error = ApiError(f"{action}: answer has no 'result' field", status=200, request_id=error.request_id)
            else:  # a page of a proxy or portal in front of the API: another try may pass; recorded with its 200
                error = ApiError(error.message, status=200, request_id=error.request_id, retryable=True)
        return error, _retry_after(headers)

    # -- actions ----------------------------------------------------------------------------------------------
    def describe_task(self, task_id: str) -> Answer:
        answer = self.call("DescribeFineTuningTask", {"taskId": task_id})
        if not isinstance(answer.result, dict):
            raise ApiError(
                f"DescribeFineTuningTask: result for {task_id} is {type(answer.result).__name__}, not an object",
                status=answer.status,
                request_id=answer.request_id,
            )
        return answer

    def stop_task(self, task_id: str) -> Answer:
        """StopFineTuningTask. Retried like a read: stopping a task twice stops it once. The result is ``true``;
        anything else (``false``, which a server may answer for a task it cannot stop) is an error."""
        answer = self.call("StopFineTuningTask", {"taskId": task_id})
        if answer.result is not True:
            raise ApiError(
                f"StopFineTuningTask: the answer is {json.dumps(answer.result)[:100]}, not true: {task_id} was not "
                "stopped",
                status=answer.status,
                request_id=answer.request_id,
                retryable=False,
            )
        return answer

    def create_task(self, body: Mapping[str, Any]) -> Answer:
        """CreateFineTuningTask, sent once and never retried: a retry after a lost answer could start a second
        paid run. The result is ``{"jobId": ..., "taskId": ...}``."""
        answer = self.call("CreateFineTuningTask", body, retry=False)
        if not isinstance(answer.result, dict) or not isinstance(answer.result.get("taskId"), str):
            raise ApiError(
                "CreateFineTuningTask: the answer names no taskId; the task may have been created",
                status=answer.status,
                request_id=answer.request_id,
            )
        return answer

    def iter_jobs(self) -> Iterator[dict[str, Any]]:
        """Every job of the account, walking all pages."""
        yield from self._paginate("DescribeFineTuningJobs", {}, "jobList", "jobId")

    def iter_tasks(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every task of one job, walking all pages."""
        yield from self._paginate("DescribeFineTuningTasks", {"jobId": job_id}, "taskList", "taskId")

    def _paginate(self, action: str, body: dict[str, Any], list_key: str, id_key: str) -> Iterator[dict[str, Any]]:
        """Yield each listed item once. A listing that does not end within ``max_pages`` pages or ``list_seconds``
        seconds, or whose pages stop bringing new items, raises :class:`ListingTruncated` after yielding what
        it found, so those items are still collected."""
        seen_markers: set[str] = set()
        seen_ids: set[str] = set()
        marker: str | None = None
        began = time.monotonic()
        stale = 0
        for page_number in itertools.count(1):
            request = {**body, "maxKeys": PAGE_SIZE}
            if marker:
                request["marker"] = marker
            result = self.call(action, request).result
            if not isinstance(result, dict):
                raise ApiError(f"{action}: result is {type(result).__name__}, not an object")
            items = result.get(list_key) or []
            if not isinstance(items, list):
                raise ApiError(f"{action}: '{list_key}' is {type(items).__name__}, not a list")
            before = len(seen_ids)
            for item in items:
                item_id = item.get(id_key) if isinstance(item, dict) else None
                if isinstance(item_id, str) and item_id not in seen_ids:
                    seen_ids.add(item_id)
                    yield item
            stale = stale + 1 if len(seen_ids) == before else 0
            page = result.get("pageInfo")
            page = page if isinstance(page, dict) else {}
            next_marker = page.get("nextMarker")
            truncated = page.get("isTruncated")
            if isinstance(truncated, str):  # a lenient server may send "true"/"false" as text
                truncated = truncated.strip().lower() in ("true", "1")
            more = bool(truncated) if truncated is not None else bool(next_marker)
            if not more or not isinstance(next_marker, str) or not next_marker:
                return
            if next_marker in seen_markers:
                log.warning("%s: the server repeated marker %r; stopping pagination there", action, next_marker[:80])
                return
            why = None
            if stale >= STALE_PAGES:
                why = f"{stale} pages in a row listed nothing new"
            elif page_number >= self.max_pages:
                why = f"the page budget of {self.max_pages} pages is spent"
            elif time.monotonic() - began >= self.list_seconds:
                why = f"the time budget of {self.list_seconds:g}s is spent"
            if why:
                raise ListingTruncated(
                    f"{action}: stopped after {page_number} pages ({why}) though the server offers more; "
                    f"collecting the {len(seen_ids)} listed so far"
                )
            seen_markers.add(next_marker)
            marker = next_marker
        raise AssertionError("unreachable")  # pragma: no cover


class TooDeep(ValueError):
    """JSON nested deeper than any API answer: later steps (normalising, storing ``raw``) walk values
    recursively, so such an answer is refused here, in one place."""


def parse_body(raw: bytes) -> Any:
    """The answer as JSON, or as text when it is not JSON (an HTML page). Raises :class:`TooDeep`."""
    try:
        parsed = json.loads(raw)
    except RecursionError:  # past the interpreter's own limit
        raise TooDeep(f"the answer's JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        return raw.decode("utf-8", "replace")
    if _deeper_than(parsed, MAX_DEPTH):
        raise TooDeep(f"the answer's JSON nests deeper than {MAX_DEPTH} levels")
    return parsed


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` containers, found without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _console_error(body: dict[str, Any]) -> bool:
    """The console's other error form, ``{"error_code": 18, "error_msg": ..., "log_id": ...}``, sent with a 200."""
    return body.get("error_code") not in (None, 0, "0", "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are UTC anyway
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


__all__ = [
    "Answer",
    "AuthError",
    "Credentials",
    "QianfanClient",
    "RateLimiter",
    "RetryPolicy",
    "load_credentials",
]
