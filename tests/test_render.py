"""What an alert looks like in Slack: text, buttons, state, and outside input kept harmless."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.events import PINWATCH_ACTOR_ID, Actor, Alert, EscalationKind, SecurityEvent
from bot.render import Message, render_alert
from tests.fake_slack import block_errors

WHEN = 1748811473  # 2025-06-01 20:57:53 UTC
CLICKED = 1748811600.0
HOSTILE = "<!channel> <@U123> <https://evil|x> & *bold* _it_ `code` ~s~"
OWN_MENTIONS = ("S0PAYSEC", "U0ALICE", "here")


def alert(
    name: str = "PIN_RESET_REQUEST",
    *,
    phone: str = "15550783881",
    waba: str = "102290129340398",
    requester: str | None = "61555822107539",
    time: int | None = WHEN,
    value: dict[str, Any] | None = None,
    **fields: Any,
) -> Alert:
    event = SecurityEvent(
        waba_id=waba,
        phone_number=phone,
        event=name,
        time=time,
        requester=requester,
        value=value if value is not None else {"display_phone_number": phone, "event": name},
    )
    base: dict[str, Any] = {
        "team": "payments",
        "channel": "C0PAYMENTS",
        "mentions": OWN_MENTIONS,
        "slack_channel": "C0PAYMENTS",
        "slack_ts": "1748811480.000100",
        "ack_deadline": WHEN + 600.0,
    }
    return Alert(id=7, event=event, received_at=WHEN + 5.0, **(base | fields))


def texts(value: Any, *, kinds: tuple[str, ...] = ("mrkdwn", "plain_text")) -> list[str]:
    """Every text object's text in the blocks, depth first."""
    found: list[str] = []
    if isinstance(value, dict):
        if value.get("type") in kinds and isinstance(value.get("text"), str):
            found.append(value["text"])
        for item in value.values():
            found.extend(texts(item, kinds=kinds))
    elif isinstance(value, list):
        for item in value:
            found.extend(texts(item, kinds=kinds))
    return found


def shown(message: Message) -> str:
    return "\n".join(texts(message.blocks))


