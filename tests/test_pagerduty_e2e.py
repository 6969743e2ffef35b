"""PagerDuty both ways, end to end: escalations paged through the Events API (a fake one on
loopback), Slack's acknowledgements and resolutions following, and PagerDuty's v3 webhooks
coming back into Slack. On both store backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REFERENCE_BODY,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
    verdict_values,
)
from tests.fake_pagerduty import (
    ROUTING_KEY,
    WEBHOOK_SECRET,
    FakePagerDuty,
    RecordedEvent,
    signed_webhook,
    start_fake_pagerduty,
    webhook_event,
)
from tests.fake_slack import Message
from tests.schema_history import downgrade
from tests.test_resolve import acknowledge, open_form, wait_resolved

KEY_ENV = "PD_PAYMENTS_KEY"
BAD_ROUTING_KEY = "ffffffffffffffffffffffffffffffff"  # 32 characters, but no such integration


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


async def paging(
    start_pinwatch: StartPinwatch,
    aiohttp_server: Any,
    *,
    routing_key: str = ROUTING_KEY,
    pagerduty: tuple[FakePagerDuty, str] | None = None,
    slack: Any = None,
) -> tuple[Pinwatch, FakePagerDuty]:
    """pinwatch whose payments team also pages PagerDuty, against a fake Events API."""
    fake, url = pagerduty or await start_fake_pagerduty(aiohttp_server)
    pinwatch = await start_pinwatch(
        slack,
        pagerduty_url=url,
        pagerduty_secrets=(WEBHOOK_SECRET,),
        environ={KEY_ENV: routing_key},
    )
    return pinwatch, fake


@pytest.fixture(autouse=True)
def payments_pages_pagerduty(config_path: Path) -> None:
    """The payments team's escalation names a PagerDuty routing key variable."""
    text = config_path.read_text()
    old = 'escalation: {channel: "#payments-leads", mention: ["U0BOB"]}'
    assert old in text
    config_path.write_text(
        text.replace(
            old,
            'escalation: {channel: "#payments-leads", mention: ["U0BOB"],'
            f" pagerduty: {{routing_key_env: {KEY_ENV}}}}}",
        )
    )


async def posted(pinwatch: Pinwatch, body: Any = REFERENCE_BODY, alert_id: int = 1) -> Message:
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    alert = await pinwatch.wait_posted(alert_id)
    return pinwatch.slack.message("C0PAYMENTS", str(alert.slack_ts))


def accepted(fake: FakePagerDuty, action: str) -> list[RecordedEvent]:
    return [c for c in fake.calls if c.action == action and c.status == 202]


async def state_is(pinwatch: Pinwatch, alert_id: int, state: str) -> None:
    async def reached() -> bool:
        alert = await pinwatch.alert(alert_id)
        return alert.pagerduty_state is not None and alert.pagerduty_state.value == state

    await eventually(reached, timeout=10)


async def witness_paged(pinwatch: Pinwatch, fake: FakePagerDuty, alert_id: int) -> None:
    """Escalate a new alert and wait for its trigger: the team's lane sends in alert order, so
    whatever was due for the earlier alerts has been sent by then."""
    await posted(pinwatch, delivery(security("PIN_RESET_REQUEST"), time=alert_id), alert_id)
    assert await pinwatch.click("escalate", alert_id) == 200
    await fake.wait_for(
        lambda f: any(
            c.dedup_key and c.dedup_key.startswith(f"pinwatch:alert:{alert_id}:")
            for c in accepted(f, "trigger")
        )
    )


# --- out: escalations page, Slack's steps follow --------------------------------------------


