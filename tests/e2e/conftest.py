"""Fixtures that run SHVYA's services as separate processes against the test's NATS and DB."""

from __future__ import annotations

import pytest

from shvya_common.embedded import free_port
from tests.support import ServiceProcess, service_env


class Platform:
    def __init__(self, base_env: dict[str, str], log_dir) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.port = free_port()
        self.procs: dict[str, ServiceProcess] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, **extra: str) -> ServiceProcess:
        env = service_env(
            {**self.base_env, "PORT": self.port, "METRICS_PORT": free_port(), **extra}
        )
        proc = ServiceProcess(name, env, self.log_dir).start()
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def services(base_env, tmp_path):
    platform = Platform(base_env, tmp_path)
    yield platform
    platform.stop_all()


@pytest.fixture
async def running(services):
    """All four services up."""
    for name in ("ingest", "engage", "dispatch", "scheduler"):
        services.start(name)
    for proc in list(services.procs.values()):
        await proc.wait_ready()
    return services
