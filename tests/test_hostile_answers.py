"""Hostile answers over real loopback HTTP: each bad answer fails only its own task's describe, as an error poll,
and the round goes on for every other task. Dripping servers are cut off at the call's total deadline; listings
that never end stop at their budget; webhooks that drip are cut off within the delivery budget.

No test times anything: a dripping server would hold a call forever, so a round that ends at all (within the
test's timeout) proves the deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import SECRET_AK, SECRET_SK
from event_story import T0, Clock, play
from hostile import HostileProxy, console_error, endless_pages

from ftlog.cli import cli
from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.collect import Selection, collect_round
from ftlog.errors import ApiError
from ftlog.notify import Notifier, Webhook
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

pytestmark = pytest.mark.timeout(120)
ATTEMPTS = 3


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=3, speed=240, jobs=2, tasks_per_job=4, credentials={SECRET_AK: SECRET_SK}) as server:
        yield server


def client_for(url: str, *, timeout: float = 1.0, total: float = 2.5, **options: Any) -> QianfanClient:
    retry = RetryPolicy(attempts=ATTEMPTS, backoff=0.01, max_backoff=0.02, total=total)
    return QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=url, rps=500, retry=retry, timeout=timeout,
                         **options)  # fmt: skip


def polls(dataset: Dataset) -> dict[str, tuple[Any, ...]]:
    with connect(dataset) as con:
        found = con.execute("SELECT task_id, outcome, http_status, error_code, error_message, request_id FROM polls")
        return {row[0]: row[1:] for row in found.fetchall()}


def collect_with(sim: Simulator, behaviours: dict[str, Any], dataset: Dataset, **client_options: Any) -> Any:
    """One round over every task of the simulator, the tasks in ``behaviours`` answered by the hostile proxy."""
    with HostileProxy(sim, behaviours) as proxy, client_for(proxy.url, **client_options) as client:
        result = collect_round(client, dataset, Selection(task_ids=tuple(sim.tasks)), concurrency=4)
        return result, proxy


def assert_only_these_failed(dataset: Dataset, sim: Simulator, bad: set[str]) -> dict[str, tuple[Any, ...]]:
    found = polls(dataset)
    assert set(found) == set(sim.tasks)  # every describe is on record
    assert {task for task, (outcome, *_) in found.items() if outcome == "error"} == bad
    assert all(found[task][0] == "changed" for task in set(sim.tasks) - bad)
    with connect(dataset) as con:
        described = {row[0] for row in con.execute("SELECT task_id FROM tasks").fetchall()}
    assert described == set(sim.tasks) - bad
    return found


@pytest.mark.parametrize(
    ("behaviour", "status", "fragment"),
    [
        pytest.param("deep_json", 200, "nests deeper than", id="deep_json"),
        pytest.param("html_200", 200, "non-JSON answer: <html><body><h1>Welcome to the portal", id="html_200"),
        pytest.param("gzip_bomb", 200, "larger than 1048576 bytes", id="gzip_bomb"),
        pytest.param("endless_body", 200, "larger than 1048576 bytes", id="endless_body"),
        pytest.param("drip_headers", None, "no complete answer", id="drip_headers"),
        pytest.param("drip_body", None, "no complete answer", id="drip_body"),
        pytest.param("drip_chunks", None, "no complete answer", id="drip_chunks"),
    ],
)
def test_a_hostile_answer_fails_only_its_task(
    behaviour: str, status: int | None, fragment: str, sim: Simulator, dataset: Dataset
) -> None:
    bad = sorted(sim.tasks)[1]
    result, _ = collect_with(sim, {bad: behaviour}, dataset, max_bytes=1 << 20)
    assert (result.errors, result.changed) == (1, len(sim.tasks) - 1)
    _, http_status, _, message, _ = assert_only_these_failed(dataset, sim, {bad})[bad]
    assert http_status == status
    assert fragment in message, message


def test_a_gzip_bomb_is_never_inflated_past_the_cap(sim: Simulator) -> None:
    """200 MB of JSON in a 200 KB gzip answer: the client holds at most about the cap in memory."""
    task = sorted(sim.tasks)[0]
    with HostileProxy(sim, {task: "gzip_bomb"}) as proxy, client_for(proxy.url, max_bytes=4 << 20) as client:
        assert len(proxy.bomb) < 1 << 20
        tracemalloc.start()
        try:
            with pytest.raises(ApiError) as caught:
                client.describe_task(task)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "larger than 4194304 bytes" in caught.value.message and caught.value.status == 200
    assert not caught.value.retryable and proxy.requests[task] == 1  # the same answer would come again
    assert peak < 24 << 20, peak


def test_an_answer_within_the_cap_is_read_whole_and_compressed_answers_are_inflated(
    sim: Simulator, dataset: Dataset
) -> None:
    task = sorted(sim.tasks)[0]
    with client_for(sim.url) as plain:
        expected = plain.describe_task(task).result

    def gzipped(handler: Any, raw: bytes) -> None:
        import gzip

        body = gzip.compress(json.dumps({"requestId": "gz-1", "result": expected}).encode())
        handler.send(200, body, Content_Encoding="gzip")

    with HostileProxy(sim, {task: gzipped}) as proxy, client_for(proxy.url) as client:
        answer = client.describe_task(task)
    assert answer.result == expected and answer.request_id == "gz-1"


def test_the_console_error_form_is_an_error_retried_for_the_sdk_codes(sim: Simulator, dataset: Dataset) -> None:
    throttled, overloaded, refused = sorted(sim.tasks)[:3]
    behaviours = {
        throttled: console_error(18, "QPS limit reached", then=1),  # retried, then answered
        overloaded: console_error(336100, "server high load", log_id=987654321),  # retried until the budget ends
        refused: console_error(110, "access token invalid"),  # not a code worth another try
    }
    result, proxy = collect_with(sim, behaviours, dataset)
    assert result.errors == 2
    found = assert_only_these_failed(dataset, sim, {overloaded, refused})
    assert found[overloaded] == ("error", 200, "336100", found[overloaded][3], "987654321")
    assert "server high load" in found[overloaded][3]
    assert found[refused][:3] == ("error", 200, "110") and "access token invalid" in found[refused][3]
    assert (proxy.requests[throttled], proxy.requests[overloaded], proxy.requests[refused]) == (2, ATTEMPTS, 1)


@pytest.mark.parametrize("new_items", [False, True], ids=["same-items", "new-items"])
def test_endless_pagination_stops_at_its_budget_and_collects_what_it_listed(
    new_items: bool, sim: Simulator, dataset: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that offers a new nextMarker on every page: listing every job stops at the budget (5 pages
    here; 3 pages in a row that list nothing new stop it sooner), with a warning, and every job and task it
    listed is still collected."""
    behaviours = {"DescribeFineTuningJobs": endless_pages("jobList", new_items)}
    with HostileProxy(sim, behaviours) as proxy, client_for(proxy.url, max_pages=5) as client:
        result = collect_round(client, dataset, Selection(all_jobs=True), concurrency=4)
    pages = proxy.requests["DescribeFineTuningJobs"]
    assert pages == (5 if new_items else 4)
    truncated, *made_up = result.discovery_errors  # the made-up jobs cannot be listed: errors of their own
    assert "stopped after" in truncated.message and len(made_up) == (pages - 1 if new_items else 0)
    assert "stopped after" in caplog.text
    found = polls(dataset)
    assert set(sim.tasks) <= set(found)
    assert all(found[task][0] == "changed" for task in sim.tasks)


