"""The servers and processes a fault scenario owns, and may kill.

`Lab` runs one embedded PostgreSQL for every scenario (each gets a fresh database cloned from a
migrated template) and can stop it for a while. `Lab.scenario()` gives a `Scenario`: its own NATS
(one server, or a 3-node cluster), its own fake Graph API, and a `Supervisor` that runs the four
services as separate OS processes and replaces any that exits, as `shvya up` or Kubernetes would.
Nothing here shares the pytest session's servers, because the scenarios kill them.

Services are hermetic: they start in an empty working folder (so no developer `.env` is read)
with an environment built from scratch, never the caller's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
from nats.aio.client import Client as NATS

from shvya_common.embedded import EmbeddedNats, EmbeddedPostgres, NatsCluster, free_port
from tests.fakes.graph_server import FakeGraph
from tests.support import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "engage", "dispatch", "scheduler")
TEMPLATE_DB = "shvya_faults_template"
PREFIX = "faults"
GRAPH_TOKEN = "graph-faults-token"
GRAPH_PHONE_ID = "106540352242922"

# The bus settings of tests/conftest.py's base_env, and those of the outbox the integrator adds
# for issue 7 (today's code ignores variables it does not know, so they are passed anyway).
BUS_ENV = {
    "RETRY_SCHEDULE": "0.2,0.4,0.6,0.8,1.0",
    "ACK_WAIT_SECONDS": "2",
    "WORKER_POLL_SECONDS": "0.05",
    "DB_POOL_MIN": "1",
    "DB_POOL_MAX": "8",
    "RELAY_INTERVAL_SECONDS": "0.5",
    "RELAY_GRACE_SECONDS": "1",
    "RECONCILE_INTERVAL_SECONDS": "1",
    "RECONCILE_HORIZON_SECONDS": "5",
}

# Replies come from the offline responder with no knowledge-base search: the suite measures the
# bus, not the model, and must not need a network.
ENGAGE_ENV = {"EMBEDDINGS_PROVIDER": "none", "KB_TOP_K": "0"}


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def hermetic_env(settings: Mapping[str, str]) -> dict[str, str]:
    """An environment from scratch: PATH and locale from ours, everything else from `settings`."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            # tests.workers.crashy is imported from the repository; the services are installed.
            "PYTHONPATH": str(ROOT),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
        }
    )
    env.update(settings)
    return env


class Proc(ServiceProcess):
    """A service process started in its own working folder (`python -m <module>`)."""

    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, *, module: str, cwd: Path
    ) -> None:
        super().__init__(name, env, log_dir)
        self.module = module
        self.cwd = cwd

    def start(self) -> Proc:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    """Keeps one process per name running: a process that exits is started again after
    `restart_delay`, with the same environment (so ingest comes back on the same port)."""

    log_dir: Path
    cwd: Path
    restart_delay: float = 0.5
    procs: dict[str, Proc] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    exits: list[tuple[str, int]] = field(default_factory=list)
    restarts: Counter[str] = field(default_factory=Counter)
    _stopping: bool = False
    _task: asyncio.Task[None] | None = None

    def start(self, name: str, env: dict[str, str], module: str | None = None) -> Proc:
        self.envs[name] = env
        self.modules[name] = module or f"shvya_{name}"
        proc = Proc(name, env, self.log_dir, module=self.modules[name], cwd=self.cwd).start()
        self.procs[name] = proc
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="faults-supervisor")
        return proc

    async def _watch(self) -> None:
        while not self._stopping:
            for name, proc in list(self.procs.items()):
                if proc.alive or self._stopping:
                    continue
                assert proc.proc is not None
                self.exits.append((name, proc.proc.returncode))
                proc.stop()  # closes its log
                await asyncio.sleep(self.restart_delay)
                if self._stopping:
                    return
                self.restarts[name] += 1
                self.procs[name] = Proc(
                    name, self.envs[name], self.log_dir, module=self.modules[name], cwd=self.cwd
                ).start()
            await asyncio.sleep(0.05)

    def exit_codes(self, name: str) -> list[int]:
        return [code for n, code in self.exits if n == name]

    async def wait_ready(self, names: Iterable[str], timeout: float = 60.0) -> None:
        await asyncio.gather(*(self.procs[n].wait_ready(timeout) for n in names))

    async def kill9(self, name: str, timeout: float = 60.0) -> None:
        """SIGKILL `name`, then wait until its replacement is ready."""
        old = self.procs[name]
        await asyncio.to_thread(old.kill9)
        deadline = time.monotonic() + timeout
        while self.procs[name] is old:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not restarted within {timeout}s")
            await asyncio.sleep(0.05)
        await self.procs[name].wait_ready(timeout)

    def pause(self, *names: str) -> None:
        """SIGSTOP: the processes keep their sockets but do nothing, as a stalled consumer."""
        for name in names:
            proc = self.procs[name].proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)

    def resume(self, *names: str) -> None:
        for name in names:
            proc = self.procs[name].proc
            assert proc is not None
            proc.send_signal(signal.SIGCONT)

    async def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM everything, SIGKILL what is still running after `grace` seconds."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        procs = [p for p in self.procs.values() if p.proc is not None]

        def _stop() -> None:
            for p in procs:
                if p.alive:
                    assert p.proc is not None
                    p.proc.send_signal(signal.SIGCONT)  # in case a scenario left it paused
                    p.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in procs:
                assert p.proc is not None
                try:
                    p.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    p.proc.wait()
                p.stop()

        await asyncio.to_thread(_stop)


