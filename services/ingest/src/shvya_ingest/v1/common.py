"""What every /v1 route shares: the per-key rate limit, cursor pagination and error helpers.

Lists are ordered by (created_at, id) and paged with an opaque cursor (the last row's pair,
base64url), so a page never skips or repeats a row while others are being added.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from shvya_ingest.api import Ingest, IngestDep
from shvya_ingest.auth import Principal, principal
from shvya_ingest.ratelimit import Limited

T = TypeVar("T")


async def rate_limited(
    request: Request, caller: Annotated[Principal, Depends(principal)]
) -> Principal:
    """Count this request against its key's (or the operator's) rate limit."""
    ingest: Ingest = request.app.state.ingest
    try:
        await ingest.limiter.hit(key=str(caller.key_id or caller.kind))
    except Limited as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from err
    return caller


V1 = [Depends(rate_limited)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, ident = json.loads(raw)
        return datetime.fromisoformat(when), uuid.UUID(ident)
    except (ValueError, TypeError) as err:
        raise HTTPException(422, "cursor is not one this API gave out") from err


def page_of(rows: list[Any], limit: int, build: Any) -> Page[Any]:
    """A page from `limit + 1` fetched rows: the extra one only says there is more."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return Page(items=[build(r) for r in rows], next_cursor=cursor)


def limit_param(request: Request, limit: int) -> int:
    ingest: Ingest = request.app.state.ingest
    largest = ingest.settings.max_page_size
    if limit > largest:
        raise HTTPException(422, f"limit may be at most {largest}")
    return limit


Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
Cursor = Annotated[str | None, Query(max_length=200, description="From `next_cursor`.")]


def not_found(kind: str, ident: object) -> HTTPException:
    return HTTPException(404, f"{kind} {ident} not found")


__all__ = [
    "V1",
    "Cursor",
    "IngestDep",
    "Limit",
    "Page",
    "decode_cursor",
    "limit_param",
    "not_found",
    "page_of",
]
