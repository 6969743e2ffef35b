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
from bot.store import StoreError

log = logging.getLogger(__name__)


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


async def handle_actions(request: web.Request) -> web.Response:
    app = request.app
    body = await request.read()
    try:
        await app[keys.SLACK_VERIFIER].verify(
            body,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            store=app[keys.STORE],
        )
    except RequestRefused as exc:
        log.warning("slack actions: refused from %s: %s", request.remote, exc)
        return web.Response(status=401, text=str(exc))
    except StoreError as exc:
        # Slack shows the clicker an error and the click can be made again: nothing is lost.
        log.error("slack actions: store unavailable, answered 503: %s", exc)
        return web.Response(status=503, text="store unavailable, try again")
    try:
        answer = app[keys.ACTIONS].receive(parse_interaction(body))
    except MalformedInteraction as exc:
        return web.Response(status=400, text=str(exc))
    # An empty 200 closes a submitted modal; an answer keeps it open to show what is wrong.
    return web.json_response(answer) if answer is not None else web.Response()
