"""``python -m bench.reload``: a 1 MB routing file of 5,000 routes, parsed, then reloaded live.

Two measures. Parse and validate: ``bot.config.parse_config`` on the file, in this process, the
best and the median of a few runs. Webhook latency during reloads: a real ``pinwatch serve``
(Slack is ``bench/sink.py``) gets distinct signed ``PIN_RESET_REQUEST`` deliveries at a fixed rate
from an open-loop sender, first with the file left alone, then while the file is rewritten and
reloaded (SIGHUP, then wait until ``/readyz`` names the new version) again and again.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import servers
from bench.load import percentile, webhook_requests
from bench.payloads import (
    CHANNELS,
    META_APP_SECRET,
    META_VERIFY_TOKEN,
    PHONES,
    SLACK_BOT_TOKEN,
    SLACK_SIGNING_SECRET,
    WABA_ID,
    security_bodies,
)
from bot.config import parse_config

ROUTES = 5_000
TEAMS = 200
EVENTS = "[PIN_RESET_REQUEST, PIN_REQUEST_SUCCESS, PIN_CHANGED]"


def routing_file(store: Path, *, ack_timeout: str = "10m") -> str:
    """About 1 MB: 200 teams, 5,000 routes, the first 20 for the numbers the sender uses."""
    teams = "".join(
        f"  team{k:03d}:\n"
        f"    channel: C0BENCH{k % CHANNELS:02d}\n"
        f'    mention: ["S0TEAM{k:03d}", "U0LEAD{k:03d}"]\n'
        f'    responders: ["S0TEAM{k:03d}", "U0LEAD{k:03d}", "U0DEPUTY{k:03d}"]\n'
        f"    ack_timeout: {ack_timeout}\n"
        f'    escalation: {{channel: "#team{k:03d}-leads", mention: ["U0BOSS{k:03d}"]}}\n'
        for k in range(TEAMS)
    )
    routes = []
    for i in range(ROUTES):
        # The sender's numbers first: first match wins, and this bench is about the reload, not
        # about how long routing takes to reach route 5,000.
        if i < CHANNELS:
            team, phone = f"team{i:03d}", PHONES[i]
        else:
            team, phone = f"team{i % TEAMS:03d}", f"+44 20 7{i:03d} {i % 10_000:04d}"
        routes.append(
            f"  - team: {team}\n"
            f'    waba_ids: ["{WABA_ID}", "1022901{i:08d}"]\n'
            f'    phone_numbers: ["{phone}", "+1 (555) 01{i % 100:02d}-{i % 10_000:04d}"]\n'
            f"    events: {EVENTS}\n"
        )
    return (
        "defaults:\n"
        '  channel: "#wa-security"\n'
        "  ack_timeout: 1h\n"
        '  escalation: {channel: "#security-escalations", mention: []}\n'
        "  storm: {threshold: 1000}\n"
        f"teams:\n{teams}"
        f"store:\n  path: {store}\n"
        f"routes:\n{''.join(routes)}"
    )


def write_atomically(path: Path, text: str) -> None:
    """As an editor or a deployment tool does, so pinwatch never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_seconds(text: str, *, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        loaded = parse_config(text, source="bench.yaml")
        times.append(time.perf_counter() - started)
        assert len(loaded.config.routes) == ROUTES
    return times


async def stalls_during(reload: Awaitable[object]) -> float:
    """The longest the event loop went without running a 1 ms ticker while ``reload`` ran."""
    longest, last, done = 0.0, time.perf_counter(), False

    async def tick() -> None:
        nonlocal longest, last
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    await reload
    done = True
    await ticker
    return longest


async def loop_stalls(config: Path, texts: list[str], *, runs: int) -> list[str]:
    """pinwatch's reload_config beside the same parse in a worker thread, in this process."""
    # Imported here: --no-stalls runs the rest against a bot/ from before reload_config was async.
    from bot import keys
    from bot.app import reload_config
    from bot.config import LiveConfig, load_config, read_if_changed
    from bot.metrics import Metrics

    app = web.Application()
    app[keys.CONFIG] = LiveConfig(load_config(config), loaded_at=time.time())
    app[keys.METRICS] = Metrics()
    app[keys.CLOCK] = time.time
    # What `pinwatch serve` does once started: the config in force is not collected again.
    gc.collect()
    gc.freeze()
    results: dict[str, list[float]] = {"worker thread": [], "pinwatch reload_config": []}
    for n in range(runs):
        await asyncio.to_thread(write_atomically, config, texts[n % len(texts)])
        thread = asyncio.to_thread(
            read_if_changed, str(config), digest=app[keys.CONFIG].current.digest
        )
        results["worker thread"].append(await stalls_during(thread))
        results["pinwatch reload_config"].append(await stalls_during(reload_config(app)))
    return [
        f"longest event-loop stall while the file is parsed, {name}: "
        f"median {statistics.median(x) * 1000:.0f} ms, max {max(x) * 1000:.0f} ms of {runs}"
        for name, x in results.items()
    ]


@dataclass(slots=True)
class Sender:
    """Open loop: one task per scheduled send, so a slow answer never delays the next."""

    url: str
    rate: float
    tag: str  # in each requester, so that every delivery is a new event
    latencies: list[float] = field(default_factory=list)  # seconds, of 200 answers
    failures: int = 0
    sent: int = 0

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        while not stop.is_set():
            due = start + self.sent / self.rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(self._send(session, self.sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self.sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    async def _send(self, session: aiohttp.ClientSession, i: int) -> None:
        (request,) = webhook_requests(security_bodies(1, tag=self.tag, start=i))
        started = time.monotonic()
        try:
            async with session.post(
                self.url + request.path, data=request.body, headers=request.headers
            ) as response:
                await response.read()
                if response.status == 200:
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failures += 1
        except (aiohttp.ClientError, TimeoutError):
            self.failures += 1


@asynccontextmanager
async def serve(workdir: Path, config: Path, slack_url: str) -> AsyncIterator[tuple[str, int]]:
    port = servers.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "SLACK_"))} | {
        "PYTHONPATH": str(servers.ROOT),
        "META_APP_SECRET": META_APP_SECRET,
        "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
        "SLACK_API_URL": slack_url,
    }
    argv = [servers.PYTHON, "-m", "bot", "serve", "--config", str(config)]
    with (workdir / "pinwatch.log").open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            "--host",
            servers.HOST,
            "--port",
            str(port),
            cwd=servers.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{servers.HOST}:{port}"
    try:
        async with asyncio.timeout(60):
            while await version(url) is None:
                if process.returncode is not None:
                    raise RuntimeError(f"pinwatch exited {process.returncode}; see {workdir}")
                await asyncio.sleep(0.1)
        yield url, process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def version(url: str) -> str | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(url + "/readyz") as response,
        ):
            if response.status != 200:
                return None
            body = await response.json()
            return str(body["config"]["version"])
    except aiohttp.ClientError:
        return None


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    sent: int
    latencies: list[float]
    failures: int

    def line(self) -> str:
        ms = [x * 1000 for x in self.latencies]
        return (
            f"{self.name}: {self.sent} webhooks in {self.seconds:.1f}s, {self.failures} failed; "
            f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
            f"max {max(ms, default=0):.1f} ms"
        )