def buttons(message: Message) -> list[dict[str, Any]]:
    return [
        element
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def button_labels(message: Message) -> list[str]:
    return [button["text"]["text"] for button in buttons(message)]


def header(message: Message) -> str:
    [block] = [b for b in message.blocks if b["type"] == "header"]
    text: str = block["text"]["text"]
    return text


def context_lines(message: Message) -> list[str]:
    return [
        element["text"]
        for block in message.blocks
        if block["type"] == "context"
        for element in block["elements"]
    ]


def within_slack_limits(message: Message) -> None:
    assert block_errors(message.blocks) == []
    assert len(message.text) <= 40000


OWN_MENTION_LINE = "<!subteam^S0PAYSEC> <@U0ALICE> <!here>\n"
_OWN_MARKUP = re.compile(
    r"<!date\^\d+\^\{date_short_pretty\} at \{time_secs\}\|[^<>]*>"
    r"|(?<=Acknowledged by )<@U0ALICE>|(?<=Escalated by )<@U0BOB>"
    r"|(?m:^>)"  # a quote of Meta's own words
)


def outside_markup(message: Message) -> list[str]:
    """'<' or '>' left in mrkdwn or the fallback once pinwatch's own markup is taken out.

    Slack parses <...> in mrkdwn and in the fallback text (mentions, links), so outside input
    must never put one there. Plain-text objects (the header, buttons) are shown literally.
    """
    parsed = [*texts(message.blocks, kinds=("mrkdwn",)), message.text]
    own_removed = [_OWN_MARKUP.sub("", text.replace(OWN_MENTION_LINE, "", 1)) for text in parsed]
    return [c for text in own_removed for c in text if c in "<>"]


# -- each event type -------------------------------------------------------------------------


def test_reset_request_has_header_and_fallback() -> None:
    message = render_alert(alert())
    assert header(message) == "Two-step verification reset requested"
    assert message.text.startswith("[HIGH] Two-step verification reset requested: +1 555-078-3881")
    assert "WABA 102290129340398" in message.text
    assert "61555822107539" in message.text
    assert "team payments" in message.text


def test_reset_request_has_acknowledge_and_confirmed_escalate() -> None:
    message = render_alert(alert())
    acknowledge, escalate, resolve = buttons(message)
    assert resolve["text"]["text"] == "Resolve"
    assert resolve["value"] == "7"
    assert acknowledge["text"]["text"] == "Acknowledge"
    assert acknowledge["style"] == "primary"
    assert "confirm" not in acknowledge
    assert escalate["text"]["text"] == "Escalate"
    assert escalate["style"] == "danger"
    assert escalate["confirm"]["confirm"]["text"] == "Escalate"
    assert escalate["confirm"]["deny"]["text"] == "Cancel"
    assert {acknowledge["value"], escalate["value"]} == {"7"}
    assert acknowledge["action_id"] != escalate["action_id"]


def test_pin_changed_is_informational_with_escalate_only() -> None:
    message = render_alert(alert("PIN_CHANGED", requester=None))
    assert header(message) == "Two-step verification PIN changed"
    assert message.text.startswith("[INFO] Two-step verification PIN changed: +1 555-078-3881")
    assert button_labels(message) == ["Escalate", "Resolve"]


def test_standalone_success_is_critical_with_both_buttons() -> None:
    message = render_alert(alert("PIN_REQUEST_SUCCESS", requester=None))
    assert header(message) == "Two-step verification turned off"
    assert message.text.startswith("[CRITICAL] Two-step verification turned off")
    assert button_labels(message) == ["Acknowledge", "Escalate", "Resolve"]


def test_unknown_event_is_shown_as_is_with_escalate_only() -> None:
    value = {"display_phone_number": "15550783881", "event": "PIN_NEW_THING", "detail": "x-42"}
    message = render_alert(alert("PIN_NEW_THING", requester=None, value=value))
    assert "PIN_NEW_THING" in header(message)
    assert "PIN_NEW_THING" in message.text
    assert '"detail": "x-42"' in shown(message)
    assert button_labels(message) == ["Escalate", "Resolve"]


def test_alert_shows_readable_number_waba_time_and_requester() -> None:
    text = shown(render_alert(alert()))
    assert "+1 555-078-3881" in text
    assert "102290129340398" in text
    assert f"<!date^{WHEN}^" in text
    assert "|2025-06-01 20:57:53 UTC>" in text
    assert "61555822107539" in text


def test_alert_without_requester_shows_no_requester_field() -> None:
    message = render_alert(alert(requester=None))
    assert "Requested by" not in shown(message)
    assert "requested by" not in message.text


def test_alert_without_event_time_shows_when_it_was_received() -> None:
    assert f"<!date^{WHEN + 5}^" in shown(render_alert(alert(time=None)))


def test_mentions_are_rendered_as_slack_mentions() -> None:
    text = shown(render_alert(alert()))
    assert text.count(OWN_MENTION_LINE) == 1


def test_no_mentions_means_no_mention_markup() -> None:
    text = shown(render_alert(alert(mentions=())))
    assert "<!subteam^" not in text
    assert "<!here>" not in text


def test_open_reset_request_says_when_it_escalates() -> None:
    [line] = context_lines(render_alert(alert()))
    assert line.startswith(f"Escalates automatically <!date^{WHEN + 600}^")


# -- after a click -----------------------------------------------------------------------------


def test_acknowledged_alert_says_who_and_when_and_drops_acknowledge() -> None:
    alice = Actor(user_id="U0ALICE", name="Alice", at=CLICKED)
    message = render_alert(alert(acknowledged=alice))
    [line] = context_lines(message)
    assert line.startswith(f":white_check_mark: Acknowledged by <@U0ALICE> <!date^{int(CLICKED)}^")
    assert "Acknowledge" not in button_labels(message)
    assert "acknowledged by Alice" in message.text


def test_manually_escalated_alert_says_who_and_drops_escalate() -> None:
    bob = Actor(user_id="U0BOB", name="Bob", at=CLICKED)
    message = render_alert(alert(escalated=bob, escalation_kind=EscalationKind.MANUAL))
    lines = context_lines(message)
    assert any(
        line.startswith(f":mega: Escalated by <@U0BOB> <!date^{int(CLICKED)}^") for line in lines
    )
    assert not any("Escalates automatically" in line for line in lines)
    assert button_labels(message) == ["Acknowledge", "Resolve"]
    assert "escalated by Bob" in message.text


def test_automatically_escalated_alert_says_so() -> None:
    pinwatch = Actor(user_id=PINWATCH_ACTOR_ID, name=None, at=WHEN + 600.0)
    message = render_alert(alert(escalated=pinwatch, escalation_kind=EscalationKind.AUTOMATIC))
    assert any(line.startswith(":mega: Automatically escalated") for line in context_lines(message))
    assert "Escalate" not in button_labels(message)


def test_escalated_then_acknowledged_alert_shows_both_and_resolve_only() -> None:
    bob = Actor(user_id="U0BOB", name="Bob", at=CLICKED)
    alice = Actor(user_id="U0ALICE", name="Alice", at=CLICKED + 60)
    message = render_alert(
        alert(escalated=bob, escalation_kind=EscalationKind.MANUAL, acknowledged=alice)
    )
    lines = context_lines(message)
    assert any("Escalated by <@U0BOB>" in line for line in lines)
    assert any("Acknowledged by <@U0ALICE>" in line for line in lines)
    assert button_labels(message) == ["Resolve"]


def test_actor_name_from_outside_is_escaped() -> None:
    someone = Actor(user_id="not-a-slack-id", name=HOSTILE, at=CLICKED)
    message = render_alert(alert(acknowledged=someone))
    assert outside_markup(message) == []


# -- outside input ---------------------------------------------------------------------------


def test_outside_markup_in_the_phone_number_is_not_passed_on() -> None:
    message = render_alert(alert(phone=HOSTILE))
    assert outside_markup(message) == []
    assert "<!channel>" not in shown(message)


@pytest.mark.parametrize("field", ["waba", "requester"])
def test_outside_markup_is_escaped(field: str) -> None:
    overrides: dict[str, Any] = {field: HOSTILE}
    message = render_alert(alert(**overrides))
    assert outside_markup(message) == []
    assert "&lt;!channel&gt;" in shown(message)
    assert "&amp;" in shown(message)
    assert "&lt;!channel&gt;" in message.text


def test_outside_markup_in_an_unknown_event_is_escaped() -> None:
    value = {"event": HOSTILE, "display_phone_number": HOSTILE, "extra": HOSTILE}
    message = render_alert(alert(HOSTILE, phone=HOSTILE, value=value))
    assert outside_markup(message) == []
    assert "&lt;https://evil|x&gt;" in shown(message)


HUGE = "9" * 50_000 + "<!here>*_" * 7_000  # 113k characters


@pytest.mark.parametrize(
    "overrides",
    [
        {"phone": HUGE},
        {"requester": HUGE},
        {"waba": HUGE},
        {"name": HUGE},
        {"name": "PIN_NEW_THING", "value": {"event": "PIN_NEW_THING", "blob": HUGE}},
        {"name": HUGE, "phone": HUGE, "requester": HUGE, "waba": HUGE, "value": {HUGE: HUGE}},
    ],
    ids=["phone", "requester", "waba", "event", "unknown-value", "everything"],
)
def test_huge_values_stay_within_slack_limits(overrides: dict[str, Any]) -> None:
    message = render_alert(alert(**overrides))
    within_slack_limits(message)
    assert outside_markup(message) == []


def test_absurd_event_time_still_renders() -> None:
    message = render_alert(alert(time=10**15))
    within_slack_limits(message)
    assert "+1 555-078-3881" in shown(message)


def test_blocks_are_json() -> None:
    message = render_alert(alert())
    assert json.loads(json.dumps(message.blocks)) == message.blocks


# -- any input at all ------------------------------------------------------------------------

# Long values are built by repetition: cheap to generate, and long enough to hit every limit.
_text = (
    st.text(max_size=300)
    | st.sampled_from([HOSTILE, "<!here>", "&lt;", "``````", "*_~`"])
    | st.builds(
        lambda part, times: part * times, st.text(min_size=1, max_size=8), st.integers(300, 4000)
    )
)


@settings(max_examples=200, deadline=None)
@given(
    name=_text | st.sampled_from(["PIN_RESET_REQUEST", "PIN_CHANGED", "PIN_REQUEST_SUCCESS"]),
    phone=_text,
    waba=_text,
    requester=st.none() | _text,
    time=st.none() | st.integers(min_value=0, max_value=4_102_444_800),
    value=st.dictionaries(_text, _text, max_size=5),
)
def test_any_event_renders_within_limits_with_outside_markup_escaped(
    name: str, phone: str, waba: str, requester: str | None, time: int | None, value: dict[str, Any]
) -> None:
    message = render_alert(
        alert(name, phone=phone, waba=waba, requester=requester, time=time, value=value)
    )
    within_slack_limits(message)
    assert outside_markup(message) == []
