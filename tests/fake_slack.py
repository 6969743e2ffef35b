"""A fake Slack Web API served as a real aiohttp application on loopback.

The bot's real ``AsyncWebClient`` talks to it over HTTP, so tests exercise the same request
encoding, error handling and retries as production. It records every call, keeps the messages
it was sent, enforces the Block Kit limits Slack enforces, and can be scripted to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

BOT_USER_ID = "U0PINWATCH"
BOT_ID = "B0PINWATCH"
TEAM_ID = "T0FAKE"
PERMALINK_BASE = "https://fake.slack.test/archives"

_ID_RE = re.compile(r"^[CGD][A-Z0-9]+$")
_MAX_TEXT = 40_000
TRIGGER_SECONDS = 3.0  # how long Slack lets a trigger_id open a modal


@dataclass(frozen=True)
class RecordedCall:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when the request arrived
    status: int | None = None  # HTTP status answered; None while a scripted delay runs
    error: str | None = None  # Slack's "error" field, if the answer carried one
    # The client had closed the connection before the answer was ready: it gave up waiting.
    hung_up: bool = False

    @property
    def pending(self) -> bool:
        return self.status is None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def failed(self) -> bool:
        return not self.pending and not self.ok


@dataclass
class Message:
    channel: str  # channel ID
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    updates: list[dict[str, Any]] = field(default_factory=list)  # each chat.update, in order
    metadata: dict[str, Any] | None = None  # chat.postMessage's, shown by include_all_metadata

    def to_dict(self, *, with_metadata: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": self.text,
            "ts": self.ts,
            "blocks": self.blocks,
        }
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.reply_broadcast:
            out["subtype"] = "thread_broadcast"
        if with_metadata and self.metadata is not None:
            out["metadata"] = self.metadata
        return out

    def transcript(self) -> str:
        """The message as a reader sees it, roughly: the fallback, each block's text, buttons."""
        lines = [self.text]
        for block in self.blocks:
            texts = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
            for item in texts:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    lines += [f"> {line}" for line in item["text"].splitlines()]
            buttons = [e for e in block.get("elements", []) if e.get("type") == "button"]
            if accessory := block.get("accessory"):
                buttons.append(accessory)
            if buttons:
                lines.append("> [buttons: " + ", ".join(b["text"]["text"] for b in buttons) + "]")
        return "\n".join(lines)

    @property
    def in_channel_history(self) -> bool:
        """Top-level messages and broadcast replies; other thread replies are in the thread."""
        return self.thread_ts in (None, self.ts) or self.reply_broadcast


@dataclass(frozen=True)
class _Failure:
    status: int
    error: str | None
    retry_after: int | None
    delay: float
    drop: bool = False
    accept_first: bool = False


