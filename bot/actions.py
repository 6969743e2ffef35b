"""Slack interactivity: verify a click, parse it, check who clicked, and apply it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot import keys
from bot.config import Config, LiveConfig
from bot.dispatcher import Dispatcher
from bot.events import Actor, Alert, Clock, EscalationKind, Responders
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.render import ACKNOWLEDGE_ACTION, ESCALATE_ACTION, actor_text, slack_date
from bot.routing import team_destination
from bot.slack import SlackCallError, SlackGateway
from bot.store import Store, StoreError

log = logging.getLogger(__name__)

SIGNATURE_WINDOW = 5 * 60  # Slack's own rule for X-Slack-Request-Timestamp
GROUP_CACHE_SECONDS = 300.0
# A click waits this long for its alert's post to be recorded (Slack's answer, then our commit,
# which the dispatcher retries while the store fails).
POST_RECORD_WAIT = 60.0
POST_RECORD_POLL = 0.05
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,40}$")


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ESCALATE = "escalate"


_ACTIONS = {ACKNOWLEDGE_ACTION: Action.ACKNOWLEDGE, ESCALATE_ACTION: Action.ESCALATE}


class RequestRefused(Exception):
    """Not signed by Slack, too old, or seen before: answered 401."""


class MalformedInteraction(Exception):
    """Signed by Slack but not a payload we can read: answered 400."""


@dataclass(frozen=True, slots=True)
class Click:
    action: Action
    alert_id: int
    user_id: str
    user_name: str | None
    channel_id: str | None
    message_ts: str | None  # the message whose button was clicked


# --- verification -----------------------------------------------------------------------------


class _InjectedClock(SlackClock):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock()


class SlackRequestVerifier:
    """SignatureVerifier, plus what it lacks: bad headers refused, replays refused. Seen
    signatures are kept in the store, so a restart forgets none of them."""

    def __init__(self, signing_secret: str, *, clock: Clock) -> None:
        self._verifier = SignatureVerifier(signing_secret, clock=_InjectedClock(clock))
        self._clock = clock

    async def verify(
        self, body: bytes, timestamp: str | None, signature: str | None, *, store: Store
    ) -> None:
        if not timestamp or not signature:
            raise RequestRefused("missing Slack signature headers")
        if not timestamp.isascii() or not timestamp.isdigit():
            # is_valid raises ValueError on a non-numeric timestamp: refuse it here instead.
            raise RequestRefused("bad X-Slack-Request-Timestamp")
        try:
            valid = self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
        except (ValueError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise RequestRefused("bad or stale Slack signature")
        # Slack's window runs both ways (a timestamp up to 5 minutes ahead is valid), so a
        # signature is kept until its own timestamp is out of it, not 5 minutes after receipt.
        digest = hashlib.sha256(signature.encode()).hexdigest()
        if not await store.first_sight(
            digest, expires_at=int(timestamp) + SIGNATURE_WINDOW, now=self._clock()
        ):
            raise RequestRefused("replayed Slack request")


# --- parsing ----------------------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SlackUser(_Loose):
    id: str
    name: str | None = None
    username: str | None = None

    @field_validator("id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        if not _SLACK_USER.match(value):
            raise ValueError("not a Slack user ID")
        return value


class SlackChannel(_Loose):
    id: str


class Container(_Loose):
    """Where the clicked button is: the message's channel and ts."""

    channel_id: str | None = None
    message_ts: str | None = None


class BlockAction(_Loose):
    action_id: str = ""
    value: str | None = None


class Interaction(_Loose):
    type: str
    user: SlackUser | None = None
    channel: SlackChannel | None = None
    container: Container | None = None
    actions: list[BlockAction] = Field(default_factory=list)


def parse_interaction(body: bytes) -> list[Click]:
    """The pinwatch clicks in a form-encoded Slack interaction (POST /slack/actions)."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=False)
        [raw] = form["payload"]
        interaction = Interaction.model_validate_json(raw)
    except (UnicodeDecodeError, KeyError, ValueError) as exc:
        raise MalformedInteraction("not a Slack interaction payload") from exc
    return clicks_in(interaction)


def parse_socket_payload(payload: dict[str, Any]) -> list[Click]:
    """The pinwatch clicks in a Socket Mode envelope's payload: the same JSON, unencoded."""
    try:
        interaction = Interaction.model_validate(payload)
    except ValidationError as exc:
        raise MalformedInteraction("not a Slack interaction payload") from exc
    return clicks_in(interaction)


