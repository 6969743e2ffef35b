"""A flood in one channel never holds up the alerts of another (issue 14's W3s, as a test)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from bot.store import open_store
from tests.conftest import Pinwatch, delivery, eventually, security
from tests.fake_slack import RecordedCall
from tests.test_group_commit import change

FLOOD = 800  # more than one outbox read's worth of the flooded channel's alerts
SUPPORT_PHONE = "+44 20 7946 0018"  # routed to C0SUPPORT; the flood goes to C0PAYMENTS


async def flood_then_elsewhere(pinwatch: Pinwatch) -> None:
    """FLOOD reset requests for the payments channel, then one for the support channel."""
    for start in range(0, FLOOD, 100):
        changes = [
            security("PIN_RESET_REQUEST", requester=f"flood-{i}") for i in range(start, start + 100)
        ]
        status, _ = await pinwatch.post_webhook(delivery(*changes, time=1748811473 + start))
        assert status == 200

    status, _ = await pinwatch.post_webhook(
        delivery(security("PIN_RESET_REQUEST", phone=SUPPORT_PHONE, requester="elsewhere"))
    )
    assert status == 200


async def test_a_new_alert_elsewhere_is_posted_while_a_flooded_channel_is_stuck(
    pinwatch: Pinwatch,
) -> None:
    # The flooded channel's storm summary hangs in Slack, so its lane is busy and every one of
    # its alerts stays waiting in the outbox.
    stuck = asyncio.Event()

    async def hang_storm_summaries(call: RecordedCall) -> None:
        if str(call.params.get("text", "")).startswith("[STORM]"):
            await stuck.wait()

    pinwatch.slack.before_answering["chat.postMessage"] = hang_storm_summaries
    await flood_then_elsewhere(pinwatch)

    async def posted_elsewhere() -> bool:
        return bool(pinwatch.slack.top_level("C0SUPPORT"))

    try:
        await eventually(posted_elsewhere, timeout=5)
        [message] = pinwatch.slack.top_level("C0SUPPORT")
        assert "elsewhere" in str(message.blocks)
        unposted, _ = await pinwatch.store.count_unposted()
        assert unposted > 500  # the flood is still waiting behind its stuck summary
    finally:
        stuck.set()


async def test_the_outbox_leaves_out_the_channels_it_is_told_to_skip(
    database_url: str | None, tmp_path: Path
) -> None:
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    try:
        ids = await store.add_events([change(f"1555000{i:04d}") for i in range(6)], received_at=1.0)
        alerts = await store.get_many([i for i in ids if i is not None])
        channels = ["#a", "#b", "#c"]
        await store.set_routes(
            [replace(a, channel=channels[n % 3], team=None) for n, a in enumerate(alerts)]
        )
        assert [(e.id, e.channel) for e in await store.outbox(skip={"#b"})] == [
            (1, "#a"),
            (3, "#c"),
            (4, "#a"),
            (6, "#c"),
        ]
        assert [e.id for e in await store.outbox(skip={"#a", "#c"}, per_channel=1)] == [2]
    finally:
        await store.close()


async def test_a_channel_asked_for_its_oldest_alone_gives_just_that(
    database_url: str | None, tmp_path: Path
) -> None:
    """A held storm summary's channel: only its head can go out before the hold ends, and a
    pass must not read its whole backlog to find that out."""
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    try:
        ids = await store.add_events([change(f"1555000{i:04d}") for i in range(7)], received_at=1.0)
        alerts = await store.get_many([i for i in ids if i is not None])
        channels = ["#a", "#b", "#c"]
        await store.set_routes(
            [replace(a, channel=channels[n % 3], team=None) for n, a in enumerate(alerts)]
        )
        assert [(e.id, e.channel) for e in await store.outbox(oldest_only={"#a"})] == [
            (1, "#a"),
            (2, "#b"),
            (3, "#c"),
            (5, "#b"),
            (6, "#c"),
        ]
        held_and_skipped = await store.outbox(skip={"#b"}, oldest_only={"#a", "#c"})
        assert [e.id for e in held_and_skipped] == [1, 3]
        assert [e.id for e in await store.outbox(skip={"#a"}, oldest_only={"#a"})] == [2, 3, 5, 6]
    finally:
        await store.close()
