"""Review of the PagerDuty integration (issue 13): what the review found broken, as failing tests,
end to end over loopback against the fake Events API, on both store backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import StartPinwatch, delivery, eventually, security, verdict_values
from tests.fake_pagerduty import (
    OTHER_ROUTING_KEY,
    ROUTING_KEY,
    WEBHOOK_SECRET,
    signed_webhook,
    start_fake_pagerduty,
    webhook_event,
)
from tests.test_pagerduty_e2e import (
    KEY_ENV,
    accepted,
    paging,
    payments_pages_pagerduty,  # noqa: F401  (autouse: the payments team pages PagerDuty)
    post_pagerduty,
    posted,
    shown,
    state_is,
    witness_paged,
)
from tests.test_resolve import open_form, wait_resolved
from tests.test_storms import THRESHOLD, send_reset_requests, wait_all_posted

OFFBOARDED = {
    "field": "account_update",
    "value": {"event": "ACCOUNT_OFFBOARDED", "waba_info": {"waba_id": "102290129340398"}},
}


async def test_a_takeover_after_an_expected_change_verdict_is_not_resolved_at_once(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """A reset request resolved as "our own change" stays a chain's root (main's design): when
    a takeover event follows, the chain is escalated as a takeover. Its PagerDuty incident
    must stay open for the on-call; the resolution came before the takeover and must not
    close it (as an acknowledgement from before a page does not silence it)."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("expected_change", "ours")) == (200, "")
    await wait_resolved(pinwatch)
    pinwatch.clock.advance(60)
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748811500))
    await pinwatch.wait_posted(2)
    pinwatch.clock.advance(60)
    await pinwatch.post_webhook(delivery(OFFBOARDED, time=1748811600))
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [takeover] = accepted(fake, "trigger")
    assert takeover.body is not None
    key = takeover.body["dedup_key"]
    assert key.endswith(":takeover")
    await witness_paged(pinwatch, fake, 4)  # the team's lane has sent all it had for alert 1
    assert [c.dedup_key for c in accepted(fake, "resolve")] == []
    incident = fake.open_incident(key)
    assert incident is not None
    assert incident.status == "triggered"


async def test_an_alert_resolved_while_pagerduty_was_down_is_not_paged_afterwards(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """Escalated, then resolved in Slack before PagerDuty took the trigger (an outage): once
    PagerDuty is back, nobody is woken for an alert already closed."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    fake.fail(503, times=100_000)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(f.calls) >= 1)
    pinwatch.clock.advance(60)
    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("false_alarm", "test")) == (200, "")
    await wait_resolved(pinwatch)
    fake._script.clear()  # PagerDuty is back
    await witness_paged(pinwatch, fake, 2)
    assert not [c for c in accepted(fake, "trigger") if "alert:1:" in str(c.dedup_key)]
    assert not [i for i in fake.incidents if "alert:1:" in i.dedup_key]
    await state_is(pinwatch, 1, "resolved")


async def test_a_webhook_whose_body_arrives_in_two_parts_is_read_whole(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """A body is not always in one TCP read (a proxy, a slow link): the handler must read it
    to its end before checking the signature, or PagerDuty's acknowledgement is refused (401,
    which PagerDuty does not retry) and lost."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    acked = webhook_event("incident.acknowledged", incident_key=trigger.body["dedup_key"])
    body, headers = signed_webhook(acked)
    half = len(body) // 2

    async def in_two_parts() -> AsyncIterator[bytes]:
        yield body[:half]
        await asyncio.sleep(0.3)  # the network's pause between two segments, not a wait
        yield body[half:]

    headers = {**headers, "Content-Length": str(len(body))}
    async with pinwatch.client.post(
        "/pagerduty/webhook", data=in_two_parts(), headers=headers
    ) as response:
        assert (response.status, await response.text()) == (200, "applied")
    assert (await pinwatch.alert(1)).acknowledged is not None


