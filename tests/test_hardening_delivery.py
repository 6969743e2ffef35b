"""Delivery when things go wrong: the store failing after Slack accepted a post, a flood holding
the write turn, successes that must not thread under someone else's request, and dedup of
values Meta types differently or sends without a time."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bot.events import REDELIVERY_HORIZON, SecurityEvent
from bot.webhook import parse_delivery
from tests.conftest import (
    REFERENCE_BODY,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
)
from tests.fake_slack import RecordedCall
from tests.schema_history import downgrade
from tests.store_failure import StoreFailure
from tests.test_operations import metric


async def fail_writes_while_slack_answers(pinwatch: Pinwatch, *, method_calls: int) -> None:
    """Make the store fail the moment Slack has accepted a post, keep it failing over several
    dispatcher passes and write retries, then let it recover."""
    failure = StoreFailure(pinwatch)

    async def take_once(call: RecordedCall) -> None:
        pinwatch.slack.before_answering.clear()
        await failure.start(call)

    pinwatch.slack.before_answering["chat.postMessage"] = take_once
    await pinwatch.slack.wait_for_calls("chat.postMessage", method_calls)
    retries = 'pinwatch_store_write_retries_total{what="%s"}'

    async def retried_thrice() -> bool:
        text = await metrics_text(pinwatch)
        return any(
            line.startswith(retries % what) and float(line.rsplit(" ", 1)[1]) >= 3
            for line in text.splitlines()
            for what in ("post", "page")
        )

    await eventually(retried_thrice)
    await failure.stop()


async def metrics_text(pinwatch: Pinwatch) -> str:
    async with pinwatch.client.get("/metrics") as response:
        return await response.text()


async def test_a_post_slack_accepted_is_not_sent_again_when_the_store_fails(
    start_pinwatch: StartPinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    pinwatch = await start_pinwatch(store_busy_timeout=0.05)
    caplog.set_level(logging.ERROR, logger="bot.dispatcher")
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await fail_writes_while_slack_answers(pinwatch, method_calls=1)

    alert = await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert alert.slack_ts == message.ts
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 1
    assert any("could not record a post Slack accepted" in r.getMessage() for r in caplog.records)


async def test_a_page_slack_accepted_is_not_sent_again_when_the_store_fails(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch(store_busy_timeout=0.05)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    assert await pinwatch.click("escalate", 1, user="U0ALICE") == 200
    await fail_writes_while_slack_answers(pinwatch, method_calls=2)

    async def paged() -> bool:
        return (await pinwatch.alert(1)).escalation_ts is not None

    await eventually(paged)
    await pinwatch.slack.wait_for_calls("chat.update")
    assert len(pinwatch.slack.top_level("C0PAYLEADS")) == 1
    assert await metric(pinwatch, "pinwatch_store_write_retries_total", 'what="page"') >= 3


FLOOD_CHANNELS = 60  # a lane each: its bookkeeping competes with intake and the click


def with_flood_teams(config_path: Path) -> None:
    text = config_path.read_text()
    teams = "".join(f'  t{i}:\n    channel: "#flood-{i}"\n' for i in range(FLOOD_CHANNELS))
    routes = "".join(
        f'  - team: t{i}\n    phone_numbers: ["4477{i:07d}"]\n' for i in range(FLOOD_CHANNELS)
    )
    text = text.replace("teams:\n", "teams:\n" + teams).rstrip("\n") + "\n" + routes
    config_path.write_text(text)


async def test_an_acknowledgement_during_a_sustained_flood_is_recorded_within_a_second(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    with_flood_teams(config_path)
    pinwatch = await start_pinwatch()
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    stop = asyncio.Event()
    sent = 0

    async def flood(sender: int) -> None:
        nonlocal sent
        n = 0
        while not stop.is_set():
            n += 1
            phone = f"4477{(n * 7 + sender) % FLOOD_CHANNELS:07d}"
            at = 1748811473 + n * 100 + sender  # a new change every time
            status, _ = await pinwatch.post_webhook(
                delivery(security("PIN_CHANGED", phone=phone), time=at)
            )
            assert status == 200
            sent += 1

    senders = [asyncio.create_task(flood(i)) for i in range(32)]
    try:
        await asyncio.sleep(2.0)  # let the flood fill every channel's lane before clicking
        assert sent > 0
        clicked = time.monotonic()
        assert await pinwatch.click("acknowledge", 1, user="U0ALICE") == 200
        answered = time.monotonic() - clicked

        async def acknowledged() -> bool:
            return (await pinwatch.alert(1)).acknowledged is not None

        await eventually(acknowledged, timeout=30)
        recorded = time.monotonic() - clicked
    finally:
        stop.set()
        await asyncio.gather(*senders)
    print(
        f"RELIABILITY flood of {sent} deliveries into {FLOOD_CHANNELS} channels: click answered"
        f" in {answered:.3f}s, acknowledgement recorded in {recorded:.3f}s"
    )
    assert answered < 1.0
    assert recorded < 1.0


async def test_a_success_of_another_waba_does_not_thread_under_the_request(
    pinwatch: Pinwatch,
) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    # The same number under another WABA routes to the defaults: a different story.
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), waba="999000111"))
    success = await pinwatch.wait_posted(2)

    assert success.thread_ts is None
    assert success.channel == "#wa-security"
    [standalone] = pinwatch.slack.top_level("#wa-security")
    assert standalone.text.startswith("[CRITICAL]")
    request = await pinwatch.alert(1)
    assert request.verification_off_at is None
    assert pinwatch.slack.replies("C0PAYMENTS", str(request.slack_ts)) == []


async def test_a_success_long_after_the_request_stands_on_its_own(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    request = await pinwatch.wait_posted(1)
    await pinwatch.click("acknowledge", 1, user="U0ALICE")  # no auto-escalation in the way
    await pinwatch.slack.wait_for_calls("chat.update")

    pinwatch.clock.advance(25 * 3600)  # the default correlation_window is 24h
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748901473))
    success = await pinwatch.wait_posted(2)

    assert success.thread_ts is None
    assert success.channel == "C0PAYMENTS"
    # Only the reminders of the acknowledged, unresolved request are in its thread.
    replies = pinwatch.slack.replies("C0PAYMENTS", str(request.slack_ts))
    assert [r.text for r in replies if not r.text.startswith("Reminder: ")] == []
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 2


async def test_a_team_can_widen_its_correlation_window(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    text = config_path.read_text().replace(
        "    ack_timeout: 10m\n", "    ack_timeout: 10m\n    correlation_window: 48h\n"
    )
    config_path.write_text(text)
    pinwatch = await start_pinwatch()
    await pinwatch.post_webhook(REFERENCE_BODY)
    request = await pinwatch.wait_posted(1)

    pinwatch.clock.advance(25 * 3600)
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748901473))
    success = await pinwatch.wait_posted(2)
    assert success.thread_ts == request.slack_ts


def numeric_phone(body: bytes) -> bytes:
    """Meta's example with display_phone_number as a JSON number instead of a string."""
    payload: dict[str, Any] = json.loads(body)
    value = payload["entry"][0]["changes"][0]["value"]
    value["display_phone_number"] = int(value["display_phone_number"])
    return json.dumps(payload).encode()


