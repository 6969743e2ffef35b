"""Every AppKey in one place, so that handlers and app.py never import each other."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # the adapters import this module: name their types without importing them
    from bot.actions.service import ActionService
    from bot.actions.verify import SlackRequestVerifier
    from bot.app import SocketModeLink
    from bot.commands.service import CommandService
    from bot.config import LiveConfig
    from bot.dispatcher import Dispatcher
    from bot.events import Clock
    from bot.metrics import Backlog, Metrics
    from bot.pagerduty.client import PagerDutyEvents
    from bot.pagerduty.inbox import PagerDutyInbox
    from bot.settings import Settings
    from bot.slack import SlackGateway
    from bot.store import Store

SECRETS: web.AppKey[Settings] = web.AppKey("secrets")
# META_APP_SECRET's secrets, in order, each an HMAC keyed once rather than per delivery.
META_SECRETS: web.AppKey[tuple[hmac.HMAC, ...]] = web.AppKey("meta_secrets")
CONFIG: web.AppKey[LiveConfig] = web.AppKey("config")
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
# Seconds a request body may take to arrive once its route reads it (bot/request_body.py).
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
BACKLOG: web.AppKey[Backlog] = web.AppKey("backlog")
STORE: web.AppKey[Store] = web.AppKey("store")
SLACK: web.AppKey[SlackGateway] = web.AppKey("slack")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
SLACK_VERIFIER: web.AppKey[SlackRequestVerifier] = web.AppKey("slack_verifier")
ACTIONS: web.AppKey[ActionService] = web.AppKey("actions")
SOCKET_MODE: web.AppKey[SocketModeLink] = web.AppKey("socket_mode")
# The environment serve started with: the PagerDuty routing keys the routing file names.
ENVIRON: web.AppKey[dict[str, str]] = web.AppKey("environ")
# PAGERDUTY_WEBHOOK_SECRET's secrets as HMAC keys, encoded once.
PAGERDUTY_SECRETS: web.AppKey[tuple[bytes, ...]] = web.AppKey("pagerduty_secrets")
PAGERDUTY_EVENTS: web.AppKey[PagerDutyEvents] = web.AppKey("pagerduty_events")
PAGERDUTY_INBOX: web.AppKey[PagerDutyInbox] = web.AppKey("pagerduty_inbox")
COMMANDS: web.AppKey[CommandService] = web.AppKey("commands")
