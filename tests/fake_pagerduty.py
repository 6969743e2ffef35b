"""A fake PagerDuty Events API v2 served as a real aiohttp application on loopback, and signed
v3 webhooks to send to pinwatch.

It checks each event against PagerDuty's documented schema
(https://developer.pagerduty.com/docs/events-api-v2/trigger-events/) and answers an invalid one
with PagerDuty's 400 (``{"status": "invalid event", "message": "Event object is invalid",
"errors": [...]}``); it is stricter than PagerDuty on one point only: an unknown top-level field
is refused, so that a misspelt one of ours shows. It keeps incidents by dedup key as PagerDuty
does: a trigger opens one unless one is open for that key (then it is one more trigger on it),
acknowledge and resolve change the open one's status (and are dropped when none is open), and
after a resolve the next trigger opens a new incident. It records every call, and can be scripted
to answer 429 with ``Retry-After``, a 5xx, a 400, or to take the event and cut the connection
before answering (a crash between PagerDuty's 202 and the sender's commit).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.pagerduty.webhook import SIGNATURE_HEADER, signature_header

ROUTING_KEY = "0123456789abcdef0123456789abcdef"  # 32 characters, as PagerDuty's are
OTHER_ROUTING_KEY = "fedcba9876543210fedcba9876543210"
WEBHOOK_SECRET = "pagerduty-webhook-secret-0123456789"
INCIDENT_URL = "https://fake.pagerduty.test/incidents"

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
TOP_LEVEL = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
}
PAYLOAD_FIELDS = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}
MAX_EVENT_BYTES = 512 * 1024


@dataclass(frozen=True)
class RecordedEvent:
    raw: bytes
    body: dict[str, Any] | None  # None: not a JSON object
    status: int | None  # answered; None: the connection was cut instead
    errors: tuple[str, ...] = ()
    at: float = field(default_factory=time.monotonic)

    @property
    def action(self) -> str | None:
        return None if self.body is None else self.body.get("event_action")

    @property
    def dedup_key(self) -> str | None:
        return None if self.body is None else self.body.get("dedup_key")


@dataclass
class Incident:
    id: str
    routing_key: str
    dedup_key: str
    summary: str
    severity: str
    status: str = "triggered"  # acknowledged, resolved
    custom_details: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # each event action applied, in order

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"

    @property
    def html_url(self) -> str:
        return f"{INCIDENT_URL}/{self.id}"


@dataclass(frozen=True)
class _Scripted:
    status: int
    retry_after: str | None
    body: dict[str, Any] | None
    drop: bool  # take the event, then cut the connection without answering


class FakePagerDuty:
    def __init__(self, routing_keys: Collection[str] = (ROUTING_KEY, OTHER_ROUTING_KEY)) -> None:
        self.routing_keys = set(routing_keys)
        self.calls: list[RecordedEvent] = []
        self.incidents: list[Incident] = []
        self._script: deque[_Scripted] = deque()
        self._changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_post("/v2/enqueue", self._enqueue)

    # -- scripting and queries ---------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` events with ``status`` (nothing applied)."""
        self._script.extend(_Scripted(status, retry_after, body, False) for _ in range(times))

    def accept_then_drop(self, *, times: int = 1) -> None:
        """Apply the next ``times`` events, then close the connection instead of the 202."""
        self._script.extend(_Scripted(202, None, None, True) for _ in range(times))

    def open_incident(self, dedup_key: str) -> Incident | None:
        return next((i for i in self.incidents if i.dedup_key == dedup_key and i.is_open), None)

    def incidents_for(self, dedup_key: str) -> list[Incident]:
        return [i for i in self.incidents if i.dedup_key == dedup_key]

    async def wait_for(
        self, predicate: Callable[[FakePagerDuty], bool], timeout: float = 5.0
    ) -> None:
        """Wait until ``predicate(self)`` holds; re-checked on every recorded call."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        except TimeoutError:
            seen = ", ".join(f"{c.action}:{c.status}" for c in self.calls) or "none"
            raise AssertionError(
                f"fake PagerDuty: condition not met in {timeout}s; calls: {seen}"
            ) from None

    # -- HTTP --------------------------------------------------------------------------------

    async def _record(self, call: RecordedEvent) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = _json_object(raw)
        scripted = self._script.popleft() if self._script else None
        if scripted is not None and not scripted.drop:
            await self._record(RecordedEvent(raw, body, scripted.status))
            return _scripted_answer(scripted)
        errors = validate_event(raw, body, self.routing_keys)
        if errors:
            await self._record(RecordedEvent(raw, body, 400, tuple(errors)))
            return web.json_response(
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
                status=400,
            )
        assert body is not None
        key = self._apply(body)
        answer = web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
        )
        if scripted is not None and request.transport is not None:
            # Applied, as PagerDuty would have; the answer never reaches the sender.
            request.transport.close()
            await self._record(RecordedEvent(raw, body, None))
            return answer
        await self._record(RecordedEvent(raw, body, 202))
        return answer

    def _apply(self, body: dict[str, Any]) -> str:
        action = body["event_action"]
        key = body.get("dedup_key") or uuid.uuid4().hex
        routing_key = body["routing_key"]
        incident = next(
            (
                i
                for i in self.incidents
                if i.dedup_key == key and i.routing_key == routing_key and i.is_open
            ),
            None,
        )
        if action == "trigger":
            payload = body["payload"]
            if incident is None:
                incident = Incident(
                    id=f"PFAKE{len(self.incidents) + 1:03d}",
                    routing_key=routing_key,
                    dedup_key=key,
                    summary=payload["summary"],
                    severity=payload["severity"],
                    custom_details=payload.get("custom_details") or {},
                    links=body.get("links") or [],
                )
                self.incidents.append(incident)
            incident.log.append("trigger")
        elif incident is not None:  # else dropped, as PagerDuty drops it
            if action == "acknowledge" and incident.status == "triggered":
                incident.status = "acknowledged"
            elif action == "resolve":
                incident.status = "resolved"
            incident.log.append(action)
        return key


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _scripted_answer(scripted: _Scripted) -> web.Response:
    headers = {"Retry-After": scripted.retry_after} if scripted.retry_after is not None else {}
    if scripted.body is not None:
        return web.json_response(scripted.body, status=scripted.status, headers=headers)
    body: dict[str, Any]
    if scripted.status == 429:
        message = "Requests for this service are arriving too quickly. Please retry later."
        body = {"status": "throttle event", "message": message}
        return web.json_response(body, status=429, headers=headers)
    if scripted.status == 400:
        body = {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": ["Invalid routing key"],
        }
        return web.json_response(body, status=400, headers=headers)
    return web.Response(
        status=scripted.status, text="fake PagerDuty: scripted failure", headers=headers
    )


def _string(value: Any, name: str, *, limit: int | None = None) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"'{name}' is missing or blank"]
    if limit is not None and len(value) > limit:
        return [f"Length of '{name}' is too long (maximum is {limit} characters)"]
    return []


def _optional_string(body: dict[str, Any], name: str, label: str) -> list[str]:
    if name in body and not isinstance(body[name], str):
        return [f"'{label}' must be a string"]
    return []


def _timestamp(value: Any) -> list[str]:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return ["'payload.timestamp' is not an ISO 8601 timestamp"]
    return []


def _links(body: dict[str, Any]) -> list[str]:
    links = body.get("links", [])
    if not isinstance(links, list):
        return ["'links' must be an array"]
    return [
        f"'links[{i}].href' is missing"
        for i, link in enumerate(links)
        if not isinstance(link, dict) or not isinstance(link.get("href"), str)
    ]


def _payload(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors = _string(payload.get("summary"), "payload.summary", limit=1024)
    errors += _string(payload.get("source"), "payload.source")
    if payload.get("severity") not in SEVERITIES:
        errors.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
    if "timestamp" in payload:
        errors += _timestamp(payload["timestamp"])
    if not isinstance(payload.get("custom_details", {}), dict):
        errors.append("'payload.custom_details' must be an object")
    for name in ("component", "group", "class"):
        errors += _optional_string(payload, name, f"payload.{name}")
    errors += [f"'payload.{name}' is not a known field" for name in set(payload) - PAYLOAD_FIELDS]
    return errors


def validate_event(raw: bytes, body: dict[str, Any] | None, routing_keys: set[str]) -> list[str]:
    """PagerDuty's reasons to refuse the event; none: it is accepted."""
    if len(raw) > MAX_EVENT_BYTES:
        return [f"Event is larger than {MAX_EVENT_BYTES} bytes"]
    if body is None:
        return ["Event is not a JSON object"]
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or len(routing_key) != 32:
        return ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    if routing_key not in routing_keys:
        return ["Invalid routing key"]
    errors = [f"'{name}' is not a known field" for name in sorted(set(body) - TOP_LEVEL)]
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    if "dedup_key" in body or action in ("acknowledge", "resolve"):
        errors += _string(body.get("dedup_key"), "dedup_key", limit=255)
    if action == "trigger":
        errors += _payload(body.get("payload"))
    errors += _links(body)
    for name in ("client", "client_url"):
        errors += _optional_string(body, name, name)
    return errors


