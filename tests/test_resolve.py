"""Resolve with a verdict: the button, the modal, its submission, what the channel then shows.

What must *not* happen after a resolution (an auto-escalation, a reminder) is shown against a
witness: an unresolved alert beside it whose escalation or reminder does arrive, so the passes
that would have acted on the resolved one have run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import (
    REFERENCE_BODY,
    Pinwatch,
    StartPinwatch,
    action_ids,
    delivery,
    eventually,
    security,
    verdict_values,
    view_submission_payload,
)
from tests.fake_slack import Message, RecordedCall
from tests.test_socket_mode import click_payload
from tests.test_storms import THRESHOLD, send_reset_requests, wait_all_posted

HOUR = 3600.0


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


async def posted_request(pinwatch: Pinwatch, alert_id: int = 1, *, requester: str = "1") -> Message:
    body = (
        REFERENCE_BODY
        if alert_id == 1
        else delivery(
            security("PIN_RESET_REQUEST", requester=requester), time=1748811473 + alert_id
        )
    )
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    alert = await pinwatch.wait_posted(alert_id)
    return pinwatch.slack.message("C0PAYMENTS", str(alert.slack_ts))


async def open_form(
    pinwatch: Pinwatch, alert_id: int = 1, *, action: str = "resolve", user: str = "U0ALICE"
) -> dict[str, Any]:
    """Press Resolve (or Resolve all) and return the modal Slack was asked to open."""
    opened = len(pinwatch.slack.views)
    assert await pinwatch.click(action, alert_id, user=user) == 200
    await pinwatch.slack.wait_for(lambda s: len(s.views) > opened)
    return pinwatch.slack.views[-1]


async def wait_resolved(pinwatch: Pinwatch, alert_id: int = 1) -> None:
    async def done() -> bool:
        return (await pinwatch.alert(alert_id)).resolved is not None

    await eventually(done)


async def acknowledge(pinwatch: Pinwatch, alert_id: int, *, user: str = "U0ALICE") -> None:
    assert await pinwatch.click("acknowledge", alert_id, user=user) == 200

    async def done() -> bool:
        return (await pinwatch.alert(alert_id)).acknowledged is not None

    await eventually(done)


def reminders(pinwatch: Pinwatch, message: Message) -> list[Message]:
    return [
        r
        for r in pinwatch.slack.replies(message.channel, message.ts)
        if r.text.startswith("Reminder: ")
    ]


@pytest.mark.parametrize(
    ("verdict", "label"),
    [
        ("expected_change", "Expected change"),
        ("false_alarm", "False alarm"),
        ("confirmed_takeover", "Confirmed takeover"),
    ],
)
async def test_resolve_records_the_verdict_and_ends_the_alert(
    pinwatch: Pinwatch, verdict: str, label: str
) -> None:
    original = await posted_request(pinwatch)
    view = await open_form(pinwatch)
    assert view["callback_id"] == "pinwatch.resolve"
    [verdicts] = [b for b in view["blocks"] if b.get("block_id") == "verdict"]
    assert [o["value"] for o in verdicts["element"]["options"]] == [
        "expected_change",
        "false_alarm",
        "confirmed_takeover",
    ]

    pinwatch.clock.advance(60)
    note = "Rotated by <@U0BOB> *on purpose*"
    assert await pinwatch.submit_view(view, verdict_values(verdict, note)) == (200, "")
    await wait_resolved(pinwatch)
    await pinwatch.slack.wait_for(
        lambda s: "Resolved by" in shown(s.message("C0PAYMENTS", original.ts))
    )

    updated = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Resolved by <@U0ALICE> <!date^1750000060^" in shown(updated)
    assert f"*{label}*" in shown(updated)
    assert "&lt;@U0BOB&gt;" in shown(updated)  # the note is outside text: no mention smuggled in
    assert action_ids(updated.blocks) == []
    assert f"resolved by alice as {label.lower()}" in updated.text
    alert = await pinwatch.alert(1)
    assert alert.verdict is not None
    assert (alert.verdict.value, alert.resolution_note) == (verdict, note)
    audit = {e.action: e for e in await pinwatch.store.audit_log(1)}
    resolution = audit[f"resolved ({verdict})"]
    assert (resolution.actor.user_id, resolution.actor.at) == ("U0ALICE", 1_750_000_060)
    assert resolution.detail is not None
    assert note in resolution.detail

    # A witness, unresolved: its auto-escalation shows the passes ran past the ack timeout.
    await posted_request(pinwatch, 2)
    pinwatch.clock.advance(11 * 60)
    pages = 2 if verdict == "confirmed_takeover" else 1
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) >= pages)
    await eventually(lambda: _paged(pinwatch, 2))
    paged = pinwatch.slack.top_level("C0PAYLEADS")
    assert len(paged) == pages
    if verdict == "confirmed_takeover":
        # Paged at once, with the note, through the outbox.
        page = next(p for p in paged if p.text.startswith("[CONFIRMED TAKEOVER] "))
        assert "Confirmed as a takeover by <@U0ALICE>" in shown(page)
        assert "Rotated by &lt;@U0BOB&gt;" in shown(page)
        assert "escalated (confirmed)" in audit
    else:
        assert [p.ts for p in paged] == [(await pinwatch.alert(2)).escalation_ts]
        assert (await pinwatch.alert(1)).escalated is None


async def _paged(pinwatch: Pinwatch, alert_id: int) -> bool:
    return (await pinwatch.alert(alert_id)).escalation_ts is not None


async def test_a_submission_without_a_verdict_keeps_the_modal_open(pinwatch: Pinwatch) -> None:
    await posted_request(pinwatch)
    view = await open_form(pinwatch)
    status, body = await pinwatch.submit_view(view, verdict_values(None, "no verdict"))
    assert status == 200
    assert json.loads(body) == {
        "response_action": "errors",
        "errors": {"verdict": "Choose a verdict."},
    }
    forged = verdict_values("it_was_fine")
    status, body = await pinwatch.submit_view(view, forged)
    assert json.loads(body)["errors"] == {"verdict": "Choose a verdict."}
    tampered = {**view, "private_metadata": '{"alert": "1; DROP TABLE alerts"}'}
    status, body = await pinwatch.submit_view(tampered, verdict_values("false_alarm"))
    assert (status, json.loads(body)["response_action"]) == (200, "errors")
    assert (await pinwatch.alert(1)).resolved is None


async def test_only_responders_may_resolve_at_the_button_and_at_the_submission(
    pinwatch: Pinwatch,
) -> None:
    await posted_request(pinwatch)
    assert await pinwatch.click("resolve", 1, user="U0MALLORY", name="mallory") == 200
    [refusal] = await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert refusal.params["user"] == "U0MALLORY"
    assert "Only the responders of team payments" in refusal.params["text"]
    assert pinwatch.slack.views == []

    # The form opened for alice, submitted as mallory: checked again, refused again.
    view = await open_form(pinwatch)
    status, _ = await pinwatch.submit_view(
        view, verdict_values("false_alarm"), user="U0MALLORY", name="mallory"
    )
    assert status == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral", 2)
    assert (await pinwatch.alert(1)).resolved is None
    refused = [e for e in await pinwatch.store.audit_log(1) if e.action.startswith("refused")]
    assert [(e.action, e.actor.user_id) for e in refused] == [
        ("refused resolve", "U0MALLORY"),
        ("refused resolve", "U0MALLORY"),
    ]


async def test_a_second_resolution_changes_nothing_and_says_who(pinwatch: Pinwatch) -> None:
    original = await posted_request(pinwatch)
    first = await open_form(pinwatch)
    second = await open_form(pinwatch, user="U0CAROL")
    assert await pinwatch.submit_view(first, verdict_values("expected_change")) == (200, "")
    await wait_resolved(pinwatch)
    assert await pinwatch.submit_view(
        second, verdict_values("false_alarm"), user="U0CAROL", name="carol"
    ) == (200, "")
    [told] = await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert told.params["user"] == "U0CAROL"
    assert told.params["text"].startswith("Already resolved by <@U0ALICE>")
    assert "as expected change" in told.params["text"]
    resolutions = [e for e in await pinwatch.store.audit_log(1) if e.action.startswith("resolved")]
    assert len(resolutions) == 1
    assert "*Expected change*" in shown(pinwatch.slack.message("C0PAYMENTS", original.ts))
    # The buttons of a resolved alert are gone, and a stale click on one is refused.
    assert await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol") == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral", 2)
    assert (await pinwatch.alert(1)).acknowledged is None


async def test_a_form_slack_could_not_open_is_said_to_the_clicker(pinwatch: Pinwatch) -> None:
    await posted_request(pinwatch)
    pinwatch.slack.fail("views.open", error="expired_trigger_id")
    assert await pinwatch.click("resolve", 1) == 200
    [told] = await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert "expired_trigger_id" in told.params["text"]
    assert "press Resolve again" in told.params["text"]


# --- reminders ----------------------------------------------------------------------------


async def test_an_acknowledged_alert_is_reminded_of_until_resolved_across_a_restart(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    original = await posted_request(first)
    await acknowledge(first, 1)
    first.clock.advance(4 * HOUR - 60)  # the default remind_every is 4h
    witness = await posted_request(first, 2, requester="2")
    await acknowledge(first, 2)
    first.clock.advance(60)
    [reminder] = await _reminded(first, original, 1)
    assert "Reminder: acknowledged by <@U0ALICE> <!date^1750000000^" in shown(reminder)
    assert reminder.text.startswith("Reminder: Two-step verification reset requested")
    assert reminder.thread_ts == original.ts
    assert not reminder.reply_broadcast
    await first.stop()

    # The schedule is in the store: the next reminder comes from the new process, once.
    second = await start_pinwatch((first.slack, first.slack_url))
    second.clock.advance(4 * HOUR)
    await _reminded(second, original, 2)
    await _reminded(second, witness, 1)

    async def both_recorded() -> bool:
        audit = [e.action for e in await second.store.audit_log(1)]
        return audit.count("reminded") == 2

    await eventually(both_recorded)

    # Resolved: no more reminders, though the witness goes on being reminded.
    view = await open_form(second)
    assert await second.submit_view(view, verdict_values("expected_change")) == (200, "")
    await wait_resolved(second)
    second.clock.advance(4 * HOUR)
    await _reminded(second, witness, 2)
    assert len(reminders(second, original)) == 2
    assert (await second.alert(1)).next_reminder_at is None


async def _reminded(pinwatch: Pinwatch, message: Message, count: int) -> list[Message]:
    await pinwatch.slack.wait_for(lambda _: len(reminders(pinwatch, message)) >= count)
    found = reminders(pinwatch, message)
    assert len(found) == count
    return found


async def test_a_team_sets_its_own_reminder_interval(start_pinwatch: StartPinwatch) -> None:
    first = await start_pinwatch()
    text = first.config_path.read_text().replace(
        "    ack_timeout: 10m\n", "    ack_timeout: 10m\n    remind_every: 30m\n"
    )
    first.config_path.write_text(text)
    await first.stop()
    pinwatch = await start_pinwatch((first.slack, first.slack_url))
    original = await posted_request(pinwatch)
    await acknowledge(pinwatch, 1)
    pinwatch.clock.advance(30 * 60)
    await _reminded(pinwatch, original, 1)


async def test_a_storm_summary_gets_one_reminder_for_its_acknowledged_rows(
    pinwatch: Pinwatch,
) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    [summary] = [m for m in pinwatch.slack.top_level() if m.text.startswith("[STORM]")]
    rows = [a for a in [await pinwatch.alert(i) for i in range(1, THRESHOLD + 4)] if a.grouped]
    await acknowledge(pinwatch, rows[0].id, user="U0ALICE")
    pinwatch.clock.advance(60)
    await acknowledge(pinwatch, rows[1].id, user="U0CAROL")
    pinwatch.clock.advance(4 * HOUR)
    [reminder] = await _reminded(pinwatch, summary, 1)
    assert "2 alerts in this summary were acknowledged (by <@U0ALICE>, <@U0CAROL>)" in shown(
        reminder
    )

    # Both rows were reminded by that one reply: the next is due an interval later for both.
    async def due_together() -> bool:
        due = {(await pinwatch.alert(r.id)).next_reminder_at for r in rows[:2]}
        return due == {pinwatch.clock() + 4 * HOUR}

    await eventually(due_together)
    assert len(reminders(pinwatch, summary)) == 1


# --- storms -------------------------------------------------------------------------------


async def test_a_storm_summary_is_resolved_as_a_whole_or_row_by_row(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    [summary] = [m for m in pinwatch.slack.top_level() if m.text.startswith("[STORM]")]
    rows = [a for a in [await pinwatch.alert(i) for i in range(1, THRESHOLD + 4)] if a.grouped]
    assert len(rows) == 3
    assert action_ids(summary.blocks) == ["pinwatch.escalate", "pinwatch.resolve_storm"]

    # Row by row: acknowledged, the row's button becomes Resolve.
    await acknowledge(pinwatch, rows[0].id)
    await pinwatch.slack.wait_for(
        lambda s: (
            _row_button(s.message(summary.channel, summary.ts), rows[0].id) == "pinwatch.resolve"
        )
    )
    view = await open_form(pinwatch, rows[0].id)
    assert await pinwatch.submit_view(view, verdict_values("false_alarm")) == (200, "")
    await wait_resolved(pinwatch, rows[0].id)
    assert (await pinwatch.alert(rows[1].id)).resolved is None

    # As a whole: every row not yet resolved, with one verdict.
    view = await open_form(pinwatch, rows[1].id, action="resolve_storm")
    assert "*2 unresolved alerts*" in json.dumps(view["blocks"])
    assert await pinwatch.submit_view(view, verdict_values("expected_change", "drill")) == (
        200,
        "",
    )
    await wait_resolved(pinwatch, rows[2].id)
    verdicts = [(await pinwatch.alert(r.id)).verdict for r in rows]
    assert [v.value if v else None for v in verdicts] == [
        "false_alarm",
        "expected_change",
        "expected_change",
    ]
    await pinwatch.slack.wait_for(
        lambda s: action_ids(s.message(summary.channel, summary.ts).blocks) == []
    )
    final = pinwatch.slack.message(summary.channel, summary.ts)
    assert all(_row_button(final, r.id) is None for r in rows)
    assert shown(final).count("Resolved by <@U0ALICE>") == 3


def _row_button(message: Message, alert_id: int) -> str | None:
    [row] = [b for b in message.blocks if b.get("block_id") == f"pinwatch-{alert_id}"]
    accessory = row.get("accessory")
    return None if accessory is None else str(accessory["action_id"])


# --- the page race and Socket Mode --------------------------------------------------------


async def test_a_takeover_confirmed_while_the_escalation_is_being_paged_is_paged_too(
    pinwatch: Pinwatch,
) -> None:
    await posted_request(pinwatch)
    view = await open_form(pinwatch)
    confirmed = False

    async def confirm_meanwhile(call: RecordedCall) -> None:
        # Slack has the manual escalation's page; before pinwatch records it, a responder
        # resolves the alert as a confirmed takeover.
        nonlocal confirmed
        if call.params.get("channel") != "#payments-leads" or confirmed:
            return
        confirmed = True
        status, _ = await pinwatch.submit_view(view, verdict_values("confirmed_takeover", "sim"))
        assert status == 200
        await wait_resolved(pinwatch)

    pinwatch.slack.before_answering["chat.postMessage"] = confirm_meanwhile
    assert await pinwatch.click("escalate", 1) == 200
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 2, timeout=10)
    first, second = pinwatch.slack.top_level("C0PAYLEADS")
    assert first.text.startswith("[ESCALATED] ")
    assert second.text.startswith("[CONFIRMED TAKEOVER] ")
    await eventually(lambda: _paged(pinwatch, 1))
    alert = await pinwatch.alert(1)
    assert alert.escalation_ts == second.ts


async def test_resolve_over_socket_mode(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await start_pinwatch(app_token="xapp-test-token")
    await pinwatch.slack.wait_for(lambda s: s.socket is not None)
    original = await posted_request(pinwatch)
    payload = click_payload("resolve", 1, user="U0ALICE", channel="C0PAYMENTS", ts=original.ts)
    payload["trigger_id"] = pinwatch.slack.new_trigger()
    await pinwatch.slack.send_interactive(payload, "envelope-1")
    await pinwatch.slack.wait_for(lambda s: len(s.views) == 1)
    [view] = pinwatch.slack.views

    submission = view_submission_payload(view, verdict_values(None), user="U0ALICE", name="a")
    await pinwatch.slack.send_interactive(submission, "envelope-2")
    await pinwatch.slack.wait_for(lambda s: "envelope-2" in s.socket_acks)
    assert pinwatch.slack.socket_payloads["envelope-2"] == {
        "response_action": "errors",
        "errors": {"verdict": "Choose a verdict."},
    }
    submission = view_submission_payload(
        view, verdict_values("false_alarm"), user="U0ALICE", name="a"
    )
    await pinwatch.slack.send_interactive(submission, "envelope-3")
    await wait_resolved(pinwatch)
    assert pinwatch.slack.socket_payloads.get("envelope-3") is None


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_replicas_remind_once_per_interval(start_pinwatch: StartPinwatch) -> None:
    first = await start_pinwatch()
    second = await start_pinwatch((first.slack, first.slack_url))
    original = await posted_request(first)
    await acknowledge(second, 1)
    for interval in (1, 2, 3):
        first.clock.advance(4 * HOUR)  # one clock for both replicas

        async def rescheduled() -> bool:
            # Reminded, and the next one due an interval from now, as either replica sees it.
            alert = await second.alert(1)
            return alert.next_reminder_at == first.clock() + 4 * HOUR

        await eventually(rescheduled)
        audit = [e.action for e in await first.store.audit_log(1)]
        assert audit.count("reminded") == interval
        assert len(reminders(first, original)) == interval


async def test_a_full_incident_as_the_channel_sees_it(pinwatch: Pinwatch) -> None:
    """Alert, acknowledge, reminder, resolve as an expected change (run with -s to read it)."""
    alert_message = await posted_request(pinwatch)
    story = [("alert", alert_message.transcript())]
    pinwatch.clock.advance(5 * 60)
    await acknowledge(pinwatch, 1)
    await pinwatch.slack.wait_for(
        lambda s: "Acknowledged by" in shown(s.message("C0PAYMENTS", alert_message.ts))
    )
    story.append(
        ("acknowledged", pinwatch.slack.message("C0PAYMENTS", alert_message.ts).transcript())
    )
    pinwatch.clock.advance(4 * HOUR)
    [reminder] = await _reminded(pinwatch, alert_message, 1)
    story.append(("reminder, in the thread", reminder.transcript()))
    pinwatch.clock.advance(20 * 60)
    view = await open_form(pinwatch)
    note = "Alice rotated the PIN for the yearly audit; ticket SEC-1234."
    assert await pinwatch.submit_view(view, verdict_values("expected_change", note)) == (200, "")
    await pinwatch.slack.wait_for(
        lambda s: "Resolved by" in shown(s.message("C0PAYMENTS", alert_message.ts))
    )
    final = pinwatch.slack.message("C0PAYMENTS", alert_message.ts)
    story.append(("resolved as an expected change", final.transcript()))

    assert "[buttons: Acknowledge, Escalate, Resolve]" in story[0][1]
    assert "[buttons: Escalate, Resolve]" in story[1][1]
    assert "Reminder: acknowledged by <@U0ALICE>" in story[2][1]
    assert "*Expected change*" in story[3][1]
    assert note in story[3][1]
    assert "[buttons" not in story[3][1]
    print("\n\n".join(f"### {title}\n{text}" for title, text in story))