async def test_a_number_sent_as_a_json_number_is_the_same_change(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    status, _ = await pinwatch.post_webhook(numeric_phone(REFERENCE_BODY))
    assert status == 200
    assert await metric(pinwatch, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 1
    assert await pinwatch.store.get(2) is None


def timeless(event: str) -> dict[str, Any]:
    body = delivery(security(event, phone="442079460018"))
    del body["entry"][0]["time"]
    return body


async def test_a_change_without_time_is_deduplicated_within_metas_redelivery_horizon(
    pinwatch: Pinwatch,
) -> None:
    await pinwatch.post_webhook(timeless("PIN_CHANGED"))
    await pinwatch.wait_posted(1)
    pinwatch.clock.advance(REDELIVERY_HORIZON - 60)
    await pinwatch.post_webhook(timeless("PIN_CHANGED"))
    assert await metric(pinwatch, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 1

    pinwatch.clock.advance(120)  # past 7 days since the first: a new change, a new alert
    status, _ = await pinwatch.post_webhook(timeless("PIN_CHANGED"))
    assert status == 200
    second = await pinwatch.wait_posted(2)
    assert second.event.time is None
    assert len(pinwatch.slack.top_level("#support-security")) == 2

    # And the new alert's key now deduplicates its own redeliveries.
    await pinwatch.post_webhook(timeless("PIN_CHANGED"))
    assert await metric(pinwatch, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 2
    assert await pinwatch.store.get(3) is None


async def test_a_success_delivered_late_threads_under_the_request_it_completes(
    pinwatch: Pinwatch,
) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    request = await pinwatch.wait_posted(1)
    assert request.event.time is not None
    # pinwatch was down for a day; Meta redelivers a success that happened an hour after the
    # request (Meta retries for 7 days): the window is measured in Meta's event time.
    pinwatch.clock.advance(25 * 3600)
    late = delivery(security("PIN_REQUEST_SUCCESS"), time=request.event.time + 3600)
    assert (await pinwatch.post_webhook(late))[0] == 200
    success = await pinwatch.wait_posted(2)
    assert success.thread_ts == request.slack_ts


def with_value(body: dict[str, Any], **extra: Any) -> bytes:
    body["entry"][0]["changes"][0]["value"].update(extra)
    return json.dumps(body).encode()


async def test_a_number_sent_as_1_or_as_1_0_is_the_same_change(pinwatch: Pinwatch) -> None:
    # JSON has one number type: 1 and 1.0 are the same value (RFC 8259 section 6).
    await pinwatch.post_webhook(with_value(delivery(security("PIN_CHANGED")), attempt=1))
    await pinwatch.wait_posted(1)
    status, _ = await pinwatch.post_webhook(
        with_value(delivery(security("PIN_CHANGED")), attempt=1.0)
    )
    assert status == 200
    assert await metric(pinwatch, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 1
    assert await pinwatch.store.get(2) is None


async def test_a_batch_holding_the_same_timeless_change_twice_alerts_once(
    pinwatch: Pinwatch,
) -> None:
    change = security("PIN_CHANGED", phone="442079460018")
    body: dict[str, Any] = delivery(change, change)
    del body["entry"][0]["time"]
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    await pinwatch.wait_posted(1)
    assert await pinwatch.store.get(2) is None


# REFERENCE_BODY's change as every pinwatch before dedup keys led with Meta's time keyed it: the
# migration to them keeps this digest, and so do PagerDuty's keys of incidents opened before.
REFERENCE_DIGEST = "2f4803db4ac8adbe94e4ce424dbc8a7e030a88191bb4db837e64916d7ab9da05"


def test_dedup_keys_sort_by_metas_time_and_end_with_the_changes_digest() -> None:
    [reference] = parse_delivery(REFERENCE_BODY).events
    assert reference.digest == REFERENCE_DIGEST
    assert reference.dedup_key == f"{reference.time:019d}:{REFERENCE_DIGEST}"
    events = [
        SecurityEvent(waba_id="1", phone_number="2", event="PIN_CHANGED", time=time)
        for time in (None, 0, 9, 10, 1748811473, 2**63 - 1)
    ]
    keys = [event.dedup_key for event in events]
    assert keys == sorted(keys)
    assert keys[0] == f"-:{events[0].digest}"
    assert [key.split(":")[1] for key in keys] == [event.digest for event in events]


async def test_a_change_stored_before_keys_led_with_metas_time_is_still_a_duplicate(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    await first.post_webhook(REFERENCE_BODY)
    await first.post_webhook(timeless("PIN_CHANGED"))
    await first.wait_posted(2)
    await first.stop()
    await downgrade(first, sqlite=11, postgres=8)  # keys were the digest alone

    second = await start_pinwatch()
    for body in (REFERENCE_BODY, timeless("PIN_CHANGED")):
        assert await second.post_webhook(body) == (200, "ok")
    assert await metric(second, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 2
    assert await second.store.get(3) is None
    [(timed,), (untimed,)] = await second.query("SELECT dedup_key FROM alerts ORDER BY id")
    assert timed == f"0000000001748811473:{REFERENCE_DIGEST}"
    assert untimed.startswith("-:")
