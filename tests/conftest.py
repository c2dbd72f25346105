"""Shared fixtures: a real simulator on 127.0.0.1, a client signed with its credentials, a temp dataset."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ftlog.client import Credentials, QianfanClient, RetryPolicy
from ftlog.simulator import Simulator
from ftlog.store import Dataset

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One local Spark session for every test (starting one takes seconds), on loopback, writing only to a
    temporary folder, and storing times in Parquet as DuckDB reads them."""
    from pyspark.sql import SparkSession

    if shutil.which("java") is None:
        pytest.fail("Spark needs a Java runtime (17 or newer): apt-get install openjdk-17-jre-headless (.ci/run does)")
    scratch = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("ftlog-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
