"""PagerDuty in the routing file (`escalation.pagerduty.routing_key_env`) and the environment
(PAGERDUTY_EVENTS_URL, PAGERDUTY_WEBHOOK_SECRET, the routing keys the file names): what is read,
what is refused and how it is said, and that serve, check-config and a reload heed it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from bot import keys
from bot.app import build_app, reload_config
from bot.config import (
    ConfigError,
    LoadedConfig,
    ReloadResult,
    load_config,
    missing_routing_keys,
    parse_config,
    routing_key_envs,
)
from bot.pagerduty.client import PAGERDUTY_EVENTS_URL
from bot.routing import team_destination
from bot.settings import Settings, SettingsError
from tests.conftest import FakeClock, settings, tuning_for
from tests.fake_pagerduty import ROUTING_KEY
from tests.test_cli import run

INVALID = Path(__file__).parent / "data" / "config"
KEY_IN_FILE = "e93facc04764012d7bfb002500d5d1a6"  # bad_pagerduty.yaml's line 5

PAGED = """\
defaults:
  channel: "#wa-security"
  escalation:
    channel: "#security-escalations"
    pagerduty: {routing_key_env: PD_DEFAULT_KEY}
teams:
  payments:
    channel: "C0PAYMENTS"
    escalation:
      channel: "#payments-leads"
      pagerduty:
        routing_key_env: PD_PAYMENTS_KEY
  support:
    channel: "#support"
  risk:
    escalation: {channel: "#risk-leads"}
  fraud:
    escalation: {channel: "#fraud-leads", pagerduty: {routing_key_env: PD_PAYMENTS_KEY}}
