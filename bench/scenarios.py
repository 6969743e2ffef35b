"""Issue 6's scenarios W1..W6: each reports pinwatch's figure, the baseline's and the ratio."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile, servers
from bench.load import (
    OpenLoopResult,
    Request,
    WrkResult,
    open_loop,
    percentile,
    run_wrk,
    webhook_requests,
)
from bench.payloads import (
    CHANNELS,
    PHONES,
    SLACK_SIGNING_SECRET,
    WABA_ID,
    other_field_bodies,
    requester,
    security_bodies,
    write_lua_table,
)
from bot.events import Alert, SecurityEvent, dedup_order
from bot.render import ACKNOWLEDGE_ACTION
from tests.conftest import block_actions_body, slack_signature
from tests.fake_slack import FakeSlack

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how much: the full run, or --quick."""

    saturation_seconds: float
    saturation_bodies: int
    connections: int
    warmup_seconds: float
    fixed_rate: float
    fixed_seconds: float
    slack_events: int  # W3, at 20/s
    clicks: int  # W4, at 20/s
    memory_deliveries: int  # W5, in two halves
    prefill_alerts: int  # W6
    w6_rounds: int  # W6: empty and full store measured in turn, this many times each

    @classmethod
    def full(cls) -> Plan:
        return cls(
            saturation_seconds=12,
            saturation_bodies=120_000,  # each sent once: 10,000 req/s for the whole 12 s
            connections=64,
            warmup_seconds=2,
            fixed_rate=500,
            fixed_seconds=20,
            slack_events=300,
            clicks=200,
            memory_deliveries=100_000,
            prefill_alerts=1_000_000,
            w6_rounds=3,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            saturation_seconds=3,
            saturation_bodies=12_000,
            connections=64,
            warmup_seconds=1,
            fixed_rate=500,
            fixed_seconds=4,
            slack_events=60,
            clicks=40,
            memory_deliveries=10_000,
            prefill_alerts=50_000,
            w6_rounds=1,
        )


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    measure: str
    pinwatch: float
    baseline: float
    unit: str
    target: str
    met: bool
    baseline_label: str = "bare aiohttp"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.pinwatch / self.baseline if self.baseline else float("inf")


@dataclass
class Context:
    plan: Plan
    workdir: Path
    report: Callable[[Row], None]
    log: Callable[[str], None]
    files: dict[str, Path] = field(default_factory=dict)
    profile: bool = False  # py-spy on pinwatch during each saturation run (bench/profile.py)

    def fresh_dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lua_file(self, name: str, make: Callable[[], list[Any]]) -> Path:
        if name not in self.files:
            started = time.monotonic()
            self.files[name] = write_lua_table(self.workdir / f"{name}.lua", make())
            self.log(f"  wrote {name}.lua in {time.monotonic() - started:.1f}s")
        return self.files[name]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _wrk_note(result: WrkResult) -> str:
    problems = []
    if result.not_ok:
        problems.append(f"{result.not_ok} non-200")
    if result.socket_errors:
        problems.append(f"{result.socket_errors} socket errors")
    return f"{result.responses} requests in {result.elapsed:.1f}s" + (
        f" ({', '.join(problems)})" if problems else ""
    )


def _loop_note(result: OpenLoopResult) -> str:
    extra = []
    if result.not_ok or result.errors:
        extra.append(f"{result.not_ok} non-200, {result.errors} errors")
    if result.max_lag > 0.005:
        extra.append(f"sender lag up to {_ms(result.max_lag):.0f} ms")
    return f"{len(result.due_at)} at {result.achieved_rate:.0f}/s" + (
        f" ({'; '.join(extra)})" if extra else ""
    )


def stored_alerts(store: Path) -> int:
    with sqlite3.connect(store) as db:
        row = db.execute("SELECT count(*) FROM alerts").fetchone()
    return int(row[0])


@asynccontextmanager
async def _profiled(
    ctx: Context, server: servers.Server, recording: Path, seconds: float
) -> AsyncIterator[None]:
    """With --profile, py-spy records the server while the block runs; its top 20 is printed."""
    if not ctx.profile:
        yield
        return
    spy = await profile.record(server.pid, recording, seconds=seconds)
    try:
        yield
    finally:
        await spy.wait()
    ctx.log(f"  profile of {server.name} ({recording}):")
    ctx.log(profile.report(recording))


