"""PagerDuty's side of the outbox: bring PagerDuty in step with an alert, one event at a time.

The store says what PagerDuty has of each alert; what it should have follows from the alert
(bot.pagerduty.sync). So an escalation committed is paged even if pinwatch dies before sending,
and an event PagerDuty took whose answer was lost is sent again: its dedup key makes that
harmless. The dispatcher runs this in a lane per team, so one replica sends a team's events at a
time, and backs off on what comes back as RetryLater.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.config import LiveConfig
from bot.events import PINWATCH_ACTOR_ID, Actor, Alert, Clock, EscalationKind, PagerDutyState
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.pagerduty.client import Accepted, PagerDutyEvents, Refused, RetryLater
from bot.pagerduty.sync import (
    NextStep,
    Step,
    events_for,
    next_step,
    nothing_open,
    shared_incident_settled,
)
from bot.render import render_pagerduty_refused
from bot.routing import team_destination
from bot.slack import SendKey, SlackCallError, SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Later:
    """PagerDuty could not take it now: try again, after `retry_after` if it said so."""

    retry_after: float | None


# What a sync needs to record a step, retried until the store takes it (the dispatcher's).
Keep = Callable[[str, Callable[[], Awaitable[bool]]], Awaitable[bool]]


class PagerDutyOutbox:
    def __init__(
        self,
        *,
        store: Store,
        slack: SlackGateway,
        events: PagerDutyEvents | None,
        config: LiveConfig,
        environ: Mapping[str, str],
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._store = store
        self._slack = slack
        self._events = events
        self._config = config
        self._environ = environ
        self._metrics = metrics
        self._clock = clock

    @property
    def _pinwatch(self) -> Actor:
        return Actor(user_id=PINWATCH_ACTOR_ID, name="pinwatch", at=self._clock())

    async def sync(self, alert_id: int, *, keep: Keep) -> Later | None:
        """Take PagerDuty one step closer to the alert; None when that is done or not needed."""
        alert = await self._store.get(alert_id)  # read again inside the lane
        if alert is None or (step := next_step(alert)) is None:
            return None
        was = (alert.pagerduty_kind, alert.pagerduty_state)
        if nothing_open(step, alert):
            never = "not sent: resolved before PagerDuty took its page"
            await keep(
                "pagerduty", lambda: self._mark(alert, step, step.state_after, was, detail=never)
            )
            return None
        key_env = self._key_env(alert, step)
        routing_key = self._environ.get(key_env, "").strip() if key_env else ""
        if not routing_key or self._events is None:
            if key_env:  # named, then unset (serve and reloads refuse that): said, not sent
                for_alert(log, alert).error("PagerDuty: %s is not set; not sent", key_env)
            await keep("pagerduty", lambda: self._mark(alert, step, PagerDutyState.NONE, was))
            return None
        incident = alert
        if alert.grouped and alert.slack_channel and alert.slack_ts:
            rows = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            incident = min(rows, key=lambda row: row.id, default=alert)
            if not shared_incident_settled(step, alert, rows):
                # Another row still holds the summary's incident open: this row is done.
                await keep("pagerduty", lambda: self._mark(alert, step, step.state_after, was))
                return None
        permalink = await self._permalink(alert) if step.step is Step.TRIGGER else None
        for body in events_for(step, incident, permalink=permalink, note=alert.resolution_note):
            result = await self._events.send(body, routing_key=routing_key)
            outcome = type(result).__name__.lower()
            self._metrics.pagerduty_events.labels(step.step.value, outcome).inc()
            if isinstance(result, RetryLater):
                for_alert(log, alert).warning(
                    "PagerDuty %s not sent, will retry: %s", step.step, result.reason
                )
                return Later(result.retry_after)
            if isinstance(result, Refused):
                await self._refused(alert, step, was, result, keep=keep)
                return None
            assert isinstance(result, Accepted)
        key = str(body["dedup_key"])
        await keep(
            "pagerduty",
            lambda: self._mark(alert, step, step.state_after, was, detail=key, key_env=key_env),
        )
        for_alert(log, alert).info("PagerDuty %s sent (%s)", step.step, key)
        return None

    async def _mark(
        self,
        alert: Alert,
        step: NextStep,
        state: PagerDutyState,
        was: tuple[EscalationKind | None, PagerDutyState | None],
        *,
        detail: str | None = None,
        key_env: str | None = None,
    ) -> bool:
        return await self._store.mark_pagerduty(
            alert.id,
            kind=step.kind,
            state=state,
            was=was,
            actor=self._pinwatch,
            detail=detail,
            key_env=key_env,
        )

    def _key_env(self, alert: Alert, step: NextStep) -> str | None:
        """A trigger goes through the team's routing key as the file names it now; what follows
        through the one its trigger went through."""
        if step.step is not Step.TRIGGER:
            return alert.pagerduty_key_env
        escalation = team_destination(alert.team, self._config.config).escalation
        return escalation.pagerduty.routing_key_env if escalation.pagerduty else None

    async def _refused(
        self,
        alert: Alert,
        step: NextStep,
        was: tuple[EscalationKind | None, PagerDutyState | None],
        refusal: Refused,
        *,
        keep: Keep,
    ) -> None:
        """A 400 is for good (a bad routing key, most likely): said in the alert's thread, where
        the team will see that nobody was paged, and not sent again."""
        why = refusal.describe()
        for_alert(log, alert).error(
            "PagerDuty refused the %s for team %s (HTTP %d): %s",
            step.step,
            alert.team or "(defaults)",
            refusal.status,
            why,
        )
        self._metrics.pagerduty_refused.labels(alert.team or "").inc()
        await keep(
            "pagerduty",
            lambda: self._mark(alert, step, PagerDutyState.REFUSED, was, detail=why),
        )
        if alert.slack_channel is None or alert.slack_ts is None:
            return
        try:
            # After the refusal is recorded, so posted once: no earlier attempt to look for.
            await self._slack.post(
                alert.slack_channel,
                render_pagerduty_refused(alert, step=step.step.value, why=why),
                send=SendKey.pagerduty_refused(alert.id, step.kind),
                thread_ts=alert.slack_ts,
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("PagerDuty's refusal not posted: %s", exc)

    async def _permalink(self, alert: Alert) -> str | None:
        if alert.slack_channel is None or alert.slack_ts is None:
            return None
        try:
            return await self._slack.permalink(alert.slack_channel, alert.slack_ts)
        except SlackCallError as exc:  # a page without the link beats no page
            for_alert(log, alert).warning("no permalink for PagerDuty: %s", exc)
            return None
