"""Figure 10: the same dataset queried on S3-compatible object storage and on local disk.

The object store is moto's standalone S3 server on loopback (a dev dependency), reached over HTTP exactly as a
remote store would be; only network distance is missing, so the ratio shows ftlog's own overhead of the object-store
path (pyarrow's S3 client, read by DuckDB through fsspec), not a cloud's latency.
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

import pyarrow.fs as pafs

import ftlog
from ftlog import analysis

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


def object_store_rows(local: Path, runs: int) -> tuple[list[Row], str]:
    """Copy the dataset at ``local`` into a bucket, then time curves() and compare() on both."""
    with s3_server() as endpoint, environment({**ENV, "AWS_ENDPOINT_URL": endpoint}):
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        uri = f"s3://{BUCKET}/data"
        fs, root = pafs.FileSystem.from_uri(uri)
        pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        on_disk, remote = ftlog.connect(local), ftlog.connect(uri)
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
    note = (
        "Figure 10: the figure 1 dataset copied into a bucket of moto's standalone S3 server on 127.0.0.1 and read "
        "through ftlog.connect('s3://...'), against the same files on local disk; median of "
        f"{runs} runs each, answers checked equal. The server adds HTTP and moto's own Python overhead but no "
        "network distance: on a real object store, expect latency on top."
    )
    return rows, note
