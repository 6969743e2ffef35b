"""Pure: what PagerDuty hears next of an alert (bot.pagerduty.sync)."""

from __future__ import annotations

import dataclasses

from bot.events import Actor, Alert, EscalationKind, PagerDutyState, Verdict
from bot.pagerduty.events import dedup_key
from bot.pagerduty.sync import (
    NextStep,
    Step,
    events_for,
    next_step,
    nothing_open,
    shared_incident_settled,
)
from tests.test_pagerduty_events import AT, alert_of

ALICE = Actor("U0ALICE", "alice", AT + 100)


def told(alert: Alert, kind: EscalationKind, state: PagerDutyState) -> Alert:
    return dataclasses.replace(alert, pagerduty_kind=kind, pagerduty_state=state)


def test_an_escalation_not_yet_sent_is_triggered_and_nothing_else_happens_first() -> None:
    escalated = alert_of(kind=EscalationKind.MANUAL, by=ALICE)
    assert next_step(escalated) == NextStep(Step.TRIGGER, EscalationKind.MANUAL)
    # Acknowledged before anything was sent: the trigger still goes first. Resolved: nobody is
    # woken for it (review 13), the resolution is recorded without being sent.
    resolved = dataclasses.replace(escalated, resolved=ALICE, verdict=Verdict.FALSE_ALARM)
    assert next_step(resolved) == NextStep(Step.RESOLVE, EscalationKind.MANUAL)
    assert nothing_open(NextStep(Step.RESOLVE, EscalationKind.MANUAL), resolved)
    assert next_step(alert_of(kind=None)) is None


def test_acknowledged_after_the_page_acknowledges_it_before_never() -> None:
    escalated = told(alert_of(by=ALICE), EscalationKind.MANUAL, PagerDutyState.TRIGGERED)
    assert escalated.escalated is not None
    before = Actor("U0CAROL", "carol", escalated.escalated.at - 1)
    after = Actor("U0CAROL", "carol", escalated.escalated.at + 1)
    assert next_step(dataclasses.replace(escalated, acknowledged=before)) is None
    assert next_step(dataclasses.replace(escalated, acknowledged=after)) == NextStep(
        Step.ACKNOWLEDGE, EscalationKind.MANUAL
    )
    acknowledged = told(escalated, EscalationKind.MANUAL, PagerDutyState.ACKNOWLEDGED)
    assert next_step(dataclasses.replace(acknowledged, acknowledged=after)) is None


def test_resolved_resolves_what_is_open_but_a_confirmed_takeover_stays_open() -> None:
    for state in (PagerDutyState.TRIGGERED, PagerDutyState.ACKNOWLEDGED):
        open_one = told(
            alert_of(kind=EscalationKind.AUTOMATIC, by=ALICE), EscalationKind.AUTOMATIC, state
        )
        resolved = dataclasses.replace(open_one, resolved=ALICE, verdict=Verdict.EXPECTED_CHANGE)
        assert next_step(resolved) == NextStep(Step.RESOLVE, EscalationKind.AUTOMATIC)
    for state in (PagerDutyState.RESOLVED, PagerDutyState.REFUSED, PagerDutyState.NONE):
        done = told(alert_of(by=ALICE), EscalationKind.MANUAL, state)
        assert next_step(dataclasses.replace(done, resolved=ALICE)) is None
    confirmed = told(
        alert_of(kind=EscalationKind.CONFIRMED, by=ALICE),
        EscalationKind.CONFIRMED,
        PagerDutyState.TRIGGERED,
    )
    assert next_step(dataclasses.replace(confirmed, resolved=ALICE)) is None


def test_a_new_kind_of_escalation_is_triggered_again() -> None:
    takeover = told(
        alert_of(kind=EscalationKind.TAKEOVER), EscalationKind.MANUAL, PagerDutyState.ACKNOWLEDGED
    )
    assert next_step(takeover) == NextStep(Step.TRIGGER, EscalationKind.TAKEOVER)


def test_resolving_a_takeover_resolves_the_ordinary_incident_opened_before_it() -> None:
    alert = alert_of(kind=EscalationKind.TAKEOVER)
    bodies = events_for(
        NextStep(Step.RESOLVE, EscalationKind.TAKEOVER), alert, permalink=None, note=None
    )
    assert [(b["event_action"], b["dedup_key"]) for b in bodies] == [
        ("resolve", dedup_key(alert)),
        ("resolve", dedup_key(alert) + ":takeover"),
    ]
    [trigger] = events_for(
        NextStep(Step.TRIGGER, EscalationKind.CONFIRMED), alert, permalink=None, note="ours"
    )
    assert trigger["payload"]["custom_details"]["note"] == "ours"
    [ordinary] = events_for(
        NextStep(Step.TRIGGER, EscalationKind.MANUAL), alert, permalink=None, note="not passed on"
    )
    assert "note" not in ordinary["payload"]["custom_details"]


def test_a_storm_summarys_incident_is_settled_by_its_last_row() -> None:
    rows = [
        told(alert_of(alert_id=i, by=ALICE), EscalationKind.AUTOMATIC, PagerDutyState.TRIGGERED)
        for i in (1, 2, 3)
    ]
    resolve = NextStep(Step.RESOLVE, EscalationKind.AUTOMATIC)
    assert not shared_incident_settled(resolve, rows[0], rows)
    done = [told(r, EscalationKind.AUTOMATIC, PagerDutyState.RESOLVED) for r in rows[1:]]
    assert shared_incident_settled(resolve, rows[0], [rows[0], *done])
    trigger = NextStep(Step.TRIGGER, EscalationKind.AUTOMATIC)
    assert shared_incident_settled(trigger, rows[0], rows)
