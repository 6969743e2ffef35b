"""The routing file: what a valid one gives, and how an invalid one is reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import ConfigError, LoadedConfig, load_config, parse_config, parse_duration
from bot.events import phone_digits

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "config.example.yaml"
INVALID = Path(__file__).parent / "data" / "config"

MINIMAL = """\
defaults:
  channel: "#wa-security"
  escalation:
    channel: "#security-escalations"
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(problem) for problem in caught.value.problems]


def parse(text: str) -> LoadedConfig:
    return parse_config(text, source="config.yaml")


def test_example_config_loads() -> None:
    loaded = load_config(EXAMPLE)
    config = loaded.config
    assert sorted(config.teams) == ["payments", "support"]
    assert [r.team for r in config.routes] == ["payments", "payments", "support"]
    assert config.routes[0].phone_numbers == ["15550783881"]
    assert config.teams["payments"].ack_timeout == 600
    assert config.defaults.ack_timeout == 900
    assert config.store.path == "pinwatch.db"


def test_example_summary_names_counts_channel_and_version() -> None:
    summary = load_config(EXAMPLE).summary()
    assert re.fullmatch(
        rf"{re.escape(str(EXAMPLE))}: ok \(2 teams, 3 routes, default channel #wa-security, "
        r"version [0-9a-f]{12}\)",
        summary,
    )


def test_version_changes_with_the_text() -> None:
    assert parse(MINIMAL).digest == parse(MINIMAL).digest
    assert parse(MINIMAL).digest != parse(MINIMAL + "# edited\n").digest


def test_minimal_config_gets_defaults_filled_in() -> None:
    config = parse(MINIMAL).config
    assert config.defaults.mention == []
    assert config.defaults.ack_timeout == 15 * 60
    assert config.defaults.escalation.mention == []
    assert config.teams == {}
    assert config.routes == []
    assert config.store.path == "pinwatch.db"


def test_team_settings_left_out_stay_unset_for_routing_to_inherit() -> None:
    config = parse(MINIMAL + "teams:\n  support: {}\n").config
    team = config.teams["support"]
    assert (team.channel, team.mention, team.responders, team.ack_timeout, team.escalation) == (
        None,
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "invalid_channel.yaml",
            [
                "2: defaults.channel: 'wa-security' is not a Slack channel: "
                "use an ID such as C0PAYMENTS or a #lowercase-name",
                "7: teams.payments.channel: '#Payments Team' is not a Slack channel: "
                "use an ID such as C0PAYMENTS or a #lowercase-name",
            ],
        ),
        (
            "unknown_key.yaml",
            [
                "7: teams.payments.chanel: unknown key (misspelt?)",
                "10: routes[0].waba_id: unknown key (misspelt?)",
            ],
        ),
        (
            "bad_duration.yaml",
            [
                "3: defaults.ack_timeout: '15 minutes' is not a duration such as 90s, 15m or 1h",
                "8: teams.payments.ack_timeout: a duration must be longer than zero",
                "10: teams.support.ack_timeout: a duration must be longer than zero",
            ],
        ),
        (
            "unknown_team.yaml",
            ["11: routes[1].team: team 'paymnets' is not defined under teams"],
        ),
        ("duplicate_key.yaml", ["8: teams.payments: key given twice"]),
        (
            "yaml_syntax.yaml",
            ["8: yaml: did not find expected key (while parsing a block mapping from line 6)"],
        ),
        ("not_a_mapping.yaml", ["1: (top level): expected a mapping of keys"]),
        ("empty.yaml", ["1: (top level): expected a mapping of keys"]),
        (
            "bad_mention.yaml",
            [
                "3: defaults.mention[0]: '@channel' is not a mention: "
                'use a user group (S…) or user (U…, W…) ID, or "here"',
                "6: defaults.escalation.mention[1]: '#leads' is not a mention: "
                'use a user group (S…) or user (U…, W…) ID, or "here"',
                "9: teams.payments.responders[0]: 'here' is not a responder: "
                "use a user group (S…) or user (U…, W…) ID",
            ],
        ),
        (
            "bad_event.yaml",
            [
                "11: routes[0].events[1]: 'PIN_RESET' is not an event; "
                "did you mean PIN_RESET_REQUEST?",
            ],
        ),
        (
            "bad_account_names.yaml",
            [
                "9: routes[0].fields[0]: 'account_updates' is not a webhook field; "
                "did you mean account_update?",
                "9: routes[0].fields[1]: 'messages' is a field pinwatch ignores (message traffic "
                "and the like): known fields: security, account_update, account_alerts, "
                "phone_number_name_update, account_review_update",
                "10: routes[0].events[0]: 'ACCOUNT_OFFBORDED' is not an event; "
                "did you mean ACCOUNT_OFFBOARDED?",
                "12: alerts.PARTNER_ADDED: 'loud' is not a severity: "
                "use critical, high, info or off",
                "13: alerts.DISABLE_UPDATE: 'DISABLE_UPDATE' is not an event; "
                "did you mean DISABLED_UPDATE?",
                "14: alerts.PARTNER_APP: 'PARTNER_APP' is not an event; did you mean "
                "PARTNER_APP_INSTALLED or PARTNER_APP_UNINSTALLED or PARTNER_ADDED?",
            ],
        ),
    ],
)
def test_invalid_file_reports_path_line_where_and_what(name: str, expected: list[str]) -> None:
    path = INVALID / name
    assert problems_of(path) == [f"{path}:{line}" for line in expected]


