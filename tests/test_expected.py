"""Announced expected changes: `/pinwatch expect` opens a window, announced in the team channel;
alerts inside it are posted marked as expected, without mentions or automatic escalation; a
takeover chain is paged all the same. Real HTTP, signed requests, the fake Slack, both backends.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import (
    SLACK_SIGNING_SECRET,
    Pinwatch,
    delivery,
    eventually,
    security,
)
from tests.fake_slack import Message

PAYMENTS_WABA = "102290129340398"
PAYMENTS_NUMBER = "+15550783881"
SUPPORT_NUMBER = "442079460018"


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


async def command(pinwatch: Pinwatch, text: str, *, user: str = "U0ALICE") -> tuple[str, str]:
    """Run /pinwatch TEXT: its immediate ephemeral answer, and the response_url it was given."""
    url = pinwatch.slack.response_url()
    answer = await pinwatch.slack.slash_command(
        pinwatch.client, text, secret=SLACK_SIGNING_SECRET, user=user, response_url=url
    )
    assert answer.status == 200, answer.text
    return answer.ephemeral_text, url


async def later(pinwatch: Pinwatch, url: str) -> str:
    """What pinwatch said through the response_url, once it said it (ephemerally)."""
    [reply] = await pinwatch.slack.wait_response(url)
    assert reply["response_type"] == "ephemeral"
    return str(reply["text"])


async def open_window(pinwatch: Pinwatch, text: str, *, user: str = "U0ALICE") -> str:
    first, url = await command(pinwatch, text, user=user)
    assert first.startswith("Announcing an expected change")
    return await later(pinwatch, url)


def now(pinwatch: Pinwatch) -> int:
    return int(pinwatch.clock())


def event_now(pinwatch: Pinwatch, event: str, **kwargs: Any) -> dict[str, Any]:
    """A delivery whose event happened now (a window covers what happens while it is open)."""
    return delivery(security(event, **kwargs), time=now(pinwatch))


async def send(pinwatch: Pinwatch, body: dict[str, Any]) -> None:
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200


async def a_dispatcher_pass(pinwatch: Pinwatch, alert_id: int) -> None:
    """An unrelated alert posted: the dispatcher has run an escalation pass since."""
    await send(
        pinwatch, delivery(security("PIN_CHANGED", phone=SUPPORT_NUMBER), time=now(pinwatch))
    )
    await pinwatch.wait_posted(alert_id)


async def test_window_opened_announced_matched_and_never_escalated(pinwatch: Pinwatch) -> None:
    reply = await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h PIN rotation by the on-call")
    assert reply.startswith("Window #1 is open until")

    # Announced in the routed team channel, for all to see, before it counts.
    [announcement] = pinwatch.slack.top_level("C0PAYMENTS")
    assert "Expected change announced" in shown(announcement)
    assert "<@U0ALICE> announced an expected change for *+1 555-078-3881*" in shown(announcement)
    assert "PIN rotation by the on-call" in shown(announcement)
    [(announced_ts,)] = await pinwatch.query("SELECT announced_ts FROM expected_windows")
    assert announced_ts == announcement.ts

    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    alert = await pinwatch.wait_posted(1)
    [_, message] = pinwatch.slack.top_level("C0PAYMENTS")
    text = shown(message)
    assert "Expected: announced by <@U0ALICE> (PIN rotation by the on-call), window #1" in text
    assert "subteam" not in text
    assert "S0PAYSEC" not in text
    assert "Escalates automatically" not in text
    assert "expected: announced by u0alice (PIN rotation by the on-call), window #1" in message.text
    assert alert.expected is not None
    assert alert.expected.window_id == 1
    assert alert.ack_deadline is None
    assert alert.mentions == ()
    [(window_id,)] = await pinwatch.query("SELECT window_id FROM alerts WHERE id = 1")
    assert window_id == 1
    audit = await pinwatch.store.audit_log(1)
    assert [(e.action, e.actor.user_id, e.detail) for e in audit if e.action == "expected"] == [
        ("expected", "U0ALICE", "window 1: PIN rotation by the on-call")
    ]

    pinwatch.clock.advance(11 * 60)  # past payments' 10m ack_timeout
    await a_dispatcher_pass(pinwatch, 2)
    assert (await pinwatch.alert(1)).escalated is None
    assert pinwatch.slack.top_level("C0PAYLEADS") == []


async def test_an_event_after_the_window_is_a_normal_alert(pinwatch: Pinwatch) -> None:
    await open_window(pinwatch, f"expect {PAYMENTS_WABA} 15m vendor maintenance")
    pinwatch.clock.advance(15 * 60)  # the window has expired

    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    alert = await pinwatch.wait_posted(1)
    assert alert.expected is None
    message = pinwatch.slack.message("C0PAYMENTS", alert.slack_ts or "")
    assert "<!subteam^S0PAYSEC>" in shown(message)
    assert "Expected" not in shown(message)

    pinwatch.clock.advance(11 * 60)
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    assert (await pinwatch.alert(1)).escalated is not None


async def test_a_cancelled_window_is_announced_and_matches_nothing_after(
    pinwatch: Pinwatch,
) -> None:
    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 2h PIN rotation")
    [announcement] = pinwatch.slack.top_level("C0PAYMENTS")

    first, url = await command(pinwatch, "cancel 1", user="U0CAROL")  # in S0PAYSEC
    assert first == "Ending window #1…"
    assert await later(pinwatch, url) == ("Window #1 has ended; alerts are handled as usual again.")
    [notice] = pinwatch.slack.replies("C0PAYMENTS", announcement.ts)
    assert notice.reply_broadcast  # the channel sees it end, as it saw it open
    assert "<@U0CAROL> ended window #1" in shown(notice)
    assert "Ended early by <@U0CAROL>" in shown(
        pinwatch.slack.message("C0PAYMENTS", announcement.ts)
    )
    [(cancelled_by,)] = await pinwatch.query("SELECT cancelled_by FROM expected_windows")
    assert cancelled_by == "U0CAROL"

    _again, url = await command(pinwatch, "cancel 1")
    assert await later(pinwatch, url) == "Window #1 had already ended."
    listed, _ = await command(pinwatch, "expected")
    assert listed == "No announced window is open."

    pinwatch.clock.advance(1)
    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    alert = await pinwatch.wait_posted(1)
    assert alert.expected is None
    assert alert.ack_deadline is not None


async def test_a_window_counts_from_its_announcement_to_its_end_between_deliveries(
    pinwatch: Pinwatch,
) -> None:
    """The intake keeps the announced windows it routes by: each change must reach it."""
    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    assert (await pinwatch.wait_posted(1)).expected is None

    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h PIN rotation")
    pinwatch.clock.advance(1)  # a new event, not Meta's redelivery of the first
    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    inside = await pinwatch.wait_posted(2)
    assert inside.expected is not None
    assert inside.expected.window_id == 1

    _first, url = await command(pinwatch, "cancel 1", user="U0CAROL")
    assert await later(pinwatch, url) == ("Window #1 has ended; alerts are handled as usual again.")
    pinwatch.clock.advance(1)
    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    after = await pinwatch.wait_posted(3)
    assert after.expected is None
    assert after.ack_deadline is not None


async def test_a_takeover_chain_inside_a_window_is_still_paged(pinwatch: Pinwatch) -> None:
    await open_window(pinwatch, f"expect {PAYMENTS_WABA} 1h PIN rotation")
    start = now(pinwatch)
    await send(pinwatch, delivery(security("PIN_RESET_REQUEST"), time=start))
    request = await pinwatch.wait_posted(1)
    assert request.expected is not None
    await send(pinwatch, delivery(security("PIN_REQUEST_SUCCESS"), time=start + 60))
    success = await pinwatch.wait_posted(2)
    assert success.expected is not None  # completing an expected request is expected too
    partner = {"field": "account_update", "value": {"event": "PARTNER_ADDED"}}
    await send(pinwatch, delivery(partner, time=start + 120))
    takeover = await pinwatch.wait_posted(3)
    assert takeover.expected is None  # a window never covers a partner change

    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    [page] = pinwatch.slack.top_level("C0PAYLEADS")
    assert "Possible takeover" in shown(page)
    assert "<@U0BOB>" in shown(page)
    request = await pinwatch.alert(1)
    assert request.takeover_at is not None
    assert request.escalated is not None

    async def updated() -> bool:
        return "escalated all the same" in shown(
            pinwatch.slack.message("C0PAYMENTS", request.slack_ts or "")
        )

    await eventually(updated)


async def test_a_success_after_a_request_inside_the_window_is_expected(
    pinwatch: Pinwatch,
) -> None:
    # The window names the request only; the success that completes it is expected with it.
    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h PIN_RESET_REQUEST rotating the PIN")
    start = now(pinwatch)
    await send(pinwatch, delivery(security("PIN_REQUEST_SUCCESS"), time=start))
    lone = await pinwatch.wait_posted(1)
    assert lone.expected is None  # a success with no request before it is not

    await send(pinwatch, delivery(security("PIN_RESET_REQUEST"), time=start + 10))
    await pinwatch.wait_posted(2)
    await send(pinwatch, delivery(security("PIN_REQUEST_SUCCESS"), time=start + 20))
    success = await pinwatch.wait_posted(3)
    assert success.expected is not None
    assert success.expected.window_id == 1
    reply = pinwatch.slack.message("C0PAYMENTS", success.slack_ts or "")
    assert "subteam" not in shown(reply)


async def test_a_request_and_its_success_in_one_delivery_are_both_expected(
    pinwatch: Pinwatch,
) -> None:
    # Routed in one batch at intake: the request found inside the window makes the success
    # that follows it in the same batch expected too (no stored row tells it yet).
    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h PIN_RESET_REQUEST rotating the PIN")
    start = now(pinwatch)
    both = delivery(security("PIN_RESET_REQUEST"), security("PIN_REQUEST_SUCCESS"), time=start)
    await send(pinwatch, both)
    request, success = await pinwatch.wait_posted(1), await pinwatch.wait_posted(2)
    assert (request.event.event, success.event.event) == (
        "PIN_RESET_REQUEST",
        "PIN_REQUEST_SUCCESS",
    )
    assert request.expected is not None
    assert success.expected is not None
    assert success.expected.window_id == request.expected.window_id == 1


async def test_a_non_responder_cannot_open_a_window(pinwatch: Pinwatch) -> None:
    reply = await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h trust me", user="U0MALLORY")
    assert reply == "Only the responders of team payments can announce or end its expected changes."
    assert pinwatch.slack.top_level("C0PAYMENTS") == []
    assert await pinwatch.query("SELECT id FROM expected_windows") == []

    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h rotation")
    _first, url = await command(pinwatch, "cancel 1", user="U0MALLORY")
    assert await later(pinwatch, url) == (
        "Only the responders of team payments can announce or end its expected changes."
    )
    [(cancelled_at,)] = await pinwatch.query("SELECT cancelled_at FROM expected_windows")
    assert cancelled_at is None


async def test_no_window_opens_when_its_announcement_fails(pinwatch: Pinwatch) -> None:
    pinwatch.slack.fail("chat.postMessage", error="not_in_channel")
    reply = await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h rotation")
    assert reply == (
        "The announcement could not be posted in <#C0PAYMENTS> (not_in_channel), so no window"
        " is open."
    )
    assert await pinwatch.query("SELECT id FROM expected_windows") == []
    await send(pinwatch, event_now(pinwatch, "PIN_RESET_REQUEST"))
    assert (await pinwatch.wait_posted(1)).expected is None


async def test_expected_lists_the_open_windows(pinwatch: Pinwatch) -> None:
    await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h rotating & testing")
    await open_window(pinwatch, f"expect {PAYMENTS_WABA} 30m PIN_CHANGED new admin")
    listed, _ = await command(pinwatch, "expected", user="U0MALLORY")
    lines = listed.splitlines()
    assert lines[0] == "Announced windows still open:"
    assert lines[1].startswith("• #1 +1 555-078-3881 (`PIN_RESET_REQUEST`, `PIN_REQUEST_SUCCESS`")
    assert lines[1].endswith("announced by <@U0ALICE>: rotating &amp; testing")
    assert lines[2].startswith("• #2 WABA 102290129340398 (`PIN_CHANGED`) until <!date^")


async def test_an_announcement_whose_answer_was_lost_opens_the_window(pinwatch: Pinwatch) -> None:
    """Slack posted it but its answer never came: the channel saw it, so the window is open."""
    pinwatch.slack.fail("chat.postMessage", drop=True)
    reply = await open_window(pinwatch, f"expect {PAYMENTS_NUMBER} 1h rotation")
    assert reply.startswith("Window #1 is open until")
    [announcement] = pinwatch.slack.top_level("C0PAYMENTS")
    [(announced_ts,)] = await pinwatch.query("SELECT announced_ts FROM expected_windows")
    assert announced_ts == announcement.ts


def form_values(**given: str | None) -> dict[str, dict[str, Any]]:
    """The expect form's inputs, as Slack states them on submission."""
    return {
        part: {part: {"type": "plain_text_input", "value": given.get(part)}}
        for part in ("target", "duration", "events", "reason")
    }


