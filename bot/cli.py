"""pinwatch's command line: serve, check-config, route, send-test."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from bot import logs
from bot.app import build_app
from bot.catalog import (
    ALERTED_FIELDS,
    EVENTS_BY_FIELD,
    FIELD_OF_EVENT,
    SECURITY_FIELD,
    EventType,
)
from bot.config import Config, ConfigError, LoadedConfig, load_config, routing_key_envs
from bot.events import SecurityEvent
from bot.render import readable_phone
from bot.route_report import route_report
from bot.routing import Destination, route, severity_of
from bot.settings import Settings, SettingsError, split_secrets
from bot.store import StoreError, is_database_url, open_store
from bot.store.copy import copy_store
from bot.store.postgres import redacted
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
    check.add_argument("--json", action="store_true", help="print the result as JSON")

    route_cmd = commands.add_parser("route", help="show where an event would go, sending nothing")
    route_cmd.add_argument("--config", required=True, type=Path, metavar="PATH")
    route_cmd.add_argument("--waba", required=True, metavar="ID")
    route_cmd.add_argument(
        "--phone", default="", metavar="NUMBER", help="omitted: an event of the whole account"
    )
    route_cmd.add_argument(
        "--event", help="default PIN_RESET_REQUEST, or the field's only event (see --field)"
    )
    route_cmd.add_argument(
        "--field",
        choices=ALERTED_FIELDS,
        help="the webhook field it comes in; default: the one the event belongs to",
    )
    route_cmd.add_argument("--json", action="store_true", help="print the result as JSON")

    store = commands.add_parser("store", help="work on a whole store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    copy = store_commands.add_parser(
        "copy", help="copy a whole store into a new one (SQLite file or postgresql:// URL)"
    )
    copy.add_argument("source", metavar="SOURCE")
    copy.add_argument("target", metavar="TARGET")

    send = commands.add_parser("send-test", help="send one signed sample webhook to a pinwatch")
    send.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/webhook")
    send.add_argument("--event", default=EventType.PIN_RESET_REQUEST.value)
    send.add_argument("--phone", default=SAMPLE_PHONE, metavar="N")
    send.add_argument("--waba", default=SAMPLE_WABA, metavar="ID")
    send.add_argument(
        "--config", type=Path, metavar="PATH", help="also say which channel it should reach"
    )
    return parser


class ConfigRefused(Exception):
    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def _load(path: Path, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    try:
        return load_config(path, environ=environ)
    except ConfigError as exc:
        raise ConfigRefused(exc) from None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.path)
    except ConfigError as exc:
        if not args.json:
            raise ConfigRefused(exc) from None
        _print_json({"ok": False, "problems": [dataclasses.asdict(p) for p in exc.problems]})
        return 1
    if args.json:
        config = loaded.config
        _print_json(
            {
                "ok": True,
                "source": loaded.source,
                "version": loaded.digest,
                "teams": sorted(config.teams),
                "routes": len(config.routes),
                "default_channel": config.defaults.channel,
            }
        )
    else:
        print(loaded.summary())
    _warn_of_unset_routing_keys(loaded)
    return 0


def _warn_of_unset_routing_keys(loaded: LoadedConfig) -> None:
    """The file is valid wherever it is checked; the keys are only where it is served."""
    try:
        load_config(Path(loaded.source), environ=os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{problem} (here; serve refuses to start where it is not set)", file=sys.stderr)


def destination_of(config: Config, *, waba: str, phone: str, event: str) -> Destination:
    return route(SecurityEvent(waba_id=waba, phone_number=phone, event=event, time=None), config)


def _event_asked(args: argparse.Namespace) -> SecurityEvent:
    """The event `route` is asked about: its field follows from a known event's name, and an
    event follows from a field that has only one."""
    field, event = args.field, args.event
    if event is None:
        events = EVENTS_BY_FIELD[field or SECURITY_FIELD]
        if field in (None, SECURITY_FIELD):
            event = EventType.PIN_RESET_REQUEST.value
        elif len(events) == 1:
            event = events[0]
        else:
            raise UsageError(f"--field {field} needs --event: one of {', '.join(events)}")
    known_field = FIELD_OF_EVENT.get(event)
    if field is not None and known_field is not None and known_field != field:
        raise UsageError(f"--event {event} comes in the {known_field} field, not {field}")
    return SecurityEvent(
        waba_id=args.waba,
        phone_number=args.phone,
        event=event,
        time=None,
        field=field or known_field or SECURITY_FIELD,
    )


def show_route(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    event = _event_asked(args)
    destination = route(event, loaded.config)
    severity = severity_of(event, loaded.config)
    escalation = destination.escalation
    if args.json:
        _print_json(
            {
                "event": event.event,
                "field": event.field,
                "severity": severity.value,
                "waba_id": args.waba,
                "phone_number": readable_phone(args.phone) if args.phone else None,
                "team": destination.team,
                "channel": destination.channel,
                "mentions": list(destination.mentions),
                "responders": list(destination.responders)
                if destination.responders is not None
                else None,
                "ack_timeout_seconds": destination.ack_timeout,
                "escalation": {"channel": escalation.channel, "mention": escalation.mention},
            }
        )
        return 0
    for line in route_report(event, loaded.config):
        print(line)
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


async def _readiness(session: aiohttp.ClientSession, webhook_url: str) -> dict[str, Any] | None:
    """The server's /readyz, to say where the alert should appear; None if it cannot be read."""
    try:
        async with session.get(URL(webhook_url).with_path("/readyz").with_query(None)) as response:
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def _send_test(args: argparse.Namespace) -> int:
    given = os.environ.get("META_APP_SECRET")
    if not given:
        raise UsageError("META_APP_SECRET is not set: send-test signs with the server's secret")
    try:
        secret = split_secrets(given)[0]  # of several, the first signs
    except ValueError as exc:
        raise UsageError(f"META_APP_SECRET {exc}") from None
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url {args.url!r} is not an http(s) URL")
    body = sample_delivery(event=args.event, phone=args.phone, waba=args.waba, at=int(time.time()))
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret.encode(), body)}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(args.url, data=body, headers=headers) as response:
                text = await response.text()
            readiness = await _readiness(session, args.url) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"send-test: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {args.event} for {readable_phone(args.phone)} (WABA {args.waba}) to {args.url}")
    print(f"server answered {response.status}: {text.strip()[:200]}")
    if response.status == 401:
        print(
            "the server's META_APP_SECRET differs: none of its secrets is the one send-test"
            " signed with (the first of META_APP_SECRET here)"
        )
    if response.status != 200:
        return 1
    if args.config is not None:
        destination = destination_of(
            _load(args.config).config, waba=args.waba, phone=args.phone, event=args.event
        )
        team = destination.team or "defaults"
        print(f"the alert should appear in {destination.channel} (team {team})")
    if readiness is not None and readiness.get("dry_run"):
        print("the server is in dry run: it prints the Slack message on its own console")
    elif args.config is None:
        print("see where it goes: pinwatch route --config PATH --waba ID --phone NUMBER")
    return 0


def serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ)
        port = args.port if args.port is not None else _default_port(os.environ)
    except SettingsError as exc:
        print(f"pinwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    # A routing key the file names and the environment lacks would page nobody: refused here.
    loaded = _load(args.config, environ=os.environ)
    routing_keys = [os.environ[name] for name in routing_key_envs(loaded.config)]
    logs.configure(
        json_format=args.log_format == "json", secrets=[*settings.secret_values(), *routing_keys]
    )
    log = logging.getLogger("bot")
    log.info("config %s version %s in force", loaded.source, loaded.digest)
    if settings.dry_run:
        log.warning("no SLACK_BOT_TOKEN: dry run, Slack calls are printed instead of sent")
    try:
        app = build_app(settings, loaded, environ=os.environ)
        # What is alive now lives for the whole run: keep the collector from walking it again
        # and again, which showed as pauses of tens of milliseconds under load.
        gc.collect()
        gc.freeze()
        web.run_app(app, host=args.host, port=port, print=None)
    except StoreError as exc:
        print(f"pinwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pinwatch: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


def store_copy(args: argparse.Namespace) -> int:
    for name, given in (("SOURCE", args.source), ("TARGET", args.target)):
        # Anything that looks like a database URL and is not one (postgresql:/x, mysql://…)
        # would otherwise become a SQLite file named after it, password and all.
        looks_like_url = ":" in given.split("/", 1)[0] or given.lower().startswith("postgres")
        if looks_like_url and not is_database_url(given):
            raise UsageError(f"{name} is neither a SQLite file path nor a postgresql:// URL")
    if not is_database_url(args.source) and not Path(args.source).is_file():
        raise UsageError(f"no SQLite store at {args.source}")
    try:
        copied = asyncio.run(_copy(args.source, args.target))
    except StoreError as exc:
        print(f"pinwatch: store copy: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{count} {table}" for table, count in copied.items())
    print(f"copied {redacted(args.source)} to {redacted(args.target)}: {rows}")
    return 0


async def _copy(source_at: str, target_at: str) -> dict[str, int]:
    source = await open_store(source_at)
    try:
        target = await open_store(target_at)
        try:
            return await copy_store(source, target)
        finally:
            await target.close()
    finally:
        await source.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "check-config":
            return check_config(args)
        if args.command == "route":
            return show_route(args)
        if args.command == "store":
            return store_copy(args)
        return asyncio.run(_send_test(args))
    except UsageError as exc:
        print(f"pinwatch: {exc}", file=sys.stderr)
        return 2
    except ConfigRefused as exc:
        for problem in exc.error.problems:
            print(problem, file=sys.stderr)
        return 1
