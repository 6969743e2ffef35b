"""Stored rows ↔ domain types, the same for every backend (both return rows by column name)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Protocol

from bot.events import (
    Actor,
    Alert,
    Assignment,
    EscalationKind,
    Expectation,
    PagerDutyState,
    Responders,
    SecurityEvent,
    Severity,
    Verdict,
)
from bot.windows import Target, TargetKind, Window


class Row(Protocol):
    """sqlite3.Row and asyncpg.Record alike: columns by name."""

    def __getitem__(self, name: str, /) -> Any: ...


def _actor(user_id: str | None, name: str | None, at: float | None) -> Actor | None:
    if user_id is None or at is None:
        return None
    return Actor(user_id=user_id, name=name, at=at)


# A team's mentions and responders are the same for each of its alerts: encoded once each.
@lru_cache(maxsize=1024)
def responders_to_column(responders: Responders | None) -> str | None:
    """JSON list, or JSON null for anyone; SQL NULL: routed before responders were kept."""
    return None if responders is None else json.dumps(responders.ids)


def _responders_from_column(text: str | None) -> Responders | None:
    if text is None:
        return None
    ids = json.loads(text)
    return Responders(tuple(ids) if ids is not None else None)


@lru_cache(maxsize=1024)
def mentions_to_column(mentions: tuple[str, ...]) -> str:
    return json.dumps(list(mentions))


def severity_column(severity: Severity | None) -> str | None:
    return severity.value if severity is not None else None


def text_column(value: str | None) -> str | None:
    """Text from outside may hold NUL, which PostgreSQL's text cannot and SQLite's JSON
    functions cut at: shown as U+FFFD, the same in both (the value column keeps it, as JSON)."""
    return value.replace("\x00", "\ufffd") if value else value


def route_columns(routed: Alert | Assignment | None) -> tuple[Any, ...]:
    """team, channel, mentions, responders, ack_deadline, severity, window_id, expected, of an
    alert or of the assignment it is stored with: all NULL for one not routed yet."""
    if routed is None or routed.channel is None:  # an assignment always has a channel
        return (None,) * 8
    return (
        text_column(routed.team),
        text_column(routed.channel),
        mentions_to_column(routed.mentions),
        responders_to_column(routed.responders),
        routed.ack_deadline,
        severity_column(routed.assigned_severity),
        routed.expected.window_id if routed.expected else None,
        expected_to_column(routed.expected),
    )


def event_value_column(event: SecurityEvent) -> str:
    return json.dumps(event.value, ensure_ascii=False, sort_keys=True)


def expected_to_column(expected: Expectation | None) -> str | None:
    if expected is None:
        return None
    by = expected.announced_by
    return json.dumps(
        {
            "window": expected.window_id,
            "by": by.user_id,
            "name": by.name,
            "at": by.at,
            "reason": expected.reason,
            "until": expected.until,
        },
        ensure_ascii=False,
    )


def expected_detail(alert: Alert) -> str:
    """The audit's words for an alert routed inside an announced window."""
    assert alert.expected is not None
    return f"window {alert.expected.window_id}: {alert.expected.reason}"


def _expected_from_column(text: str | None) -> Expectation | None:
    if text is None:
        return None
    data = json.loads(text)
    return Expectation(
        window_id=data["window"],
        announced_by=Actor(user_id=data["by"], name=data["name"], at=data["at"]),
        reason=data["reason"],
        until=data["until"],
    )


def window_from_row(row: Row) -> Window:
    opened_by = _actor(row["opened_by"], row["opened_name"], row["opened_at"])
    assert opened_by is not None
    return Window(
        id=row["id"],
        target=Target(TargetKind(row["target_kind"]), row["target"]),
        events=tuple(json.loads(row["events"])),
        reason=row["reason"],
        team=row["team"],
        channel=row["channel"],
        opened_by=opened_by,
        until=row["expires_at"],
        announced_channel=row["announced_channel"],
        announced_ts=row["announced_ts"],
        cancelled=_actor(row["cancelled_by"], row["cancelled_name"], row["cancelled_at"]),
    )


def audit_detail(*parts: str | None) -> str | None:
    """An audit row's detail made of the parts given (a note, the responders that applied)."""
    return "; ".join(p for p in parts if p) or None


def resolved_action(verdict: Verdict | None) -> str:
    """The audit's name of a resolution: with its verdict, or none (resolved in PagerDuty)."""
    return f"resolved ({verdict.value})" if verdict else "resolved"


# What the intake stores of an alert: all there is of it until it is routed.
UNROUTED_COLUMNS = (
    "id, waba_id, phone_number, event, event_time, requester, value, field, received_at"
)


def _event_from_row(row: Row) -> SecurityEvent:
    return SecurityEvent(
        waba_id=row["waba_id"],
        phone_number=row["phone_number"],
        event=row["event"],
        time=row["event_time"],
        requester=row["requester"],
        value=json.loads(row["value"]),
        field=row["field"],
    )


def unrouted_from_row(row: Row) -> Alert:
    """An alert as the intake stored it (UNROUTED_COLUMNS): nothing has happened to it yet."""
    return Alert(id=row["id"], event=_event_from_row(row), received_at=row["received_at"])


def alert_from_row(row: Row) -> Alert:
    event = _event_from_row(row)
    kind = row["escalation_kind"]
    severity = row["severity"]
    verdict = row["verdict"]
    paged_kind = row["pagerduty_kind"]
    paged_state = row["pagerduty_state"]
    return Alert(
        id=row["id"],
        event=event,
        received_at=row["received_at"],
        team=row["team"],
        channel=row["channel"],
        mentions=tuple(json.loads(row["mentions"])) if row["mentions"] else (),
        slack_channel=row["slack_channel"],
        slack_ts=row["slack_ts"],
        thread_ts=row["thread_ts"],
        ack_deadline=row["ack_deadline"],
        acknowledged=_actor(
            row["acknowledged_by"], row["acknowledged_name"], row["acknowledged_at"]
        ),
        escalated=_actor(row["escalated_by"], row["escalated_name"], row["escalated_at"]),
        escalation_kind=EscalationKind(kind) if kind else None,
        verification_off_at=row["verification_off_at"],
        takeover_at=row["takeover_at"],
        delivery_note=row["delivery_note"],
        escalation_channel=row["escalation_channel"],
        escalation_ts=row["escalation_ts"],
        grouped=bool(row["grouped"]),
        responders=_responders_from_column(row["responders"]),
        assigned_severity=Severity(severity) if severity else None,
        expected=_expected_from_column(row["expected"]),
        resolved=_actor(row["resolved_by"], row["resolved_name"], row["resolved_at"]),
        verdict=Verdict(verdict) if verdict else None,
        resolution_note=row["resolution_note"],
        next_reminder_at=row["next_reminder_at"],
        pagerduty_kind=EscalationKind(paged_kind) if paged_kind else None,
        pagerduty_state=PagerDutyState(paged_state) if paged_state else None,
        pagerduty_key_env=row["pagerduty_key_env"],
    )
