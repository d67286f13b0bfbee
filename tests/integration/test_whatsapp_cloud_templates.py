"""Complete WhatsApp Cloud templates, username recipients, deferred sends, the template sync and
media downloads: the real dispatch wiring and handlers, a real database, and the fake Graph
server checking every template send against the template's definition."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.bus import JobContext
from shvya_common.contracts import MediaFetchParams
from shvya_common.db import create_pool
from shvya_common.embedded import free_port
from shvya_common.errors import DeferJob, PermanentError, RetryableError
from shvya_dispatch.app import build_media_deps
from shvya_dispatch.channels.graph_api import GraphApi
from shvya_dispatch.media import handle_media_fetch
from shvya_dispatch.template_sync import sync_templates
from shvya_dispatch.whatsapp_repository import WhatsAppRepository
from tests.fakes.graph_server import FakeGraph, GraphFault
from tests.integration.dispatch_support import (
    PHONE_ID,
    TOKEN,
    Dispatcher,
    dispatch_settings,
    make_company,
    make_lead,
    make_template,
    message_row,
    queue_send,
)

pytestmark = pytest.mark.integration

BSUID = "US.13491208655302741918"
OFFER_COMPONENTS = [
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW1h"]}},
    {
        "type": "BODY",
        "text": "Hi {{first_name}}, your {{plan}} offer is ready.",
        "example": {
            "body_text_named_params": [
                {"param_name": "first_name", "example": "Asha"},
                {"param_name": "plan", "example": "Home"},
            ]
        },
    },
    {"type": "FOOTER", "text": "Acme Solar"},
    {
        "type": "BUTTONS",
        "buttons": [
            {"type": "URL", "text": "See offer", "url": "https://acme.example/offer/{{1}}"},
            {"type": "QUICK_REPLY", "text": "Not now"},
        ],
    },
]
OFFER_VARIABLES = {
    "body": {"first_name": "first_name", "plan": {"field": "attributes.plan", "default": "Home"}},
    "header": {"link": "https://cdn.acme.example/offer.jpg"},
    "buttons": [{"index": 0, "value": "attributes.offer_code"}],
}


@pytest.fixture
async def pool(db_url):
    pool = await create_pool(db_url, 1, 8)
    yield pool
    await pool.close()


@pytest.fixture
async def graph():
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID, version="v23.0") as server:
        yield server


@pytest.fixture
async def dispatcher(pool, graph, db_url, tmp_path):
    settings = dispatch_settings(
        db_url, graph, media_dir=str(tmp_path / "media"), policy_whatsapp_cloud_min_gap_seconds=0
    )
    async with Dispatcher(pool, settings) as d:
        yield d


@pytest.fixture
async def company(pool):
    return await make_company(pool)


async def offer_template(pool, company, language="en_US", status="approved"):
    template_id = await make_template(
        pool,
        company,
        "solar_offer",
        "Hi {{first_name}}, your {{plan}} offer is ready.",
        [],
        language=language,
        status=status,
    )
    await pool.execute(
        "UPDATE templates SET components = $2, parameter_format = 'named', variables = $3"
        " WHERE id = $1",
        template_id,
        OFFER_COMPONENTS,
        OFFER_VARIABLES,
    )
    return template_id


async def lead_with_offer(pool, company, **kwargs):
    lead = await make_lead(pool, company, **kwargs)
    await pool.execute(
        'UPDATE leads SET attributes = \'{"offer_code": "SUN-42"}\' WHERE id = $1', lead
    )
    return lead


async def test_named_body_image_header_and_url_button_go_out_as_graph_expects(
    dispatcher, graph, pool, company
):
    """A template with a named body parameter, an image header and a URL button is sent with
    exactly the components its definition asks for, and Graph accepts it."""
    graph.add_template("solar_offer", "en_US", OFFER_COMPONENTS, parameter_format="NAMED")
    template = await offer_template(pool, company)
    lead = await lead_with_offer(pool, company)
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    result = await dispatcher.send(message_id, params)

    assert result["status"] == "sent", result
    (request,) = graph.requests
    assert request.body["template"] == {
        "name": "solar_offer",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "header",
                "parameters": [
                    {"type": "image", "image": {"link": "https://cdn.acme.example/offer.jpg"}}
                ],
            },
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": "first_name", "text": "Asha"},
                    {"type": "text", "parameter_name": "plan", "text": "Home"},
                ],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "SUN-42"}],
            },
        ],
    }
    row = await message_row(pool, message_id)
    assert row["provider_message_id"] == request.wamid
    assert row["meta"]["template"]["text"] == "[image]\nHi Asha, your Home offer is ready."


async def test_a_missing_binding_fails_before_any_request(dispatcher, graph, pool, company):
    """A template whose URL button has no value bound is refused here, not by Graph."""
    template = await offer_template(pool, company)
    await pool.execute(
        "UPDATE templates SET variables = variables - 'buttons' WHERE id = $1", template
    )
    lead = await lead_with_offer(pool, company)
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    with pytest.raises(PermanentError, match="button 0"):
        await dispatcher.send(message_id, params)
    assert graph.requests == []


async def test_fake_graph_refuses_components_that_do_not_match_the_definition(
    dispatcher, graph, pool, company
):
    """When the local definition is stale (Graph's now has a named body and a copy-code
    button), Graph's own check refuses the send with 132012 / 132000."""
    graph.add_template(
        "solar_offer",
        "en_US",
        [
            {"type": "BODY", "text": "Hi {{first_name}}"},
            {"type": "BUTTONS", "buttons": [{"type": "COPY_CODE", "example": "SAVE"}]},
        ],
        parameter_format="NAMED",
    )
    template = await make_template(pool, company, "solar_offer", "Hi {{1}}", ["first_name"])
    lead = await make_lead(pool, company)
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    with pytest.raises(PermanentError, match="132012"):
        await dispatcher.send(message_id, params)
    assert graph.sent == []