async def _warm(ctx: Context, url: str) -> None:
    warm = ctx.lua_file("other-fields", lambda: other_field_bodies(20_000))
    await run_wrk(
        url,
        warm,
        duration=ctx.plan.warmup_seconds,
        connections=ctx.plan.connections,
        wrap=True,
        workdir=ctx.workdir,
    )


# --- W1: saturation and fixed rate ----------------------------------------------------------


async def w1(ctx: Context) -> None:
    bodies = ctx.lua_file("w1", lambda: security_bodies(ctx.plan.saturation_bodies, tag="W1S"))
    await _saturation(ctx, "W1", "w1-saturation", bodies, slack_delay=0.0, target=0.5)
    await w1_fixed(ctx)


# A real flood: new events for a handful of WABAs (so a few channels), with Slack ~100 ms away.
STORM_CHANNELS = 3
STORM_SLACK_DELAY = 0.1


async def w1_storm(ctx: Context) -> None:
    plan = ctx.plan
    bodies = ctx.lua_file(
        "w1s",
        lambda: security_bodies(plan.saturation_bodies, tag="W1T", channels=STORM_CHANNELS),
    )
    await _saturation(ctx, "W1s", "w1-storm", bodies, slack_delay=STORM_SLACK_DELAY, target=0.4)


async def _saturation(
    ctx: Context, scenario: str, name: str, bodies: Path, *, slack_delay: float, target: float
) -> None:
    plan = ctx.plan
    workdir = ctx.fresh_dir(name)
    async with (
        servers.sink(workdir, delay=slack_delay) as sink,
        servers.pinwatch(workdir, slack_url=sink.url + "/api/") as pw,
    ):
        await _warm(ctx, pw.url)
        async with _profiled(ctx, pw, workdir / f"{name}.pyspy.txt", plan.saturation_seconds):
            ours = await run_wrk(
                pw.url,
                bodies,
                duration=plan.saturation_seconds,
                connections=plan.connections,
                wrap=False,
                workdir=workdir,
            )
        commit_ms, commits = await servers.intake_commit_ms(pw)
    stored = stored_alerts(workdir / "pinwatch.db")
    async with servers.baseline(workdir) as base:
        await _warm(ctx, base.url)
        theirs = await run_wrk(
            base.url,
            bodies,
            duration=plan.saturation_seconds,
            connections=plan.connections,
            wrap=True,
            workdir=workdir,
        )
    ratio = ours.rate / theirs.rate
    shape = (
        f", {STORM_CHANNELS} channels, Slack {slack_delay * 1000:.0f} ms away"
        if slack_delay
        else ""
    )
    ctx.report(
        Row(
            scenario,
            f"security deliveries, req/s at saturation (-c{plan.connections}{shape})",
            ours.rate,
            theirs.rate,
            "req/s",
            f"ratio ≥ {target}",
            ratio >= target and ours.not_ok == 0,
            note=f"pinwatch {_wrk_note(ours)}, {stored} alerts stored; "
            f"p99 at saturation {ours.p99_ms:.1f} ms vs {theirs.p99_ms:.1f} ms; "
            f"commit waited for, mean {commit_ms:.1f} ms over {commits} deliveries",
        )
    )


async def _fixed_rate_p99(ctx: Context, url: str, tag: str) -> OpenLoopResult:
    plan = ctx.plan
    count = int(plan.fixed_rate * plan.fixed_seconds)
    requests = webhook_requests(security_bodies(count, tag=tag))
    return await open_loop(
        url, requests, rate=plan.fixed_rate, count=count, time_limit=plan.fixed_seconds + 5
    )


@dataclass(frozen=True, slots=True)
class FixedRun:
    sent: OpenLoopResult
    cpu_per_alert: tuple[float, float]  # pinwatch's user and system CPU seconds per delivery
    unposted: int  # alerts not in Slack when the CPU time was read
    commit_ms: float  # the mean wait for the intake's commit (pinwatch_intake_commit_seconds)