def test_alerts_map_and_fields_are_read() -> None:
    loaded = parse(
        MINIMAL
        + "teams: {support: {}}\n"
        + "routes:\n  - team: support\n    fields: [account_alerts, account_update]\n"
        # Unquoted, YAML 1.1 reads off as false: it still means off.
        + "alerts:\n  ACCOUNT_OFFBOARDED: info\n  MM_LITE_TERMS_SIGNED: off\n"
        + "  OBA_APPROVED: 'off'\n  PIN_CHANGED: critical\n"
    )
    config = loaded.config
    assert config.routes[0].fields == ["account_alerts", "account_update"]
    assert config.alerts == {
        "ACCOUNT_OFFBOARDED": "info",
        "MM_LITE_TERMS_SIGNED": "off",
        "OBA_APPROVED": "off",
        "PIN_CHANGED": "critical",
    }


def test_every_error_in_a_file_is_reported() -> None:
    path = INVALID / "several_errors.yaml"
    lines = [problem.removeprefix(f"{path}:") for problem in problems_of(path)]
    assert [line.split(":")[0] for line in lines] == ["2", "3", "6", "10", "13", "14"]
    assert [line.split(": ")[1] for line in lines] == [
        "defaults.channel",
        "defaults.ack_timeout",
        "defaults.escalation.mention[0]",
        "teams.payments.respnders",
        "routes[0].waba_ids[0]",
        "routes[0].phone_numbers[0]",
    ]


def test_unknown_team_is_reported_alongside_other_errors() -> None:
    path = INVALID / "unknown_team_and_bad_channel.yaml"
    assert problems_of(path) == [
        f"{path}:7: teams.payments.channel: 'payments' is not a Slack channel: "
        "use an ID such as C0PAYMENTS or a #lowercase-name",
        f"{path}:9: routes[0].team: team 'paymnets' is not defined under teams",
    ]


def test_config_error_message_lists_every_problem() -> None:
    path = INVALID / "bad_duration.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == problems_of(path)


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:1: file: ")


def test_missing_required_section_points_at_its_parent() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('defaults:\n  channel: "#wa-security"\n')
    assert [str(p) for p in caught.value.problems] == [
        "config.yaml:1: defaults.escalation: Field required"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2h5m10s", 7510), (45, 45)],
)
def test_durations_are_read_as_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_in_the_file_is_read_as_seconds() -> None:
    config = parse(MINIMAL.replace("defaults:\n", "defaults:\n  ack_timeout: 1h30m\n")).config
    assert config.defaults.ack_timeout == 5400


def test_bare_number_in_the_file_is_seconds() -> None:
    config = parse(MINIMAL.replace("defaults:\n", "defaults:\n  ack_timeout: 120\n")).config
    assert config.defaults.ack_timeout == 120


@pytest.mark.parametrize(
    "value", [0, "0s", "0m", -5, "-5m", "abc", "", "15", "1d", "1h 30m", "30m1h", True, None]
)
def test_zero_negative_and_garbage_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", [".inf", "-.inf", ".nan", "1.0e+400", str(10**400), f"{10**400}h"]
)
def test_a_duration_that_is_no_number_of_seconds_is_refused(value: str) -> None:
    """YAML reads these as infinity, not-a-number or an integer no float holds: a deadline
    made of one could not be stored (SQLite's JSON has no infinity) or compared."""
    with pytest.raises(ConfigError) as caught:
        parse(MINIMAL.replace("defaults:\n", f"defaults:\n  ack_timeout: {value}\n"))
    assert [str(p) for p in caught.value.problems] == [
        "config.yaml:2: defaults.ack_timeout: a duration must be a finite number of seconds"
    ]


