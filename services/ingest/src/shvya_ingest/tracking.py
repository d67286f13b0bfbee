"""Email engagement: who fetched a tracking pixel or followed a link, and the SQL that records
opens, clicks and unsubscribes.

Many fetches are not people: Gmail loads every image through Google's image proxy, Apple Mail
Privacy Protection pre-fetches all remote content, and security gateways (Microsoft Safe Links,
Barracuda, Mimecast, Proofpoint, ...) open links and images to scan them. Those are recorded
with `machine: true` and the agent's name, so reports can count human opens and clicks apart.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

import asyncpg

# (agent, pattern on the User-Agent); the first match names the agent.
_MACHINE_AGENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("google_image_proxy", r"GoogleImageProxy|via ggpht\.com"),
        ("yahoo_mail_proxy", r"YahooMailProxy"),
        (
            "microsoft_safelinks",
            r"safelinks|Microsoft Office Existence Discovery|BingPreview"
            r"|MicrosoftPreview|Microsoft-?ATP",
        ),
        ("barracuda", r"Barracuda"),
        ("mimecast", r"Mimecast"),
        ("proofpoint", r"Proofpoint|\bppops\b"),
        ("cisco_ironport", r"IronPort|Cisco"),
        (
            "security_scanner",
            r"Symantec|Trend ?Micro|Forcepoint|Sophos|FireEye|Trellix|Zscaler"
            r"|Fortinet|FortiGuard|Cloudmark|SpamTitan|Trustwave|Check ?Point"
            r"|Hornet ?Security|Vade|Avanan|Abnormal ?Security",
        ),
        (
            "bot",
            r"bot\b|crawler|spider|preview|python-|curl/|wget|Go-http-client|okhttp|Java/"
            r"|HeadlessChrome|PhantomJS|libwww|axios|node-fetch",
        ),
    )
)
# Apple Mail Privacy Protection fetches from Apple's own network with a bare UA.
_APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
_APPLE_MPP_AGENT = "Mozilla/5.0"


def machine_agent(user_agent: str | None, client_ip: str | None) -> str | None:
    """The name of the proxy or scanner that made this request, or None for a person."""
    agent = (user_agent or "").strip()
    if not agent:
        return "no_user_agent"
    if agent == _APPLE_MPP_AGENT:
        return "apple_mail_privacy"
    if client_ip:
        try:
            if ipaddress.ip_address(client_ip) in _APPLE_NETWORK:
                return "apple_mail_privacy"
        except ValueError:
            pass
    for name, pattern in _MACHINE_AGENTS:
        if pattern.search(agent):
            return name
    return None


_RECORD = """
INSERT INTO events (company_id, lead_id, type, payload)
SELECT company_id, lead_id, $2, $3::jsonb || jsonb_build_object('message_id', id)
FROM messages WHERE id = $1 AND direction = 'outbound'
RETURNING id
"""

_SUPPRESS = """
WITH suppressed AS (
    INSERT INTO suppressions (company_id, channel, address, scope, reason)
    SELECT id, 'email', $2, 'all', 'unsubscribe_link' FROM companies WHERE id = $1
    ON CONFLICT (company_id, channel, address, scope) DO NOTHING
    RETURNING company_id
), event AS (
    INSERT INTO events (company_id, lead_id, type, payload)
    SELECT s.company_id, (SELECT id FROM leads WHERE company_id = $1 AND email = $2),
           'lead.unsubscribed',
           jsonb_build_object('channel', 'email', 'reason', 'unsubscribe_link',
                              'one_click', $3::boolean)
    FROM suppressed s
)
SELECT EXISTS (SELECT 1 FROM companies WHERE id = $1) AS company_exists,
       EXISTS (SELECT 1 FROM suppressed) AS new
"""


class TrackingRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record_engagement(
        self, message_id: uuid.UUID, event_type: str, payload: dict[str, Any]
    ) -> bool:
        """Record an open or click on an outbound message; False if there is no such message."""
        row = await self.pool.fetchval(_RECORD, message_id, event_type, payload)
        return row is not None

    async def suppress_email(
        self, company_id: uuid.UUID, address: str, *, one_click: bool
    ) -> tuple[bool, bool]:
        """Suppress `address` for every email of the company: (company exists, newly added)."""
        row = await self.pool.fetchrow(_SUPPRESS, company_id, address, one_click)
        assert row is not None
        return row["company_exists"], row["new"]
