"""Answer a /pinwatch command: at once (Slack waits 3 seconds), and through its response_url
for what takes longer (checking responders, posting an announcement)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackClientError
from slack_sdk.webhook.async_client import AsyncWebhookClient
from yarl import URL

from bot.actions.authority import Authority, ResponderCheck
from bot.actions.payloads import Submission
from bot.background import Background
from bot.commands.form import channel_of, expect_modal, read_expect
from bot.commands.parse import (
    HELP,
    USAGE,
    Cancel,
    Expect,
    ExpectForm,
    Help,
    ListExpected,
    OpenAlerts,
    RouteQuery,
    UsageError,
    parse_command,
)
from bot.commands.requests import SlashCommand
from bot.config import LiveConfig
from bot.events import Actor, Clock, EventType, Responders, SecurityEvent
from bot.modals import FormErrors
from bot.render import (
    channel_text,
    open_line,
    render_window_announcement,
    render_window_cancelled,
    slack_date,
    window_line,
)
from bot.route_report import route_report
from bot.routing import team_destination
from bot.slack import Posted, SendKey, SlackCallError, SlackGateway
from bot.store import Store, StoreError
from bot.windows import SeveralTeams, Window, team_of

log = logging.getLogger(__name__)

SLACK_HOOKS_HOST = "hooks.slack.com"
OPEN_LIMIT = 20  # alerts listed by /pinwatch open, newest first
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")


def ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "text": text}


class ResponseUrls:
    """Answers that follow a command later, through the response_url Slack gave with it: only
    to Slack's own host (or the Slack API's host, for a test or proxy deployment)."""

    def __init__(self, session: aiohttp.ClientSession, *, slack_api_url: str) -> None:
        self._session = session
        api = URL(slack_api_url)
        self._api_origin = (api.scheme, api.host, api.port)

    def allowed(self, url: str) -> bool:
        try:
            parsed = URL(url)
        except ValueError:
            return False
        if parsed.scheme == "https" and parsed.host == SLACK_HOOKS_HOST:
            return True
        return (parsed.scheme, parsed.host, parsed.port) == self._api_origin

    async def send(self, url: str, text: str) -> None:
        client = AsyncWebhookClient(url, session=self._session, timeout=10)
        try:
            response = await client.send(text=text, response_type="ephemeral")
        except (aiohttp.ClientError, TimeoutError, SlackClientError) as exc:
            log.warning("response_url: not answered: %s", type(exc).__name__)
            return
        if response.status_code != 200:
            log.warning("response_url: Slack answered %d", response.status_code)


class CommandService:
    def __init__(
        self,
        *,
        store: Store,
        slack: SlackGateway,
        config: LiveConfig,
        clock: Clock,
        replies: ResponseUrls,
    ) -> None:
        self._store = store
        self._slack = slack
        self._config = config
        self._clock = clock
        self._replies = replies
        self._responders = ResponderCheck(slack)
        self._background = Background()

    async def answer(self, command: SlashCommand) -> dict[str, Any] | None:
        """The answer Slack shows the caller now (None: nothing, an empty 200); slower work goes
        on in the background."""
        try:
            asked = parse_command(command.text)
        except UsageError as exc:
            return ephemeral(str(exc))
        try:
            if isinstance(asked, Help):
                return ephemeral(HELP)
            if isinstance(asked, RouteQuery):
                return ephemeral(self._route(asked))
            if isinstance(asked, ListExpected):
                return ephemeral(await self._expected())
            if isinstance(asked, Expect):
                return self._expect(command, asked)
            if isinstance(asked, Cancel):
                self._later(command, self._cancel(command, asked.window_id))
                return ephemeral(f"Ending window #{asked.window_id}…")
            if isinstance(asked, ExpectForm):
                if not command.trigger_id:
                    return ephemeral(f"Usage: {USAGE['expect']}")
                self._later(command, self._open_form(command, command.trigger_id))
                return None  # the form is the answer; an empty 200 shows nothing else
            if isinstance(asked, OpenAlerts):
                self._later(command, self._open_alerts(command))
                return ephemeral("Looking for your teams' unresolved alerts…")
        except StoreError as exc:
            log.error("/pinwatch: store unavailable: %s", exc)
            return ephemeral("pinwatch's store is unavailable right now; try again in a minute.")
        except Exception:  # the caller gets a line, never a trace; the log gets the trace
            log.exception("/pinwatch by %s failed", command.user_id)
            return ephemeral("pinwatch could not do that; the error is in its log.")
        raise AssertionError(asked)  # every kind of command is answered above

    async def close(self, *, grace: float) -> None:
        await self._background.close(grace=grace)

    def accept_expect(self, submission: Submission) -> dict[str, str]:
        """The expect form submitted (ActionService hands it over): errors by field at once,
        for Slack to show in the form; else the window is opened in the background."""
        try:
            asked = read_expect(submission.values)
        except FormErrors as exc:
            return exc.errors
        try:
            team = team_of(asked.target, asked.events, self._config.config)
        except SeveralTeams as exc:
            return {"events": f"{exc}."}
        command = SlashCommand(
            user_id=submission.user_id,
            user_name=submission.user_name,
            channel_id=channel_of(submission.private_metadata),
            text="",
            response_url=None,  # a modal has none: the outcome is told ephemerally
            trigger_id=None,
        )
        self._later(command, self._open_window(command, asked, team))
        return {}

    async def _open_form(self, command: SlashCommand, trigger_id: str) -> str | None:
        try:
            await self._slack.open_view(trigger_id, expect_modal(channel=command.channel_id))
        except SlackCallError as exc:
            log.warning("/pinwatch expect: form not opened: %s", exc)
            return f"The form could not be opened ({exc.error}). Usage: {USAGE['expect']}"
        return None

    async def _open_alerts(self, command: SlashCommand) -> str:
        config = self._config.config
        teams = []
        for team in config.teams:
            responders = Responders(team_destination(team, config).responders)
            try:
                if await self._responders.may_act(command.user_id, Authority((responders,), team)):
                    teams.append(team)
            except SlackCallError as exc:
                log.warning("/pinwatch open: responders not resolved: %s", exc)
                return "pinwatch could not check the responders lists; try again."
        # Alerts of no team go to the default channel, where anyone may act on them.
        alerts, total = await self._store.unresolved(teams, with_defaults=True, limit=OPEN_LIMIT)
        whose = ", ".join([*teams, "the default channel"])
        if not alerts:
            return f"No unresolved alerts for {whose}."
        links: dict[tuple[str, str], str | None] = {}
        lines = [f"Unresolved alerts for {whose}, newest first:"]
        for alert in alerts:
            assert alert.slack_channel is not None
            assert alert.slack_ts is not None
            message = (alert.slack_channel, alert.slack_ts)
            if message not in links:
                try:
                    links[message] = await self._slack.permalink(*message)
                except SlackCallError:
                    links[message] = None  # listed all the same, without its link
            lines.append(f"• {open_line(alert, links[message])}")
        if total > len(alerts):
            lines.append(f"…and {total - len(alerts)} more.")
        return "\n".join(lines)

    def _later(self, command: SlashCommand, work: Awaitable[str | None]) -> None:
        self._background.spawn(self._reply_with(command, work), f"/pinwatch by {command.user_id}")

    async def _reply_with(self, command: SlashCommand, work: Awaitable[str | None]) -> None:
        try:
            text = await work
        except StoreError as exc:
            log.error("/pinwatch: store unavailable: %s", exc)
            text = "pinwatch's store is unavailable right now; try again in a minute."
        except Exception:
            log.exception("/pinwatch by %s failed", command.user_id)
            text = "pinwatch could not do that; the error is in its log."
        if text is not None:
            await self._reply(command, text)

    async def _reply(self, command: SlashCommand, text: str) -> None:
        if command.response_url and self._replies.allowed(command.response_url):
            await self._replies.send(command.response_url, text)
            return
        if command.response_url:
            log.warning("/pinwatch: response_url refused: not Slack's")
        if command.channel_id is None:
            return
        try:
            await self._slack.ephemeral(command.channel_id, command.user_id, text)
        except SlackCallError as exc:
            log.warning("/pinwatch: could not tell %s: %s", command.user_id, exc)

    def _route(self, asked: RouteQuery) -> str:
        event = SecurityEvent(
            waba_id=asked.waba,
            phone_number=asked.phone,
            event=EventType.PIN_RESET_REQUEST.value,
            time=None,
        )
        lines = route_report(event, self._config.config)
        return "```\n" + "\n".join(lines) + "\n```"

    async def _expected(self) -> str:
        windows = await self._store.open_windows(self._clock())
        if not windows:
            return "No announced window is open."
        return "Announced windows still open:\n" + "\n".join(f"• {window_line(w)}" for w in windows)

    def _expect(self, command: SlashCommand, asked: Expect) -> dict[str, Any]:
        config = self._config.config
        try:
            team = team_of(asked.target, asked.events, config)
        except SeveralTeams as exc:
            return ephemeral(f"{exc}.")
        channel = team_destination(team, config).channel
        self._later(command, self._open_window(command, asked, team))
        return ephemeral(
            f"Announcing an expected change for {asked.target.describe()} in "
            f"{channel_text(channel)}…"
        )

    async def _may_act(self, command: SlashCommand, team: str | None) -> str | None:
        """None if the caller is one of the team's responders now, else why not."""
        config = self._config.config
        if team is not None and team not in config.teams:
            return f"Team {team} is no longer in the routing file."
        responders = Responders(team_destination(team, config).responders)
        authority = Authority((responders,), f"team {team or '(defaults)'}")
        try:
            if await self._responders.may_act(command.user_id, authority):
                return None
        except SlackCallError as exc:
            log.warning("/pinwatch: responders not resolved: %s", exc)
            return "pinwatch could not check the responders list; try again."
        log.warning("/pinwatch refused for %s: not a responder of %s", command.user_id, team)
        return f"Only the responders of team {team} can announce or end its expected changes."

    def _actor(self, command: SlashCommand) -> Actor:
        return Actor(user_id=command.user_id, name=command.user_name, at=self._clock())

    async def _open_window(self, command: SlashCommand, asked: Expect, team: str | None) -> str:
        if (refusal := await self._may_act(command, team)) is not None:
            return refusal
        actor = self._actor(command)
        channel = team_destination(team, self._config.config).channel
        window = await self._store.add_window(
            target=asked.target,
            events=asked.events,
            reason=asked.reason,
            team=team,
            channel=channel,
            opened_by=actor,
            until=actor.at + asked.duration,
        )
        try:
            # Announced before it counts: a window can never be opened quietly.
            posted = await self._slack.post(
                channel, render_window_announcement(window), send=_window_send(window)
            )
        except SlackCallError as exc:
            if (found := await self._found(window, exc)) is None:
                await self._store.drop_window(window.id)
                log.warning("window %d: announcement refused in %s: %s", window.id, channel, exc)
                return (
                    f"The announcement could not be posted in {channel_text(channel)}"
                    f" ({exc.error}), so no window is open."
                )
            posted = found
        announced = await self._store.announce_window(
            window.id, channel=posted.channel, ts=posted.ts
        )
        log.info("window %d: opened by %s for team %s", window.id, actor.user_id, team)
        until = announced.until if announced else window.until
        return (
            f"Window #{window.id} is open until {slack_date(until)}, announced in "
            f"<#{posted.channel}>. End it early with /pinwatch cancel {window.id}."
        )

    async def _found(self, window: Window, exc: SlackCallError) -> Posted | None:
        """An announcement whose answer was lost may be in the channel all the same: then the
        window is open (everyone saw it announced), else it must not be."""
        if exc.surely_not_sent or not _CHANNEL_ID.match(window.channel):
            return None  # a #name: conversations.history takes IDs, and Slack said nothing
        try:
            return await self._slack.find_sent(
                window.channel, _window_send(window), since=window.opened_at
            )
        except SlackCallError as lookup:
            log.warning("window %d: announcement not looked for: %s", window.id, lookup)
            return None

    async def _cancel(self, command: SlashCommand, window_id: int) -> str:
        window = await self._store.window(window_id)
        if window is None or not window.announced:
            return f"There is no window #{window_id}."
        if (refusal := await self._may_act(command, window.team)) is not None:
            return refusal
        ended, changed = await self._store.cancel_window(window_id, self._actor(command))
        if ended is None or not changed:
            return f"Window #{window_id} had already ended."
        log.info("window %d: ended early by %s", window_id, command.user_id)
        assert ended.announced_channel is not None
        assert ended.announced_ts is not None
        try:
            await self._slack.post(
                ended.announced_channel,
                render_window_cancelled(ended),
                send=SendKey(f"window-end:{ended.id}", 0),
                thread_ts=ended.announced_ts,
                reply_broadcast=True,  # ended in the channel's sight, as it was opened
            )
            await self._slack.update(
                ended.announced_channel, ended.announced_ts, render_window_announcement(ended)
            )
        except SlackCallError as exc:
            log.warning("window %d: end not announced: %s", window_id, exc)
            return f"Window #{window_id} has ended, but Slack refused the notice ({exc.error})."
        return f"Window #{window_id} has ended; alerts are handled as usual again."


def _window_send(window: Window) -> SendKey:
    return SendKey(f"window:{window.id}", 0)  # about no alert: a window has its own id
