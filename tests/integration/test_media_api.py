"""Received media read back through /v1 against real PostgreSQL and a media folder: a message's
files are listed and served to its own company only, to the roles that read conversations (a
console session included); what could run in a browser (HTML, SVG) is only ever a download;
every answer is nosniff and sandboxed with an ETag from the SHA-256; a Range request gets only
the bytes it asks for (RFC 9110's 206 and 416); and a file that is not stored, or no longer in
the store, is a 404 that says why."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shvya_common.storage import LocalMediaStore, StoredMedia
from tests.integration.test_console_api import sign_in, tiny_png, user
from tests.integration.test_tenants import api, inbound, key, new_company
from tests.keys import bearer

pytestmark = pytest.mark.integration

HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


async def filed_message(client: httpx.AsyncClient, admin: str, phone: str) -> uuid.UUID:
    made = await client.post("/inbound-message", json=inbound(phone), headers=bearer(admin))
    assert made.status_code == 200, made.text
    return uuid.UUID(made.json()["message_id"])


async def with_image(
    conn: asyncpg.Connection, store: LocalMediaStore, message_id: uuid.UUID, **row: Any
) -> str:
    """Record a WhatsApp image on the message as dispatch's media.fetch would; returns the
    stored file's SHA-256 (the row is `pending` when `status` says so)."""
    company_id = await conn.fetchval("SELECT company_id FROM messages WHERE id = $1", message_id)
    stored = await store.put(company_id, tiny_png(), "image/png")
    values = {
        "status": "stored",
        "storage_key": stored.key,
        "sha256": stored.sha256,
        "size_bytes": stored.size,
        "mime_type": "image/png",
        "error": None,
        **row,
    }
    await conn.execute(
        "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind,"
        " declared_mime_type, status, storage_key, sha256, size_bytes, mime_type, error)"
        " VALUES ($1, $2, 'whatsapp_cloud', 'wamid-media', 'image', 'image/png', $3, $4, $5, $6,"
        " $7, $8)",
        company_id,
        message_id,
        values["status"],
        values["storage_key"],
        values["sha256"],
        values["size_bytes"],
        values["mime_type"],
        values["error"],
    )
    return stored.sha256


