"""Pure logic that needs no server: subjects and priorities, settings validation, tokens."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shvya_common.contracts import PRIORITY_LEVELS, TASKS, Topology, priority_level
from shvya_common.settings import CommonSettings
from shvya_common.tokens import TokenError, sign, verify
from shvya_ingest.phone import AddressError, normalise_email, normalise_phone
from shvya_ingest.settings import IngestSettings


@pytest.mark.parametrize(
    ("priority", "level"),
    [
        (100, 100),
        (150, 100),
        (97, 95),
        (95, 95),
        (90, 90),
        (89, 70),
        (70, 70),
        (65, 60),
        (50, 50),
        (10, 50),
    ],
)
def test_priority_rounds_down_to_a_level(priority: int, level: int) -> None:
    """A priority maps to the highest level not above it, so ordering is never inverted."""
    assert priority_level(priority) == level


ORIGINAL_TASKS = {
    "ai.engage": 100,
    "followup.bumpup": 95,
    "ai.summary": 90,
    "sequence.step": 70,
    "email.sequence": 60,
    "webhook.reminder": 50,
}


def test_task_table_keeps_the_original_priorities() -> None:
    """Every task but the platform's own (dispatch.send, media.fetch, report.refresh,
    whatsapp_web.inbound) is one of the original's six, with its original priority, and the
    conversational three are all there."""
    ours = {"dispatch.send", "media.fetch", "report.refresh", "whatsapp_web.inbound"}
    contract = {n: t for n, t in TASKS.items() if t.service != "test" and n not in ours}
    assert {n: t.priority for n, t in contract.items()} == {
        n: p for n, p in ORIGINAL_TASKS.items() if n in contract
    }
    assert {"ai.engage", "followup.bumpup", "ai.summary", "webhook.reminder"} <= contract.keys()
    assert "email.sequence" in contract
    assert {priority_level(t.priority) for t in TASKS.values()} <= set(PRIORITY_LEVELS)


def test_subjects_are_prefixed_per_install_and_name_the_job() -> None:
    """Two prefixes never share a stream or a subject; a job's subject ends with its id."""
    a, b = Topology("shvya"), Topology("acme")
    assert a.job_subject("ai.engage", 100, "j1") == "shvya.jobs.p100.ai.engage.j1"
    assert a.task_filter("ai.engage", 100) == "shvya.jobs.p100.ai.engage.*"
    assert a.jobs_stream == "SHVYA_JOBS" and b.jobs_stream == "ACME_JOBS"
    assert a.dlq_subject("ai.engage") == "shvya.dlq.ai.engage"


def test_retry_schedule_parses_from_the_environment_form() -> None:
    """RETRY_SCHEDULE accepts '5,20,60' and the attempts follow from it."""
    settings = CommonSettings(retry_schedule="5, 20,60")
    assert settings.retry_schedule == [5.0, 20.0, 60.0]
    assert settings.max_attempts == 4
    assert CommonSettings().retry_schedule == [5.0, 20.0, 60.0, 180.0, 600.0]


def test_bad_settings_stop_start_up_with_a_reason() -> None:
    """Invalid values are refused at start-up, naming the setting."""
    with pytest.raises(ValidationError, match="retry_schedule"):
        CommonSettings(retry_schedule="5,-1")
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        IngestSettings(admin_token="changeme")
    with pytest.raises(ValidationError, match="nats_prefix"):
        CommonSettings(nats_prefix="Bad Prefix")


def test_the_database_and_nats_urls_are_secrets() -> None:
    """A DSN carries its password: a settings object never shows it (repr, str, a dump for
    logs), while services still connect with the full URL."""
    settings = CommonSettings(
        database_url="postgresql://shvya:pg-pass-61f2@db:5432/shvya",
        nats_url="nats://svc:nats-pass-93ab@nats-1:4222, nats://svc:nats-pass-93ab@nats-2:4222",
    )
    shown = f"{settings!r} {settings} {settings.model_dump()} {settings.model_dump_json()}"
    assert "pg-pass-61f2" not in shown and "nats-pass-93ab" not in shown
    assert settings.dsn == "postgresql://shvya:pg-pass-61f2@db:5432/shvya"
    assert settings.nats_servers == [
        "nats://svc:nats-pass-93ab@nats-1:4222",
        "nats://svc:nats-pass-93ab@nats-2:4222",
    ]
    assert CommonSettings().dsn.startswith("postgresql://")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (202) 555-0123", "+12025550123"),
        ("+4915112345678", "+4915112345678"),
        ("+1234567890", "+1234567890"),
    ],
)
def test_phone_numbers_normalise_to_e164(raw: str, expected: str) -> None:
    """Numbers are stored in E.164, including unassigned test numbers that parse."""
    assert normalise_phone(raw) == expected


def test_local_numbers_need_a_default_region() -> None:
    """A number without + is refused unless a default region is configured."""
    with pytest.raises(AddressError):
        normalise_phone("030 1234567")
    assert normalise_phone("030 1234567", "DE") == "+49301234567"


@pytest.mark.parametrize("raw", ["hello", "+1", "12", "+1234567890123456789"])
def test_unparseable_numbers_are_refused(raw: str) -> None:
    """Text that is not a phone number is refused with a reason."""
    with pytest.raises(AddressError, match="phone_number"):
        normalise_phone(raw)


def test_email_addresses_normalise_the_domain() -> None:
    """Email identity lower-cases the domain and refuses non-addresses."""
    assert normalise_email(" Ana@Example.COM ") == "Ana@example.com"
    with pytest.raises(AddressError):
        normalise_email("not-an-address")


def test_tokens_round_trip_and_reject_tampering() -> None:
    """A signed token verifies with its secret only, and any change to it is detected."""
    token = sign("s3cret", {"c": "company", "a": "ana@example.com"})
    assert verify("s3cret", token) == {"a": "ana@example.com", "c": "company"}
    with pytest.raises(TokenError):
        verify("other", token)
    body, sig = token.split(".")
    with pytest.raises(TokenError):
        verify("s3cret", body[:-2] + "AA." + sig)
    with pytest.raises(TokenError):
        verify("s3cret", "garbage")


def test_the_suite_never_reads_a_developers_dotenv(tmp_path, monkeypatch) -> None:
    """With SHVYA_IGNORE_DOTENV set (as the suite sets it), a .env in the working directory is
    ignored; without it, the same file is read."""
    (tmp_path / ".env").write_text("NATS_PREFIX=fromdotenv\n")
    monkeypatch.chdir(tmp_path)
    assert CommonSettings().nats_prefix == "shvya"
    monkeypatch.delenv("SHVYA_IGNORE_DOTENV")
    assert CommonSettings().nats_prefix == "fromdotenv"
