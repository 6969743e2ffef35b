"""The command line as a user runs it: exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest
from aiohttp import web

from bot.cli import main
from tests.conftest import META_APP_SECRET, Pinwatch

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "config.example.yaml"
BAD = Path(__file__).parent / "data" / "config" / "several_errors.yaml"
BAD_LINES = ["2", "3", "6", "10", "13", "14"]
PAYMENTS_WABA = "102290129340398"


def run(argv: Sequence[str]) -> int:
    """main() as the console script would end: a SystemExit counts as its exit code."""
    try:
        return main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    if not isinstance(code, int):
        raise TypeError(f"exit code {code!r} is not a number")
    return code


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def route_table(out: str) -> dict[str, str]:
    """'team:       payments' lines → {'team': 'payments'}."""
    rows = [line.split(":", 1) for line in out.splitlines()]
    return {label.strip(): value.strip() for label, value in rows}


def assert_problem_lines(err: str, path: Path) -> None:
    lines = err.splitlines()
    assert [line.removeprefix(f"{path}:").split(":")[0] for line in lines] == BAD_LINES
    assert all(line.startswith(f"{path}:") for line in lines)
    assert all(len(line.split(": ", 2)) == 3 for line in lines)  # PATH:LINE: where: what


# -- check-config ----------------------------------------------------------------------------


def test_check_config_on_the_example_prints_one_summary_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    [line] = out.splitlines()
    assert line.startswith(f"{EXAMPLE}: ok (2 teams, 3 routes, default channel #wa-security")
    assert err == ""


def test_check_config_on_a_bad_file_lists_every_error_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["check-config", str(BAD)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_problem_lines(err, BAD)


def test_check_config_on_a_missing_file_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    assert run(["check-config", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"{missing}:1: file: ")


# -- route -----------------------------------------------------------------------------------


def test_route_for_the_payments_number_shows_the_payments_team(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA, "--phone", "15550783881"]
    assert run(argv) == 0
    table = route_table(capsys.readouterr().out)
    assert table["event"] == "PIN_RESET_REQUEST for +1 555-078-3881 (WABA 102290129340398)"
    assert table["team"] == "payments"
    assert table["channel"] == "C0PAYMENTS"
    assert table["mentions"] == "S0PAYSEC"
    assert table["responders"] == "S0PAYSEC, U0ALICE"
    assert table["ack within"] == "600s, then escalate"
    assert table["escalation"] == "#payments-leads mentioning U0BOB"


def test_route_for_an_unmatched_number_shows_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", "999", "--phone", "+49 151 23456789"]
    assert run(argv) == 0
    table = route_table(capsys.readouterr().out)
    assert table["team"] == "(none: defaults)"
    assert table["channel"] == "#wa-security"
    assert table["mentions"] == "(none)"
    assert table["responders"] == "anyone in the channel"
    assert table["ack within"] == "900s, then escalate"
    assert table["escalation"] == "#security-escalations mentioning S0SECLEADS"


def test_route_honours_the_event_option(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", "999", "--phone", "+44 20 7946 0018"]
    assert run([*argv, "--event", "PIN_CHANGED"]) == 0
    table = route_table(capsys.readouterr().out)
    assert table["event"].startswith("PIN_CHANGED for ")
    assert table["team"] == "support"
    assert table["channel"] == "#support-security"


def test_route_of_an_event_of_the_whole_account_goes_by_its_waba(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA]
    assert run([*argv, "--event", "ACCOUNT_OFFBOARDED"]) == 0
    table = route_table(capsys.readouterr().out)
    assert table["event"] == f"ACCOUNT_OFFBOARDED for the whole account (WABA {PAYMENTS_WABA})"
    assert table["field"] == "account_update"
    assert table["severity"] == "critical"
    assert table["team"] == "payments"
    assert table["ack within"] == "600s, then escalate"

    # The example's alerts: map turns these down and off.
    assert run([*argv, "--event", "PARTNER_APP_UNINSTALLED"]) == 0
    table = route_table(capsys.readouterr().out)
    assert (table["severity"], table["ack within"]) == ("info", "not needed (Escalate button only)")
    assert run([*argv, "--event", "MM_LITE_TERMS_SIGNED"]) == 0
    table = route_table(capsys.readouterr().out)
    assert table["severity"] == "off"
    assert table["ack within"].startswith("never posted")


def test_route_takes_a_field_and_its_only_event(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA, "--phone", "15550783881"]
    assert run([*argv, "--field", "phone_number_name_update", "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["event"] == "PHONE_NUMBER_NAME_UPDATE"
    assert decision["field"] == "phone_number_name_update"
    assert decision["severity"] == "info"  # no decision given: not an approved name
    assert decision["team"] == "payments"


def test_route_of_an_event_pinwatch_does_not_know_takes_the_field_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA, "--json"]
    assert run([*argv, "--field", "account_update", "--event", "SOMETHING_NEW"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert (decision["field"], decision["severity"]) == ("account_update", "info")
    assert decision["phone_number"] is None
    assert decision["team"] == "payments"  # by its WABA


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--field", "account_alerts"], "--field account_alerts needs --event: one of OBA_"),
        (
            ["--field", "security", "--event", "DISABLED_UPDATE"],
            "--event DISABLED_UPDATE comes in the account_update field, not security",
        ),
        (["--field", "messages"], "invalid choice: 'messages'"),
    ],
)
def test_route_refuses_a_field_and_event_that_do_not_go_together(
    capsys: pytest.CaptureFixture[str], extra: list[str], said: str
) -> None:
    assert run(["route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA, *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert said in err


def test_route_with_a_bad_config_reports_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["route", "--config", str(BAD), "--waba", PAYMENTS_WABA, "--phone", "15550783881"]
    assert run(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_problem_lines(err, BAD)


# -- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check-config"],
        ["route", "--config", str(EXAMPLE), "--phone", "15550783881"],
        ["serve", "--config", str(EXAMPLE), "--port", "http"],
        ["serve", "--config", str(EXAMPLE), "--port", "70000"],
    ],
    ids=["no-command", "unknown-command", "no-path", "no-waba", "port-not-number", "port-range"],
)
def test_usage_errors_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: pinwatch" in err


# -- serve -----------------------------------------------------------------------------------


def _must_not_serve(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("serve started a server although a secret is missing")


def test_serve_without_meta_app_secret_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("META_APP_SECRET", raising=False)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.setenv("META_VERIFY_TOKEN", "verify")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing")
    monkeypatch.setattr(web, "run_app", _must_not_serve)
    assert run(["serve", "--config", str(EXAMPLE), "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert "META_APP_SECRET" in err
    assert "not set" in err
    assert "META_VERIFY_TOKEN" not in err  # only what is actually missing is named
    assert out == ""


# -- as a real process -----------------------------------------------------------------------


def _environment_without_secrets() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "SLACK_", "PORT"))}
    return env | {"META_VERIFY_TOKEN": "verify", "SLACK_SIGNING_SECRET": "signing"}


def test_python_m_bot_check_config_on_the_example() -> None:
    result = run_process("check-config", str(EXAMPLE))
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith(f"{EXAMPLE}: ok (")


def test_python_m_bot_check_config_on_a_bad_file() -> None:
    result = run_process("check-config", str(BAD))
    assert (result.returncode, result.stdout) == (1, "")
    assert_problem_lines(result.stderr, BAD)


def test_python_m_bot_route_prints_the_destination() -> None:
    result = run_process(
        "route", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA, "--phone", "+1 555-078-3881"
    )
    assert result.returncode == 0, result.stderr
    assert route_table(result.stdout)["team"] == "payments"


def test_python_m_bot_usage_error_exits_2() -> None:
    result = run_process("route", "--config", str(EXAMPLE))
    assert result.returncode == 2
    assert "usage: pinwatch" in result.stderr


def test_python_m_bot_serve_without_meta_app_secret_exits_1() -> None:
    result = run_process(
        "serve", "--config", str(EXAMPLE), "--port", "0", env=_environment_without_secrets()
    )
    assert result.returncode == 1
    assert "META_APP_SECRET" in result.stderr
    assert "not set" in result.stderr


# -- JSON output and send-test ---------------------------------------------------------------


def test_check_config_and_route_speak_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check-config", "--json", str(EXAMPLE)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert summary["teams"] == ["payments", "support"]

    assert run(["check-config", "--json", str(BAD)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["line"] for p in problems] == [int(n) for n in BAD_LINES]
    assert set(problems[0]) == {"source", "line", "where", "what"}

    argv = ["route", "--json", "--config", str(EXAMPLE), "--waba", PAYMENTS_WABA]
    assert run([*argv, "--phone", "+1 555 078 3881"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["team"] == "payments"
    assert decision["channel"] == "C0PAYMENTS"
    assert decision["escalation"] == {"channel": "#payments-leads", "mention": ["U0BOB"]}


async def test_send_test_reaches_a_running_pinwatch(pinwatch: Pinwatch) -> None:
    import asyncio

    url = str(pinwatch.client.make_url("/webhook"))
    env = {**os.environ, "META_APP_SECRET": META_APP_SECRET}
    command = [sys.executable, "-m", "bot", "send-test", "--url", url]
    command += ["--config", str(pinwatch.config_path)]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "server answered 200: ok" in out.decode()
    assert "the alert should appear in C0PAYMENTS (team payments)" in out.decode()
    await pinwatch.wait_posted(1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert "reset requested" in message.text

    # Signed with another secret: the server says 401 and send-test says why, exit 1.
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**env, "META_APP_SECRET": "another-secret"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 1
    assert "server answered 401" in out.decode()
    assert "META_APP_SECRET differs" in out.decode()


def test_send_test_without_secret_or_server_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("META_APP_SECRET", raising=False)
    assert run(["send-test", "--url", "http://127.0.0.1:9/webhook"]) == 2
    assert "META_APP_SECRET is not set" in capsys.readouterr().err
    monkeypatch.setenv("META_APP_SECRET", "x")
    assert run(["send-test", "--url", "http://127.0.0.1:9/webhook"]) == 1
    assert "could not reach" in capsys.readouterr().err
    assert run(["send-test", "--url", "ftp://example"]) == 2
