"""`shvya reembed`: bring the knowledge base's vectors up to date with the configured embedder.

Run it after changing EMBEDDINGS_PROVIDER, EMBEDDINGS_MODEL or EMBEDDINGS_DIMENSIONS (or
KB_TEXT_SEARCH_CONFIG), and after loading documents while no embedder was configured. It reads the
same settings as the services, applies pending migrations, and prints what it did.
"""

from __future__ import annotations

import sys
import uuid

from pydantic import ValidationError

from shvya_common.db import create_pool, migrate
from shvya_common.errors import ShvyaError
from shvya_common.knowledge.embedders import open_embedder
from shvya_common.knowledge.reembed import reembed
from shvya_common.knowledge.settings import KnowledgeSettings


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_reembed(company_id: uuid.UUID | None, everything: bool) -> int:
    """The command's body; returns the process exit status."""
    try:
        settings = KnowledgeSettings()
    except ValidationError as err:
        _say(f"invalid settings: {err}")
        return 2
    await migrate(settings.dsn)
    pool = await create_pool(settings.dsn, 1, 2)
    try:
        async with open_embedder(settings) as embedder:
            if embedder is None:
                _say(
                    "no embedder configured: set OPENAI_API_KEY (or EMBEDDINGS_API_KEY), or "
                    "EMBEDDINGS_PROVIDER=local with the offline-embedder extra installed"
                )
                return 2
            scope = f"company {company_id}" if company_id else "all companies"
            _say(f"re-embedding {scope} with {embedder.name}")
            report = await reembed(
                pool,
                embedder,
                company_id=company_id,
                everything=everything,
                batch_size=settings.embeddings_batch_size,
                text_search_config=settings.kb_text_search_config,
                progress=lambda n: _say(f"  {n} chunks embedded"),
            )
    except ShvyaError as err:
        _say(f"re-embedding failed: {err}")
        return 1
    finally:
        await pool.close()
    if report.resized_from is not None:
        _say(f"vector column resized from {report.resized_from} to {report.dimensions} dimensions")
    if report.reindexed:
        _say(f"{report.reindexed} chunks re-indexed as {settings.kb_text_search_config} text")
    _say(f"done: {report.embedded} chunks embedded with {report.embedder}")
    return 0
