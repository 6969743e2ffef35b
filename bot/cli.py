"""pinwatch's command line: serve, check-config, route, send-test."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from bot import logs
from bot.app import build_app
from bot.config import ConfigError, LoadedConfig, load_config
from bot.events import EventType, SecurityEvent
from bot.render import readable_phone
from bot.routing import route
from bot.settings import Settings, SettingsError
from bot.store import StoreError
from bot.webhook import SIGNATURE_HEADER, WHATSAPP_OBJECT, sign

DEFAULT_PORT = 8080
SAMPLE_WABA = "102290129340398"
SAMPLE_PHONE = "15550783881"
SAMPLE_REQUESTER = "61555822107539"


class UsageError(Exception):
    pass


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 0 and 65535")
    return port


def _default_port(environ: dict[str, str] | os._Environ[str]) -> int:
    text = environ.get("PORT")
    if not text:
        return DEFAULT_PORT
    try:
        return _port(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"PORT: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinwatch",
        description="Slack alerts for WhatsApp Business two-step-verification changes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", required=True, type=Path, metavar="PATH")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=_port, help="default: $PORT, else 8080")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")

    check = commands.add_parser("check-config", help="validate a routing file")
    check.add_argument("path", type=Path, metavar="PATH")

    route_cmd = commands.add_parser("route", help="show where an event would go, sending nothing")
    route_cmd.add_argument("--config", required=True, type=Path, metavar="PATH")
    route_cmd.add_argument("--waba", required=True, metavar="ID")
    route_cmd.add_argument("--phone", required=True, metavar="NUMBER")
    route_cmd.add_argument("--event", default=EventType.PIN_RESET_REQUEST.value)

    send = commands.add_parser("send-test", help="send one signed sample webhook to a pinwatch")
    send.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/webhook")
    send.add_argument("--event", default=EventType.PIN_RESET_REQUEST.value)
    send.add_argument("--phone", default=SAMPLE_PHONE, metavar="N")
    send.add_argument("--waba", default=SAMPLE_WABA, metavar="ID")
    return parser


def _load(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None


def check_config(path: Path) -> int:
    print(_load(path).summary())
    return 0


def show_route(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    event = SecurityEvent(
        waba_id=args.waba,
        phone_number=args.phone,
        event=args.event,
        time=None,
    )
    destination = route(event, loaded.config)
    escalation = destination.escalation
    responders = (
        ", ".join(destination.responders) if destination.responders else "anyone in the channel"
    )
    print(f"event:      {event.event} for {readable_phone(args.phone)} (WABA {args.waba})")
    print(f"team:       {destination.team or '(none: defaults)'}")
    print(f"channel:    {destination.channel}")
    print(f"mentions:   {', '.join(destination.mentions) or '(none)'}")
    print(f"responders: {responders}")
    print(f"ack within: {destination.ack_timeout:g}s, then escalate")
    print(
        f"escalation: {escalation.channel} mentioning {', '.join(escalation.mention) or '(none)'}"
    )
    return 0


def sample_delivery(*, event: str, phone: str, waba: str, at: int) -> bytes:
    value: dict[str, str] = {"display_phone_number": phone, "event": event}
    if event == EventType.PIN_RESET_REQUEST:
        value["requester"] = SAMPLE_REQUESTER
    payload = {
        "object": WHATSAPP_OBJECT,
        "entry": [{"id": waba, "time": at, "changes": [{"value": value, "field": "security"}]}],
    }
    return json.dumps(payload).encode()


async def _send_test(args: argparse.Namespace) -> int:
    secret = os.environ.get("META_APP_SECRET")
    if not secret:
        raise UsageError("META_APP_SECRET is not set: send-test signs with the server's secret")
    body = sample_delivery(event=args.event, phone=args.phone, waba=args.waba, at=int(time.time()))
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret.encode(), body)}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(args.url, data=body, headers=headers) as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"send-test: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {args.event} for {readable_phone(args.phone)} (WABA {args.waba}) to {args.url}")
    print(f"server answered {response.status}: {text.strip()[:200]}")
    return 0 if response.status == 200 else 1


def serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ)
        port = args.port if args.port is not None else _default_port(os.environ)
    except SettingsError as exc:
        print(f"pinwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    loaded = _load(args.config)
    logs.configure(json_format=args.log_format == "json", secrets=settings.secret_values())
    log = logging.getLogger("bot")
    log.info("config %s version %s in force", loaded.source, loaded.digest)
    if settings.dry_run:
        log.warning("no SLACK_BOT_TOKEN: dry run, Slack calls are printed instead of sent")
    try:
        web.run_app(build_app(settings, loaded), host=args.host, port=port, print=None)
    except StoreError as exc:
        print(f"pinwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pinwatch: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "check-config":
            return check_config(args.path)
        if args.command == "route":
            return show_route(args)
        return asyncio.run(_send_test(args))
    except UsageError as exc:
        print(f"pinwatch: {exc}", file=sys.stderr)
        return 2
