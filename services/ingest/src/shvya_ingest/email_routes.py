"""Email's public routes: the inbound-email webhook, RFC 8058 one-click unsubscribe, and the
open-pixel and click-redirect tracking links.

`POST /webhooks/email` always needs a bearer credential: a company's `ingest` or `admin` key
(the mail files into that company), or the platform's EMAIL_WEBHOOK_TOKEN (any company, by
`company_id` or the recipient's mailbox). Without one it answers 401, with a wrong one 403.

Every link carries a token signed with LINK_SECRET (see `shvya_common.links`, which builds them):
- `POST /u/{token}` suppresses the address for the company's email and answers 200, never a
  redirect (RFC 8058 one-click: mail providers POST `List-Unsubscribe=One-Click`).
- `GET /u/{token}` only shows a page whose button POSTs: link scanners follow GETs, so a GET
  never unsubscribes.
- `GET /t/o/{token}.gif` answers a 1x1 GIF and records `email.opened`.
- `GET /t/c/{token}` records `email.clicked` and redirects (302) to the URL signed into the token,
  and nowhere else: a token that does not verify is refused, so this is no open redirect.
"""

from __future__ import annotations

import html
import secrets
import uuid
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shvya_common.apikeys import key_prefix
from shvya_common.links import KIND_CLICK, KIND_OPEN
from shvya_common.tokens import TokenError, verify
from shvya_ingest import examples as ex
from shvya_ingest.api import Ingest, IngestDep
from shvya_ingest.auth import AuthError
from shvya_ingest.mail import (
    EmailError,
    InboundEmail,
    file_email,
    first_message_id,
    message_ids,
    parse_address,
    parse_addresses,
)
from shvya_ingest.phone import AddressError, normalise_email
from shvya_ingest.tracking import TrackingRepository, machine_agent

log = structlog.get_logger(__name__)

# The smallest transparent GIF (1x1, 43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}
MAX_USER_AGENT = 300

router = APIRouter(tags=["email"])
bearer = HTTPBearer(auto_error=False)


class InboundEmailWebhook(BaseModel):
    """An inbound email as JSON, as mail-parsing services (or a small script) post it.

    `from` and `to` take any RFC 5322 form (`Ana Lead <ana@example.org>`, quoted or encoded-word
    names); `in_reply_to`, `references` and `headers` (a name → value object, or a list of
    [name, value] pairs) let the mail join its thread and be recognised as an auto-reply."""

    model_config = ConfigDict(
        populate_by_name=True,
        str_strip_whitespace=True,
        json_schema_extra=ex.examples(
            {
                "from": f"{ex.CONTACT} <{ex.EMAIL}>",
                "to": ["sales@acme.example"],
                "subject": "Re: your solar quote",
                "text": "Thanks! Can the installation be in June?",
                "message_id": "<CAF9x2k1q@mail.example.com>",
                "in_reply_to": "<0190f3b1.quote@acme.example>",
            }
        ),
    )

    sender: str = Field(alias="from", min_length=3, max_length=998)
    from_name: str | None = Field(None, max_length=200)
    to: list[str] | str | None = None
    subject: str | None = Field(None, max_length=2000)
    text: str = Field("", max_length=1_000_000)
    html: str | None = Field(None, max_length=2_000_000)
    message_id: str = Field(min_length=1, max_length=998)
    in_reply_to: str | None = Field(None, max_length=998)
    references: list[str] | str | None = None
    headers: dict[str, str] | list[tuple[str, str]] | None = None
    company_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _has_content(self) -> InboundEmailWebhook:
        if not self.text and not self.html and not self.subject:
            raise ValueError("an inbound email needs text, html or a subject")
        return self


class InboundEmailAccepted(BaseModel):
    """What filing an email did. `kind` is `filed` (an AI reply follows: `job_id`),
    `auto_reply` (filed, never answered) or `bounce` (no lead message; `bounces` recipients
    recorded)."""

    model_config = ConfigDict(json_schema_extra=ex.examples({**ex.EMAIL_FILED, "bounces": 0}))

    status: Literal["ok"] = "ok"
    kind: Literal["filed", "auto_reply", "bounce"]
    message_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    bounces: int = 0