class SlackError(Exception):
    """Raised by a method handler: answered as HTTP 200 with ``ok: false``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# -- slash commands (/pinwatch): the request Slack signs and posts, and its response_url ------


@dataclass
class SlashAnswer:
    """What the bot answered a slash command with: the HTTP status and its body."""

    status: int
    body: dict[str, Any] | None
    text: str

    @property
    def ephemeral_text(self) -> str:
        assert self.body is not None, f"not a JSON answer: {self.status} {self.text!r}"
        assert self.body.get("response_type") == "ephemeral", self.body
        return str(self.body.get("text", ""))


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlashCommands:
    """FakeSlack's side of slash commands: it signs and posts them to the bot (or sends them
    over Socket Mode), and records what the bot posts to each command's response_url."""

    app: web.Application
    socket: web.WebSocketResponse | None
    _changed: asyncio.Condition
    _clock: Callable[[], float]
    new_trigger: Callable[[], str]

    def _init_slash_commands(self) -> None:
        self.base_url = ""  # set by start_fake_slack
        # What the bot posted to each response_url, by the key in its path.
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self._response_seq = 0
        self.app.router.add_post("/commands/{key}", self._receive_response)

    def response_url(self, key: str | None = None) -> str:
        """A response_url on this fake, as Slack gives one with each slash command."""
        if key is None:
            self._response_seq += 1
            key = f"r{self._response_seq}"
        return f"{self.base_url}commands/{key}"

    async def _receive_response(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._changed:
            self.responses.setdefault(request.match_info["key"], []).append(body)
            self._changed.notify_all()
        return web.Response(text="ok")

    def slash_fields(
        self, text: str, *, user: str, channel: str, response_url: str | None
    ) -> dict[str, str]:
        self._response_seq += 1
        return {
            "token": "deprecated-verification-token",
            "team_id": TEAM_ID,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "fake-channel",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/pinwatch",
            "text": text,
            "api_app_id": "A0PINWATCH",
            "response_url": response_url or self.response_url(),
            "trigger_id": self.new_trigger(),
        }

    async def slash_command(
        self,
        client: Any,
        text: str,
        *,
        secret: str,
        user: str = "U0ALICE",
        channel: str = "C0PAYMENTS",
        response_url: str | None = None,
        timestamp: int | None = None,
        body: bytes | None = None,
        signature: str | None = None,
    ) -> SlashAnswer:
        """Sign and post a slash command to the bot (its aiohttp test client), as Slack does."""
        fields = self.slash_fields(text, user=user, channel=channel, response_url=response_url)
        body = body if body is not None else urlencode(fields).encode()
        stamp = str(int(self._clock()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or slack_signature(secret, stamp, body),
        }
        async with client.post("/slack/commands", data=body, headers=headers) as response:
            raw = await response.text()
            parsed = json.loads(raw) if response.content_type == "application/json" else None
            return SlashAnswer(status=response.status, body=parsed, text=raw)

    async def send_slash_command(
        self, text: str, envelope_id: str, *, user: str = "U0ALICE", response_url: str
    ) -> None:
        """Deliver a slash command over Socket Mode, as Slack wraps it in an envelope."""
        assert self.socket is not None, "no Socket Mode client is connected"
        fields = self.slash_fields(text, user=user, channel="C0PAYMENTS", response_url=response_url)
        await self.socket.send_json(
            {
                "type": "slash_commands",
                "envelope_id": envelope_id,
                "payload": fields,
                "accepts_response_payload": True,
            }
        )

    async def wait_response(self, url: str, count: int = 1) -> list[dict[str, Any]]:
        """The first `count` posts the bot made to a response_url, once they have arrived."""
        key = url.rsplit("/", 1)[-1]
        async with asyncio.timeout(5.0):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.responses.get(key, [])) >= count)
        return self.responses[key][:count]


# -- the Web API ---------------------------------------------------------------------------


