"""Exactly-once behaviour across processes: retried webhooks, kill -9 mid-job, crash loops."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import asyncpg
import httpx
import pytest
from aiohttp import web

from shvya_common.embedded import free_port
from tests.support import ServiceProcess, eventually, service_env

pytestmark = pytest.mark.e2e


async def test_same_webhook_three_times_gives_one_message_job_and_reply(running, db_url):
    """A webhook retried three times with one provider id files 1 message, 1 job, 1 reply."""
    body = {
        "phone_number": "+4915112345678",
        "contact_name": "Ana",
        "message_text": "Do you ship to Berlin?",
        "channel": "whatsapp_cloud",
        "provider_message_id": "wamid.HBgLNDkxNTExMjM0NTY3OBUCABIYFjNFQjA",
    }
    async with httpx.AsyncClient(base_url=running.url) as client:
        answers = [await client.post("/inbound-message", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert len({(a.json()["message_id"], a.json()["job_id"]) for a in answers}) == 1
        await eventually(lambda: client.get("/queue/stats"), lambda r: r.json()["completed"] == 1)

    conn = await asyncpg.connect(db_url)
    try:
        await eventually(
            lambda: conn.fetchval("SELECT count(*) FROM messages WHERE status = 'logged'"),
            lambda n: n == 1,
        )
        await asyncio.sleep(1.0)  # give a wrongly repeated job the chance to show up
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages WHERE direction = 'inbound') AS inbound,"
            " (SELECT count(*) FROM messages WHERE direction = 'outbound') AS outbound,"
            " (SELECT count(*) FROM jobs) AS jobs, (SELECT count(*) FROM leads) AS leads"
        )
        assert dict(counts) == {"inbound": 1, "outbound": 1, "jobs": 1, "leads": 1}
    finally:
        await conn.close()


class SlowChat:
    """An OpenAI-compatible chat server whose first call hangs until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_call = asyncio.Event()
        self.port = free_port()

    async def completions(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.calls += 1
        if self.calls == 1:
            self.first_call.set()
            await asyncio.sleep(3600)  # the worker serving this is killed meanwhile
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": 0,
                "model": payload["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "We ship to Berlin."},
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        )

    async def __aenter__(self) -> SlowChat:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_engage_killed_mid_job_completes_exactly_once(services, db_url):
    """kill -9 of the engage worker during a model call: the job is redelivered to a new worker
    and completes once, with one reply."""
    async with SlowChat() as chat:
        ai = {
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{chat.port}/v1",
        }
        for name in ("ingest", "dispatch"):
            services.start(name)
        first = services.start("engage", **ai)
        for proc in list(services.procs.values()):
            await proc.wait_ready()
        async with httpx.AsyncClient(base_url=services.url) as client:
            response = await client.post(
                "/inbound-message",
                json={
                    "phone_number": "+12025550123",
                    "contact_name": "Kim",
                    "message_text": "Shipping?",
                    "channel": "whatsapp_cloud",
                },
            )
            assert response.status_code == 200
            job_id = response.json()["job_id"]
            await asyncio.wait_for(chat.first_call.wait(), 30)
            first.kill9()
            second = ServiceProcess(
                "engage", {**first.env, "METRICS_PORT": str(free_port())}, services.log_dir
            ).start()
            services.procs["engage-2"] = second
            await second.wait_ready()
            await eventually(
                lambda: client.get("/queue/stats"), lambda r: r.json()["completed"] == 1, timeout=60
            )

    conn = await asyncpg.connect(db_url)
    try:
        job = await conn.fetchrow(
            "SELECT status, attempts FROM jobs WHERE id = $1", uuid.UUID(job_id)
        )
        assert job["status"] == "completed" and job["attempts"] == 2
        await eventually(
            lambda: conn.fetch("SELECT body, status FROM messages WHERE direction='outbound'"),
            lambda rows: len(rows) == 1 and rows[0]["status"] == "logged",
        )
        await asyncio.sleep(1.0)
        outbound = await conn.fetch("SELECT body FROM messages WHERE direction = 'outbound'")
        assert [r["body"] for r in outbound] == ["We ship to Berlin."]
        assert chat.calls == 2
    finally:
        await conn.close()


async def test_job_that_kills_its_worker_every_time_ends_in_dlq(plat, base_env, tmp_path, db_url):
    """A handler that crashes its process on every delivery is dead-lettered after the
    schedule's attempts instead of being redelivered forever."""
    env = service_env({**base_env, "ACK_WAIT_SECONDS": "1"})
    job = await plat.bus.enqueue_job("test.work", {"url": "https://example.invalid"})
    conn = await asyncpg.connect(db_url)
    crashes = 0
    try:
        for _ in range(12):
            status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job.id)
            if status == "dlq":
                break
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.workers.crashy",
                env={**env, "METRICS_PORT": str(free_port())},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.terminate()
                code = await proc.wait()
            crashes += code == 17
        row = await conn.fetchrow(
            "SELECT status, attempts, last_error FROM jobs WHERE id = $1", job.id
        )
    finally:
        await conn.close()
    assert row["status"] == "dlq"
    assert crashes == 6  # the first delivery and five redeliveries
    assert "crashed or timed out" in row["last_error"]
    info = await plat.js.stream_info(plat.topology.dlq_stream)
    assert info.state.messages == 1
    raw = await plat.js.get_last_msg(
        plat.topology.dlq_stream, plat.topology.dlq_subject("test.work")
    )
    assert json.loads(raw.data)["envelope"]["job_id"] == str(job.id)
