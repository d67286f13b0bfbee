"""The live notice: "these events were just written for this company", published on core NATS
(`Topology.live_subject`) by the scheduler's event feed after each pass commits, and turned
into server-sent events by ingest for the company's signed-in console users.

A notice is a hint, never the data: a console that gets one re-reads what it shows through the
API, and one that may have missed notices (a reconnect, a NATS outage, a full buffer) re-reads
everything. So a lost notice costs freshness, never correctness, and the subject needs no stream.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

# Events named one by one in a notice; past this the notice says `truncated` and the console
# re-reads everything, so a 10,000-lead campaign pass is still one small message.
MAX_NOTICE_EVENTS = 50


class LiveEvent(BaseModel):
    id: uuid.UUID
    type: str
    lead_id: uuid.UUID | None = None
    created_at: datetime


class LiveNotice(BaseModel):
    company_id: uuid.UUID
    events: list[LiveEvent] = Field(default_factory=list, max_length=MAX_NOTICE_EVENTS)
    truncated: bool = Field(False, description="More events were written than are named.")
