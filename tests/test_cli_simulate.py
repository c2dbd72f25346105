"""`python -m ftlog simulate` as a user runs it: a real process serving signed requests until interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from ftlog.client import Credentials, QianfanClient
from ftlog.simulator import DEMO_ACCESS_KEY, DEMO_SECRET_KEY


def test_module_entry_point_shows_help() -> None:
    result = subprocess.run([sys.executable, "-m", "ftlog", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "collect" in result.stdout and "simulate" in result.stdout


def test_simulate_serves_until_interrupted() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    command = [sys.executable, "-m", "ftlog", "simulate", "--port", "0", "--jobs", "2", "--tasks-per-job", "4"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+) \(8 tasks in 2 jobs\)", first)
        assert match, first
        banner = "".join(proc.stderr.readline() for _ in range(4))
        assert f"QIANFAN_ACCESS_KEY={DEMO_ACCESS_KEY}" in banner
        with QianfanClient(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), base_url=match.group(1)) as client:
            jobs = list(client.iter_jobs())
            assert len(jobs) == 2
            assert len(list(client.iter_tasks(jobs[0]["jobId"]))) == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_simulate_reports_a_busy_port() -> None:
    command = [sys.executable, "-m", "ftlog", "simulate", "--port", "0"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as blocker:
        assert blocker.stderr is not None
        port = re.search(r":(\d+) ", blocker.stderr.readline())
        assert port
        result = subprocess.run(
            [sys.executable, "-m", "ftlog", "simulate", "--port", port.group(1)],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
        blocker.kill()
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port.group(1)}")
    assert "Traceback" not in result.stderr
