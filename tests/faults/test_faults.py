"""The fault scenarios of issue 7 that fit `make test`'s budget: 150–240 messages each, the
10-second PostgreSQL outage only. `make faults` runs the long form (bench/faults/run.py).

Each test asserts its row's "held when" condition; the row's explanation (counts per outcome,
notes, the last state seen) is the failure message.
"""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.accounting import Row, table
from tests.faults.harness import SERVICES, Lab

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# Small loads, short waits: a scenario that holds settles within seconds of its load.
BUDGET = scenarios.Budget(quiesce_deadline=90.0, stall=20.0, give_up=30.0, rate=40.0)


def held(row: Row) -> None:
    print(row.explain())
    print(table([row], markdown=True))  # shown with -s or -rA, e.g. for docs/reliability.md
    assert row.held, row.explain()


async def test_kill9_of_each_service_in_turn_loses_and_repeats_nothing(lab: Lab) -> None:
    """kill -9 of ingest, engage, dispatch and scheduler, one after another during the load,
    leaves no accepted message unanswered and sends no reply twice."""
    held(await scenarios.kill9(lab, services=SERVICES, messages=240, budget=BUDGET))


async def test_nats_restart_mid_load_loses_nothing(lab: Lab) -> None:
    """NATS stopped and started again on its store mid-load loses no accepted message."""
    held(await scenarios.nats_restart(lab, messages=150, budget=BUDGET))


async def test_nats_store_wiped_mid_load_loses_nothing(lab: Lab) -> None:
    """NATS restarted with its JetStream store deleted mid-load loses no accepted message."""
    held(await scenarios.nats_wipe(lab, messages=150, budget=BUDGET))


async def test_postgres_down_10s_gives_503_and_loses_nothing(lab: Lab) -> None:
    """PostgreSQL down for 10 s: ingest answers 503 meanwhile, and nothing is lost or
    dead-lettered for the outage."""
    held(await scenarios.pg_outage(lab, seconds=10.0, messages=150, budget=BUDGET))


async def test_postgres_crash_mid_load_loses_and_repeats_nothing(lab: Lab) -> None:
    """PostgreSQL crashing mid-load (its processes aborted) and recovering loses no accepted
    message and sends no reply twice, although the bus's bookkeeping commits asynchronously."""
    held(await scenarios.pg_crash(lab, messages=150, budget=BUDGET))


async def test_cluster_stream_leader_killed_loses_nothing(lab: Lab) -> None:
    """On a 3-node cluster with R3 streams, killing the jobs stream's leader mid-load loses no
    accepted message."""
    held(await scenarios.cluster_leader(lab, messages=150, budget=BUDGET))


async def test_commit_delayed_2s_sends_each_reply_once(lab: Lab) -> None:
    """A reply whose transaction commits 2 s after its send was requested goes out exactly
    once."""
    held(await scenarios.commit_delay(lab, delay=2.0, messages=150, budget=BUDGET))


async def test_poison_job_is_dead_lettered_once_after_six_deliveries(lab: Lab) -> None:
    """A job that kills its worker on every delivery ends as exactly one DLQ entry after 6
    deliveries."""
    held(await scenarios.poison(lab, budget=BUDGET))


async def test_smtp_drop_after_data_is_unknown_and_sent_at_most_once(lab: Lab) -> None:
    """An email whose connection drops after DATA's content is recorded unknown and reaches
    the recipient at most once."""
    held(await scenarios.smtp_drop(lab, emails=5, budget=BUDGET))
