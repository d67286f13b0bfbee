"""`GET /asyncapi.json`: the AsyncAPI 3 document of the subjects and streams, beside FastAPI's
`/openapi.json`, generated from the contracts for this install's prefix."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shvya_common.asyncapi import asyncapi_document
from shvya_ingest.api import IngestDep

router = APIRouter()


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi(ingest: IngestDep) -> dict[str, Any]:
    """The AsyncAPI document: one channel per task, the dead letters, the outbound webhooks."""
    settings = ingest.settings
    return asyncapi_document(settings.nats_prefix, settings.nats_servers[0])
