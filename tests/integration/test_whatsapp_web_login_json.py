"""`whatsapp-web login --json` for scripts and the console: one JSON object per line on stdout,
each QR code as it comes (its text and where its PNG is), then the outcome with the exit code;
messages meant for a person go to stderr, so stdout always parses. Run as the operator runs it,
as a process (`python -m shvya_dispatch`, and `shvya whatsapp-web login`, which passes --json
on), against the fake WhatsApp Web."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shvya_common.embedded import free_port
from shvya_dispatch.channels.whatsapp_web import qr_png
from tests.integration.test_whatsapp_web_login import start_linking
from tests.integration.test_whatsapp_web_login_codes import web_command

pytestmark = pytest.mark.integration


async def next_object(stream: asyncio.StreamReader, timeout: float = 60) -> dict[str, Any]:
    """The next line of stdout, which must be one JSON object."""
    line = await asyncio.wait_for(stream.readline(), timeout)
    assert line, "stdout ended"
    value = json.loads(line)
    assert isinstance(value, dict) and "event" in value, value
    return value


async def test_login_json_gives_each_qr_code_then_the_outcome(db_url: str, tmp_path: Path) -> None:
    """Each QR code is a `qr` object with the code's text and its saved PNG, a refreshed code is
    a second one, and once the phone links the account the last object is the `outcome`
    (linked, the number, exit code 0); no QR is drawn on stdout."""
    fake, runner, qr_file, proc = await start_linking(db_url, tmp_path, "scripted", "--json")
    assert proc.stdout is not None
    try:
        first = await next_object(proc.stdout)
        device = fake.device()
        assert first == {
            "event": "qr",
            "account": "scripted",
            "qr_text": device.qr,
            "png_path": str(qr_file.resolve()),
        }
        assert qr_file.read_bytes() == qr_png(device.qr)
        await fake.idle_qr(device)
        second = await next_object(proc.stdout)
        assert second["event"] == "qr" and second["qr_text"] == device.qr != first["qr_text"]
        await fake.link(device)
        outcome = await next_object(proc.stdout)
        assert outcome == {
            "event": "outcome",
            "account": "scripted",
            "status": "linked",
            "exit_code": 0,
            "me": "15550001111@c.us",
        }
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert rest == b""
        assert "is linked as 15550001111@c.us" in err.decode()  # the person's line, on stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()


async def test_shvya_login_json_reports_an_unreachable_whatsapp_web_with_exit_3(
    tmp_path: Path,
) -> None:
    """Through `shvya whatsapp-web login --json`, a WhatsApp Web that refuses the connection
    (and no database) gives only JSON on stdout: the database note, then the outcome
    `unreachable` with exit code 3, which is also the process's exit code."""
    dead = f"postgresql://shvya:x@127.0.0.1:{free_port()}/shvya"
    proc = await web_command(
        "whatsapp-web",
        f"http://127.0.0.1:{free_port()}",
        tmp_path,
        "login",
        "--account",
        "sales",
        "--json",
        "--timeout",
        "30",
        module="shvya_common.cli",
        DATABASE_URL=dead,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 3, err.decode()
    objects = [json.loads(line) for line in out.decode().splitlines()]
    assert [o["event"] for o in objects] == ["database", "outcome"]
    assert objects[0]["available"] is False
    outcome = objects[-1]
    assert (outcome["status"], outcome["exit_code"], outcome["account"]) == (
        "unreachable",
        3,
        "sales",
    )
    assert "could not load WhatsApp Web" in outcome["error"]
