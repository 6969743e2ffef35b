"""Announced windows with two replicas on one PostgreSQL: a window opened on one counts on the
other, and racing cancellations end it once."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SLACK_SIGNING_SECRET, Pinwatch, StartPinwatch, delivery, security

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def run(pinwatch: Pinwatch, text: str, *, user: str = "U0ALICE") -> str:
    url = pinwatch.slack.response_url()
    answer = await pinwatch.slack.slash_command(
        pinwatch.client, text, secret=SLACK_SIGNING_SECRET, user=user, response_url=url
    )
    assert answer.status == 200
    [reply] = await pinwatch.slack.wait_response(url)
    return str(reply["text"])


async def test_a_window_opened_on_one_replica_counts_on_the_other(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    assert (await run(first, "expect +15550783881 1h rotation")).startswith("Window #1 is open")

    await second.post_webhook(delivery(security("PIN_RESET_REQUEST"), time=int(first.clock())))
    alert = await second.wait_posted(1)
    assert alert.expected is not None
    assert alert.expected.window_id == 1

    replies = await asyncio.gather(
        run(first, "cancel 1", user="U0ALICE"), run(second, "cancel 1", user="U0CAROL")
    )
    assert sorted(replies) == [
        "Window #1 had already ended.",
        "Window #1 has ended; alerts are handled as usual again.",
    ]
    [announcement] = [m for m in first.slack.top_level("C0PAYMENTS") if m.ts != alert.slack_ts]
    assert len(first.slack.replies("C0PAYMENTS", announcement.ts)) == 1  # one notice of the end
