"""The scenarios of issue 7, each a function that builds its world, loads it, injects its fault
at a point of progress (never at a fixed time), waits for quiescence and returns a `Row`.

Every load scenario is held only when, besides its own condition, no accepted message was lost
(no reply delivered and none recorded `unknown`), no lead got a reply twice and every offered
message was eventually accepted (a platform that refuses work for good has not survived the
fault either). A reply recorded `unknown` and not delivered is counted in `missing` and in the
unknown column but does not fail a row by itself: a process killed between recording `sending`
and the provider's answer cannot know whether the message left, and the platform's rule is to
record that and never send twice. The commit-delay row, where nothing crashes, allows none.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shvya_common.embedded import EmbeddedNats, NatsCluster
from tests.faults.accounting import (
    Counts,
    Row,
    count,
    dlq_stream_entries,
    quiesce,
)
from tests.faults.harness import PREFIX, SERVICES, Lab, Scenario
from tests.faults.load import LoadGenerator, email_leads, whatsapp_leads
from tests.faults.providers import SmtpSink, graph_deliveries, smtp_server


@dataclass(frozen=True)
class Budget:
    """How long a scenario waits: for quiescence, for a sign of progress, for acceptance."""

    quiesce_deadline: float = 120.0
    stall: float = 20.0
    give_up: float = 60.0
    rate: float = 40.0


Inject = Callable[[Scenario, LoadGenerator, dict[str, Any]], Awaitable[None]]
Criteria = Callable[[Counts, dict[str, Any]], list[str]]


def _always(counts: Counts) -> list[str]:
    failures = []
    if counts.refused:
        failures.append(f"{counts.refused} offered messages never accepted")
    if counts.lost:
        failures.append(
            f"{counts.lost} accepted messages lost: no reply delivered and none recorded unknown"
        )
    if counts.duplicates:
        failures.append(f"{counts.duplicates} leads got more than one reply")
    return failures


def _exactly_once(counts: Counts, seen: dict[str, Any]) -> list[str]:
    # Lost ones are already reported; here nothing crashes, so no send may be unknown either.
    if counts.unknown_missing:
        return [f"{counts.unknown_missing} replies recorded unknown and never delivered"]
    return []


async def run_load(
    lab: Lab,
    fault: str,
    *,
    messages: int,
    budget: Budget,
    inject: Inject | None = None,
    criteria: Criteria | None = None,
    cluster: bool = False,
    nats_url_style: str = "list",
    env: Mapping[str, str] | None = None,
    prepare: Callable[[Scenario], Awaitable[None]] | None = None,
) -> Row:
    """The common shape: start the four services, post `messages` from distinct leads on
    WhatsApp Cloud, run `inject` beside the load, settle, count, judge."""
    started = time.monotonic()
    seen: dict[str, Any] = {"notes": []}
    slug = re.sub(r"[^a-z0-9]+", "-", fault.lower()).strip("-")
    async with lab.scenario(slug, cluster=cluster, env=env, nats_url_style=nats_url_style) as sc:
        if prepare is not None:
            await prepare(sc)
        try:
            await sc.start_services(SERVICES, timeout=45)
        except AssertionError as err:
            note = f"services did not start: {str(err)[-600:]}"
            return Row(fault, False, None, [note], time.monotonic() - started)
        leads = whatsapp_leads(messages, uuid.uuid4().hex[:8])
        load = LoadGenerator(sc.ingest_url, leads, rate=budget.rate, give_up_seconds=budget.give_up)
        seen["load"] = load
        load_task = asyncio.create_task(load.run())
        if inject is not None:
            try:
                await inject(sc, load, seen)
            except Exception as err:  # the fault itself went wrong: say so in the row
                seen["notes"].append(f"injecting the fault failed: {type(err).__name__}: {err}")
                seen["inject_failed"] = True
        await load_task
        settled = await quiesce(
            sc,
            load.accepted,
            lambda: graph_deliveries(sc.graph),
            deadline=budget.quiesce_deadline,
            stall=budget.stall,
        )
        counts = await count(sc, leads, load.accepted, graph_deliveries(sc.graph))
        failures = _always(counts) + (criteria(counts, seen) if criteria else [])
        if counts.unknown_missing:
            seen["notes"].append(
                f"{counts.unknown_missing} replies recorded unknown never reached the provider"
            )
        if counts.delivered_unrecorded:
            seen["notes"].append(
                f"{counts.delivered_unrecorded} replies reached the provider but are recorded"
                " as not sent (dlq, failed, queued, ...)"
            )
        if seen.get("inject_failed"):
            failures.append("the fault could not be injected as planned")
        seen["notes"].append(f"ingest's answers: {load.outcomes()}")
        restarts = dict(sc.supervisor.restarts)
        if restarts:
            seen["notes"].append(f"restarts: {restarts}")
        return Row(
            fault,
            not failures,
            counts,
            failures + seen["notes"],
            time.monotonic() - started,
            settled,
        )


async def _delivered(sc: Scenario, count: int, timeout: float = 120.0) -> None:
    """Until the provider has received `count` replies."""
    deadline = time.monotonic() + timeout
    while sum(graph_deliveries(sc.graph).values()) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} replies delivered after {timeout}s")
        await asyncio.sleep(0.05)


async def kill9(
    lab: Lab,
    *,
    services: tuple[str, ...] = SERVICES,
    messages: int = 200,
    budget: Budget = Budget(),
) -> Row:
    """kill -9 each of `services` in turn, spread over the load: ingest when a share of the
    messages is accepted, the workers when that share of replies is delivered (so they have
    work in hand); the supervisor starts a replacement each time, and the next kill waits for
    it to be ready."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        for i, name in enumerate(services):
            share = messages * (i + 1) // (len(services) + 1)
            if name == "ingest":
                await load.reached(share)
            else:
                await _delivered(sc, share)
            at = len(load.accepted), sum(graph_deliveries(sc.graph).values())
            await sc.supervisor.kill9(name)
            seen["notes"].append(f"kill -9 {name} at {at[0]} accepted, {at[1]} delivered")

    label = "all" if services == SERVICES else ",".join(services)
    return await run_load(lab, f"kill -9 {label}", messages=messages, budget=budget, inject=inject)