ROUTES_WITH_UNQUOTED_NUMBERS = (
    MINIMAL
    + """\
teams:
  payments: {}
routes:
  - team: payments
    waba_ids: [102290129340398]
    phone_numbers: [15550783881, +44 20 7946 0018, +4915123456789]
"""
)


def test_unquoted_numeric_waba_id_is_accepted_as_a_string() -> None:
    [route] = parse(ROUTES_WITH_UNQUOTED_NUMBERS).config.routes
    assert route.waba_ids == ["102290129340398"]


def test_phone_numbers_are_normalized_to_digits() -> None:
    [route] = parse(ROUTES_WITH_UNQUOTED_NUMBERS).config.routes
    assert route.phone_numbers == ["15550783881", "442079460018", "4915123456789"]


def test_unquoted_phone_number_with_leading_zeros_is_not_silently_changed() -> None:
    # YAML 1.1 reads an unquoted 00442071460 as an octal integer (76051248).
    text = ROUTES_WITH_UNQUOTED_NUMBERS.replace("15550783881", "00442071460")
    try:
        [route] = parse(text).config.routes
    except ConfigError:
        return  # refusing it is fine too; routing on a different number is not
    assert route.phone_numbers is not None
    assert route.phone_numbers[0] == "00442071460"


@pytest.mark.parametrize("phone", ['"12"', '"no number"', "true"])
def test_too_short_or_non_numeric_phone_number_is_refused(phone: str) -> None:
    text = ROUTES_WITH_UNQUOTED_NUMBERS.replace("15550783881", phone)
    with pytest.raises(ConfigError) as caught:
        parse(text)
    [problem] = caught.value.problems
    assert (problem.line, problem.where) == (10, "routes[0].phone_numbers[0]")
    assert problem.what.endswith("is not a phone number")


# Written with escapes: the point is that they look like 0-9 and are not.
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
WABA = "102290129340398"
PHONE = "15550783881"


@pytest.mark.parametrize(
    ("line", "where", "old", "new", "foreign"),
    [
        (9, "routes[0].waba_ids[0]", WABA, WABA.translate(FULLWIDTH), WABA.translate(FULLWIDTH)),
        (
            9,
            "routes[0].waba_ids[0]",
            WABA,
            "1555".translate(ARABIC_INDIC),
            "1555".translate(ARABIC_INDIC),
        ),
        (
            10,
            "routes[0].phone_numbers[0]",
            PHONE,
            "+1 555 " + "1555".translate(ARABIC_INDIC),
            "1555".translate(ARABIC_INDIC),
        ),
        (
            10,
            "routes[0].phone_numbers[0]",
            PHONE,
            "+1 555-078-388" + "1".translate(FULLWIDTH),
            "1".translate(FULLWIDTH),
        ),
        (10, "routes[0].phone_numbers[0]", PHONE, "+1 555-078-3881\u00b2", "\u00b2"),
    ],
)
def test_digits_other_than_0_to_9_are_refused_with_their_line(
    line: int, where: str, old: str, new: str, foreign: str
) -> None:
    # Meta sends ASCII digits: a fullwidth or Arabic-Indic ID or number would never match.
    with pytest.raises(ConfigError) as caught:
        parse(ROUTES_WITH_UNQUOTED_NUMBERS.replace(old, f'"{new}"'))
    [problem] = caught.value.problems
    assert (problem.line, problem.where) == (line, where)
    assert problem.what.endswith(f"use the digits 0-9, not {foreign!r}")


def test_phone_digits_keep_only_0_to_9() -> None:
    assert phone_digits("+1 (555) 078-3881") == "15550783881"
    assert (
        phone_digits("+1 555 " + "1555".translate(ARABIC_INDIC) + "5".translate(FULLWIDTH))
        == "1555"
    )


def test_check_config_names_the_line_of_a_fullwidth_waba_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(ROUTES_WITH_UNQUOTED_NUMBERS.replace(WABA, f'"{WABA.translate(FULLWIDTH)}"'))
    assert main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}:9: routes[0].waba_ids[0]: ")
    assert err.rstrip().endswith(f"use the digits 0-9, not {WABA.translate(FULLWIDTH)!r}")
