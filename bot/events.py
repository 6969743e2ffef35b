"""Domain types: what Meta tells us, and the alerts we make of it. No I/O here."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import StrEnum
from typing import Any

from bot.catalog import ACKNOWLEDGED, default_severity

# At home in bot.catalog; named here too, where the domain types are.
from bot.catalog import SECURITY_FIELD as SECURITY_FIELD
from bot.catalog import EventType as EventType
from bot.catalog import Severity as Severity

# Time is read through an injectable clock (seconds since the epoch) so tests can drive it.
Clock = Callable[[], float]
system_clock: Clock = time.time

# The fields pinwatch indexes, routes by and shows are cut to this: no ID, number or event name
# Meta sends comes near it, and an index cannot take a 30 kB key. The raw value stays whole.
MAX_FIELD_CHARS = 256

# Meta retries a delivery for up to 7 days: a change that carries no time of its own is a
# redelivery only within that horizon; after it, an identical change is a new event.
REDELIVERY_HORIZON = 7 * 24 * 3600.0


class EscalationKind(StrEnum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"
    TAKEOVER = "takeover"  # a completed reset, then a re-registration: paged at once
    CONFIRMED = "confirmed"  # resolved as a confirmed takeover: paged at once, with the note


class PagerDutyState(StrEnum):
    """What PagerDuty has of an alert's latest escalation (Alert.pagerduty_kind)."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REFUSED = "refused"  # PagerDuty said 400: never sent again
    NONE = "none"  # the team's escalation names no PagerDuty service


class Verdict(StrEnum):
    """How an incident ended, as the responder who resolved it judged it."""

    EXPECTED_CHANGE = "expected_change"
    FALSE_ALARM = "false_alarm"
    CONFIRMED_TAKEOVER = "confirmed_takeover"

    @property
    def label(self) -> str:
        return _VERDICT_LABELS[self]


_VERDICT_LABELS = {
    Verdict.EXPECTED_CHANGE: "Expected change",
    Verdict.FALSE_ALARM: "False alarm",
    Verdict.CONFIRMED_TAKEOVER: "Confirmed takeover",
}


def phone_digits(number: str) -> str:
    """Phone numbers are compared as digits only: '+1 555-078-3881' is '15550783881'."""
    # 0-9 only, not \D: a routing file may hold no other digits (Meta sends none), so both sides
    # of the comparison drop the same characters.
    return re.sub(r"[^0-9]", "", number)


