"""A request's body within its route's own limits: Meta's batches, Slack's forms and PagerDuty's
webhooks each have their size, where aiohttp has one limit for a whole application (a route
cutting it down with request.clone copies the request, on the webhook's hot path); and every body
has the app's deadline (keys.BODY_TIMEOUT), so that a client stalling mid-body does not hold what
it sent for as long as it likes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bot import keys


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole body, or 413 once more than `limit` bytes are declared or sent: a declared
    length is refused before a byte is read, a chunked body as soon as it passes the limit.
    408 when the body has not all arrived within the app's deadline."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    # A body that came with its headers (most webhooks) needs no timer.
    if request.content.is_eof():
        return await _read(request, limit)
    seconds = request.app[keys.BODY_TIMEOUT]
    timer = asyncio.get_running_loop().call_later(seconds, _expire, request, seconds)
    try:
        return await _read(request, limit)
    finally:
        timer.cancel()


def _expire(request: web.Request, seconds: float) -> None:
    # Only a body still arriving: when the event loop runs late, the rest of a body that came
    # in time may be read in the same pass as this timer, and must not be refused.
    if not request.content.is_eof():
        # Raised by the read waiting, or the next one.
        request.content.set_exception(
            web.HTTPRequestTimeout(text=f"request body not received within {seconds:g}s")
        )


async def _read(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived, up to n, and b"" at the end of the body.
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)
