"""Announced expected changes (pure): what a window covers, whose team it is, what it matches."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.catalog import FIELD_OF_EVENT, TAKEOVER_EVENTS, EventType
from bot.config import Config, Route
from bot.events import Actor, SecurityEvent, phone_digits

# An expected change is announced for a working session, not a standing exemption.
MAX_WINDOW = 24 * 3600.0
# What a window covers when its announcement names no events: changing one's own PIN.
PIN_EVENTS: tuple[str, ...] = (
    EventType.PIN_RESET_REQUEST.value,
    EventType.PIN_REQUEST_SUCCESS.value,
    EventType.PIN_CHANGED.value,
)


class TargetKind(StrEnum):
    PHONE = "phone"
    WABA = "waba"


class NotATarget(ValueError):
    """Neither a phone number (+…) nor a WABA id."""


@dataclass(frozen=True, slots=True)
class Target:
    """A phone number (as digits, compared like routing does) or a WABA id."""

    kind: TargetKind
    value: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """'+1 555-078-3881' (a leading + says it is a number) or '102290129340398' (a WABA)."""
        text = text.strip()
        if text.startswith("+"):
            digits = phone_digits(text)
            if not 5 <= len(digits) <= 15 or any(c not in "0123456789 -().+" for c in text):
                raise NotATarget(f"{text!r} is not a phone number")
            return cls(TargetKind.PHONE, digits)
        if text.isascii() and text.isdigit() and 1 <= len(text) <= 20:
            return cls(TargetKind.WABA, text)
        raise NotATarget(f"{text!r} is neither a phone number (+…) nor a WABA id (digits)")

    def covers(self, event: SecurityEvent) -> bool:
        if self.kind is TargetKind.PHONE:
            return bool(event.phone_number) and event.phone_digits == self.value
        return event.waba_id == self.value

    def describe(self) -> str:
        return f"+{self.value}" if self.kind is TargetKind.PHONE else f"WABA {self.value}"


@dataclass(frozen=True, slots=True)
class Window:
    """An announced expected change, as stored. It counts only once announced in Slack."""

    id: int
    target: Target
    events: tuple[str, ...]
    reason: str
    team: str | None
    channel: str  # the routed team channel its announcement goes to
    opened_by: Actor
    until: float
    announced_channel: str | None = None
    announced_ts: str | None = None
    cancelled: Actor | None = None

    @property
    def opened_at(self) -> float:
        return self.opened_by.at

    @property
    def ends_at(self) -> float:
        return min(self.until, self.cancelled.at) if self.cancelled else self.until

    @property
    def announced(self) -> bool:
        return self.announced_ts is not None

    def open_at(self, moment: float) -> bool:
        return self.announced and self.opened_at <= moment < self.ends_at


def _claims(route: Route, target: Target, event: str) -> bool:
    """Does a route name this target for this event? The criterion the target does not fill
    (a number's WABA, a WABA's numbers) counts only where the route names the target itself."""
    field = FIELD_OF_EVENT.get(event)
    if route.fields is not None and field not in route.fields:
        return False
    if route.events is not None and event not in route.events:
        return False
    if target.kind is TargetKind.PHONE:
        if route.phone_numbers is not None:
            return target.value in route.phone_numbers
        return route.waba_ids is None
    if route.waba_ids is not None:
        return target.value in route.waba_ids
    return route.phone_numbers is None


class SeveralTeams(ValueError):
    """The events asked for go to different teams: one window per team."""


def team_of(target: Target, events: Iterable[str], config: Config) -> str | None:
    """The team whose responders may open a window on `target` for `events` (None: no route
    names it, the defaults apply)."""
    teams = {
        next((r.team for r in config.routes if _claims(r, target, event)), None) for event in events
    }
    if len(teams) > 1:
        named = ", ".join(sorted(t or "(defaults)" for t in teams))
        raise SeveralTeams(f"those events go to several teams ({named}): announce each apart")
    return teams.pop() if teams else None


def window_for(
    event: SecurityEvent,
    *,
    team: str | None,
    happened: float,
    windows: Sequence[Window],
    requests_in: Collection[tuple[int, str]] = (),
) -> Window | None:
    """The announced window an event falls in: same target, same team as routed, one of its
    events, while it is open. A success is expected too where the window already matched its
    number's reset request (`requests_in`: window id, phone digits). Takeover events are never
    covered: a re-registration or a partner change must always reach a human."""
    if event.event in TAKEOVER_EVENTS and FIELD_OF_EVENT.get(event.event) == event.field:
        return None
    for window in windows:
        if window.team != team or not window.open_at(happened) or not window.target.covers(event):
            continue
        if event.event in window.events:
            return window
        if (
            event.known_type == EventType.PIN_REQUEST_SUCCESS
            and (window.id, event.phone_digits) in requests_in
        ):
            return window
    return None


def parse_events(names: Iterable[str]) -> tuple[str, ...]:
    """Event names as given, checked against those pinwatch knows; none given: the PIN events."""
    given = tuple(dict.fromkeys(names))
    for name in given:
        if name not in FIELD_OF_EVENT:
            raise ValueError(f"{name!r} is not an event pinwatch knows")
        if name in TAKEOVER_EVENTS:
            raise ValueError(
                f"{name} cannot be announced: a re-registration or partner change always"
                " reaches a human"
            )
    return given or PIN_EVENTS
