"""Outbound webhooks end to end in one process: endpoints registered through ingest's API,
events fanned out by the scheduler's feed, deliveries made by dispatch's `webhook.reminder`
worker over real JetStream and PostgreSQL to a real HTTP receiver on 127.0.0.1 that verifies
each one with the `standardwebhooks` package. Retries are compressed through the task's policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.bus import RetryPolicy
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from tests.integration.outbound_support import outbound, receiver
from tests.support import eventually

pytestmark = pytest.mark.integration

INBOUND = {
    "phone_number": "+14155550101",
    "contact_name": "Asha Rao",
    "message_text": "Do you install on flat roofs?",
    "channel": "whatsapp_cloud",
}


async def test_an_inbound_message_reaches_the_endpoint_signed_per_standard_webhooks(plat, base_env):
    """A message filed through ingest becomes message.received and lead.created deliveries
    whose signatures, ids and timestamps the standardwebhooks library verifies."""
    async with outbound(plat, base_env) as hub, receiver() as rx:
        endpoint = await hub.register(rx.url, ["message.received", "lead.created"])
        assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "active"
        rx.secrets = [endpoint["secret"]]
        filed = await hub.api.post(
            "/inbound-message", json={**INBOUND, "company_id": str(hub.company_id)}
        )
        assert filed.status_code == 200, filed.text

        await eventually(lambda: _count(rx.verified()), lambda n: n == 2)
        types = sorted(r.payload["type"] for r in rx.verified() if r.payload)
        assert types == ["lead.created", "message.received"]
        received = next(r for r in rx.verified() if r.payload["type"] == "message.received")
        assert received.payload["data"]["company_id"] == str(hub.company_id)
        assert received.payload["data"]["message_id"]
        assert received.headers["Content-Type"] == "application/json"
        assert received.headers["webhook-signature"].startswith("v1,")

        deliveries = await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 2 and all(d["status"] == "succeeded" for d in ds),
        )
        assert {d["event_id"] for d in deliveries} == {r.headers["webhook-id"] for r in rx.received}
        assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in deliveries)
        log = f"/admin/companies/{hub.company_id}/webhooks/endpoints/{endpoint['id']}/deliveries"
        page = (await hub.api.get(log, params={"limit": 1})).json()
        assert page["next_before"] is not None
        rest = (await hub.api.get(log, params={"before": page["next_before"]})).json()
        assert [d["id"] for d in page["deliveries"] + rest["deliveries"]] == [
            d["id"] for d in deliveries
        ]
        assert rest["next_before"] is None
        listed = (await hub.api.get(f"/admin/companies/{hub.company_id}/webhooks/endpoints")).json()
        assert "secret" not in listed["endpoints"][0]


async def test_a_receiver_that_fails_three_times_gets_exactly_one_successful_delivery(
    plat, base_env
):
    """Three 5xx answers are retried with backoff; the fourth attempt succeeds, the delivery
    is recorded once as succeeded, and all four attempts are in its log."""
    async with outbound(plat, base_env) as hub, receiver(statuses=[500, 502, 503]) as rx:
        endpoint = await hub.register(rx.url, ["lead.created"])
        rx.secrets = [endpoint["secret"]]
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})

        [delivery] = await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 1 and ds[0]["status"] == "succeeded",
        )
        detail = await hub.delivery(delivery["id"])
        log = [(a["attempt"], a["outcome"], a["status_code"]) for a in detail["attempt_log"]]
        assert log == [
            (1, "failed", 500),
            (2, "failed", 502),
            (3, "failed", 503),
            (4, "succeeded", 204),
        ]
        assert all(
            a["latency_ms"] is not None and a["address"] == "127.0.0.1"
            for a in detail["attempt_log"]
        )
        assert detail["attempt_log"][0]["error"] == "HTTP 500"
        assert len(rx.received) == 4 and len({r.headers["webhook-id"] for r in rx.received}) == 1
        assert len({r.headers["webhook-timestamp"] for r in rx.received}) >= 1
        assert len(rx.verified()) == 4
        succeeded = await plat.pool.fetchval(
            "SELECT count(*) FROM webhook_attempts WHERE outcome = 'succeeded'"
        )
        assert succeeded == 1
        assert (await hub.endpoint(endpoint["id"]))["status"] == "active"


async def test_a_rotated_secret_signs_with_both_secrets_during_the_overlap(plat, base_env):
    """After a rotation each delivery carries two signatures, so a receiver holding either the
    old or the new secret verifies it; with no overlap only the new one is sent."""
    async with outbound(plat, base_env) as hub, receiver() as rx:
        endpoint = await hub.register(rx.url, ["lead.created"])
        old = endpoint["secret"]
        rotated = await hub.api.post(
            f"/admin/companies/{hub.company_id}/webhooks/endpoints/{endpoint['id']}/rotate-secret",
            json={"overlap_seconds": 3600},
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old and rotated.json()["rotating_until"] is not None
        rx.secrets = [old, new]
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})

        [first] = await eventually(lambda: _list(rx.received), lambda rs: len(rs) == 1)
        assert first.verified_with == [0, 1]
        assert len(first.headers["webhook-signature"].split(" ")) == 2

        final = await hub.api.post(
            f"/admin/companies/{hub.company_id}/webhooks/endpoints/{endpoint['id']}/rotate-secret",
            json={"overlap_seconds": 0},
        )
        rx.secrets = [new, final.json()["secret"]]
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 2})
        received = await eventually(lambda: _list(rx.received), lambda rs: len(rs) == 2)
        assert received[1].verified_with == [1]
        assert len(received[1].headers["webhook-signature"].split(" ")) == 1


async def test_an_endpoint_is_disabled_after_consecutive_failed_deliveries(plat, base_env):
    """Each delivery fails after all its attempts: the first marks the endpoint failing, the
    second disables it with a webhook.endpoint_disabled event, and later events skip it."""
    retry = RetryPolicy(schedule=(0.05,), jitter=0.2)
    async with (
        outbound(plat, base_env, retry=retry, disable_after=2) as hub,
        receiver(statuses=[500] * 100) as rx,
        receiver() as monitor,
    ):
        endpoint = await hub.register(rx.url, ["lead.created"])
        watcher = await hub.register(monitor.url, ["webhook.endpoint_disabled"])
        monitor.secrets = [watcher["secret"]]

        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})
        failing = await eventually(
            lambda: hub.endpoint(endpoint["id"]), lambda e: e["status"] == "failing"
        )
        assert failing["consecutive_failures"] == 1
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 2})
        disabled = await eventually(
            lambda: hub.endpoint(endpoint["id"]), lambda e: e["status"] == "disabled"
        )
        assert disabled["consecutive_failures"] == 2
        assert "2 deliveries in a row failed" in disabled["disabled_reason"]

        [event] = await hub.events("webhook.endpoint_disabled")
        assert event["endpoint_id"] == endpoint["id"] and event["url"] == rx.url
        [told] = await eventually(lambda: _list(monitor.verified()), lambda rs: len(rs) == 1)
        assert told.payload["data"]["endpoint_id"] == endpoint["id"]

        deliveries = await hub.deliveries(endpoint["id"])
        assert [d["status"] for d in deliveries] == ["failed", "failed"]
        assert all(d["attempts"] == 2 for d in deliveries)
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 3})
        await eventually(lambda: _feed_empty(plat))
        assert len(await hub.deliveries(endpoint["id"])) == 2
        assert len(rx.received) == 4

        enabled = await hub.api.patch(
            f"/admin/companies/{hub.company_id}/webhooks/endpoints/{endpoint['id']}",
            json={"enabled": True},
        )
        assert enabled.json()["status"] == "active"
        assert enabled.json()["consecutive_failures"] == 0


async def test_a_delivery_waiting_for_its_retry_is_skipped_once_the_endpoint_is_disabled(
    plat, base_env
):
    """Disabling an endpoint by hand records the event, and its retry that was still waiting
    is skipped instead of sent."""
    retry = RetryPolicy(schedule=(1.0,), jitter=0.0)
    async with (
        outbound(plat, base_env, retry=retry) as hub,
        receiver(statuses=[500]) as rx,
    ):
        endpoint = await hub.register(rx.url, ["lead.created"])
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})
        await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 1 and ds[0]["attempts"] == 1 and ds[0]["status"] == "pending",
        )
        path = f"/admin/companies/{hub.company_id}/webhooks/endpoints/{endpoint['id']}"
        disabled = (await hub.api.patch(path, json={"enabled": False})).json()
        assert (
            disabled["status"] == "disabled" and disabled["disabled_reason"] == "disabled by hand"
        )
        [skipped] = await eventually(
            lambda: hub.deliveries(endpoint["id"]), lambda ds: ds[0]["status"] == "skipped"
        )
        assert skipped["attempts"] == 1 and skipped["last_error"] == "the endpoint is disabled"
        assert len(rx.received) == 1
        [event] = await hub.events("webhook.endpoint_disabled")
        assert event["reason"] == "disabled by hand"
        refused = await hub.api.post(
            f"/admin/companies/{hub.company_id}/webhooks/deliveries/{skipped['id']}/redeliver"
        )
        assert refused.status_code == 409 and "enable it first" in refused.text


async def test_a_failed_delivery_can_be_redelivered_by_hand(plat, base_env):
    """A delivery that failed while the receiver was broken is sent again on request, with the
    same webhook-id; its log keeps the failed attempts and adds the successful one."""
    retry = RetryPolicy(schedule=(0.05,), jitter=0.0)
    async with (
        outbound(plat, base_env, retry=retry) as hub,
        receiver(statuses=[503, 503]) as rx,
    ):
        endpoint = await hub.register(rx.url, ["lead.created"])
        rx.secrets = [endpoint["secret"]]
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})
        [failed] = await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 1 and ds[0]["status"] == "failed",
        )
        answer = await hub.api.post(
            f"/admin/companies/{hub.company_id}/webhooks/deliveries/{failed['id']}/redeliver"
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["redelivery"] == 1 and answer.json()["status"] == "pending"

        done = await eventually(
            lambda: hub.delivery(failed["id"]), lambda d: d["status"] == "succeeded"
        )
        assert [a["outcome"] for a in done["attempt_log"]] == ["failed", "failed", "succeeded"]
        assert done["attempts"] == 3 and done["redeliveries"] == 1
        assert len({r.headers["webhook-id"] for r in rx.received}) == 1
        assert len(rx.verified()) == 3

        again = await hub.api.post(
            f"/admin/companies/{hub.company_id}/webhooks/deliveries/{failed['id']}/redeliver"
        )
        assert again.status_code == 202
        await eventually(lambda: _list(rx.received), lambda rs: len(rs) == 4)


async def test_the_ssrf_guard_refuses_loopback_in_dispatch_and_private_literals_in_the_api(
    plat, base_env
):
    """With private networks not allowed, an attempt to a host on loopback is refused before
    connecting (the receiver never hears of it) and logged with the reason; the API refuses
    private, link-local and metadata literals when an endpoint is registered."""
    retry = RetryPolicy(schedule=(0.05,), jitter=0.0)
    async with (
        outbound(plat, base_env, retry=retry, allow_private=False) as hub,
        receiver() as rx,
    ):
        host_url = rx.url.replace("127.0.0.1", "localhost")
        endpoint = await hub.register(host_url, ["lead.created"])
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})
        [delivery] = await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 1 and ds[0]["status"] == "failed",
        )
        detail = await hub.delivery(delivery["id"])
        assert all("refused by the SSRF guard" in a["error"] for a in detail["attempt_log"])
        assert "loopback" in detail["attempt_log"][0]["error"]
        assert all(a["address"] is None for a in detail["attempt_log"])
        assert rx.received == []

    async with outbound(plat, base_env, ingest_allows_private=False) as hub:
        path = f"/admin/companies/{hub.company_id}/webhooks/endpoints"
        for url, reason in [
            ("http://127.0.0.1:8080/hooks", "loopback"),
            ("http://10.0.0.8/hooks", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::1]/hooks", "loopback"),
            ("http://[::ffff:192.168.0.1]/hooks", "private"),
            ("http://100.64.0.1/hooks", "carrier-grade NAT"),
            ("http://0.0.0.0/hooks", "0.0.0.0/8"),
            ("http://localhost:9000/hooks", "this machine"),
        ]:
            answer = await hub.api.post(path, json={"url": url, "event_types": ["lead.created"]})
            assert answer.status_code == 422, (url, answer.text)
            assert reason in answer.json()["detail"], (url, answer.text)


async def test_a_redirect_is_never_followed(plat, base_env):
    """A 302 pointing at an internal service counts as a failed attempt with the reason, and
    the internal service is never called."""
    retry = RetryPolicy(schedule=(0.05,), jitter=0.0)
    async with (
        outbound(plat, base_env, retry=retry) as hub,
        receiver() as internal,
        receiver() as redirector,
    ):
        redirector.redirect_to = internal.url
        endpoint = await hub.register(redirector.url, ["lead.created"])
        await record_event(plat.pool, hub.company_id, None, EventType.LEAD_CREATED, {"n": 1})
        [delivery] = await eventually(
            lambda: hub.deliveries(endpoint["id"]),
            lambda ds: len(ds) == 1 and ds[0]["status"] == "failed",
        )
        detail = await hub.delivery(delivery["id"])
        assert [a["status_code"] for a in detail["attempt_log"]] == [302, 302]
        assert "not followed" in detail["attempt_log"][0]["error"]
        assert len(redirector.received) == 2 and internal.received == []


async def test_a_reminder_fires_at_its_time_and_reaches_subscribed_endpoints(plat, base_env):
    """A reminder waits in a timer until its time, then records reminder.due once, which is
    delivered to the endpoint subscribed to it; a cancelled one never fires, and a rescheduled
    one fires at its new time while the job of its old time finds it moved and does nothing."""
    async with outbound(plat, base_env) as hub, receiver() as rx:
        endpoint = await hub.register(rx.url, ["reminder.due"])
        rx.secrets = [endpoint["secret"]]
        lead_id = await plat.pool.fetchval(
            "INSERT INTO leads (company_id, phone_e164, contact_name) VALUES ($1, '+14155550102',"
            " 'Asha') RETURNING id",
            hub.company_id,
        )
        path = f"/admin/companies/{hub.company_id}/reminders"
        now = datetime.now(UTC)
        created = await hub.api.post(
            path,
            json={
                "remind_at": (now + timedelta(seconds=1.5)).isoformat(),
                "title": "Call Asha about the flat roof",
                "lead_id": str(lead_id),
                "data": {"call_at": "10:00"},
            },
        )
        assert created.status_code == 201, created.text
        reminder = created.json()
        assert reminder["status"] == "scheduled" and reminder["version"] == 1
        in_an_hour = (now + timedelta(hours=1)).isoformat()
        cancelled = (await hub.api.post(path, json={"remind_at": in_an_hour, "title": "No"})).json()
        moved = (await hub.api.post(path, json={"remind_at": in_an_hour, "title": "Moved"})).json()
        assert (await hub.api.delete(f"{path}/{cancelled['id']}")).status_code == 204
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        patched = await hub.api.patch(f"{path}/{moved['id']}", json={"remind_at": soon})
        assert patched.status_code == 200 and patched.json()["version"] == 2

        fired = await eventually(
            lambda: _get(hub, f"{path}/{reminder['id']}"), lambda r: r["status"] == "fired"
        )
        assert datetime.fromisoformat(fired["fired_at"]) >= datetime.fromisoformat(
            fired["remind_at"]
        )
        await eventually(
            lambda: _get(hub, f"{path}/{moved['id']}"), lambda r: r["status"] == "fired"
        )
        received = await eventually(lambda: _list(rx.verified()), lambda rs: len(rs) == 2)
        titles = sorted(r.payload["data"]["title"] for r in received)
        assert titles == ["Call Asha about the flat roof", "Moved"]
        call = next(r for r in received if r.payload["data"]["reminder_id"] == reminder["id"])
        assert call.payload["type"] == "reminder.due"
        assert call.payload["data"]["lead_id"] == str(lead_id)
        assert call.payload["data"]["data"] == {"call_at": "10:00"}

        # The hour passes for the cancelled reminder and the moved one's first time.
        await plat.pool.execute(
            "UPDATE timers SET due_at = now() WHERE idempotency_key = ANY($1::text[])",
            [f"reminder:{cancelled['id']}:1", f"reminder:{moved['id']}:1"],
        )
        stale = await eventually(
            lambda: _job_results(plat, [cancelled["id"], moved["id"]]),
            lambda results: len(results) == 2,
        )
        assert stale == [{"status": "not scheduled"}] * 2
        assert len(await hub.events("reminder.due")) == 2
        assert (await _get(hub, f"{path}/{cancelled['id']}"))["status"] == "cancelled"
        assert (await hub.api.delete(f"{path}/{reminder['id']}")).status_code == 409


async def test_the_api_answers_404_for_another_companys_ids_and_refuses_bad_input(plat, base_env):
    """Ids of another company are not found; an unknown event type, a URL with credentials or
    a malformed secret get a 4xx with the reason."""
    async with outbound(plat, base_env) as hub, receiver() as rx:
        endpoint = await hub.register(rx.url, ["lead.created"])
        other = await plat.pool.fetchval(
            "INSERT INTO companies (name) VALUES ('Other') RETURNING id"
        )
        base = f"/admin/companies/{other}/webhooks/endpoints/{endpoint['id']}"
        assert (await hub.api.get(base)).status_code == 404
        assert (await hub.api.patch(base, json={"enabled": False})).status_code == 404
        assert (await hub.api.delete(base)).status_code == 404
        assert (await hub.api.post(f"{base}/rotate-secret", json={})).status_code == 404
        assert (await hub.api.get(f"{base}/deliveries")).status_code == 404

        own = f"/admin/companies/{hub.company_id}/webhooks/endpoints"
        bad = await hub.api.post(own, json={"url": rx.url, "event_types": ["lead.exploded"]})
        assert bad.status_code == 422 and "unknown event types lead.exploded" in bad.text
        creds = await hub.api.post(
            own, json={"url": "https://u:p@example.com/", "event_types": ["lead.created"]}
        )
        assert creds.status_code == 422 and "user name or password" in creds.text
        secret = await hub.api.post(
            own, json={"url": rx.url, "event_types": ["lead.created"], "secret": "hunter2"}
        )
        assert secret.status_code == 422 and "whsec_" in secret.text
        kinds = await hub.api.get(f"/admin/companies/{hub.company_id}/webhooks/event-types")
        assert "reminder.due" in kinds.json()["event_types"]
        unauthenticated = await hub.api.get(own, headers={"Authorization": ""})
        assert unauthenticated.status_code == 401


async def _count(items: list[object]) -> int:
    return len(items)


async def _list(items: list[object]) -> list[object]:
    return list(items)


async def _feed_empty(plat) -> bool:
    return await plat.pool.fetchval("SELECT count(*) = 0 FROM event_feed")


async def _job_results(plat, reminder_ids: list[str]) -> list[dict]:
    rows = await plat.pool.fetch(
        "SELECT result FROM jobs WHERE idempotency_key = ANY($1::text[]) AND status = 'completed'",
        [f"reminder:{rid}:1" for rid in reminder_ids],
    )
    return [r["result"] for r in rows]


async def _get(hub, path: str) -> dict:
    response = await hub.api.get(path)
    assert response.status_code == 200, response.text
    return response.json()
