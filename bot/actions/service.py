"""Apply what a responder asked for in Slack: in the background, after Slack has its answer."""

from __future__ import annotations

import asyncio
import logging

from bot.actions.authority import Authority, ResponderCheck, authority_for
from bot.actions.payloads import Action, Click
from bot.config import LiveConfig
from bot.dispatcher import Dispatcher
from bot.events import Actor, Alert, Clock, EscalationKind
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.render import actor_text, slack_date
from bot.slack import SlackCallError, SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)

# A click waits this long for its alert's post to be recorded (Slack's answer, then our commit,
# which the dispatcher retries while the store fails).
POST_RECORD_WAIT = 60.0
POST_RECORD_POLL = 0.05


class ActionService:
    """Applies clicks in the background: Slack wants its answer within 3 seconds."""

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
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, clicks: list[Click]) -> None:
        for click in clicks:
            task = asyncio.create_task(self._apply_logged(click), name=f"click {click.alert_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self, *, grace: float) -> None:
        """Let the clicks under way finish, for `grace` seconds at most: a click still waiting
        for its post to be recorded can be made again after the restart."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _apply_logged(self, click: Click) -> None:
        try:
            await self.apply(click)
        except Exception:
            log.exception("alert %d: %s by %s failed", click.alert_id, click.action, click.user_id)

    async def apply(self, click: Click) -> None:
        alert = await self._posted(click.alert_id)
        if alert is None:
            await self._tell(click, "pinwatch has no such alert.")
            return
        if alert.slack_channel is None:
            await self._tell(
                click, "pinwatch is still recording this alert's message; try again in a minute."
            )
            return
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
            return
        authority = authority_for(alert, self._config.config)
        try:
            allowed = authority is not None and await self._responders.may_act(
                click.user_id, authority
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("responders not resolved: %s", exc)
            await self._tell(click, "pinwatch could not check the responders list; try again.")
            return
        if authority is None or not allowed:
            basis = authority.basis if authority else f"team {alert.team} is no longer defined"
            for_alert(log, alert).warning(
                "%s refused for %s (not a responder; %s)", click.action, click.user_id, basis
            )
            await self._store.add_audit(alert.id, f"refused {click.action}", actor, basis)
            await self._tell(click, _refusal(alert, authority))
            return
        if click.action is Action.ACKNOWLEDGE:
            await self._acknowledge(click, alert, actor, authority)
        else:
            await self._escalate(click, alert, actor, authority)

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
        transition = await self._store.acknowledge(alert.id, actor, detail=authority.basis)
        done = transition.alert.acknowledged
        assert done is not None
        if not transition.changed:
            await self._tell(
                click, f"Already acknowledged by {actor_text(done)} {slack_date(done.at)}."
            )
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
        done = transition.alert.escalated
        assert done is not None
        if not transition.changed:
            await self._tell(
                click, f"Already escalated by {actor_text(done)} {slack_date(done.at)}."
            )
            return
        self._metrics.escalations.labels(EscalationKind.MANUAL.value).inc()
        for_alert(log, alert).info("escalated by %s", actor.user_id)
        self._dispatcher.wake()  # the page goes out through the outbox, so it survives a crash

    async def _tell(self, click: Click, text: str) -> None:
        if click.channel_id is None:
            return
        try:
            await self._slack.ephemeral(click.channel_id, click.user_id, text)
        except SlackCallError as exc:
            log.warning("alert %d: could not tell %s: %s", click.alert_id, click.user_id, exc)


def _refusal(alert: Alert, authority: Authority | None) -> str:
    if authority is None:
        return (
            f"Team {alert.team} is no longer in the routing file, so nobody can act on this"
            " alert from Slack: ask whoever edits the routing file."
        )
    return f"Only the responders of team {alert.team} can act on this alert."