async def _pinwatch_fixed_rate(
    ctx: Context, workdir: Path, *, store: Path | None, tag: str
) -> FixedRun:
    """W1's fixed rate into pinwatch; `tag` makes the bodies new to a store used before."""
    async with (
        servers.sink(workdir) as sink,
        servers.pinwatch(workdir, slack_url=sink.url + "/api/", store=store) as pw,
    ):
        await _warm(ctx, pw.url)
        recording = workdir / f"{workdir.name}-fixed.pyspy.txt"
        cpu = pw.cpu_seconds()
        async with _profiled(ctx, pw, recording, ctx.plan.fixed_seconds):
            sent = await _fixed_rate_p99(ctx, pw.url, tag)
        # The outbox may still be draining: its work is part of what each delivery costs.
        unposted, _ = await _drained(store or workdir / "pinwatch.db", within=60)
        used = [after - before for after, before in zip(pw.cpu_seconds(), cpu, strict=True)]
        commit_ms, _ = await servers.intake_commit_ms(pw)  # the warm-up commits nothing
    user, system = (seconds / max(1, len(sent.due_at)) for seconds in used)
    return FixedRun(sent, (user, system), unposted, commit_ms)


async def w1_fixed(ctx: Context) -> None:
    plan = ctx.plan
    workdir = ctx.fresh_dir("w1-fixed")
    run = await _pinwatch_fixed_rate(ctx, workdir, store=None, tag="W1F")
    ours = run.sent
    async with servers.baseline(workdir) as base:
        await _warm(ctx, base.url)
        theirs = await _fixed_rate_p99(ctx, base.url, "W1B")
    p99 = _ms(percentile(ours.latencies, 99))
    ctx.report(
        Row(
            "W1",
            f"security deliveries at {plan.fixed_rate:.0f}/s, p99 latency",
            p99,
            _ms(percentile(theirs.latencies, 99)),
            "ms",
            "≤ 10 ms",
            p99 <= 10 and ours.not_ok == 0 and ours.errors == 0,
            note=f"pinwatch {_loop_note(ours)}, p50 {_ms(percentile(ours.latencies, 50)):.1f} ms,"
            f" CPU {_ms(run.cpu_per_alert[0]):.2f} ms user + {_ms(run.cpu_per_alert[1]):.2f} ms"
            " system per delivery (webhook to Slack,"
            f" {run.unposted} unposted when read), commit waited for, mean {run.commit_ms:.1f} ms;"
            f" baseline {_loop_note(theirs)}",
        )
    )


# --- W2: other fields -------------------------------------------------------------------------


def _cpu_us_per_request(
    server: servers.Server, before: tuple[float, float], requests: int
) -> float:
    """The server's user and system CPU since `before`, per request, in µs."""
    used = sum(after - start for after, start in zip(server.cpu_seconds(), before, strict=True))
    return used / max(1, requests) * 1e6


async def w2(ctx: Context) -> None:
    plan = ctx.plan
    bodies = ctx.lua_file("other-fields", lambda: other_field_bodies(20_000))
    workdir = ctx.fresh_dir("w2")
    results: list[WrkResult] = []
    cpu: list[float] = []  # µs per request, pinwatch then the bare server
    async with (
        servers.sink(workdir) as sink,
        servers.pinwatch(workdir, slack_url=sink.url + "/api/") as pw,
    ):
        await _warm(ctx, pw.url)
        async with _profiled(ctx, pw, workdir / "w2.pyspy.txt", plan.saturation_seconds):
            before = pw.cpu_seconds()
            results.append(
                await run_wrk(
                    pw.url,
                    bodies,
                    duration=plan.saturation_seconds,
                    connections=plan.connections,
                    wrap=True,
                    workdir=workdir,
                )
            )
            cpu.append(_cpu_us_per_request(pw, before, results[-1].responses))
    async with servers.baseline(workdir) as base:
        await _warm(ctx, base.url)
        before = base.cpu_seconds()
        results.append(
            await run_wrk(
                base.url,
                bodies,
                duration=plan.saturation_seconds,
                connections=plan.connections,
                wrap=True,
                workdir=workdir,
            )
        )
        cpu.append(_cpu_us_per_request(base, before, results[-1].responses))
    ours, theirs = results
    ctx.report(
        Row(
            "W2",
            "`messages`/`statuses` deliveries (ignored), req/s",
            ours.rate,
            theirs.rate,
            "req/s",
            "ratio ≥ 0.85",
            ours.rate / theirs.rate >= 0.85 and ours.not_ok == 0,
            note=f"pinwatch {_wrk_note(ours)}; CPU per request {cpu[0]:.0f} µs"
            f" (user + system), the bare server's {cpu[1]:.0f} µs",
        )
    )


