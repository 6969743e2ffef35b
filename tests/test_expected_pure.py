"""The pure side of announced windows: targets, whose team a window is, what it matches, and
how it is shown. No event loop, no I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.events import Actor, Alert, Expectation, SecurityEvent
from bot.render import (
    render_alert,
    render_storm,
    render_window_announcement,
    render_window_cancelled,
)
from bot.windows import (
    PIN_EVENTS,
    SeveralTeams,
    Target,
    TargetKind,
    Window,
    team_of,
    window_for,
)
from tests.conftest import TEST_CONFIG
from tests.fake_slack import block_errors

WABA = "102290129340398"
ALICE = Actor(user_id="U0ALICE", name="alice", at=1000.0)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    text = TEST_CONFIG.format(store=tmp_path / "x.db") + (
        "  - team: support\n    events: [PIN_CHANGED]\n    waba_ids: ['999']\n"
    )
    path.write_text(text)
    return load_config(path).config


def window(target: Target, *, team: str | None = "payments", **kwargs: object) -> Window:
    fields: dict[str, object] = {
        "id": 7,
        "target": target,
        "events": PIN_EVENTS,
        "reason": "rotation",
        "team": team,
        "channel": "C0PAYMENTS",
        "opened_by": ALICE,
        "until": 4600.0,
        "announced_channel": "C0PAYMENTS",
        "announced_ts": "1.000100",
    }
    fields.update(kwargs)
    return Window(**fields)  # type: ignore[arg-type]


def event(name: str = "PIN_RESET_REQUEST", *, phone: str = "15550783881") -> SecurityEvent:
    return SecurityEvent(waba_id=WABA, phone_number=phone, event=name, time=None)


def match(
    seen: SecurityEvent,
    windows: list[Window],
    happened: float = 2000.0,
    *,
    team: str = "payments",
    requests: set[tuple[int, str]] | None = None,
) -> Window | None:
    return window_for(
        seen, team=team, happened=happened, windows=windows, requests_in=requests or set()
    )


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("+1 555-078-3881", TargetKind.PHONE, "15550783881"),
        ("+15550783881", TargetKind.PHONE, "15550783881"),
        (WABA, TargetKind.WABA, WABA),
    ],
)
def test_targets(text: str, kind: TargetKind, value: str) -> None:
    assert Target.parse(text) == Target(kind, value)


@pytest.mark.parametrize("text", ["+12", "+1555abc0783881", "1" * 21, "abc", "", "+" + "1" * 16])
def test_not_targets(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a phone number|neither"):
        Target.parse(text)


def test_team_of_a_number_and_a_waba(config: Config) -> None:
    assert team_of(Target.parse("+15550783881"), PIN_EVENTS, config) == "payments"
    assert team_of(Target.parse(WABA), PIN_EVENTS, config) == "payments"
    assert team_of(Target.parse("+442079460018"), PIN_EVENTS, config) == "support"
    assert team_of(Target.parse("+4915112345678"), PIN_EVENTS, config) is None
    assert team_of(Target.parse("999"), ["PIN_CHANGED"], config) == "support"
    with pytest.raises(SeveralTeams, match="several teams"):
        team_of(Target.parse("999"), PIN_EVENTS, config)


def test_what_a_window_matches() -> None:
    phone = window(Target.parse("+15550783881"))
    assert match(event(), [phone], 1000.0) == phone
    assert match(event(), [phone], 4599.0) == phone
    assert match(event(), [phone], 999.0) is None
    assert match(event(), [phone], 4600.0) is None
    assert match(event(phone="442079460018"), [phone]) is None
    assert match(event(), [phone], team="support") is None
    quiet = window(Target.parse("+15550783881"), announced_ts=None)
    assert match(event(), [quiet]) is None
    ended = window(Target.parse("+15550783881"), cancelled=Actor("U0CAROL", None, 1500.0))
    assert match(event(), [ended], 1499.0) == ended
    assert match(event(), [ended], 1500.0) is None


def test_a_success_follows_its_request_and_a_takeover_is_never_covered() -> None:
    only_requests = window(Target.parse(WABA), events=("PIN_RESET_REQUEST",))
    success = event("PIN_REQUEST_SUCCESS")
    assert match(success, [only_requests]) is None
    assert match(success, [only_requests], requests={(7, "15550783881")}) == only_requests
    assert match(success, [only_requests], requests={(7, "1"), (8, "15550783881")}) is None
    everything = window(Target.parse(WABA), events=("PARTNER_ADDED", "ACCOUNT_OFFBOARDED"))
    takeover = SecurityEvent(
        waba_id=WABA, phone_number="", event="PARTNER_ADDED", time=None, field="account_update"
    )
    assert match(takeover, [everything]) is None


def test_announcement_and_its_end_are_valid_block_kit() -> None:
    hostile = window(Target.parse(WABA), reason="<!channel> *bold* " + "x" * 600)
    message = render_window_announcement(hostile)
    assert block_errors(message.blocks) == []
    shown = json.dumps(message.blocks)
    assert "<!channel>" not in shown
    assert "/pinwatch cancel 7" in shown
    ended = window(Target.parse(WABA), cancelled=Actor("U0CAROL", "carol", 2000.0))
    assert "Ended early by <@U0CAROL>" in json.dumps(render_window_announcement(ended).blocks)
    notice = render_window_cancelled(ended)
    assert block_errors(notice.blocks) == []
    assert notice.text == "carol ended window #7 for WABA 102290129340398 early"


def expected_alert(alert_id: int, *, window_id: int | None = 7, **fields: object) -> Alert:
    seen = SecurityEvent(
        waba_id=WABA, phone_number="15550783881", event="PIN_RESET_REQUEST", time=1
    )
    expected = (
        Expectation(window_id=window_id, announced_by=ALICE, reason="<b>rotation</b>", until=4600.0)
        if window_id is not None
        else None
    )
    return Alert(id=alert_id, event=seen, received_at=1.0, expected=expected, **fields)  # type: ignore[arg-type]


def test_an_expected_alert_says_who_announced_it_and_why() -> None:
    message = render_alert(expected_alert(1, team="payments"))
    shown = json.dumps(message.blocks)
    assert (
        "Expected: announced by <@U0ALICE> (&lt;b&gt;rotation&lt;/b&gt;), window #7 until" in shown
    )
    assert block_errors(message.blocks) == []
    assert "expected: announced by alice (&lt;b&gt;rotation&lt;/b&gt;), window #7" in message.text
    chain = json.dumps(render_alert(expected_alert(1, takeover_at=2.0)).blocks)
    assert "Expected:" not in chain
    assert "a takeover chain is escalated all the same" in chain


def test_a_storm_mentions_every_rows_team_even_when_the_first_was_expected() -> None:
    rows = [expected_alert(1), expected_alert(2, window_id=None, mentions=("S0PAYSEC",))]
    intro = json.dumps(render_storm(rows, threshold=1, window=60).blocks)
    assert "<!subteam^S0PAYSEC>" in intro
