"""Pure: what PagerDuty has to hear next of an alert, from what pinwatch has of it and what it
last told PagerDuty (Alert.pagerduty_kind and pagerduty_state). No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.events import Alert, EscalationKind, PagerDutyState
from bot.pagerduty.events import (
    PageReason,
    acknowledge_event,
    resolve_event,
    trigger_event,
)


class Step(StrEnum):
    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


_STATE_AFTER = {
    Step.TRIGGER: PagerDutyState.TRIGGERED,
    Step.ACKNOWLEDGE: PagerDutyState.ACKNOWLEDGED,
    Step.RESOLVE: PagerDutyState.RESOLVED,
}


@dataclass(frozen=True, slots=True)
class NextStep:
    step: Step
    kind: EscalationKind  # the escalation it is about: one incident per kind of page

    @property
    def state_after(self) -> PagerDutyState:
        return _STATE_AFTER[self.step]


_OPEN = (PagerDutyState.TRIGGERED, PagerDutyState.ACKNOWLEDGED)


def nothing_open(step: NextStep, alert: Alert) -> bool:
    """A resolution PagerDuty has no incident for: the page never went, and no earlier
    escalation's incident is open. Recorded, not sent."""
    return (
        step.step is Step.RESOLVE
        and alert.pagerduty_kind is not step.kind
        and alert.pagerduty_state not in _OPEN
    )


def next_step(alert: Alert) -> NextStep | None:
    """Trigger for an escalation PagerDuty has not had; then acknowledge once someone
    acknowledges it after it was escalated (an acknowledgement from before the page must not
    silence it), and resolve once it is resolved. A confirmed takeover stays open in
    PagerDuty: it is the on-call's to close, not Slack's."""
    kind = alert.escalation_kind
    if kind is None or alert.escalated is None:
        return None
    # A resolution from before the escalation (a takeover after an "expected change" verdict)
    # must not close its incident, as an acknowledgement from before must not silence it.
    closed = alert.resolved is not None and alert.resolved.at >= alert.escalated.at
    if alert.pagerduty_kind is not kind:
        if (
            kind is EscalationKind.CONFIRMED
            and alert.pagerduty_kind is not None
            and alert.pagerduty_state in _OPEN
        ):
            # The escalation's incident it supersedes is resolved first (through the routing
            # key it was opened with): the confirmed takeover's alone stays open.
            return NextStep(Step.RESOLVE, alert.pagerduty_kind)
        if closed and kind is not EscalationKind.CONFIRMED:
            # Resolved before PagerDuty took the page (an outage, a backlog): nobody is woken
            # for it; an earlier escalation's incident still open is resolved.
            return NextStep(Step.RESOLVE, kind)
        return NextStep(Step.TRIGGER, kind)
    if kind is EscalationKind.CONFIRMED or alert.pagerduty_state not in _OPEN:
        return None
    if closed:
        return NextStep(Step.RESOLVE, kind)
    acknowledged = alert.acknowledged
    if (
        alert.pagerduty_state is PagerDutyState.TRIGGERED
        and acknowledged is not None
        and acknowledged.at > alert.escalated.at
    ):
        return NextStep(Step.ACKNOWLEDGE, kind)
    return None


def shared_incident_settled(step: NextStep, alert: Alert, rows: Sequence[Alert]) -> bool:
    """A storm summary is paged once, so its rows share an incident: acknowledged or resolved
    in PagerDuty only when the last row that shares it is."""
    others = [r for r in rows if r.id != alert.id and r.pagerduty_kind is step.kind]
    if step.step is Step.RESOLVE:
        return all(r.pagerduty_state is PagerDutyState.RESOLVED or r.resolved for r in others)
    if step.step is Step.ACKNOWLEDGE:
        return all(
            r.pagerduty_state is not PagerDutyState.TRIGGERED or next_step(r) is not None
            for r in others
        )
    return True


def events_for(
    step: NextStep, incident: Alert, *, permalink: str | None, note: str | None
) -> list[dict[str, Any]]:
    """The Events API v2 bodies (no routing key) that take PagerDuty to the step. `incident`
    is the alert whose dedup key names the incident (a storm summary's first row). Resolving
    a takeover's incident also resolves the ordinary escalation's, opened before it."""
    reason = PageReason.of(step.kind)
    if step.step is Step.TRIGGER:
        confirmed = step.kind is EscalationKind.CONFIRMED
        return [
            trigger_event(
                incident, reason=reason, permalink=permalink, note=note if confirmed else None
            )
        ]
    if step.step is Step.ACKNOWLEDGE:
        return [acknowledge_event(incident, reason)]
    reasons = [PageReason.MANUAL, reason] if reason is PageReason.TAKEOVER else [reason]
    return [resolve_event(incident, each) for each in reasons]
