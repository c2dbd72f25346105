"""The client against the real simulator over loopback HTTP: signing, pagination, retries, typed errors, secrets."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ftlog.client import Credentials, QianfanClient, RateLimiter, RetryPolicy, _retry_after, load_credentials
from ftlog.errors import ApiError, AuthError, ConfigError, TransportError
from ftlog.simulator import Simulator


class Sleeps(list[float]):
    """Stands in for time.sleep: records each wait instead of waiting, safe to share between threads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.append(seconds)


def _client(
    sim: Simulator, retry: RetryPolicy, *, secret: str | None = None, access: str | None = None, **kwargs: Any
) -> QianfanClient:
    credentials = Credentials(access or sim.access_key, secret or sim.secret_key)
    return QianfanClient(credentials, base_url=sim.url, rps=500, retry=retry, **kwargs)


def _any_task(sim: Simulator) -> str:
    return next(iter(sim.tasks))


def _statuses(sim: Simulator) -> list[int]:
    return [entry.status for entry in sim.log]


# -- signing --------------------------------------------------------------------------------------------------


def test_signed_calls_succeed(sim: Simulator, client: QianfanClient) -> None:
    task_id = _any_task(sim)
    answer = client.describe_task(task_id)
    assert answer.status == 200
    assert answer.result["taskId"] == task_id
    assert answer.result["jobId"] == sim.tasks[task_id].job["jobId"]
    assert answer.request_id
    assert [job["jobId"] for job in client.iter_jobs()] == [job["jobId"] for job in sim.jobs]
    assert _statuses(sim) == [200, 200]


def test_wrong_secret_is_signature_mismatch_and_not_retried(sim: Simulator, fast_retry: RetryPolicy) -> None:
    with _client(sim, fast_retry, secret="SK-wrong") as bad, pytest.raises(AuthError) as caught:
        bad.describe_task(_any_task(sim))
    assert (caught.value.status, caught.value.code) == (400, "SignatureDoesNotMatch")
    assert _statuses(sim) == [400]


def test_unknown_access_key_is_403_and_not_retried(sim: Simulator, fast_retry: RetryPolicy) -> None:
    with _client(sim, fast_retry, access="AK-nobody") as bad, pytest.raises(AuthError) as caught:
        bad.describe_task(_any_task(sim))
    assert (caught.value.status, caught.value.code) == (403, "InvalidAccessKeyId")
    assert _statuses(sim) == [403]


# -- pagination -----------------------------------------------------------------------------------------------


def test_every_page_of_a_large_job_is_walked(fast_retry: RetryPolicy) -> None:
    with Simulator(seed=3, jobs=1, tasks_per_job=260) as sim, _client(sim, fast_retry) as client:
        job_id = sim.jobs[0]["jobId"]
        expected = sim.job_task_ids(job_id)
        tasks = list(client.iter_tasks(job_id))
        log = list(sim.log)
    ids = [task["taskId"] for task in tasks]
    assert len(set(ids)) == 260
    assert ids == expected
    assert [entry.action for entry in log] == ["DescribeFineTuningTasks"] * 3
    assert [entry.body.get("maxKeys") for entry in log] == [100, 100, 100]
    assert [entry.body.get("marker") for entry in log] == [None, expected[100], expected[200]]
    assert all(entry.body["jobId"] == job_id for entry in log)


def test_every_page_of_jobs_is_walked(fast_retry: RetryPolicy) -> None:
    with Simulator(seed=4, jobs=205, tasks_per_job=0) as sim, _client(sim, fast_retry) as client:
        jobs = list(client.iter_jobs())
        log = list(sim.log)
        expected = [job["jobId"] for job in sim.jobs]
    assert [job["jobId"] for job in jobs] == expected
    assert [entry.body.get("marker") for entry in log] == [None, expected[100], expected[200]]