def test_endless_pagination_through_the_cli_exits_3_with_a_warning(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = sim.jobs[0]["jobId"]
    behaviours = {"DescribeFineTuningTasks": endless_pages("taskList", new_items=False)}
    with HostileProxy(sim, behaviours) as proxy:
        monkeypatch.setenv("QIANFAN_ACCESS_KEY", SECRET_AK)
        monkeypatch.setenv("QIANFAN_SECRET_KEY", SECRET_SK)
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", proxy.url)
        data = tmp_path / "data"
        result = CliRunner().invoke(cli, ["collect", "--job", job, "--data", str(data), "-q"])
    assert result.exit_code == 3, result.output
    assert "stopped after 4 pages (3 pages in a row listed nothing new)" in caplog.text  # a warning on stderr
    job_tasks = {task_id for task_id, task in sim.tasks.items() if task.job["jobId"] == job}
    assert set(polls(Dataset(data))) == job_tasks


def test_a_webhook_that_drips_its_reply_is_cut_off(sim: Simulator, client: QianfanClient, dataset: Dataset) -> None:
    """The receiver accepts the event and drips its reply: the attempt ends at its deadline, the failure is
    recorded, and the event waits for the next round (delivery keeps to its budget per round)."""
    play(sim, client, dataset, upto=55)  # four events to deliver
    with HostileProxy(sim, {"/hook": "drip_body"}) as receiver:
        notifier = Notifier([Webhook(f"{receiver.url}/hook")], timeout=0.5, attempts=2, backoff=0.01, deadline=2)
        report = notifier.deliver(dataset, now=Clock(T0 + timedelta(hours=1)))
        assert 1 <= receiver.requests["/hook"] <= 2  # the target failed: its other events wait
    assert (report.delivered, report.failed, report.waiting) == (0, 1, 4)
    with connect(dataset) as con:
        failures = con.execute("SELECT outcome, attempts, error FROM deliveries").fetchall()
    assert [(outcome, attempts) for outcome, attempts, _ in failures] == [("failed", 2)]
    assert failures[0][2].startswith("no complete answer from the receiver within")


def test_a_tls_server_that_drips_is_cut_off_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS (as the real API is), the deadline ends a dripped answer just the same."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            with contextlib.suppress(OSError), context.wrap_socket(listener.accept()[0], server_side=True) as conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b"X")

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        retry = RetryPolicy(attempts=1, total=1.0)
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        try:
            with (
                QianfanClient(Credentials("ak", "sk"), base_url=url, retry=retry, timeout=1.0) as client,
                pytest.raises(ApiError) as caught,
            ):
                client.describe_task("task-tls")
        finally:
            stop.set()
            server.join(timeout=10)
    assert "no complete answer" in caught.value.message and caught.value.status is None


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path
