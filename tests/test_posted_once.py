"""A message Slack accepted is never posted again: not when its answer is lost, not when the
answer comes after pinwatch gave up waiting, not across a restart. Every post carries metadata
naming it, and an unfinished one is looked for in the channel before it is sent again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    REFERENCE_BODY,
    SLACK_CHANNELS,
    SLACK_USERGROUPS,
    TEST_CONFIG,
    FakeClock,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
)
from tests.fake_slack import Message, RecordedCall, start_fake_slack
from tests.store_failure import StoreFailure
from tests.test_operations import metric


def the_one_message(pinwatch: Pinwatch, channel: str) -> str:
    [message] = pinwatch.slack.top_level(channel)
    assert message.metadata is not None
    assert message.metadata["event_type"] == "pinwatch_message"
    return message.ts


async def test_every_post_carries_metadata_naming_it(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert message.metadata == {
        "event_type": "pinwatch_message",
        "event_payload": {"send": "alert:1", "alert_id": 1},
    }
    assert pinwatch.slack.calls_to("conversations.history") == []  # nothing to look for


async def test_a_post_whose_answer_is_lost_is_found_not_sent_again(pinwatch: Pinwatch) -> None:
    pinwatch.slack.fail("chat.postMessage", drop=True)
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)

    assert alert.slack_ts == the_one_message(pinwatch, "C0PAYMENTS")
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 1
    [lookup] = pinwatch.slack.calls_to("conversations.history")
    assert lookup.params["channel"] == "C0PAYMENTS"


async def test_a_post_answered_after_the_client_gave_up_is_not_sent_again(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch(slack_timeout=aiohttp.ClientTimeout(total=0.3))
    pinwatch.slack.fail("chat.postMessage", delay=1.0, accept_first=True)
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)
    assert alert.slack_ts == the_one_message(pinwatch, "C0PAYMENTS")
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 1


async def test_a_page_whose_answer_is_lost_pages_once(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    pinwatch.slack.fail("chat.postMessage", drop=True)
    assert await pinwatch.click("escalate", 1, user="U0ALICE") == 200

    async def paged() -> bool:
        return (await pinwatch.alert(1)).escalation_ts is not None

    await eventually(paged)
    assert (await pinwatch.alert(1)).escalation_ts == the_one_message(pinwatch, "C0PAYLEADS")
    # The routing file names it #payments-leads, never posted to before: its ID was looked up.
    assert len(pinwatch.slack.calls_to("conversations.list")) == 1


async def test_a_failed_lookup_is_tried_again_before_anything_is_posted(
    pinwatch: Pinwatch,
) -> None:
    pinwatch.slack.fail("chat.postMessage", drop=True)
    pinwatch.slack.fail("conversations.history", status=500, times=3)
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)
    assert alert.slack_ts == the_one_message(pinwatch, "C0PAYMENTS")


async def test_a_post_slack_accepted_during_a_store_outage_is_not_sent_again_after_a_restart(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch(store_busy_timeout=0.05, shutdown_grace=0.5)
    failure = StoreFailure(first)

    async def fail_once(call: RecordedCall) -> None:
        first.slack.before_answering.clear()
        await failure.start(call)

    first.slack.before_answering["chat.postMessage"] = fail_once
    await first.post_webhook(REFERENCE_BODY)
    await first.slack.wait_for_calls("chat.postMessage")

    async def retrying() -> bool:
        return await metric(first, "pinwatch_store_write_retries_total", 'what="post"') >= 1

    await eventually(retrying)
    await first.stop()  # the operator restarts pinwatch because its disk is full
    await failure.stop()

    second = await start_pinwatch((first.slack, first.slack_url))
    alert = await second.wait_posted(1)
    assert alert.slack_ts == the_one_message(second, "C0PAYMENTS")


async def test_without_the_history_scope_it_posts_again_and_says_why_once(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.dispatcher")
    pinwatch.slack.fail("chat.postMessage", drop=True, times=2)
    pinwatch.slack.fail("conversations.history", error="missing_scope", times=2)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)

    # Two answers lost: looked for twice, refused twice, posted three times; one warning.
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 3
    warnings = [r for r in caplog.records if "missing_scope" in r.getMessage()]
    assert len(warnings) == 1
    assert "channels:history" in warnings[0].getMessage()


async def test_a_lost_post_is_found_even_when_looking_for_it_failed_for_two_hours(
    pinwatch: Pinwatch,
) -> None:
    """A Slack incident: the post's answer is lost, then conversations.history fails while the
    outbox backs off (up to 5 minutes between tries) for hours. The lookup that finally
    succeeds must still reach back to the first attempt, not to the last one."""
    pinwatch.slack.fail("chat.postMessage", drop=True)

    async def two_minutes_pass(_call: RecordedCall) -> None:
        pinwatch.slack.before_answering.clear()
        pinwatch.clock.advance(2 * 3600)  # a long Slack incident before the next try

    pinwatch.slack.before_answering["chat.postMessage"] = two_minutes_pass
    pinwatch.slack.fail("conversations.history", status=500, times=3)  # one lookup, retried
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)
    assert alert.slack_ts == the_one_message(pinwatch, "C0PAYMENTS")


async def test_a_lost_post_is_found_when_slacks_clock_is_two_minutes_behind(
    start_pinwatch: StartPinwatch, aiohttp_server: Any, clock: FakeClock
) -> None:
    """Slack's ts is Slack's clock; the lookup's `oldest` is pinwatch's clock less 60 s."""
    behind = FakeClock(clock.now - 120)
    slack, url = await start_fake_slack(
        aiohttp_server, channels=SLACK_CHANNELS, usergroups=SLACK_USERGROUPS, clock=behind
    )
    pinwatch = await start_pinwatch((slack, url))
    slack.fail("chat.postMessage", drop=True)
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)
    assert alert.slack_ts == the_one_message(pinwatch, "C0PAYMENTS")


def acknowledge_buttons(message: Message) -> set[str]:
    return {
        block["accessory"]["value"]
        for block in message.blocks
        if block.get("accessory", {}).get("action_id") == "pinwatch.acknowledge"
    }


async def test_alerts_marked_posted_on_a_found_storm_summary_are_shown_in_it(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    """A storm summary's answer comes too late; more alerts for the channel arrive meanwhile.
    The retry finds the summary (showing the first rows only) and records every alert as
    posted on it: each of them must then be a row of it, or nobody ever sees it."""
    config_path.write_text(
        TEST_CONFIG.format(store=config_path.parent / "pinwatch.db").replace(
            "defaults:\n", "defaults:\n  storm:\n    threshold: 2\n    window: 60\n", 1
        )
    )
    pinwatch = await start_pinwatch(slack_timeout=aiohttp.ClientTimeout(total=0.5))
    for i in (1, 2):
        await pinwatch.post_webhook(delivery(security("PIN_RESET_REQUEST", requester=str(i))))
        await pinwatch.wait_posted(i)

    pinwatch.slack.fail("chat.postMessage", delay=2.0, accept_first=True)
    await pinwatch.post_webhook(delivery(security("PIN_RESET_REQUEST", requester="3")))
    await pinwatch.slack.wait_for_calls("chat.postMessage", 3, ok_only=False)
    for i in (4, 5):  # while pinwatch still waits for the summary's answer
        await pinwatch.post_webhook(delivery(security("PIN_RESET_REQUEST", requester=str(i))))
    for i in (3, 4, 5):
        await pinwatch.wait_posted(i)

    [summary] = [m for m in pinwatch.slack.top_level("C0PAYMENTS") if m.text.startswith("[STORM]")]
    for i in (3, 4, 5):
        assert (await pinwatch.alert(i)).slack_ts == summary.ts
    assert acknowledge_buttons(summary) == {"3", "4", "5"}
