"""HTTP exchanges with a total deadline and a size cap: what every network call of ftlog goes through.

requests' timeouts bound each socket operation, not the exchange: a server that drips a byte every few seconds
holds a call for as long as it likes. Here a watchdog thread shuts the connection's socket down once the call's
deadline passes, which ends any read in progress (headers, body or chunks). Bodies are read in chunks up to a cap,
and gzip/deflate is inflated here with a bounded output, so a compressed bomb never expands past the cap.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0


class TransferError(Exception):
    """No usable answer: unreachable, cut off, too large, or not complete within the deadline."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # the HTTP status, when the headers arrived
        self.retryable = retryable


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive (requests' own mapping)
    body: bytes


# -- the deadline watchdog -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Guard:
    """The sockets one call uses; shut down together when its deadline passes."""

    deadline: float
    fired: bool = False
    done: bool = False
    sockets: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            self.sockets.append(sock)
            if self.fired:
                _shutdown(sock)

    def fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            for sock in self.sockets:
                _shutdown(sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True  # the socket may go back to the pool: never shut it down from now on
            self.sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS sockets: it wakes a read blocked in another thread.
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for every pending deadline (a thread per call would cost a thread per describe)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Guard]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, guard: _Guard) -> None:
        with self._wake:
            heapq.heappush(self._heap, (guard.deadline, next(self._order), guard))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="ftlog-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)  # finished calls leave their entries behind: drop them lazily
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, _, guard = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                heapq.heappop(self._heap)
            guard.fire()


_WATCHDOG = _Watchdog()
_current = threading.local()  # the guard of the call this thread is making


def _watch_current(sock: socket.socket | None) -> None:
    guard: _Guard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard.watch(sock)


class _GuardedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch_current(self.sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:  # a pooled connection skips connect()
        _watch_current(self.sock)
        return super().getresponse(*args, **kwargs)


class _GuardedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch_current(self.sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _watch_current(self.sock)
        return super().getresponse(*args, **kwargs)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def session(pool_size: int = 10) -> requests.Session:
    """A requests session whose connections :func:`post` can cut off at a deadline."""
    new = requests.Session()
    adapter = _GuardedAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    # Only what this module can inflate with a bounded output (requests would also offer br and zstd).
    new.headers["Accept-Encoding"] = "gzip, deflate"
    return new


# -- one exchange ----------------------------------------------------------------------------------------------
def post(
    http: requests.Session,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    deadline: float,
    max_bytes: int,
    params: Mapping[str, str] | None = None,
    allow_redirects: bool = True,
    where: str = "the server",
) -> Reply:
    """POST and read the whole answer within ``deadline`` seconds, its decoded body at most ``max_bytes``.

    ``http`` must come from :func:`session`. Raises :class:`TransferError`; its message names the peer as
    ``where``, never by the URL (which may carry a token)."""
    guard = _Guard(time.monotonic() + deadline)
    late = TransferError(f"no complete answer from {where} within {deadline:g}s")
    _current.guard = guard
    _WATCHDOG.arm(guard)
    try:
        try:
            response = http.post(url, params=params, data=data, headers=dict(headers), stream=True,
                                 timeout=(min(CONNECT_TIMEOUT, deadline), deadline),
                                 allow_redirects=allow_redirects)  # fmt: skip
            try:
                body = _read_capped(response, max_bytes, where)
            finally:
                response.close()
            if guard.fired:  # a shut-down socket reads as a clean end: what arrived may be a cut-off answer
                raise late
            return Reply(response.status_code, response.headers, body)
        except TransferError:
            raise
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise late from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError):  # fmt: skip
            # The server was reached but its answer broke off (Content-Length not met, connection closed).
            raise (late if guard.fired else TransferError(f"the answer from {where} was cut off")) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise (late if guard.fired else TransferError(f"cannot reach {where} ({type(exc).__name__})")) from None
    finally:
        _current.guard = None
        guard.finish()


def _read_capped(response: requests.Response, max_bytes: int, where: str) -> bytes:
    status = response.status_code
    too_large = TransferError(f"the answer from {where} is larger than {max_bytes} bytes", status=status,
                              retryable=False)  # fmt: skip
    declared = response.headers.get("Content-Length", "")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if declared.strip().isdigit() and not encoding and int(declared) > max_bytes:
        raise too_large  # known before reading a byte
    inflater = _inflater(encoding, status)  # before reading: an unknown encoding fails at once
    out = bytearray()
    try:
        for chunk in response.raw.stream(CHUNK, decode_content=False):
            if inflater is None:
                out += chunk
            else:
                # Never more output than one byte past the cap, however much this chunk would inflate to.
                out += inflater.decompress(chunk, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise too_large
        if inflater is not None:
            out += inflater.flush()
    except zlib.error:
        raise TransferError(f"the answer from {where} is not valid {encoding} data", status=status) from None
    if len(out) > max_bytes:
        raise too_large
    return bytes(out)


def _inflater(encoding: str, status: int) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()  # zlib-wrapped, as HTTP's "deflate" means
    raise TransferError(f"the answer uses an encoding ftlog did not ask for ({encoding[:40]!r})", status=status,
                        retryable=False)  # fmt: skip