@dataclass
class Scenario:
    """One scenario's world: its database, its NATS, its fake Graph and its services."""

    name: str
    folder: Path
    db_url: str
    nats: EmbeddedNats | NatsCluster
    graph: FakeGraph
    supervisor: Supervisor
    extra_env: dict[str, str] = field(default_factory=dict)
    # "list": NATS_URL names every node, comma separated (what issue 7 asks settings to accept);
    # "seed": the first node only, the client learning the others from the server's INFO.
    nats_url_style: str = "list"
    ingest_port: int = field(default_factory=free_port)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    link_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def nats_urls(self) -> list[str]:
        return self.nats.urls if isinstance(self.nats, NatsCluster) else [self.nats.url]

    @property
    def jobs_stream(self) -> str:
        return f"{PREFIX.upper()}_JOBS"

    @property
    def dlq_stream(self) -> str:
        return f"{PREFIX.upper()}_DLQ"

    def env_for(self, name: str, **extra: str) -> dict[str, str]:
        port = self.metrics_ports.setdefault(name, free_port())
        settings = {
            "NATS_URL": (
                self.nats_urls[0] if self.nats_url_style == "seed" else ",".join(self.nats_urls)
            ),
            "DATABASE_URL": self.db_url,
            "NATS_PREFIX": PREFIX,
            "ADMIN_TOKEN": self.admin_token,
            "PORT": str(self.ingest_port),
            "METRICS_PORT": str(port),
            "PUBLIC_BASE_URL": self.ingest_url,
            "LINK_SECRET": self.link_secret,
            "MEDIA_DIR": str(self.folder / "media"),
            "WHATSAPP_CLOUD_PHONE_ID": GRAPH_PHONE_ID,
            "WHATSAPP_CLOUD_TOKEN": GRAPH_TOKEN,
            "WHATSAPP_CLOUD_BASE_URL": self.graph.base_url,
            # The suite measures faults, not ingest's per-key limit (its own tests do): the load
            # posts anonymously on loopback, one key's worth of requests at 60 messages/s.
            "API_RATE_LIMIT": "1000000/minute",
            # Email may go at any hour, whatever the time zone of the machine running the suite.
            "POLICY_EMAIL_QUIET_HOURS": "",
            **BUS_ENV,
            **ENGAGE_ENV,
            **self.extra_env,
            **extra,
        }
        return hermetic_env(settings)

    def start(self, name: str, *, module: str | None = None, **extra: str) -> Proc:
        return self.supervisor.start(name, self.env_for(name, **extra), module)

    async def start_services(self, names: Iterable[str] = SERVICES, timeout: float = 60.0) -> None:
        names = list(names)
        for name in names:
            self.start(name)
        await self.supervisor.wait_ready(names, timeout)

    @asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.db_url, timeout=5)
        try:
            yield conn
        finally:
            await conn.close()

    @asynccontextmanager
    async def nats_client(self) -> AsyncIterator[NATS]:
        """A short-lived connection for the harness's own questions; a node that is down on
        purpose is skipped quietly."""

        async def _quiet(_err: Exception) -> None:
            return None

        nc = await nats.connect(
            servers=self.nats_urls,
            connect_timeout=2,
            max_reconnect_attempts=5,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
            error_cb=_quiet,
        )
        try:
            yield nc
        finally:
            await nc.close()