class FakeSlack(SlashCommands):
    def __init__(
        self,
        token: str = "xoxb-test-token",
        *,
        app_token: str = "xapp-test-token",
        channels: Mapping[str, str] | None = None,
        missing_channels: set[str] | None = None,
        not_in_channel: set[str] | None = None,
        usergroups: Mapping[str, list[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self._clock = clock
        self.app_token = app_token
        # Socket Mode: the open connection, and every ack (envelope_id) the client sent back.
        self.socket: web.WebSocketResponse | None = None
        self.socket_acks: list[str] = []
        self.socket_payloads: dict[str, Any] = {}  # envelope_id → the payload its ack carried
        self.socket_url = ""  # set by start_fake_slack
        self.channels: dict[str, str] = dict(channels or {})
        self.missing_channels: set[str] = set(missing_channels or ())
        self.not_in_channel: set[str] = set(not_in_channel or ())
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.calls: list[RecordedCall] = []
        self.ephemerals: list[dict[str, Any]] = []
        # Modals: each trigger_id an interaction carried (a test issues them), and every view
        # views.open showed, newest last.
        self._triggers: dict[str, float] = {}
        self._trigger_numbers = itertools.count(1)
        self.views: list[dict[str, Any]] = []
        self._messages: list[Message] = []
        self._failures: dict[str, deque[_Failure]] = {}
        # Awaited after a method has done its work and before Slack's answer is sent: a test can
        # act in the window where Slack has a message and the bot does not know it yet.
        self.before_answering: dict[str, Callable[[RecordedCall], Awaitable[None]]] = {}
        self._seq = 0
        self._changed = asyncio.Condition()
        # Set on app shutdown so a scripted delay does not hold up the test server's close.
        self._closing = asyncio.Event()
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.getPermalink": self._get_permalink,
            "usergroups.users.list": self._usergroup_users,
            "apps.connections.open": self._connections_open,
            "conversations.history": self._history,
            "conversations.list": self._list,
            "conversations.replies": self._replies,
            "views.open": self._open_view,
        }
        self.app = web.Application()
        self.app.router.add_get("/api/{method}", self._handle)
        self.app.router.add_post("/api/{method}", self._handle)
        self.app.router.add_get("/socket", self._socket)
        self.app.on_shutdown.append(self._on_shutdown)
        self._init_slash_commands()

    # -- scripting and queries ---------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        times: int = 1,
        status: int = 200,
        error: str | None = None,
        retry_after: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        accept_first: bool = False,
    ) -> None:
        """Queue ``times`` failures for ``method`` ("*" = any method), consumed in order.
        ``drop``: do the work (a post is in the channel), then close the connection without
        answering. ``accept_first``: do the work before the delay, so that a client that gives
        up waiting has its message in Slack all the same."""
        queue = self._failures.setdefault(method, deque())
        queue.extend(
            _Failure(status, error, retry_after, delay, drop, accept_first or drop)
            for _ in range(times)
        )

    def new_trigger(self) -> str:
        """A trigger_id, as Slack puts in an interaction: it opens one modal, within 3 s."""
        self._seq += 1
        trigger = (
            f"{self._seq}.{TEAM_ID}.{hashlib.sha256(str(self._seq).encode()).hexdigest()[:16]}"
        )
        self._triggers[trigger] = time.monotonic() + TRIGGER_SECONDS
        return trigger

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method]

    def channel_id(self, name: str) -> str:
        """The ID a channel name ("#x" or "x") has or will get; an ID is returned as is."""
        if _ID_RE.match(name):
            return name
        bare = name.removeprefix("#")
        return self.channels.get(bare) or _auto_id(bare)

    def messages(self, channel: str | None = None) -> list[Message]:
        if channel is None:
            return list(self._messages)
        cid = self.channel_id(channel)
        return [m for m in self._messages if m.channel == cid]

    def top_level(self, channel: str | None = None) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts in (None, m.ts)]

    def replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts == thread_ts and m.ts != thread_ts]

    def message(self, channel: str, ts: str) -> Message:
        for m in self.messages(channel):
            if m.ts == ts:
                return m
        raise KeyError(f"no message {ts} in {channel}")

    # A timeout argument (ASYNC109) keeps test lines short; the wait is one asyncio.timeout.
    async def wait_for(
        self,
        predicate: Callable[[FakeSlack], bool],
        timeout: float = 5.0,
    ) -> None:
        """Wait until ``predicate(self)`` holds; re-checked on every recorded call."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        except TimeoutError:
            seen = ", ".join(f"{c.method}:{_outcome(c)}" for c in self.calls) or "none"
            raise AssertionError(
                f"fake Slack: condition not met in {timeout}s; calls: {seen}"
            ) from None

    async def wait_for_calls(
        self,
        method: str,
        count: int = 1,
        *,
        timeout: float = 5.0,
        ok_only: bool = True,
    ) -> list[RecordedCall]:
        def matching() -> list[RecordedCall]:
            return [c for c in self.calls_to(method) if c.ok or not ok_only]

        await self.wait_for(lambda _: len(matching()) >= count, timeout)
        return matching()

    # -- HTTP --------------------------------------------------------------------------------

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing.set()
        if self.socket is not None:
            await self.socket.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params, token = await _read_params(request)
        pending = RecordedCall(method, params, time.monotonic())
        await self._record(pending)
        failure = self._next_failure(method)
        if failure is not None and failure.accept_first:
            # The work is done as if all went well; the answer is what goes wrong.
            response, error = await self._answer(method, params, token, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), failure.delay)
            if failure.drop and request.transport is not None:
                request.transport.close()
        else:
            response, error = await self._answer(method, params, token, failure)
        if (hook := self.before_answering.get(method)) is not None and error is None:
            await hook(pending)
        transport = request.transport
        hung_up = transport is None or transport.is_closing()
        answered = dataclasses.replace(
            pending, status=response.status, error=error, hung_up=hung_up
        )
        await self._record(answered, pending)
        return response

    async def _answer(
        self, method: str, params: dict[str, Any], token: str | None, failure: _Failure | None
    ) -> tuple[web.Response, str | None]:
        if failure is not None:
            if failure.delay > 0:
                # Sleep, but wake early when the server closes so tests tear down promptly.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), failure.delay)
            if failure.status == 429:
                headers = {"Retry-After": str(failure.retry_after or 1)}
                body = {"ok": False, "error": "ratelimited"}
                return web.json_response(body, status=429, headers=headers), "ratelimited"
            if failure.status != 200 and failure.error is None:
                return web.Response(
                    status=failure.status, text="fake slack: scripted failure"
                ), None
            if failure.error is not None:
                body = {"ok": False, "error": failure.error}
                return web.json_response(body, status=failure.status), failure.error
        handler = self._methods.get(method)
        if handler is None:
            # Slack answers an unknown method with 404 and a JSON body.
            body = {"ok": False, "error": "unknown_method"}
            return web.json_response(body, status=404), "unknown_method"
        try:
            # apps.connections.open is the one method that takes the app-level token.
            expected = self.app_token if method == "apps.connections.open" else self.token
            if token != expected:
                raise SlackError("invalid_auth")
            return web.json_response({"ok": True, **handler(params)}), None
        except SlackError as e:
            return web.json_response({"ok": False, "error": e.error, **e.extra}), e.error

    def _next_failure(self, method: str) -> _Failure | None:
        for key in (method, "*"):
            queue = self._failures.get(key)
            if queue:
                return queue.popleft()
        return None

    async def _record(self, call: RecordedCall, replacing: RecordedCall | None = None) -> None:
        async with self._changed:
            # Replace the pending entry in place so `calls` stays in arrival order.
            index = next((i for i, c in enumerate(self.calls) if c is replacing), None)
            if index is None:
                self.calls.append(call)
            else:
                self.calls[index] = call
            self._changed.notify_all()

    # -- Slack methods -----------------------------------------------------------------------

    def _connections_open(self, _params: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.socket_url}

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"type": "hello", "num_connections": 1})
        self.socket = socket
        async with self._changed:
            self._changed.notify_all()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                envelope = json.loads(message.data)
                async with self._changed:
                    self.socket_acks.append(str(envelope.get("envelope_id")))
                    self.socket_payloads[str(envelope.get("envelope_id"))] = envelope.get("payload")
                    self._changed.notify_all()
        return socket

    async def send_interactive(self, payload: dict[str, Any], envelope_id: str) -> None:
        """Deliver a click over Socket Mode, as Slack wraps it in an envelope."""
        assert self.socket is not None, "no Socket Mode client is connected"
        await self.socket.send_json(
            {
                "type": "interactive",
                "envelope_id": envelope_id,
                "payload": payload,
                "accepts_response_payload": False,
            }
        )

    def _auth_test(self, _params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "pinwatch",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(params.get("channel"))
        text, blocks = _content(params)
        thread_ts = params.get("thread_ts") or None
        if thread_ts is not None:
            parent = self._find(channel, str(thread_ts))
            if parent is None:
                raise SlackError("thread_not_found")
            thread_ts = parent.thread_ts or parent.ts  # a reply to a reply joins the thread
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            with contextlib.suppress(ValueError):
                metadata = json.loads(metadata)
        if metadata is not None and not (
            isinstance(metadata, dict)
            and isinstance(metadata.get("event_type"), str)
            and isinstance(metadata.get("event_payload"), dict)
        ):
            raise SlackError("invalid_metadata_format")
        message = Message(
            channel=channel,
            ts=self._next_ts(),
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            reply_broadcast=_truthy(params.get("reply_broadcast")),
            metadata=metadata,
        )
        self._messages.append(message)
        return {"channel": channel, "ts": message.ts, "message": message.to_dict()}

    def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        """conversations.list: every channel the workspace has, in one page."""
        channels = [
            {"id": cid, "name": name, "is_archived": False}
            for name, cid in self.channels.items()
            if name not in self.missing_channels and f"#{name}" not in self.missing_channels
        ]
        return {"channels": channels, "response_metadata": {"next_cursor": ""}}

    def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        """conversations.history: newest first, paged by cursor; IDs only, as Slack wants."""
        channel = params.get("channel")
        if not isinstance(channel, str) or not _ID_RE.match(channel):
            raise SlackError("channel_not_found")
        oldest, limit, start = _paging(params)
        found = [
            m
            for m in reversed(self._messages)
            if m.channel == channel and m.in_channel_history and float(m.ts) > oldest
        ]
        return _history_page(found, params, start=start, limit=limit)

    def _replies(self, params: dict[str, Any]) -> dict[str, Any]:
        """conversations.replies: the thread's parent, then its replies oldest first."""
        channel = params.get("channel")
        if not isinstance(channel, str) or not _ID_RE.match(channel):
            raise SlackError("channel_not_found")
        parent = self._find(channel, str(params.get("ts", "")))
        if parent is None:
            raise SlackError("thread_not_found")
        oldest, limit, start = _paging(params)
        found = [parent] + [m for m in self.replies(channel, parent.ts) if float(m.ts) > oldest]
        return _history_page(found, params, start=start, limit=limit)

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(params.get("channel"))
        message = self._find(channel, str(params.get("ts", "")))
        if message is None:
            raise SlackError("message_not_found")
        text, blocks = _content(params)
        # Like Slack, blocks not given are kept; an empty list removes them.
        if "text" in params:
            message.text = text
        if "blocks" in params:
            message.blocks = blocks
        message.updates.append({"text": message.text, "blocks": message.blocks})
        return {"channel": channel, "ts": message.ts, "text": message.text}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(params.get("channel"))
        if not params.get("user"):
            raise SlackError("user_not_found")
        text, blocks = _content(params)
        ts = self._next_ts()
        self.ephemerals.append(
            {
                "channel": channel,
                "user": params["user"],
                "text": text,
                "blocks": blocks,
                "thread_ts": params.get("thread_ts"),
                "message_ts": ts,
            }
        )
        return {"message_ts": ts}

    def _open_view(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = params.get("trigger_id")
        if not isinstance(trigger, str) or trigger not in self._triggers:
            raise SlackError("invalid_trigger_id")
        if self._triggers.pop(trigger) < time.monotonic():  # and a trigger opens one view
            raise SlackError("expired_trigger_id")
        view = params.get("view")
        if isinstance(view, str):
            with contextlib.suppress(ValueError):
                view = json.loads(view)
        errors = view_errors(view)
        if errors:
            raise SlackError("invalid_arguments", response_metadata={"messages": errors})
        assert isinstance(view, dict)
        self.views.append(view)
        return {"view": {"id": f"V{len(self.views):08d}", **view}}

    def _get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(params.get("channel"))
        message = self._find(channel, str(params.get("message_ts", "")))
        if message is None:
            raise SlackError("message_not_found")
        link = f"{PERMALINK_BASE}/{channel}/p{message.ts.replace('.', '')}"
        return {"channel": channel, "permalink": link}

    def _usergroup_users(self, params: dict[str, Any]) -> dict[str, Any]:
        users = self.usergroups.get(str(params.get("usergroup", "")))
        if users is None:
            raise SlackError("no_such_subteam")
        return {"users": list(users)}

    # -- helpers -----------------------------------------------------------------------------

    def _resolve(self, channel: Any) -> str:
        """Channel name or ID → ID, creating unknown names as Slack's workspace would have them."""
        if not isinstance(channel, str) or not channel:
            raise SlackError("channel_not_found")
        name = None if _ID_RE.match(channel) else channel.removeprefix("#")
        cid = self.channel_id(channel)
        keys = {channel, cid} | ({name, f"#{name}"} if name else set())
        if keys & self.missing_channels:
            raise SlackError("channel_not_found")
        if keys & self.not_in_channel:
            raise SlackError("not_in_channel")
        if name is not None:
            self.channels.setdefault(name, cid)
        return cid

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self._messages if m.channel == channel and m.ts == ts), None)

    def _next_ts(self) -> str:
        """Slack's ts is its own clock's time, unique and rising within a channel."""
        self._seq += 1
        return f"{int(self._clock()) + self._seq // 10_000}.{self._seq % 10_000 * 100:06d}"


