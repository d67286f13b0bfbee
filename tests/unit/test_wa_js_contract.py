"""The page bridge calls only what the pinned wa-js really exports, and the tests' fake WPP
implements exactly what the bridge calls: so a wa-js upgrade that drops or renames a function
fails here, not on a customer's send."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from shvya_dispatch.channels.wa_bridge import BRIDGE_JS

ROOT = Path(__file__).resolve().parents[2]
LOCK = json.loads((ROOT / "deploy/wa-js/wa-js.lock.json").read_text())
VENDORED = ROOT / ".tools/wa-js"
FAKE = ROOT / "tests/integration/fake_wpp.js"
CALL = re.compile(r"\bWPP\.([a-z]+)\.([A-Za-z]+)\b")
EVENT = re.compile(r"WPP\.on\('([a-z_.]+)'")


def bridge_calls() -> set[tuple[str, str]]:
    return set(CALL.findall(BRIDGE_JS))


def bridge_events() -> set[str]:
    return set(EVENT.findall(BRIDGE_JS))


def exported(area: str, name: str) -> bool:
    """Does wa-js's declaration tree export `name` from `WPP.<area>`?"""
    pattern = re.compile(
        rf"export declare (?:function|let|const|class) {name}\b|export \{{[^}}]*\b{name}\b"
        rf"|export type \{{[^}}]*\b{name}\b|\bas {name}\b"
    )
    folder = VENDORED / "types" / area
    if not folder.is_dir():
        return False
    return any(pattern.search(p.read_text()) for p in folder.rglob("*.d.ts"))


@pytest.fixture(scope="module")
def vendored() -> Path:
    bundle = VENDORED / "wppconnect-wa.js"
    if not bundle.is_file():
        pytest.fail("the pinned wa-js is not installed: run `make install`")
    return bundle


def test_the_vendored_bundle_is_the_pinned_one(vendored: Path) -> None:
    """`make install` put the bundle whose sha256 the lock pins, of the pinned version."""
    assert hashlib.sha256(vendored.read_bytes()).hexdigest() == LOCK["bundle_sha256"]
    stamp = json.loads((VENDORED / "wa-js.installed.json").read_text())
    assert stamp["version"] == LOCK["version"]


def test_every_wpp_function_the_bridge_calls_exists_in_wa_js(vendored: Path) -> None:
    """Each `WPP.<area>.<function>` in the bridge is exported by the pinned wa-js."""
    calls = bridge_calls()
    assert ("chat", "sendTextMessage") in calls and ("contact", "queryWidExists") in calls
    missing = sorted(f"WPP.{a}.{n}" for a, n in calls if not exported(a, n))
    assert missing == []


def test_every_event_the_bridge_listens_to_is_a_wa_js_event(vendored: Path) -> None:
    """Each `WPP.on('<event>')` is one of wa-js's declared event names."""
    declared = "".join(p.read_text() for p in (VENDORED / "types").rglob("eventTypes.d.ts"))
    missing = sorted(e for e in bridge_events() if f"'{e}'" not in declared)
    assert missing == []


def test_the_send_options_the_bridge_passes_are_wa_js_options(vendored: Path) -> None:
    """messageId, waitForAck, delay, markIsRead, detectMentioned, quotedMsg and linkPreview are
    options wa-js's sendTextMessage declares."""
    declared = (VENDORED / "types/chat/types.d.ts").read_text() + (
        VENDORED / "types/chat/functions/prepareLinkPreview.d.ts"
    ).read_text()
    for option in (
        "messageId",
        "waitForAck",
        "delay",
        "markIsRead",
        "detectMentioned",
        "quotedMsg",
        "linkPreview",
    ):
        assert re.search(rf"\b{option}\??:", declared), option


def test_the_fake_implements_every_call_and_event_of_the_bridge() -> None:
    """The tests' fake WPP defines each function the bridge calls and fires each event it
    listens to, so the integration tests run the same calls as the real page."""
    fake = FAKE.read_text()
    for area, name in bridge_calls():
        assert re.search(rf"\b{name}\s*[:(]", fake), f"fake WPP lacks WPP.{area}.{name}"
    silent = {"conn.backend_event"}
    for event in bridge_events() - silent:
        assert f"'{event}'" in fake, f"fake WPP never fires {event}"
