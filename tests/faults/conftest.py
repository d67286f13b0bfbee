"""The fault suite's own servers: one `Lab` (PostgreSQL, a migrated template) for the session,
independent of the session fixtures in tests/conftest.py, because these tests kill them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import Lab


@pytest.fixture(scope="session")
async def lab(servers_dir: Path) -> AsyncIterator[Lab]:
    async with Lab(servers_dir / "faults") as running:
        yield running