async def phase(
    name: str, url: str, rate: float, work: asyncio.Future[None] | asyncio.Task[None]
) -> Phase:
    sender = Sender(url, rate, tag=f"R{name[:3].upper()}")
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    # Long enough that a webhook held up by a reload is measured, not counted as a failure.
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        sending = asyncio.create_task(sender.run(session, stop))
        await work
        seconds = time.monotonic() - started
        stop.set()
        await sending
    return Phase(name, seconds, sender.sent, sender.latencies, sender.failures)


async def reloads(
    url: str, pid: int, config: Path, texts: list[str], *, count: int, gap: float
) -> list[float]:
    """Rewrite the file and SIGHUP, ``count`` times; the seconds until each version was in force.

    After each, ``gap`` seconds of rest: the latency then measures what a reload costs the
    webhooks that arrive during it, not a backlog of reloads that never lets the service catch up.
    """
    took = []
    for n in range(count):
        if n:
            await asyncio.sleep(gap)
        text = texts[n % len(texts)]
        started = time.monotonic()
        await asyncio.to_thread(write_atomically, config, text)
        os.kill(pid, signal.SIGHUP)
        while True:
            if await version(url) == digest_of(text):
                break
            await asyncio.sleep(0.02)
        took.append(time.monotonic() - started)
    return took


async def live(args: argparse.Namespace, workdir: Path) -> list[str]:
    store = workdir / "pinwatch.db"
    texts = [routing_file(store, ack_timeout=t) for t in ("10m", "11m")]
    config = workdir / "config.yaml"
    config.write_text(texts[1])
    async with servers.sink(workdir) as sink, serve(workdir, config, sink.url + "/api/") as pw:
        url, pid = pw
        await phase("warm-up", url, args.rate, asyncio.ensure_future(asyncio.sleep(2)))
        quiet = await phase("no reload", url, args.rate, asyncio.ensure_future(asyncio.sleep(8)))
        took: list[float] = []

        async def reload_all() -> None:
            took.extend(await reloads(url, pid, config, texts, count=args.reloads, gap=args.gap))

        name = f"during {args.reloads} reloads, {args.gap:g}s apart"
        during = await phase(name, url, args.rate, asyncio.create_task(reload_all()))
    return [
        f"webhooks at {args.rate:.0f}/s to pinwatch serve (Slack: bench/sink.py)",
        quiet.line(),
        during.line(),
        f"reload, SIGHUP to the new version in /readyz: median {statistics.median(took):.2f}s, "
        f"max {max(took):.2f}s",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="parse runs (default 5)")
    parser.add_argument("--reloads", type=int, default=10, help="live reloads (default 10)")
    parser.add_argument(
        "--no-stalls", action="store_true", help="skip the thread/process event-loop comparison"
    )
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between reloads")
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pinwatch-bench-reload-") as tmp:
        workdir = Path(tmp)
        text = routing_file(workdir / "pinwatch.db")
        times = parse_seconds(text, runs=args.runs)
        print(
            f"parse_config, {len(text.encode()):,} bytes, {ROUTES:,} routes: "
            f"best {min(times):.3f}s, median {statistics.median(times):.3f}s "
            f"of {args.runs} runs",
            flush=True,
        )
        if not args.no_stalls:
            config = workdir / "stalls.yaml"
            config.write_text(text)
            texts = [routing_file(workdir / "pinwatch.db", ack_timeout=t) for t in ("10m", "11m")]
            for line in asyncio.run(loop_stalls(config, texts, runs=args.runs)):
                print(line, flush=True)
        for line in asyncio.run(live(args, workdir)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
