"""The console's files and pure pieces: every asset is in the repository (no CDN), every module
a page imports exists, the vendored build is the npm package's file, and live notices,
CSRF tokens and passwords behave."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from shvya_common.contracts.live import MAX_NOTICE_EVENTS
from shvya_common.passwords import check_password, hash_password
from shvya_ingest.auth import Principal, csrf_token
from shvya_ingest.console import STATIC
from shvya_scheduler.feed import FeedEvent, notices_of

# Namespace URIs name a vocabulary; a browser never fetches them.
NAMESPACES = {"http://www.w3.org/2000/svg"}


def test_every_asset_is_local_and_every_import_resolves():
    """No page or module loads anything from another origin, and every relative import and
    link of index.html and the modules names a file that exists."""
    files = [p for p in STATIC.rglob("*") if p.suffix in (".html", ".js", ".css", ".svg")]
    assert len(files) >= 12
    for path in files:
        text = path.read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - NAMESPACES
        assert not urls, (path, urls)
        targets = re.findall(r"""(?:from|import)\s*["'](\.[^"']+)["']""", text)
        if path.suffix == ".html":
            targets += re.findall(r"""(?:src|href)="([^"#:]+)\"""", text)
        for target in targets:
            assert (path.parent / target).resolve().is_file(), (path, target)


def test_the_vendored_build_is_the_npm_packages_file_with_its_licenses():
    """The Preact + htm build matches the checksum recorded from the `htm` package, and the
    licenses of both projects ship beside it."""
    vendor = STATIC / "vendor"
    record = json.loads((vendor / "VENDOR.json").read_text())
    for name, entry in record.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == entry["sha256"]
    assert "Apache" in (vendor / "LICENSE-htm").read_text()
    assert "MIT" in (vendor / "LICENSE-preact").read_text()


def _event(company: uuid.UUID | None, n: int) -> FeedEvent:
    return FeedEvent(uuid.uuid4(), company, None, "lead.created", {"n": n}, datetime.now(UTC))


def test_live_notices_group_by_company_and_stay_small():
    """One notice per company; past MAX_NOTICE_EVENTS events it says `truncated`; events of
    no company (platform-wide) are not sent to anyone."""
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [_event(a, n) for n in range(MAX_NOTICE_EVENTS + 5)] + [_event(b, 0), _event(None, 0)]
    notices = {n.company_id: n for n in notices_of(events)}
    assert set(notices) == {a, b}
    assert len(notices[a].events) == MAX_NOTICE_EVENTS and notices[a].truncated
    assert len(notices[b].events) == 1 and not notices[b].truncated
    assert len(notices[a].model_dump_json()) < 8_000


def test_csrf_tokens_are_per_session_and_passwords_check():
    """A session's CSRF token is stable for it and differs between sessions; a password checks
    against its own hash only, and a malformed hash never matches."""
    assert csrf_token("one") == csrf_token("one") != csrf_token("two")
    stored = hash_password("a long passphrase")
    assert check_password("a long passphrase", stored)
    assert not check_password("a long passphrase!", stored)
    assert not check_password("x", "scrypt$broken")
    assert not check_password("x", None)


def test_a_console_user_is_named_in_the_audit_trail_and_counted_apart():
    """A session's actor is the user's email, and its rate limit is counted per user."""
    user = uuid.uuid4()
    caller = Principal("session", uuid.uuid4(), "agent", user_id=user, email="rep@acme.example")
    assert caller.actor == "user:rep@acme.example"
    assert caller.rate_key == str(user)
    assert caller.allows(["agent"]) and not caller.allows(["admin"])


def test_the_console_page_has_no_inline_script():
    """index.html loads its script as a file, so the strict Content-Security-Policy holds."""
    page = (STATIC / "index.html").read_text()
    assert "<script>" not in page and re.search(r'<script type="module" src="[^"]+">', page)
    assert Path(STATIC / "assets" / "app.js").is_file()
