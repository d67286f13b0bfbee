"""Received media and attachments, read back: what files a message has, and their bytes.

    GET /v1/messages/{id}/media            the message's files: kind, name, type, size,
                                           SHA-256 and whether the file is stored
    GET /v1/messages/{id}/media/{index}    one file's bytes (an agent's key or a console session);
                                           HEAD for its headers alone

A message's files are, in this order: the media a WhatsApp message carried (its `inbound_media`
row, which dispatch's media.fetch fills in; index 0) and the attachments of an email
(`meta.attachments`, stored when the mail was filed). The bytes come from the media store
(content-addressed, `shvya_common.storage`), and the message must be the caller's company's:
another company's id is not found (404), as is a file not (or no longer) in the store.

A received file is someone else's content served from this origin, so it is never allowed to
run: only the image, audio and video types of INLINE_TYPES are served as themselves (inline);
anything else (HTML, SVG, PDF, ...) goes as `application/octet-stream` with
`Content-Disposition: attachment`. Every answer has `X-Content-Type-Options: nosniff` and a
`Content-Security-Policy` with `sandbox` and no script source, so even a file opened in a tab of
its own has no script and no origin. The ETag is the file's SHA-256 (a file never changes under
its key); `Cache-Control: private, no-cache` keeps it out of shared caches and has the browser
ask again each time (a 304 when unchanged), so an erased file or a signed-out browser does not
see it from a cache.

A browser plays audio and video (and seeks in them) with Range requests, and Safari plays no
video without them, so a file is also served in part (RFC 9110 section 14): every file answer
says `Accept-Ranges: bytes`; one range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is a 206 with
`Content-Range: bytes a-b/size` and only those bytes, read from the store without the rest;
a range that starts past the end is a 416 with `Content-Range: bytes */size`. A malformed or
multi-range header, or an `If-Range` that is not the file's ETag, gets the whole file (a 200),
as the RFC allows. The size is the one recorded when the file was stored, which is its stored
length: a key is content-addressed.

The bytes are read from the store in pieces of `READ_CHUNK` (1 MiB) and streamed, so serving
a 25 MB video, whole or from a range, holds a megabyte in ingest rather than the file (the
first piece is read before the answer starts, so a file gone from the store is still a 404;
one that vanishes mid-answer ends it short of its Content-Length).
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.storage import MediaNotFound, MediaStore
from shvya_ingest import examples as ex
from shvya_ingest.auth import AgentCompany
from shvya_ingest.v1.common import ERRORS, V1, ErrorOut, IngestDep, MessageId, not_found

router = APIRouter(prefix="/v1", dependencies=V1, tags=["media"], responses=ERRORS)

# Types a browser shows or plays without running anything; everything else is a download.
# SVG is an image that can carry script, so it is not here.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "audio/aac",
        "audio/amr",
        "audio/mp4",
        "audio/mpeg",
        "audio/ogg",
        "audio/opus",
        "audio/wav",
        "audio/webm",
        "video/3gpp",
        "video/mp4",
        "video/ogg",
        "video/webm",
    }
)
DOWNLOAD_TYPE = "application/octet-stream"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-cache",
    "Accept-Ranges": "bytes",
}
MAX_FILENAME = 150
# How much of a file is read from the store (and held) at a time while it is served.
READ_CHUNK = 1024 * 1024
# One range of bytes; longer numbers than any file's size are a malformed header.
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.IGNORECASE)

MediaStatus = Literal["stored", "pending", "rejected", "failed", "skipped", "not_downloaded"]
_REASONS = {
    "pending": "not downloaded yet: dispatch's media.fetch job is on it",
    "not_downloaded": "this channel's media is not downloaded (only its description is kept)",
}


class MediaItemOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "index": 0,
                    "kind": "image",
                    "filename": "image-0.jpg",
                    "mime_type": "image/jpeg",
                    "size": 48213,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "status": "stored",
                    "reason": None,
                    "inline": True,
                    "url": f"/v1/messages/{ex.MESSAGE_ID}/media/0",
                }
            ]
        }
    )

    index: int = Field(description="Its place among the message's files: GET .../media/{index}.")
    kind: str = Field(
        description="WhatsApp's kind (image, video, audio, voice, document, sticker), or"
        " `attachment` for an email's file."
    )
    filename: str = Field(
        description="The sender's file name without any path (or one made from the kind)."
    )
    mime_type: str | None = Field(description="The stored type (else the one the sender gave).")
    size: int | None = Field(description="Bytes.")
    sha256: str | None = Field(description="Hex SHA-256 of the stored bytes; also the ETag.")
    status: MediaStatus = Field(
        description="`stored` (the bytes can be read), `pending` (not downloaded yet),"
        " `rejected` (a type or size the platform refuses), `failed` (the download gave up),"
        " `skipped` (an email attachment over EMAIL_ATTACHMENT_MAX_BYTES), `not_downloaded`"
        " (the channel's media is not fetched)."
    )
    reason: str | None = Field(description="Why it is not stored, when it is not.")
    inline: bool = Field(
        description="Served as its own type (a safe image, audio or video); otherwise as a"
        " download (application/octet-stream)."
    )
    url: str | None = Field(description="Where its bytes are, when stored.")


class MessageMediaOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"message_id": ex.MESSAGE_ID, "items": [ex.example_of(MediaItemOut)]}
        )
    )

    message_id: uuid.UUID
    items: list[MediaItemOut]


@dataclass(frozen=True)
class _Item:
    out: MediaItemOut
    key: str | None


def base_type(mime: object) -> str | None:
    """`Image/PNG; name=x` → `image/png`; None for what is not a type."""
    if not isinstance(mime, str):
        return None
    value = mime.split(";", 1)[0].strip().lower()
    return (
        value
        if re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", value)
        else None
    )


def safe_filename(name: object, fallback: str) -> str:
    """The last path segment of `name`, without control, quote or reserved characters, at most
    MAX_FILENAME characters; `fallback` when nothing is left."""
    text = unicodedata.normalize("NFC", name if isinstance(name, str) else "")
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C" and c not in '"<>:|?*;%')
    text = text.strip(" .")[:MAX_FILENAME].strip(" .")
    return text or fallback


def content_disposition(kind: Literal["inline", "attachment"], filename: str) -> str:
    """RFC 6266: an ASCII `filename` for every client, and `filename*` when the name is not
    ASCII."""
    plain = re.sub(r"[^A-Za-z0-9 ._()+=,@~-]", "_", filename)
    value = f'{kind}; filename="{plain}"'
    if plain != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def byte_range(header: str | None, size: int) -> range | None:
    """The bytes of a `size`-byte file that a Range header asks for, as offsets; an empty range
    when none of them exists (416); None to send the whole file: no header, one that is
    malformed, not in bytes or asks for several ranges (RFC 9110 lets a server ignore it), or an
    empty file, which has no byte to ask for."""
    found = _RANGE.fullmatch(header.strip()) if header and size else None
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first, last = found.group(1), found.group(2)
    if not first:
        suffix = int(last)
        return range(max(size - suffix, 0), size) if suffix else range(0)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return range(0)
    return range(start, min(int(last) + 1, size) if last else size)


def _fallback_name(kind: str, index: int, mime: str | None) -> str:
    extension = (mimetypes.guess_extension(mime) if mime else None) or ""
    return f"{kind}-{index}{extension}"


def _item(
    message_id: uuid.UUID,
    index: int,
    kind: str,
    *,
    filename: object,
    mime: str | None,
    size: object,
    sha256: object,
    status: MediaStatus,
    reason: str | None,
    key: str | None,
) -> _Item:
    if status == "stored" and key is None:
        status, reason = "failed", "no storage key was recorded"
    stored = status == "stored"
    return _Item(
        MediaItemOut(
            index=index,
            kind=kind,
            filename=safe_filename(filename, _fallback_name(kind, index, mime)),
            mime_type=mime,
            size=size if isinstance(size, int) else None,
            sha256=sha256 if isinstance(sha256, str) else None,
            status=status,
            reason=reason,
            inline=mime in INLINE_TYPES,
            url=f"/v1/messages/{message_id}/media/{index}" if stored else None,
        ),
        key if stored else None,
    )


def _items(row: Any) -> list[_Item]:
    """The message's files, in index order (see the module docstring)."""
    meta = row["meta"] if isinstance(row["meta"], dict) else {}
    message_id = row["id"]
    found: list[_Item] = []
    described = meta.get("media") if isinstance(meta.get("media"), dict) else None
    if row["media_status"] is not None:
        status: MediaStatus = row["media_status"]
        found.append(
            _item(
                message_id,
                0,
                row["kind"],
                filename=row["filename"],
                mime=base_type(row["mime_type"] or row["declared_mime_type"]),
                size=row["size_bytes"],
                sha256=row["sha256"],
                status=status,
                reason=row["error"] or _REASONS.get(status),
                key=row["storage_key"],
            )
        )
    elif described is not None:
        found.append(
            _item(
                message_id,
                0,
                str(described.get("kind") or "media"),
                filename=described.get("filename"),
                mime=base_type(described.get("mime_type")),
                size=None,
                sha256=None,
                status="not_downloaded",
                reason=_REASONS["not_downloaded"],
                key=None,
            )
        )
    attachments = meta.get("attachments")
    for entry in attachments if isinstance(attachments, list) else []:
        if not isinstance(entry, dict):
            continue
        key = entry.get("key") if isinstance(entry.get("key"), str) else None
        skipped = entry.get("skipped")
        found.append(
            _item(
                message_id,
                len(found),
                "attachment",
                filename=entry.get("filename"),
                mime=base_type(entry.get("mime_type")),
                size=entry.get("size"),
                sha256=entry.get("sha256"),
                status="skipped" if skipped else "stored",
                reason=str(skipped) if skipped else None,
                key=key,
            )
        )
    return found


