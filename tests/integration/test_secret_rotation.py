"""`shvya rotate-secrets`, run as a process against a real database: every stored secret
(channel accounts, DKIM keys, IMAP passwords) is re-sealed under the primary key, after which
the old key can be dropped from SECRETS_KEYS; a value no key opens is reported, not lost."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shvya_common.channel_accounts import default_account, seal_secrets
from shvya_common.crypto import SecretBox, SecretsError, generate_key
from shvya_common.db import create_pool
from shvya_common.secret_rotation import dkim_key_context, mailbox_password_context
from shvya_dispatch.channels.dkim import generate_private_key, open_key
from tests.integration.channel_accounts_support import KEY_NEW, KEY_OLD

pytestmark = pytest.mark.integration

TOKEN = "EAAG-rotation-token-6a1b"
SMTP_PASSWORD = "rotation-smtp-password-0c"
IMAP_PASSWORD = "rotation-imap-password-9d"
OLD, NEW = SecretBox.from_setting(KEY_OLD), SecretBox.from_setting(KEY_NEW)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, 1, 2)
    yield p
    await p.close()


async def rotate_secrets(db_url: str, keys: str) -> tuple[int, str]:
    """Run `shvya rotate-secrets` as its own process; (exit code, output)."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SECRETS_KEYS": keys,
        "SHVYA_IGNORE_DOTENV": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_common.cli",
        "rotate-secrets",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _stored(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, bytes]:
    """A company with a WhatsApp account, a DKIM key and an IMAP mailbox, all sealed under the
    old key: (company, account, mailbox, the DKIM key's PEM)."""
    company = await pool.fetchval("INSERT INTO companies (name) VALUES ('Acme') RETURNING id")
    account = uuid.uuid4()
    await pool.execute(
        "INSERT INTO channel_accounts (id, company_id, channel, name, address, config, secrets)"
        " VALUES ($1, $2, 'email', 'main', NULL, $3, $4)",
        account,
        company,
        {"smtp_host": "smtp.acme.example", "smtp_user": "acme", "from_address": "a@acme.example"},
        seal_secrets(OLD, account, {"smtp_password": SMTP_PASSWORD}),
    )
    pem = generate_private_key(1024)
    await pool.execute(
        "INSERT INTO email_dkim_keys (company_id, domain, selector, private_key)"
        " VALUES ($1, 'acme.example', 's1', $2)",
        company,
        OLD.encrypt(pem.decode(), dkim_key_context(company, "acme.example")),
    )
    mailbox = uuid.uuid4()
    await pool.execute(
        "INSERT INTO email_mailboxes (id, company_id, host, port, username, password)"
        " VALUES ($1, $2, 'imap.acme.example', 993, 'acme', $3)",
        mailbox,
        company,
        OLD.encrypt(IMAP_PASSWORD, mailbox_password_context(mailbox)),
    )
    wa = uuid.uuid4()
    await pool.execute(
        "INSERT INTO channel_accounts (id, company_id, channel, name, address, config, secrets)"
        " VALUES ($1, $2, 'whatsapp_cloud', 'main', '1055', '{}', $3)",
        wa,
        company,
        seal_secrets(OLD, wa, {"access_token": TOKEN, "app_secret": "app-secret-rotation"}),
    )
    return company, account, mailbox, pem


async def _key_ids(pool: asyncpg.Pool) -> set[str]:
    values = [
        v
        for row in await pool.fetch("SELECT secrets FROM channel_accounts")
        for v in row["secrets"].values()
    ]
    values += [r[0] for r in await pool.fetch("SELECT private_key FROM email_dkim_keys")]
    values += [r[0] for r in await pool.fetch("SELECT password FROM email_mailboxes")]
    return {v.split(".")[1] for v in values}


async def test_rotation_reseals_everything_so_the_old_key_can_be_dropped(pool, db_url):
    """With the new key first, `rotate-secrets` re-seals every stored secret under it and says
    the old key may go; the new key alone then opens all of them, the old alone none, and a
    second run changes nothing. Its output never shows a secret."""
    company, account, mailbox, pem = await _stored(pool)
    assert await _key_ids(pool) == {"k_old"}

    code, out = await rotate_secrets(db_url, f"{KEY_NEW},{KEY_OLD}")
    assert code == 0, out
    assert "channel_accounts: 2 re-sealed" in out
    assert "email_dkim_keys: 1 re-sealed" in out and "email_mailboxes: 1 re-sealed" in out
    assert "may now be removed" in out
    assert not [s for s in (TOKEN, SMTP_PASSWORD, IMAP_PASSWORD) if s in out]
    assert await _key_ids(pool) == {"k_new"}

    opened = await default_account(pool, NEW, company, "email")
    assert opened is not None and opened.secrets == {"smtp_password": SMTP_PASSWORD}
    stored_key = await pool.fetchval("SELECT private_key FROM email_dkim_keys")
    assert open_key(NEW, company, "acme.example", "s1", stored_key).private_pem == pem
    stored_password = await pool.fetchval("SELECT password FROM email_mailboxes")
    assert NEW.decrypt(stored_password, mailbox_password_context(mailbox)) == IMAP_PASSWORD
    with pytest.raises(SecretsError):
        await default_account(pool, OLD, company, "email")

    again_code, again = await rotate_secrets(db_url, KEY_NEW)
    assert again_code == 0, again
    assert "channel_accounts: 0 re-sealed, 2 already under k_new" in again
    assert account  # the same rows, untouched


async def test_a_value_no_key_opens_is_reported_and_left_as_it_was(pool, db_url):
    """A secret sealed under a key missing from SECRETS_KEYS makes the command exit 1, name the
    row and keep the old key listed as in use; the other rows are still re-sealed."""
    await _stored(pool)
    lost = SecretBox.from_setting(f"k_gone:{generate_key()}")
    orphan = uuid.uuid4()
    company = await pool.fetchval("SELECT id FROM companies LIMIT 1")
    await pool.execute(
        "INSERT INTO channel_accounts (id, company_id, channel, name, config, secrets)"
        " VALUES ($1, $2, 'whatsapp_web', 'web', '{}', $3)",
        orphan,
        company,
        seal_secrets(lost, orphan, {"note": "sealed-under-a-lost-key"}),
    )
    code, out = await rotate_secrets(db_url, f"{KEY_NEW},{KEY_OLD}")
    assert code == 1, out
    assert f"channel_accounts {orphan}: NOT re-sealed" in out
    assert "keys still in use besides k_new: k_gone" in out
    assert await _key_ids(pool) == {"k_new", "k_gone"}
