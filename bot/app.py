"""Wire the adapters into one aiohttp Application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import actions, keys, webhook
from bot.actions import ActionService, SlackRequestVerifier
from bot.config import LiveConfig, LoadedConfig
from bot.dispatcher import Dispatcher, RetryPolicy
from bot.events import Clock, system_clock
from bot.metrics import Metrics
from bot.settings import Settings
from bot.slack import DryRunClient, SlackGateway, web_client
from bot.store import Store

log = logging.getLogger(__name__)

SLACK_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs that production leaves at their defaults and tests turn down."""

    clock: Clock = system_clock
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: float = 1.0
    slack_timeout: aiohttp.ClientTimeout = SLACK_TIMEOUT


def build_app(
    settings: Settings, config: LoadedConfig, *, tuning: Tuning | None = None
) -> web.Application:
    tuning = tuning or Tuning()
    app = web.Application(client_max_size=webhook.MAX_BODY_BYTES)
    app[keys.SECRETS] = settings
    app[keys.CLOCK] = tuning.clock
    app[keys.CONFIG] = LiveConfig(config, loaded_at=tuning.clock())
    app[keys.METRICS] = Metrics()
    app[keys.SLACK_VERIFIER] = SlackRequestVerifier(
        settings.slack_signing_secret.get_secret_value(), clock=tuning.clock
    )

    async def slack_client(app: web.Application) -> AsyncIterator[None]:
        if settings.slack_bot_token is None:
            app[keys.SLACK] = SlackGateway(DryRunClient())
            yield
            return
        async with aiohttp.ClientSession(timeout=tuning.slack_timeout) as session:
            client = web_client(
                settings.slack_bot_token.get_secret_value(),
                base_url=settings.slack_api_url,
                session=session,
            )
            app[keys.SLACK] = SlackGateway(client)
            yield

    async def store(app: web.Application) -> AsyncIterator[None]:
        app[keys.STORE] = await Store.open(config.config.store.path)
        yield
        await app[keys.STORE].close()

    async def dispatcher(app: web.Application) -> AsyncIterator[None]:
        app[keys.DISPATCHER] = Dispatcher(
            store=app[keys.STORE],
            slack=app[keys.SLACK],
            config=app[keys.CONFIG],
            metrics=app[keys.METRICS],
            clock=tuning.clock,
            retry=tuning.retry,
            poll_interval=tuning.poll_interval,
        )
        app[keys.ACTIONS] = ActionService(
            store=app[keys.STORE],
            slack=app[keys.SLACK],
            config=app[keys.CONFIG],
            dispatcher=app[keys.DISPATCHER],
            metrics=app[keys.METRICS],
            clock=tuning.clock,
        )
        task = asyncio.create_task(app[keys.DISPATCHER].run(), name="dispatcher")
        yield
        await app[keys.ACTIONS].close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.extend([slack_client, store, dispatcher])
    app.router.add_get("/webhook", webhook.handle_handshake)
    app.router.add_post("/webhook", webhook.handle_delivery)
    app.router.add_post("/slack/actions", actions.handle_actions)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/readyz", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_ready(request: web.Request) -> web.Response:
    app = request.app
    live = app[keys.CONFIG]
    ready = keys.STORE in app and keys.DISPATCHER in app
    body = {
        "status": "ready" if ready else "starting",
        "config": {
            "source": live.current.source,
            "version": live.current.digest,
            "loaded_at": live.loaded_at,
        },
        "dry_run": app[keys.SECRETS].dry_run,
    }
    return web.json_response(body, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