class Lab:
    """The servers of a fault-suite run, under `base_dir`; open with `async with`."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.pg = EmbeddedPostgres(base_dir / "pg", free_port(), database="postgres", durable=False)

    async def __aenter__(self) -> Lab:
        from shvya_common.db import migrate

        self.base_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.pg.start)
        admin = await asyncpg.connect(self.pg.url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        await migrate(with_database(self.pg.url, TEMPLATE_DB))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.pg.stop)

    async def stop_pg(self) -> None:
        await asyncio.to_thread(self.pg.stop)

    async def start_pg(self) -> None:
        await asyncio.to_thread(self.pg.start)

    async def crash_pg(self) -> None:
        """PostgreSQL's processes aborted as in a crash (what was not yet written is gone), then
        started again on the same data: crash recovery."""
        await asyncio.to_thread(self.pg.stop, "immediate")
        await asyncio.to_thread(self.pg.start)

    async def _create_db(self, name: str) -> str:
        admin = await asyncpg.connect(self.pg.url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        return with_database(self.pg.url, name)

    async def _drop_db(self, name: str) -> None:
        admin = await asyncpg.connect(self.pg.url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    @asynccontextmanager
    async def scenario(
        self,
        name: str,
        *,
        cluster: bool = False,
        env: Mapping[str, str] | None = None,
        nats_url_style: str = "list",
    ) -> AsyncIterator[Scenario]:
        folder = self.base_dir / f"{name}-{uuid.uuid4().hex[:6]}"
        (folder / "logs").mkdir(parents=True)
        (folder / "cwd").mkdir()
        db_name = f"f_{uuid.uuid4().hex[:12]}"
        db_url = await self._create_db(db_name)
        server: EmbeddedNats | NatsCluster
        if cluster:
            server = NatsCluster(folder / "nats")
        else:
            server = EmbeddedNats(folder / "nats", free_port(), free_port())
        await asyncio.to_thread(server.start)
        graph = FakeGraph(token=GRAPH_TOKEN, phone_number_id=GRAPH_PHONE_ID)
        await graph.start()
        supervisor = Supervisor(folder / "logs", folder / "cwd")
        extra = dict(env or {})
        if cluster:
            extra.setdefault("NATS_STREAM_REPLICAS", "3")
        sc = Scenario(
            name,
            folder,
            db_url,
            server,
            graph,
            supervisor,
            extra_env=extra,
            nats_url_style=nats_url_style,
        )
        try:
            if cluster:
                await wait_jetstream(sc)
            yield sc
        finally:
            await supervisor.stop_all()
            await graph.close()
            await asyncio.to_thread(server.stop)
            if self.pg.running():
                await self._drop_db(db_name)


async def wait_jetstream(sc: Scenario, timeout: float = 60.0) -> None:
    """Until every running node's /healthz says JetStream is up (a cluster elects its meta
    leader a few seconds after start)."""
    nodes = sc.nats.nodes if isinstance(sc.nats, NatsCluster) else [sc.nats]
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        for node in nodes:
            if not node.running():
                continue
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{node.monitor_port}/healthz")
                    if answer.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"JetStream on {node.url} not healthy after {timeout}s")
                await asyncio.sleep(0.2)