async def test_template_language_follows_the_lead_then_the_company_fallback(
    dispatcher, graph, pool, company
):
    """A pt_BR lead gets the pt_BR row of the template; a lead in a language without a row gets
    the company's fallback language."""
    english = await offer_template(pool, company, "en_US")
    await offer_template(pool, company, "pt_BR")
    await offer_template(pool, company, "es")
    await pool.execute(
        'UPDATE companies SET settings = \'{"whatsapp_template_fallback_language": "es"}\''
        " WHERE id = $1",
        company,
    )
    chosen = []
    for language in ("pt_BR", "de"):
        lead = await lead_with_offer(
            pool, company, phone=f"+1555123{len(chosen):04d}", contact_name="Ana Lima"
        )
        await pool.execute("UPDATE leads SET language = $2 WHERE id = $1", lead, language)
        message_id, params = await queue_send(
            pool, company, lead, template_id=english, to=f"+1555123{len(chosen):04d}"
        )
        await dispatcher.send(message_id, params)
        chosen.append(graph.requests[-1].body["template"]["language"]["code"])
    assert chosen == ["pt_BR", "es"]


async def test_paused_template_waits_and_rejected_is_never_sent(dispatcher, graph, pool, company):
    """A paused template defers its sends; a rejected one fails them; neither reaches Graph."""
    lead = await lead_with_offer(pool, company)
    paused = await offer_template(pool, company, status="paused")
    message_id, params = await queue_send(pool, company, lead, template_id=paused)
    with pytest.raises(DeferJob, match="paused"):
        await dispatcher.send(message_id, params)
    await pool.execute("UPDATE templates SET status = 'rejected' WHERE id = $1", paused)
    other, params = await queue_send(pool, company, lead, template_id=paused)
    with pytest.raises(PermanentError, match="rejected"):
        await dispatcher.send(other, params)
    assert graph.requests == []


async def test_username_lead_is_sent_to_its_bsuid_with_a_quoted_reply(
    dispatcher, graph, pool, company
):
    """A send to a business-scoped user id uses `recipient`, not `to`, and may quote the message
    it answers."""
    lead = await pool.fetchval(
        "INSERT INTO leads (company_id, wa_user_id, last_inbound_at) VALUES ($1, $2, now())"
        " RETURNING id",
        company,
        BSUID,
    )
    message_id, params = await queue_send(pool, company, lead, to=BSUID, text="Hello Neo")
    params = params.model_copy(update={"context_message_id": "wamid.QUOTED"})
    result = await dispatcher.send(message_id, params)
    assert result["status"] == "sent"
    body = graph.requests[0].body
    assert body["recipient"] == BSUID and "to" not in body
    assert body["context"] == {"message_id": "wamid.QUOTED"}
    assert (await message_row(pool, message_id))["meta"]["user_id"] == BSUID


