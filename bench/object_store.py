"""Figures 10 and 16: the same dataset queried on S3-compatible object storage and on local disk.

The object store is moto's standalone S3 server on loopback (a dev dependency), reached over HTTP exactly as a
remote store would be; only network distance is missing, so the ratio shows ftlog's own overhead of the object-store
path (pyarrow's S3 client, read by DuckDB through fsspec), not a cloud's latency. Figure 10 reports the ratios;
figure 16 holds them to targets, from the same measurement.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow.fs as pafs

import ftlog
from ftlog import analysis
from ftlog.refresh import refresh_summaries
from ftlog.store import Dataset

from .measure import medians
from .results import Row, seconds, times

BUCKET = "ftlog-bench"
ENV = {
    "AWS_ACCESS_KEY_ID": "bench-key",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def s3_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def views(con: duckdb.DuckDBPyConnection, root: str) -> list[tuple[str, str]]:
    """The views of ``con`` as DuckDB holds them, with the dataset's location ``root`` left out: the same on both
    sides when both read the same files in the same way."""
    found = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()
    return [(name, sql.replace(root, "DATA")) for name, sql in found]


# Figure 16's targets: the most curves() and compare() on the object store may take, as a multiple of local disk.
TARGETS = {"16a": 2.5, "16b": 3.0}


def object_store_rows(local: Path, runs: int) -> tuple[list[Row], list[str]]:
    """Copy the dataset at ``local`` into a bucket, then time curves() and compare() on both: rows 10a and 10b
    (reported) and 16a and 16b (the same numbers, held to TARGETS)."""
    with s3_server() as endpoint, environment({**ENV, "AWS_ENDPOINT_URL": endpoint}):
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        uri = f"s3://{BUCKET}/data"
        fs, root = pafs.FileSystem.from_uri(uri)
        pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        # The summaries of the present name each file with its time of last change, which a copy does not keep: have
        # them written in the bucket as the last collector round would have written them there.
        with ftlog.connect(local) as con:
            last_round = con.execute("SELECT max(polled_at) FROM _polls").fetchone()[0]
        refresh_summaries(Dataset(uri), last_round)
        on_disk, remote = ftlog.connect(local), ftlog.connect(uri)
        if views(remote, uri) != views(on_disk, str(local.absolute())):
            raise AssertionError("the object-store dataset is read through other views than the local one")
        by = ["model", "train_mode", "parameter_scale"]
        t_remote, t_local, c_remote, c_local = medians(
            [
                lambda: analysis.curves(remote),
                lambda: analysis.curves(on_disk),
                lambda: analysis.compare(remote, by),
                lambda: analysis.compare(on_disk, by),
            ],
            runs,
        )
        if not analysis.curves(remote).equals(analysis.curves(on_disk)):
            raise AssertionError("the object-store dataset answered differently from the local one")
        on_disk.close()
        remote.close()
    rows = []
    for key, what, measured, baseline in (
        ("10a", "curves()", t_remote, t_local),
        ("10b", "compare()", c_remote, c_local),
    ):
        ratio, text = times(measured, baseline)
        rows.append(
            Row(
                key,
                f"{what} on S3-compatible storage (loopback server) vs local disk",
                seconds(measured),
                seconds(baseline),
                ratio,
                text,
                "reported, no target",
            )
        )
        target = f"16{key[-1]}"
        rows.append(
            Row(
                target,
                f"{what} on S3-compatible storage (moto server on loopback) vs the same files on local disk",
                seconds(measured),
                seconds(baseline),
                ratio,
                text,
                f"<= {TARGETS[target]:g}x",
                limit=TARGETS[target],
            )
        )
    notes = [
        "Figure 10: the figure 1 dataset copied into a bucket of moto's standalone S3 server on 127.0.0.1 and read "
        "through ftlog.connect('s3://...'), against the same files on local disk; median of "
        f"{runs} runs each, answers checked equal. The server adds HTTP and moto's own Python overhead but no "
        "network distance: on a real object store, expect latency on top.",
        "Figure 16: figure 10's measurement, held to targets. The summaries of the present, which name each file "
        "with its time of last change (not kept by a copy), are written in the bucket as the last collector round "
        "would have written them there, and both sides are checked to read through the same views. A query on the "
        "object store still lists the folders it reads and looks at each file it names, every time, as on disk; "
        "an object it has read before, unchanged since, is not fetched again (ftlog/store.py, ObjectStore).",
    ]
    return rows, notes
