"""Two `pinwatch serve` processes on one PostgreSQL database are one service: any of them may
take any webhook or click, each alert is posted once, and a replica that dies hands its
channels to the other within the lease time."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot import keys
from bot.dispatcher import LEASE_TTL
from bot.events import SecurityEvent
from bot.store import open_store
from bot.webhook import SIGNATURE_HEADER, sign
from tests.conftest import (
    META_APP_SECRET,
    REFERENCE_BODY,
    SLACK_BOT_TOKEN,
    SLACK_CHANNELS,
    SLACK_USERGROUPS,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
)
from tests.fake_slack import FakeSlack, start_fake_slack
from tests.serve import Serve, start_serve

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

PHONES = ["15550783881", "442079460018", "4915123456789"]  # payments, support, defaults


async def replicas(
    tmp_path: Path, aiohttp_server: Any, database_url: str | None, count: int = 2
) -> tuple[FakeSlack, list[Serve]]:
    assert database_url is not None
    fake, url = await start_fake_slack(
        aiohttp_server, channels=SLACK_CHANNELS, usergroups=SLACK_USERGROUPS
    )
    started = []
    for n in range(count):
        folder = tmp_path / f"replica-{n}"
        folder.mkdir()
        started.append(
            start_serve(
                folder,
                DATABASE_URL=database_url,
                SLACK_BOT_TOKEN=SLACK_BOT_TOKEN,
                SLACK_API_URL=url,
            )
        )
    for serve in started:
        await serve.wait_listening()
    return fake, started


async def post(session: aiohttp.ClientSession, serve: Serve, body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(META_APP_SECRET.encode(), raw),
    }
    async with session.post(serve.url + "/webhook", data=raw, headers=headers) as response:
        return response.status


def posted_alert_ids(fake: FakeSlack) -> Counter[int]:
    return Counter(
        int(m.metadata["event_payload"]["alert_id"])
        for m in fake.messages()
        if m.metadata and str(m.metadata["event_payload"]["send"]).startswith("alert:")
    )


async def test_two_replicas_post_every_event_once(
    tmp_path: Path, aiohttp_server: Any, database_url: str | None
) -> None:
    fake, (first, second) = await replicas(tmp_path, aiohttp_server, database_url)
    events = 60
    try:
        async with aiohttp.ClientSession() as session:
            bodies = [
                delivery(security("PIN_CHANGED", phone=PHONES[i % 3]), time=1_748_811_473 + i)
                for i in range(events)
            ]
            # Each event to one replica, its redelivery to the other, at the same time.
            statuses = await asyncio.gather(
                *(post(session, (first, second)[i % 2], b) for i, b in enumerate(bodies)),
                *(post(session, (second, first)[i % 2], b) for i, b in enumerate(bodies)),
            )
        assert set(statuses) == {200}
        await fake.wait_for(lambda f: sum(posted_alert_ids(f).values()) >= events, timeout=30)
        # Nothing to wait on for "no second post": a second would come within the next passes.
        await asyncio.sleep(1.0)
        counts = posted_alert_ids(fake)
        assert len(counts) == events
        assert set(counts.values()) == {1}, {a: n for a, n in counts.items() if n > 1}
    finally:
        for serve in (first, second):
            serve.kill()
    print(f"\nRELIABILITY replicas: {events} events, each sent to both replicas: posted once each")


async def test_a_replica_killed_while_posting_hands_its_channel_over_within_the_lease(
    tmp_path: Path, aiohttp_server: Any, database_url: str | None
) -> None:
    fake, (doomed, survivor) = await replicas(tmp_path, aiohttp_server, database_url)
    try:
        # Slack takes the first post at once but answers late: the replica that sent it holds
        # the channel's lease, waiting, when it dies.
        fake.fail("chat.postMessage", delay=60, accept_first=True)
        async with aiohttp.ClientSession() as session:
            assert await post(session, doomed, delivery(security("PIN_CHANGED"))) == 200
            await fake.wait_for_calls("chat.postMessage", ok_only=False)
            killed = time.monotonic()
            doomed.kill()
            later = delivery(security("PIN_CHANGED"), time=1_748_811_999)
            assert await post(session, survivor, later) == 200
        await fake.wait_for(lambda f: len(posted_alert_ids(f)) == 2, timeout=LEASE_TTL + 15)
        took = time.monotonic() - killed
    finally:
        for serve in (doomed, survivor):
            serve.kill()
    counts = posted_alert_ids(fake)
    # The first post was found in the channel (its answer died with the replica), not resent.
    assert counts == Counter({1: 1, 2: 1})
    print(f"\nRELIABILITY replica failover: the channel moved on after {took:.1f}s")
    assert took < LEASE_TTL + 5


# Two apps in one process on one database: the leases between them, up close.


async def test_a_replica_that_lost_a_lease_race_takes_the_channel_over_once_it_is_free(
    start_pinwatch: StartPinwatch,
) -> None:
    """Two replicas; one holds C0PAYMENTS's lane while its post is slow, the other tries the
    lease meanwhile and is refused. Once the holder has stopped, the other must post there."""
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    first.slack.fail("chat.postMessage", delay=1.0)
    await first.post_webhook(REFERENCE_BODY)
    await first.slack.wait_for_calls("chat.postMessage", ok_only=False)
    [(holder,)] = await first.query("SELECT holder FROM leases WHERE name = 'C0PAYMENTS'")
    await first.wait_posted(1)

    # Both polled every 50 ms during the slow post: the one without the lease was refused it.
    owner, other = (first, second)
    if holder != first.app[keys.DISPATCHER].replica:
        owner, other = second, first
    await owner.stop()  # releases its leases
    await other.post_webhook(delivery(security("PIN_RESET_REQUEST", requester="2")))
    await other.wait_posted(2)


async def test_a_lane_whose_holder_died_passes_on_when_its_lease_expires(
    pinwatch: Pinwatch,
) -> None:
    """A replica killed while it held C0PAYMENTS's lane leaves a lease that runs out in 1 s."""
    await pinwatch.query(
        "INSERT INTO leases (name, holder, expires_at)"
        " VALUES ('C0PAYMENTS', 'killed-replica', clock_timestamp() + interval '1 second')"
        " RETURNING name"
    )
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)


