"""Load generators: wrk at saturation, and an open-loop sender at a fixed rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.payloads import Signed
from bot.webhook import SIGNATURE_HEADER

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
RESULT_PREFIX = "BENCH_RESULT "


@dataclass(frozen=True, slots=True)
class WrkResult:
    responses: int
    not_ok: int
    sent: int
    elapsed: float
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.responses / self.elapsed if self.elapsed > 0 else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(
    url: str,
    bodies: Path,
    *,
    duration: float,
    connections: int,
    wrap: bool,
    workdir: Path,
) -> WrkResult:
    """POST /webhook with the bodies of a Lua table file, for at most ``duration`` seconds.

    Without ``wrap`` each body is sent once: the script writes a marker when it has sent the
    last one and this ends wrk at once (wrk would otherwise idle until -d is over).
    """
    marker = workdir / "wrk.done"
    marker.unlink(missing_ok=True)
    env = os.environ | {
        "BENCH_BODIES": str(bodies),
        "BENCH_WRAP": "1" if wrap else "0",
        "BENCH_MARKER": str(marker),
    }
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url + "/webhook",
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = asyncio.create_task(_read_all(process))
    interrupted = False
    # Loading a large table takes wrk a few seconds before the clock starts.
    deadline = time.monotonic() + duration + 60
    while process.returncode is None and time.monotonic() < deadline:
        if not interrupted and marker.exists():
            await asyncio.sleep(0.05)  # let the last responses in
            # wrk prints its summary on SIGINT; it may have ended on its own meanwhile.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            interrupted = True
        try:
            await asyncio.wait_for(asyncio.shield(output), 0.05)
        except TimeoutError:
            continue
    if process.returncode is None:
        process.kill()
    text = await output
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line.removeprefix(RESULT_PREFIX))
            return WrkResult(
                responses=data["responses"],
                not_ok=data["not_ok"],
                sent=data["sent"],
                elapsed=data["elapsed"],
                socket_errors=data["socket_errors"],
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result:\n{text[-3000:]}")


async def _read_all(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    data = await process.stdout.read()
    await process.wait()
    return data.decode(errors="replace")


@dataclass(slots=True)
class OpenLoopResult:
    latencies: list[float] = field(default_factory=list)  # seconds from due time, of 200s
    due_at: dict[int, float] = field(default_factory=dict)  # request index → time.monotonic()
    not_ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    max_lag: float = 0.0  # how far the sender fell behind its schedule

    @property
    def achieved_rate(self) -> float:
        return len(self.due_at) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


def webhook_requests(bodies: Sequence[Signed]) -> list[Request]:
    return [
        Request(
            "/webhook",
            item.body,
            {"Content-Type": "application/json", SIGNATURE_HEADER: item.signature},
        )
        for item in bodies
    ]


async def open_loop(
    url: str,
    requests: Sequence[Request] | Callable[[int], Request],
    *,
    rate: float,
    count: int,
    time_limit: float,
) -> OpenLoopResult:
    """Send ``count`` requests at ``rate``/s on a fixed schedule, whatever the answers do.

    Each send is its own task, so a slow answer never delays the next send; and latency is
    measured from the time the send was due, not from when it started, so the time a send
    waited because the sender itself fell behind (a busy event loop, a busy machine) counts
    too: no coordinated omission either way. Sends stop at ``time_limit`` seconds and answers
    are awaited for at most 10 s more.
    """
    result = OpenLoopResult()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    tasks: list[asyncio.Task[None]] = []

    def request_at(i: int) -> Request:
        return requests(i) if callable(requests) else requests[i % len(requests)]

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int, req: Request, due: float) -> None:
            result.due_at[i] = due
            try:
                async with session.post(url + req.path, data=req.body, headers=req.headers) as r:
                    await r.read()
                    if r.status == 200:
                        result.latencies.append(time.monotonic() - due)
                    else:
                        result.not_ok += 1
            except (aiohttp.ClientError, TimeoutError):
                result.errors += 1

        async def warm() -> None:
            async with session.get(url + "/readyz") as response:
                await response.read()

        # Open a few connections first so the first sends do not pay for the handshake.
        await asyncio.gather(*(warm() for _ in range(8)))
        start = time.monotonic()
        interval = 1.0 / rate
        for i in range(count):
            due = start + i * interval
            now = time.monotonic()
            if now - start > time_limit:
                break
            if due > now:
                await asyncio.sleep(due - now)
            else:
                result.max_lag = max(result.max_lag, now - due)
            tasks.append(asyncio.create_task(send(i, request_at(i), due)))
        result.elapsed = time.monotonic() - start
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the values; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
