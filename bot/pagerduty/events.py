"""Pure: an alert → the PagerDuty Events API v2 event that pages for it, acknowledges or resolves
its incident. No I/O, and no routing key: the client adds it as it sends, so that an event kept in
the outbox holds no secret.

https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (the fields and their limits)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot.catalog import TAKEOVER_SUMMARY
from bot.config import Escalation
from bot.events import Actor, Alert, EscalationKind, Severity
from bot.render import actor_plain, clip, plain_title, readable_phone

# PagerDuty's documented limits.
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
EVENT_BYTES_MAX = 512 * 1024
# Ours: enough for any ID, number or event name Meta sends, and for a person's note.
DETAIL_MAX = 1024
NOTE_MAX = 4000

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")

CLIENT = "pinwatch"

_SEVERITY = {
    Severity.CRITICAL: "critical",
    Severity.HIGH: "error",
    Severity.INFO: "info",
    Severity.OFF: "info",  # never posted, so never paged: here so that each has one
}

_DEDUP_KEY = re.compile(r"^pinwatch:alert:([0-9]{1,18}):([0-9a-f]{20})(?::(takeover|confirmed))?$")


class EventError(ValueError):
    """An event PagerDuty would refuse: a bug of ours, not worth sending."""


class PageReason(StrEnum):
    """Why pinwatch pages: the escalation kinds, and a takeover a responder confirmed. The
    values are EscalationKind's (main's has CONFIRMED = "confirmed" too)."""

    MANUAL = "manual"
    AUTOMATIC = "automatic"
    TAKEOVER = "takeover"
    CONFIRMED_TAKEOVER = "confirmed"

    @classmethod
    def of(cls, kind: EscalationKind | None) -> PageReason:
        return _REASONS[kind] if kind is not None else cls.MANUAL


_REASONS = {
    EscalationKind.MANUAL: PageReason.MANUAL,
    EscalationKind.AUTOMATIC: PageReason.AUTOMATIC,
    EscalationKind.TAKEOVER: PageReason.TAKEOVER,
    EscalationKind.CONFIRMED: PageReason.CONFIRMED_TAKEOVER,
}


def dedup_key(alert: Alert, reason: PageReason = PageReason.MANUAL) -> str:
    """``pinwatch:alert:<alert id>:<first 20 hex of the event's dedup hash>``, and ``:takeover``
    or ``:confirmed`` for a takeover's page: a takeover opens an incident of its own, since one
    already acknowledged for the alert would take its trigger without notifying anyone.

    The same for every replica and every resend (PagerDuty then adds to the open incident instead
    of opening a second one), and for the trigger, acknowledge and resolve of one alert. The hash
    keeps two deployments sending to one service (their alert ids overlap) apart. Page a
    takeover chain with its root reset request, a storm summary with its first row: their
    acknowledgement and resolution are that alert's.
    """
    own = _OWN_INCIDENT.get(reason)
    return f"pinwatch:alert:{alert.id}:{alert.event.digest[:20]}" + (f":{own}" if own else "")


_OWN_INCIDENT = {PageReason.TAKEOVER: "takeover", PageReason.CONFIRMED_TAKEOVER: "confirmed"}


def alert_id_of(key: str | None) -> int | None:
    """The alert a dedup key (a webhook's ``incident_key``) names, if pinwatch made it; check it
    with ``dedup_key(alert) == key`` once the alert is read."""
    match = _DEDUP_KEY.match(key or "")
    return int(match.group(1)) if match else None


def reason_of(key: str, alert: Alert) -> PageReason | None:
    """Which of the alert's incidents a dedup key names (MANUAL: the ordinary escalation's,
    manual or automatic), or None if it is not one of the alert's."""
    for reason in (PageReason.MANUAL, PageReason.TAKEOVER, PageReason.CONFIRMED_TAKEOVER):
        if dedup_key(alert, reason) == key:
            return reason
    return None


def routing_key_of(escalation: Escalation, environ: Mapping[str, str]) -> str | None:
    """The routing key this escalation pages with, from the variable the routing file names;
    None when it names none (or, though serve and a reload refuse that, the variable is unset)."""
    if escalation.pagerduty is None:
        return None
    return environ.get(escalation.pagerduty.routing_key_env, "").strip() or None


def pagerduty_severity(severity: Severity) -> str:
    return _SEVERITY[severity]


def _timestamp(seconds: float) -> str | None:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # Meta's `time` is outside input
        return None


def _subject(alert: Alert) -> str:
    if alert.event.phone_number:
        return readable_phone(alert.event.phone_number)
    return f"WABA {alert.event.waba_id}"


def _lead(alert: Alert, reason: PageReason) -> str:
    if reason is PageReason.CONFIRMED_TAKEOVER:
        return "Confirmed takeover"
    if reason is PageReason.TAKEOVER:
        return f"Possible takeover ({TAKEOVER_SUMMARY.removeprefix('possible takeover: ')})"
    if reason is PageReason.AUTOMATIC:
        return "Not acknowledged in time"
    if alert.escalated is not None and not alert.escalated.is_pinwatch:
        return f"Escalated by {actor_plain(alert.escalated)}"
    return "Escalated"


