"""TEST_BACKEND=containers: the containers tests/backends.py would start, checked without Docker."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from tests import backends

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())


def test_nats_runs_jetstream_from_the_compose_image_on_the_client_port():
    """NATS starts with JetStream and a store dir, from the image compose runs, on port 4222."""
    spec = backends.nats_spec()
    assert spec.image == backends.NATS_IMAGE == COMPOSE["services"]["nats"]["image"]
    assert spec.command[0] == "nats-server"
    assert "--jetstream" in spec.command
    assert spec.command[spec.command.index("--store_dir") + 1] == "/data"
    assert spec.port == 4222 and spec.env == {}
    assert re.search(spec.ready_log, "[1] 2026/01/01 00:00:00.000000 [INF] Server is ready")


def test_postgres_runs_the_pgvector_image_with_a_superuser_password():
    """PostgreSQL comes from compose's pgvector image, as superuser postgres with our password."""
    spec = backends.postgres_spec("pw123")
    assert spec.image == backends.POSTGRES_IMAGE == COMPOSE["services"]["postgres"]["image"]
    assert spec.env == {
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "pw123",
        "POSTGRES_DB": "postgres",
    }
    assert spec.port == 5432 and spec.command == ()
    # The entrypoint's temporary init server logs the line once, the real server a second time.
    assert spec.ready_times == 2
    assert re.search(spec.ready_log, "LOG:  database system is ready to accept connections")


@pytest.mark.parametrize("spec", [backends.nats_spec(), backends.postgres_spec("pw")])
def test_the_specs_are_valid_arguments_for_testcontainers(spec: backends.ContainerSpec):
    """DockerContainer accepts each spec's arguments and the wait strategy builds, no engine."""
    kwargs = spec.container_kwargs()
    inspect.signature(DockerContainer).bind(**kwargs)
    assert kwargs["ports"] == [spec.port]
    assert kwargs["command"] == (list(spec.command) or None)
    LogMessageWaitStrategy(re.compile(spec.ready_log), times=spec.ready_times)


def test_the_wheels_stay_the_default_and_a_typo_is_refused(monkeypatch: pytest.MonkeyPatch):
    """Unset TEST_BACKEND means the wheels; an unknown value stops the session with a reason."""
    monkeypatch.delenv("TEST_BACKEND", raising=False)
    assert backends.selected() == "wheels"
    monkeypatch.setenv("TEST_BACKEND", "Containers")
    assert backends.selected() == "containers"
    monkeypatch.setenv("TEST_BACKEND", "docker")
    with pytest.raises(RuntimeError, match="expected one of wheels, containers"):
        backends.selected()
