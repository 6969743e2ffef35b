"""Wire the adapters into one aiohttp Application."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from bot import keys, webhook
from bot.actions.http import SLACK_MAX_BODY_BYTES, handle_actions, socket_mode_listener
from bot.actions.service import ActionService
from bot.actions.verify import SlackRequestVerifier
from bot.commands.form import EXPECT_CALLBACK
from bot.commands.http import handle_commands, socket_mode_commands
from bot.commands.service import CommandService, ResponseUrls
from bot.config import ConfigError, LiveConfig, LoadedConfig, ReloadResult, read_if_changed
from bot.dispatcher import Dispatcher, RetryPolicy
from bot.events import Alert, Clock, system_clock
from bot.metrics import Backlog, Metrics
from bot.pagerduty.client import PagerDutyEvents
from bot.pagerduty.http import handle_webhook as handle_pagerduty_webhook
from bot.pagerduty.inbox import PagerDutyInbox
from bot.pagerduty.outbox import PagerDutyOutbox
from bot.router import Router
from bot.settings import Settings
from bot.slack import DryRunClient, SlackGateway, web_client
from bot.store import open_store

log = logging.getLogger(__name__)

SLACK_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs that production leaves at their defaults and tests turn down."""

    clock: Clock = system_clock
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: float = 1.0
    pass_gap: float = 0.01  # the least time between two dispatcher passes in a burst
    config_poll_interval: float = 1.0
    shutdown_grace: float = 10.0  # how long a stop waits for Slack calls under way
    storm_update_gap: float = 2.0
    slack_timeout: aiohttp.ClientTimeout = SLACK_TIMEOUT
    store_busy_timeout: float = 5.0  # how long a write waits for a lock SQLite does not have
    # Meta's datacentres send 3 MB in well under a second; a slower body is holding memory.
    body_timeout: float = 10.0
    backlog_refresh: float = 5.0  # how old the pending-alert gauges may be in a scrape
    socket_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(first=1.0, limit=60.0))


