"""Apply what a responder asked for in Slack: in the background, after Slack has its answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bot.actions.authority import Authority, ResponderCheck, authority_for
from bot.actions.payloads import (
    Action,
    Click,
    Interaction,
    Submission,
    clicks_in,
    submission_in,
)
from bot.background import Background
from bot.config import LiveConfig
from bot.dispatcher import Dispatcher
from bot.events import Actor, Alert, Clock, EscalationKind, Verdict
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.modals import (
    RESOLVE_CALLBACK,
    FormErrors,
    Resolution,
    ResolveTarget,
    read_resolution,
    resolve_modal,
)
from bot.render import actor_text, slack_date
from bot.routing import team_destination
from bot.slack import SlackCallError, SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)

# A click waits this long for its alert's post to be recorded (Slack's answer, then our commit,
# which the dispatcher retries while the store fails).
POST_RECORD_WAIT = 60.0
POST_RECORD_POLL = 0.05


# A modal's submission, read at once (Slack's answer: errors by input block, or none to close
# it); what it asks for is applied in the background.
Form = Callable[[Submission], dict[str, str]]


class ActionService:
    """Applies clicks and modal submissions in the background: Slack wants its answer within
    3 seconds."""

    def __init__(
        self,
        *,
        store: Store,
        slack: SlackGateway,
        config: LiveConfig,
        dispatcher: Dispatcher,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._store = store
        self._slack = slack
        self._config = config
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._clock = clock
        self._responders = ResponderCheck(slack)
        self._background = Background()
        self._forms: dict[str, Form] = {RESOLVE_CALLBACK: self._accept_resolution}

    def add_form(self, callback_id: str, form: Form) -> None:
        """Another of pinwatch's modals, read by whoever opens it."""
        self._forms[callback_id] = form

    def receive(self, interaction: Interaction) -> dict[str, Any] | None:
        """Slack's answer to an interaction, at once (None: an empty 200); the work it asks for
        follows in the background. Raises MalformedInteraction."""
        submission = submission_in(interaction)
        if submission is None:
            self.submit(clicks_in(interaction))
            return None
        form = self._forms.get(submission.callback_id)
        if form is None:
            return None  # not one of ours: nothing to do, and the modal may close
        errors = form(submission)
        return {"response_action": "errors", "errors": errors} if errors else None

    def submit(self, clicks: list[Click]) -> None:
        for click in clicks:
            self.spawn(self.apply(click), f"{click.action} {click.alert_id} by {click.user_id}")

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` in the background, its failure logged; close() waits for it."""
        self._background.spawn(work, name)

    async def close(self, *, grace: float) -> None:
        """Let the clicks under way finish, for `grace` seconds at most: a click still waiting
        for its post to be recorded can be made again after the restart."""
        await self._background.close(grace=grace)

    async def apply(self, click: Click) -> None:
        checked = await self._authorized(click)
        if checked is None:
            return
        alert, actor, authority = checked
        if alert.resolved is not None:
            await self._tell(click, _already_resolved(alert))
            return
        if click.action is Action.ACKNOWLEDGE:
            await self._acknowledge(click, alert, actor, authority)
        elif click.action is Action.ESCALATE:
            await self._escalate(click, alert, actor, authority)
        else:
            await self._open_resolution(click, alert)

    async def _authorized(self, click: Click) -> tuple[Alert, Actor, Authority] | None:
        """The alert, if the click was on its message and by one of its responders; otherwise
        the clicker is told why not (and a refusal is kept in the audit)."""
        alert = await self._posted(click.alert_id)
        if alert is None:
            await self._tell(click, "pinwatch has no such alert.")
            return None
        if alert.slack_channel is None:
            await self._tell(
                click, "pinwatch is still recording this alert's message; try again in a minute."
            )
            return None
        actor = Actor(user_id=click.user_id, name=click.user_name, at=self._clock())
        if (click.channel_id, click.message_ts) != (alert.slack_channel, alert.slack_ts):
            # A button counts only on the message pinwatch posted for that alert.
            for_alert(log, alert).warning(
                "%s refused for %s: clicked on message %s %s, not the alert's",
                click.action,
                click.user_id,
                click.channel_id,
                click.message_ts,
            )
            await self._store.add_audit(
                alert.id, f"refused {click.action}", actor, "the click was not on its message"
            )
            await self._tell(click, "That button does not belong to this alert's message.")
            return None
        authority = await self._authority(click, alert, actor)
        return None if authority is None else (alert, actor, authority)

    async def _authority(self, click: Click, alert: Alert, actor: Actor) -> Authority | None:
        """The responders that let the clicker act on this alert, or None (and they are told)."""
        authority = authority_for(alert, self._config.config)
        try:
            allowed = authority is not None and await self._responders.may_act(
                click.user_id, authority
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("responders not resolved: %s", exc)
            await self._tell(click, "pinwatch could not check the responders list; try again.")
            return None
        if authority is None or not allowed:
            basis = authority.basis if authority else f"team {alert.team} is no longer defined"
            for_alert(log, alert).warning(
                "%s refused for %s (not a responder; %s)", click.action, click.user_id, basis
            )
            await self._store.add_audit(alert.id, f"refused {click.action}", actor, basis)
            await self._tell(click, _refusal(alert, authority))
            return None
        return authority

    async def _posted(self, alert_id: int) -> Alert | None:
        """The alert once its Slack message is recorded: a click can come between Slack's answer
        to the post and our commit of it, and must not be refused for that."""
        deadline = asyncio.get_running_loop().time() + POST_RECORD_WAIT
        while True:
            alert = await self._store.get(alert_id)
            if alert is None or alert.slack_ts is not None:
                return alert
            if asyncio.get_running_loop().time() >= deadline:
                return alert
            await asyncio.sleep(POST_RECORD_POLL)

    async def _acknowledge(
        self, click: Click, alert: Alert, actor: Actor, authority: Authority
    ) -> None:
        remind_every = team_destination(alert.team, self._config.config).remind_every
        transition = await self._store.acknowledge(
            alert.id, actor, detail=authority.basis, remind_at=actor.at + remind_every
        )
        if not transition.changed:
            await self._tell(click, _already_settled(transition.alert, "acknowledged"))
            return
        self._metrics.time_to_ack.observe(max(0.0, actor.at - alert.received_at))
        for_alert(log, alert).info("acknowledged by %s", actor.user_id)
        await self._dispatcher.refresh_message(transition.alert)

    async def _escalate(
        self, click: Click, alert: Alert, actor: Actor, authority: Authority
    ) -> None:
        transition = await self._store.escalate(
            alert.id, actor, EscalationKind.MANUAL, detail=authority.basis
        )
        if not transition.changed:
            await self._tell(click, _already_settled(transition.alert, "escalated"))
            return
        self._metrics.escalations.labels(EscalationKind.MANUAL.value).inc()
        for_alert(log, alert).info("escalated by %s", actor.user_id)
        self._dispatcher.wake()  # the page goes out through the outbox, so it survives a crash

    async def _open_resolution(self, click: Click, alert: Alert) -> None:
        """Resolve asks for a verdict first: a modal, which Slack opens only within 3 seconds
        of the click (its trigger_id)."""
        assert alert.slack_channel is not None
        assert alert.slack_ts is not None
        whole = click.action is Action.RESOLVE_ALL and alert.grouped
        rows = 1
        if whole:
            shown = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            rows = sum(1 for row in shown if row.resolved is None)
        if click.trigger_id is None:
            await self._tell(click, "Slack did not say where to open the form; press it again.")
            return
        target = ResolveTarget(alert.id, alert.slack_channel, alert.slack_ts, whole_summary=whole)
        try:
            await self._slack.open_view(click.trigger_id, resolve_modal(alert, target, rows=rows))
        except SlackCallError as exc:
            for_alert(log, alert).warning("resolve form not opened: %s", exc)
            await self._tell(
                click, f"Slack did not open the resolve form ({exc.error}); press Resolve again."
            )

    def _accept_resolution(self, submission: Submission) -> dict[str, str]:
        try:
            target = ResolveTarget.from_metadata(submission.private_metadata)
            resolution = read_resolution(submission.values)
        except FormErrors as exc:
            return exc.errors
        # Checked as a click on the message the form was opened from.
        click = Click(
            action=Action.RESOLVE_ALL if target.whole_summary else Action.RESOLVE,
            alert_id=target.alert_id,
            user_id=submission.user_id,
            user_name=submission.user_name,
            channel_id=target.channel,
            message_ts=target.ts,
        )
        self.spawn(
            self._resolve(click, resolution), f"resolve {target.alert_id} by {submission.user_id}"
        )
        return {}

    async def _resolve(self, click: Click, resolution: Resolution) -> None:
        checked = await self._authorized(click)
        if checked is None:
            return
        alert, actor, authority = checked
        targets = [(alert, authority)]
        if click.action is Action.RESOLVE_ALL and alert.grouped:  # as the form was opened
            assert alert.slack_channel is not None
            assert alert.slack_ts is not None
            shown = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            targets = []
            for row in shown:  # every row is checked, and kept, as if resolved on its own
                if row.resolved is not None:
                    continue
                if row.id == alert.id:
                    targets.append((row, authority))
                elif (allowed := await self._authority(click, row, actor)) is None:
                    return
                else:
                    targets.append((row, allowed))
        resolved = []
        for row, allowed in targets:
            transition = await self._store.resolve(
                row.id,
                actor,
                resolution.verdict,
                note=resolution.note,
                detail=allowed.basis,
            )
            if transition.changed:
                resolved.append(transition.alert)
        if not resolved:
            await self._tell(click, _already_resolved(await self._store.get(alert.id) or alert))
            return
        for row in resolved:
            self._metrics.resolutions.labels(resolution.verdict.value).inc()
            for_alert(log, row).info("resolved by %s: %s", actor.user_id, resolution.verdict)
        if resolution.verdict is Verdict.CONFIRMED_TAKEOVER:
            self._metrics.escalations.labels(EscalationKind.CONFIRMED.value).inc(len(resolved))
            self._dispatcher.wake()  # paged through the outbox, like any escalation
        await self._dispatcher.refresh_message(resolved[0])

    async def _tell(self, click: Click, text: str) -> None:
        if click.channel_id is None:
            return
        try:
            await self._slack.ephemeral(click.channel_id, click.user_id, text)
        except SlackCallError as exc:
            log.warning("alert %d: could not tell %s: %s", click.alert_id, click.user_id, exc)


def _already_resolved(alert: Alert) -> str:
    assert alert.resolved is not None
    verdict = f" as {alert.verdict.label.lower()}" if alert.verdict else ""
    return (
        f"Already resolved by {actor_text(alert.resolved)} {slack_date(alert.resolved.at)}"
        f"{verdict}."
    )


def _already_settled(alert: Alert, what: str) -> str:
    """Why a click changed nothing: done before, or the alert resolved meanwhile."""
    if alert.resolved is not None:
        return _already_resolved(alert)
    done = alert.acknowledged if what == "acknowledged" else alert.escalated
    assert done is not None
    return f"Already {what} by {actor_text(done)} {slack_date(done.at)}."


def _refusal(alert: Alert, authority: Authority | None) -> str:
    if authority is None:
        return (
            f"Team {alert.team} is no longer in the routing file, so nobody can act on this"
            " alert from Slack: ask whoever edits the routing file."
        )
    return f"Only the responders of team {alert.team} can act on this alert."
