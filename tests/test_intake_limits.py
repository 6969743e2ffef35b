"""What a request may cost before it is trusted: an unsigned delivery is refused before its body
is read, a body must arrive within a deadline, and the size limits are per route. Measured on a
real `pinwatch serve`: its memory from /proc, its connections from the client's side."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.actions.http import SLACK_MAX_BODY_BYTES
from bot.app import Tuning
from bot.webhook import MAX_BODY_BYTES, SIGNATURE_HEADER, sign
from tests.conftest import META_APP_SECRET, REFERENCE_BODY, Pinwatch, StartPinwatch
from tests.serve import Serve, start_serve

UPLOADS = 20
BODY_TIMEOUT = Tuning().body_timeout
LOOKS_SIGNED = {SIGNATURE_HEADER: "sha256=" + "ab" * 32}
MiB = 1024 * 1024


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    server = start_serve(tmp_path)
    try:
        await server.wait_listening()
        yield server
    finally:
        server.kill()


@dataclass
class Upload:
    """A POST written by hand, so that it can stop halfway as no HTTP library would."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started: float

    @classmethod
    async def start(
        cls,
        port: int,
        headers: dict[str, str],
        *,
        sent: bytes,
        declared: int = 3 * MiB,
        path: str = "/webhook",
    ) -> Upload:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [
            f"POST {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Type: application/json",
            f"Content-Length: {declared}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        started = time.monotonic()
        writer.write(sent)
        with contextlib.suppress(ConnectionError):  # the server may hang up mid-way: it should
            await writer.drain()
        return cls(reader, writer, started)

    async def trickle(self) -> None:
        """A slow loris: one byte every half second, until the server hangs up."""
        with contextlib.suppress(ConnectionError):
            while not self.writer.is_closing():
                self.writer.write(b" ")
                await self.writer.drain()
                await asyncio.sleep(0.5)

    async def outcome(self, timeout: float) -> tuple[int | None, float | None]:
        """The status the server answered (None: none) and when it closed (None: still open)."""
        answer = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    answer += chunk
            closed: float | None = time.monotonic() - self.started
        except TimeoutError:
            closed = None
        except ConnectionError:
            closed = time.monotonic() - self.started
        finally:
            self.writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
        return status, closed


async def stall(
    serve: Serve, headers: dict[str, str], *, sent: bytes, slow: bool, wait: float
) -> tuple[list[int | None], list[float | None], int, int]:
    """UPLOADS uploads at once that stop sending: statuses, close times, RSS before and during."""
    rss_before = serve.rss_kib()
    uploads = await asyncio.gather(
        *(Upload.start(serve.port, headers, sent=sent) for _ in range(UPLOADS))
    )
    trickles = [asyncio.create_task(u.trickle()) for u in uploads] if slow else []
    outcomes_soon = asyncio.gather(*(u.outcome(wait) for u in uploads))
    await asyncio.sleep(0.5)  # let the server take in what it was sent
    rss_during = serve.rss_kib()
    outcomes = await outcomes_soon
    for task in trickles:
        task.cancel()
    statuses = [status for status, _ in outcomes]
    closed = [seconds for _, seconds in outcomes]
    return statuses, closed, rss_before, rss_during


def report(name: str, closed: list[float | None], rss_before: int, rss_during: int) -> None:
    done = [c for c in closed if c is not None]
    print(
        f"\n{name}: {len(done)}/{len(closed)} closed, the last after "
        f"{max(done) if done else float('nan'):.2f}s; VmRSS {rss_before / 1024:.1f} MiB before, "
        f"{rss_during / 1024:.1f} MiB with them open"
    )


@pytest.mark.parametrize("sent", [16, 2 * MiB], ids=["a few bytes", "2 MiB"])
async def test_unsigned_uploads_are_refused_before_their_body_and_closed(
    serve: Serve, sent: int
) -> None:
    statuses, closed, rss_before, rss_during = await stall(
        serve, {}, sent=b"{" * sent, slow=False, wait=5
    )
    report(f"{UPLOADS} unsigned uploads, {sent} bytes sent", closed, rss_before, rss_during)
    assert all(seconds is not None and seconds < 2 for seconds in closed), closed
    if sent < 65536:
        assert statuses == [401] * UPLOADS
    else:  # a client still writing when the server hangs up sees a reset rather than the 401
        assert set(statuses) <= {401, None}
    assert rss_during - rss_before < 8 * 1024, (rss_before, rss_during)


@pytest.mark.parametrize("sent", [16, 2 * MiB], ids=["a few bytes", "2 MiB"])
async def test_slow_signed_looking_uploads_are_cut_off_at_the_deadline(
    serve: Serve, sent: int
) -> None:
    statuses, closed, rss_before, rss_during = await stall(
        serve, LOOKS_SIGNED, sent=b"{" * sent, slow=True, wait=BODY_TIMEOUT + 5
    )
    report(
        f"{UPLOADS} slow signed-looking uploads, {sent} bytes sent", closed, rss_before, rss_during
    )
    print(f"VmRSS {serve.rss_kib() / 1024:.1f} MiB once they are closed")
    assert all(c is not None and BODY_TIMEOUT - 1 < c < BODY_TIMEOUT + 2 for c in closed), closed
    assert statuses == [408] * UPLOADS
    if sent < 65536:
        assert serve.rss_kib() - rss_before < 8 * 1024
    metric = f'pinwatch_webhook_deliveries_total{{result="timed_out"}} {UPLOADS:.1f}'
    assert metric in await metrics_of(serve)


async def test_every_route_that_reads_a_body_cuts_off_a_slow_one_at_the_deadline(
    serve: Serve,
) -> None:
    """Slack's and PagerDuty's routes read their bodies before checking the signature: a
    stalled body is answered 408 there too, not held open."""
    routes = ("/slack/actions", "/slack/commands", "/pagerduty/webhook")
    uploads = await asyncio.gather(
        *(Upload.start(serve.port, {}, sent=b"payload=", declared=1024, path=r) for r in routes)
    )
    trickles = [asyncio.create_task(upload.trickle()) for upload in uploads]
    outcomes = await asyncio.gather(*(u.outcome(BODY_TIMEOUT + 5) for u in uploads))
    for task in trickles:
        task.cancel()
    for route, (status, closed) in zip(routes, outcomes, strict=True):
        assert status == 408, route
        assert closed is not None, route
        assert BODY_TIMEOUT - 1 < closed < BODY_TIMEOUT + 2, (route, closed)


def _send_the_rest_late(port: int, head: bytes, rest: bytes, *, after: float) -> bytes:
    """From a thread, so that it goes on while the server's event loop is held up: a request's
    head and part of its body, the rest `after` seconds later, then the whole answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        time.sleep(after)
        sock.sendall(rest)
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


async def test_a_body_that_came_in_time_is_read_when_the_loop_is_late_for_the_deadline(
    start_pinwatch: StartPinwatch,
) -> None:
    """The rest of the body arrives before the deadline, while the event loop is busy; the loop
    comes back after the deadline, and reads the data and sees the deadline in one pass. The
    delivery is accepted: the deadline is for bodies that have not come."""
    pinwatch = await start_pinwatch(body_timeout=0.5)
    half = len(REFERENCE_BODY) // 2
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(REFERENCE_BODY)}\r\nConnection: close\r\n"
        f"{SIGNATURE_HEADER}: {sign(META_APP_SECRET.encode(), REFERENCE_BODY)}\r\n\r\n"
    ).encode() + REFERENCE_BODY[:half]
    port = pinwatch.client.port
    assert port is not None
    # Busy from 0.2 s to 0.8 s: the rest comes at 0.3 s, the deadline passes at 0.5 s.
    asyncio.get_running_loop().call_later(0.2, time.sleep, 0.6)
    answer = await asyncio.to_thread(
        _send_the_rest_late, port, head, REFERENCE_BODY[half:], after=0.3
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    await pinwatch.wait_posted(1)


async def test_a_declared_length_over_the_limit_is_413_before_reading(serve: Serve) -> None:
    upload = await Upload.start(serve.port, LOOKS_SIGNED, sent=b"{", declared=MAX_BODY_BYTES + 1)
    status, closed = await upload.outcome(timeout=5)
    assert status == 413
    assert closed is not None
    assert closed < 2


async def test_slack_routes_keep_a_smaller_limit(serve: Serve) -> None:
    """Slack's routes refuse a declared length past their limit before reading it, as the
    webhook does past Meta's; the webhook takes a body at its own limit (below)."""
    for route in ("/slack/actions", "/slack/commands"):
        upload = await Upload.start(
            serve.port, {}, sent=b"payload=", declared=SLACK_MAX_BODY_BYTES + 1, path=route
        )
        status, closed = await upload.outcome(timeout=5)
        assert status == 413, route
        assert closed is not None, route
        assert closed < 2, route


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    """A body sent without a Content-Length, in pieces: only what arrives tells its size."""
    for start in range(0, len(body), 256 * 1024):
        yield body[start : start + 256 * 1024]


async def _post_chunked(
    pinwatch: Pinwatch, route: str, body: bytes, headers: dict[str, str]
) -> int:
    async with pinwatch.client.post(route, data=_chunked(body), headers=headers) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        return response.status


async def test_a_chunked_delivery_is_held_to_the_limit_a_declared_one_is(
    pinwatch: Pinwatch,
) -> None:
    """Meta's limit, counted as the body arrives when no length is declared: at the limit the
    delivery is taken, one byte past it refused."""
    for size, expected in ((MAX_BODY_BYTES, 200), (MAX_BODY_BYTES + 1, 413)):
        body = REFERENCE_BODY + b" " * (size - len(REFERENCE_BODY))
        signature = sign(META_APP_SECRET.encode(), body)
        signed = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        assert await _post_chunked(pinwatch, "/webhook", body, signed) == expected, size


async def test_slack_routes_hold_a_chunked_body_to_their_limit(pinwatch: Pinwatch) -> None:
    """Slack's limit, counted as the body arrives: at it the request reaches the signature check
    (unsigned here, so 401), past it it is refused unread."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for route in ("/slack/actions", "/slack/commands"):
        for size, expected in ((SLACK_MAX_BODY_BYTES, 401), (SLACK_MAX_BODY_BYTES + 1, 413)):
            body = b"payload=" + b"x" * (size - len(b"payload="))
            assert await _post_chunked(pinwatch, route, body, form) == expected, (route, size)


async def metrics_of(serve: Serve) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return text