async def test_an_escalated_alert_is_paged_acknowledged_and_resolved_in_pagerduty(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    original = await posted(pinwatch)
    assert await pinwatch.click("escalate", 1, user="U0ALICE") == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    body = trigger.body
    assert body["routing_key"] == ROUTING_KEY
    key = body["dedup_key"]
    assert key.startswith("pinwatch:alert:1:")
    assert body["payload"]["summary"] == (
        "Escalated by alice: Two-step verification reset requested for +1 555-078-3881"
        " (WABA 102290129340398, team payments)"
    )
    assert body["payload"]["severity"] == "error"  # pinwatch's high
    details = body["payload"]["custom_details"]
    assert details["waba_id"] == "102290129340398"
    assert details["phone_number"] == "+1 555-078-3881"
    assert details["event"] == "PIN_RESET_REQUEST"
    assert details["requester"] == "61555822107539"
    permalink = f"https://fake.slack.test/archives/C0PAYMENTS/p{original.ts.replace('.', '')}"
    assert body["links"] == [{"href": permalink, "text": "The alert in Slack"}]
    await state_is(pinwatch, 1, "triggered")

    pinwatch.clock.advance(60)
    await acknowledge(pinwatch, 1, user="U0CAROL")
    await fake.wait_for(lambda f: len(accepted(f, "acknowledge")) == 1)
    incident = fake.open_incident(key)
    assert incident is not None
    assert incident.status == "acknowledged"
    await state_is(pinwatch, 1, "acknowledged")

    view = await open_form(pinwatch)
    assert await pinwatch.submit_view(view, verdict_values("expected_change")) == (200, "")
    await fake.wait_for(lambda f: len(accepted(f, "resolve")) == 1)
    assert fake.open_incident(key) is None
    assert [i.status for i in fake.incidents_for(key)] == ["resolved"]
    await state_is(pinwatch, 1, "resolved")
    audit = [e.action for e in await pinwatch.store.audit_log(1)]
    assert [a for a in audit if a.startswith("pagerduty")] == [
        "pagerduty triggered (manual)",
        "pagerduty acknowledged (manual)",
        "pagerduty resolved (manual)",
    ]
    print("\nPAGERDUTY events of one escalated, acknowledged and resolved alert:")
    for call in fake.calls:
        assert call.body is not None
        print(json.dumps({**call.body, "routing_key": "(the key)"}, indent=1, sort_keys=True))


async def test_automatic_escalations_page_and_no_earlier_acknowledgement_silences_a_takeover(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    pinwatch.clock.advance(11 * 60)  # payments' ack_timeout is 10m
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [automatic] = accepted(fake, "trigger")
    assert automatic.body is not None
    assert automatic.body["payload"]["summary"].startswith("Not acknowledged in time: ")
    pinwatch.clock.advance(60)
    await acknowledge(pinwatch, 1)
    pinwatch.clock.advance(60)
    await fake.wait_for(lambda f: len(accepted(f, "acknowledge")) == 1)

    # The chain completes: a takeover opens an incident of its own, critical, not acknowledged.
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748811500))
    await pinwatch.wait_posted(2)
    offboarded = {
        "field": "account_update",
        "value": {"event": "ACCOUNT_OFFBOARDED", "waba_info": {"waba_id": "102290129340398"}},
    }
    await pinwatch.post_webhook(delivery(offboarded, time=1748811600))
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 2)
    takeover = accepted(fake, "trigger")[1]
    assert takeover.body is not None
    assert takeover.body["dedup_key"].endswith(":takeover")
    assert takeover.body["payload"]["severity"] == "critical"
    await state_is(pinwatch, 1, "triggered")
    await witness_paged(pinwatch, fake, 4)
    incident = fake.open_incident(takeover.body["dedup_key"])
    assert incident is not None
    assert incident.status == "triggered"
    assert len(accepted(fake, "acknowledge")) == 1  # the earlier acknowledgement stays earlier


