"""moto's S3 server on 127.0.0.1, for tests of the S3 media store.

`ThreadedMotoServer` speaks S3's real wire format (REST, XML errors, SigV4-signed requests), so
the store's aiobotocore client runs end to end against it. It runs in a thread of the test
process and keeps its state in memory for the session; each test makes its own bucket.
By default moto takes any credentials. `enforcing_credentials()` creates an IAM user allowed
`s3:*` and turns moto's authentication on: from then on a request must be signed with that
user's key (a wrong secret is `SignatureDoesNotMatch`, an unknown key `InvalidAccessKeyId`).

    server = S3Server()
    server.start()
    await server.create_bucket("media-1")
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# moto accepts any key while it does not enforce credentials.
ANY_KEY = ("testing-key-id", "testing-secret")


class S3Server:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    @asynccontextmanager
    async def client(self, service: str = "s3") -> AsyncIterator[Any]:
        """An admin's client of the server (not the store's), for setting up and inspecting."""
        async with get_session().create_client(
            service,  # type: ignore[call-overload]
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ANY_KEY[0],
            aws_secret_access_key=ANY_KEY[1],
        ) as client:
            yield client

    async def create_bucket(self, name: str, *, versioned: bool = False) -> None:
        async with self.client() as s3:
            await s3.create_bucket(Bucket=name)
            if versioned:
                await s3.put_bucket_versioning(
                    Bucket=name, VersioningConfiguration={"Status": "Enabled"}
                )

    async def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of the bucket, key to bytes."""
        found: dict[str, bytes] = {}
        async with self.client() as s3:
            listed = await s3.list_objects_v2(Bucket=bucket)
            for item in listed.get("Contents", []):
                got = await s3.get_object(Bucket=bucket, Key=item["Key"])
                async with got["Body"] as body:
                    found[item["Key"]] = await body.read()
        return found

    async def versions(self, bucket: str) -> list[str]:
        """The key of every stored version in a versioned bucket (one entry per upload)."""
        async with self.client() as s3:
            listed = await s3.list_object_versions(Bucket=bucket)
            return [v["Key"] for v in listed.get("Versions", [])]

    @asynccontextmanager
    async def enforcing_credentials(self) -> AsyncIterator[tuple[str, str]]:
        """An IAM user's (key id, secret) that may use S3, with moto checking every request's
        signature until the block ends."""
        user = f"media-{uuid.uuid4().hex[:8]}"
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        async with self.client("iam") as iam:
            await iam.create_user(UserName=user)
            await iam.put_user_policy(
                UserName=user, PolicyName="media", PolicyDocument=json.dumps(policy)
            )
            made = await iam.create_access_key(UserName=user)
        key = made["AccessKey"]
        await self._set_free_requests("0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            await self._set_free_requests("inf")

    async def _set_free_requests(self, count: str) -> None:
        # moto's own control route: how many requests go through before credentials count.
        async with httpx.AsyncClient(base_url=self.endpoint_url) as http:
            answer = await http.post("/moto-api/reset-auth", content=count.encode())
            answer.raise_for_status()


@dataclass(frozen=True)
class Bucket:
    """One test's bucket on the server, and the settings that point the media store at it."""

    server: S3Server
    name: str

    def env(self, **overrides: str) -> dict[str, str]:
        """The settings of MEDIA_STORE=s3 for this bucket, as environment variables."""
        return {
            "MEDIA_STORE": "s3",
            "S3_ENDPOINT_URL": self.server.endpoint_url,
            "S3_BUCKET": self.name,
            "S3_REGION": REGION,
            "S3_ACCESS_KEY_ID": ANY_KEY[0],
            "S3_SECRET_ACCESS_KEY": ANY_KEY[1],
            "S3_ADDRESSING_STYLE": "path",
            **overrides,
        }

    def settings(self, **overrides: str) -> dict[str, str]:
        """The same, as settings fields (lower-case names)."""
        return {k.lower(): v for k, v in self.env(**overrides).items()}
