"""The Events API v2 events pinwatch builds: pure, checked field by field against PagerDuty's
documented schema (and the fake's check of it, in test_pagerduty_client)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bot.config import Escalation, PagerDuty
from bot.events import Actor, Alert, EscalationKind, SecurityEvent, Severity
from bot.pagerduty.events import (
    DEDUP_KEY_MAX,
    NOTE_MAX,
    SUMMARY_MAX,
    EventError,
    PageReason,
    acknowledge_event,
    alert_id_of,
    check_event,
    dedup_key,
    pagerduty_severity,
    reason_of,
    resolve_event,
    routing_key_of,
    trigger_event,
)
from tests.test_core_purity import FORBIDDEN, imports_of, is_within

WABA = "102290129340398"
PHONE = "15550783881"
AT = 1764686400  # 2025-12-02T14:40:00Z
PERMALINK = "https://fake.slack.test/archives/C0PAYMENTS/p1764686400000100"


def alert_of(
    event: str = "PIN_RESET_REQUEST",
    *,
    alert_id: int = 7,
    phone: str = PHONE,
    field: str = "security",
    value: dict[str, Any] | None = None,
    team: str | None = "payments",
    requester: str | None = "jane.doe@example.com",
    time: int | None = AT,
    kind: EscalationKind | None = EscalationKind.MANUAL,
    by: Actor | None = None,
) -> Alert:
    security = SecurityEvent(
        waba_id=WABA,
        phone_number=phone,
        event=event,
        time=time,
        requester=requester,
        value=value if value is not None else {"event": event, "display_phone_number": phone},
        field=field,
    )
    return Alert(
        id=alert_id,
        event=security,
        received_at=AT + 1.0,
        team=team,
        escalated=by or Actor("U0ALICE", "Alice", AT + 60.0),
        escalation_kind=kind,
    )


# -- the dedup key -----------------------------------------------------------------------------


def test_dedup_key_names_the_alert_and_its_event() -> None:
    alert = alert_of()
    key = dedup_key(alert)
    assert key == f"pinwatch:alert:7:{alert.event.digest[:20]}"
    assert len(key) <= DEDUP_KEY_MAX
    assert alert_id_of(key) == 7


def test_dedup_key_is_the_same_whatever_happens_to_the_alert() -> None:
    alert = alert_of()
    later = dataclasses.replace(
        alert,
        acknowledged=Actor("U0BOB", "Bob", AT + 120.0),
        escalation_kind=EscalationKind.AUTOMATIC,
        slack_ts="1764686400.000100",
    )
    # Meta's redelivery may type a number differently: the event's dedup hash does not change.
    redelivered = dataclasses.replace(
        alert, event=dataclasses.replace(alert.event, value={**alert.event.value, "n": 1.0})
    )
    same = dataclasses.replace(
        alert, event=dataclasses.replace(alert.event, value={**alert.event.value, "n": "1"})
    )
    assert dedup_key(later) == dedup_key(alert)
    assert dedup_key(redelivered) == dedup_key(same)
    # An ordinary escalation, manual or automatic, is one incident; a takeover, suspected or
    # confirmed, opens one of its own (an acknowledged incident would take it silently).
    keys = [trigger_event(later, reason=r)["dedup_key"] for r in PageReason]
    assert keys == [
        dedup_key(alert),
        dedup_key(alert),
        dedup_key(alert) + ":takeover",
        dedup_key(alert) + ":confirmed",
    ]
    assert [reason_of(key, alert) for key in keys] == [
        PageReason.MANUAL,
        PageReason.MANUAL,
        PageReason.TAKEOVER,
        PageReason.CONFIRMED_TAKEOVER,
    ]
    assert [alert_id_of(key) for key in keys] == [7] * 4
    assert reason_of(dedup_key(alert_of(alert_id=8)), alert) is None
    for reason in PageReason:
        acknowledged = acknowledge_event(later, reason)["dedup_key"]
        assert acknowledged == resolve_event(later, reason)["dedup_key"]
        assert acknowledged == trigger_event(later, reason=reason)["dedup_key"]


def test_dedup_key_differs_for_another_alert_or_another_deployments_alert() -> None:
    assert dedup_key(alert_of(alert_id=7)) != dedup_key(alert_of(alert_id=8))
    # Two deployments paging one service both have an alert 7: their events differ.
    other = alert_of(alert_id=7, time=AT + 1)
    assert dedup_key(other) != dedup_key(alert_of(alert_id=7))


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "d3640fbd41094207a1c11e58e46b1662",  # PagerDuty's own, for an incident made elsewhere
        "pinwatch:alert:x:0123456789abcdef0123",
        "pinwatch:alert:7:0123456789abcdef012",  # one hex short
        "pinwatch:alert:7:0123456789ABCDEF0123",
        "pinwatch:alert:7:0123456789abcdef0123:extra",
        "pinwatch:alert:99999999999999999999:0123456789abcdef0123",
        " pinwatch:alert:7:0123456789abcdef0123",
    ],
)
def test_alert_id_of_a_key_pinwatch_did_not_make_is_none(key: str | None) -> None:
    assert alert_id_of(key) is None


# -- the trigger -------------------------------------------------------------------------------


def test_a_manual_escalation_of_a_reset_request_pages_with_everything_a_responder_needs() -> None:
    body = trigger_event(alert_of(), reason=PageReason.MANUAL, permalink=PERMALINK)
    assert body == {
        "event_action": "trigger",
        "dedup_key": dedup_key(alert_of()),
        "payload": {
            "summary": "Escalated by Alice: Two-step verification reset requested for "
            "+1 555-078-3881 (WABA 102290129340398, team payments)",
            "source": "WhatsApp Business account 102290129340398",
            "severity": "error",
            "timestamp": "2025-12-02T14:40:00+00:00",
            "component": "+1 555-078-3881",
            "group": "payments",
            "class": "PIN_RESET_REQUEST",
            "custom_details": {
                "waba_id": WABA,
                "phone_number": "+1 555-078-3881",
                "event": "PIN_RESET_REQUEST",
                "field": "security",
                "requester": "jane.doe@example.com",
                "team": "payments",
                "severity": "high",
                "reason": "manual",
                "escalated_by": "Alice",
                "pinwatch_alert_id": 7,
            },
        },
        "links": [{"href": PERMALINK, "text": "The alert in Slack"}],
        "client": "pinwatch",
        "client_url": PERMALINK,
    }


@pytest.mark.parametrize(
    ("reason", "lead"),
    [
        (PageReason.MANUAL, "Escalated by Alice"),
        (PageReason.AUTOMATIC, "Not acknowledged in time"),
        (
            PageReason.TAKEOVER,
            "Possible takeover (two-step verification off, then the number re-registered)",
        ),
        (PageReason.CONFIRMED_TAKEOVER, "Confirmed takeover"),
    ],
)
def test_the_summary_says_why_it_pages_first(reason: PageReason, lead: str) -> None:
    summary = trigger_event(alert_of(), reason=reason)["payload"]["summary"]
    assert summary == (
        f"{lead}: Two-step verification reset requested for +1 555-078-3881 "
        "(WABA 102290129340398, team payments)"
    )


def test_pinwatchs_own_escalation_is_not_said_to_be_by_someone() -> None:
    alert = alert_of(by=Actor("pinwatch", None, AT + 900.0), kind=None)
    assert PageReason.of(alert.escalation_kind) is PageReason.MANUAL
    summary = trigger_event(alert, reason=PageReason.MANUAL)["payload"]["summary"]
    assert summary.startswith("Escalated: Two-step verification reset requested")


def test_page_reason_follows_the_escalation_kind() -> None:
    assert [PageReason.of(kind) for kind in EscalationKind] == [
        PageReason.MANUAL,
        PageReason.AUTOMATIC,
        PageReason.TAKEOVER,
        PageReason.CONFIRMED_TAKEOVER,
    ]
    assert PageReason.of(EscalationKind.TAKEOVER) is PageReason.TAKEOVER
    assert PageReason.of(None) is PageReason.MANUAL


def test_an_account_event_without_a_number_is_named_by_its_waba_in_plain_words() -> None:
    banned = alert_of(
        "DISABLED_UPDATE",
        phone="",
        field="account_update",
        value={"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ["DISABLE"]}},
        team=None,
        requester=None,
    )
    body = trigger_event(banned, reason=PageReason.AUTOMATIC)
    payload = body["payload"]
    assert payload["summary"] == (
        "Not acknowledged in time: WhatsApp Business Account disabled for WABA 102290129340398"
    )
    assert "*" not in payload["summary"]
    assert "<" not in payload["summary"]
    assert payload["severity"] == "critical"
    assert payload["component"] == "WABA 102290129340398"
    assert "group" not in payload
    details = payload["custom_details"]
    assert "phone_number" not in details
    assert "requester" not in details
    assert "team" not in details


@pytest.mark.parametrize(
    ("severity", "expected"),
    [(Severity.CRITICAL, "critical"), (Severity.HIGH, "error"), (Severity.INFO, "info")],
)
def test_severity_is_mapped_from_pinwatchs(severity: Severity, expected: str) -> None:
    assert pagerduty_severity(severity) == expected
    alert = dataclasses.replace(alert_of(), assigned_severity=severity)
    assert trigger_event(alert, reason=PageReason.MANUAL)["payload"]["severity"] == expected
    assert trigger_event(alert, reason=PageReason.AUTOMATIC)["payload"]["severity"] == expected


@pytest.mark.parametrize("reason", [PageReason.TAKEOVER, PageReason.CONFIRMED_TAKEOVER])
def test_a_takeover_is_critical_whatever_the_alerts_severity(reason: PageReason) -> None:
    alert = dataclasses.replace(alert_of(), assigned_severity=Severity.INFO)
    assert trigger_event(alert, reason=reason)["payload"]["severity"] == "critical"


def test_a_verdict_note_is_passed_on_in_the_details_cut_to_size() -> None:
    note = "Confirmed with the customer: not them. " * 200
    details = trigger_event(alert_of(), reason=PageReason.CONFIRMED_TAKEOVER, note=note)["payload"][
        "custom_details"
    ]
    assert details["note"].startswith("Confirmed with the customer")
    assert len(details["note"]) == NOTE_MAX
    blank = trigger_event(alert_of(), reason=PageReason.CONFIRMED_TAKEOVER, note="  ")
    assert "note" not in blank["payload"]["custom_details"]


def test_without_a_permalink_there_is_no_link() -> None:
    body = trigger_event(alert_of(), reason=PageReason.MANUAL)
    assert "links" not in body
    assert "client_url" not in body


@pytest.mark.parametrize("link", ["javascript:alert(1)", "slack.com/archives/C1", ""])
def test_a_permalink_that_is_not_http_is_refused(link: str) -> None:
    with pytest.raises(EventError, match="http"):
        trigger_event(alert_of(), reason=PageReason.MANUAL, permalink=link)


def test_a_time_meta_sent_outside_any_calendar_is_left_to_pagerduty() -> None:
    payload = trigger_event(alert_of(time=10**20), reason=PageReason.MANUAL)["payload"]
    assert "timestamp" not in payload
    received = trigger_event(alert_of(time=None), reason=PageReason.MANUAL)["payload"]
    assert received["timestamp"] == "2025-12-02T14:40:01+00:00"  # when pinwatch received it


def test_outside_input_cannot_make_the_summary_too_long_or_break_its_line() -> None:
    alert = alert_of("PIN_SOMETHING_NEW\n" * 100, team="payments")
    summary = trigger_event(alert, reason=PageReason.MANUAL)["payload"]["summary"]
    assert len(summary) == SUMMARY_MAX
    assert "\n" not in summary
    assert summary.endswith("…")


def test_acknowledge_and_resolve_carry_only_the_action_and_the_key() -> None:
    alert = alert_of()
    assert acknowledge_event(alert) == {
        "event_action": "acknowledge",
        "dedup_key": dedup_key(alert),
    }
    assert resolve_event(alert) == {"event_action": "resolve", "dedup_key": dedup_key(alert)}


def test_no_event_holds_a_routing_key() -> None:
    bodies = [trigger_event(alert_of(), reason=r) for r in PageReason]
    bodies += [acknowledge_event(alert_of()), resolve_event(alert_of())]
    assert all("routing_key" not in body for body in bodies)
    with pytest.raises(EventError, match="routing key"):
        check_event({**bodies[0], "routing_key": "0123456789abcdef0123456789abcdef"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_action": "page"}, "event_action"),
        ({"dedup_key": ""}, "dedup_key"),
        ({"dedup_key": "k" * 256}, "dedup_key is longer than 255"),
        ({"payload": None}, "payload"),
        ({"payload": {"summary": "s", "source": "x", "severity": "high"}}, "severity"),
        ({"payload": {"summary": "s" * 1025, "source": "x", "severity": "info"}}, "summary"),
        ({"payload": {"summary": "s", "source": " ", "severity": "info"}}, "source"),
        ({"links": [{"text": "no href"}]}, "href"),
        (
            {"payload": {"summary": "s", "source": "x", "severity": "info", "custom_details": 1}},
            "custom_details",
        ),
        (
            {"payload": {"summary": "s", "source": "x", "severity": "info", "custom_details": {
                "x": "y" * 600_000}}},
            "bytes",
        ),
    ],
)  # fmt: skip
def test_check_event_refuses_what_pagerduty_would(change: dict[str, Any], message: str) -> None:
    body = {**trigger_event(alert_of(), reason=PageReason.MANUAL), **change}
    with pytest.raises(EventError, match=message):
        check_event(body)


@pytest.mark.parametrize("module", ["pagerduty/events", "pagerduty/webhook", "pagerduty/sync"])
def test_the_pure_pagerduty_modules_do_no_io(module: str) -> None:
    forbidden = [*FORBIDDEN, "bot.pagerduty.client", "hmac" if module.endswith("events") else ""]
    offending = sorted(
        name
        for name in imports_of(module)
        if any(bad and is_within(name, bad) for bad in forbidden)
    )
    assert offending == []


def test_the_routing_key_is_read_from_the_variable_the_escalation_names() -> None:
    paged = Escalation(channel="#leads", pagerduty=PagerDuty(routing_key_env="PD_KEY"))
    assert routing_key_of(paged, {"PD_KEY": " 0123456789abcdef0123456789abcdef\n"}) == (
        "0123456789abcdef0123456789abcdef"
    )
    assert routing_key_of(paged, {"PD_KEY": "  "}) is None
    assert routing_key_of(paged, {}) is None
    assert routing_key_of(Escalation(channel="#leads"), {"PD_KEY": "x"}) is None
