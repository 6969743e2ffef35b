"""Pure routing: an event and the config in force → who hears about it, and where."""

from __future__ import annotations

from dataclasses import dataclass

from bot.catalog import FIELD_OF_EVENT, Severity, default_severity
from bot.config import Config, Escalation, Route
from bot.events import SecurityEvent


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