def summary(alert: Alert, reason: PageReason) -> str:
    """One line an on-call engineer understands on a phone's lock screen, plain text."""
    where = [f"WABA {alert.event.waba_id}"] if alert.event.phone_number else []
    if alert.team:
        where.append(f"team {alert.team}")
    tail = f" ({', '.join(where)})" if where else ""
    text = f"{_lead(alert, reason)}: {plain_title(alert)} for {_subject(alert)}{tail}"
    return clip(" ".join(text.split()), SUMMARY_MAX)  # no line breaks from outside input


def _actor(actor: Actor | None) -> str | None:
    return None if actor is None else actor_plain(actor)


def _details(alert: Alert, reason: PageReason, note: str | None) -> dict[str, Any]:
    event = alert.event
    details: dict[str, Any] = {
        "waba_id": event.waba_id,
        "phone_number": readable_phone(event.phone_number) if event.phone_number else None,
        "event": event.event,
        "field": event.field,
        "requester": event.requester,
        "team": alert.team,
        "severity": alert.severity.value,
        "reason": reason.value,
        "escalated_by": _actor(alert.escalated),
        "acknowledged_by": _actor(alert.acknowledged),
        "pinwatch_alert_id": alert.id,
    }
    details = {
        key: clip(value, DETAIL_MAX) if isinstance(value, str) else value
        for key, value in details.items()
        if value is not None
    }
    if note and note.strip():
        details["note"] = clip(note.strip(), NOTE_MAX)
    return details


def _links(permalink: str | None) -> list[dict[str, str]]:
    if permalink is None:
        return []
    if not permalink.startswith(("https://", "http://")):
        raise EventError("the Slack permalink must be an http(s) URL")
    return [{"href": permalink, "text": "The alert in Slack"}]


def trigger_event(
    alert: Alert,
    *,
    reason: PageReason,
    permalink: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """The page: opens an incident, or adds to the one already open for this alert.

    ``note``: a responder's words to pass on (a confirmed takeover's verdict note).
    """
    event = alert.event
    takeover = reason in (PageReason.TAKEOVER, PageReason.CONFIRMED_TAKEOVER)
    severity = "critical" if takeover else pagerduty_severity(alert.severity)
    payload: dict[str, Any] = {
        "summary": summary(alert, reason),
        "source": f"WhatsApp Business account {event.waba_id}",
        "severity": severity,
        "component": _subject(alert),
        "class": event.event,
        "custom_details": _details(alert, reason, note),
    }
    if alert.team:
        payload["group"] = alert.team
    if (at := _timestamp(event.time if event.time is not None else alert.received_at)) is not None:
        payload["timestamp"] = at
    body: dict[str, Any] = {
        "event_action": "trigger",
        "dedup_key": dedup_key(alert, reason),
        "payload": payload,
        "client": CLIENT,
    }
    if links := _links(permalink):
        body["links"] = links
        body["client_url"] = permalink
    check_event(body)
    return body


def acknowledge_event(alert: Alert, reason: PageReason = PageReason.MANUAL) -> dict[str, Any]:
    """Someone acknowledged it in Slack: PagerDuty stops notifying, the incident stays open."""
    body = {"event_action": "acknowledge", "dedup_key": dedup_key(alert, reason)}
    check_event(body)
    return body


def resolve_event(alert: Alert, reason: PageReason = PageReason.MANUAL) -> dict[str, Any]:
    """Resolved in Slack: the incident is resolved. PagerDuty drops it if none is open."""
    body = {"event_action": "resolve", "dedup_key": dedup_key(alert, reason)}
    check_event(body)
    return body


def _text(value: Any, *, limit: int, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"{name} must be a non-empty string")
    if len(value) > limit:
        raise EventError(f"{name} is longer than {limit} characters")


def check_event(body: dict[str, Any]) -> None:
    """Raise EventError unless PagerDuty's documented schema accepts ``body`` (the routing key
    aside, which the client adds)."""
    if "routing_key" in body:
        raise EventError("an event is built without its routing key: the client adds it")
    action = body.get("event_action")
    if action not in ACTIONS:
        raise EventError(f"event_action must be one of {', '.join(ACTIONS)}")
    _text(body.get("dedup_key"), limit=DEDUP_KEY_MAX, name="dedup_key")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            raise EventError("a trigger needs a payload")
        _text(payload.get("summary"), limit=SUMMARY_MAX, name="payload.summary")
        _text(payload.get("source"), limit=DETAIL_MAX, name="payload.source")
        if payload.get("severity") not in SEVERITIES:
            raise EventError(f"payload.severity must be one of {', '.join(SEVERITIES)}")
        if not isinstance(payload.get("custom_details", {}), dict):
            raise EventError("payload.custom_details must be an object")
    for link in body.get("links", []):
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            raise EventError("each link needs an href")
    size = len(json.dumps(body, ensure_ascii=False).encode())
    if size > EVENT_BYTES_MAX - 1024:  # room for the routing key and the braces around it
        raise EventError(f"the event is {size} bytes: PagerDuty takes at most {EVENT_BYTES_MAX}")
