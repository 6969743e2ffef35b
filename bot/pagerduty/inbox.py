"""PagerDuty's v3 webhooks in: an incident acknowledged or resolved there is acknowledged or
resolved here, as a click would, once (redeliveries and pinwatch's own echoes change nothing)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from enum import StrEnum

from bot.config import LiveConfig
from bot.events import PAGERDUTY_ACTOR_PREFIX, Actor, Alert, Clock, PagerDutyState
from bot.logs import for_alert
from bot.pagerduty.events import PageReason, alert_id_of, dedup_key, reason_of
from bot.pagerduty.webhook import IncidentChange, IncidentEvent
from bot.routing import team_destination
from bot.store import Store, Transition

log = logging.getLogger(__name__)

# PagerDuty redelivers for about 20 minutes; an event id is remembered well past that.
SEEN_FOR = 24 * 3600.0


class Outcome(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"  # done already: by a click, an earlier webhook, or pinwatch itself
    REPEATED = "repeated"  # this event was applied before
    NOT_OURS = "not_ours"  # an incident pinwatch did not open
    IGNORED = "ignored"  # neither acknowledged nor resolved


class PagerDutyInbox:
    def __init__(
        self,
        *,
        store: Store,
        config: LiveConfig,
        clock: Clock,
        refresh: Callable[[Alert], None],
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._refresh = refresh  # re-renders the alert's Slack message, in the background

    async def apply(self, event: IncidentEvent) -> Outcome:
        """Raises StoreError (answered 503: PagerDuty retries)."""
        if event.change is IncidentChange.OTHER:
            return Outcome.IGNORED
        alert = await self._alert_of(event.incident_key)
        if alert is None:
            return Outcome.NOT_OURS
        rows = await self._sharing(alert, event.incident_key)
        if not rows:
            # An earlier escalation's incident (the manual one, once a takeover has its own):
            # closing it must not close the alert, and through it the current incident.
            return Outcome.UNCHANGED
        now = self._clock()
        agent = event.agent
        actor = Actor(
            user_id=PAGERDUTY_ACTOR_PREFIX + ((agent.id if agent else None) or "pagerduty"),
            name=agent.describe() if agent else "PagerDuty",
            at=now,
        )
        where = f" ({event.html_url})" if event.html_url else ""
        acknowledged = event.change is IncidentChange.ACKNOWLEDGED
        transitions: list[Transition] = []
        for row in rows:
            # First what PagerDuty has, so that the outbox, seeing the alert change, has
            # nothing to send back; then the alert. Both guarded: a redelivery changes neither.
            await self._note_pagerduty_has(
                row, event, named=alert, acknowledged=acknowledged, actor=actor
            )
            if acknowledged:
                remind_every = team_destination(row.team, self._config.config).remind_every
                transitions.append(
                    await self._store.acknowledge(
                        row.id,
                        actor,
                        detail=f"acknowledged in PagerDuty{where}",
                        remind_at=now + remind_every,
                    )
                )
            else:
                transitions.append(
                    await self._store.resolve(
                        row.id, actor, None, note=None, detail=f"resolved in PagerDuty{where}"
                    )
                )
        # Remembered once applied: a crash before this, and PagerDuty's retry applies it.
        seen = hashlib.sha256(f"pagerduty-webhook:{event.event_id}".encode()).hexdigest()
        if not await self._store.first_sight(seen, expires_at=now + SEEN_FOR, now=now):
            return Outcome.REPEATED
        changed = [t.alert for t in transitions if t.changed]
        if not changed:
            for transition in transitions:
                done = transition.alert.acknowledged if acknowledged else transition.alert.resolved
                if done is not None and done.user_id == actor.user_id and done.in_pagerduty:
                    # Committed by an earlier delivery of this change, answered 503 before its
                    # message was refreshed (its event id not remembered): refreshed now.
                    self._refresh(transition.alert)
                    break
            return Outcome.UNCHANGED
        for row in changed:
            for_alert(log, row).info("%s in PagerDuty by %s", event.change, actor.name)
        self._refresh(changed[0])  # a storm summary's rows share one message
        return Outcome.APPLIED

    async def _sharing(self, alert: Alert, key: str | None) -> list[Alert]:
        """The alerts whose pages went to the incident `key` names (`alert`'s, or its storm
        summary's first row's): a summary is paged with its first row's key, whichever row
        was escalated. None: the key names an earlier escalation's incident. An alert whose
        page is not recorded yet (PagerDuty's webhook before our commit) is its own."""

        def opened(row: Alert) -> bool:
            kind = row.pagerduty_kind
            return kind is not None and key == dedup_key(alert, PageReason.of(kind))

        rows = [alert]
        if alert.grouped and alert.slack_channel and alert.slack_ts:
            rows = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
        if sharing := [row for row in rows if opened(row)]:
            return sharing
        return [alert] if alert.pagerduty_kind is None else []

    async def _note_pagerduty_has(
        self,
        alert: Alert,
        event: IncidentEvent,
        *,
        named: Alert,
        acknowledged: bool,
        actor: Actor,
    ) -> None:
        kind, state = alert.pagerduty_kind, alert.pagerduty_state
        if kind is None or event.incident_key != dedup_key(named, PageReason.of(kind)):
            return  # an earlier escalation's incident: the current one is unchanged
        if acknowledged and state is PagerDutyState.TRIGGERED:
            new = PagerDutyState.ACKNOWLEDGED
        elif not acknowledged and state in (PagerDutyState.TRIGGERED, PagerDutyState.ACKNOWLEDGED):
            new = PagerDutyState.RESOLVED
        else:
            return
        await self._store.mark_pagerduty(
            alert.id, kind=kind, state=new, was=(kind, state), actor=actor, detail="in PagerDuty"
        )

    async def _alert_of(self, key: str | None) -> Alert | None:
        alert_id = alert_id_of(key)
        if alert_id is None or key is None:
            return None
        alert = await self._store.get(alert_id)
        # The hash in the key is the alert's own: not another deployment's alert of that id.
        return alert if alert is not None and reason_of(key, alert) is not None else None