def _auto_id(name: str) -> str:
    return "C" + hashlib.sha256(name.encode()).hexdigest()[:10].upper()


def _history_page(
    found: list[Message], params: dict[str, Any], *, start: int, limit: int
) -> dict[str, Any]:
    """One page of conversations.history or conversations.replies, paged by cursor."""
    with_metadata = _truthy(params.get("include_all_metadata"))
    page = found[start : start + limit]
    more = start + limit < len(found)
    return {
        "messages": [m.to_dict(with_metadata=with_metadata) for m in page],
        "has_more": more,
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }


def _paging(params: dict[str, Any]) -> tuple[float, int, int]:
    """A history read's oldest ts, page size and cursor, as Slack reads them."""
    try:
        oldest = float(params.get("oldest") or 0)
        limit = max(1, min(999, int(params.get("limit") or 100)))
        start = int(params.get("cursor") or 0)
    except ValueError:
        raise SlackError("invalid_arguments") from None
    return oldest, limit, start


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true")
    return bool(value)


def _outcome(call: RecordedCall) -> str:
    if call.pending:
        return "pending"
    return "ok" if call.ok else call.error or f"http_{call.status}"


async def _read_params(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """Query string, JSON body and form body merged into one dict, plus the bearer token."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
    elif request.can_read_body:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    if isinstance(params.get("blocks"), str):
        # Form-encoded calls send blocks as a JSON string; a bad one is caught by _content.
        with contextlib.suppress(ValueError):
            params["blocks"] = json.loads(params["blocks"])
    token = params.pop("token", None)
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        token = auth.removeprefix("Bearer ")
    return params, token if isinstance(token, str) else None


def _content(params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Validated (text, blocks) of a message, raising the error Slack would answer."""
    text = params.get("text") or ""
    blocks = params.get("blocks") or []
    if not isinstance(text, str):
        raise SlackError("invalid_arguments")
    if isinstance(blocks, str):
        raise SlackError("invalid_blocks_format")
    if not text and not blocks:
        raise SlackError("no_text")
    if len(text) > _MAX_TEXT:
        raise SlackError("msg_too_long")
    errors = block_errors(blocks)
    if errors:
        raise SlackError("invalid_blocks", response_metadata={"messages": errors})
    return text, blocks


def view_errors(view: Any) -> list[str]:
    """A modal's limits, as documented for views.open."""
    v = _Validator()
    if not isinstance(view, dict) or view.get("type") != "modal":
        v.add("/view/type", "must be modal")
        return v.errors
    v.text(view.get("title"), 24, "/view/title", plain=True)
    for button in ("submit", "close"):
        if button in view:
            v.text(view[button], 24, f"/view/{button}", plain=True)
    v.length(view.get("callback_id"), 255, "/view/callback_id")
    v.length(view.get("private_metadata"), 3000, "/view/private_metadata")
    blocks = view.get("blocks")
    if not isinstance(blocks, list) or len(blocks) > 100:
        v.add("/view/blocks", "must be an array of no more than 100 items")
        return v.errors
    for i, block in enumerate(blocks):
        v.block(block, f"/view/blocks/{i}")
    if any(b.get("type") == "input" for b in blocks if isinstance(b, dict)) and not view.get(
        "submit"
    ):
        v.add("/view/submit", "a modal with inputs needs a submit button")
    return v.errors


def block_errors(blocks: Any) -> list[str]:
    """Slack's Block Kit limits (the ones our messages can hit), as Slack words its errors."""
    v = _Validator()
    if not isinstance(blocks, list):
        v.add("/blocks", "must be an array")
        return v.errors
    if len(blocks) > 50:
        v.add("/blocks", "no more than 50 items allowed")
    for i, block in enumerate(blocks):
        v.block(block, f"/blocks/{i}")
    return v.errors


class _Validator:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.action_ids: set[str] = set()  # unique within their block, as Slack documents
        self.block_ids: set[str] = set()  # unique within the message

    def add(self, at: str, what: str) -> None:
        self.errors.append(f"[ERROR] {what} [json-pointer:{at}]")

    def length(self, value: Any, limit: int, at: str) -> None:
        if isinstance(value, str) and len(value) > limit:
            self.add(at, f"must be less than {limit + 1} characters")

    def text(self, obj: Any, limit: int, at: str, *, plain: bool = False) -> None:
        kinds = ("plain_text",) if plain else ("plain_text", "mrkdwn")
        if not isinstance(obj, dict) or obj.get("type") not in kinds:
            self.add(f"{at}/type", f"expected one of {', '.join(kinds)}")
        elif not isinstance(obj.get("text"), str):
            self.add(f"{at}/text", "must be a string")
        else:
            self.length(obj["text"], limit, f"{at}/text")

    def block(self, block: Any, at: str) -> None:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            self.add(f"{at}/type", "missing required field: type")
            return
        self.length(block.get("block_id"), 255, f"{at}/block_id")
        block_id = block.get("block_id")
        if isinstance(block_id, str):
            if block_id in self.block_ids:
                self.add(f"{at}/block_id", "must be unique within a message")
            self.block_ids.add(block_id)
        self.action_ids = set()
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                self.add(at, "must provide either text or fields")
            if "text" in block:
                self.text(block["text"], 3000, f"{at}/text")
            fields = block.get("fields", [])
            if len(fields) > 10:
                self.add(f"{at}/fields", "no more than 10 items allowed")
            for j, item in enumerate(fields):
                self.text(item, 2000, f"{at}/fields/{j}")
            if "accessory" in block:
                self.element(block["accessory"], f"{at}/accessory")
        elif kind == "header":
            self.text(block.get("text"), 150, f"{at}/text", plain=True)
        elif kind == "context":
            elements = block.get("elements", [])
            if len(elements) > 10:
                self.add(f"{at}/elements", "no more than 10 items allowed")
            for j, el in enumerate(elements):
                if isinstance(el, dict) and el.get("type") in ("plain_text", "mrkdwn"):
                    self.length(el.get("text"), 2000, f"{at}/elements/{j}/text")
        elif kind == "input":
            self.text(block.get("label"), 2000, f"{at}/label", plain=True)
            element = block.get("element")
            if not isinstance(element, dict) or not isinstance(element.get("type"), str):
                self.add(f"{at}/element", "missing required field: element")
            else:
                self.input_element(element, f"{at}/element")
        elif kind == "actions":
            elements = block.get("elements", [])
            if len(elements) > 25:
                self.add(f"{at}/elements", "no more than 25 items allowed")
            for j, el in enumerate(elements):
                self.element(el, f"{at}/elements/{j}")
        # divider, image, rich_text, ...: not checked

    def input_element(self, el: dict[str, Any], at: str) -> None:
        if el["type"] == "radio_buttons":
            options = el.get("options")
            if not isinstance(options, list) or not 1 <= len(options) <= 10:
                self.add(f"{at}/options", "must hold 1 to 10 items")
                return
            for j, option in enumerate(options):
                self.text(option.get("text"), 75, f"{at}/options/{j}/text")
                self.length(option.get("value"), 150, f"{at}/options/{j}/value")
                if "description" in option:
                    self.text(option["description"], 75, f"{at}/options/{j}/description")
        elif el["type"] == "plain_text_input":
            if not isinstance(el.get("max_length", 3000), int) or el.get("max_length", 0) > 3000:
                self.add(f"{at}/max_length", "must be at most 3000")
        else:
            self.add(f"{at}/type", f"{el['type']} is not an input this fake knows")

    def element(self, el: Any, at: str) -> None:
        if not isinstance(el, dict):
            self.add(at, "must be an object")
            return
        action_id = el.get("action_id")
        if isinstance(action_id, str):
            self.length(action_id, 255, f"{at}/action_id")
            if action_id in self.action_ids:
                self.add(f"{at}/action_id", "must be unique within a block")
            self.action_ids.add(action_id)
        if el.get("type") == "button":
            self.text(el.get("text"), 75, f"{at}/text", plain=True)
            self.length(el.get("value"), 2000, f"{at}/value")
            self.length(el.get("url"), 3000, f"{at}/url")
            if el.get("style") not in (None, "primary", "danger"):
                self.add(f"{at}/style", "must be primary or danger")
        if "confirm" in el:
            confirm, c_at = el["confirm"], f"{at}/confirm"
            if not isinstance(confirm, dict):
                self.add(c_at, "must be an object")
                return
            self.text(confirm.get("title"), 100, f"{c_at}/title", plain=True)
            self.text(confirm.get("text"), 300, f"{c_at}/text")
            self.text(confirm.get("confirm"), 30, f"{c_at}/confirm", plain=True)
            self.text(confirm.get("deny"), 30, f"{c_at}/deny", plain=True)


async def start_fake_slack(aiohttp_server: Any, **kwargs: Any) -> tuple[FakeSlack, str]:
    """Serve a new FakeSlack(**kwargs) on loopback; returns it and its base URL (".../api/")."""
    fake = FakeSlack(**kwargs)
    server = await aiohttp_server(fake.app)
    fake.socket_url = str(server.make_url("/socket")).replace("http://", "ws://")
    fake.base_url = str(server.make_url("/"))
    return fake, str(server.make_url("/api/"))
