"""Socket Mode: the same clicks over Slack's WebSocket instead of POST /slack/actions."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import DATA, REFERENCE_BODY, Pinwatch, StartPinwatch


def click_payload(
    action: str, alert_id: int, *, user: str, channel: str, ts: str
) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((DATA / "slack_block_actions.json").read_text())
    payload["user"] = {"id": user, "username": user.lower(), "team_id": "T0FAKE"}
    payload["container"].update(channel_id=channel, message_ts=ts)
    payload["channel"]["id"] = channel
    payload["actions"][0].update(action_id=f"pinwatch.{action}", value=str(alert_id))
    return payload


async def socket_pinwatch(start_pinwatch: StartPinwatch) -> Pinwatch:
    pinwatch = await start_pinwatch(app_token="xapp-test-token")
    await pinwatch.slack.wait_for(lambda s: s.socket is not None)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    return pinwatch


async def test_acknowledge_over_socket_mode(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await socket_pinwatch(start_pinwatch)
    [original] = pinwatch.slack.top_level("C0PAYMENTS")
    payload = click_payload("acknowledge", 1, user="U0ALICE", channel="C0PAYMENTS", ts=original.ts)
    await pinwatch.slack.send_interactive(payload, "envelope-1")

    await pinwatch.slack.wait_for(lambda s: "envelope-1" in s.socket_acks)
    await pinwatch.slack.wait_for_calls("chat.update")
    updated = pinwatch.slack.message("C0PAYMENTS", original.ts)
    assert "Acknowledged by <@U0ALICE>" in json.dumps(updated.blocks)
    alert = await pinwatch.alert(1)
    assert alert.acknowledged is not None
    assert alert.acknowledged.user_id == "U0ALICE"


async def test_socket_mode_refuses_who_http_refuses(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await socket_pinwatch(start_pinwatch)
    [original] = pinwatch.slack.top_level("C0PAYMENTS")
    payload = click_payload("escalate", 1, user="U0MALLORY", channel="C0PAYMENTS", ts=original.ts)
    await pinwatch.slack.send_interactive(payload, "envelope-2")
    await pinwatch.slack.send_interactive({"type": "view_submission"}, "envelope-3")

    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    await pinwatch.slack.wait_for(lambda s: {"envelope-2", "envelope-3"} <= set(s.socket_acks))
    [refusal] = pinwatch.slack.calls_to("chat.postEphemeral")
    assert "Only the responders of team payments" in refusal.params["text"]
    assert (await pinwatch.alert(1)).escalated is None
