"""Plain mailboxes over IMAP (aioimaplib): every company mailbox stored in `email_mailboxes` is
read by a background task of ingest, and its new mail is filed like every other email.

One ingest process reads all mailboxes at a time: it holds a PostgreSQL advisory lock on a
connection of its own, so several replicas (or HTTP workers) never read the same mailbox twice.
Each mailbox gets its own task and connection (implicit TLS on 993, or plain for a server on the
same host). A sweep searches what is new — mail since the mailbox was connected that is not yet
marked filed — fetches each message without setting \\Seen (`BODY.PEEK[]`), files it, then marks
it: a `$ShvyaFiled` keyword where the server keeps keywords (else \\Seen), or a move to the filed
folder (MOVE, else COPY + \\Deleted + EXPUNGE). A mail is marked only after it is committed, so a
crash or a database outage files it on the next sweep (its Message-ID makes that a no-op if it
was already filed). A mail that can never be filed (no sender or content, or bytes that are no
readable message) is marked too, so the next mail is filed after it: a warning is logged, and
`last_error` names it (UID and reason) until later mail is filed. A mail whose filing fails
for another reason that is no outage (a statement PostgreSQL refuses for this mail alone, say)
is retried with the mailbox's backoff; after HOLD_AFTER_FAILURES in a row it is *held*: left
unmarked on the server (so it is filed once the cause is fixed and ingest restarts), skipped by
this reader's later sweeps so the mail after it is filed, logged as `imap_mail_held` and named
in `last_error`. A database outage is never counted against a mail. Between sweeps the task waits
in IDLE (RFC 2177) where the server has it, so new mail is filed within a second or two;
elsewhere it polls every IMAP_POLL_SECONDS. A failure is written to the mailbox's `last_error`
and retried with backoff; the list of mailboxes is re-read every IMAP_REFRESH_SECONDS, so one
added through the admin API starts on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from dataclasses import dataclass, field

import aioimaplib
import asyncpg
import structlog

from shvya_common.bus.ledgers import is_database_outage
from shvya_common.crypto import SecretsError
from shvya_common.secret_rotation import mailbox_password_context
from shvya_ingest.api import Ingest
from shvya_ingest.mail import EmailError, file_email, parse_mime
from shvya_ingest.mail_repository import Mailbox, MailRepository

log = structlog.get_logger(__name__)

FILED_KEYWORD = "$ShvyaFiled"
# An arbitrary constant: the ingest process holding it reads the mailboxes.
_READERS_LOCK = 0x5348_5659_494D
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MAX_BACKOFF_SECONDS = 60.0
# Failures in a row (no outage) after which one mail is held instead of blocking the rest.
HOLD_AFTER_FAILURES = 3


class MailboxError(Exception):
    """The server refused something the reader needs (login, the folder, a command)."""


def password_context(mailbox_id: uuid.UUID) -> str:
    return mailbox_password_context(mailbox_id)  # one definition, shared with rotate-secrets


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise MailboxError(f"{what} failed: {response.result} {detail[:200]}")
    return response


@dataclass
class Sweep:
    filed: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def note(self) -> str:
        """The mail this sweep skipped and why, for the mailbox's `last_error`."""
        return f"skipped {self.skipped} mail that cannot be filed: " + "; ".join(self.reasons)