"""
ENVIRON = {"PD_DEFAULT_KEY": ROUTING_KEY, "PD_PAYMENTS_KEY": "1" * 32}


def parse(text: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    return parse_config(text, source="config.yaml", environ=environ)


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return [str(problem) for problem in caught.value.problems]


# -- the routing file --------------------------------------------------------------------------


def test_a_team_names_the_variable_holding_its_routing_key_and_others_inherit_the_defaults() -> (
    None
):
    config = parse(PAGED).config
    assert config.defaults.escalation.pagerduty is not None
    assert config.defaults.escalation.pagerduty.routing_key_env == "PD_DEFAULT_KEY"

    def paged_with(team: str) -> str | None:
        pagerduty = team_destination(team, config).escalation.pagerduty
        return pagerduty.routing_key_env if pagerduty is not None else None

    assert paged_with("payments") == "PD_PAYMENTS_KEY"
    assert paged_with("support") == "PD_DEFAULT_KEY"  # no escalation of its own
    assert paged_with("risk") is None  # an escalation of its own, without PagerDuty
    assert paged_with("fraud") == "PD_PAYMENTS_KEY"


def test_without_pagerduty_nothing_is_paged_nor_needed() -> None:
    config = parse(PAGED.replace("    pagerduty: {routing_key_env: PD_DEFAULT_KEY}\n", "")).config
    assert config.defaults.escalation.pagerduty is None
    assert (
        routing_key_envs(parse("defaults: {channel: C0X, escalation: {channel: C0Y}}").config) == {}
    )


def test_routing_key_envs_says_where_each_variable_is_named() -> None:
    assert routing_key_envs(parse(PAGED).config) == {
        "PD_DEFAULT_KEY": [("defaults", "escalation", "pagerduty", "routing_key_env")],
        "PD_PAYMENTS_KEY": [
            ("teams", "payments", "escalation", "pagerduty", "routing_key_env"),
            ("teams", "fraud", "escalation", "pagerduty", "routing_key_env"),
        ],
    }


def test_a_bad_routing_key_env_is_reported_with_its_line_and_a_key_is_never_quoted() -> None:
    path = INVALID / "bad_pagerduty.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    name_rule = "letters, digits and _, not starting with a digit"
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:{line}"
        for line in [
            "5: defaults.escalation.pagerduty.routing_key_env: this looks like a PagerDuty "
            "routing key, not the name of the environment variable holding it (the value is not "
            "shown here): put the key in the environment, e.g. PD_PAYMENTS_KEY=…, write that "
            "name here, and rotate the key if this file was shared",
            "10: teams.payments.escalation.pagerduty.routing_key_env: '$PD_PAYMENTS_KEY' is not "
            f"an environment variable name: write the name alone, without the $ ({name_rule})",
            "14: teams.support.escalation.pagerduty.routing_key_env: Field required",
            "14: teams.support.escalation.pagerduty.routing_key: unknown key (misspelt?)",
            "18: teams.risk.escalation.pagerduty.routing_key_env: expected the name of an "
            "environment variable, such as PD_PAYMENTS_KEY",
            "22: teams.ops.escalation.pagerduty.routing_key_env: '1PD KEY' is not an environment "
            f"variable name: write {name_rule}",
        ]
    ]
    assert KEY_IN_FILE not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        KEY_IN_FILE,
        KEY_IN_FILE.upper(),
        "R" + "0A" * 15 + "B",  # a ruleset's key begins with R
        "u+sJrqz9Q4xGs1YwAAAB",  # not a name, and long enough to be a secret
    ],
)
def test_anything_that_looks_like_a_key_is_refused_without_being_shown(value: str) -> None:
    found = problems(PAGED.replace(" PD_PAYMENTS_KEY\n", f' "{value}"\n', 1))
    assert len(found) == 1
    assert "routing_key_env: this looks like a PagerDuty routing key" in found[0] or (
        "routing_key_env: a value of 20 characters is not an environment variable" in found[0]
    )
    assert value not in found[0]


@pytest.mark.parametrize("name", ["PD_KEY", "_PD", "pd_key_2", "A" * 128])
def test_any_environment_variable_name_is_taken(name: str) -> None:
    config = parse(PAGED.replace("PD_PAYMENTS_KEY\n", name + "\n", 1)).config
    assert name in routing_key_envs(config)


def test_a_long_bad_name_is_not_quoted_whole() -> None:
    [found] = problems(PAGED.replace("PD_PAYMENTS_KEY\n", "X" * 129 + "\n", 1))
    assert found.endswith(
        "routing_key_env: a value of 129 characters is not an environment variable name: "
        "write letters, digits and _, not starting with a digit"
    )


# -- the routing keys in the environment -------------------------------------------------------


def test_every_place_naming_an_unset_variable_is_reported_with_its_line() -> None:
    assert problems(PAGED, {"PD_DEFAULT_KEY": ROUTING_KEY, "PD_PAYMENTS_KEY": " "}) == [
        "config.yaml:12: teams.payments.escalation.pagerduty.routing_key_env: environment "
        "variable PD_PAYMENTS_KEY is not set: it must hold the PagerDuty routing key of team "
        "payments",
        "config.yaml:18: teams.fraud.escalation.pagerduty.routing_key_env: environment "
        "variable PD_PAYMENTS_KEY is not set: it must hold the PagerDuty routing key of team fraud",
    ]
    assert problems(PAGED, {"PD_PAYMENTS_KEY": ROUTING_KEY})[0] == (
        "config.yaml:5: defaults.escalation.pagerduty.routing_key_env: environment variable "
        "PD_DEFAULT_KEY is not set: it must hold the PagerDuty routing key of the defaults"
    )


def test_with_every_variable_set_the_file_loads() -> None:
    assert parse(PAGED, ENVIRON).config.teams["payments"].escalation is not None
    # Without an environment to check against (check-config, the tests' apps): not checked.
    parse(PAGED)


def test_missing_routing_keys_names_the_unset_and_the_empty() -> None:
    config = parse(PAGED).config
    assert missing_routing_keys(config, ENVIRON) == []
    assert missing_routing_keys(config, {}) == ["PD_DEFAULT_KEY", "PD_PAYMENTS_KEY"]
    assert missing_routing_keys(config, {"PD_DEFAULT_KEY": "", "PD_PAYMENTS_KEY": "x"}) == [
        "PD_DEFAULT_KEY"
    ]


# -- settings ----------------------------------------------------------------------------------

BASE_ENV = {
    "META_APP_SECRET": "meta-app-secret",
    "META_VERIFY_TOKEN": "verify-token",
    "SLACK_SIGNING_SECRET": "signing-secret",
}


def test_pagerduty_settings_default_to_pagerdutys_own_and_no_webhook_secret() -> None:
    read = Settings.from_env(BASE_ENV)
    assert read.pagerduty_events_url == PAGERDUTY_EVENTS_URL + "/"
    assert read.pagerduty_webhook_secrets == ()


def test_pagerduty_events_url_and_several_webhook_secrets_are_read() -> None:
    read = Settings.from_env(
        BASE_ENV
        | {
            "PAGERDUTY_EVENTS_URL": "http://127.0.0.1:8999",
            "PAGERDUTY_WEBHOOK_SECRET": "old-pd-secret, new-pd-secret",
        }
    )
    assert read.pagerduty_events_url == "http://127.0.0.1:8999/"
    assert [s.get_secret_value() for s in read.pagerduty_webhook_secrets] == [
        "old-pd-secret",
        "new-pd-secret",
    ]
    assert {"old-pd-secret", "new-pd-secret"} <= set(read.secret_values())


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "PAGERDUTY_EVENTS_URL",
            "events.pagerduty.com",
            "PAGERDUTY_EVENTS_URL must be an http(s) URL",
        ),
        (
            "PAGERDUTY_WEBHOOK_SECRET",
            "pd-secret-one,,pd-secret-one",
            "PAGERDUTY_WEBHOOK_SECRET secret 2 of 3 is empty; secret 3 of 3 is the same as "
            "secret 1 (secrets are separated by commas)",
        ),
    ],
)  # fmt: skip
def test_bad_pagerduty_settings_stop_serve_without_quoting_a_secret(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(BASE_ENV | {variable: value})
    assert str(caught.value) == message
    assert "pd-secret-one" not in str(caught.value)


# -- serve and check-config --------------------------------------------------------------------


@pytest.fixture
def paged_config(tmp_path: Path) -> Path:
    path = tmp_path / "pinwatch.yaml"
    path.write_text(PAGED + f"store: {{path: {tmp_path / 'pinwatch.db'}}}\n")
    return path


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The environment serve reads, and what web.run_app would have been given (not run)."""
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "DATABASE_URL", "PD_DEFAULT_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    served: list[dict[str, Any]] = []

    def run_app(app: web.Application, **kwargs: Any) -> None:
        served.append({"app": app, **kwargs})

    monkeypatch.setattr(web, "run_app", run_app)
    handlers = logging.getLogger().handlers[:]
    yield served
    logging.getLogger().handlers[:] = handlers  # serve configured logging for the process


