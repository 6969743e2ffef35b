"""A request's body within its route's own limit: Meta's batches, Slack's forms and PagerDuty's
webhooks each have theirs, where aiohttp has one limit for a whole application (a route cutting
it down with request.clone copies the request, on the webhook's hot path)."""

from __future__ import annotations

from aiohttp import web


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole body, or 413 once more than `limit` bytes are declared or sent: a declared
    length is refused before a byte is read, a chunked body as soon as it passes the limit.
    A read past the app's body deadline raises its 408 (bot/app.py)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived, up to n, and b"" at the end of the body.
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)