async def start_fake_pagerduty(aiohttp_server: Any, **kwargs: Any) -> tuple[FakePagerDuty, str]:
    """Serve a new FakePagerDuty(**kwargs) on loopback; returns it and its base URL (for
    PAGERDUTY_EVENTS_URL)."""
    fake = FakePagerDuty(**kwargs)
    server = await aiohttp_server(fake.app)
    return fake, str(server.make_url("/"))


# -- v3 webhooks, as PagerDuty signs and sends them ------------------------------------------


def webhook_event(
    event_type: str,
    *,
    incident_key: str | None,
    incident_id: str = "PFAKE001",
    agent_name: str | None = "Alice Oncall",
    agent_type: str = "user_reference",
    occurred_at: str = "2026-12-02T14:50:00.123Z",
    event_id: str | None = None,
) -> dict[str, Any]:
    """A v3 incident webhook payload shaped like PagerDuty's documented example."""
    agent = (
        None
        if agent_name is None
        else {
            "html_url": "https://fake.pagerduty.test/users/PUSER01",
            "id": "PUSER01",
            "self": "https://api.pagerduty.com/users/PUSER01",
            "summary": agent_name,
            "type": agent_type,
        }
    )
    data: dict[str, Any] = {
        "id": incident_id,
        "type": "incident",
        "self": f"https://api.pagerduty.com/incidents/{incident_id}",
        "html_url": f"{INCIDENT_URL}/{incident_id}",
        "number": 2,
        "status": event_type.removeprefix("incident."),
        "title": "Two-step verification reset requested",
        "service": {"id": "PSERVIC", "type": "service_reference", "summary": "WhatsApp security"},
        "assignees": [{"id": "PUSER01", "type": "user_reference", "summary": "Alice Oncall"}],
        "urgency": "high",
        "resolve_reason": None,
    }
    if incident_key is not None:
        data["incident_key"] = incident_key
    return {
        "event": {
            "id": event_id or uuid.uuid4().hex,
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": occurred_at,
            "agent": agent,
            "client": {"name": "PagerDuty"},
            "data": data,
        }
    }


def signed_webhook(payload: dict[str, Any] | bytes, *secrets: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers PagerDuty sends: one v1 signature per secret (several while a secret
    is rotated), compact JSON as PagerDuty writes it."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    keys = [s.encode() for s in (secrets or (WEBHOOK_SECRET,))]
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(body, *keys),
        "X-Webhook-Id": uuid.uuid4().hex,
    }
    return body, headers
