"""The takeover chain: a reset request, its success, then a re-registration or partner change of
the same WABA within the correlation window, shown as one thread under the request and paged at
once, exactly once per chain. Real HTTP, signed deliveries, the fake Slack, both backends.

A re-registration after a request that was never completed threads under it too (it is the same
story so far), but is not called a takeover and pages nobody: the issue names the success as part
of the chain, and without it two-step verification still protects the number.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot.events import PINWATCH_ACTOR_ID, Actor
from tests.conftest import (
    REFERENCE_BODY,
    Pinwatch,
    StartPinwatch,
    action_ids,
    delivery,
    eventually,
    security,
)
from tests.fake_slack import Message

PAYMENTS_WABA = "102290129340398"
REQUESTED = 1748811473  # the reference reset request's time
TAKEOVER = "Possible takeover: two-step verification off, then the number re-registered"


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def account_update(
    event: str, *, time: int, waba: str = PAYMENTS_WABA, **value: Any
) -> dict[str, Any]:
    change = {"field": "account_update", "value": {"event": event, **value}}
    return delivery(change, waba=waba, time=time)


async def send(pinwatch: Pinwatch, body: dict[str, Any] | bytes) -> None:
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200


async def request_and_success(pinwatch: Pinwatch) -> Message:
    """The reset request posted and acknowledged, then its success threaded under it."""
    await send(pinwatch, REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    assert await pinwatch.click("acknowledge", 1) == 200
    await send(pinwatch, delivery(security("PIN_REQUEST_SUCCESS"), time=REQUESTED + 300))
    success = await pinwatch.wait_posted(2)
    [request] = pinwatch.slack.top_level("C0PAYMENTS")
    assert success.thread_ts == request.ts
    return request


async def pages(pinwatch: Pinwatch) -> list[Message]:
    return pinwatch.slack.top_level("C0PAYLEADS")


async def test_request_success_then_offboarding_is_one_thread_and_one_page(
    pinwatch: Pinwatch,
) -> None:
    request = await request_and_success(pinwatch)
    assert (await pinwatch.alert(1)).acknowledged is not None

    await send(pinwatch, account_update("ACCOUNT_OFFBOARDED", time=REQUESTED + 600))
    offboarded = await pinwatch.wait_posted(3)

    # In the request's thread, broadcast so the channel sees it; no new top-level alert.
    assert offboarded.thread_ts == request.ts
    replies = pinwatch.slack.replies("C0PAYMENTS", request.ts)
    reply = next(r for r in replies if r.ts == offboarded.slack_ts)
    assert reply.reply_broadcast is True
    assert reply.text.startswith("[CRITICAL] Number re-registered: the account was offboarded")
    # The request waits for the ack.
    assert action_ids(reply.blocks) == ["pinwatch.escalate", "pinwatch.resolve"]
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 1

    # One page, although the request was acknowledged before.
    await eventually(lambda: _paged(pinwatch))
    [page] = await pages(pinwatch)
    assert page.text.startswith("[POSSIBLE TAKEOVER] [HIGH] Two-step verification reset")
    assert "possible takeover" in shown(page)
    assert "U0BOB" in shown(page)

    # The request says so, and the audit keeps who escalated it and why.
    async def updated() -> bool:
        return TAKEOVER in shown(pinwatch.slack.message("C0PAYMENTS", request.ts))

    await eventually(updated)
    message = pinwatch.slack.message("C0PAYMENTS", request.ts)
    assert "Escalated as a possible takeover" in shown(message)
    audit = await pinwatch.store.audit_log(1)
    [takeover] = [entry for entry in audit if entry.action == "escalated (takeover)"]
    assert takeover.actor.is_pinwatch
    assert takeover.detail is not None
    assert "possible takeover" in takeover.detail

    # A second re-registration joins the thread and pages nobody again.
    await send(pinwatch, account_update("ACCOUNT_RECONNECTED", time=REQUESTED + 900))
    reconnected = await pinwatch.wait_posted(4)
    assert reconnected.thread_ts == request.ts
    # In this order: a second takeover would clear the page until it is sent again.
    assert (await pinwatch.alert(1)).escalation_ts is not None
    assert len(await pages(pinwatch)) == 1
    assert [e.action for e in await pinwatch.store.audit_log(1)].count("escalated (takeover)") == 1


async def _paged(pinwatch: Pinwatch) -> bool:
    return (await pinwatch.alert(1)).escalation_ts is not None and bool(await pages(pinwatch))


async def test_a_takeover_pages_even_an_alert_escalated_before(pinwatch: Pinwatch) -> None:
    request = await request_and_success(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await eventually(lambda: _paged(pinwatch))
    [manual] = await pages(pinwatch)
    assert "possible takeover" not in shown(manual)

    await send(pinwatch, account_update("PARTNER_ADDED", time=REQUESTED + 600))
    assert (await pinwatch.wait_posted(3)).thread_ts == request.ts

    async def paged_twice() -> bool:
        return (
            len(await pages(pinwatch)) == 2 and (await pinwatch.alert(1)).escalation_ts is not None
        )

    await eventually(paged_twice)
    assert "possible takeover" in shown((await pages(pinwatch))[1])


OTHER_WABA = "209988776655443"


async def test_a_re_registration_of_another_waba_or_too_late_stands_alone(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    # The other WABA goes to the same team and channel: only the WABA tells them apart.
    config_path.write_text(
        config_path.read_text() + f'  - team: payments\n    waba_ids: ["{OTHER_WABA}"]\n'
    )
    pinwatch = await start_pinwatch()
    await request_and_success(pinwatch)
    other_waba = OTHER_WABA
    await send(
        pinwatch, account_update("ACCOUNT_OFFBOARDED", time=REQUESTED + 600, waba=other_waba)
    )
    elsewhere = await pinwatch.wait_posted(3)
    late = REQUESTED + 24 * 3600 + 60  # past the default 24h correlation window
    await send(pinwatch, account_update("ACCOUNT_OFFBOARDED", time=late))
    too_late = await pinwatch.wait_posted(4)

    assert elsewhere.thread_ts is None
    assert too_late.thread_ts is None
    assert elsewhere.slack_channel == too_late.slack_channel == "C0PAYMENTS"
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 3  # the request, and these two
    request = await pinwatch.alert(1)
    assert request.takeover_at is None
    assert request.escalated is None
    assert await pages(pinwatch) == []


async def test_a_re_registration_without_a_success_threads_but_is_no_takeover(
    pinwatch: Pinwatch,
) -> None:
    await send(pinwatch, REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    await send(pinwatch, account_update("ACCOUNT_OFFBOARDED", time=REQUESTED + 600))
    offboarded = await pinwatch.wait_posted(2)

    [request] = pinwatch.slack.top_level("C0PAYMENTS")
    assert offboarded.thread_ts == request.ts
    assert TAKEOVER not in shown(pinwatch.slack.message("C0PAYMENTS", request.ts))
    assert (await pinwatch.alert(1)).takeover_at is None
    assert await pages(pinwatch) == []


async def test_the_whole_chain_in_one_delivery(pinwatch: Pinwatch) -> None:
    """Request, success and offboarding in one delivery: the chain still ends up one thread."""
    body = delivery(security("PIN_RESET_REQUEST", requester="61555822107539"), time=REQUESTED)
    body["entry"].append(
        delivery(security("PIN_REQUEST_SUCCESS"), time=REQUESTED + 300)["entry"][0]
    )
    body["entry"].append(account_update("ACCOUNT_OFFBOARDED", time=REQUESTED + 600)["entry"][0])
    await send(pinwatch, body)
    offboarded = await pinwatch.wait_posted(3)

    [request] = pinwatch.slack.top_level("C0PAYMENTS")
    assert offboarded.thread_ts == request.ts
    await eventually(lambda: _paged(pinwatch))
    assert len(await pages(pinwatch)) == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_replicas_racing_re_registrations_page_once(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    await request_and_success(first)
    await asyncio.gather(
        send(first, account_update("ACCOUNT_OFFBOARDED", time=REQUESTED + 600)),
        send(second, account_update("ACCOUNT_RECONNECTED", time=REQUESTED + 601)),
    )
    await first.wait_posted(3)
    await first.wait_posted(4)
    await eventually(lambda: _paged(first))
    assert (await first.alert(1)).escalation_ts is not None
    assert len(await pages(first)) == 1
    audit = [e.action for e in await first.store.audit_log(1)]
    assert audit.count("escalated (takeover)") == 1
    assert audit.count("paged") == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_the_takeover_guard_changes_once_whichever_replica_races(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    await request_and_success(first)
    actor = Actor(user_id=PINWATCH_ACTOR_ID, name="pinwatch", at=first.clock())
    raced = await asyncio.gather(
        *(store.mark_takeover(1, actor) for store in [first.store, second.store] * 3)
    )
    assert sorted(t.changed for t in raced) == [False] * 5 + [True]
    await eventually(lambda: _paged(first))
    assert len(await pages(first)) == 1
    audit = [e.action for e in await first.store.audit_log(1)]
    assert audit.count("escalated (takeover)") == 1
