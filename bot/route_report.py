"""What `pinwatch route` and `/pinwatch route` say of an event (pure): where it would go."""

from __future__ import annotations

from bot.catalog import ACKNOWLEDGED, Severity
from bot.config import Config
from bot.events import SecurityEvent
from bot.render import readable_phone
from bot.routing import route, severity_of


def _handling(severity: Severity, ack_timeout: float) -> str:
    if severity == Severity.OFF:
        return "never posted (alerts: off): stored and counted only"
    if severity in ACKNOWLEDGED:
        return f"{ack_timeout:g}s, then escalate"
    return "not needed (Escalate button only)"


def route_report(event: SecurityEvent, config: Config) -> list[str]:
    """Which team, channel, mentions and escalation the event would get, one line each."""
    destination = route(event, config)
    severity = severity_of(event, config)
    escalation = destination.escalation
    subject = readable_phone(event.phone_number) if event.phone_number else "the whole account"
    responders = (
        ", ".join(destination.responders) if destination.responders else "anyone in the channel"
    )
    mentioned = ", ".join(escalation.mention) or "(none)"
    return [
        f"event:      {event.event} for {subject} (WABA {event.waba_id})",
        f"field:      {event.field}",
        f"severity:   {severity.value}",
        f"team:       {destination.team or '(none: defaults)'}",
        f"channel:    {destination.channel}",
        f"mentions:   {', '.join(destination.mentions) or '(none)'}",
        f"responders: {responders}",
        f"ack within: {_handling(severity, destination.ack_timeout)}",
        f"escalation: {escalation.channel} mentioning {mentioned}",
    ]
