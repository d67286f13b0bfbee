"""The operator commands of `shvya` against real NATS and PostgreSQL: streams, consumers, stats,
jobs, dead letters and their replay through the job bus, migrations, companies, AsyncAPI, and
the exit code and message when a server is down."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from shvya_common import cli
from shvya_common.asyncapi import asyncapi_document
from shvya_common.bus.topology import ensure_consumers
from shvya_common.embedded import free_port
from shvya_dispatch import cli as dispatch_cli
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from tests.integration.dispatch_support import make_company, make_lead

pytestmark = pytest.mark.integration


@pytest.fixture
def shvya(monkeypatch, capsys, base_env):
    """Run `shvya ARGS...` in this process against the test's servers: (exit code, out, err)."""
    for key in ("DATABASE_URL", "NATS_URL", "NATS_PREFIX"):
        monkeypatch.setenv(key, base_env[key])

    async def run(*args: str, **env: str) -> tuple[int, str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            await asyncio.to_thread(cli.main, list(args))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def _json(shvya: Any, *args: str) -> Any:
    code, out, err = await shvya(*args, "--json")
    assert code == 0, err
    return json.loads(out)


async def _dead_letters(plat: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """One dead-lettered job and one dead-lettered send, as the worker leaves them."""
    company = await make_company(plat.pool)
    lead = await make_lead(plat.pool, company)
    job_id = uuid.uuid4()
    await plat.pool.execute(
        "INSERT INTO jobs (id, task_name, task_params, priority, status, attempts, last_error,"
        " company_id) VALUES ($1, 'test.work', '{}', 50, 'dlq', 6, 'boom: kaput', $2)",
        job_id,
        company,
    )
    send_id = await plat.pool.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, send_key,"
        " recipient, priority, attempts, last_error, send_params) VALUES ($1, $2, 'outbound',"
        " 'log', 'hi', 'dlq', 'cli-test', '+12025550123', 100, 6, 'provider down', $3)"
        " RETURNING id",
        company,
        lead,
        {
            "company_id": str(company),
            "lead_id": str(lead),
            "channel": "log",
            "to": "+12025550123",
            "text": "hi",
            "send_key": "cli-test",
        },
    )
    return job_id, send_id


async def test_operator_commands_show_dead_letters_and_replay_them_through_the_bus(plat, shvya):
    """stats, dlq list|show, jobs list|show, replay (dry run, by id, --all), streams and
    consumers tell one story: what is dead, why, and that a replay puts it back on the queue."""
    await ensure_consumers(plat.js, plat.topology, "test", ["test.work"], 30.0)
    job_id, send_id = await _dead_letters(plat)

    stats = await _json(shvya, "stats")
    assert stats["dlq"] == 1 and stats["sends"] == {"dlq": 1}
    assert {"task": "dispatch.send", "status": "dlq", "n": 1} in stats["tasks"]

    dead = await _json(shvya, "dlq", "list")
    assert {(d["id"], d["kind"], d["last_error"]) for d in dead} == {
        (str(job_id), "job", "boom: kaput"),
        (str(send_id), "send", "provider down"),
    }
    shown = await _json(shvya, "dlq", "show", str(send_id))
    assert shown["task"] == "dispatch.send" and shown["params"]["send_key"] == "cli-test"

    dry = await _json(shvya, "dlq", "replay", "--all", "--dry-run")
    assert dry["replayed"] == 2 and dry["dry_run"] is True
    assert len(await _json(shvya, "dlq", "list")) == 2

    code, out, _ = await shvya("dlq", "replay", str(job_id))
    assert code == 0 and f"replayed 1 dead letter(s): 1 job(s), 0 send(s)\n  {job_id}" in out
    job = await _json(shvya, "jobs", "show", str(job_id))
    assert job["status"] == "queued" and job["replays"] == 1 and job["attempts"] == 0
    assert job["message"]["in_stream"] is True
    assert job["message"]["subject"] == plat.topology.job_subject("test.work", 50, job_id)

    listed = await _json(shvya, "jobs", "list", "--status", "dlq")
    assert [r["id"] for r in listed] == [str(send_id)]
    assert [r["id"] for r in await _json(shvya, "jobs", "list", "--task", "test.work")] == [
        str(job_id)
    ]
    consumers = await _json(shvya, "consumers", "--service", "test")
    level = next(c for c in consumers if c["consumer"] == "test-p50")
    assert level["pending"] == 1 and level["ack_pending"] == 0
    streams = await _json(shvya, "streams")
    assert [s["stream"] for s in streams] == [plat.topology.jobs_stream, plat.topology.dlq_stream]
    assert streams[0]["messages"] == 1

    assert (await _json(shvya, "dlq", "replay", "--kind", "sends", "--all"))["sends"] == 1
    assert await _json(shvya, "dlq", "list") == []


async def test_usage_not_found_and_unreachable_servers_have_their_own_exit_codes(plat, shvya):
    """No target for a replay is a usage error (2), an unknown id is not found (4), and a
    server that is down is named with how to start it (3), never a traceback."""
    code, _, err = await shvya("dlq", "replay")
    assert code == 2 and "--all" in err
    code, _, err = await shvya("jobs", "show", str(uuid.uuid4()))
    assert code == 4 and "no job or outbound send" in err
    code, out, _ = await shvya("dlq", "replay", str(uuid.uuid4()))
    assert code == 4 and "replayed 0 dead letter(s)" in out and "not dead letters" in out

    closed = free_port()
    code, _, err = await shvya(
        "stats", DATABASE_URL=f"postgresql://postgres:secret@127.0.0.1:{closed}/shvya"
    )
    assert code == 3 and "cannot reach PostgreSQL" in err and "make up" in err
    assert "secret" not in err and "Traceback" not in err
    for command in ("rotate-secrets", "reembed"):
        code, _, err = await shvya(command)
        assert code == 3 and "cannot reach PostgreSQL" in err and "Traceback" not in err, command
    dkim = ["email-dkim-key", "--company", str(uuid.uuid4()), "--domain", "a.example"]
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(dispatch_cli.main, [*dkim, "--selector", "s1"])
    assert exited.value.code == 3
    code, _, err = await shvya("streams", NATS_URL=f"nats://127.0.0.1:{closed}")
    assert code == 3 and "cannot reach NATS" in err and "make infra" in err


async def test_migrate_status_companies_and_asyncapi(plat, shvya, base_env):
    """`migrate --status` lists every migration as applied and `migrate` finds nothing to do,
    `companies --default -q` prints the default company's id once ingest made it, and
    `shvya asyncapi` prints the document that ingest serves at /asyncapi.json."""
    status = await _json(shvya, "migrate", "--status")
    assert status["pending"] == [] and status["migrations"][-1]["status"] == "applied"
    code, out, _ = await shvya("migrate")
    assert code == 0 and out.strip() == "applied 0 migration(s): schema up to date"
    code, _, err = await shvya("companies", "--default", "-q")
    assert code == 4 and "ingest creates the default company" in err
    env = {**base_env, "EMBEDDINGS_PROVIDER": "none"}
    settings = IngestSettings(**{k.lower(): v for k, v in env.items()})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            served = (await client.get("/asyncapi.json")).json()
    company = await plat.pool.fetchval("SELECT id FROM companies WHERE is_default")
    code, out, _ = await shvya("companies", "--default", "-q")
    assert code == 0 and out.strip() == str(company)
    document = await _json(shvya, "asyncapi")
    assert document == served
    expected = asyncapi_document(plat.topology.prefix, base_env["NATS_URL"])
    assert document == json.loads(json.dumps(expected))


async def test_keys_create_list_and_revoke_a_company_key_that_ingest_honours(plat, shvya):
    """`keys create` prints a key once that ingest's Authenticator accepts with its role;
    `keys list` shows its prefix and never the key; `keys revoke` (by prefix) makes ingest refuse
    it; each action is an audit event; a missing company or key exits 4, no company named 2."""
    from shvya_ingest.auth import Authenticator, AuthError

    company = await make_company(plat.pool)
    code, _, err = await shvya("keys", "list")
    assert code == 2 and "--company" in err
    code, _, err = await shvya("keys", "list", "--company", str(uuid.uuid4()))
    assert code == 4
    made = await _json(
        shvya, "keys", "create", "--company", str(company), "--name", "crm sync", "--role", "ingest"
    )
    key, prefix = made["key"], made["prefix"]
    assert key.startswith(prefix + "_") and made["role"] == "ingest"
    caller = await Authenticator(plat.pool, "operator-token-" + "x" * 32).authenticate(
        f"Bearer {key}"
    )
    assert caller is not None and caller.company_id == company and caller.role == "ingest"
    listed = await _json(shvya, "keys", "list", "--company", str(company))
    assert [k["prefix"] for k in listed] == [prefix] and "key" not in listed[0]
    code, out, _ = await shvya("keys", "list", "--company", str(company))
    assert code == 0 and prefix in out and key not in out
    code, out, _ = await shvya("keys", "revoke", prefix)
    assert code == 0 and f"revoked {prefix}" in out
    with pytest.raises(AuthError):
        await Authenticator(plat.pool, "operator-token-" + "x" * 32).authenticate(f"Bearer {key}")
    assert await _json(shvya, "keys", "list", "--company", str(company)) == []
    assert len(await _json(shvya, "keys", "list", "--company", str(company), "--all")) == 1
    code, _, _ = await shvya("keys", "revoke", "shvya_00000000")
    assert code == 4
    actions = await plat.pool.fetch(
        "SELECT payload->>'action' AS action FROM events WHERE company_id = $1"
        " AND type = 'audit.action' ORDER BY created_at",
        company,
    )
    assert [a["action"] for a in actions] == ["api_key.created", "api_key.revoked"]