# --- W3 and W4: to the fake Slack -------------------------------------------------------------

SLACK_RATE = 20.0
_REQUESTER = re.compile(r"W3[ES]\d{8}")


async def _wait_for(check: Callable[[], bool], *, within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _posted(fake: FakeSlack) -> list[tuple[float, dict[str, Any]]]:
    return [(c.at, c.params) for c in fake.calls_to("chat.postMessage") if c.ok]


def _button_alert_id(blocks: Any) -> int | None:
    for block in blocks if isinstance(blocks, list) else []:
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            value = element.get("value")
            if isinstance(value, str) and value.isdigit():
                return int(value)
    return None


def _arrivals(fake: FakeSlack, tokens: dict[str, int]) -> dict[int, float]:
    """When the first Slack message (posted, or an update such as a storm summary) naming each
    event's requester arrived at the fake Slack, by the event's index in ``tokens``."""
    found: dict[int, float] = {}
    for call in fake.calls:
        if call.ok and call.method in ("chat.postMessage", "chat.update"):
            for match in _REQUESTER.findall(json.dumps(call.params)):
                if match in tokens:
                    found.setdefault(tokens[match], call.at)
    return found


async def _one_hop(ctx: Context, count: int) -> OpenLoopResult:
    """The floor of W3 and W4: one loopback request to the bare server at the same rate."""
    workdir = ctx.fresh_dir("w3-baseline")
    async with servers.baseline(workdir) as base:
        requests = webhook_requests(security_bodies(count, tag="W3B"))
        return await open_loop(
            base.url, requests, rate=SLACK_RATE, count=count, time_limit=count / SLACK_RATE + 5
        )


async def w3_w4(ctx: Context, *, w3: bool, w4: bool) -> None:
    plan = ctx.plan
    workdir = ctx.fresh_dir("w3-w4")
    count = plan.slack_events if w3 else max(plan.clicks, CHANNELS)
    tag = "W3E"
    async with servers.fake_slack() as (fake, url), servers.pinwatch(workdir, slack_url=url) as pw:
        sent = await open_loop(
            pw.url,
            webhook_requests(security_bodies(count, tag=tag)),
            rate=SLACK_RATE,
            count=count,
            time_limit=count / SLACK_RATE + 5,
        )
        tokens = {requester(tag, i): i for i in range(count)}
        all_posted = await _wait_for(lambda: len(_arrivals(fake, tokens)) >= count, within=15)
        arrived = _arrivals(fake, tokens)
        delays = [arrived[i] - sent.due_at[i] for i in arrived if i in sent.due_at]
        click_delays, clicked = await _clicks(ctx, fake, pw.url) if w4 else ([], 0)
    floor = await _one_hop(ctx, max(plan.slack_events, plan.clicks))
    hop_p50 = _ms(percentile(floor.latencies, 50))
    hop_p99 = _ms(percentile(floor.latencies, 99))
    hop = "one loopback request to the bare server"
    if w3:
        p50, p99 = _ms(percentile(delays, 50)), _ms(percentile(delays, 99))
        note = (
            f"{len(delays)} of {count} events at {sent.achieved_rate:.0f}/s"
            f" over {CHANNELS} channels"
        )
        if not all_posted:
            note += " (the rest not named in any Slack message within 15 s)"
        complete = len(delays) == count
        ctx.report(
            Row(
                "W3",
                "webhook → Slack message naming the event, p50",
                p50,
                hop_p50,
                "ms",
                "≤ 50 ms",
                complete and p50 <= 50,
                hop,
                note,
            )
        )
        ctx.report(
            Row(
                "W3",
                "webhook → Slack message naming the event, p99",
                p99,
                hop_p99,
                "ms",
                "≤ 250 ms",
                complete and p99 <= 250,
                hop,
                note,
            )
        )
    if w4:
        p99 = _ms(percentile(click_delays, 99))
        note = (
            f"{len(click_delays)} of {clicked} clicks (one per posted message with buttons,"
            f" at most {plan.clicks}) at {SLACK_RATE:.0f}/s,"
            f" p50 {_ms(percentile(click_delays, 50)):.1f} ms"
        )
        complete = 0 < len(click_delays) == clicked
        ctx.report(
            Row(
                "W4",
                "button click → chat.update at fake Slack, p99",
                p99,
                hop_p99,
                "ms",
                "≤ 100 ms",
                complete and p99 <= 100,
                hop,
                note,
            )
        )


# W3s: while a W1s flood fills 3 channels, the first alert of each channel it does not touch.
W3S_WAIT = 60.0  # how long after the flood a probe may still arrive; one that never does counts so


async def w3_storm(ctx: Context) -> None:
    plan = ctx.plan
    workdir = ctx.fresh_dir("w3-storm")
    flood = ctx.lua_file(
        "w1s",
        lambda: security_bodies(plan.saturation_bodies, tag="W1T", channels=STORM_CHANNELS),
    )
    tag = "W3S"
    # Body i goes to routed number i, so these are one new event for each untouched channel.
    probes = security_bodies(CHANNELS, tag=tag, channels=CHANNELS)[STORM_CHANNELS:]
    tokens = {requester(tag, i): n for n, i in enumerate(range(STORM_CHANNELS, CHANNELS))}

    async def far_away(call: object) -> None:
        await asyncio.sleep(STORM_SLACK_DELAY)

    async with servers.fake_slack() as (fake, url), servers.pinwatch(workdir, slack_url=url) as pw:
        fake.before_answering["chat.postMessage"] = far_away
        fake.before_answering["chat.update"] = far_away
        await _warm(ctx, pw.url)
        flooding = asyncio.create_task(
            run_wrk(
                pw.url,
                flood,
                duration=plan.saturation_seconds,
                connections=plan.connections,
                wrap=False,
                workdir=workdir,
            )
        )
        await asyncio.sleep(1.0)  # the flood's backlog is building
        spread = max(1.0, plan.saturation_seconds - 3)
        sent = await open_loop(
            pw.url,
            webhook_requests(probes),
            rate=len(probes) / spread,
            count=len(probes),
            time_limit=spread + 1,
        )
        flooded = await flooding
        await _wait_for(lambda: len(_arrivals(fake, tokens)) >= len(probes), within=W3S_WAIT)
        arrived = _arrivals(fake, tokens)
        ended = time.monotonic()
    delays = [arrived.get(n, ended) - due for n, due in sent.due_at.items()]
    p99 = _ms(percentile(delays, 99))
    missing = len(probes) - len(arrived)
    ctx.report(
        Row(
            "W3s",
            "during a W1s flood, first alert of a channel the flood does not touch → Slack, p99",
            p99,
            _ms(percentile(sent.latencies, 99)),
            "ms",
            "≤ 2,000 ms",
            p99 <= 2000 and missing == 0 and sent.not_ok == 0,
            baseline_label="the same webhooks' own answers, p99",
            note=f"{len(probes)} probes, one per untouched channel, at {sent.achieved_rate:.1f}/s"
            f" into a flood of {_wrk_note(flooded)} ({flooded.rate:,.0f} req/s);"
            f" p50 {_ms(percentile(delays, 50)):.0f} ms, max {_ms(max(delays)):.0f} ms"
            + (f"; {missing} not in Slack {W3S_WAIT:.0f} s after the flood" if missing else ""),
        )
    )


async def _clicks(ctx: Context, fake: FakeSlack, url: str) -> tuple[list[float], int]:
    """Acknowledge posted alerts, signed as Slack signs them; time each click to its chat.update."""
    targets = []
    for message in fake.top_level():
        alert_id = _button_alert_id(message.blocks)
        if alert_id is not None:
            targets.append((alert_id, message.channel, message.ts))
    targets = targets[: ctx.plan.clicks]
    stamp = str(int(time.time()))
    requests = []
    for alert_id, channel, ts in targets:
        alert = Alert(
            id=alert_id,
            event=SecurityEvent(waba_id=WABA_ID, phone_number=PHONES[0], event="", time=None),
            received_at=0.0,
            slack_channel=channel,
            slack_ts=ts,
        )
        body = block_actions_body(
            ACKNOWLEDGE_ACTION, alert_id, user="U0BENCHER", name="bencher", alert=alert
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(SLACK_SIGNING_SECRET, stamp, body),
        }
        requests.append(Request("/slack/actions", body, headers))
    sent = await open_loop(
        url,
        requests,
        rate=SLACK_RATE,
        count=len(requests),
        time_limit=len(requests) / SLACK_RATE + 5,
    )

    def updates() -> dict[str, float]:
        found: dict[str, float] = {}
        for call in fake.calls_to("chat.update"):
            if call.ok:
                found.setdefault(str(call.params.get("ts")), call.at)
        return found

    await _wait_for(lambda: len(updates()) >= len(targets), within=15)
    arrived = updates()
    delays = [
        arrived[ts] - sent.due_at[i]
        for i, (_, _, ts) in enumerate(targets)
        if ts in arrived and i in sent.due_at
    ]
    return delays, len(targets)


# --- W5: memory -------------------------------------------------------------------------------


def unposted_alerts(store: Path) -> int:
    """Alerts the store still holds for Slack (posted alone or as a storm row: slack_ts set)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        row = db.execute("SELECT count(*) FROM alerts WHERE slack_ts IS NULL").fetchone()
    return int(row[0])


async def _drained(store: Path, *, within: float) -> tuple[int, float]:
    """Wait until the store has no unposted alert, or ``within`` seconds; what is left, and
    how long the wait took."""
    started = time.monotonic()
    left = unposted_alerts(store)
    while left and time.monotonic() - started < within:
        await asyncio.sleep(0.25)
        left = unposted_alerts(store)
    return left, time.monotonic() - started


async def w5(ctx: Context) -> None:
    plan = ctx.plan
    half = plan.memory_deliveries // 2
    first = ctx.lua_file("w5a", lambda: security_bodies(half, tag="W5A"))
    second = ctx.lua_file("w5b", lambda: security_bodies(half, tag="W5B"))
    bound = half / 200 + 30  # no run may take longer, even at 200 deliveries/s

    async def load(server: servers.Server, bodies: Path) -> WrkResult:
        return await run_wrk(
            server.url,
            bodies,
            duration=bound,
            connections=plan.connections,
            wrap=False,
            workdir=workdir,
        )

    workdir = ctx.fresh_dir("w5")
    store = workdir / "pinwatch.db"
    async with (
        servers.sink(workdir) as sink,
        servers.pinwatch(workdir, slack_url=sink.url + "/api/") as pw,
    ):
        start_rss = pw.rss()
        a = await load(pw, first)
        left_a, drain_a = await _drained(store, within=300)
        rss_a = pw.rss()
        b = await load(pw, second)
        left_b, drain_b = await _drained(store, within=300)
        rss_b = pw.rss()
        posted = await servers.posted_to_sink(sink)
    stored = stored_alerts(store)
    async with servers.baseline(workdir) as base:
        base_start = base.rss()
        await load(base, first)
        base_a = base.rss()
        await load(base, second)
        base_b = base.rss()
    growth = (rss_b - rss_a) / rss_a * 100
    base_growth = (base_b - base_a) / base_a * 100
    note = (
        f"{a.responses + b.responses} deliveries ({a.rate:.0f} and {b.rate:.0f}/s),"
        f" {stored} stored; unposted when RSS was read: {left_a} after the first half"
        f" (outbox drained in {drain_a:.0f}s), {left_b} at the end ({drain_b:.0f}s);"
        f" {posted} chat.postMessage calls at the sink (storms group alerts into summaries);"
        f" RSS at start {start_rss / MB:.0f} MB, after 50% {rss_a / MB:.0f} MB;"
        f" baseline {base_start / MB:.0f} → {base_a / MB:.0f} → {base_b / MB:.0f} MB"
    )
    ctx.report(
        Row(
            "W5",
            f"resident memory after {2 * half:,} deliveries",
            rss_b / MB,
            base_b / MB,
            "MB",
            "≤ 150 MB",
            rss_b / MB <= 150 and left_a == left_b == 0,
            note=note,
        )
    )
    ctx.report(
        Row(
            "W5",
            f"RSS growth {half:,} → {2 * half:,} deliveries",
            growth,
            base_growth,
            "%",
            "≤ 5 %",
            growth <= 5 and left_a == left_b == 0,
            note="ratio of growths is not meaningful near 0",
        )
    )


# --- W6: a store that already holds a million alerts ------------------------------------------


def prefill(store: Path, count: int) -> None:
    """Bulk-load posted, acknowledged alerts into a store pinwatch has created (not served),
    keyed as pinwatch keys them (events.dedup_order)."""
    value_template = (
        '{{"display_phone_number":"{phone}","event":"PIN_RESET_REQUEST","requester":"P{i:09d}"}}'
    )

    def rows(start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        for i in range(start, stop):
            k = i % CHANNELS
            received = 1_600_000_000.0 + i * 30
            happened = 1_600_000_000 + i * 30
            yield (
                f"{dedup_order(happened)}:{hashlib.sha256(b'prefill %d' % i).hexdigest()}",
                WABA_ID,
                PHONES[k],
                PHONES[k],
                "PIN_RESET_REQUEST",
                happened,
                f"P{i:09d}",
                value_template.format(phone=PHONES[k], i=i),
                received,
                f"team{k:02d}",
                servers.channel_id(k),
                "[]",
                received + 3600,
                servers.channel_id(k),
                f"{int(received)}.{i % 1_000_000:06d}",
                "U0PREFILL",
                "prefill",
                received + 60,
            )

    with sqlite3.connect(store, isolation_level=None) as db:
        db.execute("PRAGMA synchronous=OFF")  # a load before the test, not pinwatch's own writes
        db.execute("BEGIN")
        step = 100_000
        for start in range(0, count, step):
            db.executemany(
                """INSERT INTO alerts (dedup_key, waba_id, phone_number, phone_digits, event,
                       event_time, requester, value, received_at, team, channel, mentions,
                       ack_deadline, slack_channel, slack_ts, acknowledged_by, acknowledged_name,
                       acknowledged_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows(start, min(count, start + step)),
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def w6(ctx: Context) -> None:
    """The full store against fresh empty ones, in alternating rounds of the same run, so
    that both sides see the same machine; the figures are the medians of the rounds."""
    plan = ctx.plan
    workdir = ctx.fresh_dir("w6")
    store = workdir / "full.db"
    async with (
        servers.sink(workdir) as sink,
        servers.pinwatch(workdir, slack_url=sink.url + "/api/", store=store),
    ):
        pass  # creates the schema, then stops
    started = time.monotonic()
    await asyncio.to_thread(prefill, store, plan.prefill_alerts)
    ctx.log(
        f"  prefilled {plan.prefill_alerts:,} alerts in {time.monotonic() - started:.1f}s"
        f" ({store.stat().st_size / MB:.0f} MB)"
    )
    empty: list[OpenLoopResult] = []
    full: list[OpenLoopResult] = []
    for k in range(plan.w6_rounds):
        empty_dir = ctx.fresh_dir(f"w6-empty{k}")
        empty.append((await _pinwatch_fixed_rate(ctx, empty_dir, store=None, tag="W6E")).sent)
        # Each round's own bodies: the full store keeps every round's alerts, and the same
        # bodies again would be duplicates, which cost pinwatch none of a new alert's work.
        full_run = await _pinwatch_fixed_rate(ctx, workdir, store=store, tag=f"W6F{k}")
        full.append(full_run.sent)
        ctx.log(
            f"  round {k + 1}: p99 empty {_ms(percentile(empty[-1].latencies, 99)):.1f} ms,"
            f" full {_ms(percentile(full[-1].latencies, 99)):.1f} ms"
        )
    empty_p99 = [_ms(percentile(r.latencies, 99)) for r in empty]
    full_p99 = [_ms(percentile(r.latencies, 99)) for r in full]
    ratios = [f / e for f, e in zip(full_p99, empty_p99, strict=True)]
    p99, reference = statistics.median(full_p99), statistics.median(empty_p99)
    clean = all(r.not_ok == 0 and r.errors == 0 for r in full)
    ctx.report(
        Row(
            "W6",
            f"W1 at {plan.fixed_rate:.0f}/s with {plan.prefill_alerts:,} alerts stored, p99"
            f" (median of {plan.w6_rounds} rounds)",
            p99,
            reference,
            "ms",
            "ratio ≤ 1.3",
            p99 / reference <= 1.3 and clean,
            baseline_label="pinwatch, empty store, same rounds",
            note=f"p99 per round, full store {_spread(full_p99)} ms, empty store"
            f" {_spread(empty_p99)} ms; ratio per round {_spread(ratios, digits=2)};"
            f" last full round {_loop_note(full[-1])}",
        )
    )


def _spread(values: list[float], *, digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


SCENARIOS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "W1": w1,
    "W1s": w1_storm,
    "W3s": w3_storm,
    "W2": w2,
    "W5": w5,
    "W6": w6,
}
