"""Acknowledge and Escalate: signed Slack clicks in, what the channel then shows."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import (
    REFERENCE_BODY,
    SLACK_SIGNING_SECRET,
    Pinwatch,
    StartPinwatch,
    action_ids,
    block_actions_body,
    delivery,
    security,
    slack_signature,
    view_submission_body,
)
from tests.fake_slack import Message


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


async def posted_reset_request(pinwatch: Pinwatch) -> Message:
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    return message


# --- refused first -------------------------------------------------------------------------


async def test_bad_stale_or_replayed_signatures_are_401(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    assert await pinwatch.click("acknowledge", 1, secret="not-the-signing-secret") == 401
    stale = int(pinwatch.clock()) - 6 * 60
    assert await pinwatch.click("acknowledge", 1, timestamp=stale) == 401
    future = int(pinwatch.clock()) + 6 * 60
    assert await pinwatch.click("acknowledge", 1, timestamp=future) == 401

    body = b"payload=%7B%7D"
    for stamp in ("not-a-number", "", "1e9"):
        headers = {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(SLACK_SIGNING_SECRET, stamp, body),
        }
        async with pinwatch.client.post("/slack/actions", data=body, headers=headers) as response:
            assert response.status == 401

    # A valid request sent twice, by a responder: applied once, the replay refused.
    alert = await pinwatch.alert(1)
    replayed = block_actions_body(
        "pinwatch.acknowledge", 1, user="U0ALICE", name="alice", alert=alert
    )
    assert await pinwatch.click("acknowledge", 1, body=replayed) == 200
    await pinwatch.slack.wait_for_calls("chat.update")
    assert await pinwatch.click("acknowledge", 1, body=replayed) == 401

    # An applied replay would tell alice "Already acknowledged". carol's click is applied after
    # it would have been (clicks start in arrival order, and hers also asks Slack for the
    # members of S0PAYSEC), so the first ephemeral must be carol's.
    assert await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol") == 200
    [told] = await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert told.params["user"] == "U0CAROL"
    acknowledged = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert [e.actor.user_id for e in acknowledged] == ["U0ALICE"]


async def test_unreadable_payload_is_400_and_foreign_actions_are_ignored(
    pinwatch: Pinwatch,
) -> None:
    await posted_reset_request(pinwatch)
    assert await pinwatch.click("acknowledge", 1, body=b"payload=%7Bnot+json") == 400
    assert await pinwatch.click("acknowledge", 1, body=b"nothing=here") == 400
    # A view_submission must say whose and which view; another app's modal is not ours.
    assert (
        await pinwatch.click(
            "acknowledge", 1, body=b"payload=%7B%22type%22%3A%22view_submission%22%7D"
        )
        == 400
    )
    foreign = view_submission_body(
        {"blocks": [], "callback_id": "someone-elses-modal"}, {}, user="U0ALICE", name="alice"
    )
    assert await pinwatch.post_slack_actions(foreign) == (200, "")
    assert await pinwatch.click("someone-elses-button", 1) == 200

    # Nothing to wait for if they were ignored; carol's acknowledgement, which also asks Slack
    # for S0PAYSEC's members, is applied after any of them would have been.
    assert await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol") == 200
    await pinwatch.slack.wait_for_calls("chat.update")
    acknowledged = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert [e.actor.user_id for e in acknowledged] == ["U0CAROL"]
    assert pinwatch.slack.calls_to("chat.postEphemeral") == []


# --- acknowledge ---------------------------------------------------------------------------


async def test_acknowledge_updates_the_message_and_records_who_and_when(pinwatch: Pinwatch) -> None:
    original = await posted_reset_request(pinwatch)
    assert action_ids(original.blocks) == [
        "pinwatch.acknowledge",
        "pinwatch.escalate",
        "pinwatch.resolve",
    ]

    pinwatch.clock.advance(42)
    assert await pinwatch.click("acknowledge", 1, user="U0ALICE", name="alice") == 200
    await pinwatch.slack.wait_for_calls("chat.update")

    updated = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Acknowledged by <@U0ALICE> <!date^1750000042^" in shown(updated)
    assert action_ids(updated.blocks) == ["pinwatch.escalate", "pinwatch.resolve"]
    assert "acknowledged by alice" in updated.text

    alert = await pinwatch.alert(1)
    assert alert.acknowledged is not None
    assert (alert.acknowledged.user_id, alert.acknowledged.name) == ("U0ALICE", "alice")
    assert alert.acknowledged.at == 1_750_000_042
    audit = await pinwatch.store.audit_log(1)
    assert [(e.action, e.actor.user_id) for e in audit] == [
        ("posted", "pinwatch"),
        ("acknowledged", "U0ALICE"),
    ]


async def test_username_is_used_when_slack_sends_no_name(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    assert await pinwatch.click("acknowledge", 1, user="U0CAROL", name=None) == 200
    await pinwatch.slack.wait_for_calls("chat.update")
    alert = await pinwatch.alert(1)
    assert alert.acknowledged is not None
    assert alert.acknowledged.name == "u0carol"


async def test_second_acknowledgement_changes_nothing_and_says_who(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await pinwatch.click("acknowledge", 1, user="U0ALICE")
    await pinwatch.slack.wait_for_calls("chat.update")
    await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol")
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")

    [ephemeral] = pinwatch.slack.calls_to("chat.postEphemeral")
    assert ephemeral.params["user"] == "U0CAROL"
    assert ephemeral.params["text"].startswith("Already acknowledged by <@U0ALICE>")
    assert len(pinwatch.slack.calls_to("chat.update")) == 1
    acknowledgements = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert len(acknowledgements) == 1


async def test_racing_acknowledgements_give_exactly_one(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    statuses = await asyncio.gather(
        pinwatch.click("acknowledge", 1, user="U0ALICE"),
        pinwatch.click("acknowledge", 1, user="U0CAROL"),
        pinwatch.click("acknowledge", 1, user="U0DAVE"),
    )
    assert list(statuses) == [200, 200, 200]
    await pinwatch.slack.wait_for_calls("chat.postEphemeral", 2)
    await pinwatch.slack.wait_for_calls("chat.update")
    acknowledgements = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert len(acknowledgements) == 1
    assert len(pinwatch.slack.calls_to("chat.update")) == 1


async def test_someone_outside_the_responders_is_refused(pinwatch: Pinwatch) -> None:
    original = await posted_reset_request(pinwatch)
    assert await pinwatch.click("acknowledge", 1, user="U0MALLORY", name="mallory") == 200
    await pinwatch.click("escalate", 1, user="U0MALLORY", name="mallory")
    await pinwatch.slack.wait_for_calls("chat.postEphemeral", 2)

    for call in pinwatch.slack.calls_to("chat.postEphemeral"):
        assert call.params["user"] == "U0MALLORY"
        assert "Only the responders of team payments" in call.params["text"]
    alert = await pinwatch.alert(1)
    assert alert.acknowledged is None
    assert alert.escalated is None
    assert pinwatch.slack.message("C0PAYMENTS", original.ts).updates == []
    # Membership of S0PAYSEC was asked of Slack once and then cached.
    assert len(pinwatch.slack.calls_to("usergroups.users.list")) == 1


async def test_with_no_responders_anyone_in_the_channel_may_act(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(delivery(security("PIN_RESET_REQUEST", phone="442079460018")))
    await pinwatch.wait_posted(1)
    await pinwatch.click("acknowledge", 1, user="U0ANYONE")
    await pinwatch.slack.wait_for_calls("chat.update")
    assert (await pinwatch.alert(1)).acknowledged is not None


# --- escalate ------------------------------------------------------------------------------


async def test_escalate_pages_the_escalation_channel_and_marks_the_alert(
    pinwatch: Pinwatch,
) -> None:
    original = await posted_reset_request(pinwatch)
    assert await pinwatch.click("escalate", 1, user="U0ALICE") == 200
    await pinwatch.slack.wait_for_calls("chat.update")

    [page] = pinwatch.slack.top_level("C0PAYLEADS")
    assert "<@U0BOB>" in shown(page)
    assert "Escalated by <@U0ALICE>" in shown(page)
    assert f"https://fake.slack.test/archives/C0PAYMENTS/p{original.ts.replace('.', '')}" in shown(
        page
    )
    [note] = pinwatch.slack.replies("C0PAYMENTS", original.ts)
    assert "Escalated by <@U0ALICE>" in shown(note)
    assert "#payments-leads" in shown(note)
    updated = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Escalated by <@U0ALICE>" in shown(updated)
    assert action_ids(updated.blocks) == ["pinwatch.acknowledge", "pinwatch.resolve"]

    alert = await pinwatch.alert(1)
    assert alert.escalation_channel == "C0PAYLEADS"


async def test_escalating_twice_pages_once(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await asyncio.gather(
        pinwatch.click("escalate", 1, user="U0ALICE"),
        pinwatch.click("escalate", 1, user="U0CAROL"),
    )
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    await pinwatch.slack.wait_for_calls("chat.update")
    assert "Already escalated by" in pinwatch.slack.calls_to("chat.postEphemeral")[0].params["text"]
    assert len(pinwatch.slack.top_level("C0PAYLEADS")) == 1


async def test_an_escalated_alert_can_still_be_acknowledged(pinwatch: Pinwatch) -> None:
    original = await posted_reset_request(pinwatch)
    await pinwatch.click("escalate", 1, user="U0ALICE")
    await pinwatch.slack.wait_for_calls("chat.update")
    await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol")
    await pinwatch.slack.wait_for_calls("chat.update", 2)

    final = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Escalated by <@U0ALICE>" in shown(final)
    assert "Acknowledged by <@U0CAROL>" in shown(final)
    assert action_ids(final.blocks) == ["pinwatch.resolve"]


async def test_escalation_page_waits_out_a_slack_outage(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    pinwatch.slack.fail("chat.postMessage", times=3, status=500)
    await pinwatch.click("escalate", 1, user="U0ALICE")
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1, timeout=10)


# --- automatic escalation -------------------------------------------------------------------


async def test_unacknowledged_reset_request_is_escalated_after_its_timeout(
    pinwatch: Pinwatch,
) -> None:
    original = await posted_reset_request(pinwatch)
    pinwatch.clock.advance(9 * 60)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))  # a pass of the dispatcher
    await pinwatch.wait_posted(2)
    assert pinwatch.slack.top_level("C0PAYLEADS") == []

    pinwatch.clock.advance(61)  # payments' ack_timeout is 10m
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    [page] = pinwatch.slack.top_level("C0PAYLEADS")
    assert "Escalated automatically" in shown(page)
    await pinwatch.slack.wait_for_calls("chat.update")
    assert "Automatically escalated" in shown(pinwatch.slack.message("C0PAYMENTS", original.ts))
    audit = [e.action for e in await pinwatch.store.audit_log(1)]
    assert "escalated (automatic)" in audit


async def test_acknowledged_alert_is_not_escalated(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await pinwatch.click("acknowledge", 1)
    await pinwatch.slack.wait_for_calls("chat.update")
    pinwatch.clock.advance(3600)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    await pinwatch.wait_posted(2)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED"), time=1748811999))
    await pinwatch.wait_posted(3)
    assert pinwatch.slack.top_level("C0PAYLEADS") == []


async def test_deadline_that_passed_while_down_escalates_right_after_start(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    await posted_reset_request(first)
    await first.stop()

    first.clock.advance(11 * 60)
    second = await start_pinwatch((first.slack, first.slack_url))
    await second.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    assert "Escalated automatically" in shown(second.slack.top_level("C0PAYLEADS")[0])


# --- correlation ---------------------------------------------------------------------------


async def test_success_is_threaded_under_its_request_and_updates_it(pinwatch: Pinwatch) -> None:
    original = await posted_reset_request(pinwatch)
    success = delivery(security("PIN_REQUEST_SUCCESS"), time=1748812000)
    await pinwatch.post_webhook(success)
    await pinwatch.slack.wait_for_calls("chat.update")

    [reply] = pinwatch.slack.replies("C0PAYMENTS", original.ts)
    assert reply.reply_broadcast is True
    assert "Two-step verification is now off" in shown(reply)
    assert action_ids(reply.blocks) == []
    updated = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Two-step verification is now *off*" in shown(updated)
    assert len(pinwatch.slack.top_level()) == 1


async def test_success_with_no_request_is_a_standalone_critical_alert(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS")))
    await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert message.text.startswith("[CRITICAL]")
    assert action_ids(message.blocks) == [
        "pinwatch.acknowledge",
        "pinwatch.escalate",
        "pinwatch.resolve",
    ]


async def test_pin_changed_carries_escalate_and_resolve_only(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert action_ids(message.blocks) == ["pinwatch.escalate", "pinwatch.resolve"]
