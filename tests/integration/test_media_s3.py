"""The S3 media store (`MEDIA_STORE=s3`) against moto's S3 server on 127.0.0.1, which speaks
S3's wire format and, when asked, checks every request's signature: files round-trip under
their content address, a missing key is MediaNotFound, the same file is uploaded once, and
refused credentials, a missing bucket, 5xx answers and an unreachable endpoint are the store's
retryable error, whose message never holds the secret."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shvya_common.embedded import free_port
from shvya_common.errors import RetryableError
from shvya_common.settings import CommonSettings
from shvya_common.storage import (
    MediaNotFound,
    MediaStore,
    MediaStoreUnavailable,
    S3MediaStore,
    media_key,
    media_store,
)
from tests.fakes.s3_server import Bucket

pytestmark = pytest.mark.integration

SCAN = b"%PDF-1.7 a quote the lead sent\n" * 200


def open_store(bucket: Bucket, **overrides: str) -> MediaStore:
    return media_store(CommonSettings(**bucket.settings(**overrides)))


@pytest.fixture
async def store(s3_bucket: Bucket) -> AsyncIterator[MediaStore]:
    store = open_store(s3_bucket)
    assert isinstance(store, S3MediaStore)
    yield store
    await store.aclose()


async def test_a_file_round_trips_through_the_bucket_under_its_content_address(store, s3_bucket):
    """put stores the bytes as one object named <company>/<sha[:2]>/<sha> with its type, get
    reads them back, and delete removes the object (twice is fine)."""
    company = uuid.uuid4()
    stored = await store.put(company, SCAN, "application/pdf")
    digest = hashlib.sha256(SCAN).hexdigest()
    assert (stored.key, stored.sha256, stored.size) == (
        media_key(company, digest),
        digest,
        len(SCAN),
    )
    assert await store.get(stored.key) == SCAN
    assert await s3_bucket.server.objects(s3_bucket.name) == {stored.key: SCAN}
    async with s3_bucket.server.client() as s3:
        head = await s3.head_object(Bucket=s3_bucket.name, Key=stored.key)
    assert head["ContentType"] == "application/pdf"
    await store.delete(stored.key)
    with pytest.raises(MediaNotFound):
        await store.get(stored.key)
    await store.delete(stored.key)
    assert await s3_bucket.server.objects(s3_bucket.name) == {}


async def test_a_part_of_a_file_is_read_with_a_ranged_get(store, s3_bucket):
    """get_range asks S3 for `bytes=start-(start+length-1)` only and returns those bytes (fewer
    at the end of the object); a range of no bytes is a ValueError, never the whole object."""
    stored = await store.put(uuid.uuid4(), SCAN, "application/pdf")
    assert await store.get_range(stored.key, 0, 10) == SCAN[:10]
    assert await store.get_range(stored.key, 1000, 31) == SCAN[1000:1031]
    assert await store.get_range(stored.key, len(SCAN) - 5, 100) == SCAN[-5:]
    with pytest.raises(ValueError):
        await store.get_range(stored.key, 10, 0)


async def test_a_missing_or_malformed_key_is_media_not_found(store):
    """A key with no object, or a string that is not a media key, is MediaNotFound."""
    with pytest.raises(MediaNotFound):
        await store.get(media_key(uuid.uuid4(), "0" * 64))
    with pytest.raises(MediaNotFound):
        await store.get_range(media_key(uuid.uuid4(), "0" * 64), 0, 10)
    for bad in ("../../etc/passwd", "a/b/c"):
        with pytest.raises(MediaNotFound):
            await store.get(bad)
        with pytest.raises(MediaNotFound):
            await store.get_range(bad, 0, 10)
        with pytest.raises(MediaNotFound):
            await store.delete(bad)


async def test_storing_the_same_file_twice_uploads_it_once(store, s3_bucket):
    """A second put of the same bytes gives the same key and uploads nothing (the versioned
    bucket holds one version)."""
    company = uuid.uuid4()
    first = await store.put(company, SCAN, "application/pdf")
    again = await store.put(company, SCAN, "application/pdf")
    other = await store.put(uuid.uuid4(), SCAN, "application/pdf")
    assert first == again and other.key != first.key
    assert sorted(await s3_bucket.server.versions(s3_bucket.name)) == sorted([first.key, other.key])


def _retryable(err: BaseException, *secrets: str) -> str:
    assert isinstance(err, MediaStoreUnavailable)
    assert isinstance(err, RetryableError) and isinstance(err, OSError)
    told = f"{err} {err!r} {err.__cause__}"
    for secret in secrets:
        assert secret not in told
    return str(err)


async def test_refused_credentials_are_a_retryable_error_that_never_shows_the_secret(s3_bucket):
    """With moto checking signatures, the right key stores and reads; with a wrong secret or
    an unknown key id, put and get are MediaStoreUnavailable (get's names S3's code), and no
    message holds the secret."""
    async with s3_bucket.server.enforcing_credentials() as (key_id, secret):
        good = open_store(s3_bucket, S3_ACCESS_KEY_ID=key_id, S3_SECRET_ACCESS_KEY=secret)
        wrong_secret = "x" + secret[1:]
        wrong = open_store(s3_bucket, S3_ACCESS_KEY_ID=key_id, S3_SECRET_ACCESS_KEY=wrong_secret)
        unknown = open_store(
            s3_bucket, S3_ACCESS_KEY_ID="AKIAUNKNOWN000000000", S3_SECRET_ACCESS_KEY=secret
        )
        try:
            stored = await good.put(uuid.uuid4(), SCAN, "application/pdf")
            assert await good.get(stored.key) == SCAN
            for store, code in ((wrong, "SignatureDoesNotMatch"), (unknown, "InvalidAccessKeyId")):
                with pytest.raises(MediaStoreUnavailable) as put:
                    await store.put(uuid.uuid4(), b"another file", "image/png")
                # put asks with HEAD first, whose answer has no body: only the status.
                assert "HeadObject" in _retryable(put.value, secret, wrong_secret)
                assert "HTTP 403" in str(put.value)
                with pytest.raises(MediaStoreUnavailable) as got:
                    await store.get(stored.key)
                assert code in _retryable(got.value, secret, wrong_secret)
        finally:
            for store in (good, wrong, unknown):
                await store.aclose()


async def test_an_unreachable_endpoint_or_a_missing_bucket_is_a_retryable_error(s3_bucket):
    """Nothing listening at S3_ENDPOINT_URL, or no such bucket, is MediaStoreUnavailable for
    put and get alike (so the message that brought the file is kept and retried)."""
    closed = open_store(s3_bucket, S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    missing = open_store(s3_bucket, S3_BUCKET=f"gone-{uuid.uuid4().hex[:8]}")
    key = media_key(uuid.uuid4(), "0" * 64)
    try:
        with pytest.raises(MediaStoreUnavailable) as put:
            await closed.put(uuid.uuid4(), SCAN, "application/pdf")
        assert "EndpointConnectionError" in _retryable(put.value)
        with pytest.raises(MediaStoreUnavailable):
            await closed.get(key)
        with pytest.raises(MediaStoreUnavailable) as no_bucket:
            await missing.put(uuid.uuid4(), SCAN, "application/pdf")
        assert "NoSuchBucket" in _retryable(no_bucket.value)
        with pytest.raises(MediaStoreUnavailable):
            await missing.get(key)
    finally:
        await closed.aclose()
        await missing.aclose()


async def test_a_store_answering_5xx_is_a_retryable_error_after_botocores_own_retries(s3_bucket):
    """An endpoint that answers every request with S3's 503 SlowDown is retried by the client
    (S3MediaStore.ATTEMPTS requests), then MediaStoreUnavailable."""
    seen: list[str] = []

    async def slow_down(request: web.Request) -> web.Response:
        seen.append(request.method)
        body = "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        return web.Response(status=503, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow_down)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    store = open_store(s3_bucket, S3_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(MediaStoreUnavailable) as got:
            await store.get(media_key(uuid.uuid4(), "0" * 64))
        assert "SlowDown" in _retryable(got.value) and "503" in str(got.value)
        assert seen == ["GET"] * S3MediaStore.ATTEMPTS
    finally:
        await store.aclose()
        await runner.cleanup()
