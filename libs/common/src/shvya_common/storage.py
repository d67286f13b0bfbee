"""Where received media and attachments are kept: a small storage interface, a local folder
(the default) and any S3-compatible service (`MEDIA_STORE=s3`), and `media_store()` to pick one
from the settings.

Files are content-addressed: the key is `<company>/<sha256[:2]>/<sha256>`, so the same file
received twice is stored once and a key can never point at other bytes. In a folder, writes go
to a temporary file that is renamed into place, so a crash never leaves a half-written file
under a real key, and blocking file work runs in a thread; in S3 a PUT is atomic by itself. A
part of a file is read with `get_range` (a seek in a folder, a ranged GetObject in S3), so an
HTTP Range request loads only the bytes it asks for. A store that holds a connection is closed
with `aclose()` by the service that opened it.

    LookupError
    └── MediaNotFound           no file has this key (or it is not a key): asking again won't help
    RetryableError, OSError
    └── MediaStoreUnavailable   the store failed (unreachable, 5xx, refused credentials):
                                the caller keeps the message and tries again later
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import SecretStr

from shvya_common.errors import RetryableError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from shvya_common.settings import CommonSettings

_KEY = re.compile(r"^[0-9a-f-]{36}/[0-9a-f]{2}/[0-9a-f]{64}$")
# Codes S3 (and the services that speak it) answer for a key that is not there.
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})


class MediaNotFound(LookupError):
    """No stored file has this key."""


class MediaStoreUnavailable(RetryableError, OSError):
    """The store could not be reached or refused the call. An OSError, like a local disk's
    failures, so every door that answers a disk error with "try again later" (503, SMTP 451,
    a job retry) does so for this too."""


@dataclass(frozen=True)
class StoredMedia:
    """What the store knows of one file; `key` is how to read it back."""

    key: str
    sha256: str
    size: int
    mime_type: str


class MediaStore(Protocol):
    """`get_range` reads `length` (at least 1) bytes from offset `start`, fewer at the end of
    the file, so a part of a large file is served without loading the rest."""

    async def put(self, company_id: uuid.UUID, data: bytes, mime_type: str) -> StoredMedia: ...
    async def get(self, key: str) -> bytes: ...
    async def get_range(self, key: str, start: int, length: int) -> bytes: ...
    async def delete(self, key: str) -> None: ...
    async def aclose(self) -> None: ...


def media_key(company_id: uuid.UUID, sha256: str) -> str:
    return f"{company_id}/{sha256[:2]}/{sha256}"


def _checked(key: str) -> str:
    if not _KEY.match(key):
        raise MediaNotFound(f"not a media key: {key!r}")
    return key


def _check_range(start: int, length: int) -> None:
    # S3 answers a range it cannot parse (an empty one) with the whole object.
    if start < 0 or length < 1:
        raise ValueError(f"not a byte range: {length} bytes from {start}")


def media_store(settings: CommonSettings) -> MediaStore:
    """The store MEDIA_STORE names; the caller closes it with `aclose()` when it stops."""
    if settings.media_store == "local":
        return LocalMediaStore(settings.media_dir)
    # The settings refuse MEDIA_STORE=s3 without a bucket and both keys.
    assert settings.s3_bucket and settings.s3_access_key_id and settings.s3_secret_access_key
    return S3MediaStore(
        bucket=settings.s3_bucket,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        addressing_style=settings.s3_addressing_style,
    )


class LocalMediaStore:
    """Files under one folder, one sub-folder per company."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _checked(key)

    async def put(self, company_id: uuid.UUID, data: bytes, mime_type: str) -> StoredMedia:
        digest = hashlib.sha256(data).hexdigest()
        key = media_key(company_id, digest)
        await asyncio.to_thread(self._write, self._path(key), data)
        return StoredMedia(key, digest, len(data), mime_type)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise MediaNotFound(key) from None

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        _check_range(start, length)
        try:
            return await asyncio.to_thread(self._read, path, start, length)
        except FileNotFoundError:
            raise MediaNotFound(key) from None

    @staticmethod
    def _read(path: Path, start: int, length: int) -> bytes:
        with path.open("rb") as fh:
            fh.seek(start)
            return fh.read(length)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def aclose(self) -> None:
        """Nothing to close: each call opens and closes its file."""


