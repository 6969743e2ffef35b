"""Pure routing: an event and the config in force → who hears about it, and where."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bot.catalog import ACKNOWLEDGED, FIELD_OF_EVENT, Severity, default_severity
from bot.config import Config, Escalation, Route
from bot.events import (
    Alert,
    Assignment,
    EventType,
    Expectation,
    Incoming,
    Responders,
    SecurityEvent,
)
from bot.windows import Window, window_for


@dataclass(frozen=True, slots=True)
class Destination:
    team: str | None  # None: no route matched, the defaults apply
    channel: str
    mentions: tuple[str, ...]
    responders: tuple[str, ...] | None  # None: anyone in the channel may act
    ack_timeout: float
    correlation_window: float
    remind_every: float
    escalation: Escalation


def _matches(route: Route, event: SecurityEvent, digits: str) -> bool:
    if route.fields is not None and event.field not in route.fields:
        return False
    if route.waba_ids is not None and event.waba_id not in route.waba_ids:
        return False
    if route.phone_numbers is not None:
        if digits:
            if digits not in route.phone_numbers:
                return False
        elif route.waba_ids is None:
            # An event of the whole account has no number: it is routed by its WABA, so a
            # route of numbers claims it only when it names the WABA too.
            return False
    return route.events is None or event.event in route.events


def severity_of(event: SecurityEvent, config: Config) -> Severity:
    """The default for the event, unless the `alerts:` map names it (as an event of the field
    it came in: an unknown security event called DISABLED_UPDATE is not a ban)."""
    if FIELD_OF_EVENT.get(event.event) == event.field and event.event in config.alerts:
        return config.alerts[event.event]
    return default_severity(event.field, event.event, event.value)


def team_destination(team: str | None, config: Config) -> Destination:
    """A team's settings with the defaults filled in; an unknown team gets the defaults."""
    defaults = config.defaults
    settings = config.teams.get(team) if team is not None else None
    if settings is None:
        return Destination(
            team=None,
            channel=defaults.channel,
            mentions=tuple(defaults.mention),
            responders=None,
            ack_timeout=defaults.ack_timeout,
            correlation_window=defaults.correlation_window,
            remind_every=defaults.remind_every,
            escalation=defaults.escalation,
        )
    return Destination(
        team=team,
        channel=settings.channel or defaults.channel,
        mentions=tuple(settings.mention if settings.mention is not None else defaults.mention),
        responders=tuple(settings.responders) if settings.responders is not None else None,
        ack_timeout=settings.ack_timeout or defaults.ack_timeout,
        correlation_window=settings.correlation_window or defaults.correlation_window,
        remind_every=settings.remind_every or defaults.remind_every,
        escalation=settings.escalation or defaults.escalation,
    )


def route(event: SecurityEvent, config: Config) -> Destination:
    """First matching route wins; an event no route matches goes to the defaults."""
    digits = event.phone_digits  # computed, not stored: once per event, not once per route
    team = next((r.team for r in config.routes if _matches(r, event, digits)), None)
    return team_destination(team, config)


def happened_at(event: SecurityEvent, received_at: float) -> float:
    """When Meta says the event happened; a redelivery days later still happened then."""
    return float(event.time) if event.time is not None else received_at


def happened(alert: Alert) -> float:
    """When Meta says the alert's event happened (see happened_at)."""
    return happened_at(alert.event, alert.received_at)


def assign(
    event: SecurityEvent,
    received_at: float,
    config: Config,
    *,
    windows: Sequence[Window] = (),
    requests_in: Collection[tuple[int, str]] = (),
) -> Assignment:
    """Where it goes and how loud: an alert routed `off` is kept, counted and never posted
    (the outbox does not hold it); one inside an announced window is posted marked as
    expected, without mentions or a deadline (so never escalated automatically)."""
    destination = route(event, config)
    severity = severity_of(event, config)
    deadline = received_at + destination.ack_timeout if severity in ACKNOWLEDGED else None
    mentions = destination.mentions
    window = window_for(
        event,
        team=destination.team,
        happened=happened_at(event, received_at),
        windows=windows,
        requests_in=requests_in,
    )
    expected = None
    if window is not None:
        deadline, mentions = None, ()
        expected = Expectation(
            window_id=window.id,
            announced_by=window.opened_by,
            reason=window.reason,
            until=window.ends_at,
        )
    return Assignment(
        team=destination.team,
        channel=destination.channel,
        mentions=mentions,
        responders=Responders(destination.responders),
        ack_deadline=deadline,
        assigned_severity=severity,
        expected=expected,
    )


def assign_all(
    incoming: Sequence[Incoming],
    config: Config,
    *,
    windows: Sequence[Window],
    requests_in: Collection[tuple[int, str]],
) -> list[Assignment]:
    """Each event assigned, in order: a reset request found inside a window makes its
    number's success that follows in the same batch expected too."""
    requests = set(requests_in)
    assigned = []
    for event, received_at in incoming:
        assignment = assign(event, received_at, config, windows=windows, requests_in=requests)
        assigned.append(assignment)
        expected = assignment.expected
        if expected is not None and event.known_type == EventType.PIN_RESET_REQUEST:
            requests.add((expected.window_id, event.phone_digits))
    return assigned