async def nats_restart(
    lab: Lab, *, messages: int = 200, budget: Budget = Budget(), hard: bool = False
) -> Row:
    """NATS stopped (SIGTERM, or SIGKILL when `hard`) and started again on the same store at a
    third of the load."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        await load.reached(messages // 3)
        assert isinstance(sc.nats, EmbeddedNats)
        await asyncio.to_thread(sc.nats.restart, hard=hard)
        seen["notes"].append(f"NATS restarted at {len(load.accepted)} accepted")

    name = "NATS restarted (kill -9)" if hard else "NATS restarted"
    return await run_load(lab, name, messages=messages, budget=budget, inject=inject)


async def _stream_backlog(sc: Scenario) -> int:
    async with sc.nats_client() as nc:
        return int((await nc.jetstream().stream_info(sc.jobs_stream)).state.messages)


async def nats_wipe(lab: Lab, *, messages: int = 200, budget: Budget = Budget()) -> Row:
    """NATS stopped, its JetStream store deleted, started empty, mid-load: the jobs it held
    are gone, as after a power loss before fsync. So that there are such jobs, engage and
    dispatch are paused (SIGSTOP) at a quarter of the load until the jobs stream holds a
    tenth of the messages (or 20 s pass), and resumed right after the wipe."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        assert isinstance(sc.nats, EmbeddedNats)
        await load.reached(messages // 4)
        sc.supervisor.pause("engage", "dispatch")
        try:
            deadline = time.monotonic() + 20
            backlog = await _stream_backlog(sc)
            while backlog < messages // 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                backlog = await _stream_backlog(sc)
            at = len(load.accepted)
            await asyncio.to_thread(sc.nats.wipe)
        finally:
            sc.supervisor.resume("engage", "dispatch")
        seen["notes"].append(
            f"NATS store wiped at {at} accepted, with {backlog} jobs in the stream"
        )

    return await run_load(lab, "NATS data wiped", messages=messages, budget=budget, inject=inject)


async def pg_outage(
    lab: Lab, *, seconds: float = 10.0, messages: int = 200, budget: Budget = Budget()
) -> Row:
    """PostgreSQL stopped for `seconds` at a third of the load, then started on the same data.
    Held also needs ingest to answer 503 (and nothing else) while it is down, and no dead
    letters."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        await load.reached(messages // 3)
        await lab.stop_pg()
        seen["down_at"] = time.monotonic()
        seen["notes"].append(f"PostgreSQL stopped at {len(load.accepted)} accepted")
        await asyncio.sleep(seconds)  # the outage's length, not a wait for a state
        seen["up_at"] = time.monotonic()
        await lab.start_pg()

    def criteria(counts: Counts, seen: dict[str, Any]) -> list[str]:
        failures = []
        if counts.dlq:
            failures.append(f"{counts.dlq} dead-lettered")
        if "down_at" in seen:
            # Requests sent once it was down and answered before it came back.
            during = seen["load"].outcomes_between(seen["down_at"] + 0.5, seen["up_at"])
            seen["notes"].append(f"answers while PostgreSQL was down: {during}")
            if not during.get("503"):
                failures.append("ingest gave no 503 while PostgreSQL was down")
            other = {k: v for k, v in during.items() if k != "503"}
            if other:
                failures.append(f"ingest answered other than 503 while down: {other}")
        return failures

    fault = f"PostgreSQL down {seconds:.0f}s"
    budget = Budget(
        quiesce_deadline=budget.quiesce_deadline + seconds,
        stall=budget.stall,
        give_up=max(budget.give_up, seconds + 30),
        rate=budget.rate,
    )
    return await run_load(
        lab, fault, messages=messages, budget=budget, inject=inject, criteria=criteria
    )


async def pg_crash(lab: Lab, *, messages: int = 200, budget: Budget = Budget()) -> Row:
    """PostgreSQL crashes (every process aborted, nothing more written) at a third of the load
    and recovers on the same data. The job bus's bookkeeping commits asynchronously, so the
    crash takes back the last claims and completions: held means that costs reruns only, no
    accepted message lost and no reply sent twice."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        await load.reached(messages // 3)
        await lab.crash_pg()
        seen["notes"].append(f"PostgreSQL crashed at {len(load.accepted)} accepted")

    return await run_load(
        lab, "PostgreSQL crashed (immediate stop)", messages=messages, budget=budget, inject=inject
    )


async def cluster_leader(
    lab: Lab, *, messages: int = 200, budget: Budget = Budget(), nats_url_style: str = "list"
) -> Row:
    """A 3-node cluster with R3 streams (NATS_STREAM_REPLICAS=3); the jobs stream's leader is
    killed (SIGKILL) at a third of the load and stays down. Services get every node in
    NATS_URL, or with `nats_url_style="seed"` only the first (a diagnostic for code whose
    settings take a single URL)."""

    async def inject(sc: Scenario, load: LoadGenerator, seen: dict[str, Any]) -> None:
        await load.reached(messages // 3)
        assert isinstance(sc.nats, NatsCluster)
        async with sc.nats_client() as nc:
            info = await nc.jetstream().stream_info(sc.jobs_stream)
        leader = info.cluster.leader if info.cluster else None
        replicas = info.config.num_replicas
        seen["notes"].append(f"jobs stream: {replicas} replica(s), leader {leader}")
        if leader is None:
            raise RuntimeError("the jobs stream reports no cluster leader")
        await asyncio.to_thread(sc.nats.node(leader).kill)
        seen["notes"].append(f"killed {leader} at {len(load.accepted)} accepted")

    return await run_load(
        lab,
        "cluster: stream leader killed" + (" (seed URL)" if nats_url_style == "seed" else ""),
        messages=messages,
        budget=budget,
        inject=inject,
        cluster=True,
        nats_url_style=nats_url_style,
    )


async def commit_delay(
    lab: Lab, *, delay: float = 2.0, messages: int = 200, budget: Budget = Budget()
) -> Row:
    """Every outbound `messages` insert gets a deferred constraint trigger that sleeps `delay`
    seconds at COMMIT, so the commit lands well after the send request was (or would have
    been) published."""

    async def prepare(sc: Scenario) -> None:
        seconds = float(delay)  # DDL takes no parameters; this is our own number
        async with sc.db() as conn:
            await conn.execute(
                f"""
                CREATE FUNCTION faults_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_sleep({seconds!r}); RETURN NULL; END $$;
                CREATE CONSTRAINT TRIGGER faults_slow_commit AFTER INSERT ON messages
                  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                  WHEN (NEW.direction = 'outbound') EXECUTE FUNCTION faults_slow_commit();
                """
            )

    return await run_load(
        lab,
        f"commit delayed {delay:.0f}s",
        messages=messages,
        budget=budget,
        prepare=prepare,
        # Each reply holds a connection through its slow COMMIT: enough for every job slot.
        env={"DB_POOL_MAX": "20"},
        criteria=_exactly_once,
    )


async def poison(lab: Lab, *, budget: Budget = Budget()) -> Row:
    """A test-only job (test.work) whose worker (tests/workers/crashy.py) kills itself on every
    delivery, under the supervisor: held when it is dead-lettered once, after 6 deliveries."""
    from shvya_common.runtime import platform
    from shvya_common.settings import CommonSettings

    started = time.monotonic()
    fault = "poison job"
    async with lab.scenario("poison", env={"ACK_WAIT_SECONDS": "1"}) as sc:
        await sc.start_services(["scheduler"])
        env = sc.env_for("enqueuer")
        settings = CommonSettings(
            _env_file=None,  # type: ignore[call-arg]
            nats_url=env["NATS_URL"],
            database_url=sc.db_url,
            nats_prefix=PREFIX,
            retry_schedule=env["RETRY_SCHEDULE"],
            ack_wait_seconds=1,
        )
        async with platform(settings, "faults") as plat:
            job = await plat.bus.enqueue_job("test.work", {"url": "https://example.invalid"})
        sc.start("crashy", module="tests.workers.crashy")
        deadline = time.monotonic() + budget.quiesce_deadline
        status = stream = None
        while time.monotonic() < deadline:
            async with sc.db() as conn:
                status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job.id)
            async with sc.nats_client() as nc:
                stream = (await nc.jetstream().stream_info(sc.jobs_stream)).state.messages
            if status == "dlq" and stream == 0:
                break
            await asyncio.sleep(0.2)
        crashes = sc.supervisor.exit_codes("crashy").count(17)
        entries = await dlq_stream_entries(sc)
        async with sc.db() as conn:
            row = await conn.fetchrow(
                "SELECT status, attempts, last_error FROM jobs WHERE id = $1", job.id
            )
            job_rows = await conn.fetchval("SELECT count(*) FROM jobs")
        dead = (entries or Counter())[str(job.id)]
        failures = []
        if row is None or row["status"] != "dlq":
            failures.append(f"job is {row and row['status']}, not dlq")
        if crashes != 6:
            failures.append(f"{crashes} deliveries (worker crashes), expected 6")
        if dead != 1:
            failures.append(f"{dead} DLQ-stream entries for the job, expected 1")
        notes = [
            f"deliveries (crashes): {crashes}; attempts recorded {row and row['attempts']};"
            f" last error {row and (row['last_error'] or '')[:120]!r}; jobs stream {stream}"
        ]
        counts = Counts(
            offered=1,
            accepted=1,
            inbound=0,
            jobs=job_rows,
            phantom_jobs=0,
            outbound=0,
            outbound_by_status={},
            delivered=0,
            missing=0,
            lost=0,
            duplicates=0,
            dlq=dead,
            dlq_stream=None if entries is None else sum(entries.values()),
            unknown_delivered=0,
            unknown_missing=0,
        )
        return Row(fault, not failures, counts, failures + notes, time.monotonic() - started)


async def smtp_drop(lab: Lab, *, emails: int = 5, budget: Budget = Budget()) -> Row:
    """Email replies to an aiosmtpd server that drops each recipient's first connection after
    DATA's content arrived, before its reply: held when every reply is recorded `unknown` and
    no recipient received it more than once."""
    started = time.monotonic()
    fault = "SMTP drop after DATA"
    sink = SmtpSink(drop_first=1)
    with smtp_server(sink) as port:
        smtp = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_SECURITY": "none",
            "SMTP_FROM": "sales@faults.example.com",
            "SMTP_TIMEOUT_SECONDS": "5",
        }
        async with lab.scenario("smtp", env=smtp) as sc:
            await sc.start_services(SERVICES)
            leads = email_leads(emails, uuid.uuid4().hex[:8])
            load = LoadGenerator(
                sc.ingest_url, leads, channel="email", rate=budget.rate, give_up_seconds=30
            )
            await load.run()
            settled = await quiesce(
                sc,
                load.accepted,
                sink.snapshot,
                deadline=budget.quiesce_deadline,
                stall=budget.stall,
            )
            counts = await count(sc, leads, load.accepted, sink.snapshot())
    failures = []
    if counts.refused:
        failures.append(f"{counts.refused} offered messages never accepted")
    if counts.duplicates:
        failures.append(f"{counts.duplicates} recipients got the email more than once")
    not_unknown = {
        k: dict(v["outbound"])
        for k, v in counts.per_lead.items()
        if dict(v["outbound"]) != {"unknown": 1}
    }
    if not_unknown:
        failures.append(f"{len(not_unknown)} replies not recorded 'unknown': {not_unknown}")
    return Row(fault, not failures, counts, failures, time.monotonic() - started, settled)


@dataclass(frozen=True)
class Entry:
    """A scenario in the long form: its function and the arguments it runs with there."""

    run: Callable[..., Awaitable[Row]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    sized: bool = True  # takes `messages`


def long_form(messages: int, pg_seconds: float) -> dict[str, Entry]:
    """Every scenario of `make faults`, by the name `--only` takes."""
    entries = {"kill9-all": Entry(kill9, {"services": SERVICES})}
    entries.update({f"kill9-{s}": Entry(kill9, {"services": (s,)}) for s in SERVICES})
    entries.update(
        {
            "nats-restart": Entry(nats_restart),
            "nats-wipe": Entry(nats_wipe),
            "pg-outage-10s": Entry(pg_outage, {"seconds": 10.0}),
            f"pg-outage-{pg_seconds:.0f}s": Entry(pg_outage, {"seconds": pg_seconds}),
            "pg-crash": Entry(pg_crash),
            "cluster-leader": Entry(cluster_leader),
            "cluster-leader-seed": Entry(cluster_leader, {"nats_url_style": "seed"}),
            "commit-delay": Entry(commit_delay),
            "poison": Entry(poison, sized=False),
            "smtp-drop": Entry(smtp_drop, {"emails": 20}, sized=False),
        }
    )
    return entries
