"""Two `pinwatch serve` replicas on one PostgreSQL database behind a load balancer that
retries: one is SIGKILLed in the middle of a burst, and restarted on its port while the burst
goes on.

The balancer sends each delivery to the replica the seed picks; on a connection error, a reset or
a 5xx it sends the same delivery on to the other, so the dead replica's traffic reaches the live
one while it is down. Meta's redeliveries of bodies already accepted are mixed in. Every delivery
that got a 200 must end up as exactly one Slack message, whichever replica stored it and
whichever posted it: none lost, none twice, whatever the killed replica was posting when it died.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot.dispatcher import LEASE_TTL
from bot.webhook import SIGNATURE_HEADER, sign
from tests.conftest import META_APP_SECRET, SLACK_CHANNELS
from tests.fake_slack import FakeSlack, RecordedCall, start_fake_slack
from tests.test_reliability_crash import (
    BASE_TIME,
    CONCURRENCY,
    TEAMS,
    Server,
    config_text,
    event_body,
    events_in,
    free_port,
    messages_by_event,
    start_server,
    store_rows,
    waba_of,
    wait_until_outbox_empty,
    wait_until_posted,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]

DISTINCT = 2000
REDELIVERIES = 400  # of earlier events, mixed into the burst: 2,400 deliveries
RATE = 150.0  # deliveries a second: Meta spreads a burst over time
META_REDELIVERIES = 50  # bodies already accepted, sent again after the burst
# Slack takes this long to answer a post (the message is in the channel meanwhile), so each
# lane is busy for most of the burst, as with a real Slack.
SLACK_LATENCY = 0.05


@dataclass
class Figures:
    seed: int
    deliveries_in_burst: int
    redeliveries_in_burst: int
    deliveries_sent: int = 0  # every POST /webhook: first tries, balancer retries, Meta's
    balancer_retries: int = 0  # a delivery sent on to the other replica after the first failed
    accepted_by: list[int] = field(default_factory=lambda: [0, 0])  # 200s from A, from B
    no_200_in_burst: int = 0  # both replicas failed it: Meta retries it afterwards
    meta_retries: int = 0  # after the burst: those, and redeliveries of accepted bodies
    accepted: int = 0  # deliveries answered 200, in all
    leases_a_held_at_kill: int = 0
    posts_cut_off: int = 0  # in Slack, but never answered: the replica died waiting
    found_in_slack: int = 0  # posts a live replica found in the channel instead of resending
    lease_handover_seconds: float | None = None  # kill → live replicas hold all of A's leases
    a_down_seconds: float | None = None  # kill → the restarted A's first 200
    seconds_to_drain: float = 0.0  # the last 200 → every event in Slack
    alerts_posted: int = 0  # chat.postMessage messages in Slack
    store_rows: int = 0
    lost: int = 0
    posted_twice: int = 0
    seconds: float = 0.0


@dataclass
class Balancer:
    """A load balancer with retry in front of replicas A and B: a delivery goes to the one it is
    given; a connection error, a reset or a 5xx there sends it on to the other."""

    session: aiohttp.ClientSession
    urls: tuple[str, str]
    figures: Figures
    a_accepted_at: list[float] = field(default_factory=list)

    async def deliver(self, event: int, first: int) -> int | None:
        """The status the delivery ended with; None if neither replica answered."""
        body = event_body(event)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(META_APP_SECRET.encode(), body),
        }
        for target in (first, 1 - first):
            self.figures.deliveries_sent += 1
            try:
                url = self.urls[target] + "/webhook"
                async with self.session.post(url, data=body, headers=headers) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            else:
                if response.status < 500:
                    if response.status == 200:
                        self.figures.accepted_by[target] += 1
                        if target == 0:
                            self.a_accepted_at.append(time.monotonic())
                    return response.status
            if target == first:
                self.figures.balancer_retries += 1
        return None


async def burst(
    balancer: Balancer, schedule: list[int], picks: list[int], on_answer: Callable[[], None]
) -> list[int | None]:
    """Delivery k leaves no earlier than k / RATE, at most CONCURRENCY in flight."""
    limit = asyncio.Semaphore(CONCURRENCY)
    statuses: list[int | None] = [None] * len(schedule)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(index: int, event: int) -> None:
        await asyncio.sleep(max(0.0, start + index / RATE - loop.time()))
        async with limit:
            statuses[index] = await balancer.deliver(event, picks[index])
        on_answer()

    await asyncio.gather(*(one(i, e) for i, e in enumerate(schedule)))
    return statuses


async def lease_handover(
    database_url: str, pid: int, killed: asyncio.Event
) -> tuple[int, float | None]:
    """How many leases the killed replica held, and the seconds until live replicas had taken
    them all (a dead holder's row goes only when another replica takes its lease over)."""
    db = await asyncpg.connect(database_url)
    try:
        await killed.wait()
        at = time.monotonic()
        # The replica names itself host:pid:random in the leases it holds.
        held = "SELECT count(*) FROM leases WHERE split_part(holder, ':', 2) = $1"
        count: int = await db.fetchval(held, str(pid))
        try:
            async with asyncio.timeout(LEASE_TTL * 3):
                while await db.fetchval(held, str(pid)):
                    await asyncio.sleep(0.1)  # bounded polling: leases change silently
        except TimeoutError:
            return count, None
        return count, round(time.monotonic() - at, 1)
    finally:
        await db.close()


@dataclass
class Crash:
    """SIGKILLs replica A once `kill_after` deliveries are answered, at a moment Slack has made
    one of A's posts and holds its answer (the crash window); restarts A on its port once
    `down_for` more deliveries are answered."""

    a: Server
    restart: Callable[[], Server]
    leases: asyncpg.Connection
    kill_after: int
    down_for: int
    answered: int = 0
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    killed_at: float = 0.0
    restart_after: int = 0
    restarted: Server | None = None
    looking: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def on_post(self, call: RecordedCall) -> None:
        """Slack's hook between making a message and answering: each answer takes SLACK_LATENCY."""
        if self.answered >= self.kill_after and not self.killed.is_set():
            async with self.looking:
                # Only a lease's holder posts in its channel: this post is A's if A holds it.
                channel = str(call.params.get("channel"))
                holder = await self.leases.fetchval(
                    "SELECT holder FROM leases WHERE name = $1", channel
                )
                if not self.killed.is_set() and _pid_of(holder) == self.a.proc.pid:
                    self.a.proc.send_signal(signal.SIGKILL)
                    self.killed_at = time.monotonic()
                    self.restart_after = self.answered + self.down_for
                    self.killed.set()
        await asyncio.sleep(SLACK_LATENCY)

    def on_answer(self) -> None:
        self.answered += 1
        if self.killed.is_set() and self.restarted is None and self.answered >= self.restart_after:
            self.restarted = self.restart()


def _pid_of(holder: str | None) -> int | None:
    """A replica names itself host:pid:random in the leases it holds."""
    return int(holder.split(":")[1]) if holder else None


async def crash_one_of_two(
    tmp_path: Path, aiohttp_server: Any, database_url: str, *, seed: int
) -> tuple[Figures, FakeSlack]:
    started = time.monotonic()
    fake, slack_url = await start_fake_slack(aiohttp_server, channels=SLACK_CHANNELS)
    (tmp_path / "config.yaml").write_text(config_text(tmp_path / "unused.db"))
    rng = random.Random(seed)
    schedule = list(range(DISTINCT))
    for _ in range(REDELIVERIES):
        at = rng.randrange(1, len(schedule))
        schedule.insert(at, schedule[rng.randrange(at)])
    picks = [rng.randrange(2) for _ in schedule]
    figures = Figures(
        seed=seed, deliveries_in_burst=len(schedule), redeliveries_in_burst=REDELIVERIES
    )

    port_a = free_port()  # the balancer's address for A, before and after the restart
    a = start_server(tmp_path, slack_url, "replica-a", database_url, port=port_a)
    b = start_server(tmp_path, slack_url, "replica-b", database_url)
    leases = await asyncpg.connect(database_url)
    crash = Crash(
        a=a,
        restart=lambda: start_server(tmp_path, slack_url, "replica-a2", database_url, port=port_a),
        leases=leases,
        kill_after=int(len(schedule) * rng.uniform(0.3, 0.45)),
        down_for=int(len(schedule) * rng.uniform(0.2, 0.3)),
    )
    fake.before_answering["chat.postMessage"] = crash.on_post
    try:
        await a.wait_ready()
        await b.wait_ready()
        handover = asyncio.create_task(lease_handover(database_url, a.proc.pid, crash.killed))
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout
        ) as session:
            balancer = Balancer(session, (a.url, b.url), figures)
            statuses = await burst(balancer, schedule, picks, crash.on_answer)
            assert crash.killed.is_set(), "replica A made no post after the kill point"
            assert crash.restarted is not None, "the burst ended before the restart"
            await crash.restarted.wait_ready()
            assert set(statuses) <= {200, None}, Counter(statuses)
            accepted = {e for e, s in zip(schedule, statuses, strict=True) if s == 200}
            figures.no_200_in_burst = sum(s != 200 for s in statuses)
            figures.accepted = len(schedule) - figures.no_200_in_burst

            # Meta retries what got no 200, and redelivers some of what did.
            missing = sorted({e for e, s in zip(schedule, statuses, strict=True) if s != 200})
            retry = missing + rng.sample(sorted(accepted), META_REDELIVERIES)
            for _attempt in range(5):
                if not retry:
                    break
                results = await asyncio.gather(
                    *(balancer.deliver(e, rng.randrange(2)) for e in retry)
                )
                figures.meta_retries += len(retry)
                figures.accepted += sum(s == 200 for s in results)
                accepted |= {e for e, s in zip(retry, results, strict=True) if s == 200}
                retry = [e for e, s in zip(retry, results, strict=True) if s != 200]
            last_200 = time.monotonic()
            assert not retry, f"{len(retry)} deliveries never got a 200"
            assert accepted == set(range(DISTINCT))
            back = [t for t in balancer.a_accepted_at if t > crash.killed_at]
            figures.a_down_seconds = round(back[0] - crash.killed_at, 1) if back else None

        figures.leases_a_held_at_kill, figures.lease_handover_seconds = await handover
        await wait_until_posted(fake, accepted, timeout=60.0)
        figures.seconds_to_drain = round(time.monotonic() - last_200, 1)
        await wait_until_outbox_empty(tmp_path / "unused.db", database_url, timeout=30.0)
        for server in (b, crash.restarted):
            await server.stop()
            assert server.proc.returncode == 0, server.log.read_text()[-3000:]
            figures.found_in_slack += server.log.read_text().count("was in Slack already")
    finally:
        for each in (a, b, crash.restarted):
            if each is not None:
                await each.stop()
        await leases.close()
    figures.seconds = round(time.monotonic() - started, 1)
    return figures, fake


