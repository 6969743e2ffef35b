"""Account-level webhooks in, Slack alerts out: the real app over loopback against the fake Slack,
on both store backends.

The payloads in tests/data/account are shaped as Meta documents them: the examples of the
account_update, account_alerts, phone_number_name_update and account_review_update webhook
references (developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/
<field>), the ACCOUNT_OFFBOARDED and ACCOUNT_RECONNECTED payloads of Meta's "Reconnect offboarded
coexistence clients" guide, and, for ACCOUNT_RESTRICTION and PARTNER_REMOVED's
disconnection_info, the fields those pages name (restriction_info[].restriction_type and
expiration; disconnection_info.reason and initiated_by). Meta's partner app examples put `field`
outside the change; here it is inside, where every delivery has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Pinwatch,
    StartPinwatch,
    action_ids,
    delivery,
    eventually,
    security,
)
from tests.schema_history import downgrade
from tests.test_metrics_hardening import scrape, series

ACCOUNT = Path(__file__).parent / "data" / "account"
PAYMENTS_WABA = "102290129340398"
ALL_BUTTONS = ["pinwatch.acknowledge", "pinwatch.escalate", "pinwatch.resolve"]
NO_ACKNOWLEDGE = ["pinwatch.escalate", "pinwatch.resolve"]


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ACCOUNT / f"{name}.json").read_text())
    return loaded


def visible(text: str) -> str:
    """Text as a reader sees it: without the zero-width spaces that keep _ from pairing up."""
    return text.replace("\u200b", "")


def shown(blocks: list[dict[str, Any]]) -> str:
    return visible(json.dumps(blocks, ensure_ascii=False))


async def posted(pinwatch: Pinwatch, alert_id: int) -> tuple[str, Any]:
    """The channel an alert went to, and its message as the fake Slack holds it."""
    alert = await pinwatch.wait_posted(alert_id)
    assert alert.slack_channel is not None
    assert alert.slack_ts is not None
    return alert.slack_channel, pinwatch.slack.message(alert.slack_channel, alert.slack_ts)


# name, channel, severity, the facts its text and blocks show, its buttons
CASES = [
    (
        "disabled_update_disable",
        "C0PAYMENTS",
        "CRITICAL",
        ["WhatsApp Business Account disabled", PAYMENTS_WABA, "DISABLE", "April 17, 2025"],
        ALL_BUTTONS,
    ),
    (
        "disabled_update_schedule",
        "C0PAYMENTS",
        "CRITICAL",
        ["scheduled to be disabled", PAYMENTS_WABA, "SCHEDULE_FOR_DISABLE", "May 2, 2025"],
        ALL_BUTTONS,
    ),
    (
        "disabled_update_reinstate",
        "C0PAYMENTS",
        "INFO",
        ["WhatsApp Business Account reinstated", PAYMENTS_WABA, "REINSTATE"],
        NO_ACKNOWLEDGE,
    ),
    (
        "account_restriction",
        "C0PAYMENTS",
        "HIGH",
        ["WhatsApp Business Account restricted", PAYMENTS_WABA, "restrictions 3"],
        ALL_BUTTONS,
    ),
    (
        "account_violation",
        "C0PAYMENTS",
        "HIGH",
        ["Policy violation", PAYMENTS_WABA, "violation ADULT"],
        ALL_BUTTONS,
    ),
    (
        "account_deleted",
        "C0PAYMENTS",
        "CRITICAL",
        ["WhatsApp Business Account deleted", PAYMENTS_WABA],
        ALL_BUTTONS,
    ),
    (
        "partner_added",
        "C0WASEC",
        "HIGH",
        ["Partner added", "980198427658004", "2329417887457253", "1715120619246906"],
        ALL_BUTTONS,
    ),
    (
        "partner_removed",
        "C0PAYMENTS",
        "HIGH",
        ["Partner removed", PAYMENTS_WABA, "initiated by USER", "ACCOUNT_DISCONNECTED"],
        ALL_BUTTONS,
    ),
    (
        "partner_app_installed",
        "C0WASEC",
        "HIGH",
        ["App given access", "1191624265890717", "partner app 5731794616896507"],
        ALL_BUTTONS,
    ),
    (
        "partner_app_uninstalled",
        "C0WASEC",
        "INFO",
        ["access to the WhatsApp Business Account removed", "184943124712545", "869361281603019"],
        NO_ACKNOWLEDGE,
    ),
    (
        "account_offboarded",
        "C0PAYMENTS",
        "CRITICAL",
        ["Number re-registered: the account was offboarded", PAYMENTS_WABA],
        ALL_BUTTONS,
    ),
    (
        "account_reconnected",
        "C0PAYMENTS",
        "HIGH",
        ["Number reconnected", PAYMENTS_WABA],
        ALL_BUTTONS,
    ),
    (
        "ad_account_linked",
        "C0WASEC",
        "HIGH",
        ["Ad account linked", "980198427658004", "ad account 980198427534243"],
        ALL_BUTTONS,
    ),
    (
        "account_alerts",
        "C0PAYMENTS",
        "HIGH",  # Meta's WARNING
        [
            "Messaging limit increase not granted",
            PAYMENTS_WABA,
            "meta severity WARNING",
            "alert type INCREASED_CAPABILITIES_ELIGIBILITY_DEFERRED",
        ],
        ALL_BUTTONS,
    ),
    (
        "phone_number_name_update",
        "C0PAYMENTS",
        "HIGH",
        ["Display name of a number approved", "+1 555-078-3881", "requested name Lucky Shrub"],
        ALL_BUTTONS,
    ),
    (
        "account_review_update",
        "C0PAYMENTS",
        "HIGH",
        ["rejected in review", PAYMENTS_WABA, "decision REJECTED"],
        ALL_BUTTONS,
    ),
]


@pytest.mark.parametrize(
    ("name", "channel", "severity", "facts", "buttons"), CASES, ids=[c[0] for c in CASES]
)
async def test_each_account_event_becomes_the_alert_it_means(
    pinwatch: Pinwatch,
    name: str,
    channel: str,
    severity: str,
    facts: list[str],
    buttons: list[str],
) -> None:
    assert await pinwatch.post_webhook(payload(name)) == (200, "ok")
    where, message = await posted(pinwatch, 1)
    assert where == channel
    text = visible(message.text)
    assert text.startswith(f"[{severity}] ")
    for fact in facts:
        assert fact in text, fact
        assert fact.split(" ")[-1] in shown(message.blocks), fact
    assert action_ids(message.blocks) == buttons
    blocks = shown(message.blocks)
    assert "*What happened:*" in blocks
    assert "*What it means:*" in blocks
    assert "*Check next:*" in blocks
    assert "<!date^" in blocks  # the time, in each reader's zone
    [(field, event)] = await pinwatch.query(f"SELECT field, event FROM alerts WHERE id = {1}")
    assert field == next(iter(payload(name)["entry"][0]["changes"]))["field"]
    assert event  # the WABA and event a takeover chain correlates on are in the row


async def test_restrictions_are_each_shown_with_their_expiry(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(payload("account_restriction"))
    _, message = await posted(pinwatch, 1)
    blocks = shown(message.blocks)
    expiry = "<!date^1776607160^"  # 2026-04-19T13:59:20+0000
    for kind in (
        "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
        "RESTRICTED_BIZ_INITIATED_MESSAGING",
        "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
    ):
        assert f"• {kind} until {expiry}" in blocks


async def test_meta_alert_description_is_quoted_and_escaped(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(payload("account_alerts"))
    _, message = await posted(pinwatch, 1)
    blocks = shown(message.blocks)
    assert ">Limits cannot be increased for your business &lt;BUSINESS_PORTFOLIO_NAME&gt;." in (
        blocks
    )
    assert "<BUSINESS_PORTFOLIO_NAME>" not in blocks + message.text


async def test_outside_text_in_account_events_is_escaped(pinwatch: Pinwatch) -> None:
    hostile = "<!channel> <@U123> <https://evil|x> *bold*"
    body = payload("phone_number_name_update")
    body["entry"][0]["changes"][0]["value"]["requested_verified_name"] = hostile
    body["entry"][0]["changes"][0]["value"]["rejection_reason"] = hostile
    await pinwatch.post_webhook(body)
    _, message = await posted(pinwatch, 1)
    everything = json.dumps(message.blocks) + message.text
    for smuggled in ("<!channel>", "<@U123>", "<https://evil|x>"):
        assert smuggled not in everything
    assert "&lt;!channel&gt;" in shown(message.blocks)
    assert "&lt;!channel&gt;" in message.text


async def test_a_ban_needs_acknowledgement_and_is_escalated_if_nobody_does(
    pinwatch: Pinwatch,
) -> None:
    await pinwatch.post_webhook(payload("disabled_update_disable"))
    await pinwatch.post_webhook(payload("disabled_update_reinstate"))
    ban = await pinwatch.wait_posted(1)
    reinstated = await pinwatch.wait_posted(2)
    assert ban.ack_deadline == ban.received_at + 600  # payments' ack_timeout
    assert reinstated.ack_deadline is None  # info waits for nobody

    pinwatch.clock.advance(601)
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)
    [page] = pinwatch.slack.top_level("C0PAYLEADS")
    assert "WhatsApp Business Account disabled" in page.text
    assert f"WABA *{PAYMENTS_WABA}*" in shown(page.blocks)
    assert (await pinwatch.alert(2)).escalated is None


async def test_unknown_account_update_event_is_stored_and_shown_as_sent(
    pinwatch: Pinwatch,
) -> None:
    value = {"event": "SOMETHING_META_ADDS", "detail": {"level": "<b>9</b>"}}
    assert await pinwatch.post_webhook(delivery({"field": "account_update", "value": value})) == (
        200,
        "ok",
    )
    where, message = await posted(pinwatch, 1)
    assert where == "C0PAYMENTS"
    assert message.text.startswith("[INFO] WhatsApp Business Account update SOMETHING_META_ADDS")
    blocks = shown(message.blocks)
    assert "*As sent by Meta*" in blocks
    assert "&lt;b&gt;9&lt;/b&gt;" in blocks
    assert action_ids(message.blocks) == NO_ACKNOWLEDGE
    [(field, event, stored)] = await pinwatch.query("SELECT field, event, value FROM alerts")
    assert (field, event, json.loads(stored)) == ("account_update", "SOMETHING_META_ADDS", value)


async def test_an_account_value_that_is_not_an_object_is_still_stored_and_shown(
    pinwatch: Pinwatch,
) -> None:
    status, _ = await pinwatch.post_webhook(delivery({"field": "account_update", "value": "x"}))
    assert status == 200
    _, message = await posted(pinwatch, 1)
    assert "(no event name)" in message.text
    assert '\\"value\\": \\"x\\"' in json.dumps(message.blocks)


async def settled(pinwatch: Pinwatch) -> None:
    """Everything stored is routed, and nothing waits for Slack."""

    async def nothing_waits() -> bool:
        unposted, _ = await pinwatch.store.count_unposted()
        unrouted = await pinwatch.query("SELECT id FROM alerts WHERE channel IS NULL")
        return unposted == 0 and not unrouted

    await eventually(nothing_waits)


async def test_a_field_meta_adds_later_is_stored_not_posted(pinwatch: Pinwatch) -> None:
    body = delivery(
        {"field": "brand_new_field", "value": {"anything": [1, 2]}},
        {"field": "messages", "value": {"messages": []}},
    )
    assert await pinwatch.post_webhook(body) == (200, "ok")
    await settled(pinwatch)
    rows = await pinwatch.query("SELECT field, severity, value, slack_ts FROM alerts")
    assert [(f, s, json.loads(v), ts) for f, s, v, ts in rows] == [
        ("brand_new_field", "off", {"anything": [1, 2]}, None)
    ]
    assert pinwatch.slack.calls_to("chat.postMessage") == []
    text = await scrape(pinwatch)
    assert series(text, "pinwatch_webhook_ignored_changes_total") == {
        '{field="other"}': 1,
        '{field="messages"}': 1,
    }


async def test_business_only_events_are_stored_and_counted_but_not_posted(
    pinwatch: Pinwatch,
) -> None:
    assert await pinwatch.post_webhook(payload("mm_lite_terms_signed")) == (200, "ok")
    assert await pinwatch.post_webhook(delivery(security("PIN_CHANGED"))) == (200, "ok")
    await pinwatch.wait_posted(2)
    await settled(pinwatch)
    [(severity, slack_ts)] = await pinwatch.query(
        "SELECT severity, slack_ts FROM alerts WHERE id = 1"
    )
    assert (severity, slack_ts) == ("off", None)
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 1
    events = series(await scrape(pinwatch), "pinwatch_events_total")
    assert events['{event="MM_LITE_TERMS_SIGNED",team=""}'] == 1


ALERTS_MAP = """\
alerts:
  ACCOUNT_OFFBOARDED: info
  PARTNER_REMOVED: off
  PIN_CHANGED: critical
