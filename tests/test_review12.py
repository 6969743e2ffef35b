"""Review of Resolve and reminders: each test here failed on main when it was written."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from bot.events import Actor, Verdict
from bot.render import render_storm
from tests.conftest import (
    Pinwatch,
    StartPinwatch,
    action_ids,
    delivery,
    eventually,
    security,
    verdict_values,
)
from tests.fake_slack import RecordedCall
from tests.test_render import alert as render_alert_fixture
from tests.test_resolve import (
    HOUR,
    _paged,
    acknowledge,
    open_form,
    posted_request,
    reminders,
    shown,
    wait_resolved,
)
from tests.test_storms import THRESHOLD, send_reset_requests, wait_all_posted


def hold_the_first_page(pinwatch: Pinwatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Slack takes the next page to #payments-leads and holds its answer until released: the
    window in which the page is in Slack and pinwatch does not know it yet."""
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(call: RecordedCall) -> None:
        if call.params.get("channel") == "#payments-leads" and not held.is_set():
            held.set()
            await release.wait()

    pinwatch.slack.before_answering["chat.postMessage"] = hold
    return held, release


async def test_a_confirmed_takeover_in_a_paged_summary_is_paged_beside_an_auto_escalation(
    pinwatch: Pinwatch,
) -> None:
    """A summary already paged folds its rows' later escalations into that page; a row resolved
    as a confirmed takeover must still get a page of its own, even when another row's automatic
    escalation waits to be folded in the same pass."""
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    rows = [a for a in [await pinwatch.alert(i) for i in range(1, THRESHOLD + 4)] if a.grouped]
    first, waiting, confirmed = rows
    await acknowledge(pinwatch, confirmed.id)  # its row now shows Resolve, and it never times out

    # The summary's Escalate pages; while that page is in flight, the escalation lane is busy.
    held, release = hold_the_first_page(pinwatch)
    assert await pinwatch.click("escalate", first.id) == 200
    async with asyncio.timeout(5):
        await held.wait()

    # Meanwhile: one row is resolved as a confirmed takeover, another times out.
    view = await open_form(pinwatch, confirmed.id)
    status, _ = await pinwatch.submit_view(view, verdict_values("confirmed_takeover", "it was"))
    assert status == 200
    await wait_resolved(pinwatch, confirmed.id)
    pinwatch.clock.advance(11 * 60)

    async def timed_out() -> bool:
        return (await pinwatch.alert(waiting.id)).escalated is not None

    await eventually(timed_out)
    release.set()

    await pinwatch.slack.wait_for(
        lambda s: any(
            m.text.startswith("[CONFIRMED TAKEOVER] ") for m in s.top_level("C0PAYLEADS")
        ),
        timeout=10,
    )
    [page] = [
        m
        for m in pinwatch.slack.top_level("C0PAYLEADS")
        if m.text.startswith("[CONFIRMED TAKEOVER] ")
    ]

    async def recorded() -> bool:
        return (await pinwatch.alert(confirmed.id)).escalation_ts == page.ts

    await eventually(recorded)


async def test_a_reminder_whose_answer_is_lost_is_posted_once(pinwatch: Pinwatch) -> None:
    """Every other message pinwatch posts is found in Slack, by its metadata, when its answer
    was lost; a reminder is a thread reply that is not in the channel's history."""
    original = await posted_request(pinwatch)
    await acknowledge(pinwatch, 1)
    pinwatch.slack.fail("chat.postMessage", drop=True)
    pinwatch.clock.advance(4 * HOUR)

    async def recorded() -> bool:
        return "reminded" in [e.action for e in await pinwatch.store.audit_log(1)]

    await eventually(recorded)
    assert len(reminders(pinwatch, original)) == 1


