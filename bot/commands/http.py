"""The two transports /pinwatch arrives by: POST /slack/commands and Socket Mode."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot import keys
from bot.actions.http import signed_body
from bot.commands.requests import MalformedCommand, parse_slash_form, parse_socket_command
from bot.commands.service import CommandService

log = logging.getLogger(__name__)

SLASH_COMMANDS = "slash_commands"  # Socket Mode's envelope type for them


async def handle_commands(request: web.Request) -> web.Response:
    body = await signed_body(request, what="commands")
    if isinstance(body, web.Response):
        return body
    try:
        command = parse_slash_form(body)
    except MalformedCommand as exc:
        return web.Response(status=400, text=str(exc))
    answer = await request.app[keys.COMMANDS].answer(command)
    return web.json_response(answer) if answer is not None else web.Response()


def socket_mode_commands(
    commands: CommandService,
) -> Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]:
    """Over Socket Mode the answer rides on the envelope's acknowledgement (within Slack's
    3 seconds, like the HTTP answer); the connection is the app token's, so no signature."""

    async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        if request.type != SLASH_COMMANDS:
            return
        try:
            answer = await commands.answer(parse_socket_command(request.payload))
        except MalformedCommand as exc:
            log.warning("socket mode: %s", exc)
            answer = None
        await client.send_socket_mode_response(
            SocketModeResponse(envelope_id=request.envelope_id, payload=answer)
        )

    return listener
