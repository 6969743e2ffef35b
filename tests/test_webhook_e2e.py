"""Meta's webhook in, Slack's message out: the real app over loopback against the fake Slack."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import (
    META_VERIFY_TOKEN,
    REFERENCE_BODY,
    Pinwatch,
    StartPinwatch,
    action_ids,
    delivery,
    entry,
    eventually,
    security,
)
from tests.fake_slack import FakeSlack


def all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


async def wait_for_posts(slack: FakeSlack, count: int) -> None:
    await slack.wait_for_calls("chat.postMessage", count)


# --- refused first -------------------------------------------------------------------------


async def test_missing_signature_is_401_and_nothing_is_posted(pinwatch: Pinwatch) -> None:
    async with pinwatch.client.post("/webhook", data=REFERENCE_BODY) as response:
        assert response.status == 401
    assert pinwatch.slack.calls_to("chat.postMessage") == []


async def test_wrong_signature_is_401_and_nothing_is_posted(pinwatch: Pinwatch) -> None:
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY, secret="not-the-app-secret")
    assert status == 401
    bad_prefix = {"X-Hub-Signature-256": "sha1=" + "0" * 40}
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY, headers=bad_prefix)
    assert status == 401

    # A good delivery afterwards is the only one that reaches Slack.
    status, _ = await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    assert status == 200
    await wait_for_posts(pinwatch.slack, 1)
    assert len(pinwatch.slack.top_level()) == 1
    assert "PIN changed" in pinwatch.slack.top_level()[0].text


async def test_body_changed_after_signing_is_401(pinwatch: Pinwatch) -> None:
    from bot.webhook import sign

    signature = sign(b"test-meta-app-secret", REFERENCE_BODY)
    tampered = REFERENCE_BODY.replace(b"15550783881", b"15550783882")
    async with pinwatch.client.post(
        "/webhook", data=tampered, headers={"X-Hub-Signature-256": signature}
    ) as response:
        assert response.status == 401


async def test_handshake(pinwatch: Pinwatch) -> None:
    ok = {
        "hub.mode": "subscribe",
        "hub.verify_token": META_VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    async with pinwatch.client.get("/webhook", params=ok) as response:
        assert response.status == 200
        assert await response.text() == "1158201444"
        assert response.content_type == "text/plain"
    for bad in (
        {**ok, "hub.verify_token": "guess"},
        {**ok, "hub.mode": "unsubscribe"},
        {"hub.challenge": "1"},
    ):
        async with pinwatch.client.get("/webhook", params=bad) as response:
            assert response.status == 403


async def test_not_json_is_400_and_not_a_webhook_is_400(pinwatch: Pinwatch) -> None:
    status, text = await pinwatch.post_webhook(b"{not json")
    assert (status, text) == (400, "body is not JSON")
    status, text = await pinwatch.post_webhook({"hello": "world"})
    assert status == 400
    assert text.startswith("not a WhatsApp webhook")
    status, text = await pinwatch.post_webhook({"object": "page", "entry": []})
    assert status == 400
    status, _ = await pinwatch.post_webhook(delivery({"field": "security", "value": "x"}))
    assert status == 400


async def test_too_large_is_413_but_three_megabytes_is_accepted(pinwatch: Pinwatch) -> None:
    padding = "x" * (3_000_000 - len(REFERENCE_BODY))
    payload = json.loads(REFERENCE_BODY)
    payload["padding"] = padding
    status, _ = await pinwatch.post_webhook(payload)
    assert status == 200
    payload["padding"] = "x" * (3 * 1024 * 1024)
    status, _ = await pinwatch.post_webhook(payload)
    assert status == 413
    await wait_for_posts(pinwatch.slack, 1)
    assert len(pinwatch.slack.top_level()) == 1


# --- the alert path ------------------------------------------------------------------------


async def test_reference_example_posts_one_routed_alert_with_both_buttons(
    pinwatch: Pinwatch,
) -> None:
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200

    await wait_for_posts(pinwatch.slack, 1)
    [message] = pinwatch.slack.top_level("C0PAYMENTS")
    assert action_ids(message.blocks) == [
        "pinwatch.acknowledge",
        "pinwatch.escalate",
        "pinwatch.resolve",
    ]
    shown = all_text(message.blocks)
    assert "+1 555-078-3881" in shown
    assert "102290129340398" in shown
    assert "61555822107539" in shown
    assert "<!date^1748811473^" in shown
    assert "<!subteam^S0PAYSEC>" in shown
    assert "reset requested" in message.text
    assert "+1 555-078-3881" in message.text

    alert = await pinwatch.wait_posted(1)
    assert alert.team == "payments"
    assert alert.slack_channel == "C0PAYMENTS"
    assert alert.slack_ts == message.ts


async def test_batched_delivery_gives_one_alert_per_security_change(pinwatch: Pinwatch) -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            entry(security("PIN_CHANGED"), security("PIN_RESET_REQUEST", requester="1")),
            entry(
                security("PIN_CHANGED", phone="442079460018"),
                {"field": "messages", "value": {"messages": []}},
                waba="200000000000001",
            ),
            entry(security("SOMETHING_NEW", phone="4915112345678"), waba="300000000000001"),
        ],
    }
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    await wait_for_posts(pinwatch.slack, 4)
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 2
    assert len(pinwatch.slack.top_level("C0SUPPORT")) == 1
    [unknown] = pinwatch.slack.top_level("C0WASEC")
    assert "SOMETHING_NEW" in unknown.text
    assert action_ids(unknown.blocks) == ["pinwatch.escalate", "pinwatch.resolve"]


async def test_duplicate_delivery_gives_one_alert(pinwatch: Pinwatch) -> None:
    for _ in range(3):
        status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
        assert status == 200
    status, _ = await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    assert status == 200
    await wait_for_posts(pinwatch.slack, 2)
    assert [m.text.split(":")[0] for m in pinwatch.slack.top_level()] == [
        "[HIGH] Two-step verification reset requested",
        "[INFO] Two-step verification PIN changed",
    ]


async def test_other_fields_are_acknowledged_and_ignored(pinwatch: Pinwatch) -> None:
    body = delivery({"field": "messages", "value": {"messaging_product": "whatsapp"}})
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    status, _ = await pinwatch.post_webhook(delivery(security("PIN_CHANGED")))
    assert status == 200

    # Once the security change is posted and nothing stored waits for Slack, every post that
    # the two deliveries could cause has been made.
    async def settled() -> bool:
        unposted, _ = await pinwatch.store.count_unposted()
        return any("PIN changed" in m.text for m in pinwatch.slack.top_level()) and not unposted

    await eventually(settled)
    [posted] = pinwatch.slack.calls_to("chat.postMessage")
    assert "PIN changed" in posted.params["text"]
    assert await pinwatch.store.get(2) is None  # the messages change was never stored


async def test_slack_outage_delays_but_does_not_lose_the_alert(pinwatch: Pinwatch) -> None:
    # slack_sdk retries a 500 twice within one attempt; six failures outlast two attempts.
    pinwatch.slack.fail("chat.postMessage", times=6, status=500)
    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await pinwatch.slack.wait_for_calls("chat.postMessage", timeout=15)
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 1
    assert len([c for c in pinwatch.slack.calls_to("chat.postMessage") if c.failed]) == 6


async def test_unusable_channel_falls_back_to_default_with_a_note(pinwatch: Pinwatch) -> None:
    pinwatch.slack.missing_channels.add("C0PAYMENTS")
    await pinwatch.post_webhook(REFERENCE_BODY)
    await wait_for_posts(pinwatch.slack, 1)
    [message] = pinwatch.slack.top_level("C0WASEC")
    assert "channel_not_found" in all_text(message.blocks)
    assert "C0PAYMENTS" in all_text(message.blocks)


async def test_restart_resumes_what_was_pending(start_pinwatch: StartPinwatch) -> None:
    first = await start_pinwatch()
    first.slack.fail("chat.postMessage", times=1000, status=503)
    status, _ = await first.post_webhook(REFERENCE_BODY)
    assert status == 200
    await first.slack.wait_for(lambda s: any(c.failed for c in s.calls))
    await first.stop()

    # The same store and a Slack that works again: the alert arrives, and only once.
    second_slack = await start_pinwatch()
    await second_slack.post_webhook(REFERENCE_BODY)
    await wait_for_posts(second_slack.slack, 1)
    assert len(second_slack.slack.top_level("C0PAYMENTS")) == 1
    await second_slack.wait_posted(1)