async def test_racing_clicks_on_two_replicas_make_one_transition(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    await first.post_webhook(REFERENCE_BODY)
    await first.wait_posted(1)
    statuses = await asyncio.gather(
        first.click("acknowledge", 1, user="U0ALICE"),
        second.click("acknowledge", 1, user="U0CAROL"),
        first.click("escalate", 1, user="U0DAVE"),
        second.click("escalate", 1, user="U0ALICE"),
    )
    assert list(statuses) == [200, 200, 200, 200]

    async def settled() -> bool:
        alert = await first.alert(1)
        return alert.acknowledged is not None and alert.escalation_ts is not None

    await eventually(settled)
    audit = [e.action for e in await first.store.audit_log(1)]
    assert audit.count("acknowledged") == 1
    assert audit.count("escalated (manual)") == 1
    await first.slack.wait_for_calls("chat.postEphemeral", 2)  # one "already …" per loser
    assert len(first.slack.top_level("C0PAYLEADS")) == 1


async def test_auto_escalation_with_two_replicas_pages_once(start_pinwatch: StartPinwatch) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    await first.post_webhook(REFERENCE_BODY)
    await first.wait_posted(1)
    first.clock.advance(11 * 60)  # one clock for both: payments' ack_timeout is 10m

    async def paged() -> bool:
        return (await second.alert(1)).escalation_ts is not None

    await eventually(paged)
    audit = [e.action for e in await first.store.audit_log(1)]
    assert audit.count("escalated (automatic)") == 1
    assert audit.count("paged") == 1
    assert len(first.slack.top_level("C0PAYLEADS")) == 1


async def test_work_committed_by_one_replica_wakes_the_others(database_url: str | None) -> None:
    """LISTEN/NOTIFY: the dispatcher of every replica wakes at once, not at its next poll."""
    assert database_url is not None
    committing = await open_store(database_url)
    listening = await open_store(database_url)
    woken = asyncio.Event()
    try:
        listening.on_change(woken.set)
        await asyncio.wait_for(woken.wait(), 10)  # it wakes once on (re)connecting
        woken.clear()
        event = SecurityEvent("102290129340398", "15550783881", "PIN_CHANGED", 1_748_811_473)
        assert await committing.add_events([event], received_at=time.time()) == [1]
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await listening.close()
        await committing.close()


LISTENING = "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"pinwatch_outbox\"'"


async def test_the_listener_listens_again_after_its_connection_is_terminated(
    pinwatch: Pinwatch, database_url: str | None
) -> None:
    assert database_url is not None
    admin = await asyncpg.connect(database_url)
    try:

        async def listening() -> set[int]:
            return {row["pid"] for row in await admin.fetch(LISTENING)}

        async def one_listening() -> bool:
            return len(await listening()) == 1

        await eventually(one_listening)
        [first] = await listening()
        await admin.execute("SELECT pg_terminate_backend($1)", first)

        async def listening_anew() -> bool:
            now = await listening()
            return bool(now) and first not in now

        await eventually(listening_anew, timeout=15)  # LISTEN_RETRY is 5 s
    finally:
        await admin.close()


async def test_a_stopped_pinwatch_leaves_no_listening_connection(
    pinwatch: Pinwatch, database_url: str | None
) -> None:
    assert database_url is not None
    admin = await asyncpg.connect(database_url)
    try:

        async def count() -> int:
            return len(await admin.fetch(LISTENING))

        async def some() -> bool:
            return await count() > 0

        async def none() -> bool:
            return await count() == 0

        await eventually(some)
        await pinwatch.stop()
        await eventually(none)
    finally:
        await admin.close()


async def test_slacks_retry_after_holds_the_channel_on_every_replica(
    start_pinwatch: StartPinwatch,
) -> None:
    """Slack's rate limit is the workspace's, not one replica's: while it lasts, the other
    replica must not take the channel over and post into it."""
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    first.slack.fail("chat.postMessage", status=429, retry_after=1, times=3)  # slack_sdk waits
    first.slack.fail("chat.postMessage", status=429, retry_after=4)  # then hands it back
    await second.post_webhook(REFERENCE_BODY)
    await first.slack.wait_for_calls("chat.postMessage", 5, ok_only=False, timeout=20)
    calls = first.slack.calls_to("chat.postMessage")
    limited = [c for c in calls if c.status == 429]
    assert len(limited) == 4
    posted = [c for c in calls if c.ok]
    assert len(posted) == 1
    assert posted[0].at - limited[-1].at >= 4 - 0.3


async def test_a_lane_that_lost_its_lease_while_looking_in_slack_does_not_post(
    pinwatch: Pinwatch,
) -> None:
    """Fencing: a lane checks that its lease is still its own right before chat.postMessage,
    since another replica may have taken the channel during a slow look-up."""
    pinwatch.slack.fail("chat.postMessage", status=503, times=3)  # maybe posted: look first
    pinwatch.slack.fail("conversations.history", delay=1.0)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.slack.wait_for_calls("conversations.history", ok_only=False)
    await pinwatch.query(
        "UPDATE leases SET holder = 'another-replica',"
        " expires_at = clock_timestamp() + interval '1 hour'"
        " WHERE name = 'C0PAYMENTS' RETURNING name"
    )
    await pinwatch.slack.wait_for_calls("conversations.history", ok_only=True)
    await asyncio.sleep(1.0)
    assert not [c for c in pinwatch.slack.calls_to("chat.postMessage") if c.ok]

    await pinwatch.query("DELETE FROM leases WHERE name = 'C0PAYMENTS' RETURNING name")
    await pinwatch.wait_posted(1)
    assert len([c for c in pinwatch.slack.calls_to("chat.postMessage") if c.ok]) == 1