def as_text(value: Any) -> Any:
    """A JSON number as the text of its value, anything else as it is: JSON has one number
    type, so 15550783881, 15550783881.0 and "15550783881" are the same."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _canonical(value: Any) -> Any:
    """The same change however Meta typed its scalars."""
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return as_text(value)


def dedup_order(time: int | None) -> str:
    """What a dedup key leads with: Meta's time, zero-padded so keys sort by it (webhook.py keeps
    it below 2**63, 19 digits), or '-' for a change without one."""
    return "-" if time is None else f"{time:019d}"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One stored change from one webhook entry: a `security` one, or an account-level one
    (`field` says which; such an event may have no phone number)."""

    waba_id: str
    phone_number: str
    event: str
    time: int | None
    requester: str | None = None
    value: dict[str, Any] = dataclass_field(default_factory=dict, compare=False, hash=False)
    field: str = SECURITY_FIELD

    @property
    def phone_digits(self) -> str:
        return phone_digits(self.phone_number)

    @property
    def digest(self) -> str:
        """Stable across Meta's redeliveries: the same change always hashes the same."""
        canonical = json.dumps(
            [self.waba_id, self.time, self.field, _canonical(self.value)],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def dedup_key(self) -> str:
        """The digest behind Meta's time: a flood's keys then land together at the end of the
        store's unique index, where a digest alone puts each on a page of its own that the
        commit must write (`python -m bench.commit_pages`). Stores migrate older keys to it."""
        return f"{dedup_order(self.time)}:{self.digest}"

    @property
    def known_type(self) -> EventType | None:
        """The `security` event this is, if pinwatch knows it."""
        if self.field != SECURITY_FIELD:
            return None
        try:
            return EventType(self.event)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: a Slack user, or pinwatch itself for automatic steps."""

    user_id: str
    name: str | None
    at: float

    @property
    def is_pinwatch(self) -> bool:
        return self.user_id == PINWATCH_ACTOR_ID

    @property
    def in_pagerduty(self) -> bool:
        """Someone who acted in PagerDuty (a v3 webhook said so), not in Slack."""
        return self.user_id.startswith(PAGERDUTY_ACTOR_PREFIX)


PINWATCH_ACTOR_ID = "pinwatch"
PAGERDUTY_ACTOR_PREFIX = "pagerduty:"  # then PagerDuty's ID of the user, or of the service


@dataclass(frozen=True, slots=True)
class Responders:
    """Who may act on a team's alerts: user and user-group IDs, or None for anyone."""

    ids: tuple[str, ...] | None

    def describe(self) -> str:
        return ", ".join(self.ids) if self.ids is not None else "anyone"


@dataclass(frozen=True, slots=True)
class Expectation:
    """The announced window an alert fell in (see bot.windows): who said so, and why."""

    window_id: int
    announced_by: Actor
    reason: str
    until: float


@dataclass(frozen=True, slots=True)
class Alert:
    """A stored event and everything that happened to it since."""

    id: int
    event: SecurityEvent
    received_at: float
    team: str | None = None
    channel: str | None = None
    mentions: tuple[str, ...] = ()
    slack_channel: str | None = None
    slack_ts: str | None = None
    thread_ts: str | None = None  # set when posted as a reply under an earlier alert
    ack_deadline: float | None = None
    acknowledged: Actor | None = None
    escalated: Actor | None = None
    escalation_kind: EscalationKind | None = None
    verification_off_at: float | None = None  # a later PIN_REQUEST_SUCCESS confirmed the reset
    takeover_at: float | None = None  # then a re-registration or partner change: see catalog
    delivery_note: str | None = None  # why it was posted somewhere else than routed
    escalation_channel: str | None = None  # where the escalation page went, once sent
    escalation_ts: str | None = None
    grouped: bool = False  # shown as one row of a storm summary message
    # Who may act on it, as its route said when it was routed; None: routed before pinwatch
    # kept this (see actions.Authority).
    responders: Responders | None = None
    # As routed, the `alerts:` map applied; None: not routed yet, or routed before pinwatch
    # kept it (the default then holds).
    assigned_severity: Severity | None = None
    # Routed inside an announced window: posted without mentions or an ack deadline.
    expected: Expectation | None = None
    resolved: Actor | None = None
    verdict: Verdict | None = None
    resolution_note: str | None = None
    # When the next reminder of an acknowledged, unresolved alert is due; None: none is.
    next_reminder_at: float | None = None
    # The escalation PagerDuty was last told of, and what it has of it; None: nothing yet.
    pagerduty_kind: EscalationKind | None = None
    pagerduty_state: PagerDutyState | None = None
    pagerduty_key_env: str | None = None  # the routing key's variable its trigger went through

    @property
    def needs_acknowledgement(self) -> bool:
        """Critical and high alerts wait for a human, but not a success threaded under the
        request it completes (that request waits instead)."""
        return self.severity in ACKNOWLEDGED and self.thread_ts is None

    @property
    def severity(self) -> Severity:
        if self.assigned_severity is not None:
            return self.assigned_severity
        return default_severity(self.event.field, self.event.event, self.event.value)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What routing decides for an event: whose it is, where it goes and how loud. Its fields
    are the alert's of the same names, so the store's route columns read either."""

    team: str | None
    channel: str
    mentions: tuple[str, ...]
    responders: Responders
    ack_deadline: float | None
    assigned_severity: Severity
    expected: Expectation | None

    def new_alert(self, alert_id: int, event: SecurityEvent, received_at: float) -> Alert:
        """The alert stored with this assignment, to which nothing has happened yet: built in
        one go, as a flood builds one per new event."""
        return Alert(
            id=alert_id,
            event=event,
            received_at=received_at,
            team=self.team,
            channel=self.channel,
            mentions=self.mentions,
            responders=self.responders,
            ack_deadline=self.ack_deadline,
            assigned_severity=self.assigned_severity,
            expected=self.expected,
        )


# An event as it arrives, with when pinwatch received it.
Incoming = tuple[SecurityEvent, float]