async def test_an_earlier_escalations_incident_closed_in_pagerduty_does_not_close_a_takeover(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """Escalated by hand (incident M), then the chain completes as a takeover (incident T, of
    its own so that M's state cannot silence it). M acknowledged or resolved in PagerDuty (by
    the on-call who got M's page, or by the service's auto-resolve) must not acknowledge or
    resolve the alert, and through it T: the inbox itself says such an incident leaves the
    current one unchanged."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [manual] = accepted(fake, "trigger")
    assert manual.body is not None
    pinwatch.clock.advance(60)
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748811500))
    await pinwatch.wait_posted(2)
    pinwatch.clock.advance(60)
    await pinwatch.post_webhook(delivery(OFFBOARDED, time=1748811600))
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 2)
    takeover = accepted(fake, "trigger")[1]
    assert takeover.body is not None
    assert takeover.body["dedup_key"].endswith(":takeover")

    async def takeover_recorded() -> bool:
        alert = await pinwatch.alert(1)
        return str(alert.pagerduty_kind) == "takeover" and str(alert.pagerduty_state) == "triggered"

    await eventually(takeover_recorded)

    pinwatch.clock.advance(60)
    old = manual.body["dedup_key"]
    acked = webhook_event("incident.acknowledged", incident_key=old, agent_name="Bob Oncall")
    assert (await post_pagerduty(pinwatch, acked))[0] == 200
    resolved = webhook_event("incident.resolved", incident_key=old, agent_name=None)
    assert (await post_pagerduty(pinwatch, resolved))[0] == 200
    await witness_paged(pinwatch, fake, 4)
    assert [c.dedup_key for c in accepted(fake, "acknowledge")] == []
    assert takeover.body["dedup_key"] not in [c.dedup_key for c in accepted(fake, "resolve")]
    incident = fake.open_incident(takeover.body["dedup_key"])
    assert incident is not None
    assert incident.status == "triggered"
    assert (await pinwatch.alert(1)).resolved is None


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_webhook_answered_503_after_its_change_was_committed_still_shows_in_slack(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """The acknowledgement is committed, then remembering the event id fails: 503, and
    PagerDuty delivers it again. The retry finds the alert acknowledged already (unchanged), and
    must still bring the Slack message up to date, which the first attempt never did."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    original = await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    await state_is(pinwatch, 1, "triggered")
    assert pinwatch.database_url is not None
    db = await asyncpg.connect(pinwatch.database_url)
    try:
        await db.execute(
            """CREATE FUNCTION refuse_seen() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'No space left on device'; END $$;
               CREATE TRIGGER refuse_seen BEFORE INSERT ON slack_signatures
               FOR EACH ROW EXECUTE FUNCTION refuse_seen();"""
        )
        acked = webhook_event(
            "incident.acknowledged", incident_key=trigger.body["dedup_key"], agent_name="Jane"
        )
        assert (await post_pagerduty(pinwatch, acked))[0] == 503
        await db.execute(
            "DROP TRIGGER refuse_seen ON slack_signatures; DROP FUNCTION refuse_seen()"
        )
    finally:
        await db.close()
    assert (await pinwatch.alert(1)).acknowledged is not None  # the first attempt's commit
    assert (await post_pagerduty(pinwatch, acked))[0] == 200  # PagerDuty's redelivery
    await pinwatch.slack.wait_for(
        lambda s: "Acknowledged in PagerDuty by Jane" in shown(s.message("C0PAYMENTS", original.ts))
    )


async def test_a_storm_summarys_incident_acknowledged_in_pagerduty_acknowledges_its_paged_row(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """A storm summary's incident is named after its first row, whichever row was escalated.
    Its first row resolved, Escalate pages the next one: PagerDuty's acknowledgement of that
    incident must acknowledge the row that was paged, not try the first (resolved) row and
    change nothing."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    rows = [a for a in [await pinwatch.alert(i) for i in range(1, THRESHOLD + 4)] if a.grouped]
    assert len(rows) == 3
    assert rows[0].team == "payments"
    view = await open_form(pinwatch, rows[0].id)
    assert await pinwatch.submit_view(view, verdict_values("false_alarm")) == (200, "")
    await wait_resolved(pinwatch, rows[0].id)
    assert await pinwatch.click("escalate", rows[1].id) == 200  # the summary's Escalate now
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    assert trigger.body["dedup_key"].startswith(f"pinwatch:alert:{rows[0].id}:")
    await state_is(pinwatch, rows[1].id, "triggered")

    acked = webhook_event(
        "incident.acknowledged", incident_key=trigger.body["dedup_key"], agent_name="Jane"
    )
    assert await post_pagerduty(pinwatch, acked) == (200, "applied")
    paged = await pinwatch.alert(rows[1].id)
    assert paged.acknowledged is not None
    assert paged.acknowledged.name == "Jane"


async def test_a_team_held_back_by_pagerduty_does_not_starve_another_teams_pages(
    start_pinwatch: StartPinwatch, aiohttp_server: Any, config_path: Path
) -> None:
    """PagerDuty rate-limits per integration: the payments team's lane waits out an hour's
    Retry-After with 100 escalations due. An escalation of another team (here the defaults',
    paging its own service) must still be paged meanwhile, not wait behind them for the
    outbox's first 100 rows."""
    text = config_path.read_text()
    old = '    channel: "#security-escalations"\n    mention: ["S0SECLEADS"]\n'
    assert old in text
    config_path.write_text(
        text.replace(old, old + "    pagerduty: {routing_key_env: PD_DEFAULT}\n")
    )
    fake, url = await start_fake_pagerduty(aiohttp_server)
    pinwatch = await start_pinwatch(
        pagerduty_url=url,
        pagerduty_secrets=(WEBHOOK_SECRET,),
        environ={KEY_ENV: ROUTING_KEY, "PD_DEFAULT": OTHER_ROUTING_KEY},
    )
    fake.fail(429, retry_after="3600")
    await send_reset_requests(pinwatch, 100)
    await wait_all_posted(pinwatch, 100)
    pinwatch.clock.advance(11 * 60)  # payments' ack_timeout is 10m: all 100 escalate
    await fake.wait_for(lambda f: [c.status for c in f.calls] == [429])
    other = delivery(security("PIN_RESET_REQUEST", phone="15550001111"), waba="999999999999999")
    assert (await pinwatch.post_webhook(other))[0] == 200
    alert = await pinwatch.wait_posted(101)
    assert alert.team is None
    pinwatch.clock.advance(16 * 60)  # the defaults' ack_timeout is 15m
    await fake.wait_for(
        lambda f: any("alert:101:" in str(c.dedup_key) for c in accepted(f, "trigger")),
        timeout=10,
    )


async def test_a_confirmed_takeover_closes_the_escalations_incident_it_supersedes(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    """Escalated (incident M, paging the on-call), then resolved in Slack as a confirmed
    takeover: the confirmed takeover's incident opens, and stays open for the on-call. M,
    which pinwatch considers resolved, must not stay open beside it, paging on through the
    escalation policy."""
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [manual] = accepted(fake, "trigger")
    assert manual.body is not None
    await state_is(pinwatch, 1, "triggered")
    pinwatch.clock.advance(60)
    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("confirmed_takeover", "ours")) == (
        200,
        "",
    )
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 2)
    confirmed = accepted(fake, "trigger")[1]
    assert confirmed.body is not None
    assert confirmed.body["dedup_key"].endswith(":confirmed")
    await witness_paged(pinwatch, fake, 2)
    assert fake.open_incident(manual.body["dedup_key"]) is None
    assert fake.open_incident(confirmed.body["dedup_key"]) is not None
