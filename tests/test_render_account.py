"""Account-level alerts in Slack: plain words, Meta's facts, buttons, and outside input kept
harmless within Block Kit's limits (the pure core, without an event loop)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.account_events import account_event, unknown_field_event
from bot.events import Actor, Alert, SecurityEvent
from bot.render import Message, render_alert, render_escalation, render_storm
from tests.test_render import (
    HOSTILE,
    HUGE,
    button_labels,
    header,
    outside_markup,
    shown,
    within_slack_limits,
)

ACCOUNT = Path(__file__).parent / "data" / "account"
NAMES = sorted(path.stem for path in ACCOUNT.glob("*.json"))
WABA = "102290129340398"


def from_file(name: str) -> SecurityEvent:
    entry = json.loads((ACCOUNT / f"{name}.json").read_text())["entry"][0]
    [change] = entry["changes"]
    return account_event(
        change["field"], entry_id=entry["id"], time=entry["time"], value=change["value"]
    )


def alert_of(event: SecurityEvent, **fields: Any) -> Alert:
    return Alert(id=7, event=event, received_at=1748811480.0, team="payments", **fields)


def update(value: Any, *, field: str = "account_update") -> Message:
    return render_alert(alert_of(account_event(field, entry_id=WABA, time=1748811473, value=value)))


@pytest.mark.parametrize("name", NAMES)
def test_every_documented_payload_renders_within_limits(name: str) -> None:
    message = render_alert(alert_of(from_file(name)))
    within_slack_limits(message)
    assert outside_markup(message) == []
    text = shown(message)
    for part in ("*What happened:*", "*What it means:*", "*Check next:*", "*WABA*", "*When*"):
        assert part in text


def test_an_account_event_without_a_number_shows_no_number_field() -> None:
    message = render_alert(alert_of(from_file("account_deleted")))
    assert "*Phone number*" not in shown(message)
    assert message.text.startswith(f"[CRITICAL] WhatsApp Business Account deleted: WABA {WABA}")


def test_a_name_update_shows_its_number_readably() -> None:
    message = render_alert(alert_of(from_file("phone_number_name_update")))
    assert "*Phone number*\n+1 555-078-3881" in shown(message)


def test_the_customer_waba_named_in_waba_info_is_the_alerts_waba() -> None:
    event = from_file("partner_app_installed")
    assert event.waba_id == "1191624265890717"  # not the partner's business ID in entry.id
    assert "*WABA*\n1191624265890717" in shown(render_alert(alert_of(event)))


def test_facts_past_ten_fields_share_the_last_and_none_is_lost() -> None:
    value = {
        "event": "PARTNER_REMOVED",
        "phone_number": "15550783881",
        "waba_info": {
            "waba_id": WABA,
            "owner_business_id": "1001",
            "partner_app_id": "1002",
            "ad_account_linked": "1003",
            "solution_id": "1004",
        },
        "disconnection_info": {"reason": "ACCOUNT_DISCONNECTED", "initiated_by": "SYSTEM"},
    }
    message = update(value)
    within_slack_limits(message)
    [fields] = [b["fields"] for b in message.blocks if "fields" in b]
    assert len(fields) == 10
    assert fields[-1]["text"] == "*Initiated by*\nSYSTEM\n*Reason*\nACCOUNT_\u200bDISCONNECTED"


def test_a_ban_without_a_ban_state_is_still_critical_and_says_so() -> None:
    message = update({"event": "DISABLED_UPDATE"})
    assert message.text.startswith("[CRITICAL] WhatsApp Business Account disabled")
    assert "*Ban state*\nnot given" in shown(message)
    assert button_labels(message) == ["Acknowledge", "Escalate", "Resolve"]


def test_a_restriction_whose_expiry_is_not_a_time_is_shown_as_sent() -> None:
    value = {
        "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [
            {"restriction_type": "RESTRICTED_CALLING", "expiration": "next <b>week</b>"},
            {"restriction_type": "RESTRICTED_UTILITY_TEMPLATES", "remediation": "appeal"},
            "not an object",
        ],
    }
    text = shown(update(value)).replace("\u200b", "")
    assert "• RESTRICTED_CALLING until next &lt;b&gt;week&lt;/b&gt;" in text
    assert "• RESTRICTED_UTILITY_TEMPLATES (remediation: appeal)\n" in text + "\n"
    assert "*Restrictions*\n2" in text


def test_an_unknown_alert_type_keeps_metas_description_and_what_was_sent() -> None:
    value = {"alert_info": {"alert_type": "NEW_KIND", "alert_description": "line one\nline two"}}
    message = update(value, field="account_alerts")
    assert header(message) == "Meta account alert NEW_KIND"
    assert ">line one\n>line two" in shown(message)
    assert "*As sent by Meta*" in shown(message)


def test_a_field_meta_adds_later_renders_if_ever_shown() -> None:
    event = unknown_field_event("brand_new", entry_id=WABA, time=None, value=[HOSTILE])
    message = render_alert(alert_of(event))
    within_slack_limits(message)
    assert outside_markup(message) == []
    assert header(message) == "WhatsApp webhook field brand_new"


def test_escalation_page_and_storm_row_name_the_account() -> None:
    ban = alert_of(
        from_file("disabled_update_disable"),
        slack_channel="C0PAYMENTS",
        escalated=Actor(user_id="U0BOB", name="bob", at=1748811600.0),
    )
    page = render_escalation(ban, permalink=None, mentions=["S0SECLEADS"])
    assert f"*WhatsApp Business Account disabled* for WABA *{WABA}*" in shown(page)
    storm = render_storm([ban, replace(ban, id=8)], threshold=1, window=60)
    assert f"*WhatsApp Business Account disabled* · WABA {WABA} · <!date^1743451903^" in (
        shown(storm)
    )
    within_slack_limits(page)
    within_slack_limits(storm)


@pytest.mark.parametrize(
    "value",
    [
        {"event": "ACCOUNT_RESTRICTION", "restriction_info": [{"restriction_type": HUGE}] * 400},
        {"event": "PARTNER_REMOVED", "waba_info": {k: HUGE for k in ("owner_business_id",)}},
        {
            "event": "PARTNER_ADDED",
            "waba_info": {
                "owner_business_id": HUGE,
                "partner_app_id": HUGE,
                "ad_account_linked": HUGE,
                "solution_id": HUGE,
                "solution_partner_business_ids": [HUGE] * 5,
            },
            "disconnection_info": {"reason": HUGE, "initiated_by": HUGE},
        },
        {"event": HUGE, "blob": HUGE},
    ],
    ids=["400-restrictions", "owner", "every-partner-fact", "unknown-event"],
)
def test_huge_account_values_stay_within_slack_limits(value: dict[str, Any]) -> None:
    message = update(value)
    within_slack_limits(message)
    assert outside_markup(message) == []


def test_a_huge_alert_description_stays_within_slack_limits() -> None:
    value = {"alert_info": {"alert_type": "OBA_REJECTED", "alert_description": HUGE}}
    message = update(value, field="account_alerts")
    within_slack_limits(message)
    assert outside_markup(message) == []


_text = st.text(max_size=200) | st.sampled_from([HOSTILE, "<!here>", "&lt;", "``````", "*_~`"])
_scalar = _text | st.integers() | st.none() | st.booleans()
_objects = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3)
)
_values = st.fixed_dictionaries(
    {},
    optional={
        "event": _scalar
        | st.sampled_from(["DISABLED_UPDATE", "ACCOUNT_RESTRICTION", "PARTNER_REMOVED"]),
        "waba_info": _objects,
        "ban_info": st.fixed_dictionaries({}, optional={"waba_ban_state": _scalar}) | _objects,
        "restriction_info": st.lists(
            st.fixed_dictionaries(
                {}, optional={"restriction_type": _scalar, "expiration": _scalar}
            ),
            max_size=4,
        )
        | _objects,
        "disconnection_info": _objects,
        "alert_info": _objects,
        "decision": _scalar,
        "requested_verified_name": _scalar,
        "display_phone_number": _scalar,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        ["account_update", "account_alerts", "phone_number_name_update", "account_review_update"]
    ),
    value=_values | _objects,
)
def test_any_account_value_renders_within_limits_with_outside_markup_escaped(
    field: str, value: Any
) -> None:
    message = update(value, field=field)
    within_slack_limits(message)
    assert outside_markup(message) == []
