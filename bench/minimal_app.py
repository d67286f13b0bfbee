"""The yardstick: a minimal async FastAPI handler (pydantic body, small JSON out), served the
same way as ingest, so ingest's figures can be read as a ratio of what one process can do."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    phone_number: str
    contact_name: str | None = None
    message_text: str
    channel: str


@app.post("/inbound-message")
async def inbound(body: Body) -> dict[str, str]:
    return {"status": "ok", "message_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4())}
