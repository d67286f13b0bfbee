"""media.fetch: download an attachment a customer sent and store it.

Graph gives a media id; `GET /{version}/{media-id}` with the account's token answers a
short-lived URL, the mime type, the size and a hash, and that URL is fetched with the same
token. A type outside WHATSAPP_MEDIA_MIME_TYPES, or a size over WHATSAPP_MEDIA_MAX_BYTES
(declared or actual), is refused before or while downloading and the row says `rejected`. The
file goes to the media store (content-addressed, `shvya_common.storage`), and the row and the
message's `meta.media` record the key, the mime type, the size and the SHA-256 of what was
stored (and whether it matches the hash Meta declared). Graph errors follow the one table of
codes; a download that keeps failing ends `failed` (a dead letter says why).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import structlog

from shvya_common.bus import JobContext
from shvya_common.contracts import MediaFetchParams
from shvya_common.errors import PermanentError
from shvya_common.metrics import MEDIA_DOWNLOADS
from shvya_common.storage import MediaStore
from shvya_dispatch.channels.graph_api import GraphApi, MediaTooLarge
from shvya_dispatch.handlers import registry
from shvya_dispatch.whatsapp_repository import WhatsAppRepository

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MediaDeps:
    repo: WhatsAppRepository
    store: MediaStore
    graph: GraphApi | None
    max_bytes: int
    mime_types: frozenset[str]


def base_type(mime: str | None) -> str:
    """`audio/ogg; codecs=opus` → `audio/ogg`."""
    return (mime or "").split(";", 1)[0].strip().lower()


def hash_matches(data: bytes, declared: str | None) -> bool | None:
    """Whether `declared` (Meta's hash, hex or base64) is this file's SHA-256; None if absent."""
    if not declared:
        return None
    digest = hashlib.sha256(data).digest()
    return declared.strip().lower() == digest.hex() or declared.strip() in (
        base64.b64encode(digest).decode(),
        base64.urlsafe_b64encode(digest).decode(),
    )


@registry.task("media.fetch")
async def handle_media_fetch(
    params: MediaFetchParams, job: JobContext, media: MediaDeps
) -> dict[str, Any]:
    deps = media
    row = await deps.repo.media_row(params.media_row_id)
    if row is None:
        raise PermanentError(f"media row {params.media_row_id} not found")
    if row["status"] == "stored":
        return {"status": "stored"}
    if deps.graph is None:
        raise PermanentError("WhatsApp Cloud is not configured: no token to download media with")
    channel = row["channel"]
    try:
        return await _fetch(params, deps, row, deps.graph, channel)
    except PermanentError as err:
        # Dead-lettered (the reason is there too); the row says it will not come.
        await deps.repo.media_refused(params.media_row_id, "failed", str(err))
        MEDIA_DOWNLOADS.labels(channel, "failed").inc()
        raise


async def _fetch(
    params: MediaFetchParams, deps: MediaDeps, row: Any, graph: GraphApi, channel: str
) -> dict[str, Any]:
    info = await graph.get(row["media_id"])
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url:
        raise PermanentError(f"Graph gave no download URL for media {row['media_id']}")
    mime = base_type(info.get("mime_type") or row["declared_mime_type"])
    declared_size = info.get("file_size")
    if mime not in deps.mime_types:
        return await _refuse(deps, params, channel, f"type {mime or 'unknown'!r} is not allowed")
    if str(declared_size or "").isdigit() and int(declared_size) > deps.max_bytes:
        reason = f"{declared_size} bytes is more than the {deps.max_bytes}-byte limit"
        return await _refuse(deps, params, channel, reason)
    try:
        data, _ = await graph.download(url, deps.max_bytes)
    except MediaTooLarge as err:
        return await _refuse(deps, params, channel, str(err))
    stored = await deps.store.put(params.company_id, data, mime)
    matches = hash_matches(data, info.get("sha256") or row["declared_sha256"])
    await deps.repo.media_stored(
        params.media_row_id,
        key=stored.key,
        size=stored.size,
        sha256=stored.sha256,
        mime_type=mime,
        hash_matches=matches,
    )
    MEDIA_DOWNLOADS.labels(channel, "stored").inc()
    log.info("media_stored", size=stored.size, mime_type=mime, hash_matches=matches)
    return {"status": "stored", "key": stored.key, "size": stored.size}


async def _refuse(
    deps: MediaDeps, params: MediaFetchParams, channel: str, reason: str
) -> dict[str, Any]:
    await deps.repo.media_refused(params.media_row_id, "rejected", reason)
    MEDIA_DOWNLOADS.labels(channel, "rejected").inc()
    log.info("media_rejected", reason=reason)
    return {"status": "rejected", "reason": reason}