async def test_expect_with_no_arguments_opens_a_form_that_announces(pinwatch: Pinwatch) -> None:
    answer = await pinwatch.slack.slash_command(
        pinwatch.client, "expect", secret=SLACK_SIGNING_SECRET, channel="C0PAYMENTS"
    )
    assert (answer.status, answer.text) == (200, "")  # the form is the answer
    await pinwatch.slack.wait_for(lambda s: len(s.views) == 1)
    [form] = pinwatch.slack.views
    assert form["callback_id"] == "pinwatch.expect"

    status, body = await pinwatch.submit_view(form, form_values(target="+15550783881"))
    assert status == 200
    assert json.loads(body) == {
        "response_action": "errors",
        "errors": {"duration": "'': '' is not a duration such as 90s, 15m or 1h."},
    }
    status, body = await pinwatch.submit_view(
        form, form_values(target="+15550783881", duration="48h", reason="x")
    )
    assert json.loads(body)["errors"] == {"duration": "48h is longer than 24h."}
    status, body = await pinwatch.submit_view(
        form,
        form_values(target="+15550783881", duration="2h", events="PIN_CHANGED, PIN_RESET_REQUEST"),
    )
    assert json.loads(body)["errors"] == {"reason": "Say why: a reason is required."}
    assert await pinwatch.query("SELECT id FROM expected_windows") == []

    status, body = await pinwatch.submit_view(
        form,
        form_values(
            target="+15550783881",
            duration="2h",
            events="PIN_CHANGED, PIN_RESET_REQUEST",
            reason="rotation",
        ),
    )
    assert (status, body) == (200, "")  # the form closes
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    [told] = pinwatch.slack.calls_to("chat.postEphemeral")
    assert told.params["channel"] == "C0PAYMENTS"
    assert told.params["user"] == "U0ALICE"
    assert told.params["text"].startswith("Window #1 is open until")
    [announcement] = pinwatch.slack.top_level("C0PAYMENTS")
    assert "`PIN_CHANGED`, `PIN_RESET_REQUEST`" in shown(announcement)


async def test_the_form_refuses_a_non_responder(pinwatch: Pinwatch) -> None:
    await pinwatch.slack.slash_command(
        pinwatch.client, "expect", secret=SLACK_SIGNING_SECRET, user="U0MALLORY"
    )
    await pinwatch.slack.wait_for(lambda s: len(s.views) == 1)
    values = form_values(target="102290129340398", duration="1h", reason="trust me")
    status, _ = await pinwatch.submit_view(pinwatch.slack.views[0], values, user="U0MALLORY")
    assert status == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    [told] = pinwatch.slack.calls_to("chat.postEphemeral")
    assert told.params["text"] == (
        "Only the responders of team payments can announce or end its expected changes."
    )
    assert await pinwatch.query("SELECT id FROM expected_windows") == []
