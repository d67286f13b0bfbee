"""The load: N messages from N distinct leads posted to `POST /inbound-message`, as a provider's
webhooks would arrive.

Messages start at a bounded rate with a bounded number of requests in flight. Each has its own
`provider_message_id`; a 503, a 5xx, a timeout or a refused connection is retried with the same
id after a backoff (0.2 s, doubling to 5 s), and a 429 after its `Retry-After`, until the
message is accepted (a 2xx) or
`give_up_seconds` have passed since its first try, as a provider retries a webhook. Every answer
is recorded with its time, so a scenario can ask what ingest said while a dependency was down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from tests.faults.providers import email_key, phone_key


@dataclass(frozen=True)
class Lead:
    address: str  # what is posted as phone_number (an email address for email)
    key: str  # how the provider counts its deliveries
    provider_message_id: str


def whatsapp_leads(count: int, tag: str) -> list[Lead]:
    """Distinct US numbers (+1 303 555 xxxx, as bench/run.py uses)."""
    if count > 10_000:
        raise ValueError("at most 10,000 distinct leads")
    numbers = [f"+1303555{i:04d}" for i in range(count)]
    return [Lead(n, phone_key(n), f"wamid.faults.{tag}.{i}") for i, n in enumerate(numbers)]


def email_leads(count: int, tag: str) -> list[Lead]:
    addresses = [f"lead{i}@faults.example.org" for i in range(count)]
    return [
        Lead(a, email_key(a), f"<faults.{tag}.{i}@mail.example.org>")
        for i, a in enumerate(addresses)
    ]


def retry_after(response: httpx.Response, default: float) -> float:
    """Seconds a 429 asks the caller to wait (its `Retry-After`), else `default`."""
    try:
        return max(float(response.headers.get("retry-after", "")), 0.0)
    except ValueError:
        return default


@dataclass(frozen=True)
class Answer:
    sent_at: float
    answered_at: float
    outcome: str  # an HTTP status as text, or the exception's type name


@dataclass
class LoadGenerator:
    url: str
    leads: list[Lead]
    channel: str = "whatsapp_cloud"
    rate: float = 40.0
    concurrency: int = 32
    give_up_seconds: float = 60.0
    request_timeout: float = 15.0
    text: str = "Hello! Do you deliver to Berlin, and what does it cost?"
    accepted: dict[str, float] = field(default_factory=dict)  # provider id → when
    rejected: dict[str, str] = field(default_factory=dict)  # a 4xx: provider id → body
    gave_up: set[str] = field(default_factory=set)
    answers: list[Answer] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    _gate: asyncio.Semaphore = field(init=False, repr=False)

    @property
    def accepted_leads(self) -> list[Lead]:
        return [lead for lead in self.leads if lead.provider_message_id in self.accepted]

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=8)
        # Bounds requests in flight, not messages: one waiting out its backoff holds no slot.
        self._gate = asyncio.Semaphore(self.concurrency)
        self.started_at = time.monotonic()
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.request_timeout, limits=limits
        ) as client:
            tasks = []
            for i, lead in enumerate(self.leads):
                delay = self.started_at + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._deliver(client, lead)))
            await asyncio.gather(*tasks)
        self.finished_at = time.monotonic()

    async def _deliver(self, client: httpx.AsyncClient, lead: Lead) -> None:
        body = {
            "phone_number": lead.address,
            "contact_name": "Fault Suite",
            "message_text": self.text,
            "channel": self.channel,
            "provider_message_id": lead.provider_message_id,
        }
        give_up = time.monotonic() + self.give_up_seconds
        backoff = 0.2
        while True:
            async with self._gate:
                sent = time.monotonic()
                try:
                    response = await client.post("/inbound-message", json=body)
                    outcome = str(response.status_code)
                except httpx.HTTPError as err:
                    response = None
                    outcome = type(err).__name__
                self.answers.append(Answer(sent, time.monotonic(), outcome))
            if response is not None and response.is_success:
                self.accepted[lead.provider_message_id] = time.monotonic()
                return
            wait = backoff
            if response is not None and response.status_code == 429:
                wait = retry_after(response, backoff)
            elif response is not None and 400 <= response.status_code < 500:
                self.rejected[lead.provider_message_id] = response.text[:500]
                return
            else:
                backoff = min(backoff * 2, 5.0)
            if time.monotonic() + wait > give_up:
                self.gave_up.add(lead.provider_message_id)
                return
            await asyncio.sleep(wait)

    def outcomes(self) -> dict[str, int]:
        """Every answer ingest gave (or the error instead of one), by outcome."""
        counts: dict[str, int] = {}
        for a in self.answers:
            counts[a.outcome] = counts.get(a.outcome, 0) + 1
        return counts

    async def reached(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` messages are accepted (or every message has an outcome)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            settled = len(self.accepted) + len(self.rejected) + len(self.gave_up)
            if settled >= len(self.leads):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.accepted)} of {count} messages accepted after {timeout}s"
                )
            await asyncio.sleep(0.05)

    def outcomes_between(self, start: float, end: float) -> dict[str, int]:
        """Answers to requests sent at or after `start` and answered by `end`, by outcome."""
        counts: dict[str, int] = {}
        for a in self.answers:
            if a.sent_at >= start and a.answered_at <= end:
                counts[a.outcome] = counts.get(a.outcome, 0) + 1
        return counts
