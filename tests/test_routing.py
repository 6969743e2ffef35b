"""Routing: which team, channel, mentions and escalation an event gets."""

from __future__ import annotations

import pytest

from bot.config import Config, parse_config
from bot.events import SecurityEvent
from bot.routing import Destination, route, team_destination

PAYMENTS_WABA = "102290129340398"
PAYMENTS_PHONE = "+1 555-078-3881"
UK_PHONE = "442079460018"

CONFIG = """\
defaults:
  channel: "#wa-security"
  mention: ["S0DEFAULT"]
  ack_timeout: 15m
  escalation: {channel: "#security-escalations", mention: ["S0SECLEADS"]}
teams:
  payments:
    channel: "C0PAYMENTS"
    mention: ["S0PAYSEC"]
    responders: ["S0PAYSEC", "U0ALICE"]
    ack_timeout: 10m
    escalation: {channel: "#payments-leads", mention: ["U0BOB"]}
  support:
    channel: "#support-security"
  quiet:
    mention: []
routes:
  - team: payments
    waba_ids: ["102290129340398"]
    phone_numbers: ["15550783881"]
    events: [PIN_RESET_REQUEST, PIN_REQUEST_SUCCESS]
  - team: support
    waba_ids: ["102290129340398"]
  - team: quiet
    phone_numbers: ["+44 20 7946 0018"]
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG, source="routing.yaml").config


def event(
    *, waba: str = PAYMENTS_WABA, phone: str = PAYMENTS_PHONE, name: str = "PIN_RESET_REQUEST"
) -> SecurityEvent:
    return SecurityEvent(waba_id=waba, phone_number=phone, event=name, time=1748811473)


def test_reset_request_for_the_payments_number_goes_to_payments(config: Config) -> None:
    destination = route(event(), config)
    assert destination.team == "payments"
    assert destination.channel == "C0PAYMENTS"


def test_first_matching_route_wins(config: Config) -> None:
    # Both the payments route and the support route (whole WABA) match: payments is listed first.
    assert route(event(), config).team == "payments"


def test_later_route_catches_what_an_earlier_one_filters_out(config: Config) -> None:
    assert route(event(name="PIN_CHANGED"), config).team == "support"


@pytest.mark.parametrize("phone", ["+1 555-078-3881", "15550783881", "+1 (555) 078 3881"])
def test_phone_is_compared_as_digits_only(config: Config, phone: str) -> None:
    assert route(event(phone=phone), config).team == "payments"


def test_phone_written_with_punctuation_in_config_matches_bare_digits(config: Config) -> None:
    assert route(event(waba="999", phone=UK_PHONE), config).team == "quiet"


def test_every_listed_criterion_must_match(config: Config) -> None:
    # Right number, other WABA: the payments route lists both, so it does not match.
    assert route(event(waba="999", phone=PAYMENTS_PHONE), config).team is None


def test_events_filter_keeps_other_events_out(config: Config) -> None:
    assert route(event(name="PIN_REQUEST_SUCCESS"), config).team == "payments"
    assert route(event(name="PIN_CHANGED"), config).team != "payments"


def test_unknown_event_name_still_routes(config: Config) -> None:
    assert route(event(name="PIN_SOMETHING_NEW"), config).team == "support"
    assert route(event(waba="999", phone=UK_PHONE, name="PIN_SOMETHING_NEW"), config).team == (
        "quiet"
    )


def test_unmatched_event_gets_the_defaults(config: Config) -> None:
    destination = route(event(waba="999", phone="+49 151 23456789"), config)
    assert destination == Destination(
        team=None,
        channel="#wa-security",
        mentions=("S0DEFAULT",),
        responders=None,
        ack_timeout=900,
        correlation_window=24 * 3600,
        escalation=config.defaults.escalation,
    )


def test_team_overrides_every_default(config: Config) -> None:
    destination = route(event(), config)
    assert destination.mentions == ("S0PAYSEC",)
    assert destination.responders == ("S0PAYSEC", "U0ALICE")
    assert destination.ack_timeout == 600
    assert destination.escalation.channel == "#payments-leads"
    assert destination.escalation.mention == ["U0BOB"]


def test_team_inherits_what_it_leaves_out(config: Config) -> None:
    destination = route(event(name="PIN_CHANGED"), config)
    assert destination.team == "support"
    assert destination.channel == "#support-security"
    assert destination.mentions == ("S0DEFAULT",)
    assert destination.ack_timeout == 900
    assert destination.escalation == config.defaults.escalation


def test_team_without_responders_lets_anyone_act(config: Config) -> None:
    assert route(event(name="PIN_CHANGED"), config).responders is None


def test_team_with_empty_mention_list_mentions_nobody(config: Config) -> None:
    destination = route(event(waba="999", phone=UK_PHONE), config)
    assert destination.mentions == ()
    assert destination.channel == "#wa-security"


def test_unknown_team_gets_the_defaults(config: Config) -> None:
    assert team_destination("ghost", config) == team_destination(None, config)
    assert team_destination("ghost", config).team is None