@pytest.mark.parametrize(
    "metadata",
    [
        "[" * 3000,  # within Slack's 3000 characters; deeper than json.loads recurses
        '{"alert": 9223372036854775808, "channel": "C0PAYMENTS", "ts": "1.2", "all": false}',
    ],
    ids=["nested", "alert id past 2**63"],
)
async def test_a_tampered_form_is_refused_in_the_modal_not_by_a_crash(
    pinwatch: Pinwatch, metadata: str, caplog: pytest.LogCaptureFixture
) -> None:
    await posted_request(pinwatch)
    view = await open_form(pinwatch)
    tampered = {**view, "private_metadata": metadata}
    status, body = await pinwatch.submit_view(tampered, verdict_values("false_alarm"))
    assert status == 200
    assert json.loads(body)["response_action"] == "errors"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_form_claiming_a_summary_for_a_single_alert_resolves_that_alert(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The modal opens for the alert alone when it is no summary's row; a submission that says
    otherwise is read the same way, not left to fail an assertion in the background."""
    await posted_request(pinwatch)
    view = await open_form(pinwatch)
    metadata = json.loads(view["private_metadata"])
    tampered = {**view, "private_metadata": json.dumps({**metadata, "all": True})}
    assert await pinwatch.submit_view(tampered, verdict_values("false_alarm")) == (200, "")
    await wait_resolved(pinwatch)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_alert_resolved_while_its_page_is_in_flight_still_shows_resolved(
    pinwatch: Pinwatch,
) -> None:
    """The page, once sent, re-renders the alert: from the store as it is then, not from what
    it read before posting (which would bring the buttons back and drop the verdict)."""
    original = await posted_request(pinwatch)
    view = await open_form(pinwatch)
    held, release = hold_the_first_page(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    async with asyncio.timeout(5):
        await held.wait()
    assert await pinwatch.submit_view(view, verdict_values("false_alarm")) == (200, "")
    await pinwatch.slack.wait_for(
        lambda s: "Resolved by" in shown(s.message("C0PAYMENTS", original.ts))
    )
    updates = _answered(pinwatch, "chat.update")
    release.set()

    # The page is recorded, its note posted under the alert, and the alert re-rendered.
    await pinwatch.slack.wait_for(lambda _: _answered(pinwatch, "chat.update") > updates)
    await eventually(lambda: _paged(pinwatch, 1))
    final = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Resolved by <@U0ALICE>" in shown(final)
    assert action_ids(final.blocks) == []


def _answered(pinwatch: Pinwatch, method: str) -> int:
    return sum(1 for c in pinwatch.slack.calls_to(method) if not c.pending)


async def test_resolve_all_audits_each_row_under_its_own_teams_responders(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    """Two teams may share a channel, so a storm summary may hold rows of both: each row's
    resolution is kept with the responders that let the resolver act on that row."""
    config_path.write_text(
        config_path.read_text().replace('channel: "#support-security"', 'channel: "C0PAYMENTS"')
    )
    pinwatch = await start_pinwatch()
    await send_reset_requests(pinwatch, THRESHOLD + 1)
    await wait_all_posted(pinwatch, THRESHOLD + 1)
    for i in (1, 2):
        body = delivery(
            security("PIN_RESET_REQUEST", phone="442079460018", requester=f"s{i}"),
            time=1748812000 + i,
        )
        assert (await pinwatch.post_webhook(body))[0] == 200
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    rows = [a for a in [await pinwatch.alert(i) for i in range(1, THRESHOLD + 4)] if a.grouped]
    assert {r.team for r in rows} == {"payments", "support"}
    assert len({(r.slack_channel, r.slack_ts) for r in rows}) == 1

    view = await open_form(pinwatch, rows[0].id, action="resolve_storm")
    assert await pinwatch.submit_view(view, verdict_values("false_alarm")) == (200, "")
    for row in rows:
        await wait_resolved(pinwatch, row.id)
        [resolution] = [
            e for e in await pinwatch.store.audit_log(row.id) if e.action.startswith("resolved")
        ]
        assert resolution.detail is not None
        assert f"team {row.team} in the routing file now" in resolution.detail


async def test_a_reset_completed_after_a_false_alarm_verdict_does_not_go_unnoticed(
    pinwatch: Pinwatch,
) -> None:
    """DESIGN.md: a success is threaded under the *open* reset request; with none, it is a
    standalone critical alert with both buttons (and so is escalated when nobody acknowledges
    it). A request judged a false alarm is not open, and its success contradicts the verdict."""
    original = await posted_request(pinwatch)
    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("false_alarm", "noise")) == (200, "")
    await wait_resolved(pinwatch)
    pinwatch.clock.advance(60)
    success = delivery(security("PIN_REQUEST_SUCCESS"), time=1748811473 + 300)
    assert (await pinwatch.post_webhook(success))[0] == 200
    alert = await pinwatch.wait_posted(2)
    assert alert.thread_ts is None
    standalone = pinwatch.slack.message("C0PAYMENTS", str(alert.slack_ts))
    assert standalone.text.startswith("[CRITICAL] Two-step verification turned off")
    assert (await pinwatch.alert(1)).verification_off_at is None
    assert "now *off*" not in shown(pinwatch.slack.message("C0PAYMENTS", original.ts))
    pinwatch.clock.advance(11 * 60)  # the team's ack_timeout is 10m
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) >= 1, timeout=3)


async def test_a_reset_completed_after_an_expected_change_verdict_stays_in_its_story(
    pinwatch: Pinwatch,
) -> None:
    original = await posted_request(pinwatch)
    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("expected_change", "ours")) == (
        200,
        "",
    )
    await wait_resolved(pinwatch)
    success = delivery(security("PIN_REQUEST_SUCCESS"), time=1748811473 + 300)
    assert (await pinwatch.post_webhook(success))[0] == 200
    alert = await pinwatch.wait_posted(2)
    assert alert.thread_ts == original.ts


def test_a_storm_row_keeps_its_other_status_out_of_the_quoted_note() -> None:
    """A storm row puts its status lines on one line after the other; the note is quoted to the
    end of its line, so whatever follows it there reads as part of what the resolver wrote."""
    acked = Actor(user_id="U0CAROL", name="carol", at=1_750_000_000.0)
    resolver = Actor(user_id="U0ALICE", name="alice", at=1_750_000_600.0)
    rows = [
        replace(
            render_alert_fixture(),
            id=i,
            grouped=True,
            acknowledged=acked,
            resolved=resolver,
            verdict=Verdict.FALSE_ALARM,
            resolution_note="first line\nsecond line",
        )
        for i in (1, 2)
    ]
    message = render_storm(rows, threshold=20, window=60)
    [row] = [b for b in message.blocks if b.get("block_id") == "pinwatch-1"]
    quoted = [line for line in row["text"]["text"].splitlines() if line.startswith(">")]
    assert quoted == [">first line", ">second line"]
