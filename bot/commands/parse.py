"""The text of a /pinwatch command → what it asks for (pure: no I/O). Bad input is a
UsageError holding the one line to show."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.catalog import KNOWN_EVENTS
from bot.config import parse_duration
from bot.windows import MAX_WINDOW, NotATarget, Target, parse_events

MAX_REASON_CHARS = 500
MAX_TEXT_CHARS = 2000  # Slack's own limit on a slash command's text is about 4,000

USAGE = {
    "open": "/pinwatch open: your teams' unresolved alerts",
    "route": "/pinwatch route +NUMBER [WABA]: where an event for that number would go",
    "expect": (
        "/pinwatch expect +NUMBER|WABA DURATION [EVENT…] REASON, e.g. "
        "/pinwatch expect +15550783881 1h PIN rotation by the on-call (at most 24h)"
    ),
    "expected": "/pinwatch expected: the announced windows still open",
    "cancel": "/pinwatch cancel ID: end an announced window early",
    "help": "/pinwatch help: what pinwatch can do from here",
}
SUBCOMMANDS = tuple(USAGE)
HELP = "\n".join(["pinwatch, from Slack:", *(f"• {line}" for line in USAGE.values())])

# A token that looks like an event name (two words or more in capitals): checked, never reason.
_EVENT_LIKE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# Slack may send a number as a tel: link and escapes &, < and > in the text.
_LINK = re.compile(r"<(?:tel:)?([^|<>]*)(?:\|([^<>]*))?>")


class UsageError(ValueError):
    """What to tell the caller, in one line."""


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class OpenAlerts:
    pass


@dataclass(frozen=True, slots=True)
class RouteQuery:
    phone: str
    waba: str


@dataclass(frozen=True, slots=True)
class Expect:
    target: Target
    duration: float
    events: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ExpectForm:
    """`expect` with no arguments: the same through a modal."""


@dataclass(frozen=True, slots=True)
class ListExpected:
    pass


@dataclass(frozen=True, slots=True)
class Cancel:
    window_id: int


Command = Help | OpenAlerts | RouteQuery | Expect | ExpectForm | ListExpected | Cancel


def _plain(text: str) -> str:
    """The text as typed: Slack's links unwrapped to their label, its escapes undone."""
    text = _LINK.sub(lambda m: m.group(2) or m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _usage(subcommand: str, problem: str | None = None) -> UsageError:
    line = f"Usage: {USAGE[subcommand]}"
    return UsageError(f"{problem}. {line}" if problem else line)


def parse_command(text: str) -> Command:
    if len(text) > MAX_TEXT_CHARS:
        raise UsageError("That command is too long: see /pinwatch help.")
    words = _plain(text).split()
    if not words:
        return Help()
    name, args = words[0].lower(), words[1:]
    if name == "help":
        return Help()
    if name == "open":
        if args:
            raise _usage("open")
        return OpenAlerts()
    if name == "expected":
        if args:
            raise _usage("expected")
        return ListExpected()
    if name == "route":
        return _route(args)
    if name == "expect":
        return _expect(args) if args else ExpectForm()
    if name == "cancel":
        return _cancel(args)
    known = ", ".join(SUBCOMMANDS)
    raise UsageError(f"Unknown subcommand {clip_word(name)!r}: use one of {known}.")


def clip_word(word: str) -> str:
    return word if len(word) <= 40 else word[:39] + "…"


def _route(args: list[str]) -> RouteQuery:
    if not 1 <= len(args) <= 2:
        raise _usage("route")
    try:
        target = Target.parse(args[0])
    except NotATarget as exc:
        raise _usage("route", str(exc)) from None
    if target.kind.value != "phone":
        raise _usage("route", f"{clip_word(args[0])!r} is not a phone number (+…)")
    waba = args[1] if len(args) == 2 else ""
    if waba and not (waba.isascii() and waba.isdigit() and len(waba) <= 20):
        raise _usage("route", f"{clip_word(waba)!r} is not a WABA id")
    return RouteQuery(phone=target.value, waba=waba)


class FieldProblem(ValueError):
    """One part of an announcement is wrong: which (target, duration, events, reason), and why."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(problem)
        self.part = part


def check_expect(target: str, duration: str, events: list[str], reason: str) -> Expect:
    """The parts of an announcement, from the command's words or the modal's fields; raises
    FieldProblem naming the first part that is wrong."""
    try:
        parsed_target = Target.parse(target)
    except NotATarget as exc:
        raise FieldProblem("target", str(exc)) from None
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise FieldProblem("duration", f"{clip_word(duration)!r}: {exc}") from None
    if seconds > MAX_WINDOW:
        raise FieldProblem("duration", f"{clip_word(duration)} is longer than 24h")
    try:
        parsed_events = parse_events(events)
    except ValueError as exc:
        raise FieldProblem("events", str(exc)) from None
    reason = " ".join(reason.split())
    if not reason:
        raise FieldProblem("reason", "Say why: a reason is required")
    if len(reason) > MAX_REASON_CHARS:
        raise FieldProblem("reason", f"The reason is longer than {MAX_REASON_CHARS} characters")
    return Expect(target=parsed_target, duration=seconds, events=parsed_events, reason=reason)


def parse_expect(target: str, duration: str, events: list[str], reason: str) -> Expect:
    try:
        return check_expect(target, duration, events, reason)
    except FieldProblem as exc:
        raise _usage("expect", str(exc)) from None


def _expect(args: list[str]) -> Expect:
    if len(args) < 2:
        raise _usage("expect")
    target, duration, rest = args[0], args[1], args[2:]
    events = []
    while rest and (rest[0] in KNOWN_EVENTS or _EVENT_LIKE.match(rest[0])):
        events.append(rest.pop(0))
    return parse_expect(target, duration, events, " ".join(rest))


def _cancel(args: list[str]) -> Cancel:
    if len(args) != 1:
        raise _usage("cancel")
    value = args[0].removeprefix("#")
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise _usage("cancel", f"{clip_word(args[0])!r} is not a window id")
    return Cancel(window_id=int(value))
