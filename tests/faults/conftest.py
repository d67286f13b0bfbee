"""The fault suite's own servers: one `Lab` (PostgreSQL, a migrated template) for the session,
independent of the session fixtures in tests/conftest.py, because these tests kill them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.faults.harness import Lab


@pytest.fixture(scope="session")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with Lab(tmp_path_factory.mktemp("faults")) as running:
        yield running
