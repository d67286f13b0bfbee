"""Proof that a company may receive for a WhatsApp business number: Graph shows the number
(and the WhatsApp Business Account, when one is named) to the company's own access token.

    GET {base_url}/{version}/{phone_number_id}?fields=id,verified_name
    GET {base_url}/{version}/{waba_id}?fields=id,name
    Authorization: Bearer <the account's access_token>

An account's `phone_number_id` routes that number's webhooks into its company, so a claim that
anyone could make by typing another business's id would let one company read another's
customers (when the platform's own app secret signs both) or keep the owner from registering
it. Graph answers an object only to a token with access to it; that answer is the proof. It
is asked at the platform's WHATSAPP_CLOUD_BASE_URL, never at the account's own `base_url`: a
server the company chose would vouch for anything.

`NotProven` (the caller's problem: 422) carries Graph's reason; `ProofUnavailable` (Graph
could not be asked: 502) says to try again. The token goes only into the Authorization header
and never into a reason.
"""

from __future__ import annotations

from typing import Any

import httpx

from shvya_common.whatsapp.graph_settings import GraphSettings

_REASON_CHARS = 300
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class NotProven(Exception):
    """Graph would not show the number (or WABA) to this token: the claim is refused."""


class ProofUnavailable(Exception):
    """Graph could not be asked (unreachable, timed out, a 5xx): nothing is decided."""


def _graph_reason(response: httpx.Response, token: str) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = str(error.get("message") or "") if isinstance(error, dict) else ""
    code = error.get("code") if isinstance(error, dict) else None
    reason = f"Graph answered HTTP {response.status_code}"
    if code is not None or message:
        reason += f" (error {code}: {message.strip()})"
    return reason.replace(token, "[token]")[:_REASON_CHARS]


async def _show(
    client: httpx.AsyncClient, url: str, fields: str, token: str, object_id: str, what: str
) -> dict[str, Any]:
    try:
        response = await client.get(
            url, params={"fields": fields}, headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as err:
        raise ProofUnavailable(
            f"Graph could not be reached to check {what} {object_id} ({type(err).__name__});"
            " try again"
        ) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise ProofUnavailable(
            f"Graph could not check {what} {object_id} now: {_graph_reason(response, token)};"
            " try again"
        )
    body: Any = None
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
    if not isinstance(body, dict) or str(body.get("id")) != object_id:
        raise NotProven(
            f"the access token cannot see {what} {object_id}: {_graph_reason(response, token)}."
            " Use a token of the business that owns it (a system user's token with"
            " whatsapp_business_management and whatsapp_business_messaging)"
        )
    return body


async def prove_number(
    settings: GraphSettings,
    config: dict[str, Any],
    token: str,
) -> str | None:
    """Ask Graph, with `token`, for the account's number and WABA (those it names): the proof
    that the company may receive for them. Returns the number's verified name."""
    phone_number_id = str(config["phone_number_id"]) if config.get("phone_number_id") else None
    waba_id = str(config["waba_id"]) if config.get("waba_id") else None
    base = settings.whatsapp_cloud_base_url.rstrip("/")
    version = str(config.get("api_version") or settings.whatsapp_cloud_api_version)
    version = version if version.startswith("v") else f"v{version}"
    verified_name: str | None = None
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        if phone_number_id is not None:
            number = await _show(
                client,
                f"{base}/{version}/{phone_number_id}",
                "id,verified_name",
                token,
                phone_number_id,
                "phone number",
            )
            verified_name = number.get("verified_name")
        if waba_id is not None:
            await _show(
                client,
                f"{base}/{version}/{waba_id}",
                "id,name",
                token,
                waba_id,
                "WhatsApp Business Account",
            )
    return verified_name
