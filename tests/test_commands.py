"""The /pinwatch slash command on POST /slack/commands and over Socket Mode: every subcommand,
every bad input answered with one ephemeral line, Slack's signature and replay rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from tests.conftest import (
    REFERENCE_BODY,
    SLACK_SIGNING_SECRET,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
    verdict_values,
)
from tests.fake_slack import SlashAnswer


async def ask(pinwatch: Pinwatch, text: str, **kwargs: Any) -> SlashAnswer:
    return await pinwatch.slack.slash_command(
        pinwatch.client, text, secret=SLACK_SIGNING_SECRET, **kwargs
    )


async def answer_text(pinwatch: Pinwatch, text: str) -> str:
    answer = await ask(pinwatch, text)
    assert answer.status == 200, answer.text
    return answer.ephemeral_text


async def test_help_lists_every_subcommand(pinwatch: Pinwatch) -> None:
    for text in ("help", "", "  HELP  "):
        shown = await answer_text(pinwatch, text)
        assert shown.startswith("pinwatch, from Slack:")
        for sub in ("open", "route", "expect", "expected", "cancel", "help"):
            assert f"/pinwatch {sub}" in shown


async def test_route_says_what_pinwatch_route_says(pinwatch: Pinwatch) -> None:
    shown = await answer_text(pinwatch, "route +1-555-078-3881 102290129340398")
    assert shown.startswith("```\nevent:      PIN_RESET_REQUEST for +1 555-078-3881")
    assert "team:       payments" in shown
    assert "channel:    C0PAYMENTS" in shown
    assert "responders: S0PAYSEC, U0ALICE" in shown
    assert "escalation: #payments-leads mentioning U0BOB" in shown

    # Without its WABA, the route that names both does not match: the defaults apply.
    shown = await answer_text(pinwatch, "route +15550783881")
    assert "team:       (none: defaults)" in shown
    shown = await answer_text(pinwatch, "route +44 20 7946 0018")
    assert shown.startswith("Usage: /pinwatch route")  # the number must be one word


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("bogus", "Unknown subcommand 'bogus': use one of open, route, expect"),
        ("expect +15550783881 soon testing", "'soon': 'soon' is not a duration such as 90s"),
        ("expect +15550783881 25h testing", "25h is longer than 24h. Usage: /pinwatch expect"),
        ("expect +15550783881 24h1s testing", "24h1s is longer than 24h."),
        ("expect +12 1h testing", "'+12' is not a phone number. Usage: /pinwatch expect"),
        ("expect 15x5 1h testing", "'15x5' is neither a phone number (+…) nor a WABA id"),
        ("expect +15550783881 1h", "Say why: a reason is required. Usage: /pinwatch expect"),
        ("expect +15550783881 1h PIN_CHANGED", "Say why: a reason is required."),
        ("expect +15550783881 1h PIN_CHANGD oops", "'PIN_CHANGD' is not an event pinwatch"),
        ("expect +15550783881 1h ACCOUNT_OFFBOARDED x", "ACCOUNT_OFFBOARDED cannot be announced"),
        ("expect +15550783881", "Usage: /pinwatch expect +NUMBER|WABA DURATION"),
        ("cancel", "Usage: /pinwatch cancel ID"),
        ("cancel abc", "'abc' is not a window id. Usage: /pinwatch cancel ID"),
        ("cancel 1 2", "Usage: /pinwatch cancel ID"),
        ("route", "Usage: /pinwatch route +NUMBER [WABA]"),
        ("route 102290129340398", "'102290129340398' is not a phone number (+…)"),
        ("route +15550783881 WABA", "'WABA' is not a WABA id"),
        ("expected now", "Usage: /pinwatch expected"),
        ("x" * 3000, "That command is too long"),
    ],
)
async def test_bad_input_gets_one_usage_line(pinwatch: Pinwatch, text: str, starts: str) -> None:
    shown = await answer_text(pinwatch, text)
    assert shown.startswith(starts)
    assert "\n" not in shown
    assert "Traceback" not in shown
    assert pinwatch.slack.calls_to("chat.postMessage") == []


async def test_cancel_of_an_unknown_window_says_so(pinwatch: Pinwatch) -> None:
    url = pinwatch.slack.response_url()
    answer = await ask(pinwatch, "cancel 42", response_url=url)
    assert answer.ephemeral_text == "Ending window #42…"
    [reply] = await pinwatch.slack.wait_response(url)
    assert reply == {"text": "There is no window #42.", "response_type": "ephemeral"}


async def test_open_lists_the_callers_teams_unresolved_alerts(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)  # payments
    await pinwatch.wait_posted(1)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED", phone="442079460018")))  # support
    await pinwatch.wait_posted(2)
    await pinwatch.post_webhook(delivery(security("PIN_CHANGED"), time=1748811999))  # payments
    await pinwatch.wait_posted(3)
    # Resolved: no longer open.
    assert await pinwatch.click("resolve", 3) == 200
    await pinwatch.slack.wait_for(lambda s: len(s.views) == 1)
    assert (await pinwatch.submit_view(pinwatch.slack.views[0], verdict_values("false_alarm")))[
        0
    ] == 200

    async def resolved() -> bool:
        return (await pinwatch.alert(3)).resolved is not None

    await eventually(resolved)

    url = pinwatch.slack.response_url()
    answer = await ask(pinwatch, "open", response_url=url, user="U0CAROL")  # in S0PAYSEC
    assert answer.ephemeral_text == "Looking for your teams' unresolved alerts…"
    [reply] = await pinwatch.slack.wait_response(url)
    lines = reply["text"].splitlines()
    assert lines[0] == "Unresolved alerts for payments, support, the default channel, newest first:"
    request = await pinwatch.alert(1)
    link = (
        f"https://fake.slack.test/archives/C0PAYMENTS/p{(request.slack_ts or '').replace('.', '')}"
    )
    assert lines[1].startswith("• <https://fake.slack.test/archives/C0SUPPORT/")
    assert lines[2].startswith(f"• <{link}|#1> *Two-step verification reset requested* for")
    assert "team payments · not acknowledged" in lines[2]
    assert len(lines) == 3  # #3 is resolved

    # Someone of no team with responders sees support's alert (anyone may act there) only.
    url = pinwatch.slack.response_url()
    await ask(pinwatch, "open", response_url=url, user="U0MALLORY")
    [reply] = await pinwatch.slack.wait_response(url)
    lines = reply["text"].splitlines()
    assert lines[0] == "Unresolved alerts for support, the default channel, newest first:"
    assert len(lines) == 2


async def test_open_with_nothing_open(pinwatch: Pinwatch) -> None:
    url = pinwatch.slack.response_url()
    await ask(pinwatch, "open", response_url=url)
    [reply] = await pinwatch.slack.wait_response(url)
    assert reply["text"] == "No unresolved alerts for payments, support, the default channel."


# --- signatures --------------------------------------------------------------------------


async def test_bad_signature_is_refused(pinwatch: Pinwatch) -> None:
    answer = await ask(pinwatch, "help", signature="v0=" + "0" * 64)
    assert answer.status == 401
    wrong = await pinwatch.slack.slash_command(pinwatch.client, "help", secret="not-the-secret")
    assert wrong.status == 401
    missing = await pinwatch.client.post(
        "/slack/commands",
        data=urlencode({"user_id": "U0ALICE", "text": "help"}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert missing.status == 401


async def test_stale_and_replayed_requests_are_refused(pinwatch: Pinwatch) -> None:
    stale = await ask(pinwatch, "help", timestamp=int(pinwatch.clock()) - 301)
    assert stale.status == 401
    body = urlencode(
        pinwatch.slack.slash_fields("help", user="U0ALICE", channel="C0PAY", response_url=None)
    ).encode()
    first = await ask(pinwatch, "", body=body, timestamp=int(pinwatch.clock()))
    assert first.status == 200
    replay = await ask(pinwatch, "", body=body, timestamp=int(pinwatch.clock()))
    assert replay.status == 401
    assert "replayed" in replay.text


async def test_a_signed_request_that_is_not_a_command_is_400(pinwatch: Pinwatch) -> None:
    for body in (
        b"text=help",
        b"user_id=nobody&text=help",
        b"user_id=U0ALICE&user_id=U0BOB",
    ):
        answer = await ask(pinwatch, "", body=body)
        assert answer.status == 400, body


async def test_response_url_elsewhere_than_slack_is_not_followed(pinwatch: Pinwatch) -> None:
    """The answer goes to the caller as an ephemeral message instead."""
    answer = await ask(pinwatch, "cancel 7", response_url="http://192.0.2.1/hook")
    assert answer.ephemeral_text == "Ending window #7…"
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    [told] = pinwatch.slack.calls_to("chat.postEphemeral")
    assert told.params["text"] == "There is no window #7."
    assert told.params["user"] == "U0ALICE"


# --- Socket Mode -------------------------------------------------------------------------


async def test_slash_commands_over_socket_mode(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await start_pinwatch(app_token="xapp-test-token")
    await pinwatch.slack.wait_for(lambda s: s.socket is not None)
    url = pinwatch.slack.response_url()

    await pinwatch.slack.send_slash_command("help", "env-help", response_url=url)
    await pinwatch.slack.wait_for(lambda s: "env-help" in s.socket_acks)
    help_answer = pinwatch.slack.socket_payloads["env-help"]
    assert help_answer["response_type"] == "ephemeral"
    assert help_answer["text"].startswith("pinwatch, from Slack:")

    await pinwatch.slack.send_slash_command("bogus", "env-bad", response_url=url)
    await pinwatch.slack.wait_for(lambda s: "env-bad" in s.socket_acks)
    assert pinwatch.slack.socket_payloads["env-bad"]["text"].startswith("Unknown subcommand")

    await pinwatch.slack.send_slash_command(
        "expect +15550783881 1h rotation", "env-expect", response_url=url
    )
    await pinwatch.slack.wait_for(lambda s: "env-expect" in s.socket_acks)
    assert pinwatch.slack.socket_payloads["env-expect"]["text"].startswith("Announcing")
    [reply] = await pinwatch.slack.wait_response(url)
    assert reply["text"].startswith("Window #1 is open until")
    # One ack per envelope: the interactivity listener leaves slash commands alone.
    assert pinwatch.slack.socket_acks.count("env-expect") == 1


def test_the_manifest_declares_the_command_and_its_scope() -> None:
    manifest = yaml.safe_load(
        (Path(__file__).parent.parent / "slack-app-manifest.yaml").read_text()
    )
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/pinwatch"
    assert command["url"].endswith("/slack/commands")
    assert "commands" in manifest["oauth_config"]["scopes"]["bot"]