def count_posts(fake: FakeSlack, figures: Figures) -> None:
    known = set(range(DISTINCT))
    messages = fake.messages()
    for message in messages:
        shown = events_in(message, known)
        assert len(shown) == 1, f"a message shows {len(shown)} events: {message.text}"
        (event,) = shown
        assert waba_of(event % (TEAMS + 1)) in message.text, message.text
    found = messages_by_event(fake, known)
    figures.alerts_posted = len(messages)
    figures.lost = len(known - found.keys())
    figures.posted_twice = sum(len(copies) - 1 for copies in found.values())
    # The test server cancels a handler whose client hung up: a post whose replica died waiting
    # for Slack's answer stays pending, its message made.
    figures.posts_cut_off = sum(c.pending for c in fake.calls_to("chat.postMessage"))


def report(figures: Figures) -> None:
    print(
        f"\nRELIABILITY replicas-crash-seed{figures.seed}-postgres: {json.dumps(figures.__dict__)}"
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_one_of_two_replicas_mid_burst_behind_a_retrying_balancer(
    tmp_path: Path, aiohttp_server: Any, database_url: str | None, seed: int
) -> None:
    assert database_url is not None
    figures, fake = await crash_one_of_two(tmp_path, aiohttp_server, database_url, seed=seed)
    count_posts(fake, figures)
    rows = await store_rows(tmp_path, database_url, "SELECT event_time, slack_ts FROM alerts")
    figures.store_rows = len(rows)
    [(sends,)] = await store_rows(tmp_path, database_url, "SELECT count(*) FROM slack_sends")
    report(figures)

    assert figures.lost == 0, f"{figures.lost} accepted deliveries never became an alert"
    assert figures.posted_twice == 0, f"{figures.posted_twice} alerts posted twice"
    assert figures.alerts_posted == DISTINCT
    assert sorted(t - BASE_TIME for t, _ in rows) == list(range(DISTINCT))
    assert all(ts is not None for _, ts in rows)
    assert sends == 0, "a post is still recorded as under way"
    # The kill fell in a crash window: Slack made a post of A's whose answer A never got.
    assert figures.posts_cut_off >= 1
    assert figures.leases_a_held_at_kill >= 1
    assert figures.lease_handover_seconds is not None
    assert figures.lease_handover_seconds < LEASE_TTL + 5
