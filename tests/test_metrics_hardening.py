"""/metrics stays small whatever arrives, a scrape stays cheap whatever waits in the outbox, and
METRICS_TOKEN keeps it to those who hold the token."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.events import SecurityEvent
from bot.metrics import Backlog
from bot.store import open_store
from tests.conftest import (
    REFERENCE_BODY,
    FakeClock,
    Pinwatch,
    StartPinwatch,
    delivery,
    security,
)
from tests.fake_slack import start_fake_slack
from tests.serve import start_serve

BACKLOG_REFRESH = 5.0  # Tuning().backlog_refresh


async def scrape(pinwatch: Pinwatch) -> str:
    async with pinwatch.client.get("/metrics") as response:
        assert response.status == 200
        return await response.text()


def series(text: str, name: str) -> dict[str, float]:
    """Each series of one metric: its labels → its value."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


def gauge(text: str, name: str) -> float:
    [value] = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def test_unknown_field_names_share_one_series(pinwatch: Pinwatch) -> None:
    many = delivery(*({"field": f"f{i}", "value": {}} for i in range(5000)))
    body = json.dumps(many, separators=(",", ":")).encode()
    assert (await pinwatch.post_webhook(body))[0] == 200
    messages = delivery(*({"field": "messages", "value": {}} for _ in range(3)))
    assert (await pinwatch.post_webhook(messages))[0] == 200

    text = await scrape(pinwatch)
    print(f"\n5,000 unknown fields in a {len(body):,}-byte body: /metrics is {len(text):,} bytes")
    assert series(text, "pinwatch_webhook_ignored_changes_total") == {
        '{field="other"}': 5000,
        '{field="messages"}': 3,
    }
    assert len(text) < 20_000


async def test_event_names_pinwatch_does_not_know_share_one_series(pinwatch: Pinwatch) -> None:
    changes = [security("PIN_CHANGED"), security("SOMETHING_NEW"), security("X" * 10_000)]
    assert (await pinwatch.post_webhook(delivery(*changes)))[0] == 200
    for alert_id in (1, 2, 3):
        await pinwatch.wait_posted(alert_id)

    text = await scrape(pinwatch)
    assert series(text, "pinwatch_events_total") == {
        '{event="PIN_CHANGED",team="payments"}': 1,
        '{event="other",team="payments"}': 2,
    }


async def test_the_backlog_is_counted_at_most_every_few_seconds(pinwatch: Pinwatch) -> None:
    pinwatch.slack.fail("chat.postMessage", times=1000, status=503)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.slack.wait_for(lambda s: any(c.failed for c in s.calls))

    async def backlog() -> tuple[float, float]:
        text = await scrape(pinwatch)
        return gauge(text, "pinwatch_alerts_pending"), gauge(
            text, "pinwatch_oldest_pending_alert_age_seconds"
        )

    assert await backlog() == (1, 0)
    assert (await pinwatch.post_webhook(delivery(security("PIN_CHANGED"))))[0] == 200
    pinwatch.clock.advance(BACKLOG_REFRESH - 1)
    # Counted a moment ago: the same count, but the age is the age now.
    assert await backlog() == (1, BACKLOG_REFRESH - 1)
    pinwatch.clock.advance(1)
    assert await backlog() == (2, BACKLOG_REFRESH)


async def test_concurrent_reads_share_one_count() -> None:
    counts = 0
    release = asyncio.Event()

    async def count() -> tuple[int, float | None]:
        nonlocal counts
        counts += 1
        await release.wait()
        return 7, 100.0

    clock = FakeClock()
    backlog = Backlog(count, clock=clock, max_age=BACKLOG_REFRESH)
    reads = [asyncio.create_task(backlog.read()) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*reads) == [(7, 100.0)] * 20
    assert counts == 1
    await backlog.read()
    assert counts == 1
    clock.advance(BACKLOG_REFRESH)
    await backlog.read()
    assert counts == 2