async def email_webhook_company(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> uuid.UUID | None:
    """The company mail posted here files into: a company's `ingest` or `admin` key files into
    that company only; the platform's EMAIL_WEBHOOK_TOKEN (None) may name any company. Mail is
    never accepted without one of them."""
    ingest: Ingest = request.app.state.ingest
    token = ingest.settings.email_webhook_token
    if credentials is None or credentials.scheme.lower() != "bearer":
        how = "a company's ingest key" + (
            " or EMAIL_WEBHOOK_TOKEN" if token is not None else " (EMAIL_WEBHOOK_TOKEN is unset)"
        )
        raise HTTPException(
            401,
            f"POST /webhooks/email needs 'Authorization: Bearer <token>': {how}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials
    if token is not None and secrets.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        return None
    if key_prefix(given) is None:
        raise HTTPException(403, "email webhook token does not match")
    try:
        caller = await ingest.auth.authenticate(f"Bearer {given}")
    except AuthError as err:
        raise HTTPException(403, f"email webhook: {err.reason}") from err
    if caller is None or caller.company_id is None or caller.role not in ("ingest", "admin"):
        raise HTTPException(403, "posting mail needs a company's ingest or admin key")
    return caller.company_id


EmailWebhookCompany = Annotated[uuid.UUID | None, Depends(email_webhook_company)]


@router.post("/webhooks/email", response_model=InboundEmailAccepted, tags=["webhooks"])
async def inbound_email(
    body: InboundEmailWebhook, ingest: IngestDep, keyed: EmailWebhookCompany
) -> InboundEmailAccepted:
    """File an inbound email like /inbound-message (channel email, the sender is the lead);
    with a company's key, into that company."""
    if keyed is not None and body.company_id not in (None, keyed):
        raise HTTPException(403, "company_id is not the company of this key")
    recipients = [body.to] if isinstance(body.to, str) else list(body.to or [])
    try:
        sender, name = parse_address(body.sender)
    except EmailError as err:
        raise HTTPException(422, str(err)) from err
    await ingest.limit_sender(keyed or body.company_id, sender)
    headers = list(body.headers.items()) if isinstance(body.headers, dict) else body.headers
    references = body.references
    email = InboundEmail(
        sender=sender,
        sender_name=body.from_name or name,
        to=[a for r in recipients for a, _ in parse_addresses(r)],
        subject=body.subject,
        text=body.text,
        html=body.html,
        message_id=body.message_id,
        in_reply_to=first_message_id(body.in_reply_to),
        references=message_ids(
            " ".join(references) if isinstance(references, list) else references
        ),
        headers=[(str(k), str(v)) for k, v in headers or []],
        source="json",
    )
    try:
        outcome = await file_email(ingest, email, keyed or body.company_id)
    except EmailError as err:
        raise HTTPException(422, str(err)) from err
    accepted = outcome.accepted
    if outcome.kind == "filed" and accepted is not None and accepted.job_id is None:
        raise HTTPException(409, "message already filed but its job is missing")
    return InboundEmailAccepted(
        kind=outcome.kind,
        message_id=accepted.message_id if accepted else None,
        job_id=accepted.job_id if accepted else None,
        bounces=outcome.bounces_recorded,
    )


def _claims(ingest: Ingest, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = verify(ingest.settings.link_key(), token)
        return claims
    except TokenError as err:
        raise HTTPException(404, "this link is not valid") from err


def _unsubscribe_target(ingest: Ingest, token: str) -> tuple[uuid.UUID, str]:
    claims = _claims(ingest, token)
    try:
        if claims.get("ch") != "email":
            raise ValueError("not an email unsubscribe link")
        return uuid.UUID(str(claims["c"])), normalise_email(str(claims["a"]))
    except (KeyError, ValueError, AddressError) as err:
        raise HTTPException(404, "this link is not valid") from err


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=robots content="noindex,nofollow">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;color:#222}button{font-size:1rem;padding:.6rem 1.2rem;"
        "cursor:pointer}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=NO_STORE)


def _masked(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


UnsubscribeToken = Annotated[
    str,
    Path(
        description="The signed token of the List-Unsubscribe link in the email: it names the"
        " company and the address (an unknown or forged one is not found)."
    ),
]


@router.get("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: UnsubscribeToken, ingest: IngestDep) -> HTMLResponse:
    """A confirmation page; only its button (a POST) unsubscribes."""
    _, address = _unsubscribe_target(ingest, token)
    form = (
        f"<p>Stop all email to <strong>{html.escape(_masked(address))}</strong>?</p>"
        f'<form method=post action="/u/{html.escape(token, quote=True)}">'
        "<input type=hidden name=confirm value=yes>"
        "<button type=submit>Unsubscribe</button></form>"
    )
    return _page("Unsubscribe", form)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(token: UnsubscribeToken, request: Request, ingest: IngestDep) -> HTMLResponse:
    """RFC 8058 one-click unsubscribe: suppress and answer 200, with no redirect."""
    company_id, address = _unsubscribe_target(ingest, token)
    one_click = b"List-Unsubscribe=One-Click" in (await request.body())[:4096]
    repo = TrackingRepository(ingest.plat.pool)
    exists, new = await repo.suppress_email(company_id, address, one_click=one_click)
    if not exists:
        raise HTTPException(404, "this link is not valid")
    log.info("email_unsubscribed", company_id=str(company_id), new=new, one_click=one_click)
    return _page("You are unsubscribed", "<p>You will not receive further email from us.</p>")


def _fetch_payload(request: Request) -> dict[str, Any]:
    user_agent = request.headers.get("user-agent")
    client_ip = request.client.host if request.client else None
    agent = machine_agent(user_agent, client_ip)
    return {
        "machine": agent is not None,
        "agent": agent,
        "user_agent": (user_agent or "")[:MAX_USER_AGENT],
    }


def _message_id(claims: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(claims["m"]))
    except (KeyError, ValueError):
        return None


@router.get("/t/o/{token}.gif", include_in_schema=False)
async def open_pixel(token: str, request: Request, ingest: IngestDep) -> Response:
    """The tracking pixel: always a GIF; a valid token also records `email.opened`."""
    try:
        claims = verify(ingest.settings.link_key(), token)
    except TokenError:
        claims = {}
    message_id = _message_id(claims) if claims.get("k") == KIND_OPEN else None
    if message_id is not None:
        payload = _fetch_payload(request)
        await TrackingRepository(ingest.plat.pool).record_engagement(
            message_id, "email.opened", payload
        )
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}", include_in_schema=False)
async def click(token: str, request: Request, ingest: IngestDep) -> RedirectResponse:
    """Record `email.clicked` and redirect to the URL signed into the token, only there."""
    claims = _claims(ingest, token)
    target = claims.get("u")
    message_id = _message_id(claims)
    valid_target = isinstance(target, str) and target.lower().startswith(("https://", "http://"))
    if claims.get("k") != KIND_CLICK or message_id is None or not valid_target:
        raise HTTPException(404, "this link is not valid")
    assert isinstance(target, str)
    payload = {**_fetch_payload(request), "url": target[:2000]}
    await TrackingRepository(ingest.plat.pool).record_engagement(
        message_id, "email.clicked", payload
    )
    return RedirectResponse(target, status_code=302, headers=NO_STORE)