class S3MediaStore:
    """Objects in one bucket of any S3-compatible service (AWS S3, MinIO, Ceph, R2), the key
    as the object's name. One client (one connection pool) is opened at first use and kept
    until `aclose()`. botocore is imported only then, so a local store never loads it."""

    # Attempts (botocore's own, with back-off) before a call fails and the caller's retry
    # schedule takes over; seconds to connect and to wait for each read.
    ATTEMPTS = 3
    CONNECT_TIMEOUT = 5.0
    READ_TIMEOUT = 30.0

    def __init__(
        self,
        *,
        bucket: str,
        access_key_id: SecretStr,
        secret_access_key: SecretStr,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.addressing_style = addressing_style
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._client: S3Client | None = None
        self._stack: AsyncExitStack | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3MediaStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    async def _s3(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                config = AioConfig(
                    s3={"addressing_style": self.addressing_style},
                    region_name=self.region,
                    connect_timeout=self.CONNECT_TIMEOUT,
                    read_timeout=self.READ_TIMEOUT,
                    retries={"total_max_attempts": self.ATTEMPTS, "mode": "standard"},
                    # Checksums only where S3 requires them: the trailing checksums botocore
                    # sends by default are refused by several S3-compatible services.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self._access_key_id.get_secret_value(),
                        aws_secret_access_key=self._secret_access_key.get_secret_value(),
                        config=config,
                    )
                )
                self._stack = stack
            return self._client

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """botocore's and aiohttp's errors as ours; only codes and class names go in the
        message (the credentials never reach an error, and neither does a body)."""
        from aiohttp import ClientError as HttpError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING:
                raise MediaNotFound(key) from err
            # A HEAD's answer has no body, so its code is only the status.
            said = f"{code} (HTTP {status})" if code and code != str(status) else f"HTTP {status}"
            raise MediaStoreUnavailable(
                f"S3 {operation} {self.bucket}/{key} failed: {said}"
            ) from err
        except (BotoCoreError, HttpError, TimeoutError) as err:
            raise MediaStoreUnavailable(
                f"S3 {operation} {self.bucket}/{key} failed: {type(err).__name__}"
                f" (endpoint {self.endpoint_url or 'AWS'})"
            ) from err

    async def put(self, company_id: uuid.UUID, data: bytes, mime_type: str) -> StoredMedia:
        digest = hashlib.sha256(data).hexdigest()
        key = media_key(company_id, digest)
        s3 = await self._s3()
        # Content-addressed: an object under this key already holds these bytes. Asking first
        # saves the upload of a redelivered file (and a new version in a versioned bucket).
        try:
            with self._errors("HeadObject", key):
                await s3.head_object(Bucket=self.bucket, Key=key)
        except MediaNotFound:
            with self._errors("PutObject", key):
                await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime_type)
        return StoredMedia(key, digest, len(data), mime_type)

    async def get(self, key: str) -> bytes:
        return await self._get_object(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        _check_range(start, length)
        return await self._get_object(key, f"bytes={start}-{start + length - 1}")

    async def _get_object(self, key: str, byte_range: str | None = None) -> bytes:
        s3 = await self._s3()
        with self._errors("GetObject", _checked(key)):
            found = await (
                s3.get_object(Bucket=self.bucket, Key=key)
                if byte_range is None
                else s3.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            )
            async with found["Body"] as body:
                return await body.read()

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        # S3 answers a missing key's DELETE with 204 too, as the folder's unlink ignores it.
        with self._errors("DeleteObject", _checked(key)):
            await s3.delete_object(Bucket=self.bucket, Key=key)

    async def aclose(self) -> None:
        async with self._opening:
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
