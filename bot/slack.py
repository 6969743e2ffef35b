"""The Slack Web API, as pinwatch uses it: post, update, thread reply, permalink, retries."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from aiohttp import ClientConnectorError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.models.metadata import Metadata
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.events import EscalationKind
from bot.metrics import Metrics
from bot.render import Message

log = logging.getLogger(__name__)

SLACK_API_URL = "https://slack.com/api/"
# Every message pinwatch posts carries this metadata event type and the send's key, so that a
# post whose answer was lost can be found in the channel instead of being sent again.
METADATA_EVENT_TYPE = "pinwatch_message"
HISTORY_PAGES = 5  # a lost answer is seconds old: a few pages of history reach back far enough
CHANNEL_LIST_PAGES = 20
HISTORY_CLOCK_MARGIN = 3600.0

# Errors after which posting to that channel again cannot succeed until a human acts.
CHANNEL_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)


class SlackCallError(Exception):
    """A Slack call that failed after slack_sdk's own retries."""

    def __init__(self, method: str, error: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error
        self.retry_after = retry_after  # Slack's Retry-After, when it rate-limited us

    @property
    def channel_unusable(self) -> bool:
        return self.error in CHANNEL_ERRORS

    @property
    def surely_not_sent(self) -> bool:
        """Slack answered with an error: nothing was posted (unlike a lost connection)."""
        return not self.error.startswith(("connection:", "client:", "http_5"))


@dataclass(frozen=True, slots=True)
class SendKey:
    """Names one message pinwatch means to post exactly once: an alert, a page, a summary."""

    key: str
    alert_id: int  # the (first) alert it is about

    @classmethod
    def alert(cls, alert_id: int) -> SendKey:
        return cls(f"alert:{alert_id}", alert_id)

    @classmethod
    def page(cls, alert_id: int, kind: EscalationKind | None) -> SendKey:
        # A takeover, suspected then confirmed, pages again an alert paged already.
        return cls(f"{_PAGE_PREFIX.get(kind, '')}page:{alert_id}", alert_id)

    @classmethod
    def storm(cls, alert_id: int) -> SendKey:
        return cls(f"storm:{alert_id}", alert_id)

    @classmethod
    def note(cls, alert_id: int, kind: EscalationKind | None) -> SendKey:
        return cls(f"{_PAGE_PREFIX.get(kind, '')}note:{alert_id}", alert_id)

    @classmethod
    def pagerduty_refused(cls, alert_id: int, kind: EscalationKind) -> SendKey:
        return cls(f"pagerduty-refused:{alert_id}:{kind.value}", alert_id)

    @classmethod
    def reminder(cls, alert_id: int, due: float) -> SendKey:
        # One per interval: the time it was due names it.
        return cls(f"reminder:{alert_id}:{due:.0f}", alert_id)


_PAGE_PREFIX: dict[EscalationKind | None, str] = {
    EscalationKind.TAKEOVER: "takeover-",
    EscalationKind.CONFIRMED: "confirmed-",
}


@dataclass(frozen=True, slots=True)
class Posted:
    channel: str  # the channel ID Slack answered with, even when posted by #name
    ts: str
    found: bool = False  # an earlier attempt's message, found in the channel: not this one


def _retry_after(exc: SlackApiError) -> float | None:
    """slack_sdk honours Retry-After for its own retries only; keep it for the outbox's."""
    for name, value in (exc.response.headers or {}).items():
        if name.lower() == "retry-after":
            text = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(text))
            except (TypeError, ValueError):
                return None
    return None


def retry_handlers() -> list[AsyncRetryHandler]:
    # Rate limits honour Retry-After; what is still failing after these goes back to the outbox.
    # A connection lost after the request went out may have posted the message: only a failed
    # connect is retried here; the outbox looks in the channel before posting again.
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=2, error_types=[ClientConnectorError]),
        AsyncRateLimitErrorRetryHandler(max_retry_count=3),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ]


