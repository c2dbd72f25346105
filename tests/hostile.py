"""A hostile server on 127.0.0.1: in front of the simulator, it answers chosen tasks badly and forwards the rest.

``HostileProxy(sim, {task_id: behaviour})`` answers DescribeFineTuningTask for ``task_id`` with ``behaviour``
(a name from ``BEHAVIOURS``, or a callable taking the handler) and every other request with the simulator's
own answer, byte for byte. Dripping behaviours send a byte every ``DRIP`` seconds for as long as the client
listens; they end when it hangs up or when the proxy closes.
"""

from __future__ import annotations

import http.server
import json
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

from ftlog.simulator import Simulator

DRIP = 0.2  # seconds between two dripped bytes
Behaviour = Callable[["Handler", bytes], None]


def gzip_bomb(size: int) -> bytes:
    """``size`` bytes of JSON-ish spaces, gzip-compressed (about a thousandth of ``size``), built in chunks."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1 << 20)
    parts = [packer.compress(b'{"result": {"pad": "')]
    parts += [packer.compress(chunk) for _ in range(size // len(chunk))]
    parts += [packer.compress(b'"}}'), packer.flush()]
    return b"".join(parts)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle_error(self) -> None:  # pragma: no cover - a client that hung up mid-drip
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        action = self.path.split("Action=", 1)[-1].split("&", 1)[0]
        proxy = self.server.proxy
        key = body.get("taskId") if action == "DescribeFineTuningTask" else action
        behaviour = proxy.behaviours.get(key) if isinstance(key, str) else None
        with proxy.lock:
            proxy.requests[key or action] += 1
        if behaviour is None:
            return self.forward(raw)
        if isinstance(behaviour, str):
            behaviour = BEHAVIOURS[behaviour]
        behaviour(self, raw)

    # -- building blocks -------------------------------------------------------------------------------------
    def forward(self, raw: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "accept-encoding")}
        answer = requests.post(f"{self.server.proxy.sim.url}{self.path}", data=raw, headers=headers, timeout=30)
        self.send(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))

    def send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.send(status, json.dumps(value).encode())

    def drip(self, data: bytes) -> None:
        """Send ``data`` a byte at a time, forever if it is long enough, until the client hangs up."""
        try:
            for i in range(len(data)):
                if self.server.proxy.closed.wait(DRIP):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
        except OSError:
            return
        finally:
            self.close_connection = True


def _deep_json(handler: Handler, raw: bytes) -> None:
    depth = 100_000
    handler.send(200, b'{"requestId": "r", "result": ' + b"[" * depth + b"]" * depth + b"}")


def _html_200(handler: Handler, raw: bytes) -> None:
    handler.send(200, b"<html><body><h1>Welcome to the portal</h1></body></html>", "text/html")


def _gzip_bomb(handler: Handler, raw: bytes) -> None:
    handler.send(200, handler.server.proxy.bomb, Content_Encoding="gzip")


def _endless_body(handler: Handler, raw: bytes) -> None:
    """A body with no length and no end: ``Connection: close`` and bytes until the client stops reading."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    chunk = b" " * 65536
    try:
        handler.wfile.write(b'{"result": {"pad": "')
        while not handler.server.proxy.closed.is_set():
            handler.wfile.write(chunk)
    except OSError:
        return


def _drip_headers(handler: Handler, raw: bytes) -> None:
    handler.drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 100_000)


def _drip_body(handler: Handler, raw: bytes) -> None:
    body = b'{"result": {"pad": "' + b" " * 50_000 + b'"}}'  # under every cap: only time ends it
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.drip(body)


def _drip_chunks(handler: Handler, raw: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.drip(b"1\r\n \r\n" * 100_000)


def console_error(code: int, message: str = "limited", log_id: int = 4242, then: int | None = None) -> Behaviour:
    """The console's error form with a 200; after ``then`` such answers, the simulator's own answer."""
    sent = Counter[str]()

    def behaviour(handler: Handler, raw: bytes) -> None:
        sent["n"] += 1
        if then is not None and sent["n"] > then:
            return handler.forward(raw)
        handler.send_json({"error_code": code, "error_msg": message, "log_id": log_id})

    return behaviour


def endless_pages(list_key: str, new_items: bool) -> Behaviour:
    """A listing whose every page offers a next marker: the simulator's first page, then the same items again
    (``new_items=False``) or one new made-up item per page."""
    pages = Counter[str]()

    def behaviour(handler: Handler, raw: bytes) -> None:
        pages["n"] += 1
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "content-length"}
        answer = requests.post(f"{handler.server.proxy.sim.url}{handler.path}", data=raw, headers=headers,
                               timeout=30).json()  # fmt: skip
        if pages["n"] > 1 and new_items:
            id_key = "jobId" if list_key == "jobList" else "taskId"
            answer["result"][list_key] = [{id_key: f"made-up-{pages['n']}"}]
        answer["result"]["pageInfo"] = {"marker": "", "maxKeys": 100, "isTruncated": True,
                                        "nextMarker": f"marker-{pages['n']}"}  # fmt: skip
        handler.send_json(answer)

    return behaviour


BEHAVIOURS: dict[str, Behaviour] = {
    "deep_json": _deep_json,
    "html_200": _html_200,
    "gzip_bomb": _gzip_bomb,
    "endless_body": _endless_body,
    "drip_headers": _drip_headers,
    "drip_body": _drip_body,
    "drip_chunks": _drip_chunks,
}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: HostileProxy


class HostileProxy:
    def __init__(self, sim: Simulator, behaviours: dict[str, Any], bomb_size: int = 200 << 20) -> None:
        self.sim = sim
        self.behaviours = behaviours
        self.requests = Counter[str]()
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.bomb = gzip_bomb(bomb_size) if "gzip_bomb" in behaviours.values() else b""
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