def clicks_in(interaction: Interaction) -> list[Click]:
    """Both transports end here: [] for anything that is not a pinwatch button."""
    if interaction.type != "block_actions":
        return []
    container = interaction.container or Container()
    channel_id = container.channel_id or (interaction.channel.id if interaction.channel else None)
    clicks = []
    for action in interaction.actions:
        kind = _ACTIONS.get(action.action_id)
        if kind is None:
            continue
        value = action.value or ""
        # An alert id is a SQLite integer: at most 18 digits keeps it below 2**63.
        if interaction.user is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise MalformedInteraction("a pinwatch action without a user or alert id")
        clicks.append(
            Click(
                action=kind,
                alert_id=int(value),
                user_id=interaction.user.id,
                # Slack does not always send user.name; username is the older field.
                user_name=interaction.user.name or interaction.user.username,
                channel_id=channel_id,
                message_ts=container.message_ts,
            )
        )
    return clicks


# --- authorization ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authority:
    """Who may act on an alert now: whoever is in every one of `lists`."""

    lists: tuple[Responders, ...]
    basis: str  # which lists applied, for the audit and the logs


def authority_for(alert: Alert, config: Config) -> Authority | None:
    """The responders the alert was routed with, narrowed by its team's responders in the file
    in force: an edit of the routing file may tighten who may act, never loosen it. None: the
    alert predates kept responders and its team is gone from the file, so nobody may act."""
    lists: list[Responders] = []
    basis: list[str] = []
    if alert.responders is not None:
        lists.append(alert.responders)
        basis.append(f"responders as routed: {alert.responders.describe()}")
    if alert.team is not None and alert.team in config.teams:
        now = Responders(team_destination(alert.team, config).responders)
        lists.append(now)
        basis.append(f"team {alert.team} in the routing file now: {now.describe()}")
    elif alert.team is None and alert.responders is None:
        lists.append(Responders(None))  # routed to the defaults, which name no responders
        basis.append("defaults: anyone")
    if not lists:
        return None
    return Authority(tuple(lists), "; ".join(basis))


class ResponderCheck:
    """Is a user in a responders list? User groups resolved through Slack and cached."""

    def __init__(self, slack: SlackGateway) -> None:
        self._slack = slack
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    async def may_act(self, user_id: str, authority: Authority) -> bool:
        for responders in authority.lists:
            if not await self._listed(user_id, responders):
                return False
        return True

    async def _listed(self, user_id: str, responders: Responders) -> bool:
        if responders.ids is None or user_id in responders.ids:
            return True
        for group in (r for r in responders.ids if r.startswith("S")):
            if user_id in await self._members(group):
                return True
        return False

    async def _members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < GROUP_CACHE_SECONDS:
            return cached[1]
        try:
            members = frozenset(await self._slack.usergroup_members(group))
        except SlackCallError as exc:
            if cached:  # a stale list beats locking every responder out during a Slack hiccup
                log.warning("user group %s not refreshed, using cached members: %s", group, exc)
                return cached[1]
            raise
        self._groups[group] = (time.monotonic(), members)
        return members


# --- applying ---------------------------------------------------------------------------------


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


def socket_mode_listener(
    actions: ActionService,
) -> Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]:
    """Socket Mode's transport: the connection is authenticated by the app token, so there is
    no signature to check; everything after that is the same path as POST /slack/actions."""

    async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        # Acknowledge first: Slack retries an envelope that is not acked within 3 seconds.
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type != "interactive":
            return
        try:
            actions.submit(parse_socket_payload(request.payload))
        except MalformedInteraction as exc:
            log.warning("socket mode: %s", exc)

    return listener


async def handle_actions(request: web.Request) -> web.Response:
    app = request.app
    body = await request.read()
    try:
        await app[keys.SLACK_VERIFIER].verify(
            body,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            store=app[keys.STORE],
        )
    except RequestRefused as exc:
        log.warning("slack actions: refused from %s: %s", request.remote, exc)
        return web.Response(status=401, text=str(exc))
    except StoreError as exc:
        # Slack shows the clicker an error and the click can be made again: nothing is lost.
        log.error("slack actions: store unavailable, answered 503: %s", exc)
        return web.Response(status=503, text="store unavailable, try again")
    try:
        clicks = parse_interaction(body)
    except MalformedInteraction as exc:
        return web.Response(status=400, text=str(exc))
    app[keys.ACTIONS].submit(clicks)
    return web.Response()
