"""Shared fixtures: a real simulator on 127.0.0.1, a client signed with its credentials, a temp dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.simulator import Simulator
from ftlog.store import Dataset

# Distinctive values, so tests can prove they never leak into anything ftlog writes.
SECRET_AK = "AKftlogTEST7f3c9e1d"
SECRET_SK = "SKftlogSECRETb84e2a6c55d1"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A fast-moving simulator (a 40-minute run takes about 10 seconds) with the test credentials."""
    with Simulator(seed=7, speed=240, credentials={SECRET_AK: SECRET_SK}) as server:
        yield server


@pytest.fixture
def fast_retry() -> RetryPolicy:
    return RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, total=20)


@pytest.fixture
def client(sim: Simulator, fast_retry: RetryPolicy) -> Iterator[QianfanClient]:
    with QianfanClient(Credentials(SECRET_AK, SECRET_SK), base_url=sim.url, rps=500, retry=fast_retry) as c:
        yield c


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def dataset(data: Path) -> Dataset:
    return Dataset(data)


@pytest.fixture
def api_env(sim: Simulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Simulator:
    """Environment for CLI tests: credentials and endpoint of the running simulator, and an empty working dir."""
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", SECRET_AK)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SECRET_SK)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", sim.url)
    monkeypatch.setenv("FTLOG_RPS", "500")
    monkeypatch.chdir(tmp_path)
    return sim
