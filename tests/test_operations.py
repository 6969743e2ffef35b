"""Running it: live routing edits, SIGHUP, health, metrics, no secret in the logs."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import load_config
from tests.conftest import (
    META_APP_SECRET,
    META_VERIFY_TOKEN,
    REFERENCE_BODY,
    SLACK_BOT_TOKEN,
    SLACK_SIGNING_SECRET,
    TEST_CONFIG,
    Pinwatch,
    delivery,
    eventually,
    security,
)


async def config_version(pinwatch: Pinwatch) -> str:
    async with pinwatch.client.get("/readyz") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return str(body["config"]["version"])


# A reload parses in a new process at a lower priority than the service: on a machine whose
# cores are all busy (the test workers), it can take several seconds to be scheduled.
RELOAD_WAIT = 30.0


async def wait_for_version_change(pinwatch: Pinwatch, old: str) -> str:
    async def changed() -> bool:
        return await config_version(pinwatch) != old

    await eventually(changed, timeout=RELOAD_WAIT)
    return await config_version(pinwatch)


async def metric(pinwatch: Pinwatch, name: str, labels: str = "") -> float:
    async with pinwatch.client.get("/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _alert_ids(blocks: list[dict[str, Any]]) -> set[str]:
    """The alerts a message shows: one for an alert, one per row for a storm summary."""
    ids = {b["block_id"] for b in blocks if b.get("block_id", "").startswith("pinwatch-")}
    ids.discard("pinwatch-storm")
    return ids


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


async def test_a_valid_edit_takes_effect_for_the_next_event(pinwatch: Pinwatch) -> None:
    before = await config_version(pinwatch)
    edit(pinwatch.config_path, 'channel: "C0PAYMENTS"', 'channel: "C0NEWPAY"')
    after = await wait_for_version_change(pinwatch, before)
    assert after != before

    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    assert len(pinwatch.slack.top_level("C0NEWPAY")) == 1
    assert await metric(pinwatch, "pinwatch_config_reloads_total", 'result="applied"') == 1


async def test_an_invalid_edit_is_refused_and_the_old_version_still_routes(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = await config_version(pinwatch)
    edit(pinwatch.config_path, 'channel: "C0PAYMENTS"', "channel: payments-without-hash")

    async def refused() -> bool:
        return await metric(pinwatch, "pinwatch_config_reloads_total", 'result="refused"') >= 1

    await eventually(refused, timeout=RELOAD_WAIT)
    assert await config_version(pinwatch) == before
    assert f"{pinwatch.config_path}:" in caplog.text
    assert "teams.payments.channel" in caplog.text

    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    assert len(pinwatch.slack.top_level("C0PAYMENTS")) == 1


async def test_reload_under_concurrent_deliveries_takes_effect_and_drops_nothing(
    pinwatch: Pinwatch,
) -> None:
    received: dict[int, int] = {}  # delivery n → HTTP status
    changed_from: list[int] = []  # the first delivery sent once the new route was in force
    stop = asyncio.Event()
    numbers = itertools.count()

    async def sender() -> None:
        while not stop.is_set():
            n = next(numbers)
            body = delivery(security("PIN_CHANGED", phone="15550783881"), time=1748811473 + n)
            received[n], _ = await pinwatch.post_webhook(body)

    async def edit_under_load() -> None:
        async def some_received() -> bool:
            return len(received) >= 20

        await eventually(some_received)
        for n in range(10):  # edits that end where they began: the version in force stays
            edit(pinwatch.config_path, "ack_timeout: 10m", f"ack_timeout: {11 + n}m")
            edit(pinwatch.config_path, f"ack_timeout: {11 + n}m", "ack_timeout: 10m")
            await asyncio.sleep(0.01)
        edit(pinwatch.config_path, 'channel: "C0PAYMENTS"', 'channel: "C0NEWPAY"')
        wanted = load_config(pinwatch.config_path).digest

        async def in_force() -> bool:
            return await config_version(pinwatch) == wanted

        await eventually(in_force, timeout=RELOAD_WAIT)
        changed_from.append(next(numbers))

        async def more_received() -> bool:
            return sum(n >= changed_from[0] for n in received) >= 20

        await eventually(more_received)
        stop.set()

    await asyncio.gather(edit_under_load(), *(sender() for _ in range(4)))
    assert set(received.values()) == {200}
    total = len(received)

    async def all_posted() -> bool:
        alerts = [await pinwatch.store.get(i) for i in range(1, total + 1)]
        return all(a is not None and a.slack_ts is not None for a in alerts)

    await eventually(all_posted, timeout=15)
    channel_of = {}
    for i in range(1, total + 1):
        alert = await pinwatch.alert(i)
        assert alert.event.time is not None
        channel_of[alert.event.time - 1748811473] = alert.slack_channel
    assert sorted(channel_of) == sorted(received)
    assert set(channel_of.values()) <= {"C0PAYMENTS", "C0NEWPAY"}
    # Routed when posted, so a delivery sent after the reload can only go to the new channel.
    late = [n for n in channel_of if n >= changed_from[0]]
    assert len(late) >= 20
    assert {channel_of[n] for n in late} == {"C0NEWPAY"}
    # Each event is one message or one row of a storm summary: none lost, none twice.
    rows = sum(1 for m in pinwatch.slack.top_level() for _ in _alert_ids(m.blocks))
    assert rows == total


async def test_health_readiness_and_metrics_endpoints(pinwatch: Pinwatch) -> None:
    async with pinwatch.client.get("/healthz") as response:
        assert response.status == 200
    async with pinwatch.client.get("/readyz") as response:
        body = await response.json()
        assert response.status == 200
        assert body["status"] == "ready"
        assert body["config"]["source"] == str(pinwatch.config_path)
    async with pinwatch.client.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert "pinwatch_alerts_pending" in await response.text()


# --- a real process -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str, Path, Path]:
    """`pinwatch serve` as a subprocess in dry-run, its output captured to a file."""
    config = tmp_path / "config.yaml"
    config.write_text(TEST_CONFIG.format(store=tmp_path / "pinwatch.db"))
    port = free_port()
    env = {
        **os.environ,
        "META_APP_SECRET": META_APP_SECRET,
        "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "PORT": str(port),
    }
    env.pop("SLACK_BOT_TOKEN", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return process, f"http://127.0.0.1:{port}", config, log


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    process, base, config, _ = start_serve(tmp_path)
    try:
        yield process, base, config
    finally:
        process.terminate()
        process.wait(timeout=10)


async def wait_for_output(log: Path, text: str) -> None:
    async with asyncio.timeout(10):
        while text not in log.read_text():
            await asyncio.sleep(0.05)


async def readyz(base: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{base}/readyz") as response,
                ):
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def test_sighup_reloads_a_running_serve(
    serve_process: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, base, config = serve_process
    before = (await readyz(base))["config"]["version"]

    # Same size, same inode, same mtime: only the signal can tell pinwatch to look again.
    stat = config.stat()
    edit(config, 'channel: "C0PAYMENTS"', 'channel: "C0PAYMENTX"')
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    await asyncio.sleep(1.5)  # longer than the file poll: prove the poll alone saw nothing
    assert (await readyz(base))["config"]["version"] == before

    process.send_signal(signal.SIGHUP)
    async with asyncio.timeout(10):
        while (await readyz(base))["config"]["version"] == before:
            await asyncio.sleep(0.05)
    assert process.poll() is None


async def test_serve_logs_no_secret(
    serve_process: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    process, base, _ = serve_process
    await readyz(base)
    from bot.webhook import sign

    async with aiohttp.ClientSession() as session:
        for body, signature in (
            (REFERENCE_BODY, sign(META_APP_SECRET.encode(), REFERENCE_BODY)),
            (REFERENCE_BODY, "sha256=" + "ab" * 32),
        ):
            headers = {"X-Hub-Signature-256": signature}
            async with session.post(f"{base}/webhook", data=body, headers=headers) as response:
                assert response.status in (200, 401)
    log = tmp_path / "serve.log"
    await wait_for_output(log, "[dry-run] slack chat.postMessage")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    output = log.read_text()
    for secret in (META_APP_SECRET, META_VERIFY_TOKEN, SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN):
        assert secret not in output
    assert sign(META_APP_SECRET.encode(), REFERENCE_BODY) not in output
    assert "ab" * 32 not in output


async def test_metrics_after_a_scripted_sequence(pinwatch: Pinwatch) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)  # accepted
    await pinwatch.post_webhook(REFERENCE_BODY)  # duplicate
    await pinwatch.post_webhook(REFERENCE_BODY, secret="wrong")  # bad signature
    await pinwatch.post_webhook(b"[]")  # malformed
    await pinwatch.post_webhook(delivery({"field": "messages", "value": {}}))  # ignored
    await pinwatch.wait_posted(1)
    pinwatch.clock.advance(30)
    await pinwatch.click("acknowledge", 1)
    await pinwatch.slack.wait_for_calls("chat.update")
    await pinwatch.click("escalate", 1)
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("C0PAYLEADS")) == 1)

    async def paged() -> bool:
        return (await pinwatch.alert(1)).escalation_ts is not None

    await eventually(paged)
    expected = {
        ("pinwatch_webhook_deliveries_total", 'result="accepted"'): 1,
        ("pinwatch_webhook_deliveries_total", 'result="duplicate"'): 1,
        ("pinwatch_webhook_deliveries_total", 'result="bad_signature"'): 1,
        ("pinwatch_webhook_deliveries_total", 'result="malformed"'): 1,
        ("pinwatch_webhook_deliveries_total", 'result="ignored_field"'): 1,
        ("pinwatch_webhook_ignored_changes_total", 'field="messages"'): 1,
        ("pinwatch_events_total", 'event="PIN_RESET_REQUEST",team="payments"'): 1,
        ("pinwatch_slack_calls_total", 'method="chat.postMessage",outcome="ok"'): 3,
        ("pinwatch_slack_calls_total", 'method="chat.getPermalink",outcome="ok"'): 1,
        ("pinwatch_escalations_total", 'kind="manual"'): 1,
        ("pinwatch_time_to_acknowledge_seconds_count", ""): 1,
        ("pinwatch_time_to_acknowledge_seconds_sum", ""): 30,
        ("pinwatch_receipt_to_post_seconds_count", ""): 1,
        ("pinwatch_intake_commit_seconds_count", ""): 2,  # the delivery and its duplicate
        ("pinwatch_alerts_pending", ""): 0,
    }
    seen = {key: await metric(pinwatch, *key) for key in expected}
    assert seen == expected


async def test_json_logs_carry_the_alert_on_every_line_about_it(tmp_path: Path) -> None:
    process, base, _, log = start_serve(tmp_path, "--log-format", "json")
    try:
        await readyz(base)
        from bot.webhook import sign

        headers = {"X-Hub-Signature-256": sign(META_APP_SECRET.encode(), REFERENCE_BODY)}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/webhook", data=REFERENCE_BODY, headers=headers) as response,
        ):
            assert response.status == 200
        await wait_for_output(log, ': posted"')
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = [line for line in log.read_text().splitlines() if not line.startswith("[dry-run]")]
    records = [json.loads(line) for line in lines]
    about_alert = [r for r in records if r["message"].startswith("alert 1 ")]
    assert len(about_alert) >= 1
    for record in about_alert:
        assert (record["alert_id"], record["team"], record["event"]) == (
            1,
            "payments",
            "PIN_RESET_REQUEST",
        )


async def test_pending_alerts_and_their_age_are_measured(pinwatch: Pinwatch) -> None:
    pinwatch.slack.fail("chat.postMessage", times=1000, status=503)
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.slack.wait_for(lambda s: any(c.failed for c in s.calls))
    pinwatch.clock.advance(30)
    assert await metric(pinwatch, "pinwatch_alerts_pending") == 1
    assert await metric(pinwatch, "pinwatch_oldest_pending_alert_age_seconds") == 30