"""


async def test_the_alerts_map_overrides_severity_and_off_silences(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    config_path.write_text(config_path.read_text() + ALERTS_MAP)
    pinwatch = await start_pinwatch()
    await pinwatch.post_webhook(payload("account_offboarded"))
    await pinwatch.post_webhook(payload("partner_removed"))
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    _, offboarded = await posted(pinwatch, 1)
    assert offboarded.text.startswith("[INFO] Number re-registered")
    assert action_ids(offboarded.blocks) == NO_ACKNOWLEDGE
    assert (await pinwatch.alert(1)).ack_deadline is None
    _, pin = await posted(pinwatch, 3)
    assert pin.text.startswith("[CRITICAL] Two-step verification PIN changed")
    assert action_ids(pin.blocks) == ALL_BUTTONS

    await settled(pinwatch)
    [(severity, slack_ts, team)] = await pinwatch.query(
        "SELECT severity, slack_ts, team FROM alerts WHERE id = 2"
    )
    assert (severity, slack_ts, team) == ("off", None, "payments")
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 2
    events = series(await scrape(pinwatch), "pinwatch_events_total")
    assert events['{event="PARTNER_REMOVED",team="payments"}'] == 1


FIELD_ROUTES = """\
  - team: support
    fields: [account_alerts, account_review_update]
