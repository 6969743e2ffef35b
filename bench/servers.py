"""The processes a scenario runs against: pinwatch serve, the baseline, the Slack sink."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.payloads import (
    CHANNELS,
    META_APP_SECRET,
    META_VERIFY_TOKEN,
    PHONES,
    SLACK_BOT_TOKEN,
    SLACK_SIGNING_SECRET,
    WABA_ID,
)
from tests.fake_slack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def channel_id(k: int) -> str:
    return f"C0BENCH{k:02d}"


def routing_file(store: Path) -> str:
    """20 teams, one channel each, routed by number; no responders, so anyone may click."""
    teams = "".join(
        f"  team{k:02d}:\n    channel: {channel_id(k)}\n    mention: []\n" for k in range(CHANNELS)
    )
    routes = "".join(
        f'  - team: team{k:02d}\n    waba_ids: ["{WABA_ID}"]\n    phone_numbers: ["{PHONES[k]}"]\n'
        for k in range(CHANNELS)
    )
    return (
        "defaults:\n"
        '  channel: "#wa-security"\n'
        "  ack_timeout: 1h\n"
        '  escalation: {channel: "#security-escalations", mention: []}\n'
        f"teams:\n{teams}"
        f"store:\n  path: {store}\n"
        f"routes:\n{routes}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Server:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU time of the process so far, all its threads, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick


async def intake_commit_ms(server: Server) -> tuple[float, int]:
    """pinwatch's mean pinwatch_intake_commit_seconds so far, in ms, and how many it averages."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(server.url + "/metrics") as response,
    ):
        response.raise_for_status()  # a METRICS_TOKEN in the bench's environment, say
        text = await response.text()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "pinwatch_intake_commit_seconds"
        for sample in family.samples
    }
    count = int(values.get("pinwatch_intake_commit_seconds_count", 0))
    total = values.get("pinwatch_intake_commit_seconds_sum", 0.0)
    return (1000 * total / count if count else 0.0), count


async def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                break
            try:
                async with session.get(server.url + path) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    raise RuntimeError(f"{server.name} did not become ready on {server.url}{path}:\n{tail}")


async def _stop(server: Server) -> None:
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGINT)  # run_app's graceful shutdown, store closed
        try:
            await asyncio.wait_for(server.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            server.process.kill()
            await server.process.wait()


@asynccontextmanager
async def _process(
    name: str, argv: Sequence[str], *, workdir: Path, env: dict[str, str], ready: str
) -> AsyncIterator[Server]:
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            "--port",
            str(port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(name, process, port, log)
    try:
        await _wait_ready(server, ready)
        yield server
    finally:
        await _stop(server)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "SLACK_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@asynccontextmanager
async def pinwatch(
    workdir: Path, *, slack_url: str, store: Path | None = None, database_url: str | None = None
) -> AsyncIterator[Server]:
    """The real ``pinwatch serve``, on a routing file of 20 routed teams, talking to slack_url;
    on PostgreSQL at database_url if given (every such process is a replica of one service)."""
    store = store or workdir / "pinwatch.db"
    config = workdir / "config.yaml"
    config.write_text(routing_file(store))
    env = _base_env() | {
        "META_APP_SECRET": META_APP_SECRET,
        "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
        "SLACK_API_URL": slack_url,
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    argv = [PYTHON, "-m", "bot", "serve", "--config", str(config), "--host", HOST]
    async with _process("pinwatch", argv, workdir=workdir, env=env, ready="/readyz") as server:
        yield server


@asynccontextmanager
async def baseline(workdir: Path) -> AsyncIterator[Server]:
    argv = [PYTHON, "-m", "bench.baseline", "--host", HOST]
    async with _process("baseline", argv, workdir=workdir, env=_base_env(), ready="/readyz") as s:
        yield s


@asynccontextmanager
async def sink(workdir: Path, *, delay: float = 0.0) -> AsyncIterator[Server]:
    argv = [PYTHON, "-m", "bench.sink", "--delay", str(delay)]
    async with _process("sink", argv, workdir=workdir, env=_base_env(), ready="/count") as s:
        yield s


async def posted_to_sink(server: Server) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(server.url + "/count") as response,
    ):
        body = await response.json()
        return int(body["posted"])


@asynccontextmanager
async def fake_slack() -> AsyncIterator[tuple[FakeSlack, str]]:
    """tests/fake_slack.py's FakeSlack, served in this process on loopback."""
    fake = FakeSlack(SLACK_BOT_TOKEN)
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://{HOST}:{port}/api/"
    finally:
        await runner.cleanup()
