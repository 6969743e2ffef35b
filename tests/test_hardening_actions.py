"""Clicks under attack and in awkward moments: before the post is recorded, on the wrong message,
replayed, or after the routing file changed under an open alert."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from tests.conftest import (
    REFERENCE_BODY,
    TEST_CONFIG,
    Pinwatch,
    StartPinwatch,
    block_actions_body,
    eventually,
)
from tests.fake_slack import RecordedCall
from tests.schema_history import downgrade
from tests.store_failure import StoreFailure
from tests.test_operations import config_version, wait_for_version_change
from tests.test_storms import THRESHOLD, send_reset_requests, wait_all_posted


async def posted_reset_request(pinwatch: Pinwatch) -> None:
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await pinwatch.wait_posted(1)


def ephemeral_texts(pinwatch: Pinwatch, user: str) -> list[str]:
    return [str(e["text"]) for e in pinwatch.slack.ephemerals if e["user"] == user]


async def test_a_click_before_the_post_is_recorded_is_applied(pinwatch: Pinwatch) -> None:
    statuses: list[int] = []

    async def click_at_once(_call: RecordedCall) -> None:
        # Slack has the message and pinwatch does not know its ts yet: click it now.
        pinwatch.slack.before_answering.clear()
        [message] = pinwatch.slack.top_level("C0PAYMENTS")
        alert = dataclasses.replace(
            await pinwatch.alert(1), slack_channel=message.channel, slack_ts=message.ts
        )
        body = block_actions_body(
            "pinwatch.acknowledge", 1, user="U0ALICE", name="alice", alert=alert
        )
        statuses.append(await pinwatch.click("acknowledge", 1, body=body))

    pinwatch.slack.before_answering["chat.postMessage"] = click_at_once
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await pinwatch.slack.wait_for_calls("chat.update")

    assert statuses == [200]
    assert ephemeral_texts(pinwatch, "U0ALICE") == []
    alert = await pinwatch.alert(1)
    assert alert.acknowledged is not None
    assert alert.acknowledged.user_id == "U0ALICE"
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert "Acknowledged by <@U0ALICE>" in json.dumps(message.blocks)


async def test_a_click_on_another_message_is_refused(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    alert = await pinwatch.alert(1)
    elsewhere = dataclasses.replace(alert, slack_ts="1750000099.000100")
    forged = block_actions_body(
        "pinwatch.acknowledge", 1, user="U0ALICE", name="alice", alert=elsewhere
    )
    assert await pinwatch.click("acknowledge", 1, body=forged) == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")

    assert ephemeral_texts(pinwatch, "U0ALICE") == [
        "That button does not belong to this alert's message."
    ]
    assert (await pinwatch.alert(1)).acknowledged is None
    audit = [(e.action, e.actor.user_id) for e in await pinwatch.store.audit_log(1)]
    assert ("refused acknowledge", "U0ALICE") in audit
    assert pinwatch.slack.calls_to("chat.update") == []


async def test_a_click_replayed_after_a_restart_is_refused(start_pinwatch: StartPinwatch) -> None:
    first = await start_pinwatch()
    await posted_reset_request(first)
    alert = await first.alert(1)
    body = block_actions_body("pinwatch.escalate", 1, user="U0MALLORY", name=None, alert=alert)
    stamp = int(first.clock())
    assert await first.click("escalate", 1, body=body, timestamp=stamp) == 200
    await first.slack.wait_for_calls("chat.postEphemeral")  # refused: not a responder
    await first.stop()

    first.clock.advance(60)
    second = await start_pinwatch((first.slack, first.slack_url))
    assert await second.click("escalate", 1, body=body, timestamp=stamp) == 401


async def test_a_future_dated_click_stays_refused_until_its_own_window_ends(
    pinwatch: Pinwatch,
) -> None:
    await posted_reset_request(pinwatch)
    alert = await pinwatch.alert(1)
    body = block_actions_body("pinwatch.escalate", 1, user="U0MALLORY", name=None, alert=alert)
    ahead = int(pinwatch.clock()) + 4 * 60  # Slack's check accepts up to 5 minutes ahead
    assert await pinwatch.click("escalate", 1, body=body, timestamp=ahead) == 200

    # Six minutes after receipt the timestamp is still within its window: a replay must fail.
    pinwatch.clock.advance(6 * 60)
    assert await pinwatch.click("escalate", 1, body=body, timestamp=ahead) == 401


async def edit_config(pinwatch: Pinwatch, text: str) -> None:
    old = await config_version(pinwatch)
    pinwatch.config_path.write_text(text)
    await wait_for_version_change(pinwatch, old)


def payments_config(pinwatch: Pinwatch, *, name: str, responders: str) -> str:
    store = pinwatch.config_path.parent / "pinwatch.db"
    text = TEST_CONFIG.format(store=store)
    text = text.replace('responders: ["S0PAYSEC", "U0ALICE"]', responders)
    return text.replace("  payments:\n", f"  {name}:\n").replace("team: payments", f"team: {name}")


async def test_renaming_a_team_does_not_lift_its_responders_limit(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await edit_config(
        pinwatch,
        payments_config(pinwatch, name="payments-renamed", responders="# no responders"),
    )

    assert await pinwatch.click("acknowledge", 1, user="U0MALLORY", name="mallory") == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert (await pinwatch.alert(1)).acknowledged is None
    [refusal] = [e for e in await pinwatch.store.audit_log(1) if e.action.startswith("refused")]
    assert refusal.actor.user_id == "U0MALLORY"
    assert refusal.detail == "responders as routed: S0PAYSEC, U0ALICE"

    # A responder it was routed with still may, and the audit says which list applied.
    assert await pinwatch.click("acknowledge", 1, user="U0ALICE", name="alice") == 200
    await pinwatch.slack.wait_for_calls("chat.update")
    [ack] = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert ack.detail == "responders as routed: S0PAYSEC, U0ALICE"


async def test_dropping_a_teams_responders_does_not_open_its_alerts(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await edit_config(pinwatch, payments_config(pinwatch, name="payments", responders=""))
    assert await pinwatch.click("escalate", 1, user="U0MALLORY", name="mallory") == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert "Only the responders of team payments" in ephemeral_texts(pinwatch, "U0MALLORY")[0]
    assert (await pinwatch.alert(1)).escalated is None


async def test_removing_a_responder_applies_to_open_alerts(pinwatch: Pinwatch) -> None:
    await posted_reset_request(pinwatch)
    await edit_config(
        pinwatch,
        payments_config(pinwatch, name="payments", responders='responders: ["S0PAYSEC"]'),
    )
    assert await pinwatch.click("acknowledge", 1, user="U0ALICE", name="alice") == 200
    await pinwatch.slack.wait_for_calls("chat.postEphemeral")
    assert (await pinwatch.alert(1)).acknowledged is None

    # U0CAROL is in S0PAYSEC, in both lists.
    assert await pinwatch.click("acknowledge", 1, user="U0CAROL", name="carol") == 200

    async def acknowledged() -> bool:
        return (await pinwatch.alert(1)).acknowledged is not None

    await eventually(acknowledged)
    [ack] = [e for e in await pinwatch.store.audit_log(1) if e.action == "acknowledged"]
    assert ack.detail == (
        "responders as routed: S0PAYSEC, U0ALICE; team payments in the routing file now: S0PAYSEC"
    )


async def test_a_store_failure_during_the_replay_check_is_a_503_not_a_500(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch(store_busy_timeout=0.05)
    await posted_reset_request(pinwatch)
    failure = StoreFailure(pinwatch)
    await failure.start()
    try:
        status = await pinwatch.click("acknowledge", 1, user="U0ALICE")
    finally:
        await failure.stop()
    # As POST /webhook answers on a store failure: unavailable, try again; never a crash.
    assert status == 503
    assert (await pinwatch.alert(1)).acknowledged is None


async def test_a_stop_is_not_held_up_by_a_click_waiting_for_its_post(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch(shutdown_grace=0.5)
    pinwatch.slack.fail("chat.postMessage", times=1000, error="internal_error")
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.slack.wait_for_calls("chat.postMessage", ok_only=False)
    somewhere = dataclasses.replace(
        await pinwatch.alert(1), slack_channel="C0PAYMENTS", slack_ts="1750000000.000100"
    )
    body = block_actions_body("pinwatch.acknowledge", 1, user="U0ALICE", name="a", alert=somewhere)
    assert await pinwatch.click("acknowledge", 1, body=body) == 200

    started = time.monotonic()
    await pinwatch.stop()
    # shutdown_grace bounds the stop (the click waits up to a minute for the post otherwise).
    assert time.monotonic() - started < 3.0


async def test_a_click_on_an_alert_posted_to_the_fallback_channel_counts(
    pinwatch: Pinwatch,
) -> None:
    pinwatch.slack.missing_channels.add("C0PAYMENTS")
    await pinwatch.post_webhook(REFERENCE_BODY)
    alert = await pinwatch.wait_posted(1)
    assert alert.slack_channel == "C0WASEC"  # Slack refused C0PAYMENTS: posted in the defaults
    assert await pinwatch.click("acknowledge", 1, user="U0ALICE") == 200

    async def acknowledged() -> bool:
        return (await pinwatch.alert(1)).acknowledged is not None

    await eventually(acknowledged)


async def test_the_storm_escalate_button_escalates_from_the_summary(pinwatch: Pinwatch) -> None:
    await send_reset_requests(pinwatch, THRESHOLD + 3)
    await wait_all_posted(pinwatch, THRESHOLD + 3)
    [summary] = [m for m in pinwatch.slack.top_level() if m.text.startswith("[STORM]")]
    [target] = [
        int(e["value"])
        for b in summary.blocks
        if b.get("block_id") == "pinwatch-storm"
        for e in b["elements"]
        if e["action_id"] == "pinwatch.escalate"
    ]
    assert (await pinwatch.alert(target)).slack_ts == summary.ts
    assert await pinwatch.click("escalate", target, user="U0ALICE") == 200

    async def paged() -> bool:
        return (await pinwatch.alert(target)).escalation_ts is not None

    await eventually(paged)
    assert len(pinwatch.slack.top_level("C0PAYLEADS")) == 1


# Migrations are per backend: this one is SQLite's schema 3 → 4.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_alert_of_a_schema_3_store_whose_team_is_gone_fails_closed(
    start_pinwatch: StartPinwatch,
) -> None:
    first = await start_pinwatch()
    await posted_reset_request(first)
    await first.stop()
    # Back to schema 3, as a store written by the previous pinwatch: migration 4 runs again
    # (and every one after it).
    await downgrade(first, sqlite=3, postgres=0)
    first.config_path.write_text(payments_config(first, name="renamed", responders=""))

    second = await start_pinwatch((first.slack, first.slack_url))
    assert (await second.alert(1)).responders is None
    assert await second.click("acknowledge", 1, user="U0ALICE") == 200
    await second.slack.wait_for_calls("chat.postEphemeral")
    assert (await second.alert(1)).acknowledged is None
    [refusal] = [e for e in await second.store.audit_log(1) if e.action.startswith("refused")]
    assert refusal.detail == "team payments is no longer defined"
    assert "no longer in the routing file" in ephemeral_texts(second, "U0ALICE")[0]


async def test_a_nul_in_a_slack_user_name_does_not_fail_an_acknowledgement(
    pinwatch: Pinwatch,
) -> None:
    """Names come from Slack's payload; the UPDATE cleans them for PostgreSQL, the audit row
    written in the same transaction does not."""
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    assert await pinwatch.click("acknowledge", 1, user="U0ALICE", name="al\x00ice") == 200

    async def acknowledged() -> bool:
        return (await pinwatch.alert(1)).acknowledged is not None

    await eventually(acknowledged)
