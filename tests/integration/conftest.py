"""Fixtures of the integration tests that only some need: moto's S3 server (started once, on
first use) and a fresh bucket for each test that asks for one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.fakes.s3_server import Bucket, S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A new, empty bucket; botocore reads no AWS_* variable or ~/.aws file of the machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    bucket = Bucket(s3_server, f"media-{uuid.uuid4().hex[:12]}")
    await s3_server.create_bucket(bucket.name, versioned=True)
    return bucket
