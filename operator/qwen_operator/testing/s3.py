"""Pytest fixtures for the real S3-compatible server (versitygw on 127.0.0.1).

``s3_server`` starts one server per session; ``s3_bucket`` gives each test a fresh
bucket, a boto3 client and the ``AWS_*`` environment a ``qwenctl`` subprocess needs.
A missing binary fails the test with the command that builds it -- never a silent skip.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions
import pytest

from qwen_operator.modelsync.s3server import MissingServerError, S3Server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["s3_server", "s3_bucket"]

_counter = itertools.count()


@dataclass
class S3Bucket:
    server: S3Server
    name: str
    client: S3Client
    env: dict[str, str]  # os.environ plus the server's AWS_* variables

    def registry_url(self, prefix: str = "models/qwen3-test") -> str:
        return f"s3://{self.name}/{prefix}"

    def requests(self, method: str | None = None) -> list[tuple[str, str, int]]:
        """Requests the server logged against this bucket (optionally one method).

        The server writes its log asynchronously, so first send a barrier request and
        wait until it shows up: every request that completed before it is then logged.
        """
        barrier = f"__log_barrier__/{next(_counter)}"
        try:
            self.client.head_object(Bucket=self.name, Key=barrier)
        except botocore.exceptions.ClientError:
            pass  # 404 expected: only its log line matters
        deadline = time.monotonic() + 10
        while True:
            log = self.server.request_log()
            if any(r[1].endswith(barrier) for r in log) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        # concurrent requests may be logged after the barrier's line: wait until the log is quiet
        quiet_since, size = time.monotonic(), len(log)
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
            log = self.server.request_log()
            if len(log) != size:
                quiet_since, size = time.monotonic(), len(log)
        return [
            r
            for r in log
            if r[1].startswith(f"/{self.name}/")
            and "__log_barrier__" not in r[1]
            and (method is None or r[0] == method)
        ]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    try:
        binary_missing = ""
        server = S3Server(data_dir=root / "data").start()
    except MissingServerError as exc:
        binary_missing = str(exc)
    if binary_missing:
        pytest.fail(binary_missing, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    from qwen_operator.modelsync.registry import make_client

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    client = make_client()
    name = f"qwt-{os.getpid()}-{next(_counter)}"
    client.create_bucket(Bucket=name)
    yield S3Bucket(s3_server, name, client, dict(os.environ))
    # Objects are files under the server's data dir; drop the bucket's directory.
    import shutil

    shutil.rmtree(Path(s3_server.data_dir) / name, ignore_errors=True)
