"""Alerts are routed in the commit that stores them: the first alert of a quiet channel is in the
outbox the moment Meta gets its 200, however many of a flood's wait to be posted (issue 14's
W3s: routing was one queue for every channel, a hundred alerts a pass)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from bot.config import LiveConfig, load_config
from bot.events import Actor, Expectation, SecurityEvent
from bot.metrics import Metrics
from bot.router import Router
from bot.store import StoreError, open_store
from bot.windows import Target, Window
from tests.conftest import Pinwatch, StartPinwatch, eventually
from tests.fake_slack import RecordedCall
from tests.test_fairness import SUPPORT_PHONE, flood_then_elsewhere


async def test_a_quiet_channels_alert_is_routed_as_it_is_stored_during_a_flood(
    start_pinwatch: StartPinwatch,
) -> None:
    # A pass at most every second, as when a flood's intake starves the event loop.
    pinwatch = await start_pinwatch(pass_gap=1.0)
    await flood_then_elsewhere(pinwatch)
    assert await pinwatch.query(
        "SELECT team, channel, severity FROM alerts WHERE requester = 'elsewhere'"
    ) == [("support", "#support-security", "high")]
    assert await pinwatch.query("SELECT count(*) FROM alerts WHERE channel IS NULL") == [(0,)]

    async def posted_elsewhere() -> bool:
        return bool(pinwatch.slack.top_level("C0SUPPORT"))

    await eventually(posted_elsewhere, timeout=3)  # eight passes and more to route it before
    [message] = pinwatch.slack.top_level("C0SUPPORT")
    assert "elsewhere" in str(message.blocks)


class _BrokenWindows:
    """Announced windows as a store could hand over a corrupt one: the support team's has no
    target, so routing any support alert raises (as a bug in routing would)."""

    async def windows_between(self, since: float, until: float) -> list[Window]:
        opened = Actor(user_id="U0ALICE", name="alice", at=since - 60)
        broken = Window(
            id=1,
            target=cast(Target, None),
            events=("PIN_RESET_REQUEST",),
            reason="audit",
            team="support",
            channel="#support-security",
            opened_by=opened,
            until=until + 3600,
            announced_channel="C0SUPPORT",
            announced_ts="1.0",
        )
        return [broken]

    async def requests_in_windows(self, window_ids: Sequence[int]) -> set[tuple[int, str]]:
        return set()


async def test_an_alert_routing_fails_on_is_stored_unrouted_and_holds_up_no_other(
    database_url: str | None, tmp_path: Path, config_path: Path
) -> None:
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    live = LiveConfig(load_config(config_path), loaded_at=0.0)
    store.route_with(Router(config=live, metrics=Metrics(), windows=_BrokenWindows()))
    try:
        ids = await store.add_events(
            [_unrouted_request("poison"), _unrouted_request("fine", phone="15550783881")],
            received_at=1748811474.0,
        )
        assert ids == [1, 2]
        [waiting] = await store.unrouted()
        assert (waiting.id, waiting.event.requester, waiting.channel) == (1, "poison", None)
        [fine] = await store.get_many([2])
        assert (fine.team, fine.channel) == ("payments", "C0PAYMENTS")
    finally:
        await store.close()


async def test_a_stored_alert_routing_fails_on_is_named_in_the_log(
    database_url: str | None, tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The dispatcher routes again, pass after pass, what was stored unrouted: the line saying
    it failed names the alert, so that an operator can find the one left behind."""
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    live = LiveConfig(load_config(config_path), loaded_at=0.0)
    router = Router(config=live, metrics=Metrics(), windows=_BrokenWindows())
    try:
        await store.add_events([_unrouted_request("poison")], received_at=1748811474.0)
        [waiting] = await store.unrouted()
        with caplog.at_level(logging.ERROR, logger="bot.router"):
            [still] = await router.route([waiting])
    finally:
        await store.close()
    assert still.channel is None
    failed = [r for r in caplog.records if "left unrouted" in r.getMessage()]
    assert [getattr(r, "alert_id", None) for r in failed] == [waiting.id]
    assert f"alert {waiting.id} " in failed[0].getMessage()


def _unrouted_request(requester: str, phone: str = SUPPORT_PHONE) -> SecurityEvent:
    return SecurityEvent(
        waba_id="102290129340398",
        phone_number=phone,
        event="PIN_RESET_REQUEST",
        time=1748811473,
        requester=requester,
        value={"event": "PIN_RESET_REQUEST", "requester": requester},
    )


async def test_a_backlog_stored_unrouted_is_routed_pass_after_pass_without_polls(
    start_pinwatch: StartPinwatch, tmp_path: Path
) -> None:
    pinwatch = await start_pinwatch(poll_interval=1.0)
    stuck = asyncio.Event()

    async def hang(call: RecordedCall) -> None:  # no lane ends, so none wakes the dispatcher
        await stuck.wait()

    pinwatch.slack.before_answering["chat.postMessage"] = hang
    older = await open_store(pinwatch.database_url or tmp_path / "pinwatch.db")
    try:
        events = [_unrouted_request(f"backlog-{i}", phone="15550783881") for i in range(1000)]
        await older.add_events(events, received_at=1748811474.0)
    finally:
        await older.close()

    async def all_routed() -> bool:
        return await pinwatch.query("SELECT count(*) FROM alerts WHERE channel IS NULL") == [(0,)]

    try:
        await eventually(all_routed, timeout=3)  # ten passes of a hundred, not ten polls
    finally:
        stuck.set()


async def test_alerts_stored_unrouted_are_routed_and_posted(
    pinwatch: Pinwatch, tmp_path: Path
) -> None:
    # As a replica of the version before intake routing (or one whose routing failed) left them.
    older = await open_store(pinwatch.database_url or tmp_path / "pinwatch.db")
    try:
        [alert_id] = await older.add_events(
            [_unrouted_request("unrouted")], received_at=1748811474.0
        )
    finally:
        await older.close()

    async def posted() -> bool:
        return bool(pinwatch.slack.top_level("C0SUPPORT"))

    await eventually(posted)
    assert await pinwatch.query(f"SELECT team, channel FROM alerts WHERE id = {alert_id}") == [
        ("support", "#support-security")
    ]


async def test_a_sqlite_too_old_for_the_intake_is_refused_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(StoreError, match=r"SQLite 3\.34\.1 is too old: pinwatch needs 3\.38\.0"):
        await open_store(tmp_path / "pinwatch.db")
    assert not (tmp_path / "pinwatch.db").exists()


async def test_an_alert_two_replicas_route_takes_one_route_and_one_audit_row(
    database_url: str | None, tmp_path: Path
) -> None:
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    try:
        [alert_id] = await store.add_events([_unrouted_request("twice")], received_at=1.0)
        assert alert_id is not None
        [stored] = await store.get_many([alert_id])
        expected = Expectation(
            window_id=1,
            announced_by=Actor(user_id="U0ALICE", name="alice", at=0.0),
            reason="audit",
            until=7200.0,
        )
        routed = replace(stored, team="support", channel="#support-security", expected=expected)
        first = await store.set_routes([routed])
        second = await store.set_routes([replace(routed, channel="#elsewhere")])
        assert ([a.id for a in first], second) == ([alert_id], [])
        [after] = await store.get_many([alert_id])
        assert after.channel == "#support-security"
        assert [e.action for e in await store.audit_log(alert_id)] == ["expected"]
    finally:
        await store.close()