class MailboxReader:
    """Reads one mailbox until `stop` is set."""

    def __init__(self, ingest: Ingest, mailbox: Mailbox, password: str) -> None:
        self.ingest = ingest
        self.mailbox = mailbox
        self.password = password
        self.settings = ingest.settings
        self.repo = MailRepository(ingest.plat.pool)
        self.keywords = False
        self.filed_total = 0
        # The last skipped mail, kept in `last_error` until later mail is filed or a failure.
        self.skip_note: str | None = None
        # Failures in a row of one mail (by UID), and the mail held after too many.
        self.failures: dict[str, int] = {}
        self.held: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            client: aioimaplib.IMAP4 | None = None
            try:
                client = await self._connect()
                backoff = 1.0
                await self._serve(client, stop)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: record it, back off, reconnect
                reason = f"{type(err).__name__}: {err}"[:500]
                log.warning("imap_mailbox_failed", mailbox_id=str(self.mailbox.id), error=reason)
                self.skip_note = None
                with contextlib.suppress(Exception):
                    await self.repo.mailbox_checked(self.mailbox.id, filed=0, error=reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                if client is not None:
                    await _logout(client)

    async def _connect(self) -> aioimaplib.IMAP4:
        m, timeout = self.mailbox, self.settings.imap_timeout_seconds
        client: aioimaplib.IMAP4
        if m.security == "tls":
            client = aioimaplib.IMAP4_SSL(
                m.host, m.port, timeout=timeout, ssl_context=ssl.create_default_context()
            )
        else:
            client = aioimaplib.IMAP4(m.host, m.port, timeout=timeout)
        await client.wait_hello_from_server()
        _ok(await client.login(m.username, self.password), "LOGIN")
        if m.after_filing == "move" and m.filed_folder:
            await client.create(m.filed_folder)  # "already exists" is fine
        selected = _ok(await client.select(m.folder), f"SELECT {m.folder}")
        self.keywords = any(
            b"PERMANENTFLAGS" in bytes(line) and b"\\*" in bytes(line) for line in selected.lines
        )
        log.info(
            "imap_mailbox_open",
            mailbox_id=str(m.id),
            idle=client.has_capability("IDLE"),
            keywords=self.keywords,
        )
        return client

    async def _serve(self, client: aioimaplib.IMAP4, stop: asyncio.Event) -> None:
        while not stop.is_set():
            done = await self.sweep(client)
            if done.skipped:
                self.skip_note = done.note()
            elif done.filed:
                self.skip_note = None
            await self.repo.mailbox_checked(self.mailbox.id, filed=done.filed, error=self.skip_note)
            if client.has_capability("IDLE"):
                await self._idle(client, stop)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.imap_poll_seconds)

    async def _idle(self, client: aioimaplib.IMAP4, stop: asyncio.Event) -> None:
        """Wait for the server to announce a change, the IDLE renewal time, or `stop`."""
        seconds = min(self.settings.imap_idle_seconds, self.settings.imap_poll_seconds * 10)
        idle = await client.idle_start(timeout=seconds)
        push = asyncio.ensure_future(client.wait_server_push(timeout=seconds + 5))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stopped):
                task.cancel()
            client.idle_done()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(idle, self.settings.imap_timeout_seconds)

    def _criteria(self) -> list[str]:
        since = self.mailbox.since
        day = f"{since.day:02d}-{_MONTHS[since.month - 1]}-{since.year}"
        if self.mailbox.after_filing == "move":
            return ["UNDELETED", "SINCE", day]
        if self.keywords:
            return ["UNKEYWORD", FILED_KEYWORD, "SINCE", day]
        return ["UNSEEN", "SINCE", day]

    async def sweep(self, client: aioimaplib.IMAP4) -> Sweep:
        """File every new message of the folder, then mark it; returns what was done."""
        found = _ok(await client.uid_search(*self._criteria(), charset=None), "UID SEARCH")
        uids = [u.decode() for line in found.lines[:-1] for u in bytes(line).split() if u.isdigit()]
        result = Sweep()
        for uid in uids:
            if uid in self.held:
                result.skipped += 1
                result.reasons.append(f"UID {uid} held: {self.held[uid]}")
                continue
            fetched = _ok(await client.uid("fetch", uid, "(BODY.PEEK[])"), "UID FETCH")
            raw = next((bytes(x) for x in fetched.lines if isinstance(x, bytearray)), None)
            if raw is None:
                continue
            try:
                email = parse_mime(raw, None, None, source="imap")
                outcome = await file_email(self.ingest, email, self.mailbox.company_id)
            except EmailError as err:
                # Never fileable (no sender or content, or no readable message): marked like
                # the rest, so it is not fetched first forever and the next mail is filed.
                log.warning(
                    "imap_mail_skipped", mailbox_id=str(self.mailbox.id), uid=uid, reason=str(err)
                )
                result.skipped += 1
                result.reasons.append(f"UID {uid}: {err}")
            except Exception as err:
                if is_database_outage(err) or not self._hold(uid, err):
                    raise
                result.skipped += 1
                result.reasons.append(f"UID {uid} held: {self.held[uid]}")
                continue  # left unmarked: filed once the cause is fixed
            else:
                self.failures.pop(uid, None)
                result.filed += 1
                log.info("imap_mail_filed", mailbox_id=str(self.mailbox.id), kind=outcome.kind)
            await self._mark(client, uid)
        self.filed_total += result.filed
        return result

    def _hold(self, uid: str, err: Exception) -> bool:
        """Count a failure of this mail; True once it is held (HOLD_AFTER_FAILURES in a row)."""
        self.failures[uid] = self.failures.get(uid, 0) + 1
        if self.failures[uid] < HOLD_AFTER_FAILURES:
            return False
        reason = f"{type(err).__name__}: {err}"[:300]
        self.held[uid] = f"failed {self.failures.pop(uid)} times ({reason})"
        log.error("imap_mail_held", mailbox_id=str(self.mailbox.id), uid=uid, error=reason)
        return True

    async def _mark(self, client: aioimaplib.IMAP4, uid: str) -> None:
        m = self.mailbox
        if m.after_filing == "move" and m.filed_folder:
            if client.has_capability("MOVE"):
                _ok(await client.uid("move", uid, m.filed_folder), "UID MOVE")
                return
            _ok(await client.uid("copy", uid, m.filed_folder), "UID COPY")
            _ok(await client.uid("store", uid, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE")
            if client.has_capability("UIDPLUS"):
                _ok(await client.uid("expunge", uid), "UID EXPUNGE")
            else:
                _ok(await client.expunge(), "EXPUNGE")
            return
        flag = FILED_KEYWORD if self.keywords else "\\Seen"
        _ok(await client.uid("store", uid, "+FLAGS.SILENT", f"({flag})"), "UID STORE")


async def _logout(client: aioimaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.logout(), 5)


class MailboxReaders:
    """The readers of every enabled mailbox, while this process holds the readers' lock."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.repo = MailRepository(ingest.plat.pool)
        self.readers: dict[
            uuid.UUID, tuple[Mailbox, MailboxReader, asyncio.Task[None], asyncio.Event]
        ] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock_conn: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="imap-readers")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        refresh = self.ingest.settings.imap_refresh_seconds
        try:
            while not self._stop.is_set():
                try:
                    wanted = await self.repo.enabled_mailboxes()
                    if wanted and await self._leader():
                        await self._refresh(wanted)
                    else:
                        await self._stop_readers(set(self.readers))
                        if not wanted:  # nothing to read: leave the lock (and its connection)
                            await self._release()
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # an outage: try again at the next refresh
                    log.warning("imap_readers_refresh_failed", error=type(err).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), refresh)
        finally:
            await self._stop_readers(set(self.readers))
            await self._release()

    async def _leader(self) -> bool:
        """Hold (or take) the readers' lock on a connection of our own."""
        if self._lock_conn is not None:
            try:
                await self._lock_conn.fetchval("SELECT 1")
                return True
            except Exception:
                await self._release()
        conn = await self.ingest.plat.pool.acquire(timeout=5)
        try:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _READERS_LOCK):
                self._lock_conn = conn
                return True
        except Exception:
            await self.ingest.plat.pool.release(conn)
            raise
        await self.ingest.plat.pool.release(conn)
        return False

    async def _release(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is None:
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _READERS_LOCK)
        except Exception:
            # The pool does not reset session state on release: a connection that may still
            # hold the lock is closed, never handed back.
            conn.terminate()
        with contextlib.suppress(Exception):
            await self.ingest.plat.pool.release(conn)

    async def _refresh(self, mailboxes: list[Mailbox]) -> None:
        wanted = {m.id: m for m in mailboxes}
        changed = {i for i, (m, *_) in self.readers.items() if wanted.get(i) != m}
        await self._stop_readers((set(self.readers) - set(wanted)) | changed)
        for mailbox_id, mailbox in wanted.items():
            if mailbox_id in self.readers:
                continue
            password = self._password(mailbox)
            if password is None:
                continue
            reader = MailboxReader(self.ingest, mailbox, password)
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop), name=f"imap-{mailbox_id}")
            self.readers[mailbox_id] = (mailbox, reader, task, stop)

    def _password(self, mailbox: Mailbox) -> str | None:
        box = self.ingest.settings.secret_box()
        try:
            if box is None:
                raise SecretsError("SECRETS_KEYS is not set")
            return box.decrypt(mailbox.password, password_context(mailbox.id))
        except SecretsError as err:
            log.warning(
                "imap_mailbox_password_unusable", mailbox_id=str(mailbox.id), error=str(err)
            )
            return None

    async def _stop_readers(self, ids: set[uuid.UUID]) -> None:
        for mailbox_id in ids:
            entry = self.readers.pop(mailbox_id, None)
            if entry is None:
                continue
            _, _, task, stop = entry
            stop.set()
            try:
                await asyncio.wait_for(task, self.ingest.settings.imap_timeout_seconds)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