@contextmanager
def _json_server(answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[str]:
    """A minimal API stand-in: ``answer(request body)`` is the ``result`` of every reply."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            payload = json.dumps({"requestId": "r", "result": answer(body)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _repeating_marker_server(requests_seen: list[dict[str, Any]]) -> Any:
    """A broken server: every page says 'more after task-a', forever."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        requests_seen.append(body)
        return {"taskList": [{"taskId": "task-a"}], "pageInfo": {"isTruncated": True, "nextMarker": "task-a"}}

    return _json_server(answer)


@pytest.mark.timeout(20)
def test_a_repeated_marker_ends_pagination(fast_retry: RetryPolicy) -> None:
    seen: list[dict[str, Any]] = []
    with (
        _repeating_marker_server(seen) as url,
        QianfanClient(Credentials("ak", "sk"), base_url=url, rps=500, retry=fast_retry) as client,
    ):
        tasks = list(client.iter_tasks("job-x"))
    assert tasks == [{"taskId": "task-a"}]
    assert [body.get("marker") for body in seen] == [None, "task-a"]


# -- retries --------------------------------------------------------------------------------------------------


def test_429_and_500_are_retried_with_the_same_request(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.script = ["429", "500"]
    task_id = _any_task(sim)
    sleeps = Sleeps()
    with _client(sim, fast_retry, sleep=sleeps) as client:
        assert client.describe_task(task_id).result["taskId"] == task_id
    assert _statuses(sim) == [429, 500, 200]
    assert all(entry.body == {"taskId": task_id} for entry in sim.log)
    assert len(sleeps) == 2
    assert 0 <= sleeps[1] <= fast_retry.backoff * 2


def test_retry_after_is_honoured(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.retry_after = 7.5
    sim.faults.script = ["429"]
    sleeps = Sleeps()
    with _client(sim, fast_retry, sleep=sleeps) as client:
        client.describe_task(_any_task(sim))
    assert sleeps == [7.5]
    assert _statuses(sim) == [429, 200]


def test_persistent_500_gives_up_after_the_attempt_budget(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.script = ["500"] * fast_retry.attempts
    sleeps = Sleeps()
    with _client(sim, fast_retry, sleep=sleeps) as client, pytest.raises(ApiError) as caught:
        client.describe_task(_any_task(sim))
    assert (caught.value.status, caught.value.code) == (500, "InternalError")
    assert _statuses(sim) == [500] * fast_retry.attempts
    assert len(sleeps) == fast_retry.attempts - 1


def test_unknown_task_is_404_and_not_retried(sim: Simulator, client: QianfanClient) -> None:
    with pytest.raises(ApiError) as caught:
        client.describe_task("task-doesnotexist")
    error = caught.value
    assert not isinstance(error, AuthError)
    assert (error.status, error.code) == (404, "ResourceNotFound")
    assert not error.retryable
    assert _statuses(sim) == [404]


def test_html_502_is_an_api_error_and_retried(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.script = ["html"]
    with _client(sim, fast_retry, sleep=Sleeps()) as client:
        client.describe_task(_any_task(sim))
    assert _statuses(sim) == [502, 200]

    sim.faults.script = ["html"] * fast_retry.attempts
    with _client(sim, fast_retry, sleep=Sleeps()) as client, pytest.raises(ApiError) as caught:
        client.describe_task(_any_task(sim))
    error = caught.value
    assert type(error) is ApiError
    assert not isinstance(error, ValueError)  # never a JSONDecodeError leaking out
    assert error.status == 502
    assert "non-JSON answer" in error.message
    assert _statuses(sim)[2:] == [502] * fast_retry.attempts


def test_connection_reset_is_retried(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.script = ["reset"]
    sleeps = Sleeps()
    with _client(sim, fast_retry, sleep=sleeps) as client:
        client.describe_task(_any_task(sim))
    assert [entry.action for entry in sim.log] == ["reset", "DescribeFineTuningTask"]
    assert len(sleeps) == 1


def test_slow_answers_time_out_into_transport_error(sim: Simulator, fast_retry: RetryPolicy) -> None:
    sim.faults.slow_seconds = 0.5
    sim.faults.script = ["slow"] * fast_retry.attempts
    sleeps = Sleeps()
    with _client(sim, fast_retry, sleep=sleeps, timeout=0.1) as client, pytest.raises(TransportError) as caught:
        client.describe_task(_any_task(sim))
    assert "no complete answer" in caught.value.message
    assert sim.faults.script == []  # every attempt reached the server, and no more than the budget
    assert len(sleeps) == fast_retry.attempts - 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_unreachable_endpoint_is_transport_error(fast_retry: RetryPolicy) -> None:
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{_closed_port()}"
    with (
        QianfanClient(Credentials("ak", "sk"), base_url=url, retry=fast_retry, sleep=sleeps, timeout=2) as client,
        pytest.raises(TransportError) as caught,
    ):
        client.describe_task("task-x")
    assert "cannot reach" in caught.value.message
    assert caught.value.status is None
    assert len(sleeps) == fast_retry.attempts - 1


# -- rate limit -----------------------------------------------------------------------------------------------


def _hammer(threads: int, calls: int, work: Any) -> None:
    workers = [threading.Thread(target=lambda: [work() for _ in range(calls)]) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_rate_limiter_gives_every_thread_its_own_slot() -> None:
    # A frozen clock: every wait() is "at the same instant", so the limiter must queue them 1/rps apart.
    sleeps = Sleeps()
    limiter = RateLimiter(10, clock=lambda: 1000.0, sleep=sleeps)
    _hammer(4, 5, limiter.wait)
    assert sorted(sleeps) == pytest.approx([k / 10 for k in range(1, 20)])


def test_client_requests_pass_through_one_shared_limiter(sim: Simulator, client: QianfanClient) -> None:
    sleeps = Sleeps()
    client.limiter = RateLimiter(20, clock=lambda: 1000.0, sleep=sleeps)
    task_id = _any_task(sim)
    _hammer(3, 4, lambda: client.describe_task(task_id))
    assert len(sim.log) == 12
    assert sorted(sleeps) == pytest.approx([k / 20 for k in range(1, 12)])


# -- secrets --------------------------------------------------------------------------------------------------


def test_credentials_never_show_the_secret() -> None:
    credentials = Credentials("AK-visible", "SK-hidden-4f1e")
    for text in (repr(credentials), str(credentials), f"{credentials}", f"{[credentials]}"):
        assert "SK-hidden-4f1e" not in text
        assert "AK-visible" in text
    client = QianfanClient(credentials, base_url="http://127.0.0.1:1")
    assert "SK-hidden-4f1e" not in repr(client)
    client.close()


def test_failed_calls_never_show_the_secret(
    sim: Simulator, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "SK-must-not-leak-93c1"
    errors: list[ApiError] = []
    with _client(sim, fast_retry, secret=secret, sleep=Sleeps()) as client:
        with pytest.raises(AuthError) as caught:
            client.describe_task(_any_task(sim))
        errors.append(caught.value)
    unreachable = f"http://127.0.0.1:{_closed_port()}"
    with (
        QianfanClient(Credentials("ak", secret), base_url=unreachable, retry=fast_retry, sleep=Sleeps()) as client,
        pytest.raises(TransportError) as caught_transport,
    ):
        client.describe_task("task-x")
    errors.append(caught_transport.value)
    for error in errors:
        assert secret not in str(error)
        assert secret not in repr(error)
        assert all(secret not in str(value) for value in vars(error).values())
    assert caplog.records  # the retries were logged ...
    assert secret not in caplog.text  # ... without the secret


# -- credentials from the environment -------------------------------------------------------------------------


def test_load_credentials_reads_dotenv_and_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QIANFAN_ACCESS_KEY", raising=False)
    monkeypatch.delenv("QIANFAN_SECRET_KEY", raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# Qianfan IAM keys\n"
        'export QIANFAN_ACCESS_KEY="ak-from-file"\n'
        "\n"
        "QIANFAN_SECRET_KEY = 'sk from file'\n"
        "NOT A SETTING\n",
        encoding="utf-8",
    )
    dotenv.chmod(0o600)
    assert load_credentials({}) == Credentials("ak-from-file", "sk from file")
    assert load_credentials({"QIANFAN_ACCESS_KEY": "ak-env"}) == Credentials("ak-env", "sk from file")
    monkeypatch.setenv("QIANFAN_SECRET_KEY", "sk-env")
    assert load_credentials() == Credentials("ak-from-file", "sk-env")


def test_world_readable_dotenv_is_flagged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    dotenv = tmp_path / ".env"
    dotenv.write_text("QIANFAN_ACCESS_KEY=a\nQIANFAN_SECRET_KEY=b\n", encoding="utf-8")
    dotenv.chmod(0o644)
    load_credentials({})
    assert "chmod 600" in caplog.text
    assert "QIANFAN_SECRET_KEY=b" not in caplog.text


def test_missing_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="QIANFAN_SECRET_KEY"):
        load_credentials({})
    with pytest.raises(ConfigError):
        load_credentials({"QIANFAN_ACCESS_KEY": "ak-only", "QIANFAN_SECRET_KEY": "  "})


def test_only_transient_failures_are_retryable() -> None:
    assert TransportError("no answer").retryable
    assert ApiError("x", status=429).retryable and ApiError("x", status=503).retryable
    assert not ApiError("x", status=400).retryable
    assert not ApiError("malformed result, status unknown").retryable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.25", 0.25),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_forms(value: str, expected: float | None) -> None:
    assert _retry_after({"retry-after": value}) == expected


def _tasks(*ids: str) -> list[dict[str, str]]:
    return [{"taskId": i} for i in ids]


@pytest.mark.parametrize(
    "pages",
    [
        # isTruncated sent as text
        {
            None: {"taskList": _tasks("a", "b"), "pageInfo": {"isTruncated": "true", "nextMarker": "c"}},
            "c": {"taskList": _tasks("c"), "pageInfo": {"isTruncated": "false", "nextMarker": "c"}},
        },
        # no isTruncated at all: a nextMarker means more
        {
            None: {"taskList": _tasks("a", "b"), "pageInfo": {"nextMarker": "c"}},
            "c": {"taskList": _tasks("c"), "pageInfo": {}},
        },
        # nextMarker names the last item returned, and the next page starts with it again
        {
            None: {"taskList": _tasks("a", "b"), "pageInfo": {"isTruncated": True, "nextMarker": "b"}},
            "b": {"taskList": _tasks("b", "c"), "pageInfo": {"isTruncated": False}},
        },
    ],
    ids=["text-flags", "no-flag", "overlapping-pages"],
)
def test_odd_but_legal_pagination(pages: dict[str | None, dict[str, Any]], fast_retry: RetryPolicy) -> None:
    with (
        _json_server(lambda body: pages[body.get("marker")]) as url,
        QianfanClient(Credentials("ak", "sk"), base_url=url, rps=500, retry=fast_retry) as client,
    ):
        assert [t["taskId"] for t in client.iter_tasks("job-x")] == ["a", "b", "c"]