def test_serve_refuses_to_start_when_a_named_routing_key_is_not_set(
    paged_config: Path,
    serve_env: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PD_PAYMENTS_KEY", ROUTING_KEY)
    assert run(["serve", "--config", str(paged_config), "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert err == (
        f"{paged_config}:5: defaults.escalation.pagerduty.routing_key_env: environment variable "
        "PD_DEFAULT_KEY is not set: it must hold the PagerDuty routing key of the defaults\n"
    )
    assert out == ""
    assert serve_env == []


def test_serve_starts_with_the_keys_set_and_never_logs_one(
    paged_config: Path,
    serve_env: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    assert run(["serve", "--config", str(paged_config), "--port", "0"]) == 0
    [served] = serve_env
    assert served["app"][keys.ENVIRON]["PD_PAYMENTS_KEY"] == "1" * 32
    logging.getLogger("bot").error("sent with %s", ROUTING_KEY)
    _, err = capsys.readouterr()
    assert "sent with [redacted]" in err
    assert ROUTING_KEY not in err


def test_check_config_passes_the_file_and_says_which_key_this_environment_lacks(
    paged_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PD_DEFAULT_KEY", raising=False)
    monkeypatch.setenv("PD_PAYMENTS_KEY", ROUTING_KEY)
    assert run(["check-config", str(paged_config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{paged_config}: ok (4 teams, 0 routes")
    assert err == (
        f"{paged_config}:5: defaults.escalation.pagerduty.routing_key_env: environment variable "
        "PD_DEFAULT_KEY is not set: it must hold the PagerDuty routing key of the defaults "
        "(here; serve refuses to start where it is not set)\n"
    )
    monkeypatch.setenv("PD_DEFAULT_KEY", ROUTING_KEY)
    assert run(["check-config", str(paged_config)]) == 0
    assert capsys.readouterr().err == ""


# -- a reload ----------------------------------------------------------------------------------


def app_for(path: Path, clock: FakeClock, environ: dict[str, str] | None) -> web.Application:
    return build_app(
        settings(slack_api_url="http://127.0.0.1:9/api/"),
        load_config(path, environ=environ),
        tuning=tuning_for(clock),
        environ=environ,
    )


async def test_a_reload_naming_an_unset_routing_key_is_refused_and_the_old_version_stays(
    paged_config: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_for(paged_config, clock, ENVIRON)
    before = app[keys.CONFIG].current.digest
    paged_config.write_text(paged_config.read_text().replace("PD_PAYMENTS_KEY\n", "PD_NEW_KEY\n"))
    assert await reload_config(app) is ReloadResult.REFUSED
    assert app[keys.CONFIG].current.digest == before
    assert (
        f"{paged_config}:12: teams.payments.escalation.pagerduty.routing_key_env: environment "
        "variable PD_NEW_KEY is not set"
    ) in caplog.text

    paged_config.write_text(paged_config.read_text().replace("PD_NEW_KEY\n", "PD_DEFAULT_KEY\n"))
    assert await reload_config(app) is ReloadResult.APPLIED
    payments = app[keys.CONFIG].config.teams["payments"].escalation
    assert payments is not None
    assert payments.pagerduty is not None
    assert payments.pagerduty.routing_key_env == "PD_DEFAULT_KEY"


async def test_an_app_built_without_an_environment_does_not_check_it(
    paged_config: Path, clock: FakeClock
) -> None:
    app = app_for(paged_config, clock, None)
    assert keys.ENVIRON not in app
    paged_config.write_text(paged_config.read_text().replace("PD_PAYMENTS_KEY\n", "PD_NEW_KEY\n"))
    assert await reload_config(app) is ReloadResult.APPLIED


def test_secret_str_keeps_a_webhook_secret_out_of_reprs() -> None:
    read = Settings.from_env(BASE_ENV | {"PAGERDUTY_WEBHOOK_SECRET": "pd-hidden-secret"})
    assert "pd-hidden-secret" not in repr(read)
    assert read.pagerduty_webhook_secrets == (SecretStr("pd-hidden-secret"),)