async def test_a_send_asked_for_later_is_deferred_until_then(dispatcher, graph, pool, company):
    """SendParams.not_before in the future defers the send to that moment, without a request."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    message_id, params = await queue_send(pool, company, lead)
    later = datetime.now(UTC) + timedelta(hours=24)
    params = params.model_copy(update={"not_before": later})
    with pytest.raises(DeferJob) as deferred:
        await dispatcher.send(message_id, params)
    assert deferred.value.until == later and graph.requests == []


async def test_send_time_ecosystem_limit_defers_a_day_and_undeliverable_flags_the_lead(
    dispatcher, graph, pool, company
):
    """Graph's 131049 defers the send 24 h; 131026 dead-letters it and flags the lead."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    graph.script(GraphFault(131049))
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(DeferJob) as deferred:
        await dispatcher.send(message_id, params)
    assert deferred.value.until > datetime.now(UTC) + timedelta(hours=23)
    graph.script(GraphFault(131026))
    other, params = await queue_send(pool, company, lead)
    with pytest.raises(PermanentError, match="131026"):
        await dispatcher.send(other, params)
    flagged = await pool.fetchval(
        "SELECT whatsapp_undeliverable_reason FROM leads WHERE id = $1", lead
    )
    assert "131026" in flagged


async def test_template_sync_follows_graph_across_pages(pool, graph, db_url, company):
    """The sync creates Graph's templates locally with definitions, moves statuses and quality,
    marks templates Graph dropped deleted, and never touches local variable bindings."""
    await pool.execute("UPDATE companies SET is_default = true WHERE id = $1", company)
    for n in range(120):  # more than one page
        graph.add_template(f"t{n:03d}", "en_US", [{"type": "BODY", "text": "Hi {{1}}"}])
    offer = graph.add_template("solar_offer", "en_US", OFFER_COMPONENTS, parameter_format="NAMED")
    local = await offer_template(pool, company)
    async with AsyncExitStack() as stack:
        api = await _graph_api(graph, stack)
        repo = WhatsAppRepository(pool)
        await sync_templates(pool, api, repo, graph.waba_id, PHONE_ID)
        offer.status, offer.quality = "PAUSED", "RED"
        del graph.templates[("t000", "en_US")]
        outcomes = await sync_templates(pool, api, repo, graph.waba_id, PHONE_ID)
    (outcome,) = outcomes.values()
    assert (outcome.seen, outcome.changed, outcome.missing) == (120, 1, 1)
    rows = {
        r["name"]: r
        for r in await pool.fetch(
            "SELECT name, status, quality, parameter_format, components, variables,"
            " provider_template_id FROM templates"
        )
    }
    assert len(rows) == 121
    assert rows["t000"]["status"] == "deleted" and rows["t001"]["status"] == "approved"
    synced = rows["solar_offer"]
    assert (synced["status"], synced["quality"], synced["parameter_format"]) == (
        "paused",
        "red",
        "named",
    )
    assert synced["components"] == OFFER_COMPONENTS and synced["variables"] == OFFER_VARIABLES
    assert synced["provider_template_id"] == offer.id
    changes = await pool.fetch("SELECT payload FROM events WHERE type = 'template.status_changed'")
    assert {(c["payload"]["name"], c["payload"]["status"]) for c in changes} == {
        ("solar_offer", "paused"),
        ("t000", "deleted"),
    }
    assert local == (await pool.fetchval("SELECT id FROM templates WHERE name = 'solar_offer'"))


async def _graph_api(graph: FakeGraph, stack: AsyncExitStack) -> GraphApi:
    import httpx

    client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
    from pydantic import SecretStr

    return GraphApi(
        client, token=SecretStr(graph.token), base_url=graph.base_url, api_version=graph.version
    )


async def _received_media(pool, company, graph, data: bytes, mime: str, kind: str = "image"):
    media = graph.add_media(data, mime)
    lead = await make_lead(pool, company, phone=f"+1555{uuid.uuid4().int % 10**7:07d}")
    message_id = await pool.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, meta)"
        " VALUES ($1, $2, 'inbound', 'whatsapp_cloud', '[Image attached]', '{\"media\": {}}')"
        " RETURNING id",
        company,
        lead,
    )
    row_id = await pool.fetchval(
        "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind,"
        " declared_mime_type) VALUES ($1, $2, 'whatsapp_cloud', $3, $4, $5) RETURNING id",
        company,
        message_id,
        media.id,
        kind,
        mime,
    )
    return MediaFetchParams(media_row_id=row_id, company_id=company, message_id=message_id)