"""


async def test_routes_may_match_fields(start_pinwatch: StartPinwatch, config_path: Path) -> None:
    # First in the list: the payments route, which names the WABA, comes after it.
    text = config_path.read_text().replace("routes:\n", "routes:\n" + FIELD_ROUTES)
    config_path.write_text(text)
    pinwatch = await start_pinwatch()
    for name in ("account_alerts", "account_review_update", "account_violation"):
        assert await pinwatch.post_webhook(payload(name)) == (200, "ok")
    assert [(await posted(pinwatch, i))[0] for i in (1, 2, 3)] == [
        "C0SUPPORT",
        "C0SUPPORT",
        "C0PAYMENTS",
    ]


async def test_a_route_of_numbers_alone_does_not_claim_an_account_event(
    pinwatch: Pinwatch,
) -> None:
    # The support route lists only +44 20 7946 0018: its WABA's ban goes by WABA, to the
    # defaults, while a PIN change of that number goes to support.
    body = payload("disabled_update_disable")
    body["entry"][0]["id"] = "300000000000001"
    await pinwatch.post_webhook(body)
    await pinwatch.post_webhook(
        delivery(security("PIN_CHANGED", phone="442079460018"), waba="300000000000001")
    )
    assert (await posted(pinwatch, 1))[0] == "C0WASEC"
    assert (await posted(pinwatch, 2))[0] == "C0SUPPORT"


async def test_account_events_next_to_message_traffic_in_one_delivery(
    pinwatch: Pinwatch,
) -> None:
    body = payload("account_deleted")
    body["entry"][0]["changes"].insert(0, {"field": "messages", "value": {"messages": [{}]}})
    body["entry"][0]["changes"].append({"field": "statuses", "value": {"statuses": [{}]}})
    assert await pinwatch.post_webhook(body) == (200, "ok")
    await posted(pinwatch, 1)
    await settled(pinwatch)
    assert await pinwatch.query("SELECT field FROM alerts") == [("account_update",)]


async def test_a_redelivered_account_event_alerts_once(pinwatch: Pinwatch) -> None:
    for _ in range(3):
        assert await pinwatch.post_webhook(payload("account_offboarded")) == (200, "ok")
    assert await pinwatch.post_webhook(payload("account_reconnected")) == (200, "ok")
    await posted(pinwatch, 2)
    await settled(pinwatch)
    assert len(pinwatch.slack.calls_to("chat.postMessage")) == 2


async def test_a_success_whose_request_was_silenced_still_alerts_on_its_own(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    config_path.write_text(config_path.read_text() + "alerts:\n  PIN_RESET_REQUEST: off\n")
    pinwatch = await start_pinwatch()
    await pinwatch.post_webhook(delivery(security("PIN_RESET_REQUEST", requester="1")))
    await pinwatch.post_webhook(delivery(security("PIN_REQUEST_SUCCESS"), time=1748811999))
    where, message = await posted(pinwatch, 2)
    assert where == "C0PAYMENTS"
    assert message.text.startswith("[CRITICAL] Two-step verification turned off")
    assert message.thread_ts is None
    assert (await pinwatch.alert(1)).slack_ts is None


STORM_OF_TWO = "  storm:\n    threshold: 2\n    window: 60s\n"


async def test_silenced_events_do_not_make_a_storm(
    start_pinwatch: StartPinwatch, config_path: Path
) -> None:
    text = config_path.read_text().replace(
        "  ack_timeout: 15m\n", "  ack_timeout: 15m\n" + STORM_OF_TWO, 1
    )
    config_path.write_text(text)
    pinwatch = await start_pinwatch()
    for i in range(4):  # business-only, to the default channel: stored, never posted
        body = payload("mm_lite_terms_signed")
        body["entry"][0]["time"] += i
        assert await pinwatch.post_webhook(body) == (200, "ok")
    await settled(pinwatch)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED", phone="4915123456789"), waba="9"))
    where, message = await posted(pinwatch, 5)
    assert where == "C0WASEC"
    assert message.text.startswith("[INFO] Two-step verification PIN changed")


async def test_a_store_from_before_account_events_is_migrated_and_carries_on(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    first.slack.fail("chat.postMessage", times=1000, status=503)
    await first.post_webhook(delivery(security("PIN_RESET_REQUEST", requester="1")))
    await first.slack.wait_for(lambda s: any(c.failed for c in s.calls))
    await first.stop()
    await downgrade(first, sqlite=5, postgres=2)  # the schemas before account events

    second = await start_pinwatch()
    await second.post_webhook(payload("disabled_update_disable"))
    _, request = await posted(second, 1)  # waiting when the old pinwatch stopped: posted now
    assert request.text.startswith("[HIGH] Two-step verification reset requested")
    assert action_ids(request.blocks) == ALL_BUTTONS
    _, ban = await posted(second, 2)
    assert ban.text.startswith("[CRITICAL] WhatsApp Business Account disabled")
    rows = await second.query("SELECT id, field, severity FROM alerts ORDER BY id")
    assert rows == [(1, "security", None), (2, "account_update", "critical")]