_MESSAGE = """
SELECT m.id, m.meta, i.status AS media_status, i.kind, i.filename, i.mime_type,
       i.declared_mime_type, i.size_bytes, i.sha256, i.storage_key, i.error
FROM messages m LEFT JOIN inbound_media i ON i.message_id = m.id AND i.company_id = m.company_id
WHERE m.id = $1 AND m.company_id = $2
"""


async def _message_items(ingest: Any, company_id: uuid.UUID, message_id: uuid.UUID) -> list[_Item]:
    row = await ingest.plat.pool.fetchrow(_MESSAGE, message_id, company_id)
    if row is None:
        raise not_found("message", message_id)
    return _items(row)


@router.get("/messages/{message_id}/media", response_model=MessageMediaOut)
async def list_media(
    message_id: MessageId, company_id: AgentCompany, ingest: IngestDep
) -> MessageMediaOut:
    """The files a message carries (none for most), each with whether its bytes are stored and,
    if not, why."""
    items = await _message_items(ingest, company_id, message_id)
    return MessageMediaOut(message_id=message_id, items=[i.out for i in items])


FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file: a safe image, audio or video type as itself, anything else"
        " as application/octet-stream with Content-Disposition: attachment.",
        "content": {t: {} for t in (DOWNLOAD_TYPE, *sorted(INLINE_TYPES))},
    },
    206: {
        "description": "The part of the file one `Range: bytes=...` asked for (with If-Range,"
        " only while that names the file's ETag), with `Content-Range: bytes first-last/size`.",
        "headers": {"Content-Range": {"schema": {"type": "string"}}},
        "content": {t: {} for t in (DOWNLOAD_TYPE, *sorted(INLINE_TYPES))},
    },
    304: {"description": "If-None-Match named the file's ETag: it has not changed."},
    416: {
        "model": ErrorOut,
        "description": "The Range starts past the file's end; `Content-Range: bytes */size`"
        " says how large the file is.",
        "headers": {"Content-Range": {"schema": {"type": "string"}}},
    },
}


