"""Routing: which team, channel, mentions and escalation an event gets."""

from __future__ import annotations

import pytest

from bot.config import Config, parse_config
from bot.events import SecurityEvent, Severity
from bot.routing import Destination, route, severity_of, team_destination

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
        remind_every=4 * 3600,
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


# --- account-level events ---------------------------------------------------------------------

ACCOUNT_CONFIG = """\
defaults:
  channel: "#wa-security"
  escalation: {channel: "#security-escalations"}
teams:
  payments: {channel: "C0PAYMENTS"}
  alerts: {channel: "#meta-alerts"}
  uk: {channel: "#uk-security"}
routes:
  - team: alerts
    fields: [account_alerts]
  - team: payments
    waba_ids: ["102290129340398"]
    phone_numbers: ["15550783881"]
  - team: uk
    phone_numbers: ["+44 20 7946 0018"]
alerts:
  ACCOUNT_OFFBOARDED: info
  PARTNER_ADDED: "off"
  OBA_APPROVED: critical
"""


@pytest.fixture(scope="module")
def account_config() -> Config:
    return parse_config(ACCOUNT_CONFIG, source="routing.yaml").config


def account(
    name: str,
    *,
    field: str = "account_update",
    waba: str = PAYMENTS_WABA,
    value: dict[str, object] | None = None,
    **more: object,
) -> SecurityEvent:
    return SecurityEvent(
        waba_id=waba,
        phone_number="",
        event=name,
        time=1748811473,
        value={"event": name, **(value or {}), **more},
        field=field,
    )


def test_an_event_of_the_whole_account_goes_by_its_waba(account_config: Config) -> None:
    # The payments route lists a number and the WABA: the WABA's ban is the payments team's.
    assert route(account("DISABLED_UPDATE"), account_config).team == "payments"


def test_a_route_of_numbers_alone_never_claims_an_account_event(account_config: Config) -> None:
    # Whatever its WABA: the uk route would otherwise claim every account in the world.
    assert route(account("DISABLED_UPDATE", waba="999"), account_config).team is None
    uk_name = SecurityEvent(
        waba_id="999",
        phone_number="442079460018",
        event="PHONE_NUMBER_NAME_UPDATE",
        time=None,
        field="phone_number_name_update",
    )
    assert route(uk_name, account_config).team == "uk"  # an event with a number still does


def test_routes_match_fields(account_config: Config) -> None:
    alert = account("OBA_APPROVED", field="account_alerts")
    assert route(alert, account_config).team == "alerts"
    assert route(event(), account_config).team == "payments"  # a security event: not `alerts`


@pytest.mark.parametrize(
    ("name", "value", "severity"),
    [
        ("DISABLED_UPDATE", {"ban_info": {"waba_ban_state": "DISABLE"}}, Severity.CRITICAL),
        ("DISABLED_UPDATE", {"ban_info": {"waba_ban_state": "SCHEDULE_FOR_DISABLE"}}, "critical"),
        ("DISABLED_UPDATE", {"ban_info": {"waba_ban_state": "REINSTATE"}}, Severity.INFO),
        ("DISABLED_UPDATE", {"ban_info": "not an object"}, Severity.CRITICAL),
        ("ACCOUNT_DELETED", {}, Severity.CRITICAL),
        ("ACCOUNT_RESTRICTION", {}, Severity.HIGH),
        ("PARTNER_REMOVED", {}, Severity.HIGH),
        ("PARTNER_APP_UNINSTALLED", {}, Severity.INFO),
        ("ACCOUNT_RECONNECTED", {}, Severity.HIGH),
        ("MM_LITE_TERMS_SIGNED", {}, Severity.OFF),
        ("SOMETHING_NEW", {}, Severity.INFO),
    ],
)
def test_default_severities_of_account_updates(
    name: str, value: dict[str, object], severity: Severity
) -> None:
    no_overrides = parse_config(CONFIG, source="routing.yaml").config
    assert severity_of(account(name, value=value), no_overrides) == severity


@pytest.mark.parametrize(
    ("meta", "severity"),
    [("CRITICAL", "critical"), ("WARNING", "high"), ("INFORMATIONAL", "info"), (None, "info")],
)
def test_account_alerts_take_metas_severity(
    config: Config, meta: str | None, severity: str
) -> None:
    alert = SecurityEvent(
        waba_id=PAYMENTS_WABA,
        phone_number="",
        event="PROFILE_PICTURE_LOST",
        time=None,
        value={"alert_info": {"alert_severity": meta, "alert_type": "PROFILE_PICTURE_LOST"}},
        field="account_alerts",
    )
    assert severity_of(alert, config) == severity


def test_the_alerts_map_overrides_the_default(account_config: Config) -> None:
    assert severity_of(account("ACCOUNT_OFFBOARDED"), account_config) == Severity.INFO
    assert severity_of(account("PARTNER_ADDED"), account_config) == Severity.OFF
    meta_says_info = account(
        "OBA_APPROVED", field="account_alerts", alert_info={"alert_severity": "INFORMATIONAL"}
    )
    assert severity_of(meta_says_info, account_config) == Severity.CRITICAL


def test_the_alerts_map_applies_to_an_event_of_its_own_field_only(account_config: Config) -> None:
    # A security event that happens to be called PARTNER_ADDED is an unknown security event,
    # shown as sent, not the partner change the map silences.
    odd = SecurityEvent(
        waba_id=PAYMENTS_WABA, phone_number=PAYMENTS_PHONE, event="PARTNER_ADDED", time=None
    )
    assert severity_of(odd, account_config) == Severity.INFO
    # And a field pinwatch does not know stays unposted, whatever its value's event says.
    newer = account("ACCOUNT_OFFBOARDED", field="brand_new_field")
    assert severity_of(newer, account_config) == Severity.OFF