async def test_a_confirmed_takeover_pages_with_the_note_and_stays_open(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    view = await open_form(pinwatch)
    note = "Owner did not change it; Meta support ticket 42 opened."
    assert await pinwatch.submit_view(view, verdict_values("confirmed_takeover", note)) == (
        200,
        "",
    )
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    assert trigger.body["dedup_key"].endswith(":confirmed")
    assert trigger.body["payload"]["summary"].startswith("Confirmed takeover: ")
    assert trigger.body["payload"]["custom_details"]["note"] == note
    await state_is(pinwatch, 1, "triggered")
    await witness_paged(pinwatch, fake, 2)
    # Resolved in pinwatch, but the on-call closes a confirmed takeover in PagerDuty.
    assert accepted(fake, "resolve") == []


# --- failures: outages, rate limits, a crash, a bad routing key -----------------------------


async def test_an_outage_and_rate_limits_lose_nothing_and_honour_retry_after(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    fake.fail(503, times=3)
    fake.fail(429, retry_after="2")
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1, timeout=15)
    statuses = [c.status for c in fake.calls]
    assert statuses == [503, 503, 503, 429, 202]
    assert fake.calls[4].at - fake.calls[3].at >= 1.9  # Retry-After: 2
    assert len(fake.incidents) == 1
    await state_is(pinwatch, 1, "triggered")


async def test_a_crash_between_pagerdutys_202_and_our_commit_opens_no_second_incident(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    fake, url = await start_fake_pagerduty(aiohttp_server)
    first, _ = await paging(start_pinwatch, aiohttp_server, pagerduty=(fake, url))
    await posted(first)
    fake.accept_then_drop()  # PagerDuty has it; its answer never comes back
    assert await first.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(f.calls) == 1)
    await first.stop()
    assert await first.query("SELECT pagerduty_state FROM alerts WHERE id = 1") == [(None,)]

    second, _ = await paging(
        start_pinwatch,
        aiohttp_server,
        pagerduty=(fake, url),
        slack=(first.slack, first.slack_url),
    )
    await state_is(second, 1, "triggered")
    triggers = [c for c in fake.calls if c.action == "trigger"]
    assert len(triggers) == 2  # sent again after the restart: the dedup key did the rest
    assert len(fake.incidents) == 1


async def test_a_bad_routing_key_is_reported_in_the_thread_and_not_retried(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server, routing_key=BAD_ROUTING_KEY)
    original = await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await state_is(pinwatch, 1, "refused")
    await pinwatch.slack.wait_for(
        lambda s: any(
            "PagerDuty refused the page" in r.text for r in s.replies("C0PAYMENTS", original.ts)
        )
    )
    [note] = [
        r
        for r in pinwatch.slack.replies("C0PAYMENTS", original.ts)
        if "PagerDuty refused" in r.text
    ]
    assert "Event object is invalid" in shown(note)
    # Not retried: acknowledging (which would send its acknowledge) sends nothing either.
    await acknowledge(pinwatch, 1)
    await posted(pinwatch, delivery(security("PIN_RESET_REQUEST"), time=1), 2)
    assert await pinwatch.click("escalate", 2) == 200
    await fake.wait_for(lambda f: len(f.calls) == 2)  # the witness's trigger, refused too
    assert [c.status for c in fake.calls] == [400, 400]
    audit = {e.action: e.detail for e in await pinwatch.store.audit_log(1)}
    assert "Event object is invalid" in str(audit["pagerduty refused (manual)"])
    assert BAD_ROUTING_KEY not in json.dumps([r.text for r in pinwatch.slack.messages()])


# --- in: PagerDuty's webhooks ------------------------------------------------------------------


async def post_pagerduty(
    pinwatch: Pinwatch, payload: dict[str, Any] | bytes, *secrets: str
) -> tuple[int, str]:
    body, headers = signed_webhook(payload, *(secrets or (WEBHOOK_SECRET,)))
    async with pinwatch.client.post("/pagerduty/webhook", data=body, headers=headers) as response:
        return response.status, await response.text()


async def test_acknowledged_and_resolved_in_pagerduty_shows_in_slack_once(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    original = await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    key = trigger.body["dedup_key"]
    await state_is(pinwatch, 1, "triggered")

    acked = webhook_event("incident.acknowledged", incident_key=key, agent_name="Jane Oncall")
    assert await post_pagerduty(pinwatch, acked) == (200, "applied")
    assert await post_pagerduty(pinwatch, acked) == (200, "repeated")  # redelivered
    await pinwatch.slack.wait_for(
        lambda s: (
            "Acknowledged in PagerDuty by Jane Oncall"
            in shown(s.message("C0PAYMENTS", original.ts))
        )
    )
    alert = await pinwatch.alert(1)
    assert alert.acknowledged is not None
    assert alert.acknowledged.name == "Jane Oncall"
    assert alert.pagerduty_state is not None
    assert alert.pagerduty_state.value == "acknowledged"

    resolved = webhook_event("incident.resolved", incident_key=key, agent_name="Jane Oncall")
    assert await post_pagerduty(pinwatch, resolved) == (200, "applied")
    await wait_resolved(pinwatch)
    await pinwatch.slack.wait_for(
        lambda s: (
            "Resolved in PagerDuty by Jane Oncall" in shown(s.message("C0PAYMENTS", original.ts))
        )
    )
    audit = [e.action for e in await pinwatch.store.audit_log(1)]
    assert audit.count("acknowledged") == 1
    assert audit.count("resolved") == 1
    # Nothing was sent back, PagerDuty has both already: a later escalation's trigger is the
    # next event it gets.
    await posted(pinwatch, delivery(security("PIN_RESET_REQUEST"), time=1), 2)
    assert await pinwatch.click("escalate", 2) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 2)
    assert [c.action for c in fake.calls] == ["trigger", "trigger"]


async def test_forged_unsigned_or_foreign_webhooks_change_nothing(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    pinwatch, fake = await paging(start_pinwatch, aiohttp_server)
    await posted(pinwatch)
    assert await pinwatch.click("escalate", 1) == 200
    await fake.wait_for(lambda f: len(accepted(f, "trigger")) == 1)
    [trigger] = accepted(fake, "trigger")
    assert trigger.body is not None
    acked = webhook_event("incident.acknowledged", incident_key=trigger.body["dedup_key"])

    assert (await post_pagerduty(pinwatch, acked, "not-the-secret"))[0] == 401
    body = json.dumps(acked).encode()
    async with pinwatch.client.post("/pagerduty/webhook", data=body) as response:
        assert response.status == 401
    assert (await post_pagerduty(pinwatch, b"{not json"))[0] == 400
    other = webhook_event("incident.acknowledged", incident_key="someone-elses-incident")
    assert await post_pagerduty(pinwatch, other) == (200, "not_ours")
    # Alert 1's id, another deployment's event hash: not this alert's incident.
    forged_key = "pinwatch:alert:1:" + "0" * 20
    assert await post_pagerduty(
        pinwatch, webhook_event("incident.acknowledged", incident_key=forged_key)
    ) == (200, "not_ours")
    noted = webhook_event("incident.annotated", incident_key=trigger.body["dedup_key"])
    assert await post_pagerduty(pinwatch, noted) == (200, "ignored")
    assert (await pinwatch.alert(1)).acknowledged is None


async def test_without_a_webhook_secret_every_webhook_is_refused(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch()
    await posted(pinwatch)
    acked = webhook_event("incident.acknowledged", incident_key="pinwatch:alert:1:" + "0" * 20)
    assert (await post_pagerduty(pinwatch, acked))[0] == 401


async def test_escalations_from_before_the_upgrade_are_not_paged_after_it(
    start_pinwatch: StartPinwatch, aiohttp_server: Any
) -> None:
    fake, url = await start_fake_pagerduty(aiohttp_server)
    # Nothing reaches PagerDuty before the upgrade: port 9 has no listener.
    first, _ = await paging(start_pinwatch, aiohttp_server, pagerduty=(fake, "http://127.0.0.1:9/"))
    await posted(first)
    assert await first.click("escalate", 1) == 200
    await first.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    await first.stop()
    await downgrade(first, sqlite=9, postgres=6)  # the schema before PagerDuty

    second, _ = await paging(
        start_pinwatch, aiohttp_server, pagerduty=(fake, url), slack=(first.slack, first.slack_url)
    )
    await witness_paged(second, fake, 2)
    assert [c.dedup_key for c in fake.calls if c.dedup_key] == [
        c.dedup_key for c in accepted(fake, "trigger") if "alert:2:" in str(c.dedup_key)
    ]
    assert (await second.alert(1)).pagerduty_state is not None
    assert str((await second.alert(1)).pagerduty_state) == "none"