class DryRunClient(AsyncWebClient):
    """Prints each call instead of sending it, so pinwatch can be tried with no workspace."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        super().__init__(token="xoxb-dry-run", retry_handlers=[])
        self._out = out
        self._ts = itertools.count(1)

    async def api_call(
        self, api_method: str, *, http_verb: str = "POST", **kwargs: Any
    ) -> AsyncSlackResponse:
        args = kwargs.get("json") or kwargs.get("params") or kwargs.get("data") or {}
        print(
            f"[dry-run] slack {api_method} {json.dumps(args, ensure_ascii=False)}",
            file=self._out,
            flush=True,
        )
        channel = args.get("channel", "CDRYRUN")
        ts = args.get("ts") or f"{int(time.time())}.{next(self._ts):06d}"
        data: dict[str, Any] = {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "message_ts": ts,
            "permalink": f"https://slack.invalid/archives/{channel}/p{ts.replace('.', '')}",
            "users": [],
        }
        return AsyncSlackResponse(
            client=self,
            http_verb=http_verb,
            api_url=self.base_url + api_method,
            req_args=kwargs,
            data=data,
            headers={},
            status_code=200,
        )


def web_client(token: str, *, base_url: str, session: aiohttp.ClientSession) -> AsyncWebClient:
    # Without session= slack_sdk opens a new ClientSession for every call.
    return AsyncWebClient(
        token=token, base_url=base_url, session=session, retry_handlers=retry_handlers()
    )


class SlackGateway:
    def __init__(self, client: AsyncWebClient, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    async def _call(self, method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
        outcome = "ok"
        try:
            return await call
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            outcome = str(error or f"http_{exc.response.status_code}")
            raise SlackCallError(method, outcome, retry_after=_retry_after(exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "connection_error"
            raise SlackCallError(method, f"connection: {type(exc).__name__}") from exc
        except (SlackClientError, ValueError) as exc:  # e.g. an answer that is not Slack's JSON
            outcome = "client_error"
            raise SlackCallError(method, f"client: {type(exc).__name__}") from exc
        finally:
            self._metrics.slack_calls.labels(method, outcome).inc()

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        send: SendKey,
        thread_ts: str | None = None,
        reply_broadcast: bool = False,
    ) -> Posted:
        # unfurl off: a permalink in an escalation should not expand into a copy of the alert.
        response = await self._call(
            "chat.postMessage",
            self._client.chat_postMessage(
                channel=channel,
                text=message.text,
                blocks=message.blocks,
                thread_ts=thread_ts,
                reply_broadcast=reply_broadcast if thread_ts else None,
                unfurl_links=False,
                unfurl_media=False,
                metadata=Metadata(
                    event_type=METADATA_EVENT_TYPE,
                    event_payload={"send": send.key, "alert_id": send.alert_id},
                ),
            ),
        )
        return Posted(channel=str(response["channel"]), ts=str(response["ts"]))

    async def channel_id_of(self, name: str) -> str | None:
        """A #name's channel ID, looked up in the channels pinwatch can see (only needed
        when a post to a channel named, never yet posted to, lost its answer)."""
        bare = name.removeprefix("#")
        cursor: str | None = None
        for _ in range(CHANNEL_LIST_PAGES):
            response = await self._call(
                "conversations.list",
                self._client.conversations_list(
                    types="public_channel,private_channel",
                    exclude_archived=True,
                    limit=1000,
                    cursor=cursor,
                ),
            )
            for channel in response.get("channels") or []:
                if channel.get("name") == bare:
                    return str(channel["id"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                return None
        return None

    async def find_sent(
        self, channel: str, send: SendKey, *, since: float, thread_ts: str | None = None
    ) -> Posted | None:
        """The message pinwatch posted for `send` in `channel` since a time, if Slack has it
        (a broadcast thread reply is in the channel's history too; any other reply is only in
        its thread, `thread_ts`, which is then searched instead)."""
        cursor: str | None = None
        # Slack's ts is Slack's clock: reach back well past any skew from ours.
        oldest = f"{max(0.0, since - HISTORY_CLOCK_MARGIN):.6f}"
        for _ in range(HISTORY_PAGES):
            page: dict[str, Any] = {
                "channel": channel,
                "oldest": oldest,
                "include_all_metadata": True,
                "limit": 200,
                "cursor": cursor,
            }
            if thread_ts is None:
                call = self._client.conversations_history(**page)
            else:
                call = self._client.conversations_replies(ts=thread_ts, **page)
            method = "conversations.history" if thread_ts is None else "conversations.replies"
            response = await self._call(method, call)
            for message in response.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if (
                    metadata.get("event_type") == METADATA_EVENT_TYPE
                    and payload.get("send") == send.key
                ):
                    return Posted(channel=channel, ts=str(message["ts"]), found=True)
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                return None
        return None

    async def update(self, channel: str, ts: str, message: Message) -> None:
        await self._call(
            "chat.update",
            self._client.chat_update(
                channel=channel, ts=ts, text=message.text, blocks=message.blocks
            ),
        )

    async def permalink(self, channel: str, ts: str) -> str:
        response = await self._call(
            "chat.getPermalink", self._client.chat_getPermalink(channel=channel, message_ts=ts)
        )
        return str(response["permalink"])

    async def ephemeral(self, channel: str, user: str, text: str) -> None:
        await self._call(
            "chat.postEphemeral",
            self._client.chat_postEphemeral(channel=channel, user=user, text=text),
        )

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        await self._call("views.open", self._client.views_open(trigger_id=trigger_id, view=view))

    async def usergroup_members(self, usergroup: str) -> list[str]:
        response = await self._call(
            "usergroups.users.list", self._client.usergroups_users_list(usergroup=usergroup)
        )
        return [str(user) for user in response.get("users") or []]