def _job(params: MediaFetchParams) -> JobContext:
    return JobContext(uuid.uuid4(), "media.fetch", 90, 1, params.company_id, None)


async def test_media_is_downloaded_with_the_token_and_stored_with_its_hash(
    pool, graph, db_url, company, tmp_path
):
    """media.fetch asks Graph for the media URL, downloads it with the bearer token, stores it
    content-addressed and records mime type, size and SHA-256 on the row and the message."""
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    params = await _received_media(pool, company, graph, photo, "image/png")
    settings = dispatch_settings(db_url, graph, media_dir=str(tmp_path / "media"))
    async with AsyncExitStack() as stack:
        deps = await build_media_deps(settings, pool, stack)
        result = await handle_media_fetch(params, _job(params), deps)
        stored = await deps.store.get(result["key"])
    digest = hashlib.sha256(photo).hexdigest()
    assert stored == photo and result["key"].endswith(digest)
    row = await pool.fetchrow("SELECT status, mime_type, size_bytes, sha256 FROM inbound_media")
    assert tuple(row) == ("stored", "image/png", len(photo), digest)
    meta = await pool.fetchval("SELECT meta FROM messages WHERE id = $1", params.message_id)
    assert meta["media"]["sha256"] == digest and meta["media"]["declared_hash_matches"] is True
    paths = [r.path for r in graph.requests]
    assert paths[0].endswith(f"/{graph.media[next(iter(graph.media))].id}")
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in graph.requests)


async def test_media_lands_in_the_s3_bucket_and_a_store_outage_is_retried(
    pool, graph, db_url, company, s3_bucket
):
    """With MEDIA_STORE=s3 the download is stored as an object of the bucket under its content
    address; while the store cannot be reached the job fails retryably and the row stays
    pending, so the next attempt stores it."""
    photo = b"\xff\xd8\xff\xe0JFIF" + bytes(range(256)) * 30
    params = await _received_media(pool, company, graph, photo, "image/jpeg")
    unreachable = s3_bucket.settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    async with AsyncExitStack() as stack:
        deps = await build_media_deps(dispatch_settings(db_url, graph, **unreachable), pool, stack)
        with pytest.raises(RetryableError, match="S3 HeadObject"):
            await handle_media_fetch(params, _job(params), deps)
    status = "SELECT status, storage_key FROM inbound_media WHERE id = $1"
    assert tuple(await pool.fetchrow(status, params.media_row_id)) == ("pending", None)
    assert await s3_bucket.server.objects(s3_bucket.name) == {}
    async with AsyncExitStack() as stack:
        settings = dispatch_settings(db_url, graph, **s3_bucket.settings())
        deps = await build_media_deps(settings, pool, stack)
        result = await handle_media_fetch(params, _job(params), deps)
    key = f"{company}/{hashlib.sha256(photo).hexdigest()[:2]}/{hashlib.sha256(photo).hexdigest()}"
    assert result == {"status": "stored", "key": key, "size": len(photo)}
    assert await s3_bucket.server.objects(s3_bucket.name) == {key: photo}
    assert tuple(await pool.fetchrow(status, params.media_row_id)) == ("stored", key)


async def test_media_over_the_limit_or_of_a_refused_type_is_rejected(
    pool, graph, db_url, company, tmp_path
):
    """An attachment larger than WHATSAPP_MEDIA_MAX_BYTES or of a type not allowed is recorded
    as rejected, with an event, and never stored."""
    settings = dispatch_settings(
        db_url, graph, media_dir=str(tmp_path / "media"), whatsapp_media_max_bytes=2048
    )
    big = await _received_media(pool, company, graph, b"x" * 4096, "image/jpeg")
    exe = await _received_media(pool, company, graph, b"MZ", "application/x-msdownload")
    async with AsyncExitStack() as stack:
        deps = await build_media_deps(settings, pool, stack)
        too_big = await handle_media_fetch(big, _job(big), deps)
        wrong = await handle_media_fetch(exe, _job(exe), deps)
    assert too_big["status"] == wrong["status"] == "rejected"
    assert "2048" in too_big["reason"] and "not allowed" in wrong["reason"]
    statuses = await pool.fetch("SELECT status, storage_key FROM inbound_media")
    assert {(r["status"], r["storage_key"]) for r in statuses} == {("rejected", None)}
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'media.rejected'") == 2
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").rglob("*"))