class SocketModeLink:
    """Slack's WebSocket for button clicks: the first connection is retried with backoff here;
    once connected, slack_sdk's own monitor reconnects (asking for a new URL each time)."""

    ATTEMPT_TIMEOUT = 30.0

    def __init__(self, client: SocketModeClient, *, retry: RetryPolicy) -> None:
        self._client = client
        self._retry = retry

    async def is_connected(self) -> bool:
        connected: bool = await self._client.is_connected()
        return connected

    async def connect(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect_once()
            # Any error: whatever Slack, or a proxy in front of it, answers, this loop goes on.
            except Exception as exc:
                failures += 1
                delay = max(self._retry.delay(failures), _retry_after(exc))
                log.warning(
                    "socket mode: cannot connect (%s: %s); clicks wait, webhooks are accepted; "
                    "next try in %.0fs",
                    type(exc).__name__,
                    str(exc).partition("\n")[0][:200],
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                log.info("socket mode: connected; button clicks arrive over the socket")
                return

    async def _connect_once(self) -> None:
        # Not slack_sdk's issue_new_wss_url(): it fails with an AttributeError on an error
        # answer that is not JSON, and sleeps through a rate limit where we cannot see it.
        opened = await self._client.web_client.apps_connections_open(
            app_token=self._client.app_token
        )
        self._client.wss_uri = opened["url"]
        # connect() would retry a refused WebSocket every 5 s with the same URL, forever.
        async with asyncio.timeout(self.ATTEMPT_TIMEOUT):
            await self._client.connect()  # type: ignore[no-untyped-call]


def _retry_after(exc: Exception) -> float:
    """Slack rate-limits apps.connections.open (Tier 1): a 429 says how long to wait."""
    if isinstance(exc, SlackApiError) and exc.response.status_code == 429:
        with contextlib.suppress(ValueError):
            return float(exc.response.headers.get("Retry-After", 0))
    return 0.0


def build_app(
    settings: Settings,
    config: LoadedConfig,
    *,
    tuning: Tuning | None = None,
    environ: Mapping[str, str] | None = None,
) -> web.Application:
    tuning = tuning or Tuning()
    app = web.Application(
        # Each route reads its body within its own limit (bot/request_body.py): this one
        # bounds any read that would not.
        client_max_size=SLACK_MAX_BODY_BYTES,
        # A body the handler left unread (a refusal before reading it) ends the connection at
        # once: aiohttp would otherwise linger up to 10 s reading it, for whoever sent it.
        handler_args={"lingering_time": 0},
    )
    app[keys.SECRETS] = settings
    app[keys.BODY_TIMEOUT] = tuning.body_timeout
    if environ is not None:  # where the routing file's PagerDuty routing keys are read from
        app[keys.ENVIRON] = dict(environ)
    app[keys.META_SECRETS] = tuple(
        webhook.keyed(s.get_secret_value().encode()) for s in settings.meta_app_secrets
    )
    app[keys.PAGERDUTY_SECRETS] = tuple(
        s.get_secret_value().encode() for s in settings.pagerduty_webhook_secrets
    )
    app[keys.CLOCK] = tuning.clock
    app[keys.CONFIG] = LiveConfig(config, loaded_at=tuning.clock())
    app[keys.METRICS] = Metrics(meta_secrets=len(settings.meta_app_secrets))
    app[keys.BACKLOG] = Backlog(
        lambda: app[keys.STORE].count_unposted(), clock=tuning.clock, max_age=tuning.backlog_refresh
    )
    app[keys.SLACK_VERIFIER] = SlackRequestVerifier(
        settings.slack_signing_secret.get_secret_value(), clock=tuning.clock
    )

    async def slack_client(app: web.Application) -> AsyncIterator[None]:
        if settings.slack_bot_token is None:
            app[keys.SLACK] = SlackGateway(DryRunClient(), app[keys.METRICS])
            yield
            return
        async with aiohttp.ClientSession(timeout=tuning.slack_timeout) as session:
            client = web_client(
                settings.slack_bot_token.get_secret_value(),
                base_url=settings.slack_api_url,
                session=session,
            )
            app[keys.SLACK] = SlackGateway(client, app[keys.METRICS])
            yield

    async def pagerduty_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[keys.PAGERDUTY_EVENTS] = PagerDutyEvents(
                session, base_url=settings.pagerduty_events_url, clock=tuning.clock
            )
            yield

    async def store(app: web.Application) -> AsyncIterator[None]:
        target = settings.database_url or config.config.store.path
        app[keys.STORE] = await open_store(
            target.get_secret_value() if isinstance(target, SecretStr) else target,
            busy_timeout=tuning.store_busy_timeout,
        )
        yield
        await app[keys.STORE].close()

    async def dispatcher(app: web.Application) -> AsyncIterator[None]:
        # The routing keys: serve passes its environment, a test what it pages with.
        routing_keys: dict[str, str] = app.get(keys.ENVIRON, {})
        router = Router(config=app[keys.CONFIG], metrics=app[keys.METRICS], windows=app[keys.STORE])
        app[keys.STORE].route_with(router)
        app[keys.DISPATCHER] = Dispatcher(
            store=app[keys.STORE],
            slack=app[keys.SLACK],
            config=app[keys.CONFIG],
            router=router,
            metrics=app[keys.METRICS],
            clock=tuning.clock,
            retry=tuning.retry,
            poll_interval=tuning.poll_interval,
            pass_gap=tuning.pass_gap,
            storm_update_gap=tuning.storm_update_gap,
            pagerduty=PagerDutyOutbox(
                store=app[keys.STORE],
                slack=app[keys.SLACK],
                events=app[keys.PAGERDUTY_EVENTS],
                config=app[keys.CONFIG],
                environ=routing_keys,
                metrics=app[keys.METRICS],
                clock=tuning.clock,
            ),
        )
        dispatcher = app[keys.DISPATCHER]
        app[keys.STORE].on_change(dispatcher.wake, new_alerts=dispatcher.wake_for_deliveries)
        app[keys.ACTIONS] = ActionService(
            store=app[keys.STORE],
            slack=app[keys.SLACK],
            config=app[keys.CONFIG],
            dispatcher=app[keys.DISPATCHER],
            metrics=app[keys.METRICS],
            clock=tuning.clock,
        )

        def refresh(alert: Alert) -> None:
            work = app[keys.DISPATCHER].refresh_message(alert)
            app[keys.ACTIONS].spawn(work, f"refresh {alert.id} after PagerDuty")

        app[keys.PAGERDUTY_INBOX] = PagerDutyInbox(
            store=app[keys.STORE], config=app[keys.CONFIG], clock=tuning.clock, refresh=refresh
        )
        task = asyncio.create_task(app[keys.DISPATCHER].run(), name="dispatcher")
        yield
        await app[keys.ACTIONS].close(grace=tuning.shutdown_grace)
        app[keys.DISPATCHER].stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=tuning.shutdown_grace)
        except TimeoutError:
            log.warning(
                "dispatcher: jobs still under way after %.0fs; stopping them", tuning.shutdown_grace
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def commands(app: web.Application) -> AsyncIterator[None]:
        # Its own session: answers that follow a command go to Slack's hooks host, not the API.
        async with aiohttp.ClientSession(timeout=tuning.slack_timeout) as session:
            app[keys.COMMANDS] = CommandService(
                store=app[keys.STORE],
                slack=app[keys.SLACK],
                config=app[keys.CONFIG],
                clock=tuning.clock,
                replies=ResponseUrls(session, slack_api_url=settings.slack_api_url),
            )
            app[keys.ACTIONS].add_form(EXPECT_CALLBACK, app[keys.COMMANDS].accept_expect)
            yield
            await app[keys.COMMANDS].close(grace=tuning.shutdown_grace)

    async def config_watcher(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            watch_config(app, poll_interval=tuning.config_poll_interval), name="config watcher"
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def socket_mode(app: web.Application) -> AsyncIterator[None]:
        if settings.slack_app_token is None or settings.slack_bot_token is None:
            yield
            return
        client = SocketModeClient(
            app_token=settings.slack_app_token.get_secret_value(),
            # Used once per (re)connection for apps.connections.open: no shared session needed.
            web_client=AsyncWebClient(base_url=settings.slack_api_url),
        )
        client.socket_mode_request_listeners.append(socket_mode_listener(app[keys.ACTIONS]))
        client.socket_mode_request_listeners.append(socket_mode_commands(app[keys.COMMANDS]))
        link = app[keys.SOCKET_MODE] = SocketModeLink(client, retry=tuning.socket_retry)
        # In the background: webhooks are accepted whatever Slack's state, and a stop is not
        # held up by a connection attempt.
        task = asyncio.create_task(link.connect(), name="socket mode")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()  # type: ignore[no-untyped-call]

    app.cleanup_ctx.extend(
        [slack_client, pagerduty_client, store, dispatcher, commands, config_watcher, socket_mode]
    )
    app.router.add_get("/webhook", webhook.handle_handshake)
    app.router.add_post("/webhook", webhook.handle_delivery)
    app.router.add_post("/slack/actions", handle_actions)
    app.router.add_post("/slack/commands", handle_commands)
    app.router.add_post("/pagerduty/webhook", handle_pagerduty_webhook)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/readyz", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    return app


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _parser_process() -> None:
    # It parses one file and ends: collecting garbage would only slow it down (a third of the
    # time on a large file). And below the service's priority: on a busy machine, webhooks first.
    gc.disable()
    os.nice(10)


async def reload_config(app: web.Application) -> ReloadResult:
    """Apply the routing file as it is now on disk, or keep the version in force and say why."""
    live = app[keys.CONFIG]
    before = live.current
    # A new version naming a PagerDuty routing key variable that is not set is refused.
    environ = app.get(keys.ENVIRON)
    read = functools.partial(read_if_changed, before.source, digest=before.digest, environ=environ)
    try:
        # In a process of its own, not a thread: parsing a large file holds the GIL for long
        # spells (and its garbage collections stop every thread), which webhooks would wait for.
        spawn = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_parser_process)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(pool, read)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    except ConfigError as error:
        log.error(
            "config %s refused, version %s stays in force:\n%s", before.source, before.digest, error
        )
        result = ReloadResult.REFUSED
    except (BrokenProcessPool, OSError) as error:  # it was killed, or could not be started
        log.error(
            "config %s not read, version %s stays in force: the process parsing it failed (%s)",
            before.source,
            before.digest,
            error,
        )
        result = ReloadResult.REFUSED
    else:
        result = live.apply(loaded, now=app[keys.CLOCK]())
        if result is ReloadResult.APPLIED:
            log.info("config %s version %s in force", live.current.source, live.current.digest)
            if live.config.store.path != before.config.store.path:
                log.warning("store.path changed: the new path is used from the next restart")
    app[keys.METRICS].config_reloads.labels(result.value).inc()
    return result


async def watch_config(app: web.Application, *, poll_interval: float) -> None:
    """Reload when the file changes on disk, or at once on SIGHUP."""
    path = Path(app[keys.CONFIG].current.source)
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        hangup_installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
        hangup_installed = False
    stamp = _file_stamp(path)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval):
                    await hangup.wait()
            current = _file_stamp(path)
            if hangup.is_set() or current != stamp:
                hangup.clear()
                stamp = current
                await reload_config(app)
    finally:
        if hangup_installed:
            loop.remove_signal_handler(signal.SIGHUP)


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def socket_mode_state(app: web.Application) -> str:
    """ "off" (clicks arrive by HTTP), "connecting" or "connected"."""
    link = app.get(keys.SOCKET_MODE)
    if link is None:
        return "off"
    return "connected" if await link.is_connected() else "connecting"


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
        # Reported, but not a reason for 503: a load balancer would then stop sending Meta's
        # webhooks here, and during a Slack outage every replica would refuse them alike.
        # Clicks wait for the socket; events are still stored and posted when Slack is back.
        "socket_mode": await socket_mode_state(app),
    }
    return web.json_response(body, status=200 if ready else 503)


def _bearer_matches(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    # Compared whole and in constant time: how much of a guess matched must not show.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode()
    )


async def handle_metrics(request: web.Request) -> web.Response:
    app = request.app
    token = app[keys.SECRETS].metrics_token
    if token is not None and not _bearer_matches(
        request.headers.get("Authorization"), token.get_secret_value()
    ):
        return web.Response(
            status=401,
            text="GET /metrics needs Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="pinwatch metrics"'},
        )
    metrics = app[keys.METRICS]
    if keys.STORE in app:
        count, oldest = await app[keys.BACKLOG].read()
        metrics.pending.set(count)
        metrics.oldest_pending_age.set(app[keys.CLOCK]() - oldest if oldest else 0)
    metrics.socket_mode_connected.set(await socket_mode_state(app) == "connected")
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
