"""Every AppKey in one place, so that handlers and app.py never import each other."""

from __future__ import annotations

from aiohttp import web

from bot.config import LiveConfig
from bot.dispatcher import Dispatcher
from bot.events import Clock
from bot.metrics import Metrics
from bot.settings import Settings
from bot.slack import SlackGateway
from bot.store import Store

SECRETS = web.AppKey("secrets", Settings)
CONFIG = web.AppKey("config", LiveConfig)
CLOCK = web.AppKey[Clock]("clock")
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
SLACK = web.AppKey("slack", SlackGateway)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
