"""Secrets at rest (AES-GCM keyring) and the content-addressed local media store."""

from __future__ import annotations

import uuid

import pytest

from shvya_common.crypto import SecretBox, SecretsError, generate_key
from shvya_common.storage import LocalMediaStore, MediaNotFound


def ring(*ids: str) -> str:
    return ",".join(f"{i}:{generate_key()}" for i in ids)


def test_a_secret_round_trips_and_never_appears_in_the_stored_form():
    """What encrypt returns decrypts to the input and does not contain it."""
    box = SecretBox.from_setting(ring("k1"))
    stored = box.encrypt("EAAG-very-secret-token", "channel_accounts:1:token")
    assert "very-secret" not in stored and stored.startswith("v1.k1.")
    assert box.decrypt(stored, "channel_accounts:1:token") == "EAAG-very-secret-token"


def test_a_ciphertext_moved_to_another_row_does_not_decrypt():
    """The context is authenticated: the same value under another context is refused."""
    box = SecretBox.from_setting(ring("k1"))
    stored = box.encrypt("s3cret", "channel_accounts:1:token")
    with pytest.raises(SecretsError, match="does not decrypt"):
        box.decrypt(stored, "channel_accounts:2:token")


def test_rotation_decrypts_old_values_and_reencrypts_under_the_new_primary():
    """With a new key first, old values still decrypt and reencrypt moves them to the new key."""
    old = SecretBox.from_setting(ring("k1"))
    stored = old.encrypt("pw", "smtp:1")
    rotated = SecretBox.from_setting(f"k2:{generate_key()},{old_setting(old)}")
    assert rotated.decrypt(stored, "smtp:1") == "pw"
    assert rotated.needs_reencrypt(stored)
    fresh = rotated.reencrypt(stored, "smtp:1")
    assert fresh.startswith("v1.k2.") and rotated.decrypt(fresh, "smtp:1") == "pw"
    with pytest.raises(SecretsError, match="lacks"):
        SecretBox.from_setting(ring("k3")).decrypt(fresh, "smtp:1")


def old_setting(box: SecretBox) -> str:
    import base64

    kid, key = box.keys[0]
    return f"{kid}:{base64.urlsafe_b64encode(key).decode().rstrip('=')}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("nokey", "is not '<id>:<base64 key>'"),
        ("k1:c2hvcnQ", "must be 32 bytes"),
        (f"k1:{generate_key()},k1:{generate_key()}", "twice"),
    ],
)
def test_bad_keyrings_are_refused_without_echoing_key_material(value, message):
    """A malformed SECRETS_KEYS stops with a reason that names no key bytes."""
    with pytest.raises(SecretsError, match=message) as err:
        SecretBox.from_setting(value)
    material = value.partition(":")[2].split(",")[0]
    assert not material or material not in str(err.value)


async def test_media_is_stored_once_by_content_and_read_back(tmp_path):
    """Two puts of the same bytes give one key and one file; get returns the bytes."""
    store = LocalMediaStore(tmp_path)
    company = uuid.uuid4()
    first = await store.put(company, b"\x89PNG...", "image/png")
    again = await store.put(company, b"\x89PNG...", "image/png")
    assert first == again and first.size == 7
    assert await store.get(first.key) == b"\x89PNG..."
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1
    await store.delete(first.key)
    with pytest.raises(MediaNotFound):
        await store.get(first.key)


async def test_keys_outside_the_store_layout_are_refused(tmp_path):
    """A key cannot climb out of the media folder."""
    with pytest.raises(MediaNotFound):
        await LocalMediaStore(tmp_path).get("../../etc/passwd")


def test_keygen_prints_an_entry_the_settings_accept(capsys):
    """`shvya keygen` prints an id:key pair that SECRETS_KEYS validates and can use."""
    from shvya_common.cli import main
    from shvya_common.settings import CommonSettings

    main(["keygen"])
    entry = capsys.readouterr().out.strip()
    settings = CommonSettings(_env_file=None, secrets_keys=entry)  # type: ignore[call-arg]
    box = settings.secret_box()
    assert box is not None and box.decrypt(box.encrypt("x", "c"), "c") == "x"


def test_a_fresh_env_file_gets_an_admin_token_and_a_keyring_once(tmp_path, monkeypatch):
    """`shvya up` on a fresh checkout writes ADMIN_TOKEN and a usable SECRETS_KEYS to .env,
    and leaves an .env that has them alone."""
    from shvya_common.cli import _env_file_value, ensure_env_file

    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("SECRETS_KEYS", raising=False)
    (tmp_path / ".env").write_text("# SECRETS_KEYS=\nLOG_LEVEL=info\n")
    ensure_env_file(tmp_path)
    first = (tmp_path / ".env").read_text()
    keys = _env_file_value(tmp_path / ".env", "SECRETS_KEYS")
    assert keys is not None and SecretBox.from_setting(keys).primary_id == "k1"
    assert len(_env_file_value(tmp_path / ".env", "ADMIN_TOKEN") or "") >= 32
    ensure_env_file(tmp_path)
    assert (tmp_path / ".env").read_text() == first
