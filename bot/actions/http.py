"""The two transports Slack's interactions arrive by: POST /slack/actions and Socket Mode."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot import keys
from bot.actions.payloads import MalformedInteraction, parse_interaction, parse_socket_payload
from bot.actions.service import ActionService
from bot.actions.verify import RequestRefused
from bot.request_body import read_body
from bot.store import StoreError

log = logging.getLogger(__name__)

# A block_actions payload carries the message clicked: a full storm summary (45 rows, the most
# pinwatch posts) comes back as 28 KB, 250 KB with every row at Slack's 3,000 characters.
SLACK_MAX_BODY_BYTES = 1024 * 1024


def socket_mode_listener(
    actions: ActionService,
) -> Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]:
    """Socket Mode's transport: the connection is authenticated by the app token, so there is
    no signature to check; everything after that is the same path as POST /slack/actions."""

    async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        if request.type == "slash_commands":
            return  # bot.commands acknowledges those itself: its answer rides on the ack
        answer: dict[str, Any] | None = None
        if request.type == "interactive":
            try:
                # No await before the ack: Slack retries an envelope not acked within 3 seconds.
                answer = actions.receive(parse_socket_payload(request.payload))
            except MalformedInteraction as exc:
                log.warning("socket mode: %s", exc)
        await client.send_socket_mode_response(
            SocketModeResponse(envelope_id=request.envelope_id, payload=answer)
        )

    return listener


async def signed_body(request: web.Request, *, what: str) -> bytes | web.Response:
    """The body of a request Slack signed (and has not sent before), or the answer to give
    instead: 401 for a bad, stale or replayed signature, 503 while the store is down."""
    body = await read_body(request, limit=SLACK_MAX_BODY_BYTES)
    try:
        await request.app[keys.SLACK_VERIFIER].verify(
            body,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            store=request.app[keys.STORE],
        )
    except RequestRefused as exc:
        log.warning("slack %s: refused from %s: %s", what, request.remote, exc)
        return web.Response(status=401, text=str(exc))
    except StoreError as exc:
        # Slack shows the user an error and the click or command can be made again.
        log.error("slack %s: store unavailable, answered 503: %s", what, exc)
        return web.Response(status=503, text="store unavailable, try again")
    return body


async def handle_actions(request: web.Request) -> web.Response:
    body = await signed_body(request, what="actions")
    if isinstance(body, web.Response):
        return body
    try:
        answer = request.app[keys.ACTIONS].receive(parse_interaction(body))
    except MalformedInteraction as exc:
        return web.Response(status=400, text=str(exc))
    # An empty 200 closes a submitted modal; an answer keeps it open to show what is wrong.
    return web.json_response(answer) if answer is not None else web.Response()