@router.get(
    "/messages/{message_id}/media/{index}", response_class=Response, responses=FILE_RESPONSES
)
@router.head(
    "/messages/{message_id}/media/{index}",
    response_class=Response,
    responses=FILE_RESPONSES,
    summary="Head Media",
)
async def get_media(
    request: Request,
    message_id: MessageId,
    index: Annotated[int, Path(ge=0, le=1000, description="From the list's `index`.")],
    company_id: AgentCompany,
    ingest: IngestDep,
    if_none_match: Annotated[
        str | None,
        Header(
            max_length=1000,
            description="ETags the client holds (or `*`): a 304 without the bytes if one is the"
            " file's.",
        ),
    ] = None,
    range_: Annotated[
        str | None,
        Header(
            alias="range",
            description="One byte range, `bytes=first-last`, `bytes=first-` or `bytes=-count`,"
            " for a 206 with only those bytes; any other value gets the whole file.",
        ),
    ] = None,
    if_range: Annotated[
        str | None,
        Header(
            description="The ETag the client holds part of: Range counts only if it still"
            " names the file."
        ),
    ] = None,
) -> Response:
    """One file's bytes, with its stored type when that is safe to show (see INLINE_TYPES),
    else as a download; 404 when the file is not stored (pending, refused, or gone from the
    store). A Range request gets a 206 with only the bytes it asks for (416 past the end).
    HEAD answers the same status and headers without the bytes."""
    items = await _message_items(ingest, company_id, message_id)
    if index >= len(items):
        raise HTTPException(404, f"message {message_id} has no file {index}")
    item = items[index]
    if item.key is None:
        why = item.out.reason or item.out.status
        raise HTTPException(
            404, f"file {index} of message {message_id} is {item.out.status}: {why}"
        )
    etag = f'"{item.out.sha256 or item.key.rsplit("/", 1)[-1]}"'
    headers = {**SECURITY_HEADERS, "ETag": etag}
    asked = {t.strip().removeprefix("W/") for t in (if_none_match or "").split(",")}
    if etag in asked or "*" in asked:
        return Response(status_code=304, headers=headers)
    size = item.out.size
    stale = if_range is not None and if_range.strip() != etag
    wanted = None if size is None or stale else range_
    span = byte_range(wanted, size or 0)
    if span is not None and not span:
        raise HTTPException(
            416,
            f"file {index} of message {message_id} has {size} bytes: the range asks for none",
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    store = ingest.media
    # What is read: the range asked for, else the whole file (by its recorded size).
    part = span if span is not None else (range(size) if size else None)
    try:
        if part is None:  # no size recorded, or an empty file
            first = await store.get(item.key)
        else:
            first = await store.get_range(item.key, part.start, min(len(part), READ_CHUNK))
    except MediaNotFound as err:
        raise HTTPException(
            404, f"file {index} of message {message_id} is no longer in the media store"
        ) from err
    inline = item.out.inline and item.out.mime_type is not None
    headers["Content-Disposition"] = content_disposition(
        "inline" if inline else "attachment", item.out.filename
    )
    media_type = item.out.mime_type if inline and item.out.mime_type else DOWNLOAD_TYPE
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {span.start}-{span.stop - 1}/{size}"
    if request.method == "HEAD":  # the first piece was read: a file gone is a 404 here too
        headers["Content-Length"] = str(len(part) if part is not None else len(first))
        return Response(status_code=status, media_type=media_type, headers=headers)
    if part is None or len(part) <= READ_CHUNK:
        return Response(first, status_code=status, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(len(part))
    return StreamingResponse(
        _pieces(store, item.key, part, first),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )


async def _pieces(store: MediaStore, key: str, part: range, first: bytes) -> AsyncIterator[bytes]:
    """`part` of the file, `first` (its first READ_CHUNK bytes) and then a piece at a time."""
    yield first
    for start in range(part.start + len(first), part.stop, READ_CHUNK):
        yield await store.get_range(key, start, min(READ_CHUNK, part.stop - start))
