"""The docs are tested: every shell block of README.md and docs/ marked `<!-- runnable -->`
(tests/docblocks.py) runs with bash against the four services, as a newcomer would type it.

Each block runs in document order, in a folder shaped like a checkout (the repository's entries
linked in, but the test's own `.env` instead of the developer's), with a fresh environment: a
plain PATH without the virtualenv, a HOME of its own whose `.curlrc` makes curl fail on an HTTP
error, and the admin token. The embedded platform's addresses in the text (ingest on
127.0.0.1:8000, PostgreSQL on port 54320, database shvya) are replaced by the test's servers',
the way doctests normalise output. A failing block fails the test with its file and line.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.docblocks import ROOT, Block, runnable_blocks

pytestmark = pytest.mark.e2e

BLOCK_TIMEOUT_SECONDS = 90
SKIP = {".env", ".data", ".git"}


def _checkout(tmp_path: Path, env_file: str) -> Path:
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in SKIP:
            (work / entry.name).symlink_to(entry)
    (work / ".env").write_text(env_file)
    return work


def _localise(text: str, ingest_url: str, db_url: str) -> str:
    db = urlsplit(db_url)
    text = re.sub(r"https?://(127\.0\.0\.1|localhost):8000", ingest_url, text)
    return re.sub(r"-p 54320 -U postgres shvya\b", f"-p {db.port} -U postgres {db.path[1:]}", text)


async def _run(block: Block, script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-o",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BLOCK_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + f"\n(timed out after {BLOCK_TIMEOUT_SECONDS}s)"
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_runnable_blocks_in_the_docs_work_as_typed(services, base_env, tmp_path):
    """Each marked block exits 0 against the running platform; the first one that does not
    fails the test with its location, its text and its output."""
    blocks = runnable_blocks()
    assert blocks, "no block of README.md or docs/ is marked runnable"
    for name in ("ingest", "engage", "dispatch", "scheduler"):
        services.start(name, EMBEDDINGS_PROVIDER="none")
    for proc in services.procs.values():
        await proc.wait_ready()

    keys = ("DATABASE_URL", "NATS_URL", "NATS_PREFIX", "ADMIN_TOKEN")
    env_file = "".join(f"{k}={base_env[k]}\n" for k in keys)
    # The quick start reads the embedded PostgreSQL's password from .env, as make up writes it.
    env_file += f"EMBEDDED_PG_PASSWORD={urlsplit(base_env['DATABASE_URL']).password or ''}\n"
    work = _checkout(tmp_path, env_file)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ADMIN_TOKEN": base_env["ADMIN_TOKEN"],
    }
    for block in blocks:
        script = _localise(block.text, services.url, base_env["DATABASE_URL"])
        code, out = await _run(block, script, work, env)
        assert code == 0, (
            f"{block.where}: the runnable block exited {code}\n--- block ---\n{block.text}"
            f"--- output ---\n{out[-4000:]}"
        )
