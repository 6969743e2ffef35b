"""Storms: hundreds of events for one channel become a few summary messages, none lost."""

from __future__ import annotations

import asyncio
import json

from bot.config import Storm
from bot.render import STORM_MAX_ROWS
from tests.conftest import Pinwatch, StartPinwatch, delivery, eventually, security

THRESHOLD = Storm().threshold  # the default: the config under test sets no storm options


async def send_reset_requests(pinwatch: Pinwatch, count: int, *, start: int = 0) -> None:
    limit = asyncio.Semaphore(20)

    async def send(i: int) -> None:
        body = delivery(security("PIN_RESET_REQUEST", requester=str(i)), time=1748811473 + i)
        async with limit:
            status, _ = await pinwatch.post_webhook(body)
        assert status == 200

    await asyncio.gather(*(send(i) for i in range(start, start + count)))


async def wait_all_posted(pinwatch: Pinwatch, count: int) -> None:
    async def posted() -> bool:
        unposted, _ = await pinwatch.store.count_unposted()
        return unposted == 0 and await pinwatch.store.get(count) is not None

    await eventually(posted, timeout=30)


async def test_a_storm_of_500_becomes_a_few_summaries(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, 500)
    await wait_all_posted(pinwatch, 500)

    messages = pinwatch.slack.top_level("C0PAYMENTS")
    individual = [m for m in messages if not m.text.startswith("[STORM]")]
    summaries = [m for m in messages if m.text.startswith("[STORM]")]
    assert len(individual) == THRESHOLD  # single events still go out at once
    assert len(summaries) <= -(-(500 - THRESHOLD) // STORM_MAX_ROWS) + 2
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == len(messages)

    # Every event is shown exactly once, with its own Acknowledge button.
    shown = [
        block["accessory"]["value"]
        for m in summaries
        for block in m.blocks
        if block.get("accessory", {}).get("action_id") == "pinwatch.acknowledge"
    ]
    assert len(shown) == 500 - THRESHOLD
    assert len(set(shown)) == 500 - THRESHOLD
    posted = 0
    for alert_id in range(1, 501):
        alert = await pinwatch.alert(alert_id)
        assert alert.slack_ts is not None
        posted += 1
    figures = {
        "messages_in_channel": len(messages),
        "individual": len(individual),
        "summaries": len(summaries),
        "summaries_allowed": -(-(500 - THRESHOLD) // STORM_MAX_ROWS) + 2,
        "post_message_calls": len(pinwatch.slack.calls_to("chat.postMessage")),
        "rows_with_acknowledge": len(shown),
        "alerts_marked_posted": posted,
    }
    print(f"\nRELIABILITY storms: {json.dumps(figures)}")


async def test_a_row_of_a_storm_is_acknowledged_on_its_own(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 7)
    await wait_all_posted(pinwatch, THRESHOLD + 7)
    [summary] = [m for m in pinwatch.slack.top_level() if m.text.startswith("[STORM]")]
    row_ids = [
        int(b["accessory"]["value"]) for b in summary.blocks if b.get("accessory") is not None
    ]
    assert len(row_ids) == 7

    await pinwatch.click("acknowledge", row_ids[2], user="U0ALICE")

    async def updated() -> bool:
        return (await pinwatch.alert(row_ids[2])).acknowledged is not None

    await eventually(updated)
    await pinwatch.slack.wait_for(
        lambda s: (
            "Acknowledged by <@U0ALICE>"
            in json.dumps(s.message(summary.channel, summary.ts).blocks)
        )
    )
    blocks = pinwatch.slack.message(summary.channel, summary.ts).blocks
    row = next(b for b in blocks if b.get("block_id") == f"pinwatch-{row_ids[2]}")
    assert row["accessory"]["action_id"] == "pinwatch.resolve"  # acknowledged: Resolve is next
    others = [await pinwatch.alert(i) for i in row_ids if i != row_ids[2]]
    assert all(a.acknowledged is None for a in others)


async def test_after_the_window_single_events_are_posted_alone_again(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    pinwatch.clock.advance(61)
    await send_reset_requests(pinwatch, 1, start=100)
    await wait_all_posted(pinwatch, THRESHOLD + 4)
    last = pinwatch.slack.top_level("C0PAYMENTS")[-1]
    assert not last.text.startswith("[STORM]")
    assert "requested by Meta user 100" in last.text


async def test_a_storm_left_unacknowledged_pages_once_per_summary(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 30)
    await wait_all_posted(pinwatch, THRESHOLD + 30)
    summaries = [m for m in pinwatch.slack.top_level() if m.text.startswith("[STORM]")]
    assert len(summaries) == 1

    pinwatch.clock.advance(11 * 60)

    async def all_paged() -> bool:
        alerts = [await pinwatch.alert(i) for i in range(1, THRESHOLD + 31)]
        return all(a.escalation_ts is not None for a in alerts)

    await eventually(all_paged, timeout=15)
    pages = pinwatch.slack.top_level("C0PAYLEADS")
    assert len(pages) == THRESHOLD + len(summaries)  # one per single alert, one for the storm


async def test_alerts_posted_one_pass_at_a_time_still_add_up_to_a_storm(pinwatch: Pinwatch) -> None:
    """Each pass reads only what arrived since the last (bot/storm_history.py): alerts posted in
    earlier passes must still count toward the window."""
    for i in range(THRESHOLD):
        await send_reset_requests(pinwatch, 1, start=i)
        await wait_all_posted(pinwatch, i + 1)
    assert not any(m.text.startswith("[STORM]") for m in pinwatch.slack.top_level("C0PAYMENTS"))

    await send_reset_requests(pinwatch, 1, start=THRESHOLD)
    await wait_all_posted(pinwatch, THRESHOLD + 1)
    last = pinwatch.slack.top_level("C0PAYMENTS")[-1]
    assert last.text.startswith("[STORM]")


async def test_a_follow_up_goes_out_while_its_channels_storm_summary_is_held_back(
    start_pinwatch: StartPinwatch,
) -> None:
    """A channel whose summary is held back offers only its oldest alert to a pass (the
    outbox's oldest_only): a follow-up at its head still goes out at once, storm rows wait."""
    pinwatch = await start_pinwatch(storm_update_gap=60.0)
    await send_reset_requests(pinwatch, THRESHOLD + 1)
    await wait_all_posted(pinwatch, THRESHOLD + 1)
    assert pinwatch.slack.top_level("C0PAYMENTS")[-1].text.startswith("[STORM]")
    posts = len(pinwatch.slack.calls_to("chat.postMessage"))

    success = delivery(security("PIN_REQUEST_SUCCESS"), time=1748811473 + THRESHOLD + 1)
    status, _ = await pinwatch.post_webhook(success)
    assert status == 200
    [*_, reply] = await pinwatch.slack.wait_for_calls("chat.postMessage", posts + 1)
    assert reply.params["metadata"]["event_payload"]["alert_id"] == THRESHOLD + 2
    assert reply.params["text"].startswith("[CRITICAL] Two-step verification turned off")

    await send_reset_requests(pinwatch, 1, start=THRESHOLD + 2)
    await asyncio.sleep(0.5)  # many passes: the row waits for the summary's next rewrite
    assert await pinwatch.store.count_unposted() == (1, pinwatch.clock())
