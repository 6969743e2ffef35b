"""POST /pagerduty/webhook: PagerDuty's v3 incident webhooks, verified on the raw body."""

from __future__ import annotations

import logging

from aiohttp import web

from bot import keys
from bot.pagerduty.webhook import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    PayloadError,
    SignatureError,
    parse_webhook,
    verify_signature,
)
from bot.request_body import read_body
from bot.store import StoreError

log = logging.getLogger(__name__)


async def handle_webhook(request: web.Request) -> web.Response:
    app = request.app
    counted = app[keys.METRICS].pagerduty_webhooks
    # PagerDuty never sends more: a larger body is not PagerDuty's, and is not read whole.
    try:
        body = await read_body(request, limit=MAX_BODY_BYTES)
    except web.HTTPRequestEntityTooLarge:
        counted.labels("too_large").inc()
        return web.Response(status=413, text=f"larger than {MAX_BODY_BYTES} bytes")
    try:
        secrets: tuple[bytes, ...] = app[keys.PAGERDUTY_SECRETS]
        verify_signature(secrets, body, request.headers.get(SIGNATURE_HEADER))
    except SignatureError as exc:
        counted.labels("refused").inc()
        log.warning("pagerduty webhook: refused from %s: %s", request.remote, exc)
        return web.Response(status=401, text=str(exc))
    try:
        event = parse_webhook(body)
    except PayloadError as exc:
        counted.labels("malformed").inc()
        return web.Response(status=400, text=str(exc))
    try:
        outcome = await app[keys.PAGERDUTY_INBOX].apply(event)
    except StoreError as exc:
        # PagerDuty retries a 5xx: nothing is lost.
        log.error("pagerduty webhook: store unavailable, answered 503: %s", exc)
        counted.labels("store_unavailable").inc()
        return web.Response(status=503, text="store unavailable, try again")
    counted.labels(outcome.value).inc()
    # 2xx whatever the outcome: PagerDuty disables a webhook that keeps getting 4xx.
    return web.Response(text=outcome.value)
