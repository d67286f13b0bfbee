"""Secrets at rest (AES-GCM keyring), the content-addressed local media store, and the S3
store's settings and addressing (no server: the S3 round trips are in
tests/integration/test_media_s3.py)."""

from __future__ import annotations

import os
import uuid

import pytest
from pydantic import SecretStr, ValidationError

from shvya_common.crypto import SecretBox, SecretsError, generate_key
from shvya_common.settings import CommonSettings
from shvya_common.storage import (
    LocalMediaStore,
    MediaNotFound,
    S3MediaStore,
    media_key,
    media_store,
)


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


async def test_a_part_of_a_file_is_read_from_its_offset(tmp_path):
    """get_range reads `length` bytes from `start`, fewer at the end of the file and none past
    it; a missing file is MediaNotFound and a range of no bytes a ValueError."""
    store = LocalMediaStore(tmp_path)
    data = bytes(range(256)) * 4
    stored = await store.put(uuid.uuid4(), data, "video/mp4")
    assert await store.get_range(stored.key, 0, 10) == data[:10]
    assert await store.get_range(stored.key, 500, 24) == data[500:524]
    assert await store.get_range(stored.key, 1000, 100) == data[1000:]
    assert await store.get_range(stored.key, 5000, 1) == b""
    with pytest.raises(ValueError):
        await store.get_range(stored.key, 0, 0)
    await store.delete(stored.key)
    with pytest.raises(MediaNotFound):
        await store.get_range(stored.key, 0, 10)


async def test_keys_outside_the_store_layout_are_refused(tmp_path):
    """A key cannot climb out of the media folder."""
    with pytest.raises(MediaNotFound):
        await LocalMediaStore(tmp_path).get("../../etc/passwd")
    with pytest.raises(MediaNotFound):
        await LocalMediaStore(tmp_path).get_range("../../etc/passwd", 0, 10)


def test_media_store_picks_the_folder_by_default_and_s3_when_asked(tmp_path):
    """MEDIA_STORE=local (the default) is the MEDIA_DIR folder; s3 is the bucket, and the
    store's repr shows neither key."""
    local = media_store(CommonSettings(media_dir=tmp_path))
    assert isinstance(local, LocalMediaStore) and local.root == tmp_path
    s3 = media_store(
        CommonSettings(
            media_store="s3",
            s3_bucket="acme-media",
            s3_access_key_id="AKIAEXAMPLEKEYID0000",
            s3_secret_access_key="very-secret-access-key",
            s3_endpoint_url="http://127.0.0.1:9000",
        )
    )
    assert isinstance(s3, S3MediaStore) and s3.bucket == "acme-media"
    assert "AKIAEXAMPLE" not in repr(s3) and "very-secret" not in repr(s3)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, "S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY"),
        ({"s3_bucket": "acme-media", "s3_access_key_id": "AKIA0"}, "S3_SECRET_ACCESS_KEY"),
        ({"s3_bucket": "acme-media", "s3_secret_access_key": "very-secret"}, "S3_ACCESS_KEY_ID"),
    ],
)
def test_s3_without_a_bucket_or_keys_stops_start_up_naming_what_is_missing(given, missing):
    """MEDIA_STORE=s3 without S3_BUCKET and both keys is refused, naming the missing settings
    and echoing no value."""
    with pytest.raises(ValidationError, match=f"MEDIA_STORE=s3 needs {missing}") as err:
        CommonSettings(media_store="s3", **given)
    assert "very-secret" not in str(err.value)


def test_an_s3_endpoint_with_credentials_in_it_is_refused():
    """S3_ENDPOINT_URL cannot carry user:password (errors name the endpoint; keys have their
    own settings)."""
    with pytest.raises(ValidationError, match="s3_endpoint_url"):
        CommonSettings(s3_endpoint_url="https://key:secret@s3.example.test")


@pytest.mark.parametrize(
    ("style", "prefix"),
    [
        ("path", "https://s3.example.test/acme-media/"),
        ("virtual", "https://acme-media.s3.example.test/"),
    ],
)
async def test_the_addressing_style_decides_where_the_bucket_goes(style, prefix, monkeypatch):
    """S3_ADDRESSING_STYLE=path puts the bucket in the path, virtual in the host name (checked
    on a presigned URL, which the client builds the way it addresses requests)."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    store = S3MediaStore(
        bucket="acme-media",
        access_key_id=SecretStr("AKIAEXAMPLEKEYID0000"),
        secret_access_key=SecretStr("very-secret-access-key"),
        endpoint_url="https://s3.example.test",
        addressing_style=style,
    )
    key = media_key(uuid.uuid4(), "ab" * 32)
    try:
        s3 = await store._s3()
        url = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": "acme-media", "Key": key}
        )
    finally:
        await store.aclose()
    assert url.startswith(prefix + key + "?")


def test_keygen_prints_an_entry_the_settings_accept(capsys):
    """`shvya keygen` prints an id:key pair that SECRETS_KEYS validates and can use."""
    from shvya_common.cli import main
    from shvya_common.settings import CommonSettings

    main(["keygen"])
    entry = capsys.readouterr().out.strip()
    settings = CommonSettings(_env_file=None, secrets_keys=entry)  # type: ignore[call-arg]
    box = settings.secret_box()
    assert box is not None and box.decrypt(box.encrypt("x", "c"), "c") == "x"


def test_make_up_writes_its_secrets_to_a_private_env_file(tmp_path, monkeypatch):
    """`shvya up` gives a fresh checkout a .env readable only by its owner, with random
    ADMIN_TOKEN, LINK_SECRET, SECRETS_KEYS and PostgreSQL password, and keeps values set."""
    import stat

    from shvya_common.cli import ensure_env_file
    from shvya_common.crypto import SecretBox

    for name in ("ADMIN_TOKEN", "LINK_SECRET", "SECRETS_KEYS", "EMBEDDED_PG_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text("LINK_SECRET=" + "k" * 40 + "\n")
    env.chmod(0o644)
    ensure_env_file(tmp_path)
    values = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert values["LINK_SECRET"] == "k" * 40
    assert len(values["ADMIN_TOKEN"]) >= 32 and len(values["EMBEDDED_PG_PASSWORD"]) >= 24
    SecretBox.from_setting(values["SECRETS_KEYS"])
    first = env.read_text()
    ensure_env_file(tmp_path)
    assert env.read_text() == first
