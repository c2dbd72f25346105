"""Notifications: a real webhook receiver on 127.0.0.1 gets each event once, through failures, restarts and backlogs."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from conftest import SECRET_SK
from event_story import BASE, EXPECTED, JOB, T0, A, Clock, play

from ftlog.cli import cli
from ftlog.client import QianfanClient
from ftlog.collect import Selection, collect_round
from ftlog.errors import ConfigError
from ftlog.notify import Command, Notifier, Webhook, delivered, payload, recent_events, targets_from
from ftlog.simulator import Simulator
from ftlog.store import Dataset
from ftlog.views import connect

TOKEN = "tok3n5ecret9d2"  # chat robots put their token in the URL: it must never be stored


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a hung request's client is gone by the time it is answered


class Receiver:
    """A webhook receiver. ``plan`` holds what to do with the next requests: an HTTP status, ``"hang"`` (answer
    only after the client gave up) or a JSON answer with HTTP 200; after the plan, every request gets 200."""

    def __init__(self) -> None:
        self.plan: deque[int | str | dict[str, Any]] = deque()
        self.acknowledged: list[dict[str, Any]] = []  # bodies answered with a plain 200
        self.requests: list[tuple[str, dict[str, Any]]] = []  # every request: path and body
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.requests.append((self.path, body))
                    action = receiver.plan.popleft() if receiver.plan else 200
                if action == "hang":
                    receiver.release.wait(30)
                    return  # never answered: the client timed out long ago
                answer = json.dumps(action if isinstance(action, dict) else {"ok": True}).encode()
                if action == 200:
                    with receiver.lock:
                        receiver.acknowledged.append(body)
                self.send_response(200 if isinstance(action, dict) else int(action))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}?key={TOKEN}"

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(body["event_id"] for body in self.acknowledged)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


def view(dataset: Dataset, sql: str) -> list[tuple[Any, ...]]:
    con = connect(dataset)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def event_ids(dataset: Dataset) -> set[str]:
    return {row[0] for row in view(dataset, "SELECT event_id FROM events")}


def fast(*targets: Any, **options: Any) -> Notifier:
    return Notifier(list(targets), **{"timeout": 0.5, "backoff": 0.01, "deadline": 20, **options})


def test_every_event_of_a_story_reaches_the_webhook_once(
    sim: Simulator, client: QianfanClient, dataset: Dataset, receiver: Receiver
) -> None:
    notifier = fast(Webhook(receiver.url()))
    results = play(sim, client, dataset, notifier=notifier)
    assert receiver.ids() == Counter(event_ids(dataset)) and len(receiver.acknowledged) == len(EXPECTED)
    assert all(r.delivery is not None and r.delivery.failed == r.delivery.waiting == 0 for r in results)
    assert sum(r.delivery.delivered for r in results if r.delivery) == len(EXPECTED)
    assert "notifications: 3 delivered, 0 failed, 0 waiting" in results[-1].summary()

    done = next(b for b in receiver.acknowledged if b["task_id"] == A and b["kind"] == "status")
    assert done["at"] == "2024-05-06T09:20:00Z" and done["summary"] == f"ftlog: {A} Done"
    assert done["details"]["from"] == "Running" and done["details"]["job_name"] == "sft-sweep-7"
    assert {path for path, _ in receiver.requests} == {f"/hook?key={TOKEN}"}

    # Deliveries are recorded under a name that keeps the token out of the dataset.
    targets = view(dataset, "SELECT DISTINCT target, outcome FROM deliveries")
    assert targets == [(f"127.0.0.1#{Webhook(receiver.url()).key.split('#')[1]}", "delivered")]
    for path in Path(dataset.root).rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path

    # Rounds with nothing new send nothing.
    play(sim, client, dataset, after=70, late=timedelta(minutes=30), notifier=notifier)
    assert len(receiver.requests) == len(EXPECTED)


def test_failed_deliveries_are_retried_and_nothing_is_delivered_twice(
    sim: Simulator, client: QianfanClient, dataset: Dataset, receiver: Receiver
) -> None:
    play(sim, client, dataset, upto=55)  # four events, none delivered yet
    events = event_ids(dataset)
    notifier = fast(Webhook(receiver.url()), attempts=2, timeout=0.3)
    clock = Clock(T0 + timedelta(hours=1))

    receiver.plan.extend([500, 503])  # the first event fails twice: the target waits for the next round
    report = notifier.deliver(dataset, now=clock)
    assert (report.delivered, report.failed, report.waiting) == (0, 1, 4)
    assert len(receiver.requests) == 2 and not receiver.acknowledged

    receiver.plan.extend(["hang", 200, 500, "hang"])  # a timeout then a success; then 500 and a timeout
    report = notifier.deliver(dataset, now=clock)
    assert (report.delivered, report.failed, report.waiting) == (1, 1, 3)

    receiver.plan.extend([{"note": "not JSON of a chat robot: any 200 is a success"}])
    report = notifier.deliver(dataset, now=clock)
    assert (report.delivered, report.failed, report.waiting) == (3, 0, 0)
    assert sorted(receiver.ids().values()) == [1, 1, 1]  # the dict answer above is not counted as acknowledged
    assert len(receiver.requests) == 2 + 4 + 3
    assert set(receiver.ids()) | {receiver.requests[6][1]["event_id"]} == events

    failures = view(dataset, "SELECT attempts, http_status, error FROM deliveries WHERE outcome = 'failed' "
                             "ORDER BY attempted_at, http_status NULLS LAST")  # fmt: skip
    failures = [(n, status, error.split(" within ")[0]) for n, status, error in failures]  # the seconds vary
    timed_out = "no complete answer from the receiver"
    assert sorted(failures, key=repr) == sorted([(2, 503, "HTTP 503"), (2, None, timed_out)], key=repr)
    assert view(dataset, "SELECT count(*) FROM deliveries WHERE outcome = 'delivered'") == [(4,)]

    # A restarted collector, with a new notifier, skips what was delivered.
    assert fast(Webhook(receiver.url())).deliver(dataset, now=clock).delivered == 0
    assert len(receiver.requests) == 9
    # Another target is another matter: it gets everything once.
    other = fast(Webhook(receiver.url("/other"))).deliver(dataset, now=clock)
    assert (other.delivered, other.waiting) == (4, 0)
    assert Counter(receiver.ids().values()) == {2: 3, 1: 1}  # one first delivery was not a plain 200

    # Nobody listening: a connection error, whose text would repeat the URL and its token.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/hook?key={TOKEN}"
    assert fast(Webhook(closed), attempts=1).deliver(dataset, now=clock).failed == 1
    assert view(dataset, "SELECT error FROM deliveries WHERE target LIKE '127.0.0.1#%' AND error LIKE 'cannot%'") == [
        ("cannot reach the receiver (ConnectionError)",)
    ]
    for path in Path(dataset.root).rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_a_backlog_larger_than_a_round_drains_over_the_next_rounds(
    sim: Simulator, client: QianfanClient, dataset: Dataset, receiver: Receiver
) -> None:
    tasks = tuple(f"task-many0000{k:02d}" for k in range(7))
    clock = Clock(T0)
    for status, minute in (("Running", 0), ("Done", 5)):
        for task_id in tasks:
            sim.script(task_id, {**BASE, "taskId": task_id, "runStatus": status}, job_id=JOB)
        clock.now = T0 + timedelta(minutes=minute)
        collect_round(client, dataset, Selection(task_ids=tasks), now=clock)

    notifier = fast(Webhook(receiver.url()), Command(f"{shlex.quote(sys.executable)} -c pass"), max_per_round=3)
    waiting = []
    for minute in (6, 7, 8, 9):
        clock.now = T0 + timedelta(minutes=minute)
        result = collect_round(client, dataset, Selection(task_ids=tasks), now=clock, notifier=notifier)
        assert result.delivery is not None
        waiting.append((result.delivery.delivered, result.delivery.waiting))
    assert waiting == [(6, 8), (6, 2), (2, 0), (0, 0)]  # 3 per target and round, two targets
    assert receiver.ids() == Counter(event_ids(dataset)) and len(receiver.ids()) == 7
    assert view(dataset, "SELECT target LIKE 'command:python%', count(*) FROM deliveries GROUP BY ALL ORDER BY 1") == [
        (False, 7),
        (True, 7),
    ]


def test_old_events_are_not_sent_to_a_new_target(
    sim: Simulator, client: QianfanClient, dataset: Dataset, receiver: Receiver
) -> None:
    play(sim, client, dataset, upto=55)
    report = fast(Webhook(receiver.url())).deliver(dataset, now=Clock(T0 + timedelta(minutes=55, days=1)))
    assert (report.delivered, report.waiting) == (1, 0)  # only the stall is less than a day old
    assert [b["kind"] for b in receiver.acknowledged] == ["stall"]


def test_pending_events_are_the_first_sightings_of_the_events_view(dataset: Dataset) -> None:
    """Notifications read the events view, so an event seen again later (by another collector) dates from its
    first sighting: one first seen over a day ago is not sent, whoever sees it again."""
    later = T0 + timedelta(days=2)
    sightings = [("old", T0, "{}"), ("old", later, "{}"), ("new", later, '{"b": 1}'), ("new", later, '{"a": 1}')]
    rows = [{"event_id": event_id, "task_id": "task-a", "kind": "status", "observed_at": at, "details": details}
            for event_id, at, details in sightings]  # fmt: skip
    dataset.append("events", rows, later)
    dataset.append("deliveries", [{"event_id": "old", "task_id": "task-a", "target": "t#1", "attempted_at": T0,
                                   "outcome": "delivered", "attempts": 1}], T0)  # fmt: skip
    con = connect(dataset)
    try:
        pending = recent_events(con, later - timedelta(days=1))
        assert [(e["event_id"], e["at"], e["details"]) for e in pending] == [("new", later, {"a": 1})]
        assert delivered(con, T0) == {("t#1", "old")}
        assert delivered(con, later - timedelta(days=1)) == set()  # only deliveries of events still to send count
    finally:
        con.close()


def test_notify_command_gets_each_event_on_stdin(
    sim: Simulator, client: QianfanClient, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SECRET_SK)
    inbox, broken = tmp_path / "inbox", tmp_path / "broken"
    inbox.mkdir()
    broken.touch()
    script = (
        "import json, os, pathlib, sys\n"
        "if pathlib.Path(sys.argv[2]).exists(): sys.exit('receiver is down')\n"
        "event = json.load(sys.stdin)\n"
        "event['secret_seen'] = 'QIANFAN_SECRET_KEY' in os.environ\n"
        "pathlib.Path(sys.argv[1], event['event_id']).write_text(json.dumps(event))\n"
    )
    (tmp_path / "hook.py").write_text(script)
    command = Command(shlex.join([sys.executable, str(tmp_path / "hook.py"), str(inbox), str(broken)]))
    play(sim, client, dataset, upto=30)

    report = fast(command, attempts=2).deliver(dataset, now=Clock(T0 + timedelta(minutes=31)))
    assert (report.delivered, report.failed, report.waiting) == (0, 1, 2)
    error = view(dataset, "SELECT error FROM deliveries WHERE outcome = 'failed'")
    assert error == [("exit status 1: receiver is down",)]

    broken.unlink()
    report = fast(command).deliver(dataset, now=Clock(T0 + timedelta(minutes=32)))
    assert (report.delivered, report.failed, report.waiting) == (2, 0, 0)
    received = {path.name: json.loads(path.read_text()) for path in inbox.iterdir()}
    assert set(received) == event_ids(dataset)
    assert {(e["kind"], e["details"]["to"], e["secret_seen"]) for e in received.values()} == {
        ("status", "Failed", False),
        ("status", "Stopped", False),
    }


def test_chat_robots_get_their_message_shape(dataset: Dataset, receiver: Receiver) -> None:
    event = {"event_id": "e1", "task_id": A, "kind": "best_checkpoint", "at": T0,
             "details": {"metric": "training_loss", "step": 192, "value": 0.41, "previous_best": 1.06,
                         "previous_step": 64, "job_name": "sft-sweep-7", "model": "ERNIE-Speed-8K"}}  # fmt: skip
    title = f"ftlog: {A} new best training_loss 0.41 at step 192"
    markdown = f"**{title}**\n\n> previous best: 1.06 at step 64\n> job: sft-sweep-7\n> model: ERNIE-Speed-8K"
    assert payload(event, "markdown") == {"msgtype": "markdown", "markdown": {"content": markdown}}
    text = f"**{title}**\n\n> previous best: 1.06 at step 64\n\n> job: sft-sweep-7\n\n> model: ERNIE-Speed-8K"
    assert payload(event, "dingtalk") == {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    assert payload(event, "feishu")["content"]["text"].splitlines()[:2] == [title, "previous best: 1.06 at step 64"]
    assert payload(event, "json")["at"] == "2024-05-06T08:00:00Z"

    detected = {url.split("/")[2]: Webhook(url).format for url in (
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "https://oapi.dingtalk.com/robot/send?access_token=t",
        "https://open.feishu.cn/open-apis/bot/v2/hook/h", "https://hooks.example.com/ftlog")}  # fmt: skip
    assert detected == {"qyapi.weixin.qq.com": "markdown", "oapi.dingtalk.com": "dingtalk",
                        "open.feishu.cn": "feishu", "hooks.example.com": "json"}  # fmt: skip

    # A robot refuses with HTTP 200 and a non-zero code: a failed delivery, retried next round.
    receiver.plan.append({"code": 19024, "msg": "Key Words Not Found"})
    with requests.Session() as session:
        outcome = Webhook(receiver.url(), "feishu").send(event, 1.0, session)
        assert (outcome.ok, outcome.http_status, outcome.error) == (False, 200, "code 19024: Key Words Not Found")
        assert receiver.requests[-1][1]["msg_type"] == "text"
        assert Webhook(receiver.url(), "feishu").send(event, 1.0, session).ok


def test_targets_come_from_options_or_the_environment() -> None:
    env = {"FTLOG_NOTIFY": "https://a.example/h1 https://oapi.dingtalk.com/robot/send?access_token=x",
           "FTLOG_NOTIFY_COMMAND": "notify-send ftlog", "FTLOG_NOTIFY_FORMAT": "json"}  # fmt: skip
    first, second, third = targets_from(env=env)
    assert isinstance(first, Webhook) and isinstance(second, Webhook) and isinstance(third, Command)
    assert (first.format, second.format) == ("json", "json")  # the format named wins over the host's
    assert third.key.startswith("command:notify-send#") and third.argv == ["notify-send", "ftlog"]
    named = targets_from(["https://b.example/x?token=1"], env=env)  # the command line replaces the environment
    assert [(t.key.split("#")[0], getattr(t, "format", None)) for t in named] == [("b.example", "json")]
    assert targets_from(env={}) == []
    with pytest.raises(ConfigError, match="must start with http") as caught:
        targets_from(["ftp://files.example/secret-token-123"], env={})
    assert "secret-token-123" not in str(caught.value)
    with pytest.raises(ConfigError, match="unknown notification format"):
        targets_from(["https://a.example/"], fmt="xml", env={})
    with pytest.raises(ConfigError, match="cannot parse"):
        targets_from(commands=["notify 'unclosed"], env={})


def test_collect_notify_from_the_command_line(api_env: Simulator, receiver: Receiver, tmp_path: Path) -> None:
    task = "task-cli00000001"
    for status in ("Running", "Failed"):
        api_env.script(task, {**BASE, "taskId": task, "runStatus": status, "errorCode": 1}, job_id=JOB)
        result = CliRunner().invoke(cli, ["collect", task, "--notify", receiver.url(), "--stall-minutes", "0"])
        assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith("; notifications: 1 delivered, 0 failed, 0 waiting")
    assert [(b["task_id"], b["details"]["to"]) for b in receiver.acknowledged] == [(task, "Failed")]

    listed = CliRunner().invoke(cli, ["events", "--format", "json"])
    assert [e["event_id"] for e in json.loads(listed.stdout)] == [receiver.acknowledged[0]["event_id"]]
    bad = CliRunner().invoke(cli, ["collect", task, "--notify", "hooks.example.com"])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: a --notify URL must start with http")
