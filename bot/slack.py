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
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.metrics import Metrics
from bot.render import Message

log = logging.getLogger(__name__)

SLACK_API_URL = "https://slack.com/api/"

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


@dataclass(frozen=True, slots=True)
class Posted:
    channel: str  # the channel ID Slack answered with, even when posted by #name
    ts: str


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
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
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
            ),
        )
        return Posted(channel=str(response["channel"]), ts=str(response["ts"]))

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

    async def usergroup_members(self, usergroup: str) -> list[str]:
        response = await self._call(
            "usergroups.users.list", self._client.usergroups_users_list(usergroup=usergroup)
        )
        return [str(user) for user in response.get("users") or []]
