"""What every /v1 route shares: the per-key rate limit, cursor pagination, error helpers and
the parameters many routes take (item ids in the path, paging and lead filters in the query),
each declared once with its description.

Lists are ordered by (created_at, id) and paged with an opaque cursor (the last row's pair,
base64url), so a page never skips or repeats a row while others are being added.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shvya_ingest import examples as ex
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
        await ingest.limiter.hit(key=caller.rate_key)
    except Limited as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from err
    return caller


V1 = [Depends(rate_limited)]


class ErrorOut(BaseModel):
    detail: Any = Field(description="Why the request was refused (a list of field errors for 422).")


def _error(why: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": why}


# What any /v1 route may answer besides its success: documented, so clients (and the schema
# fuzzer) can rely on them.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The request cannot be served as sent."),
    401: _error("No credential, or an unknown or revoked key."),
    403: _error("The key's role may not do this (or the operator token on a company route)."),
    404: _error("No such item in the caller's company."),
    409: _error("Conflicts with what exists (a duplicate name, address, ...)."),
    413: _error("The body is larger than the route accepts."),
    415: _error("The body's media type is not one the route accepts."),
    422: _error("The body, query or path does not validate."),
    429: _error("The key's rate limit is reached; see Retry-After."),
    502: _error("An upstream service refused the request."),
    503: _error("A dependency (database, queue, keyring) is unavailable; retry later."),
}


class Page(BaseModel, Generic[T]):
    model_config = ConfigDict(json_schema_extra=ex.page_example)

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


Limit = Annotated[
    int,
    Query(ge=1, le=1000, description="Items per page, 1 to 1000 and at most MAX_PAGE_SIZE."),
]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="The last page's `next_cursor`; none for the first page."),
]
Order = Annotated[
    Literal["oldest", "newest"],
    Query(description="`newest` pages back from the latest (a long history's end first)."),
]


def page_limit(most: int) -> Any:
    """The `limit` of a list paged by `offset`: 1 to `most` items per page."""
    return Query(ge=1, le=most, description=f"Items per page, 1 to {most}.")


Offset = Annotated[
    int, Query(ge=0, description="How many items to skip before the page: 0 for the first.")
]
LeadFilter = Annotated[uuid.UUID | None, Query(description="Only those of this lead (its id).")]
StageFilter = Annotated[
    uuid.UUID | None, Query(description="Only leads in this pipeline stage (the stage's id).")
]


def _item_id(what: str) -> Any:
    return Path(description=f"The {what}'s id (a UUID); another company's is not found.")


AccountId = Annotated[uuid.UUID, _item_id("channel account")]
ApiKeyId = Annotated[uuid.UUID, _item_id("API key")]
CampaignId = Annotated[uuid.UUID, _item_id("campaign")]
DeliveryId = Annotated[uuid.UUID, _item_id("webhook delivery")]
DocumentId = Annotated[uuid.UUID, _item_id("knowledge-base document")]
EndpointId = Annotated[uuid.UUID, _item_id("webhook endpoint")]
EnrolmentId = Annotated[uuid.UUID, _item_id("enrolment")]
LeadId = Annotated[uuid.UUID, _item_id("lead")]
MailboxId = Annotated[uuid.UUID, _item_id("IMAP mailbox")]
MessageId = Annotated[uuid.UUID, _item_id("message")]
PipelineId = Annotated[uuid.UUID, _item_id("pipeline")]
ReminderId = Annotated[uuid.UUID, _item_id("reminder")]
ScheduleId = Annotated[uuid.UUID, _item_id("schedule")]
SequenceId = Annotated[uuid.UUID, _item_id("sequence")]
StageId = Annotated[uuid.UUID, _item_id("stage")]
StepId = Annotated[uuid.UUID, _item_id("step")]
SuppressionId = Annotated[uuid.UUID, _item_id("suppression")]
TemplateId = Annotated[uuid.UUID, _item_id("template")]
UserId = Annotated[uuid.UUID, _item_id("user")]
# The operator's routes name a company in the path (its own key's routes never do).
CompanyId = Annotated[uuid.UUID, Path(description="The company's id (a UUID).")]


def order_sql(order: str) -> tuple[str, str]:
    """(the cursor's comparison, ORDER BY's direction) for a (created_at, id) page in `order`."""
    return (">", "") if order == "oldest" else ("<", " DESC")


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