async def test_a_failed_count_is_not_kept() -> None:
    failures = [RuntimeError("store unavailable")]

    async def count() -> tuple[int, float | None]:
        if failures:
            raise failures.pop()
        return 1, None

    backlog = Backlog(count, clock=FakeClock(), max_age=BACKLOG_REFRESH)
    with pytest.raises(RuntimeError):
        await backlog.read()
    assert await backlog.read() == (1, None)


# --- METRICS_TOKEN, on a real process -------------------------------------------------------


async def test_metrics_token_is_required_when_set_and_never_logged(tmp_path: Path) -> None:
    token = "metrics-token-0123456789"
    serve = start_serve(tmp_path, METRICS_TOKEN=token)
    try:
        await serve.wait_listening()
        async with aiohttp.ClientSession() as session:
            for authorization, expected in (
                (None, 401),
                ("Bearer wrong-token", 401),
                (f"Basic {token}", 401),
                (f"Bearer {token}x", 401),
                (f"Bearer {token}", 200),
            ):
                headers = {"Authorization": authorization} if authorization else {}
                async with session.get(f"{serve.url}/metrics", headers=headers) as response:
                    assert response.status == expected, authorization
                    if expected == 200:
                        assert "pinwatch_alerts_pending" in await response.text()
                    else:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with session.get(f"{serve.url}/healthz") as response:
                assert response.status == 200  # only /metrics is guarded
        await serve.terminate(timeout=10)
    finally:
        serve.kill()
    assert token not in serve.output()


async def test_metrics_are_open_without_a_token(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await start_pinwatch()
    assert "pinwatch_alerts_pending" in await scrape(pinwatch)


def test_metrics_token_is_read_from_the_environment_and_redacted() -> None:
    from bot.settings import Settings

    base = {
        "META_APP_SECRET": "m" * 8,
        "META_VERIFY_TOKEN": "v" * 8,
        "SLACK_SIGNING_SECRET": "s" * 8,
    }
    assert Settings.from_env(base).metrics_token is None
    assert Settings.from_env({**base, "METRICS_TOKEN": ""}).metrics_token is None
    settings = Settings.from_env({**base, "METRICS_TOKEN": "t" * 20})
    assert settings.metrics_token is not None
    assert "t" * 20 in settings.secret_values()
    assert "t" * 20 not in repr(settings)


# --- the figures behind the backlog cache (make test-reliability) ---------------------------


@pytest.mark.slow
async def test_scrape_cost_with_100k_pending(
    start_pinwatch: StartPinwatch,
    config_path: Path,
    aiohttp_server: Any,
    database_url: str | None,
) -> None:
    from bot.config import load_config

    store = await open_store(database_url or load_config(config_path).config.store.path)
    for batch in range(100):
        events = [
            SecurityEvent(
                waba_id="102290129340398",
                phone_number="15550783881",
                event="PIN_CHANGED",
                time=1_700_000_000 + batch * 1000 + i,
            )
            for i in range(1000)
        ]
        await store.add_events(events, received_at=1_700_000_000.0)
    await store.close()
    fake, url = await start_fake_slack(aiohttp_server)
    fake.fail("*", times=10_000, status=503)
    pinwatch = await start_pinwatch((fake, url))

    started = time.perf_counter()
    await scrape(pinwatch)
    first = time.perf_counter() - started
    pinwatch.clock.advance(BACKLOG_REFRESH)  # stale: the burst needs a new count
    started = time.perf_counter()
    await asyncio.gather(*(scrape(pinwatch) for _ in range(20)))
    concurrent = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        await scrape(pinwatch)
    sequential = (time.perf_counter() - started) / 20
    print(
        f"\n100k pending: first scrape {first * 1000:.1f} ms; 20 concurrent {concurrent * 1000:.1f}"
        f" ms in all; one after another {sequential * 1000:.1f} ms each"
    )