async def with_attachments(
    conn: asyncpg.Connection, store: LocalMediaStore, message_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Email attachments on the message as mail.file_email stores them: an HTML page (named
    with a path and a quote), an SVG, a PDF and one skipped for its size."""
    company_id = await conn.fetchval("SELECT company_id FROM messages WHERE id = $1", message_id)
    entries: list[dict[str, Any]] = []
    for name, data, mime in (
        ('../../tmp/ré"port.html', HTML, "text/html; charset=utf-8"),
        ("logo.svg", SVG, "image/svg+xml"),
        ("offer.pdf", b"%PDF-1.4 a tiny offer", "application/pdf"),
    ):
        stored = await store.put(company_id, data, mime)
        entries.append(
            {
                "filename": name,
                "mime_type": mime,
                "size": len(data),
                "key": stored.key,
                "sha256": stored.sha256,
            }
        )
    entries.append(
        {
            "filename": "huge.zip",
            "mime_type": "application/zip",
            "size": 90_000_000,
            "skipped": "larger than EMAIL_ATTACHMENT_MAX_BYTES (26214400)",
        }
    )
    await conn.execute(
        "UPDATE messages SET meta = meta || jsonb_build_object('attachments', $2::jsonb)"
        " WHERE id = $1",
        message_id,
        json.dumps(entries),
    )
    return entries


async def with_video(
    db_url: str, store: LocalMediaStore, message_id: uuid.UUID, video: bytes
) -> StoredMedia:
    """Store `video` and attach it to the message as `tour.mp4`, as mail.file_email would."""
    conn = await asyncpg.connect(db_url)
    try:
        company_id = await conn.fetchval(
            "SELECT company_id FROM messages WHERE id = $1", message_id
        )
        stored = await store.put(company_id, video, "video/mp4")
        entry = {"filename": "tour.mp4", "mime_type": "video/mp4", "size": len(video)}
        entry |= {"key": stored.key, "sha256": stored.sha256}
        await conn.execute(
            "UPDATE messages SET meta = meta || jsonb_build_object('attachments', $2::jsonb)"
            " WHERE id = $1",
            message_id,
            json.dumps([entry]),
        )
    finally:
        await conn.close()
    return stored


def sandboxed(answer: httpx.Response) -> None:
    """The headers every file answer carries."""
    assert answer.headers["x-content-type-options"] == "nosniff"
    policy = answer.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "script" not in policy
    assert answer.headers["cache-control"].startswith("private")


async def test_a_messages_files_are_listed_and_served_to_its_own_company_only(
    base_env, admin_token, db_url, tmp_path: Path
):
    """An image is served inline as image/png with its SHA-256 as ETag (304 when unchanged);
    HTML and SVG attachments come as application/octet-stream downloads under a sanitised
    name; another company's admin gets 404 for the list and every file."""
    media = tmp_path / "media"
    async with api(base_env, MEDIA_DIR=str(media)) as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        h = bearer(acme["admin"])
        photo = await filed_message(client, acme["admin"], "+15550201")
        mail = await filed_message(client, acme["admin"], "+15550202")
        store = LocalMediaStore(media)
        conn = await asyncpg.connect(db_url)
        try:
            sha = await with_image(conn, store, photo)
            entries = await with_attachments(conn, store, mail)
        finally:
            await conn.close()

        listed = await client.get(f"/v1/messages/{photo}/media", headers=h)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {
            "message_id": str(photo),
            "items": [
                {
                    "index": 0,
                    "kind": "image",
                    "filename": "image-0.png",
                    "mime_type": "image/png",
                    "size": len(tiny_png()),
                    "sha256": sha,
                    "status": "stored",
                    "reason": None,
                    "inline": True,
                    "url": f"/v1/messages/{photo}/media/0",
                }
            ],
        }
        image = await client.get(f"/v1/messages/{photo}/media/0", headers=h)
        assert image.status_code == 200, image.text
        assert image.content == tiny_png()
        assert image.headers["content-type"] == "image/png"
        assert image.headers["etag"] == f'"{sha}"' == f'"{hashlib.sha256(tiny_png()).hexdigest()}"'
        assert image.headers["content-disposition"] == 'inline; filename="image-0.png"'
        sandboxed(image)
        again = await client.get(
            f"/v1/messages/{photo}/media/0", headers={**h, "If-None-Match": image.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == image.headers["etag"]

        files = (await client.get(f"/v1/messages/{mail}/media", headers=h)).json()["items"]
        assert [(f["index"], f["filename"], f["status"], f["inline"]) for f in files] == [
            (0, "réport.html", "stored", False),
            (1, "logo.svg", "stored", False),
            (2, "offer.pdf", "stored", False),
            (3, "huge.zip", "skipped", False),
        ]
        assert files[0]["mime_type"] == "text/html" and files[1]["mime_type"] == "image/svg+xml"
        assert files[3]["url"] is None and "EMAIL_ATTACHMENT_MAX_BYTES" in files[3]["reason"]
        assert [f["sha256"] for f in files[:3]] == [e["sha256"] for e in entries[:3]]
        page = await client.get(f"/v1/messages/{mail}/media/0", headers=h)
        assert page.status_code == 200 and page.content == HTML
        assert page.headers["content-type"] == "application/octet-stream"
        assert page.headers["content-disposition"] == (
            "attachment; filename=\"r_port.html\"; filename*=UTF-8''r%C3%A9port.html"
        )
        sandboxed(page)
        svg = await client.get(f"/v1/messages/{mail}/media/1", headers=h)
        assert svg.status_code == 200 and svg.content == SVG
        assert svg.headers["content-type"] == "application/octet-stream"
        assert svg.headers["content-disposition"] == 'attachment; filename="logo.svg"'
        assert svg.headers["etag"] == f'"{entries[1]["sha256"]}"'
        sandboxed(svg)

        other = bearer(beta["admin"])
        for url in (
            f"/v1/messages/{photo}/media",
            f"/v1/messages/{photo}/media/0",
            f"/v1/messages/{mail}/media",
            f"/v1/messages/{mail}/media/0",
        ):
            refused = await client.get(url, headers=other)
            assert refused.status_code == 404, (url, refused.text)
            assert "not found" in refused.json()["detail"]


async def test_files_are_read_by_agents_viewers_and_admins_but_not_ingest_keys(
    base_env, admin_token, db_url, tmp_path: Path
):
    """Whoever may read conversations reads files (an admin or agent key, a viewer's console
    session with its cookie alone, as an <img> sends it); an ingest key gets 403 and no
    credential 401."""
    media = tmp_path / "media"
    async with api(base_env, MEDIA_DIR=str(media)) as client:
        acme = await new_company(client, admin_token, "Acme")
        photo = await filed_message(client, acme["admin"], "+15550301")
        conn = await asyncpg.connect(db_url)
        try:
            await with_image(conn, LocalMediaStore(media), photo)
        finally:
            await conn.close()
        await user(client, acme["admin"], "look@acme.example", "viewer")
        session = await sign_in(client, "look@acme.example")
        readers = {
            "admin": bearer(acme["admin"]),
            "agent": bearer(await key(client, acme["admin"], "agent")),
            "viewer": {"Cookie": session["Cookie"]},
        }
        for url in (f"/v1/messages/{photo}/media", f"/v1/messages/{photo}/media/0"):
            for name, headers in readers.items():
                answer = await client.get(url, headers=headers)
                assert answer.status_code == 200, (url, name, answer.text)
            ingest = await client.get(
                url, headers=bearer(await key(client, acme["admin"], "ingest"))
            )
            assert ingest.status_code == 403
            assert (await client.get(url)).status_code == 401


async def test_a_file_not_stored_or_gone_from_the_store_is_a_404_with_its_reason(
    base_env, admin_token, db_url, tmp_path: Path
):
    """A pending download, a failed one, a stored file missing from the store and an index past
    the last file each answer 404 with why (never 500); the list says pending and failed."""
    media = tmp_path / "media"
    async with api(base_env, MEDIA_DIR=str(media)) as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        pending, failed, lost = [
            await filed_message(client, acme["admin"], f"+1555040{i}") for i in range(3)
        ]
        store = LocalMediaStore(media)
        conn = await asyncpg.connect(db_url)
        try:
            nothing = {"storage_key": None, "sha256": None, "size_bytes": None, "mime_type": None}
            await with_image(conn, store, pending, status="pending", **nothing)
            await with_image(
                conn, store, failed, status="failed", error="Graph answered 404 for the media id"
            )
            await with_image(conn, store, lost)
            key_ = await conn.fetchval(
                "SELECT storage_key FROM inbound_media WHERE message_id = $1", lost
            )
        finally:
            await conn.close()
        (media / key_).unlink()

        listed = (await client.get(f"/v1/messages/{pending}/media", headers=h)).json()["items"]
        assert [(i["status"], i["url"], i["mime_type"]) for i in listed] == [
            ("pending", None, "image/png")
        ]
        assert "not downloaded yet" in listed[0]["reason"]
        gave_up = (await client.get(f"/v1/messages/{failed}/media", headers=h)).json()["items"]
        assert [(i["status"], i["reason"]) for i in gave_up] == [
            ("failed", "Graph answered 404 for the media id")
        ]
        for message, why in (
            (pending, "pending"),
            (failed, "Graph answered 404"),
            (lost, "no longer in the media store"),
        ):
            answer = await client.get(f"/v1/messages/{message}/media/0", headers=h)
            assert answer.status_code == 404, answer.text
            assert why in answer.json()["detail"]
        past = await client.get(f"/v1/messages/{lost}/media/1", headers=h)
        assert past.status_code == 404 and "no file 1" in past.json()["detail"]
        unknown = await client.get(f"/v1/messages/{uuid.uuid4()}/media", headers=h)
        assert unknown.status_code == 404


async def test_a_file_is_served_in_parts_to_range_requests(
    base_env, admin_token, db_url, tmp_path: Path
):
    """A video answers one byte range (first-last, first-, -count, a last past the end) with a
    206, its Content-Range and only those bytes; a range past the end or of no bytes is a 416
    with the size; a malformed, non-byte or multi-range header, or an If-Range other than the
    ETag, gets the whole file; every answer says Accept-Ranges: bytes."""
    media = tmp_path / "media"
    video = bytes(range(256)) * 40
    size = len(video)
    async with api(base_env, MEDIA_DIR=str(media)) as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        mail = await filed_message(client, acme["admin"], "+15550501")
        stored = await with_video(db_url, LocalMediaStore(media), mail, video)
        url = f"/v1/messages/{mail}/media/0"
        etag = f'"{stored.sha256}"'

        whole = await client.get(url, headers=h)
        assert whole.status_code == 200 and whole.content == video
        assert whole.headers["accept-ranges"] == "bytes" and "content-range" not in whole.headers

        for asked, first, last in (
            ("bytes=0-99", 0, 99),
            ("bytes=1000-1000", 1000, 1000),
            ("bytes=10000-", 10000, size - 1),
            ("bytes=-300", size - 300, size - 1),
            ("bytes=-99999", 0, size - 1),
            ("bytes=9000-99999999", 9000, size - 1),
            (" Bytes=5-9 ", 5, 9),
        ):
            part = await client.get(url, headers={**h, "Range": asked})
            assert part.status_code == 206, (asked, part.text)
            assert part.content == video[first : last + 1], asked
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}", asked
            assert part.headers["content-length"] == str(last - first + 1)
            assert part.headers["content-type"] == "video/mp4"
            assert part.headers["content-disposition"] == 'inline; filename="tour.mp4"'
            assert part.headers["etag"] == etag and part.headers["accept-ranges"] == "bytes"
            sandboxed(part)

        for asked in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
            refused = await client.get(url, headers={**h, "Range": asked})
            assert refused.status_code == 416, (asked, refused.text)
            assert refused.headers["content-range"] == f"bytes */{size}", asked
            assert f"has {size} bytes" in refused.json()["detail"]

        for asked in (
            "bytes=9-5",
            "bytes=-",
            "bytes=abc",
            "bytes 0-9",
            "items=0-9",
            "bytes=0-9,20-29",
            "bytes=0-99999999999999999999",
        ):
            full = await client.get(url, headers={**h, "Range": asked})
            assert full.status_code == 200, (asked, full.text)
            assert full.content == video and "content-range" not in full.headers, asked

        same = await client.get(url, headers={**h, "Range": "bytes=0-9", "If-Range": etag})
        assert same.status_code == 206 and same.content == video[:10]
        for other in (f'"{"0" * 64}"', f"W/{etag}", "Wed, 21 Oct 2026 07:28:00 GMT"):
            changed = await client.get(url, headers={**h, "Range": "bytes=0-9", "If-Range": other})
            assert changed.status_code == 200 and changed.content == video, other

        cached = await client.get(url, headers={**h, "Range": "bytes=0-9", "If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["accept-ranges"] == "bytes"


class CountingStore(LocalMediaStore):
    """The media folder, recording how much each read asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[int | None] = []

    async def get(self, key: str) -> bytes:
        self.reads.append(None)  # the whole file
        return await super().get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.reads.append(length)
        return await super().get_range(key, start, length)


async def test_a_large_file_is_streamed_a_piece_at_a_time_and_head_reads_no_more(
    base_env, admin_token, db_url, tmp_path: Path
):
    """A file larger than READ_CHUNK is read from the store a megabyte at a time and streamed
    with its full Content-Length, whole (200) or from a range (206), never read whole; the
    bytes that arrive are the file's. HEAD answers the same status and headers with no body,
    reading only the first piece."""
    from shvya_ingest.v1.media import READ_CHUNK

    media = tmp_path / "media"
    video = (bytes(range(256)) * (READ_CHUNK // 256)) * 2 + b"tail of the video" * 1000
    size = len(video)
    async with api(base_env, MEDIA_DIR=str(media)) as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        mail = await filed_message(client, acme["admin"], "+15550601")
        store = CountingStore(media)
        client._transport.app.state.ingest.media = store  # type: ignore[attr-defined]
        stored = await with_video(db_url, store, mail, video)
        url = f"/v1/messages/{mail}/media/0"

        whole = await client.get(url, headers=h)
        assert whole.status_code == 200
        assert whole.content == video and whole.headers["content-length"] == str(size)
        assert store.reads == [READ_CHUNK, READ_CHUNK, size - 2 * READ_CHUNK]
        sandboxed(whole)

        store.reads.clear()
        start = READ_CHUNK // 2
        part = await client.get(url, headers={**h, "Range": f"bytes={start}-"})
        assert part.status_code == 206 and part.content == video[start:]
        assert part.headers["content-range"] == f"bytes {start}-{size - 1}/{size}"
        assert part.headers["content-length"] == str(size - start)
        assert store.reads == [READ_CHUNK, size - start - READ_CHUNK]
        assert max(r or size for r in store.reads) <= READ_CHUNK

        store.reads.clear()
        head = await client.head(url, headers=h)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(size)
        assert head.headers["etag"] == f'"{stored.sha256}"'
        assert head.headers["content-type"] == "video/mp4"
        sandboxed(head)
        head_part = await client.head(url, headers={**h, "Range": "bytes=-10"})
        assert head_part.status_code == 206 and head_part.content == b""
        assert head_part.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
        assert head_part.headers["content-length"] == "10"
        # HEAD reads only the first piece (a file gone from the store is a 404, as for GET).
        assert store.reads == [READ_CHUNK, 10]
        (media / stored.key).unlink()
        gone = await client.head(url, headers=h)
        assert gone.status_code == 404
