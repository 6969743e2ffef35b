"""PagerDuty's v3 webhooks: verify the signature, parse the incident event. No HTTP here: the
handler (which needs the store, to find the alert) turns SignatureError into 401 and
PayloadError into 400.

https://developer.pagerduty.com/docs/webhooks/webhook-signatures/ and
https://developer.pagerduty.com/docs/webhooks/v3-overview/ (the payload)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SIGNATURE_HEADER = "X-PagerDuty-Signature"
# PagerDuty drops every webhook larger than this, so a larger body is not PagerDuty's.
MAX_BODY_BYTES = 256 * 1024

_V1 = re.compile(r"v1=([0-9a-fA-F]{64})")

ACKNOWLEDGED = "incident.acknowledged"
RESOLVED = "incident.resolved"
USER_AGENT = "user_reference"  # an agent of this type is a person; others are services


class SignatureError(Exception):
    """Missing, malformed or not made with any of the secrets: answer 401."""


class PayloadError(ValueError):
    """Signed, but not a v3 webhook event pinwatch can read: answer 400 (PagerDuty does not
    retry a 4xx)."""


def _signatures(header: str | None) -> list[bytes]:
    if header is None or not header.strip():
        raise SignatureError("missing signature")
    # Several during a secret's rotation, comma separated; versions other than v1 (none yet)
    # are skipped rather than refused, as PagerDuty's own check does.
    given = [_V1.fullmatch(part.strip()) for part in header.split(",")]
    found = [bytes.fromhex(match.group(1)) for match in given if match is not None]
    if not found:
        raise SignatureError("signature is not v1=<64 hex digits>")
    return found


def verify_signature(secrets: Sequence[bytes], body: bytes, header: str | None) -> int:
    """Which of the secrets signed the raw body (0 for the first): HMAC-SHA256, hex, any one of
    the header's comma-separated ``v1=`` signatures."""
    signatures = _signatures(header)
    if not secrets:
        raise SignatureError("no PAGERDUTY_WEBHOOK_SECRET is set: every webhook is refused")
    # Every pair is compared, matching or not, each in constant time: the time taken says
    # nothing of which secret or signature matched.
    matched = [
        any([hmac.compare_digest(hmac.digest(key, body, "sha256"), sig) for sig in signatures])
        for key in secrets
    ]
    if True not in matched:
        raise SignatureError("signature does not match")
    return matched.index(True)


def signature_header(body: bytes, *secrets: bytes) -> str:
    """The header PagerDuty sends for this body, one signature per secret (tests, fakes)."""
    return ",".join("v1=" + hmac.new(key, body, hashlib.sha256).hexdigest() for key in secrets)


class IncidentChange(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    OTHER = "other"  # triggered, reassigned, annotated, …: nothing for pinwatch to show


Name = Annotated[str, Field(max_length=1024)]
Url = Annotated[str, Field(max_length=2048)]


class _Tolerant(BaseModel):
    # Fields PagerDuty adds later must not break parsing.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Reference(_Tolerant):
    id: Name | None = None
    type: Name | None = None
    summary: Name | None = None
    html_url: Url | None = None


class _Data(_Tolerant):
    id: Name | None = None
    type: Name | None = None
    html_url: Url | None = None
    # The dedup_key of the Events API event that opened the incident.
    incident_key: Annotated[str, Field(max_length=255)] | None = None
    title: Name | None = None
    status: Name | None = None
    incident: _Reference | None = None  # an incident_note's, an incident_responder's, …


class _Event(_Tolerant):
    id: Name
    event_type: Name
    resource_type: Name | None = None
    occurred_at: datetime | None = None
    agent: _Reference | None = None
    data: _Data | None = None


class _Webhook(_Tolerant):
    event: _Event


@dataclass(frozen=True, slots=True)
class Agent:
    """Who or what did it: a user (``type`` user_reference) or a service, such as the Events
    API integration pinwatch itself sent a resolve through."""

    id: str | None
    type: str | None
    name: str | None  # PagerDuty's `summary` of the agent: a person's name
    html_url: str | None

    @property
    def is_person(self) -> bool:
        return self.type == USER_AGENT

    def describe(self) -> str:
        return self.name or self.id or "someone in PagerDuty"


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    event_id: str  # the same on each redelivery of this event
    event_type: str  # as sent: incident.acknowledged, incident.resolved, …
    change: IncidentChange
    incident_id: str | None
    incident_key: str | None  # the dedup key pinwatch triggered it with (events.dedup_key)
    html_url: str | None  # the incident in PagerDuty
    agent: Agent | None  # None: PagerDuty did it itself (an auto-resolve, a timeout)
    occurred_at: float | None  # seconds since the epoch


def _https(url: str | None) -> str | None:
    return url if url is not None and url.startswith(("https://", "http://")) else None


def _seconds(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _agent(agent: _Reference) -> Agent:
    return Agent(id=agent.id, type=agent.type, name=agent.summary, html_url=_https(agent.html_url))


def _short_reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def parse_webhook(body: bytes) -> IncidentEvent:
    """A verified body → what happened to which incident, and who did it."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        webhook = _Webhook.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise PayloadError("body is not JSON") from None
        raise PayloadError(f"not a PagerDuty v3 webhook: {_short_reason(exc)}") from None
    event = webhook.event
    data = event.data or _Data()
    change = {ACKNOWLEDGED: IncidentChange.ACKNOWLEDGED, RESOLVED: IncidentChange.RESOLVED}.get(
        event.event_type, IncidentChange.OTHER
    )
    is_incident = data.type == "incident"
    if change is not IncidentChange.OTHER and not is_incident:
        raise PayloadError(f"{event.event_type} without its incident (data.type {data.type!r})")
    # An incident event carries the incident; an incident_note's and the like only refer to it.
    incident = data if is_incident else (data.incident or _Reference())
    agent = event.agent
    return IncidentEvent(
        event_id=event.id,
        event_type=event.event_type,
        change=change,
        incident_id=incident.id,
        incident_key=data.incident_key if is_incident else None,
        html_url=_https(incident.html_url),
        agent=None if agent is None else _agent(agent),
        occurred_at=_seconds(event.occurred_at),
    )
