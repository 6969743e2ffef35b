"""The Events API v2 client against the fake PagerDuty over real HTTP on loopback: what it sends,
and how it reads each answer (accepted, later, refused for good)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.pagerduty.client import (
    RETRY_AFTER_MAX,
    Accepted,
    PagerDutyEvents,
    Refused,
    RetryLater,
    retry_after_seconds,
)
from bot.pagerduty.events import (
    PageReason,
    acknowledge_event,
    dedup_key,
    resolve_event,
    trigger_event,
)
from tests.fake_pagerduty import OTHER_ROUTING_KEY, ROUTING_KEY, FakePagerDuty, start_fake_pagerduty
from tests.test_pagerduty_events import PERMALINK, alert_of

NOW = 1_764_686_400.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


@pytest.fixture
async def pagerduty(aiohttp_server: Any) -> tuple[FakePagerDuty, str]:
    return await start_fake_pagerduty(aiohttp_server)


@pytest.fixture
def client(session: aiohttp.ClientSession, pagerduty: tuple[FakePagerDuty, str]) -> PagerDutyEvents:
    return PagerDutyEvents(session, base_url=pagerduty[1], clock=lambda: NOW)


def page(**kwargs: Any) -> dict[str, Any]:
    return trigger_event(alert_of(**kwargs), reason=PageReason.MANUAL, permalink=PERMALINK)


async def test_a_page_is_accepted_and_opens_an_incident_with_what_was_sent(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, base = pagerduty
    assert client.url == base.rstrip("/") + "/v2/enqueue"
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert result == Accepted(dedup_key=dedup_key(alert_of()), message="Event processed")
    [incident] = fake.incidents
    assert incident.status == "triggered"
    assert incident.severity == "error"
    assert incident.summary.startswith("Escalated by Alice: Two-step verification reset")
    assert incident.custom_details["waba_id"] == "102290129340398"
    assert incident.links == [{"href": PERMALINK, "text": "The alert in Slack"}]
    [call] = fake.calls
    assert call.body is not None
    assert call.body["routing_key"] == ROUTING_KEY


async def test_every_event_pinwatch_builds_passes_the_documented_schema(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    alerts = [
        alert_of(),
        alert_of(alert_id=8, phone="", field="account_update", event="PARTNER_ADDED", team=None),
        alert_of(alert_id=9, event="PIN_SOMETHING_NEW" * 100, requester=None, time=None),
    ]
    events = [trigger_event(a, reason=r, note="checked") for a in alerts for r in PageReason]
    events += [acknowledge_event(a) for a in alerts] + [resolve_event(a) for a in alerts]
    results = [await client.send(event, routing_key=ROUTING_KEY) for event in events]
    assert [type(r) for r in results] == [Accepted] * len(events), [c.errors for c in fake.calls]
    # Each alert: its ordinary incident resolved; a takeover's, suspected or confirmed, its own.
    statuses = {(i.dedup_key.rsplit(":", 1)[-1], i.status) for i in fake.incidents}
    assert len(fake.incidents) == 9
    assert statuses == {("takeover", "triggered"), ("confirmed", "triggered")} | {
        (key.rsplit(":", 1)[-1], "resolved")
        for key in (i.dedup_key for i in fake.incidents)
        if not key.endswith(("takeover", "confirmed"))
    }


async def test_a_second_trigger_adds_to_the_open_incident_and_after_resolve_opens_a_new_one(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    key = dedup_key(alert_of())
    for _ in range(2):
        assert isinstance(await client.send(page(), routing_key=ROUTING_KEY), Accepted)
    assert len(fake.incidents_for(key)) == 1
    assert fake.incidents[0].log == ["trigger", "trigger"]
    assert isinstance(
        await client.send(acknowledge_event(alert_of()), routing_key=ROUTING_KEY), Accepted
    )
    assert fake.incidents[0].status == "acknowledged"
    assert isinstance(
        await client.send(resolve_event(alert_of()), routing_key=ROUTING_KEY), Accepted
    )
    assert fake.open_incident(key) is None
    # Resolved: a resolve sent again is dropped, a trigger opens another incident.
    assert isinstance(
        await client.send(resolve_event(alert_of()), routing_key=ROUTING_KEY), Accepted
    )
    assert isinstance(await client.send(page(), routing_key=ROUTING_KEY), Accepted)
    assert [i.status for i in fake.incidents_for(key)] == ["resolved", "triggered"]


async def test_an_acknowledge_through_another_routing_key_is_dropped(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    await client.send(page(), routing_key=ROUTING_KEY)
    await client.send(acknowledge_event(alert_of()), routing_key=OTHER_ROUTING_KEY)
    assert fake.incidents[0].status == "triggered"


@pytest.mark.parametrize(
    ("retry_after", "expected"), [("30", 30.0), (None, None), ("soon", None), ("-5", None)]
)
async def test_429_is_tried_later_after_the_wait_pagerduty_asks_for(
    client: PagerDutyEvents,
    pagerduty: tuple[FakePagerDuty, str],
    retry_after: str | None,
    expected: float | None,
) -> None:
    fake, _ = pagerduty
    fake.fail(429, retry_after=retry_after)
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert result == RetryLater(
        reason="PagerDuty answered HTTP 429", status=429, retry_after=expected
    )
    assert fake.incidents == []
    # The next attempt goes through: the outbox, not the client, decides when.
    assert isinstance(await client.send(page(), routing_key=ROUTING_KEY), Accepted)


async def test_a_retry_after_given_as_a_date_is_read_against_the_clock(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    fake.fail(429, retry_after=formatdate(NOW + 120, usegmt=True))
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert isinstance(result, RetryLater)
    assert result.retry_after == 120.0


def test_retry_after_is_kept_within_bounds() -> None:
    assert retry_after_seconds("0", now=NOW) == 0.0
    assert retry_after_seconds("1.5", now=NOW) == 1.5
    assert retry_after_seconds("999999", now=NOW) == RETRY_AFTER_MAX
    assert retry_after_seconds(formatdate(NOW - 60, usegmt=True), now=NOW) == 0.0
    for junk in ("", " ", "NaN", "1e400", "Mon, 99 Foo 2026", "٣٠"):
        assert retry_after_seconds(junk, now=NOW) is None, junk


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_server_error_is_tried_later(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str], status: int
) -> None:
    fake, _ = pagerduty
    fake.fail(status, retry_after="7" if status == 503 else None)
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert result == RetryLater(
        reason=f"PagerDuty answered HTTP {status}",
        status=status,
        retry_after=7.0 if status == 503 else None,
    )
    assert fake.incidents == []


async def test_an_unknown_routing_key_is_refused_for_good_in_pagerdutys_words(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    result = await client.send(page(), routing_key="f" * 32)
    assert result == Refused(
        status=400, message="Event object is invalid", errors=("Invalid routing key",)
    )
    assert result.describe() == "Event object is invalid (Invalid routing key)"
    assert fake.incidents == []


async def test_a_routing_key_of_the_wrong_length_is_refused(client: PagerDutyEvents) -> None:
    result = await client.send(page(), routing_key="short")
    assert isinstance(result, Refused)
    assert result.errors == ("Length of 'routing_key' is incorrect (should be 32 characters)",)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"event_action": "page", "dedup_key": "k"}, "'event_action' is invalid"),
        ({"event_action": "acknowledge"}, "'dedup_key' is missing"),
        ({"event_action": "resolve", "dedup_key": "k" * 256}, "Length of 'dedup_key'"),
        ({"event_action": "trigger"}, "'payload' is missing"),
        (
            {"event_action": "trigger", "payload": {"summary": "s" * 1025, "source": "x",
             "severity": "info"}},
            "Length of 'payload.summary' is too long",
        ),
        (
            {"event_action": "trigger", "payload": {"summary": "s", "severity": "info"}},
            "'payload.source' is missing",
        ),
        (
            {"event_action": "trigger", "payload": {"summary": "s", "source": "x",
             "severity": "high"}},
            "'payload.severity' must be one of",
        ),
        (
            {"event_action": "trigger", "payload": {"summary": "s", "source": "x",
             "severity": "info", "timestamp": "yesterday"}},
            "'payload.timestamp' is not an ISO 8601 timestamp",
        ),
        (
            {"event_action": "trigger", "payload": {"summary": "s", "source": "x",
             "severity": "info", "custom_details": "text"}},
            "'payload.custom_details' must be an object",
        ),
        ({"event_action": "resolve", "dedup_key": "k", "links": [{}]}, "'links[0].href'"),
        ({"event_action": "resolve", "dedup_key": "k", "dedupkey": "k"}, "'dedupkey' is not"),
    ],
)  # fmt: skip
async def test_the_fake_refuses_what_the_schema_refuses_and_the_client_keeps_why(
    client: PagerDutyEvents,
    pagerduty: tuple[FakePagerDuty, str],
    event: dict[str, Any],
    error: str,
) -> None:
    result = await client.send(event, routing_key=ROUTING_KEY)
    assert isinstance(result, Refused), result
    assert result.status == 400
    assert any(e.startswith(error) for e in result.errors), result.errors
    assert pagerduty[0].incidents == []


async def test_a_400_without_pagerdutys_body_is_refused_with_what_came(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    fake.fail(400, body={"unexpected": True})
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert result == Refused(status=400, message='{"unexpected": true}', errors=())
    fake.fail(413)
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert result == Refused(status=413, message="fake PagerDuty: scripted failure", errors=())


async def test_taken_then_cut_off_is_tried_again_and_opens_no_second_incident(
    client: PagerDutyEvents, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    fake, _ = pagerduty
    fake.accept_then_drop()
    first = await client.send(page(), routing_key=ROUTING_KEY)
    assert isinstance(first, RetryLater)
    assert first.status is None
    assert first.reason.startswith("could not reach PagerDuty")
    assert len(fake.incidents) == 1  # PagerDuty has it; the sender does not know
    assert isinstance(await client.send(page(), routing_key=ROUTING_KEY), Accepted)
    assert len(fake.incidents) == 1
    assert fake.incidents[0].log == ["trigger", "trigger"]


async def test_nobody_listening_is_tried_later(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = PagerDutyEvents(session, base_url=f"http://127.0.0.1:{port}")
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert isinstance(result, RetryLater)
    assert result.status is None
    assert result.reason == "could not reach PagerDuty: ClientConnectorError"


async def test_no_answer_in_time_is_tried_later(
    session: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    released = asyncio.Event()

    async def never_answers(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(status=202)

    slow = web.Application()
    slow.router.add_post("/v2/enqueue", never_answers)
    server = await aiohttp_server(slow)
    client = PagerDutyEvents(session, base_url=str(server.make_url("/")), timeout=0.2)
    try:
        result = await client.send(page(), routing_key=ROUTING_KEY)
    finally:
        released.set()
    assert result == RetryLater(reason="PagerDuty did not answer in time")


async def test_a_redirect_is_not_followed(
    session: aiohttp.ClientSession, aiohttp_server: Any, pagerduty: tuple[FakePagerDuty, str]
) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(pagerduty[1] + "v2/enqueue")

    elsewhere = web.Application()
    elsewhere.router.add_post("/v2/enqueue", moved)
    server = await aiohttp_server(elsewhere)
    client = PagerDutyEvents(session, base_url=str(server.make_url("/")))
    result = await client.send(page(), routing_key=ROUTING_KEY)
    assert isinstance(result, Refused)
    assert result.status == 307
    assert pagerduty[0].calls == []  # the routing key went nowhere else


async def test_the_routing_key_is_never_logged_nor_shown(
    client: PagerDutyEvents,
    pagerduty: tuple[FakePagerDuty, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, _ = pagerduty
    caplog.set_level(logging.DEBUG)
    fake.fail(429, retry_after="1")
    fake.accept_then_drop()
    results = [await client.send(page(), routing_key=ROUTING_KEY) for _ in range(3)]
    results.append(await client.send(page(), routing_key="0" * 32))
    assert [type(r) for r in results] == [RetryLater, RetryLater, Accepted, Refused]
    shown = caplog.text + "".join(repr(r) for r in results)
    assert ROUTING_KEY not in shown
    assert "0" * 32 not in shown
